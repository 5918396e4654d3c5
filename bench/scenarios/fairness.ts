/**
 * fairness: does one tenant's flood starve another? (issue 13, fair shares per tenant)
 *
 * 1. Overhead: the isolation scenario's single-row read (random id, its tenant among 100), Strata
 *    with the per-tenant limits on (default) vs LIMITS_ENABLED=false, interleaved rounds, 16
 *    connections. The cost of the rate limiter and the connection gates on the hot path.
 * 2. Fairness: tenant B (tenant '2') reads single rows (`GET /v1/tables/items/rows/{id}`, 16
 *    connections) alone, then again while tenant A (tenant '1', 48 connections) floods with
 *    streamed exports (10k-row CSV and `pg_sleep(0.5)` SQL exports), heavy lists (1,000 rows sorted
 *    on an unindexed column; a two-level embed) and analyst queries (a count over its items, a
 *    `pg_sleep(0.3)`). Same server build with the limits on and with them off, interleaved rounds;
 *    the pool is the production default (DB_POOL_MAX 10). B's own rate limit is raised through
 *    PATCH /v1/admin/tenants/2 (a big customer); A keeps the configured defaults.
 *    Target (limits on): B keeps >= 0.8x its throughput, p99 within 2x, zero errors.
 */
import { Worker } from 'node:worker_threads';
import { SignJWT } from 'jose';
import pg from 'pg';
import { BENCH_ROWS } from '../setup.js';
import { DURATION, ROUNDS, WARMUP, cannon, env, median, sleep, stop, strataTarget, waitAndCheck, type Measured, type Target } from '../lib.js';
import type { BenchContext, BenchScenario } from './types.js';

const PORT_ON = 3310;
const PORT_OFF = 3311;
const B_CONNECTIONS = 16;
const A_CONNECTIONS = 48;
const POOL = { DB_POOL_MAX: '10', DB_POOL_MIN: '10' };
/** Which parts run (BENCH_FAIRNESS_PARTS, default both): `overhead`, `fairness`. */
const PARTS = (env['BENCH_FAIRNESS_PARTS'] ?? 'overhead,fairness').split(',');

/** Start a server and wait for it (up to 120 s: on a busy machine a start can take longer than lib's 30 s). */
async function startAndCheck(t: Target) {
  const child = t.start();
  try {
    for (let i = 0; i < 600; i++) {
      if (child.exitCode !== null) throw new Error(`${t.name} exited early`);
      const up = await fetch(`http://127.0.0.1:${t.port}/healthz`, { signal: AbortSignal.timeout(1000) }).then((r) => r.ok, () => false);
      if (up) break;
      await sleep(200);
    }
    await waitAndCheck(t, child);
  } catch (err) {
    await stop(child);
    throw err;
  }
  return child;
}

/** Ids of tenant '2' (items.tenant_id = id % 100 + 1). */
const bId = () => 100 * Math.floor(Math.random() * (BENCH_ROWS / 100)) + 1;

async function sign(secret: string, tenant: string | null, role: string): Promise<string> {
  const claims: Record<string, string> = { role };
  if (tenant !== null) claims['tenant_id'] = tenant;
  const jwt = await new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setSubject(`bench-fair-${role}`).setExpirationTime('2h').sign(new TextEncoder().encode(secret));
  return `Bearer ${jwt}`;
}

/** Tenant A's flood on its own thread (bench/flood-worker.mjs): answers what it saw. */
function floodInThread(port: number, kinds: ReturnType<typeof floodKinds>, seconds: number, connections: number): Promise<Measured> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL('../flood-worker.mjs', import.meta.url), { workerData: { url: `http://127.0.0.1:${port}`, connections, duration: seconds, kinds } });
    w.once('message', (m: { error?: string; total: number; rps: number; non2xx: number; errors: number; statuses: Record<string, number> }) => {
      void w.terminate();
      if (m.error) reject(new Error(m.error));
      else resolve({ target: 'A-flood', round: 0, rps: m.rps, p50: NaN, p99: NaN, total: m.total, non2xx: m.non2xx, errors: m.errors, statuses: m.statuses });
    });
    w.once('error', reject);
  });
}

