/**
 * The PostgREST face (/rest/v1) beside Strata's own /v1, on one Strata server from dist/, in one run:
 *  - single-row read: GET /rest/v1/items?id=eq.{id} with Accept: application/vnd.pgrst.object+json
 *    (what supabase-js `.eq('id', id).single()` sends) vs GET /v1/tables/items/rows/{id};
 *  - 50-row list: GET /rest/v1/items?select=id,name,payload&id=lt.500000&order=id.desc&limit=50 vs
 *    the same query string on /v1/tables/items/rows.
 * Random ids over the 1M-row `items`, each request with its tenant's Bearer JWT (RLS decides). Rounds
 * interleave the four targets (autocannon, BENCH_POSTGREST_CONNECTIONS connections, BENCH_DURATION s
 * each, after an untimed warm-up); medians of req/s and p50 over rounds, and the face's ratio.
 */
import { cannon, DURATION, log, median, ROUNDS, startAndCheck, stop, strataTarget, tenantOf, variant, WARMUP, type Target } from '../lib.js';
import type { BenchContext, BenchScenario } from './types.js';

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
    const results: Record<string, Array<{ rps: number; p50: number; non2xx: number }>> = {};
    try {
      for (const { t } of targets) {
        await cannon(t, WARMUP, CONNECTIONS); // untimed warm-up, and checks the target answers
      }
      for (let round = 1; round <= ROUNDS; round++) {
        for (const { t } of targets) {
          const m = await cannon(t, DURATION, CONNECTIONS);
          (results[t.name] ??= []).push({ rps: m.rps, p50: m.p50, non2xx: m.non2xx });
          log(`postgrest: round ${round} ${t.name}: ${m.rps} req/s, p50 ${m.p50} ms, non-2xx ${m.non2xx}`);
        }
      }
    } finally {
      await stop(child);
    }
    const md = [
      `## PostgREST face (/rest/v1) vs /v1 (${CONNECTIONS} connections, ${ROUNDS} rounds of ${DURATION} s, medians)`,
      '',
      '| request | /v1 req/s | /rest/v1 req/s | face cost | /v1 p50 ms | /rest/v1 p50 ms |',
      '|---|---:|---:|---:|---:|---:|',
    ];
    const json: Record<string, unknown> = {};
    for (const pair of ['single-row read', '50-row list']) {
      const v1 = targets.find((x) => x.pair === pair && x.side === 'v1')!.t.name;
      const rest = targets.find((x) => x.pair === pair && x.side === 'rest')!.t.name;
      const a = median(results[v1]!.map((r) => r.rps));
      const b = median(results[rest]!.map((r) => r.rps));
      const pa = median(results[v1]!.map((r) => r.p50));
      const pb = median(results[rest]!.map((r) => r.p50));
      const cost = +((1 - b / a) * 100).toFixed(1);
      md.push(`| ${pair} | ${a} | ${b} | ${cost}% | ${pa} | ${pb} |`);
      json[pair] = { v1: results[v1], rest: results[rest], medianRps: { v1: a, rest: b }, medianP50: { v1: pa, rest: pb }, costPercent: cost };
    }
    md.push('', 'face cost = 1 - (/rest/v1 req/s) / (/v1 req/s); negative means the face is faster.');
    return { md, json };
  },
};

export default scenario;
