/**
 * The PostgREST face (/rest/v1) beside Strata's own /v1, on one Strata server from dist/, in one run:
 *  - single-row read: GET /rest/v1/items?id=eq.{id} with Accept: application/vnd.pgrst.object+json
 *    (what supabase-js `.eq('id', id).single()` sends) vs GET /v1/tables/items/rows/{id};
 *  - the same read as a bare array (what `.eq('id', id).maybeSingle()` sends: Accept: application/json);
 *  - 50-row list: GET /rest/v1/items?select=id,name,payload&id=lt.500000&order=id.desc&limit=50 vs
 *    the same query string on /v1/tables/items/rows.
 * Random ids over the 1M-row `items`, each request with its tenant's Bearer JWT (RLS decides). Rounds
 * interleave the targets (autocannon, BENCH_POSTGREST_CONNECTIONS connections, BENCH_DURATION s
 * each, after an untimed warm-up); medians of req/s and p50 over rounds, and the face's ratio. Also
 * the CPU each request costs the server process and its PostgreSQL backends (user + system time over
 * the round / requests served): it holds on a loaded machine, where req/s does not.
 */
import pg from 'pg';
import { cpuTicks as ticks, cannon, DURATION, log, median, ROUNDS, sleep, startAndCheck, stop, strataTarget, tenantOf, variant, WARMUP, type Target } from '../lib.js';
import type { BenchContext, BenchScenario } from './types.js';

/** The PostgreSQL backends of the benchmark database (the server's pool, after its warm-up). */
async function backendPids(dbUrl: string): Promise<number[]> {
  const c = new pg.Client({ connectionString: dbUrl });
  await c.connect();
  try {
    const r = await c.query<{ pid: number }>('select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()');
    return r.rows.map((x) => x.pid);
  } finally {
    await c.end();
  }
}

const PORT = 3300;
const CONNECTIONS = Number(process.env['BENCH_POSTGREST_CONNECTIONS'] ?? 16);
const LIST = 'select=id,name,payload&id=lt.500000&order=id.desc&limit=50';

