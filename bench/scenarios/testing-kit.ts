/**
 * strata/testing: how fast a test gets a database and data, against the target (a clone of
 * the migrated demo schema under 50 ms) and its reference, pgtestdb (published: ~10-20 ms per clone
 * on a laptop).
 * - clone, side by side, interleaved round by round (BENCH_CLONES rounds, default 100, after
 *   BENCH_CLONE_WARMUP untimed ones), each database dropped after:
 *   - the kit, as a test pays it: `createTestDatabase()` (name, template check, clone) and its drop
 *     excluded (timed separately);
 *   - the kit's clone statement with STRATEGY WAL_LOG and with STRATEGY FILE_COPY;
 *   - the reference, pgtestdb's method: one plain `CREATE DATABASE x WITH TEMPLATE t OWNER u` on a
 *     dedicated connection (server default strategy: WAL_LOG on PostgreSQL 15), no kit code at all;
 *   - the floor: an empty database from template0 (what any CREATE DATABASE costs on this server).
 *   The load average is recorded at start and end; the kit/reference ratio is the figure that
 *   survives a loaded machine, the absolute times do not.
 * - snapshot and restore of a test database holding factory rows (medians of 10).
 * - factory throughput: createList of pipelines (no parents) and of run_steps (a parent run and
 *   pipeline made on demand per row), through a tenant session; reference: INSERT ... SELECT
 *   generate_series of the same table.
 * Runs inside `npm run bench` (BENCH_SCENARIOS=testing-kit) or alone: `npx tsx bench/scenarios/testing-kit.ts`.
 */
