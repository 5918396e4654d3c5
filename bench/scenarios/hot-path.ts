/**
 * BENCH_SCENARIOS=hot-path: what the per-request machinery costs the single-row read.
 *
 * The same `GET /v1/tables/items/rows/{id}` (Bearer JWT, random id of its tenant, 100 tenants) is
 * sent, rounds interleaved, at BENCH_CONNECTIONS to:
 * - `strata`: this tree's dist/ as configured by default (per-tenant limits on);
 * - `strata-nolimits`: the same build with LIMITS_ENABLED=false (no rate limiter, no connection gate);
 * - `baseline`: another build's dist/ (BENCH_BASELINE_DIST, e.g. a worktree of an older commit after
 *   `npm run build`), when set: the "within 3% of today" check of issue 13;
 * - `B-rls`: the anchor's naive tenant transaction, as the yardstick the machine's speed is read in.
 *
 * Reported: medians per target and connection level, and each target's ratio to `strata`.
 */
import path from 'node:path';
import { existsSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { cpuTicks as ticks, backendPidsOf as backendPids, anchorTarget, cannon, CONNECTION_LEVELS, DURATION, median, ROUNDS, sleep, spawnLogged, startAndCheck, stop, strataTarget, STRATA_NODE_FLAGS, WARMUP, type Measured, type Target } from '../lib.js';
import type { BenchContext, BenchScenario } from './types.js';

const scenario: BenchScenario = {
  name: 'hot-path',
  async run(ctx: BenchContext) {
    const pool = { DB_POOL_MAX: '16', DB_POOL_MIN: '16' };
    const base = strataTarget('strata', 3140, ctx.dbUrl, ctx.appUrl, ctx.tokens, pool);
    const targets: Target[] = [base, { ...strataTarget('strata-nolimits', 3141, ctx.dbUrl, ctx.appUrl, ctx.tokens, { ...pool, LIMITS_ENABLED: 'false' }) }];
    const baselineDist = process.env['BENCH_BASELINE_DIST'];
    if (baselineDist) {
      const server = path.resolve(baselineDist, 'server.js');
      if (!existsSync(server)) throw new Error(`BENCH_BASELINE_DIST: ${server} does not exist (run npm run build in that tree)`);
      targets.push({
        ...base,
        name: 'baseline',
        desc: `the same read on ${baselineDist}`,
        port: 3142,
        start: () =>
          spawnLogged('baseline', process.execPath, [...STRATA_NODE_FLAGS, server], {
            DATABASE_URL: ctx.dbUrl, APP_DATABASE_URL: ctx.appUrl, JWT_SECRET: ctx.secret, PORT: '3142', HOST: '127.0.0.1',
            LOG_LEVEL: 'warn', MIGRATE_ON_BOOT: 'false', SEED_DEMO: 'false', RUN_WORKERS: 'false', NODE_ENV: 'production', ...pool,
          }),
      });
    }
    targets.push(anchorTarget('B-rls', 'rls', 3143));
    const children: ChildProcess[] = [];
    const runs: Array<Measured & { nodeUs: number; pgUs: number }> = [];
    const pids = new Map<string, { node: number[]; pg: number[] }>();
    try {
      for (const t of targets) {
        const before = await backendPids(ctx.dbUrl);
        const child = await startAndCheck(t);
        children.push(child);
        ctx.log(`hot-path warm-up (untimed): ${t.name}`);
        await cannon(t, WARMUP, 64);
        const after = await backendPids(ctx.dbUrl);
        pids.set(t.name, { node: [child.pid!], pg: [...after].filter((p) => !before.has(p)) });
      }
      for (let round = 1; round <= ROUNDS; round++) {
        for (const connections of CONNECTION_LEVELS) {
          for (const t of round % 2 ? targets : [...targets].reverse()) {
            const p = pids.get(t.name)!;
            const n0 = ticks(p.node);
            const g0 = ticks(p.pg);
            const { lat: _lat, ...m } = await cannon(t, DURATION, connections);
            // CPU per request (microseconds): steady under a loaded machine, unlike req/s
            const nodeUs = Math.round(((ticks(p.node) - n0) * 10_000) / Math.max(1, m.total));
            const pgUs = Math.round(((ticks(p.pg) - g0) * 10_000) / Math.max(1, m.total));
            runs.push({ ...m, round, connections, nodeUs, pgUs });
            ctx.log(`  hot-path round ${round}, ${connections} conns, ${t.name}: ${m.rps} req/s p50=${m.p50}ms p99=${m.p99}ms cpu/req node=${nodeUs}us pg=${pgUs}us non2xx=${m.non2xx} errors=${m.errors}`);
            await sleep(300);
          }
        }
      }
    } finally {
      for (const c of children) await stop(c);
    }
    const med = (name: string, c: number, k: 'rps' | 'p50' | 'p99' | 'nodeUs' | 'pgUs') => median(runs.filter((r) => r.target === name && r.connections === c).map((r) => r[k]));
    const md = [`## Hot path: single-row read, per-request machinery (${DURATION}s x ${ROUNDS} rounds, interleaved, medians)`, ''];
    md.push(
      'CPU per request is the server process\'s (and its PostgreSQL backends\') user + system time over the round divided by the requests served: it is what the machinery costs, and it holds on a busy machine where req/s does not.',
      '',
      '| target | connections | req/s | p50 ms | p99 ms | vs strata | node CPU us/req | PostgreSQL CPU us/req | CPU vs strata |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    );
    const medians: Record<string, unknown> = {};
    for (const c of CONNECTION_LEVELS) {
      const ref = med('strata', c, 'rps');
      const refCpu = med('strata', c, 'nodeUs') + med('strata', c, 'pgUs');
      for (const t of targets) {
        const rps = med(t.name, c, 'rps');
        const nodeUs = med(t.name, c, 'nodeUs');
        const pgUs = med(t.name, c, 'pgUs');
        medians[`${t.name}@${c}`] = { rps, p50: med(t.name, c, 'p50'), p99: med(t.name, c, 'p99'), nodeUs, pgUs };
        md.push(`| ${t.name} | ${c} | ${rps} | ${med(t.name, c, 'p50')} | ${med(t.name, c, 'p99')} | ${(rps / ref).toFixed(3)}x | ${nodeUs} | ${pgUs} | ${((nodeUs + pgUs) / refCpu).toFixed(3)}x |`);
      }
    }
    md.push('');
    return { md, json: { runs, medians } };
  },
};

export default scenario;
