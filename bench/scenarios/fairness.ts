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
 *    `pg_sleep(0.3)`). Same server build three ways: the defaults, without the heavy tenants'
 *    database-time budget (LIMIT_HEAVY_DB_MS_PER_SECOND=0) and LIMITS_ENABLED=false, interleaved
 *    rounds; the pool is the production default (DB_POOL_MAX 10). B's own rate limit is raised
 *    through PATCH /v1/admin/tenants/2 (a big customer); A keeps the configured defaults. A's flood
 *    runs in a process of its own (bench/flood-worker.mjs: B's client never parses A's answers) and
 *    reports its CPU; the server's CPU over each of B's runs is read from /proc.
 *    Target (limits on): B keeps >= 0.8x its throughput, p99 within 2x, zero errors.
 *
 * Knobs: BENCH_FAIRNESS_PARTS (overhead,fairness), BENCH_FAIRNESS_PORT (3310: the servers use it
 * and the next two), and lib's BENCH_DURATION, BENCH_WARMUP, BENCH_ROUNDS.
 */
import { fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { SignJWT } from 'jose';
import pg from 'pg';
import { BENCH_ROWS } from '../setup.js';
import { DURATION, ROUNDS, WARMUP, cannon, env, median, sleep, stop, strataTarget, waitAndCheck, type Measured, type Target } from '../lib.js';
import type { BenchContext, BenchScenario } from './types.js';

/** Ports of the two servers (BENCH_FAIRNESS_PORT, default 3310, and the next one). */
const PORT_ON = Number(env['BENCH_FAIRNESS_PORT'] ?? 3310);
const PORT_OFF = PORT_ON + 1;
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

interface Flood extends Measured {
  /** CPU the flood generator itself used (ms), over `seconds`. */
  cpuMs: number;
  seconds: number;
}

/**
 * Tenant A's flood in a process of its own (bench/flood-worker.mjs): it shares no event loop with
 * B's client, and it reports the CPU it used itself.
 */
function floodInProcess(port: number, kinds: ReturnType<typeof floodKinds>, seconds: number, connections: number): Promise<Flood> {
  return new Promise((resolve, reject) => {
    const spec = JSON.stringify({ url: `http://127.0.0.1:${port}`, connections, duration: seconds, kinds });
    const child = fork(fileURLToPath(new URL('../flood-worker.mjs', import.meta.url)), [], { env: { ...process.env, FLOOD_SPEC: spec }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    child.once('message', (m: { error?: string; total: number; rps: number; non2xx: number; errors: number; statuses: Record<string, number>; cpuMs: number; seconds: number }) => {
      if (m.error) reject(new Error(m.error));
      else resolve({ target: 'A-flood', round: 0, rps: m.rps, p50: NaN, p99: NaN, total: m.total, non2xx: m.non2xx, errors: m.errors, statuses: m.statuses, cpuMs: m.cpuMs, seconds: m.seconds });
    });
    child.once('error', reject);
    child.once('exit', (code) => code && reject(new Error(`flood generator exited with ${code}`)));
  });
}

/** CPU time (ms) a process has used so far, from /proc (Linux); NaN elsewhere. */
function cpuMsOf(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // utime + stime, in clock ticks of 10 ms
  } catch {
    return NaN;
  }
}

/** B's measured run, with the server's CPU (cores busy, 1.0 = one core) over it. */
async function measured(t: Target, pid: number | undefined): Promise<Measured & { serverCores: number }> {
  const c0 = cpuMsOf(pid);
  const t0 = performance.now();
  const m = await cannon(t, DURATION, B_CONNECTIONS);
  const serverCores = +((cpuMsOf(pid) - c0) / (performance.now() - t0)).toFixed(2);
  return { ...m, lat: undefined, serverCores } as unknown as Measured & { serverCores: number };
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
    const servers = [
      bTarget('B-limits-on', PORT_ON, {}),
      bTarget('B-no-db-budget', PORT_ON + 2, { LIMIT_HEAVY_DB_MS_PER_SECOND: '0' }),
      bTarget('B-limits-off', PORT_OFF, { LIMITS_ENABLED: 'false' }),
    ];
    interface Run {
      server: string;
      round: number;
      alone: Measured & { serverCores: number };
      flooded: Measured & { serverCores: number };
      flood: Flood;
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
          const alone = await measured(t, child.pid);
          const floodRun = floodInProcess(t.port, kinds, DURATION + 2 * WARMUP, A_CONNECTIONS);
          await new Promise((r) => setTimeout(r, WARMUP * 1000));
          const flooded = await measured(t, child.pid);
          const flood = await floodRun;
          runs.push({ server: t.name, round, alone, flooded, flood });
          log(
            `fairness round ${round}: ${t.name} B alone ${alone.rps} req/s p99=${alone.p99} server ${alone.serverCores} cores; flooded ${flooded.rps} req/s p99=${flooded.p99} server ${flooded.serverCores} cores statuses=${JSON.stringify(flooded.statuses)} errors=${flooded.errors}; A ${JSON.stringify(flood.statuses)} (generator ${(flood.cpuMs / 1000 / flood.seconds).toFixed(2)} cores)`,
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
      `Tenant B single-row reads (${B_CONNECTIONS} connections) alone, then while tenant A floods (${A_CONNECTIONS} connections: exports, heavy lists, analyst queries); pool 10 (stream pool 5). B-limits-on: the defaults; B-no-db-budget: the same without the heavy tenants' database-time budget (LIMIT_HEAVY_DB_MS_PER_SECOND=0); B-limits-off: LIMITS_ENABLED=false. Medians of ${ROUNDS} rounds; each ratio is B flooded / B alone of the same server start, then the median (with every round's value in brackets). Server cores: CPU of the API process during B's run (1.00 = one core busy); A's generator: CPU of the flood client, a process on the same machine (it competes with the server; A's real clients would not).`,
      '',
      '| server | B alone req/s | B alone p99 ms | B flooded req/s | B flooded p99 ms | throughput ratio | p99 ratio | server cores alone / flooded | B non-2xx / errors | A statuses (all rounds) | A generator cores |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|',
    ];
    const summary: Record<string, unknown> = {};
    for (const s of servers) {
      const rs = runs.filter((r) => r.server === s.name);
      if (rs.length === 0) continue;
      const aloneRps = median(rs.map((r) => r.alone.rps));
      const aloneP99 = median(rs.map((r) => r.alone.p99));
      const floodRps = median(rs.map((r) => r.flooded.rps));
      const floodP99 = median(rs.map((r) => r.flooded.p99));
      const ratios = rs.map((r) => +(r.flooded.rps / r.alone.rps).toFixed(2));
      const p99Ratios = rs.map((r) => +(r.flooded.p99 / r.alone.p99).toFixed(2));
      const bad = rs.reduce((n, r) => n + r.flooded.non2xx + r.flooded.errors + r.alone.non2xx + r.alone.errors, 0);
      const bStatuses = rs.map((r) => JSON.stringify(r.flooded.statuses)).join(' ');
      const aStatuses: Record<string, number> = {};
      for (const r of rs) for (const [k, v] of Object.entries(r.flood.statuses)) aStatuses[k] = (aStatuses[k] ?? 0) + v;
      const cores = (k: 'alone' | 'flooded') => median(rs.map((r) => r[k].serverCores));
      const genCores = median(rs.map((r) => r.flood.cpuMs / 1000 / r.flood.seconds));
      summary[s.name] = { aloneRps, aloneP99, floodRps, floodP99, ratio: median(ratios), ratios, p99Ratio: median(p99Ratios), p99Ratios, bad, bStatuses, aStatuses, serverCores: { alone: cores('alone'), flooded: cores('flooded') }, generatorCores: genCores };
      md.push(
        `| ${s.name} | ${aloneRps} | ${aloneP99} | ${floodRps} | ${floodP99} | ${median(ratios).toFixed(2)}x [${ratios.join(', ')}] | ${median(p99Ratios).toFixed(2)}x [${p99Ratios.join(', ')}] | ${cores('alone')} / ${cores('flooded')} | ${bad} (${bStatuses}) | ${JSON.stringify(aStatuses)} | ${genCores.toFixed(2)} |`,
      );
    }
    md.push('', 'Target with the limits on: B >= 0.8x its throughput, p99 within 2x, zero errors.', '');
    return { md, json: { overhead, runs, summary, overheadRatio: +(onRps / offRps).toFixed(3) } };
  },
};

export default scenario;
