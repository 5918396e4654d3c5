/**
 * citus: Strata on one server vs Strata on a Citus cluster (coordinator + 2 workers on this
 * machine, made by the Citus suite's helper on CITUS_TEST_PORT_BASE and removed at the end), and a
 * tenant move under write load.
 *
 * 1. Single-row tenant read (GET /v1/tables/pipelines/rows/{id}) and single-row insert
 *    (POST /v1/tables/pipelines/rows), the same build against each database, side by side.
 * 2. A tenant of BENCH_MOVE_ROWS rows (default 1,000,000) moved to the other worker
 *    (citus_move_shard_placement, force_logical: the call the tenant-move job makes) while
 *    BENCH_MOVE_WRITES_PER_S (default 200) inserts per second go to it through Strata: move
 *    duration, insert latency p99 and longest pause during the move, lost writes (acknowledged but
 *    not found afterwards; must be 0) and acknowledged inserts whose change event is missing (the
 *    change log is colocated and moves with the tenant; must be 0).
 *
 * Skipped, saying why, where the citus extension is not installed.
 */
import { SignJWT } from 'jose';
import pg from 'pg';
import pino from 'pino';
import { ensureAppRole } from '../../src/db/database.js';
import { createMigrator, defaultMigrationsDir } from '../../src/db/migrations/index.js';
import { prepareCluster } from '../../src/services/cluster/index.js';
import { citusAvailable, startCitusCluster } from '../../test/helpers/citus-cluster.js';
import { SECRET, WARMUP, cannon, env, log, sleep, spawnStrata, startAndCheck, stop, type Target } from '../lib.js';
import type { BenchScenario } from './types.js';

const SECONDS = Number(env['BENCH_DURATION'] ?? 10);
const CONNECTIONS = 16;
const MOVE_ROWS = Number(env['BENCH_MOVE_ROWS'] ?? 1_000_000);
const WRITES_PER_S = Number(env['BENCH_MOVE_WRITES_PER_S'] ?? 200);
const TENANT = 'bench-citus';
const MOVER = 'bench-mover';

async function sql<R extends pg.QueryResultRow>(url: string, text: string, values?: unknown[]): Promise<R[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<R>(text, values)).rows;
  } finally {
    await c.end();
  }
}

async function writerToken(tenant: string): Promise<string> {
  const jwt = await new SignJWT({ tenant_id: tenant, role: 'writer' }).setProtectedHeader({ alg: 'HS256' }).setSubject('bench-citus').setExpirationTime('2h').sign(new TextEncoder().encode(SECRET));
  return `Bearer ${jwt}`;
}

/** Tenant and 1,000 pipelines to read on one database; returns their ids. */
async function seed(url: string): Promise<string[]> {
  await sql(url, 'INSERT INTO strata.tenants (id, name) VALUES ($1, $1), ($2, $2) ON CONFLICT DO NOTHING', [TENANT, MOVER]);
  const rows = await sql<{ id: string }>(url, "INSERT INTO pipelines (tenant_id, name) SELECT $1, 'bench-' || g FROM generate_series(1, 1000) g RETURNING id::text", [TENANT]);
  return rows.map((r) => r.id);
}

function targets(name: string, port: number, dbUrl: string, appUrl: string, ids: string[], token: string): { read: Target; insert: Target } {
  const start = () => spawnStrata(name, { dbUrl, appUrl, secret: SECRET, port, env: { DB_POOL_MAX: '16', DB_POOL_MIN: '16', LIMITS_ENABLED: 'false' } });
  const pick = (i: number) => ids[i % ids.length]!;
  return {
    read: {
      name: `${name}-read`,
      desc: 'GET /v1/tables/pipelines/rows/{id}',
      port,
      start,
      request: (i) => ({ method: 'GET', path: `/v1/tables/pipelines/rows/${pick(i)}`, headers: { authorization: token } }),
      check: (i, body) => String((JSON.parse(body) as { data: { id: string } }).data.id) === pick(i),
    },
    insert: {
      name: `${name}-insert`,
      desc: 'POST /v1/tables/pipelines/rows',
      port,
      start,
      request: (i) => ({ method: 'POST', path: '/v1/tables/pipelines/rows', headers: { authorization: token, 'content-type': 'application/json' }, body: JSON.stringify({ name: `ins-${i}` }) }),
      check: () => true,
    },
  };
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : 0;
};

