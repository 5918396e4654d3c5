/**
 * insight: what query accounting costs on the hottest route, the single-row REST read
 * (GET /v1/tables/items/rows/{id}). The same build runs twice, alternating rounds:
 * - INSIGHT-on: the defaults (N+1 detection at 10 repeats, slow-query log at 500 ms);
 * - INSIGHT-off: N_PLUS_ONE_THRESHOLD=0 and SLOW_QUERY_MS=0 (no repeat map, no slow check).
 * Both send Server-Timing (it is always on); a sample of its values is reported too.
 */
import { WARMUP, cannon, log, startAndCheck, stop, strataTarget, tenantOf } from '../lib.js';
import type { BenchScenario } from './types.js';

const SECONDS = Math.min(Number(process.env['BENCH_DURATION'] ?? 5), 5);
const ROUNDS = 2;
const CONNECTIONS = 32;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

const scenario: BenchScenario = {
  name: 'insight',
  async run(ctx) {
    const base = { DB_POOL_MAX: '16', DB_POOL_MIN: '16', SLOW_QUERY_LOG_KEY: 'strata:bench:slow-queries' };
    const on = strataTarget('INSIGHT-on', 3280, ctx.dbUrl, ctx.appUrl, ctx.tokens, { ...base, N_PLUS_ONE_THRESHOLD: '10', SLOW_QUERY_MS: '500' });
    const off = strataTarget('INSIGHT-off', 3281, ctx.dbUrl, ctx.appUrl, ctx.tokens, { ...base, N_PLUS_ONE_THRESHOLD: '0', SLOW_QUERY_MS: '0' });
    const runs: Record<string, { rps: number[]; p50: number[]; p99: number[] }> = { 'INSIGHT-on': { rps: [], p50: [], p99: [] }, 'INSIGHT-off': { rps: [], p50: [], p99: [] } };
    const timing: string[] = [];
    // round 0 warms both (the first server after a fresh database build meets autovacuum); not counted
    for (let round = 0; round <= ROUNDS; round++) {
      for (const t of round % 2 ? [on, off] : [off, on]) {
        const child = await startAndCheck(t);
        try {
          if (timing.length === 0) {
            const res = await fetch(`http://127.0.0.1:${t.port}/v1/tables/items/rows/42`, { headers: { authorization: ctx.tokens[tenantOf(42)]! } });
            timing.push(res.headers.get('server-timing') ?? '(none)');
          }
          await cannon(t, Math.min(WARMUP, 2), CONNECTIONS);
          const m = await cannon(t, SECONDS, CONNECTIONS);
          if (round > 0) {
            runs[t.name]!.rps.push(m.rps);
            runs[t.name]!.p50.push(m.p50);
            runs[t.name]!.p99.push(m.p99);
          }
          log(`insight round ${round}: ${t.name} ${m.rps} req/s p50=${m.p50}ms p99=${m.p99}ms non2xx=${m.non2xx}`);
        } finally {
          await stop(child);
        }
      }
    }
    const row = (name: string) => {
      const r = runs[name]!;
      return { rps: Math.round(median(r.rps)), p50: +median(r.p50).toFixed(2), p99: +median(r.p99).toFixed(2) };
    };
    const a = row('INSIGHT-on');
    const b = row('INSIGHT-off');
    const json = { connections: CONNECTIONS, seconds: SECONDS, rounds: ROUNDS, on: a, off: b, rps_ratio_on_vs_off: +(a.rps / b.rps).toFixed(3), server_timing_sample: timing[0] };
    const md = [
      '## Query insight: accounting overhead on the single-row REST read',
      '',
      `${CONNECTIONS} connections, ${SECONDS}s x ${ROUNDS} rounds each after a warm-up round, alternating; medians.`,
      '',
      '| target | req/s | p50 ms | p99 ms |',
      '|---|---|---|---|',
      `| INSIGHT-on (N+1 at 10, slow log at 500 ms) | ${a.rps} | ${a.p50} | ${a.p99} |`,
      `| INSIGHT-off (both off) | ${b.rps} | ${b.p50} | ${b.p99} |`,
      '',
      `on/off throughput ratio: ${json.rps_ratio_on_vs_off}. Server-Timing sample: \`${timing[0]}\``,
      '',
    ];
    return { md, json };
  },
};

export default scenario;
