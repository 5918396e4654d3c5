/**
 * strata/testing: how fast a test gets a database and data.
 * - clone: CREATE DATABASE ... TEMPLATE <migrated template> STRATEGY FILE_COPY vs WAL_LOG, BENCH_CLONES
 *   (100) each, interleaved, each dropped after; reference: an empty database from template0.
 * - snapshot and restore of a test database holding factory rows (medians of 10).
 * - factory throughput: createList of pipelines (no parents) and of run_steps (a parent run and
 *   pipeline made on demand per row), through a tenant session; reference: INSERT ... SELECT
 *   generate_series of the same table.
 * Runs inside `npm run bench` (BENCH_SCENARIOS=testing-kit) or alone: `npx tsx bench/scenarios/testing-kit.ts`.
 */
import { pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import {
  cloneDatabase,
  closeServerPools,
  createTestDatabase,
  dropDatabase,
  ensureTemplate,
  factory,
  type CloneStrategy,
} from '../../src/testing/index.js';
import type { BenchContext, BenchScenario } from './types.js';

const SERVER = process.env['BENCH_SERVER_URL'] ?? process.env['TEST_DATABASE_URL'] ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const CLONES = Number(process.env['BENCH_CLONES'] ?? 100);
const TEMPLATE_PREFIX = process.env['TEST_TEMPLATE_PREFIX'] ?? 'strata_tpl_bench';

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const ms = (x: number) => `${x.toFixed(1)} ms`;

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

async function run(ctx: Pick<BenchContext, 'log'>): Promise<{ md: string[]; json: unknown }> {
  const template = await ensureTemplate({ serverUrl: SERVER, templatePrefix: TEMPLATE_PREFIX });
  const admin = new pg.Client({ connectionString: SERVER });
  await admin.connect();
  const size = (await admin.query<{ s: string }>('SELECT pg_size_pretty(pg_database_size($1)) AS s', [template])).rows[0]!.s;
  const times: Record<CloneStrategy | 'empty', number[]> = { FILE_COPY: [], WAL_LOG: [], empty: [] };
  ctx.log(`testing-kit: ${CLONES} clones per strategy of ${template} (${size})`);
  for (let i = 0; i < CLONES; i++) {
    for (const strategy of ['FILE_COPY', 'WAL_LOG'] as const) {
      const name = `bench_clone_${process.pid}_${i}_${strategy.toLowerCase()}`;
      times[strategy].push(await timed(() => cloneDatabase(SERVER, template, name, strategy)));
      await dropDatabase(SERVER, name);
    }
    const empty = `bench_clone_${process.pid}_${i}_empty`;
    times.empty.push(await timed(() => admin.query(`CREATE DATABASE ${empty} TEMPLATE template0`)));
    await dropDatabase(SERVER, empty);
  }
  await admin.end();

  // snapshot / restore / factories on one test database
  const db = await createTestDatabase({ serverUrl: SERVER, templatePrefix: TEMPLATE_PREFIX, prefix: 'bench_kit' });
  const acme = db.tenant('acme');
  const factoryRuns: Record<string, number> = {};
  try {
    const n = 5000;
    factoryRuns['pipelines'] = n / ((await timed(() => factory('pipelines').createList(acme, n))) / 1000);
    const m = 500;
    factoryRuns['run_steps (parents on demand)'] = m / ((await timed(() => factory('run_steps').createList(acme, m))) / 1000);
    factoryRuns['pipelines build() only'] = n / ((await timed(() => factory('pipelines').buildList(acme, n))) / 1000);
    factoryRuns['reference: INSERT ... SELECT generate_series'] =
      n / ((await timed(() => acme.query("INSERT INTO pipelines (name) SELECT 'p' || g FROM generate_series(1, 5000) g"))) / 1000);
    const snap: number[] = [];
    const restore: number[] = [];
    for (let i = 0; i < 10; i++) {
      snap.push(await timed(() => db.snapshot('bench')));
      await acme.query('DELETE FROM pipelines WHERE id % 2 = 0');
      restore.push(await timed(() => db.restore('bench')));
    }
    const rows = (await db.query<{ n: string }>('SELECT count(*) AS n FROM pipelines')).rows[0]!.n;
    const json = {
      template,
      template_size: size,
      clones: CLONES,
      clone_ms: Object.fromEntries(Object.entries(times).map(([k, v]) => [k, { p50: pct(v, 50), p95: pct(v, 95), min: Math.min(...v), max: Math.max(...v) }])),
      snapshot_ms: { p50: pct(snap, 50), max: Math.max(...snap) },
      restore_ms: { p50: pct(restore, 50), max: Math.max(...restore) },
      snapshot_rows: Number(rows),
      factory_rows_per_s: factoryRuns,
    };
    const md = [
      `#### strata/testing (${CLONES} clones per strategy of a ${size} migrated template; snapshot/restore of a database with ${rows} pipelines + ${m} run_steps and their parents)`,
      '| what | p50 | p95 |',
      '|---|---|---|',
      ...(['FILE_COPY', 'WAL_LOG', 'empty'] as const).map(
        (k) => `| ${k === 'empty' ? 'reference: empty database from template0 (WAL_LOG)' : `clone, STRATEGY ${k}`} | ${ms(pct(times[k], 50))} | ${ms(pct(times[k], 95))} |`,
      ),
      `| snapshot (CREATE DATABASE ... TEMPLATE the test database) | ${ms(pct(snap, 50))} | max ${ms(Math.max(...snap))} |`,
      `| restore (DROP ... WITH (FORCE) + CREATE ... TEMPLATE the snapshot) | ${ms(pct(restore, 50))} | max ${ms(Math.max(...restore))} |`,
      '',
      '| factory | rows/s |',
      '|---|---|',
      ...Object.entries(factoryRuns).map(([k, v]) => `| ${k} | ${Math.round(v).toLocaleString('en-US')} |`),
    ];
    return { md, json };
  } finally {
    await db.drop();
    await closeServerPools();
  }
}

const scenario: BenchScenario = { name: 'testing-kit', run };
export default scenario;

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const out = await run({ log: (m) => process.stderr.write(`${m}\n`) });
  process.stdout.write(`${out.md.join('\n')}\n\n${JSON.stringify(out.json, null, 2)}\n`);
}
