/**
 * GraphQL live queries (BENCH_SCENARIOS=live).
 *
 * BENCH_LIVE_QUERIES (100) live queries of tenant 1 stay open on one Strata server, over
 * BENCH_LIVE_SOCKETS (10) WebSockets: half of them one dashboard (pipelines whose name starts with
 * `live-bench-`, with their runs), half a by-key read of each of 50 other pipelines (distinct
 * statements, so not every re-run is shared). Then BENCH_LIVE_WRITES (20) single-row writes, one
 * every 300 ms, each renaming the dashboard's pipeline (`PATCH /v1/tables/pipelines/rows/{id}`,
 * writer JWT), which changes the dashboard's answer and wakes every live query (they all read
 * pipelines). Latency = arrival of the dashboard's push - the write's 200 answer (its COMMIT is
 * before it). Reported: p50, p99, max over every (write, dashboard live query) pair, and how many
 * pushes were missing. Target (issue 20): p99 under 300 ms with 100 open live queries.
 */
import { SignJWT } from 'jose';
import pg from 'pg';
import WebSocket from 'ws';
import { env, sleep, startAndCheck, stop, strataTarget } from '../lib.js';
import type { BenchContext, BenchScenario } from './types.js';

const PORT = 3226;
const QUERIES = Number(env['BENCH_LIVE_QUERIES'] ?? 100);
const SOCKETS = Number(env['BENCH_LIVE_SOCKETS'] ?? 10);
const WRITES = Number(env['BENCH_LIVE_WRITES'] ?? 20);

const DASHBOARD = 'subscription { live { pipelines(where: { name: { _like: "live-bench-%" } }, first: 10) { nodes { id name pipeline_runs(first: 5) { id status } } } } }';
const byKey = (id: string) => `subscription { live { pipelines_by_pk(id: "${id}") { id name status } } }`;

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return +(s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? NaN).toFixed(1);
};

const scenario: BenchScenario = {
  name: 'live',
  async run(ctx: BenchContext) {
    const admin = new pg.Client({ connectionString: ctx.dbUrl });
    await admin.connect();
    let target: number;
    let others: string[];
    try {
      const r = await admin.query<{ id: string }>(
        "INSERT INTO public.pipelines (tenant_id, name) VALUES ('1', 'live-bench-0') ON CONFLICT DO NOTHING RETURNING id::text AS id",
      );
      target = Number(r.rows[0]?.id ?? (await admin.query<{ id: string }>("SELECT id::text AS id FROM public.pipelines WHERE tenant_id = '1' AND name LIKE 'live-bench-%' LIMIT 1")).rows[0]!.id);
      others = (await admin.query<{ id: string }>("SELECT id::text AS id FROM public.pipelines WHERE tenant_id = '1' AND name NOT LIKE 'live-bench-%' ORDER BY id LIMIT 50")).rows.map((x) => x.id);
    } finally {
      await admin.end();
    }
    const writer = `Bearer ${await new SignJWT({ tenant_id: '1', role: 'writer' }).setProtectedHeader({ alg: 'HS256' }).setSubject('bench-live').setExpirationTime('1h').sign(new TextEncoder().encode(ctx.secret))}`;
    const t = strataTarget('STRATA-live', PORT, ctx.dbUrl, ctx.appUrl, ctx.tokens, { DB_POOL_MAX: '16', GRAPHQL_LIVE_MAX_PER_TENANT: String(QUERIES + 10) });
    const child = await startAndCheck(t);
    const sockets: WebSocket[] = [];
    try {
      /** Arrival times of each dashboard live query's pushes. */
      const pushes = new Map<string, number[]>();
      const dashboards: string[] = [];
      for (let s = 0; s < SOCKETS; s++) {
        const ws = new WebSocket(`ws://127.0.0.1:${PORT}/graphql`, 'graphql-transport-ws', { headers: { authorization: ctx.tokens[1]! } });
        sockets.push(ws);
        await new Promise<void>((resolve, reject) => {
          ws.on('error', reject);
          ws.on('message', (raw: Buffer) => {
            const m = JSON.parse(raw.toString()) as { type: string; id?: string };
            if (m.type === 'connection_ack') resolve();
            if (m.type === 'next' && m.id && pushes.has(m.id)) pushes.get(m.id)!.push(Date.now());
          });
          ws.on('open', () => ws.send(JSON.stringify({ type: 'connection_init', payload: {} })));
        });
      }
      for (let q = 0; q < QUERIES; q++) {
        const ws = sockets[q % SOCKETS]!;
        const id = `q${q}`;
        const dashboard = q % 2 === 0 || !others.length;
        if (dashboard) {
          pushes.set(id, []);
          dashboards.push(id);
        }
        ws.send(JSON.stringify({ id, type: 'subscribe', payload: { query: dashboard ? DASHBOARD : byKey(others[q % others.length]!) } }));
      }
      const deadline = Date.now() + 30_000;
      while (dashboards.some((id) => pushes.get(id)!.length < 1) && Date.now() < deadline) await sleep(20);
      ctx.log(`live: ${QUERIES} live queries open (${dashboards.length} on the dashboard)`);
      const lags: number[] = [];
      let missing = 0;
      for (let w = 1; w <= WRITES; w++) {
        const before = new Map(dashboards.map((id) => [id, pushes.get(id)!.length]));
        const res = await fetch(`http://127.0.0.1:${PORT}/v1/tables/pipelines/rows/${target}`, {
          method: 'PATCH',
          headers: { authorization: writer, 'content-type': 'application/json' },
          body: JSON.stringify({ name: `live-bench-${w}` }),
        });
        const committed = Date.now();
        if (!res.ok) throw new Error(`write ${w}: ${res.status} ${await res.text()}`);
        const until = committed + 3_000;
        while (dashboards.some((id) => pushes.get(id)!.length <= before.get(id)!) && Date.now() < until) await sleep(2);
        for (const id of dashboards) {
          const at = pushes.get(id)![before.get(id)!];
          if (at === undefined) missing++;
          else lags.push(at - committed);
        }
        await sleep(300);
      }
      const out = { queries: QUERIES, sockets: SOCKETS, writes: WRITES, pushes: lags.length, missing, p50: pct(lags, 50), p99: pct(lags, 99), max: pct(lags, 100) };
      ctx.log(`live: push after commit p50 ${out.p50} ms, p99 ${out.p99} ms, max ${out.max} ms, missing ${missing}`);
      return {
        md: [
          `## GraphQL live queries: ${QUERIES} open, ${WRITES} writes`,
          '',
          `Push latency after the write's answer (every dashboard live query, every write): p50 ${out.p50} ms, p99 ${out.p99} ms, max ${out.max} ms; pushes missing after 3 s: ${missing}. Target: p99 < 300 ms.`,
          '',
        ],
        json: out,
      };
    } finally {
      for (const ws of sockets) ws.close();
      await stop(child);
    }
  },
};
export default scenario;