const scenario: BenchScenario = {
  name: 'postgrest',
  async run(ctx: BenchContext) {
    const base = strataTarget('STRATA-v1-single', PORT, ctx.dbUrl, ctx.appUrl, ctx.tokens, { DB_POOL_MAX: '16', DB_POOL_MIN: '16' });
    const auth = (id: number) => ({ authorization: ctx.tokens[tenantOf(id)]! });
    const targets: Array<{ pair: string; side: 'v1' | 'rest'; t: Target }> = [
      { pair: 'single-row read', side: 'v1', t: base },
      { pair: 'single-row read (array)', side: 'v1', t: base },
      {
        pair: 'single-row read (array)',
        side: 'rest',
        t: variant(
          base,
          'STRATA-rest-single-array',
          'GET /rest/v1/items?id=eq.{id}, Accept: application/json',
          (id) => ({ method: 'GET', path: `/rest/v1/items?id=eq.${id}`, headers: { ...auth(id), accept: 'application/json' } }),
          (id, body) => String((JSON.parse(body) as Array<{ id: number }>)[0]?.id) === String(id),
        ),
      },
      {
        pair: 'single-row read',
        side: 'rest',
        t: variant(
          base,
          'STRATA-rest-single',
          'GET /rest/v1/items?id=eq.{id}, Accept: application/vnd.pgrst.object+json',
          (id) => ({ method: 'GET', path: `/rest/v1/items?id=eq.${id}`, headers: { ...auth(id), accept: 'application/vnd.pgrst.object+json' } }),
          (id, body) => String((JSON.parse(body) as { id: number }).id) === String(id),
        ),
      },
      {
        pair: '50-row list',
        side: 'v1',
        t: variant(base, 'STRATA-v1-list', `GET /v1/tables/items/rows?${LIST}`, (id) => ({ method: 'GET', path: `/v1/tables/items/rows?${LIST}`, headers: auth(id) }), (_id, body) => (JSON.parse(body) as { data: unknown[] }).data.length === 50),
      },
      {
        pair: '50-row list',
        side: 'rest',
        t: variant(base, 'STRATA-rest-list', `GET /rest/v1/items?${LIST}`, (id) => ({ method: 'GET', path: `/rest/v1/items?${LIST}`, headers: auth(id) }), (_id, body) => (JSON.parse(body) as unknown[]).length === 50),
      },
    ];
    const child = await startAndCheck(base);
    const measured = [...new Set(targets.map((x) => x.t))];
    const results: Record<string, Array<{ rps: number; p50: number; non2xx: number; nodeUs: number; pgUs: number }>> = {};
    try {
      for (const t of measured) {
        await cannon(t, WARMUP, CONNECTIONS); // untimed warm-up, and checks the target answers
      }
      const pgPids = await backendPids(ctx.dbUrl);
      for (let round = 1; round <= ROUNDS; round++) {
        for (const t of round % 2 ? measured : [...measured].reverse()) {
          const n0 = ticks([child.pid!]);
          const g0 = ticks(pgPids);
          const m = await cannon(t, DURATION, CONNECTIONS);
          // CPU per request (microseconds): steady under a loaded machine, unlike req/s
          const nodeUs = Math.round(((ticks([child.pid!]) - n0) * 10_000) / Math.max(1, m.total));
          const pgUs = Math.round(((ticks(pgPids) - g0) * 10_000) / Math.max(1, m.total));
          (results[t.name] ??= []).push({ rps: m.rps, p50: m.p50, non2xx: m.non2xx, nodeUs, pgUs });
          log(`postgrest: round ${round} ${t.name}: ${m.rps} req/s, p50 ${m.p50} ms, cpu/req node=${nodeUs}us pg=${pgUs}us, non-2xx ${m.non2xx}`);
          await sleep(300);
        }
      }
    } finally {
      await stop(child);
    }
    const md = [
      `## PostgREST face (/rest/v1) vs /v1 (${CONNECTIONS} connections, ${ROUNDS} rounds of ${DURATION} s, medians)`,
      '',
      '| request | /v1 req/s | /rest/v1 req/s | face cost | /v1 p50 ms | /rest/v1 p50 ms | /v1 node CPU us/req | /rest/v1 node CPU us/req | /v1 PostgreSQL CPU us/req | /rest/v1 PostgreSQL CPU us/req | CPU cost |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ];
    const json: Record<string, unknown> = {};
    for (const pair of ['single-row read', 'single-row read (array)', '50-row list']) {
      const v1 = targets.find((x) => x.pair === pair && x.side === 'v1')!.t.name;
      const rest = targets.find((x) => x.pair === pair && x.side === 'rest')!.t.name;
      const med = (name: string, k: 'rps' | 'p50' | 'nodeUs' | 'pgUs') => median(results[name]!.map((r) => r[k]));
      const a = med(v1, 'rps');
      const b = med(rest, 'rps');
      const cost = +((1 - b / a) * 100).toFixed(1);
      const cpuA = med(v1, 'nodeUs') + med(v1, 'pgUs');
      const cpuB = med(rest, 'nodeUs') + med(rest, 'pgUs');
      const cpuCost = +((cpuB / cpuA - 1) * 100).toFixed(1);
      md.push(`| ${pair} | ${a} | ${b} | ${cost}% | ${med(v1, 'p50')} | ${med(rest, 'p50')} | ${med(v1, 'nodeUs')} | ${med(rest, 'nodeUs')} | ${med(v1, 'pgUs')} | ${med(rest, 'pgUs')} | ${cpuCost}% |`);
      json[pair] = {
        v1: results[v1],
        rest: results[rest],
        medianRps: { v1: a, rest: b },
        medianP50: { v1: med(v1, 'p50'), rest: med(rest, 'p50') },
        medianCpuUs: { v1: { node: med(v1, 'nodeUs'), pg: med(v1, 'pgUs') }, rest: { node: med(rest, 'nodeUs'), pg: med(rest, 'pgUs') } },
        costPercent: cost,
        cpuCostPercent: cpuCost,
      };
    }
    md.push(
      '',
      'face cost = 1 - (/rest/v1 req/s) / (/v1 req/s); negative means the face is faster. CPU cost = (node + PostgreSQL CPU per request of /rest/v1) / (that of /v1) - 1.',
      'The two single-row pairs share one /v1 measurement. CPU per request is robust on a loaded machine; req/s is not.',
    );
    return { md, json };
  },
};

export default scenario;