import { loadavg } from 'node:os';
import { pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import {
  cloneDatabase,
  closeServerPools,
  createTestDatabase,
  drainTestDatabasePool,
  dropDatabase,
  fillTestDatabasePool,
  ensureTemplate,
  factory,
  type CloneStrategy,
} from '../../src/testing/index.js';
import type { BenchContext, BenchScenario } from './types.js';

const SERVER = process.env['BENCH_SERVER_URL'] ?? process.env['TEST_DATABASE_URL'] ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const CLONES = Number(process.env['BENCH_CLONES'] ?? 100);
const WARMUP = Number(process.env['BENCH_CLONE_WARMUP'] ?? 3);
/** The target for one clone of the demo schema, and pgtestdb's published figure (laptop). */
const TARGET_MS = 50;
const PGTESTDB_PUBLISHED = '~10-20 ms';
const load = () => loadavg().map((x) => x.toFixed(1)).join(' / ');
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
  const owner = (await admin.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u;
  type Kind = CloneStrategy | 'pool' | 'kit' | 'reference' | 'empty';
  const KINDS: readonly Kind[] = ['pool', 'kit', 'WAL_LOG', 'FILE_COPY', 'reference', 'empty'];
  const times: Record<Kind, number[]> = { pool: [], kit: [], WAL_LOG: [], FILE_COPY: [], reference: [], empty: [] };
  const drops: number[] = [];
  const loadStart = load();
  ctx.log(`testing-kit: ${CLONES} rounds (+${WARMUP} warm-up) of ${KINDS.join(', ')} from ${template} (${size}); load ${loadStart}`);
  // the reference's own connection: pgtestdb issues one statement on an open *sql.DB, nothing else
  const ref = new pg.Client({ connectionString: SERVER });
  await ref.connect();
  const one = async (kind: Kind, i: number): Promise<number> => {
    const name = `bench_clone_${process.pid}_${i}_${kind.toLowerCase()}`;
    let took: number;
    let drop = async () => dropDatabase(SERVER, name);
    if (kind === 'pool') {
      // the hand-out from a full pool (filled untimed before, as the refill runs between tests)
      const opts = { serverUrl: SERVER, templatePrefix: TEMPLATE_PREFIX, prefix: 'bench_kit_pool', pool: 1 };
      await fillTestDatabasePool(opts);
      let made: Awaited<ReturnType<typeof createTestDatabase>> | undefined;
      took = await timed(async () => {
        made = await createTestDatabase(opts);
      });
      if (!made?.pooled) throw new Error('the pool was empty: the hand-out figure would be a clone');
      drop = async () => {
        await made?.drop();
        await fillTestDatabasePool(opts);
      };
    } else if (kind === 'kit') {
      let made: Awaited<ReturnType<typeof createTestDatabase>> | undefined;
      took = await timed(async () => {
        made = await createTestDatabase({ serverUrl: SERVER, templatePrefix: TEMPLATE_PREFIX, prefix: 'bench_kit_clone', pool: 0 });
      });
      drop = async () => made?.drop();
    } else if (kind === 'reference') {
      took = await timed(() => ref.query(`CREATE DATABASE "${name}" WITH TEMPLATE "${template}" OWNER "${owner}"`));
    } else if (kind === 'empty') {
      took = await timed(() => ref.query(`CREATE DATABASE "${name}" TEMPLATE template0`));
    } else {
      took = await timed(() => cloneDatabase(SERVER, template, name, kind));
    }
    const d = await timed(drop);
    if (i >= 0) drops.push(d);
    return took;
  };
  for (let i = -WARMUP; i < CLONES; i++) {
    // the order rotates each round, so no kind always follows the same one (checkpoints, caches)
    const offset = ((i % KINDS.length) + KINDS.length) % KINDS.length;
    for (let k = 0; k < KINDS.length; k++) {
      const kind = KINDS[(k + offset) % KINDS.length]!;
      const took = await one(kind, i);
      if (i >= 0) times[kind].push(took);
    }
  }
  await ref.end();
  await drainTestDatabasePool({ serverUrl: SERVER, prefix: 'bench_kit_pool' });
  const loadEnd = load();

  // snapshot / restore / factories on one test database
  const db = await createTestDatabase({ serverUrl: SERVER, templatePrefix: TEMPLATE_PREFIX, prefix: 'bench_kit', pool: 0 });
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
      drop_ms: { p50: pct(drops, 50), p95: pct(drops, 95) },
      target_ms: TARGET_MS,
      target_met_p50: pct(times.pool, 50) < TARGET_MS,
      raw_clone_target_met_p50: pct(times.kit, 50) < TARGET_MS,
      kit_over_reference_p50: pct(times.kit, 50) / pct(times.reference, 50),
      reference_over_empty_p50: pct(times.reference, 50) / pct(times.empty, 50),
      pgtestdb_published: PGTESTDB_PUBLISHED,
      load_average: { start: loadStart, end: loadEnd },
      snapshot_ms: { p50: pct(snap, 50), max: Math.max(...snap) },
      restore_ms: { p50: pct(restore, 50), max: Math.max(...restore) },
      snapshot_rows: Number(rows),
      factory_rows_per_s: factoryRuns,
    };
    const md = [
      `#### strata/testing (${CLONES} interleaved rounds of a ${size} migrated template, load average ${loadStart} at start, ${loadEnd} at end; snapshot/restore of a database with ${rows} pipelines + ${m} run_steps and their parents)`,
      `Target: a test database under ${TARGET_MS} ms: p50 of the pool's hand-out ${pct(times.pool, 50) < TARGET_MS ? 'met' : 'not met'}, p50 of a clone on demand ${pct(times.kit, 50) < TARGET_MS ? 'met' : 'not met'} in this run. Reference: pgtestdb's method, published ${PGTESTDB_PUBLISHED} on a laptop; IntegreSQL's method is the pool.`,
      '',
      '| what | p50 | p95 | vs reference (p50) |',
      '|---|---|---|---|',
      ...KINDS.map((k) => {
        const label = {
          pool: 'kit: createTestDatabase() from the pool of ready clones (default; what a test pays when the pool has one)',
          kit: 'kit: createTestDatabase() with pool 0 (a clone on demand: what a test pays when the pool is empty)',
          WAL_LOG: 'kit clone statement, STRATEGY WAL_LOG',
          FILE_COPY: 'kit clone statement, STRATEGY FILE_COPY',
          reference: "reference, pgtestdb's method: CREATE DATABASE ... WITH TEMPLATE ... OWNER (server default strategy)",
          empty: 'floor: empty database from template0',
        }[k];
        return `| ${label} | ${ms(pct(times[k], 50))} | ${ms(pct(times[k], 95))} | ${(pct(times[k], 50) / pct(times.reference, 50)).toFixed(2)}x |`;
      }),
      `| drop (DROP DATABASE ... WITH (FORCE)), not in the figures above | ${ms(pct(drops, 50))} | ${ms(pct(drops, 95))} | |`,
      `| snapshot (CREATE DATABASE ... TEMPLATE the test database) | ${ms(pct(snap, 50))} | max ${ms(Math.max(...snap))} | |`,
      `| restore (DROP ... WITH (FORCE) + CREATE ... TEMPLATE the snapshot) | ${ms(pct(restore, 50))} | max ${ms(Math.max(...restore))} | |`,
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