const scenario: BenchScenario = {
  name: 'citus',
  async run(ctx) {
    const why = citusAvailable();
    if (why) {
      log(`citus: skipped (${why})`);
      return { md: ['## Citus: single server vs cluster', '', `Skipped: ${why}.`, ''], json: { skipped: why } };
    }
    const cluster = await startCitusCluster();
    const children: Array<Awaited<ReturnType<typeof startAndCheck>>> = [];
    try {
      const app = new URL(ctx.appUrl);
      const pool = new pg.Pool({ connectionString: cluster.coordinator.url, max: 2 });
      try {
        await createMigrator({ pool, dir: defaultMigrationsDir(), log: pino({ level: 'silent' }) }).up();
        await prepareCluster(pool, pino({ level: 'silent' }));
        const c = await pool.connect();
        try {
          await ensureAppRole(c, decodeURIComponent(app.username), decodeURIComponent(app.password));
        } finally {
          c.release();
        }
      } finally {
        await pool.end();
      }
      const clusterApp = new URL(cluster.coordinator.url);
      clusterApp.username = app.username;
      clusterApp.password = app.password;
      const token = await writerToken(TENANT);
      const single = targets('CITUS-single', 3290, ctx.dbUrl, ctx.appUrl, await seed(ctx.dbUrl), token);
      const dist = targets('CITUS-cluster', 3291, cluster.coordinator.url, clusterApp.toString(), await seed(cluster.coordinator.url), token);

      const side: Record<string, { rps: number; p50: number; p99: number; non2xx: number }> = {};
      for (const pair of [single, dist]) {
        const child = await startAndCheck(pair.read);
        children.push(child);
        for (const t of [pair.read, pair.insert]) {
          await cannon(t, Math.min(WARMUP, 2), CONNECTIONS);
          const m = await cannon(t, SECONDS, CONNECTIONS);
          side[t.name] = { rps: m.rps, p50: m.p50, p99: m.p99, non2xx: m.non2xx };
          log(`citus: ${t.name} ${m.rps} req/s p50=${m.p50}ms p99=${m.p99}ms non2xx=${m.non2xx}`);
        }
        if (pair === single) await stop(children.pop()!);
      }

      // the move: a big tenant, a steady writer through Strata, the same call the tenant-move job makes
      log(`citus: loading ${MOVE_ROWS} rows for tenant ${MOVER}`);
      // bulk-loaded without change capture (1M events would double what moves; the writes under load are captured)
      await sql(cluster.coordinator.url, 'ALTER TABLE pipelines DISABLE TRIGGER strata_capture');
      await sql(cluster.coordinator.url, "INSERT INTO pipelines (tenant_id, name) SELECT $1, 'big-' || g FROM generate_series(1, $2::int) g", [MOVER, MOVE_ROWS]);
      await sql(cluster.coordinator.url, 'ALTER TABLE pipelines ENABLE TRIGGER strata_capture');
      const [placement] = await sql<{ shardid: string; nodeport: number }>(
        cluster.coordinator.url,
        "SELECT s.shardid::text, s.nodeport FROM citus_shards s WHERE s.table_name = 'pipelines'::regclass AND s.shardid = get_shard_id_for_distribution_column('pipelines', $1::text)",
        [MOVER],
      );
      const to = cluster.workers.find((w) => w.port !== placement!.nodeport)!;
      const moverToken = await writerToken(MOVER);
      const writes: Array<{ start: number; end: number; status: number; id?: string }> = [];
      let writing = true;
      const pending: Array<Promise<void>> = [];
      // open loop at a fixed rate: each tick sends what the schedule owes (timers are coarse under load)
      const send = (i: number) => {
        const start = performance.now();
        pending.push(
          fetch('http://127.0.0.1:3291/v1/tables/pipelines/rows', { method: 'POST', headers: { authorization: moverToken, 'content-type': 'application/json' }, body: JSON.stringify({ name: `move-${i}` }) })
            .then(async (res) => {
              const body = (await res.json()) as { data?: { id: string } };
              writes.push({ start, end: performance.now(), status: res.status, id: body.data?.id });
            })
            .catch(() => {
              writes.push({ start, end: performance.now(), status: 0 });
            }),
        );
      };
      const loadStart = performance.now();
      let sent = 0;
      const loader = (async () => {
        while (writing) {
          const owed = Math.floor(((performance.now() - loadStart) / 1000) * WRITES_PER_S) - sent;
          for (let k = 0; k < owed; k++) send(sent++);
          await sleep(10);
        }
      })();
      await sleep(2000);
      const moveStart = performance.now();
      await sql(cluster.coordinator.url, "SELECT citus_move_shard_placement($1::bigint, '127.0.0.1', $2, '127.0.0.1', $3, shard_transfer_mode => 'force_logical')", [placement!.shardid, placement!.nodeport, to.port]);
      const moveEnd = performance.now();
      await sleep(2000);
      writing = false;
      await loader;
      await Promise.all(pending);
      const acked = writes.filter((w) => w.status === 201).map((w) => w.id!);
      const found = await sql<{ n: number }>(cluster.coordinator.url, 'SELECT count(*)::int AS n FROM pipelines WHERE tenant_id = $1 AND id = ANY($2::bigint[])', [MOVER, acked]);
      // every acknowledged insert also has its change event (the change log moves with the tenant's shard group)
      const events = await sql<{ n: number }>(
        cluster.coordinator.url,
        "SELECT count(DISTINCT pk->>'id')::int AS n FROM strata.changes WHERE tenant_id = $1 AND table_name = 'pipelines' AND op = 'insert' AND (pk->>'id')::bigint = ANY($2::bigint[])",
        [MOVER, acked],
      );
      const during = writes.filter((w) => w.end >= moveStart && w.start <= moveEnd);
      const ends = during.map((w) => w.end).sort((a, b) => a - b);
      const move = {
        rows: MOVE_ROWS,
        writes_per_s: WRITES_PER_S,
        achieved_writes_per_s: Math.round(writes.length / ((performance.now() - loadStart) / 1000)),
        duration_ms: Math.round(moveEnd - moveStart),
        writes_during_move: during.length,
        write_latency_p99_ms: Math.round(pct(during.map((w) => w.end - w.start), 99)),
        longest_pause_ms: Math.round(Math.max(0, ...ends.slice(1).map((e, i) => e - ends[i]!))),
        acknowledged: acked.length,
        failed: writes.filter((w) => w.status !== 201).length,
        statuses: writes.reduce<Record<string, number>>((a, w) => ({ ...a, [w.status]: (a[w.status] ?? 0) + 1 }), {}),
        lost: acked.length - found[0]!.n,
        change_events_lost: acked.length - events[0]!.n,
      };
      log(`citus: move ${JSON.stringify(move)}`);
      const ratio = (k: string) => +(side[`CITUS-cluster-${k}`]!.rps / side[`CITUS-single-${k}`]!.rps).toFixed(3);
      const json = { connections: CONNECTIONS, seconds: SECONDS, side, cluster_vs_single: { read: ratio('read'), insert: ratio('insert') }, move };
      const md = [
        '## Citus: single server vs cluster (coordinator + 2 workers on this machine), and a tenant move under load',
        '',
        `${CONNECTIONS} connections, ${SECONDS}s per measurement, one round.`,
        '',
        '| | single server req/s (p99 ms) | cluster req/s (p99 ms) | cluster / single |',
        '|---|---|---|---|',
        ...['read', 'insert'].map((k) => `| ${k} | ${side[`CITUS-single-${k}`]!.rps} (${side[`CITUS-single-${k}`]!.p99}) | ${side[`CITUS-cluster-${k}`]!.rps} (${side[`CITUS-cluster-${k}`]!.p99}) | ${ratio(k)}x |`),
        '',
        `Move of a ${MOVE_ROWS}-row tenant under ${WRITES_PER_S} inserts/s (achieved ${move.achieved_writes_per_s}/s): ${move.duration_ms} ms; insert p99 during the move ${move.write_latency_p99_ms} ms, longest pause ${move.longest_pause_ms} ms; ${move.acknowledged} acknowledged, ${move.failed} failed, **${move.lost} lost**, ${move.change_events_lost} acknowledged inserts without their change event.`,
        '',
      ];
      return { md, json };
    } finally {
      for (const child of children) await stop(child);
      await cluster.stop();
    }
  },
};

export default scenario;