function floodKinds(reader: string, analyst: string) {
  const json = { 'content-type': 'application/json' };
  const kinds = [
    { method: 'GET' as const, path: '/v1/tables/items/export?format=csv&select=id,name,payload', headers: { authorization: reader } },
    { method: 'POST' as const, path: '/v1/sql/export', headers: { authorization: analyst, ...json }, body: JSON.stringify({ sql: 'select pg_sleep(0.5) as s' }) },
    { method: 'GET' as const, path: '/v1/tables/items/rows?select=id,name,payload&order=name.desc&limit=1000', headers: { authorization: reader } },
    { method: 'GET' as const, path: '/v1/tables/pipelines/rows?select=id,name,pipeline_runs(id,status,run_steps(id,name))&limit=50', headers: { authorization: reader } },
    { method: 'POST' as const, path: '/v1/sql', headers: { authorization: analyst, ...json }, body: JSON.stringify({ sql: 'select count(*) as n, max(name) as m from items' }) },
    { method: 'POST' as const, path: '/v1/sql', headers: { authorization: analyst, ...json }, body: JSON.stringify({ sql: 'select pg_sleep(0.3) as s' }) },
  ];
  return kinds;
}

const scenario: BenchScenario = {
  name: 'fairness',
  async run(ctx: BenchContext) {
    const { log } = ctx;
    const admin = await sign(ctx.secret, null, 'platform_admin');
    const bReader = await sign(ctx.secret, '2', 'reader');
    const kinds = floodKinds(await sign(ctx.secret, '1', 'reader'), await sign(ctx.secret, '1', 'analyst'));
    // the analyst flood reads items: the sandbox role needs SELECT on it (RLS still applies)
    {
      const c = new pg.Client({ connectionString: ctx.dbUrl });
      await c.connect();
      await c.query('GRANT SELECT ON items TO strata_analyst').finally(() => c.end());
    }

    // 1. Overhead on the hot path: 100 tenants' single-row reads, limits on vs off.
    const on = strataTarget('STRATA-limits-on', PORT_ON, ctx.dbUrl, ctx.appUrl, ctx.tokens, { DB_POOL_MAX: '16', DB_POOL_MIN: '16' });
    const off = strataTarget('STRATA-limits-off', PORT_OFF, ctx.dbUrl, ctx.appUrl, ctx.tokens, { DB_POOL_MAX: '16', DB_POOL_MIN: '16', LIMITS_ENABLED: 'false' });
    const overhead: Measured[] = [];
    for (let round = 1; round <= (PARTS.includes('overhead') ? ROUNDS : 0); round++) {
      for (const t of round % 2 ? [on, off] : [off, on]) {
        const child = await startAndCheck(t);
        try {
          await cannon(t, WARMUP, 16);
          const m = await cannon(t, DURATION, 16);
          overhead.push({ ...m, lat: undefined, round } as unknown as Measured);
          log(`fairness overhead round ${round}: ${t.name} ${m.rps} req/s p50=${m.p50} p99=${m.p99} non2xx=${m.non2xx}`);
        } finally {
          await stop(child);
        }
      }
    }

    // 2. B alone, then B while A floods; limits on and off.
    const bTarget = (name: string, port: number, extra: Record<string, string>): Target => ({
      ...strataTarget(name, port, ctx.dbUrl, ctx.appUrl, ctx.tokens, { ...POOL, ...extra }),
      request: () => ({ method: 'GET', path: `/v1/tables/items/rows/${bId()}`, headers: { authorization: bReader } }),
      check: (_id, body) => String((JSON.parse(body) as { data: { tenant_id: string | number } }).data.tenant_id) === '2',
    });
    const servers = [bTarget('B-limits-on', PORT_ON, {}), bTarget('B-limits-off', PORT_OFF, { LIMITS_ENABLED: 'false' })];
    interface Run {
      server: string;
      round: number;
      alone: Measured;
      flooded: Measured;
      flood: Measured;
    }
    const runs: Run[] = [];
    for (let round = 1; round <= (PARTS.includes('fairness') ? ROUNDS : 0); round++) {
      for (const t of round % 2 ? servers : [...servers].reverse()) {
        const child = await startAndCheck(t);
        try {
          const patch = await fetch(`http://127.0.0.1:${t.port}/v1/admin/tenants/2`, {
            method: 'PATCH',
            headers: { authorization: admin, 'content-type': 'application/json' },
            body: JSON.stringify({ limits: { requests_per_second: 1_000_000 } }),
          });
          if (patch.status !== 200) throw new Error(`PATCH limits of tenant 2: ${patch.status} ${await patch.text()}`);
          await cannon(t, WARMUP, B_CONNECTIONS);
          const alone = await cannon(t, DURATION, B_CONNECTIONS);
          const floodRun = floodInThread(t.port, kinds, DURATION + 2 * WARMUP, A_CONNECTIONS);
          await new Promise((r) => setTimeout(r, WARMUP * 1000));
          const flooded = await cannon(t, DURATION, B_CONNECTIONS);
          const floodM = await floodRun;
          const strip = (m: Measured & { lat?: number[] }) => ({ ...m, lat: undefined }) as unknown as Measured;
          runs.push({ server: t.name, round, alone: strip(alone), flooded: strip(flooded), flood: strip(floodM) });
          log(
            `fairness round ${round}: ${t.name} B alone ${alone.rps} req/s p99=${alone.p99}; flooded ${flooded.rps} req/s p99=${flooded.p99} statuses=${JSON.stringify(flooded.statuses)} errors=${flooded.errors}; A ${JSON.stringify(floodM.statuses)}`,
          );
        } finally {
          await stop(child);
        }
      }
    }

    const med = (name: string, k: 'rps' | 'p50' | 'p99') => median(overhead.filter((r) => r.target === name).map((r) => r[k]));
    const onRps = med(on.name, 'rps');
    const offRps = med(off.name, 'rps');
    const md = [
      `## Fairness: fair shares per tenant (${DURATION}s runs x ${ROUNDS} rounds, medians, one run)`,
      '',
      'Hot-path cost: single-row read of 100 tenants (the isolation request), 16 connections, pool 16.',
      '',
      '| server | req/s | p50 ms | p99 ms | vs limits off |',
      '|---|---:|---:|---:|---:|',
      `| Strata, limits on (default) | ${onRps} | ${med(on.name, 'p50')} | ${med(on.name, 'p99')} | ${(onRps / offRps).toFixed(3)}x |`,
      `| Strata, LIMITS_ENABLED=false | ${offRps} | ${med(off.name, 'p50')} | ${med(off.name, 'p99')} | 1.000x |`,
      '',
      `Tenant B single-row reads (${B_CONNECTIONS} connections) alone, then while tenant A floods (${A_CONNECTIONS} connections: exports, heavy lists, analyst queries); pool 10 (stream pool 5).`,
      '',
      '| server | B alone req/s | B alone p99 ms | B flooded req/s | B flooded p99 ms | throughput ratio | p99 ratio | B non-2xx / errors | A statuses (last round) |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---|',
    ];
    const summary: Record<string, unknown> = {};
    for (const s of servers) {
      const rs = runs.filter((r) => r.server === s.name);
      const aloneRps = median(rs.map((r) => r.alone.rps));
      const aloneP99 = median(rs.map((r) => r.alone.p99));
      const floodRps = median(rs.map((r) => r.flooded.rps));
      const floodP99 = median(rs.map((r) => r.flooded.p99));
      const bad = rs.reduce((n, r) => n + r.flooded.non2xx + r.flooded.errors + r.alone.non2xx + r.alone.errors, 0);
      const bStatuses = rs.map((r) => JSON.stringify(r.flooded.statuses)).join(' ');
      summary[s.name] = { aloneRps, aloneP99, floodRps, floodP99, ratio: +(floodRps / aloneRps).toFixed(3), p99Ratio: +(floodP99 / aloneP99).toFixed(2), bad, bStatuses };
      md.push(
        `| ${s.name} | ${aloneRps} | ${aloneP99} | ${floodRps} | ${floodP99} | ${(floodRps / aloneRps).toFixed(2)}x | ${(floodP99 / aloneP99).toFixed(2)}x | ${bad} (${bStatuses}) | ${JSON.stringify(rs.at(-1)?.flood.statuses ?? {})} |`,
      );
    }
    md.push('', 'Target with the limits on: B >= 0.8x its throughput, p99 within 2x, zero errors.', '');
    return { md, json: { overhead, runs, summary, overheadRatio: +(onRps / offRps).toFixed(3) } };
  },
};

export default scenario;
