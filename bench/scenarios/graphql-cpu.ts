/**
 * BENCH_SCENARIOS=graphql-cpu: what a GraphQL request costs the server next to the same REST read.
 *
 * One Strata server (dist/, pool BENCH_GQL_POOL (16), tenant 1's rate limit raised as in the lists scenario) is asked,
 * in interleaved runs of BENCH_DURATION at BENCH_CONNECTIONS:
 * - `rest-by-key` / `gql-by-key`: `GET /v1/tables/items/rows/{id}` and `{ items_by_pk(id: "<id>") { id tenant_id name payload } }`
 *   (random id of its tenant, 100 tenants: a new literal every request);
 * - `rest-list` / `gql-list`: the 50-row filtered, ordered page of the lists scenario;
 * - `rest-two-level` / `gql-two-level`: pipelines -> pipeline_runs -> run_steps.
 *
 * Reported per pair: the server process's CPU per request (user + system over the run / requests:
 * steady on a loaded machine, unlike req/s), its PostgreSQL backends' CPU per request, req/s, and the
 * GraphQL / REST ratios. The server is the same process for both sides, so only the request differs.
 */
import type { ChildProcess } from 'node:child_process';
import { cpuTicks as ticks, backendPidsOf as backendPids, cannon, CONNECTION_LEVELS, DURATION, gql, median, ROUNDS, sleep, startAndCheck, stop, strataTarget, tenantOf, variant, WARMUP, type Measured, type Target } from '../lib.js';
import type { BenchContext, BenchScenario } from './types.js';

/** The server's pool (BENCH_GQL_POOL, 16 as in the isolation scenario). */
const POOL = process.env['BENCH_GQL_POOL'] ?? '16';

