/**
 * Strata on a real three-node Citus cluster (coordinator + 2 workers) made by this file's setup on
 * its own ports and data directories (test/helpers/citus-cluster.ts), torn down at the end.
 * Skipped, with the reason printed, where the citus extension is not installed.
 */
import pg from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureAppRole } from '../src/db/database.js';
import { createMigrator, defaultMigrationsDir } from '../src/db/migrations/index.js';
import { prepareCluster, type DistributeReport } from '../src/services/cluster/index.js';
import type { SessionContext } from '../src/db/session.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { citusAvailable, startCitusCluster, type CitusCluster } from './helpers/citus-cluster.js';
import { TEST_APP_PASSWORD, TEST_APP_ROLE } from './helpers/constants.js';

const unavailable = citusAvailable();
if (unavailable) console.log(`Citus suite skipped: ${unavailable}`);

type Json = Record<string, unknown>;

describe.skipIf(unavailable !== null)('Strata on a Citus cluster', () => {
  let cluster: CitusCluster;
  let t: TestApp;
  let report: DistributeReport | null;
  const headers: Record<string, Record<string, string>> = {};

  beforeAll(async () => {
    cluster = await startCitusCluster();
    const pool = new pg.Pool({ connectionString: cluster.coordinator.url, max: 2 });
    try {
      await createMigrator({ pool, dir: defaultMigrationsDir(), log: pino({ level: 'silent' }) }).up();
      report = await prepareCluster(pool, pino({ level: 'silent' }));
      const c = await pool.connect();
      try {
        await ensureAppRole(c, TEST_APP_ROLE, TEST_APP_PASSWORD);
      } finally {
        c.release();
      }
    } finally {
      await pool.end();
    }
    t = await createTestApp({
      database: { name: 'postgres', url: cluster.coordinator.url, drop: async () => undefined },
      env: { DB_ACQUIRE_TIMEOUT_MS: '10000' },
    });
    for (const tenant of ['acme', 'globex']) {
      headers[`${tenant}:writer`] = await t.auth('writer', tenant);
      headers[`${tenant}:analyst`] = await t.auth('analyst', tenant);
    }
  }, 240_000);

  afterAll(async () => {
    await t?.close();
    await cluster?.stop();
  }, 120_000);

  const req = async (who: string, method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, payload?: unknown) => {
    const res = await t.app.inject({ method, url, headers: headers[who], payload: payload as Json | undefined });
    return { status: res.statusCode, body: res.body ? res.json<Json>() : {} };
  };

  describe('detection and the cluster step', () => {
    it('runs in cluster mode on a Citus coordinator with workers', () => {
      expect(t.db.cluster).toBe(true);
      expect(t.db.clusterMode.workers).toBe(2);
      expect(t.db.clusterMode.citusVersion).toMatch(/^13\./);
    });

    it('distributes every tenant table by tenant_id in one colocation group and keeps platform tables on the coordinator', async () => {
      expect(report?.distributed.sort()).toEqual(['documents', 'pipeline_runs', 'pipelines', 'run_logs', 'run_steps']);
      const { rows } = await cluster.query<{ rel: string; col: string; colocationid: number; method: string }>(
        cluster.coordinator,
        "SELECT logicalrelid::regclass::text AS rel, column_to_column_name(logicalrelid, partkey) AS col, colocationid, partmethod AS method FROM pg_dist_partition ORDER BY 1",
      );
      const tenantTables = rows.filter((r) => report!.distributed.includes(r.rel));
      expect(tenantTables).toHaveLength(5);
      for (const r of tenantTables) expect(r).toMatchObject({ col: 'tenant_id', method: 'h' });
      expect(new Set(tenantTables.map((r) => r.colocationid)).size).toBe(1);
      // nothing of schema strata is distributed: tenants, keys, migrations stay on the coordinator
      expect(rows.filter((r) => r.rel.startsWith('strata.'))).toEqual([]);
      // shards are spread over both workers
      const { rows: placements } = await cluster.query<{ port: number; n: number }>(
        cluster.coordinator,
        "SELECT nodeport AS port, count(*)::int AS n FROM citus_shards WHERE table_name = 'pipelines'::regclass GROUP BY 1 ORDER BY 1",
      );
      expect(placements.map((p) => p.port)).toEqual(cluster.workers.map((w) => w.port));
    });

    it('is idempotent: a second run finds nothing left to distribute', async () => {
      const pool = new pg.Pool({ connectionString: cluster.coordinator.url, max: 1 });
      try {
        const again = await prepareCluster(pool, pino({ level: 'silent' }));
        expect(again).toEqual({ distributed: [], reference: [], keysWidened: [], captureRemoved: [] });
      } finally {
        await pool.end();
      }
    });
  });

  describe('tenant isolation across nodes', () => {
    const made: Record<string, string[]> = { acme: [], globex: [] };
    beforeAll(async () => {
      for (const tenant of ['acme', 'globex']) {
        for (let i = 0; i < 5; i++) {
          const r = await req(`${tenant}:writer`, 'POST', '/v1/tables/pipelines/rows', { name: `${tenant}-p${i}` });
          expect(r.status, JSON.stringify(r.body)).toBe(201);
          made[tenant]!.push(String((r.body['data'] as Json)['id']));
        }
      }
    });

    it('REST lists and reads only the caller tenant rows, and another tenant row is 404', async () => {
      for (const tenant of ['acme', 'globex']) {
        const other = tenant === 'acme' ? 'globex' : 'acme';
        const list = await req(`${tenant}:writer`, 'GET', '/v1/tables/pipelines/rows?limit=100');
        expect(list.status).toBe(200);
        const rows = list.body['data'] as Json[];
        expect(rows.map((r) => String(r['id'])).sort()).toEqual([...made[tenant]!].sort());
        for (const r of rows) expect(r['tenant_id']).toBe(tenant);
        expect((await req(`${tenant}:writer`, 'GET', `/v1/tables/pipelines/rows/${made[tenant]![0]}`)).status).toBe(200);
        expect((await req(`${tenant}:writer`, 'GET', `/v1/tables/pipelines/rows/${made[other]![0]}`)).status).toBe(404);
      }
    });

    it('REST refuses to update, delete or insert another tenant rows, and nothing changes', async () => {
      const victim = made['acme']![1]!;
      const upd = await req('globex:writer', 'PATCH', `/v1/tables/pipelines/rows/${victim}`, { name: 'stolen' });
      expect(upd.status).toBe(404);
      const del = await req('globex:writer', 'DELETE', `/v1/tables/pipelines/rows/${victim}`);
      expect(del.status).toBe(404);
      const byFilter = await req('globex:writer', 'PATCH', `/v1/tables/pipelines/rows?id=eq.${victim}`, { name: 'stolen' });
      expect(byFilter.status).toBe(200);
      expect(byFilter.body['data']).toEqual([]);
      const forged = await req('globex:writer', 'POST', '/v1/tables/pipelines/rows', { name: 'forged', tenant_id: 'acme' });
      expect(forged.status).toBe(403);
      expect((forged.body['error'] as Json)['code']).toBe('FORBIDDEN_BY_DATABASE');
      const { rows } = await t.db.adminQuery<{ name: string; n: number }>(
        "SELECT (SELECT name FROM pipelines WHERE tenant_id = 'acme' AND id = $1) AS name, (SELECT count(*)::int FROM pipelines WHERE name IN ('stolen', 'forged')) AS n",
        [victim],
      );
      expect(rows[0]).toEqual({ name: 'acme-p1', n: 0 });
    });

    it('GraphQL sees only the caller tenant rows', async () => {
      for (const tenant of ['acme', 'globex']) {
        const res = await t.app.inject({
          method: 'POST',
          url: '/graphql',
          headers: headers[`${tenant}:writer`],
          payload: { query: '{ pipelines(first: 100) { totalCount nodes { id tenant_id } } }' },
        });
        expect(res.statusCode, res.body).toBe(200);
        const conn = res.json<{ data: { pipelines: { totalCount: number; nodes: Json[] } } }>().data.pipelines;
        expect(conn.totalCount).toBe(made[tenant]!.length);
        expect(conn.nodes.map((n) => String(n['id'])).sort()).toEqual([...made[tenant]!].sort());
      }
    });

    it('/v1/sql aggregates over the caller tenant rows only, on every shard', async () => {
      for (const tenant of ['acme', 'globex']) {
        const res = await t.app.inject({
          method: 'POST',
          url: '/v1/sql',
          headers: headers[`${tenant}:analyst`],
          payload: { sql: 'SELECT tenant_id, count(*)::int AS n FROM pipelines GROUP BY tenant_id' },
        });
        expect(res.statusCode, res.body).toBe(200);
        expect(res.json<{ data: Json[] }>().data).toEqual([{ tenant_id: tenant, n: made[tenant]!.length }]);
      }
    });

    it('a connection outside a tenant session sees no tenant rows on any node', async () => {
      const c = new pg.Client({ connectionString: appUrl(cluster.coordinator.url) });
      await c.connect();
      try {
        const { rows } = await c.query<{ n: number }>('SELECT count(*)::int AS n FROM pipelines');
        expect(rows[0]!.n).toBe(0);
        await c.query('BEGIN');
        await c.query("SELECT set_config('strata.tenant_id', 'acme', true)");
        // set_config is not sent to the workers: they see no tenant, RLS there returns nothing
        const { rows: viaSetConfig } = await c.query<{ n: number }>('SELECT count(*)::int AS n FROM pipelines');
        expect(viaSetConfig[0]!.n).toBe(0);
        await c.query('ROLLBACK');
      } finally {
        await c.end();
      }
    });
  });

  describe('router planning', () => {
    const acme: SessionContext = { tenantId: 'acme', actor: 'test', role: 'writer', requestId: 'router-test' };
    /** The statements the service sends for one request (the real ones, recorded on their way). */
    async function statementsOf(run: () => Promise<unknown>): Promise<Array<{ text: string; values: readonly unknown[] }>> {
      const seen: Array<{ text: string; values: readonly unknown[] }> = [];
      const original = t.db.tenantQuery.bind(t.db);
      t.db.tenantQuery = ((ctx, text, values, opts) => {
        seen.push({ text, values: values ?? [] });
        return original(ctx, text, values, opts);
      });
      try {
        await run();
      } finally {
        t.db.tenantQuery = original;
      }
      return seen;
    }
    async function taskCounts(statements: Array<{ text: string; values: readonly unknown[] }>): Promise<string[]> {
      const out: string[] = [];
      for (const s of statements) {
        const plan = await t.db.withTenant(acme, (tx) => tx.query<{ 'QUERY PLAN': string }>(`EXPLAIN ${s.text}`, [...s.values]));
        const text = plan.rows.map((r) => r['QUERY PLAN']).join('\n');
        const counts = [...text.matchAll(/Task Count: (\d+)/g)].map((m) => m[1]);
        out.push(counts.length ? counts.join(',') : `no task count in:\n${text}`);
      }
      return out;
    }

    it('routes the single-row read, list, insert and update to one shard (EXPLAIN Task Count: 1)', async () => {
      const created = await statementsOf(async () => {
        const r = await req('acme:writer', 'POST', '/v1/tables/pipelines/rows', { name: 'routed' });
        expect(r.status).toBe(201);
      });
      const { rows } = await t.db.adminQuery<{ id: string }>("SELECT id::text FROM pipelines WHERE tenant_id = 'acme' AND name = 'routed'");
      const id = rows[0]!.id;
      const read = await statementsOf(async () => expect((await req('acme:writer', 'GET', `/v1/tables/pipelines/rows/${id}`)).status).toBe(200));
      const list = await statementsOf(async () => expect((await req('acme:writer', 'GET', '/v1/tables/pipelines/rows?status=eq.active&order=name')).status).toBe(200));
      const update = await statementsOf(async () => expect((await req('acme:writer', 'PATCH', `/v1/tables/pipelines/rows/${id}`, { status: 'paused' })).status).toBe(200));
      for (const s of [created, read, list, update]) expect(s).toHaveLength(1);
      // the insert's RETURNING rows are read back on the coordinator (a subplan): 1 task each
      expect(await taskCounts([...created, ...read, ...list, ...update])).toEqual(['1,1', '1', '1', '1']);
    });

    it('without the explicit tenant qual the same read fans out to every shard', async () => {
      const counts = await taskCounts([{ text: 'SELECT * FROM pipelines WHERE id = $1', values: [1] }]);
      expect(Number(counts[0])).toBeGreaterThan(1);
    });
  });
});

function appUrl(url: string): string {
  const u = new URL(url);
  u.username = TEST_APP_ROLE;
  u.password = TEST_APP_PASSWORD;
  return u.toString();
}