const scenario: BenchScenario = {
  name: 'graphql-cpu',
  async run(ctx: BenchContext) {
    const tokens = ctx.tokens;
    const rest = strataTarget('rest-by-key', 3230, ctx.dbUrl, ctx.appUrl, tokens, { DB_POOL_MAX: POOL, DB_POOL_MIN: POOL, LIMIT_REQUESTS_PER_SECOND: '1000000' });
    const pairs: Array<[Target, Target]> = [
      [
        rest,
        variant(
          rest,
          'gql-by-key',
          'items_by_pk',
          (id) => ({ method: 'POST', path: '/graphql', headers: { 'content-type': 'application/json', authorization: tokens[tenantOf(id)]! }, body: gql(`{ items_by_pk(id: "${id}") { id tenant_id name payload } }`) }),
          (id, body) => String((JSON.parse(body) as { data: { items_by_pk: { id: string } } }).data.items_by_pk.id) === String(id),
        ),
      ],
      [
        variant(rest, 'rest-list', '50 rows', (id) => ({ method: 'GET', path: '/v1/tables/items/rows?select=id,name,payload&id=lt.500000&order=id.desc&limit=50', headers: { authorization: tokens[tenantOf(id)]! } }), (_id, body) => (JSON.parse(body) as { data: unknown[] }).data.length === 50),
        variant(
          rest,
          'gql-list',
          '50 rows',
          (id) => ({ method: 'POST', path: '/graphql', headers: { 'content-type': 'application/json', authorization: tokens[tenantOf(id)]! }, body: gql('{ items(first: 50, where: { id: { _lt: "500000" } }, order_by: [{ id: desc }]) { nodes { id name payload } } }') }),
          (_id, body) => (JSON.parse(body) as { data: { items: { nodes: unknown[] } } }).data.items.nodes.length === 50,
        ),
      ],
      [
        variant(rest, 'rest-two-level', 'two levels', () => ({ method: 'GET', path: '/v1/tables/pipelines/rows?select=id,name,pipeline_runs(id,status,run_steps(id,name))&limit=10&pipeline_runs.limit=5', headers: { authorization: tokens[1]! } }), (_id, body) => (JSON.parse(body) as { data: unknown[] }).data.length === 10),
        variant(
          rest,
          'gql-two-level',
          'two levels',
          () => ({ method: 'POST', path: '/graphql', headers: { 'content-type': 'application/json', authorization: tokens[1]! }, body: gql('{ pipelines(first: 10) { nodes { id name pipeline_runs(first: 5) { id status run_steps(first: 10) { id name } } } } }') }),
          (_id, body) => (JSON.parse(body) as { data: { pipelines: { nodes: unknown[] } } }).data.pipelines.nodes.length === 10,
        ),
      ],
    ];
    const only = (process.env['BENCH_GQL_PAIRS'] ?? 'by-key,list,two-level').split(',');
    const chosen = pairs.filter(([r]) => only.some((o) => r.name === `rest-${o}`));
    const before = await backendPids(ctx.dbUrl);
    let child: ChildProcess | undefined;
    const runs: Array<Measured & { nodeUs: number; pgUs: number; connections: number }> = [];
    try {
      child = await startAndCheck(rest);
      for (const [r, g] of chosen) {
        ctx.log(`graphql-cpu warm-up (untimed): ${r.name}, ${g.name}`);
        await cannon(r, WARMUP, 16);
        await cannon(g, WARMUP, 16);
      }
      const pgPids = [...(await backendPids(ctx.dbUrl))].filter((p) => !before.has(p));
      for (let round = 1; round <= ROUNDS; round++) {
        for (const connections of CONNECTION_LEVELS) {
          for (const pair of chosen) {
            for (const t of round % 2 ? pair : [...pair].reverse()) {
              const n0 = ticks([child.pid!]);
              const g0 = ticks(pgPids);
              const { lat: _lat, ...m } = await cannon(t, DURATION, connections);
              const nodeUs = Math.round(((ticks([child.pid!]) - n0) * 10_000) / Math.max(1, m.total));
              const pgUs = Math.round(((ticks(pgPids) - g0) * 10_000) / Math.max(1, m.total));
              runs.push({ ...m, round, connections, nodeUs, pgUs });
              ctx.log(`  graphql-cpu round ${round}, ${connections} conns, ${t.name}: ${m.rps} req/s p50=${m.p50}ms cpu/req node=${nodeUs}us pg=${pgUs}us non2xx=${m.non2xx} errors=${m.errors}`);
              await sleep(300);
            }
          }
        }
      }
    } finally {
      if (child) await stop(child);
    }
    const med = (name: string, c: number, k: 'rps' | 'p50' | 'nodeUs' | 'pgUs') => median(runs.filter((r) => r.target === name && r.connections === c).map((r) => r[k]));
    const md = [
      `## GraphQL vs REST, CPU per request (one server, ${DURATION}s x ${ROUNDS} rounds, interleaved, medians)`,
      '',
      'CPU per request: the server process\'s (and its PostgreSQL backends\') user + system time over a run divided by the requests served. It holds on a busy machine where req/s does not.',
      '',
      '| query | connections | REST node us/req | GraphQL node us/req | REST pg us/req | GraphQL pg us/req | node CPU GraphQL/REST | REST req/s | GraphQL req/s | req/s GraphQL/REST |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ];
    const medians: Record<string, unknown> = {};
    for (const c of CONNECTION_LEVELS) {
      for (const [r, g] of chosen) {
        const row = { rest: { rps: med(r.name, c, 'rps'), nodeUs: med(r.name, c, 'nodeUs'), pgUs: med(r.name, c, 'pgUs') }, gql: { rps: med(g.name, c, 'rps'), nodeUs: med(g.name, c, 'nodeUs'), pgUs: med(g.name, c, 'pgUs') } };
        medians[`${r.name.slice(5)}@${c}`] = row;
        md.push(
          `| ${r.name.slice(5)} | ${c} | ${row.rest.nodeUs} | ${row.gql.nodeUs} | ${row.rest.pgUs} | ${row.gql.pgUs} | ${(row.gql.nodeUs / row.rest.nodeUs).toFixed(2)}x | ${row.rest.rps} | ${row.gql.rps} | ${(row.gql.rps / row.rest.rps).toFixed(2)}x |`,
        );
      }
    }
    md.push('');
    return { md, json: { runs, medians } };
  },
};

export default scenario;
