/**
 * Strata on a real three-node Citus cluster (coordinator + 2 workers) made by this file's setup on
 * its own ports and data directories (test/helpers/citus-cluster.ts), torn down at the end.
 * Skipped, with the reason printed, where the citus extension is not installed.
 */
import http from 'node:http';
import pg from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureAppRole } from '../src/db/database.js';
import { createMigrator, defaultMigrationsDir } from '../src/db/migrations/index.js';
import { prepareCluster, type DistributeReport } from '../src/services/cluster/index.js';
import type { SessionContext } from '../src/db/session.js';
import { randomBytes, randomUUID } from 'node:crypto';
import { createJobs, type JobsService, type JobView } from '../src/jobs/queues.js';
import { startWorkers, type WorkerRuntime } from '../src/jobs/runtime.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { REDIS_URL } from './helpers/databases.js';
import { citusAvailable, startCitusCluster, type CitusCluster } from './helpers/citus-cluster.js';
import { TEST_APP_PASSWORD, TEST_APP_ROLE } from './helpers/constants.js';
import { EVENTS_DDL } from './helpers/partitioned-table.js';

const unavailable = citusAvailable();
if (unavailable) console.log(`Citus suite skipped: ${unavailable}`);

type Json = Record<string, unknown>;
/** Byte bound of write answers (issue 13) in this suite: a few 1 KB rows fit, a hundred do not. */
const WRITE_MAX = 64 * 1024;

describe.skipIf(unavailable !== null)('Strata on a Citus cluster', () => {
  let cluster: CitusCluster;
  let t: TestApp;
  let report: DistributeReport | null;
  let jobs: JobsService;
  let workers: WorkerRuntime;
  const prefix = `test-${randomUUID()}`;
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
    jobs = createJobs({ redisUrl: REDIS_URL, prefix, log: pino({ level: 'silent' }) });
    t = await createTestApp({
      database: { name: 'postgres', url: cluster.coordinator.url, drop: async () => undefined },
      env: { ENCRYPTION_MASTER_KEYS: `k1:${randomBytes(32).toString('base64')}`, DB_ACQUIRE_TIMEOUT_MS: '10000', WEBHOOK_ALLOW_PRIVATE: 'true', CHANGES_POLL_MS: '100', ROWS_MAX_RESPONSE_BYTES: String(WRITE_MAX) },
      jobs,
    });
    workers = startWorkers({ redisUrl: REDIS_URL, prefix, log: pino({ level: 'silent' }), db: t.db, queues: ['cluster', 'views', 'search', 'webhooks', 'compliance'], cancelPollMs: 100 });
    headers['platform'] = await t.auth('platform_admin', null);
    headers['acme:admin'] = await t.auth('admin', 'acme');
    headers['globex:admin'] = await t.auth('admin', 'globex');
    for (const tenant of ['acme', 'globex']) {
      headers[`${tenant}:writer`] = await t.auth('writer', tenant);
      headers[`${tenant}:analyst`] = await t.auth('analyst', tenant);
      headers[`${tenant}:reader`] = await t.auth('reader', tenant);
    }
  }, 240_000);

  afterAll(async () => {
    await workers?.close({ timeoutMs: 5_000 });
    await t?.close();
    if (jobs) {
      for (const q of Object.values(jobs.queues)) await q.obliterate({ force: true });
      await jobs.close();
    }
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
      expect(report?.distributed.sort()).toEqual(['customers', 'documents', 'pipeline_runs', 'pipelines', 'run_logs', 'run_steps']);
      const { rows } = await cluster.query<{ rel: string; col: string; colocationid: number; method: string }>(
        cluster.coordinator,
        "SELECT logicalrelid::regclass::text AS rel, column_to_column_name(logicalrelid, partkey) AS col, colocationid, partmethod AS method FROM pg_dist_partition ORDER BY 1",
      );
      const tenantTables = rows.filter((r) => report!.distributed.includes(r.rel));
      expect(tenantTables).toHaveLength(report!.distributed.length);
      for (const r of tenantTables) expect(r).toMatchObject({ col: 'tenant_id', method: 'h' });
      expect(new Set(tenantTables.map((r) => r.colocationid)).size).toBe(1);
      // of schema strata only the change log and its counters are distributed, colocated with the
      // tenant tables; tenants, keys, migrations stay on the coordinator
      const platform = rows.filter((r) => r.rel.startsWith('strata.'));
      expect(platform.map((r) => r.rel).filter((r) => !r.startsWith('strata.changes_')).sort()).toEqual(['strata.change_counters', 'strata.changes']);
      for (const r of platform) expect(r).toMatchObject({ col: 'tenant_id', method: 'h', colocationid: tenantTables[0]!.colocationid });
      expect(report?.platformDistributed).toEqual(['strata.changes', 'strata.change_counters']);
      expect(report?.captureOnShards.sort()).toEqual(['customers', 'pipeline_runs', 'pipelines', 'run_logs', 'run_steps']);
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
        expect(again).toEqual({ distributed: [], reference: [], keysWidened: [], captureOnShards: [], platformDistributed: [], forceLifted: [] });
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

  describe('capabilities on a cluster (through the coordinator), each confined to the caller tenant', () => {
    const jobDone = (id: string): Promise<JobView> =>
      waitFor(async () => {
        const res = await t.app.inject({ url: `/v1/jobs/${id}`, headers: headers['platform'] });
        const v = res.json<{ data: JobView }>().data;
        return ['completed', 'failed', 'cancelled'].includes(v.state) ? v : undefined;
      });
    const names = async (tenant: string) =>
      (await t.db.adminQuery<{ name: string }>('SELECT name FROM pipelines WHERE tenant_id = $1 ORDER BY id', [tenant])).rows.map((r) => r.name);

    it('streams a table export (COPY through the coordinator) of the caller rows only, and another tenant filter finds nothing', async () => {
      const acme = await t.app.inject({ url: '/v1/tables/pipelines/export?format=csv&select=name&order=id', headers: headers['acme:writer'] });
      expect(acme.statusCode, acme.body).toBe(200);
      expect(acme.body).toBe(['name', ...(await names('acme'))].join('\n') + '\n');
      const probe = await t.app.inject({ url: '/v1/tables/pipelines/export?format=ndjson&select=name&tenant_id=eq.globex', headers: headers['acme:writer'] });
      expect(probe.statusCode).toBe(200);
      expect(probe.body).toBe('');
    });

    it('streams an analyst SQL export over every shard with the caller rows only', async () => {
      const res = await t.app.inject({
        method: 'POST',
        url: '/v1/sql/export',
        headers: headers['globex:analyst'],
        payload: { sql: "SELECT name FROM pipelines WHERE tenant_id <> 'nobody' ORDER BY name", format: 'csv' },
      });
      expect(res.statusCode, res.body).toBe(200);
      expect(res.body).toBe(['name', ...(await names('globex')).sort()].join('\n') + '\n');
    });

    it('answers a time series over a distributed table with the caller rows only', async () => {
      const from = new Date(Date.now() - 86_400_000).toISOString();
      const to = new Date(Date.now() + 86_400_000).toISOString();
      for (const tenant of ['acme', 'globex']) {
        const r = await req(`${tenant}:writer`, 'GET', `/v1/tables/pipelines/timeseries?time=created_at&bucket=1d&agg=count&from=${from}&to=${to}`);
        expect(r.status, JSON.stringify(r.body)).toBe(200);
        const points = r.body['data'] as Array<{ count: number }>;
        expect(points.reduce((a, p) => a + Number(p.count), 0)).toBe((await names(tenant)).length);
      }
    });

    it('searches (full text, trigram fallback) in the caller documents only', async () => {
      for (const [tenant, title] of [['acme', 'Acme zeppelin manual'], ['globex', 'Globex zeppelin secret']] as const) {
        const w = await req(`${tenant}:writer`, 'POST', '/v1/tables/documents/rows', { title, body: 'how to fly a zeppelin' });
        expect(w.status, JSON.stringify(w.body)).toBe(201);
      }
      const r = await req('acme:writer', 'GET', '/v1/search?table=documents&q=zeppelin');
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect((r.body['data'] as Array<{ row: Json }>).map((h) => h.row['title'])).toEqual(['Acme zeppelin manual']);
      const fuzzy = await req('acme:writer', 'GET', '/v1/search?table=documents&q=zepelin');
      expect(fuzzy.status, JSON.stringify(fuzzy.body)).toBe(200);
      for (const h of fuzzy.body['data'] as Array<{ row: Json }>) expect(h.row['tenant_id']).toBe('acme');
    });

    it('creates a search index on a distributed table as a job (column, trigger and indexes propagated to every shard)', async () => {
      const created = await req('platform', 'POST', '/v1/admin/search-indexes', { table: 'run_steps', columns: [{ name: 'name', weight: 'A' }], language: 'simple' });
      expect(created.status, JSON.stringify(created.body)).toBe(202);
      const job = await jobDone(String(created.body['job_id']));
      expect(job.state, JSON.stringify(job)).toBe('completed');
      const listed = await req('platform', 'GET', '/v1/admin/search-indexes');
      expect((listed.body['data'] as Array<{ table: string; status: string }>).find((d) => d.table === 'run_steps')?.status).toBe('ready');
    }, 120_000);

    it('builds a materialized view over distributed tables on the coordinator and reads it through the tenant filter', async () => {
      const created = await req('platform', 'POST', '/v1/admin/views', {
        name: 'pipelines_per_tenant',
        sql: 'SELECT tenant_id, count(*)::int AS pipelines FROM pipelines GROUP BY tenant_id',
        unique_key: ['tenant_id'],
      });
      expect(created.status, JSON.stringify(created.body)).toBe(201);
      const job = await jobDone(String(created.body['job_id']));
      expect(job.state, JSON.stringify(job)).toBe('completed');
      for (const tenant of ['acme', 'globex']) {
        const r = await req(`${tenant}:writer`, 'GET', '/v1/views/pipelines_per_tenant/rows');
        expect(r.status, JSON.stringify(r.body)).toBe(200);
        expect(r.body['data']).toEqual([{ tenant_id: tenant, pipelines: (await names(tenant)).length }]);
      }
      const other = await req('acme:writer', 'GET', '/v1/views/pipelines_per_tenant/rows?tenant_id=eq.globex');
      expect(other.body['data']).toEqual([]);
      const refreshed = await req('platform', 'POST', '/v1/admin/views/pipelines_per_tenant/refresh');
      expect(refreshed.status).toBe(202);
      expect((await jobDone(String(refreshed.body['job_id']))).state).toBe('completed');
    }, 120_000);
  });

  describe('change capture on the shards (change log colocated with the tenant rows)', () => {
    type Event = { id: string; txid: string; tenant_id: string; table: string; op: string; pk: Json; before: Json | null; after: Json | null };
    const changes = async (who: string, query = '') => {
      const r = await req(who, 'GET', `/v1/changes?limit=1000${query}`);
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      return r.body['data'] as Event[];
    };
    const insert = async (who: string, name: string) => {
      const r = await req(who, 'POST', '/v1/tables/pipelines/rows', { name });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      return String((r.body['data'] as Json)['id']);
    };

    it('lists each tenant its own events, with per-tenant ids in write order, and filters cannot reach another tenant', async () => {
      const id = await insert('acme:writer', 'cdc-a');
      expect((await req('acme:writer', 'PATCH', `/v1/tables/pipelines/rows/${id}`, { name: 'cdc-a2' })).status).toBe(200);
      await insert('globex:writer', 'cdc-g');
      const acme = await changes('acme:writer', '&table=pipelines');
      const globex = await changes('globex:writer', '&table=pipelines');
      expect(acme.length).toBeGreaterThan(0);
      expect(acme.every((e) => e.tenant_id === 'acme')).toBe(true);
      expect(globex.every((e) => e.tenant_id === 'globex')).toBe(true);
      expect(globex.map((e) => e.after?.['name'])).not.toContain('cdc-a');
      // ids strictly increase per tenant; this row's events are insert then update, pk without tenant_id
      const ids = acme.map((e) => BigInt(e.id));
      expect(ids.every((v, i) => i === 0 || v > ids[i - 1]!)).toBe(true);
      const mine = acme.filter((e) => String(e.pk['id']) === id);
      expect(mine.map((e) => [e.op, e.after?.['name']])).toEqual([['insert', 'cdc-a'], ['update', 'cdc-a2']]);
      expect(mine[0]!.pk).toEqual({ id: Number(id) });
      // the tenant's events sit on the same worker as its rows (same shard group)
      const { rows } = await cluster.query<{ rel: string; port: number }>(
        cluster.coordinator,
        `SELECT s.logicalrelid::regclass::text AS rel, p.nodeport AS port FROM pg_dist_shard s JOIN pg_dist_shard_placement p USING (shardid)
          WHERE s.shardid IN (get_shard_id_for_distribution_column('pipelines', 'acme'), get_shard_id_for_distribution_column('strata.changes', 'acme'),
                              get_shard_id_for_distribution_column('strata.change_counters', 'acme')) ORDER BY 1`,
      );
      expect(rows.map((r) => r.rel)).toEqual(['pipelines', 'strata.change_counters', 'strata.changes']);
      expect(new Set(rows.map((r) => r.port)).size).toBe(1);
      const all = await changes('globex:writer');
      expect(all.filter((e) => e.tenant_id !== 'globex')).toEqual([]);
    });

    it('keeps the order of one row under concurrent writers of the same tenant (ids in commit order)', async () => {
      const id = await insert('acme:writer', 'race-0');
      await Promise.all(Array.from({ length: 8 }, (_, i) => req('acme:writer', 'PATCH', `/v1/tables/pipelines/rows/${id}`, { name: `race-${i + 1}` })));
      const events = (await changes('acme:writer', '&table=pipelines')).filter((e) => String(e.pk['id']) === id);
      expect(events).toHaveLength(9);
      // each update's before is the previous event's after: the log replays to the row as it is
      for (let i = 1; i < events.length; i++) expect(events[i]!.before?.['name']).toBe(events[i - 1]!.after?.['name']);
      const row = await req('acme:writer', 'GET', `/v1/tables/pipelines/rows/${id}`);
      expect((row.body['data'] as Json)['name']).toBe(events.at(-1)!.after?.['name']);
    });

    it('shows a row history to its tenant only', async () => {
      const id = await insert('acme:writer', 'hist-0');
      await req('acme:writer', 'PATCH', `/v1/tables/pipelines/rows/${id}`, { name: 'hist-1' });
      const h = await req('acme:writer', 'GET', `/v1/tables/pipelines/rows/${id}/history`);
      expect(h.status, JSON.stringify(h.body)).toBe(200);
      expect((h.body['data'] as Event[]).map((e) => e.op)).toEqual(['insert', 'update']);
      const other = await req('globex:writer', 'GET', `/v1/tables/pipelines/rows/${id}/history`);
      expect(other.status, JSON.stringify(other.body)).toBe(200);
      expect(other.body['data']).toEqual([]);
    });

    it('undoes a change of the caller tenant, and another tenant cannot undo it', async () => {
      const id = await insert('acme:writer', 'undo-0');
      await req('acme:writer', 'PATCH', `/v1/tables/pipelines/rows/${id}`, { name: 'undo-1' });
      const upd = (await changes('acme:writer', '&table=pipelines&op=update')).filter((e) => String(e.pk['id']) === id).at(-1)!;
      // an id globex does not have (ids are per tenant): not found there, nothing changed
      const globexMax = (await changes('globex:writer')).reduce((m, e) => (BigInt(e.id) > m ? BigInt(e.id) : m), 0n);
      // acme wrote more events than globex in this suite, so its change id is one globex does not have
      expect(BigInt(upd.id)).toBeGreaterThan(globexMax);
      const refused = await req('globex:writer', 'POST', `/v1/changes/${upd.id}/undo`);
      expect(refused.status, JSON.stringify(refused.body)).toBe(404);
      expect((refused.body['error'] as Json)['code']).toBe('CHANGE_NOT_FOUND');
      expect(((await req('acme:writer', 'GET', `/v1/tables/pipelines/rows/${id}`)).body['data'] as Json)['name']).toBe('undo-1');
      const undone = await req('acme:writer', 'POST', `/v1/changes/${upd.id}/undo`);
      expect(undone.status, JSON.stringify(undone.body)).toBe(200);
      expect((undone.body['data'] as Json)['row']).toMatchObject({ name: 'undo-0', tenant_id: 'acme' });
      const inverse = String((undone.body['data'] as Json)['change_id']);
      const ev = (await changes('acme:writer', `&after=${upd.id}`)).find((e) => e.id === inverse);
      expect(ev).toMatchObject({ op: 'update', before: { name: 'undo-1' }, after: { name: 'undo-0' } });
    });

    it('streams new events over SSE to their tenant only', async () => {
      await t.app.listen({ port: 0, host: '127.0.0.1' });
      const port = (t.app.server.address() as { port: number }).port;
      const collect = (who: string, after: string, n: number) =>
        new Promise<Event[]>((resolve, reject) => {
          const got: Event[] = [];
          let buf = '';
          const r = http.get({ host: '127.0.0.1', port, path: `/v1/changes/stream?after=${after}&table=pipelines`, headers: headers[who] }, (res) => {
            if (res.statusCode !== 200) return reject(new Error(`status ${res.statusCode}`));
            res.setEncoding('utf8');
            res.on('data', (chunk: string) => {
              buf += chunk;
              let i: number;
              while ((i = buf.indexOf('\n\n')) >= 0) {
                const block = buf.slice(0, i);
                buf = buf.slice(i + 2);
                const data = block.split('\n').find((l) => l.startsWith('data: '));
                if (data && block.includes('event: change')) got.push(JSON.parse(data.slice(6)) as Event);
                if (got.length >= n) {
                  r.destroy();
                  resolve(got);
                  return;
                }
              }
            });
          });
          r.on('error', (err) => {
            if (got.length < n) reject(err);
          });
        });
      const head = (tenant: string) => changes(`${tenant}:writer`).then((e) => e.at(-1)?.id ?? '0');
      const acmeRun = collect('acme:writer', await head('acme'), 2);
      const globexRun = collect('globex:writer', await head('globex'), 1);
      await insert('acme:writer', 'sse-a1');
      await insert('globex:writer', 'sse-g1');
      await insert('acme:writer', 'sse-a2');
      expect((await acmeRun).map((e) => [e.tenant_id, e.after?.['name']])).toEqual([['acme', 'sse-a1'], ['acme', 'sse-a2']]);
      expect((await globexRun).map((e) => [e.tenant_id, e.after?.['name']])).toEqual([['globex', 'sse-g1']]);
    }, 60_000);

    it('delivers webhooks with the tenant events only', async () => {
      const got: Array<{ tenant_id: string; after: Json | null; table: string }> = [];
      const server = http.createServer((rq, rs) => {
        let body = '';
        rq.setEncoding('utf8');
        rq.on('data', (c: string) => (body += c));
        rq.on('end', () => {
          got.push(JSON.parse(body) as (typeof got)[number]);
          rs.writeHead(204).end();
        });
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
      try {
        const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/hook`;
        const created = await req('acme:admin', 'POST', '/v1/webhooks', { url, tables: ['pipelines'] });
        expect(created.status, JSON.stringify(created.body)).toBe(201);
        await insert('globex:writer', 'hook-g');
        await insert('acme:writer', 'hook-a1');
        await insert('acme:writer', 'hook-a2');
        await waitFor(async () => (got.length >= 2 ? true : undefined), 60_000);
        await new Promise((r) => setTimeout(r, 300));
        expect(got.map((e) => [e.tenant_id, e.after?.['name']])).toEqual([['acme', 'hook-a1'], ['acme', 'hook-a2']]);
        const other = await req('globex:admin', 'GET', `/v1/webhooks/${String((created.body['data'] as Json)['id'])}`);
        expect(other.status).toBe(404);
        expect((await req('globex:admin', 'GET', '/v1/webhooks')).body['data']).toEqual([]);
      } finally {
        server.closeAllConnections();
        await new Promise<void>((r) => server.close(() => r()));
      }
    }, 90_000);
  });

  describe('compliance on a cluster (declared columns, erasure, rotation, conversion, scan)', () => {
    const put = (url: string, payload: unknown) => t.app.inject({ method: 'PUT', url, headers: headers['platform'], payload: payload as Json });
    const jobDone = (id: string): Promise<JobView> =>
      waitFor(async () => {
        const res = await t.app.inject({ url: `/v1/jobs/${id}`, headers: headers['platform'] });
        const v = res.json<{ data: JobView }>().data;
        return ['completed', 'failed', 'cancelled'].includes(v.state) ? v : undefined;
      });
    /** The stored value, read as the owner through the coordinator (the row lives on a worker shard). */
    const stored = async (col: string, name: string) =>
      (await cluster.query<Record<string, string | null>>(cluster.coordinator, `SELECT ${col} FROM customers WHERE name = '${name}'`)).rows.map((r) => r[col]);

    it('encrypts a declared column on the shards, decrypts for admin, masks for reader, and another tenant reads nothing', async () => {
      const d = await put('/v1/admin/compliance/columns/customers/phone', { encrypted: true, pii: 'phone', masks: { reader: 'partial' }, plaintext_roles: ['admin'] });
      expect(d.statusCode, d.body).toBe(200);
      const name = `enc-${randomUUID()}`;
      const w = await req('acme:writer', 'POST', '/v1/tables/customers/rows', { name, phone: '+15551234567' });
      expect(w.status, JSON.stringify(w.body)).toBe(201);
      const id = String((w.body['data'] as Json)['id']);
      const onShard = await stored('phone', name);
      expect(onShard).toHaveLength(1);
      expect(onShard[0]).toMatch(/^sx1\./);
      expect(onShard[0]).not.toContain('5551234567');
      const admin = await req('acme:admin', 'GET', `/v1/tables/customers/rows/${id}`);
      expect((admin.body['data'] as Json)['phone']).toBe('+15551234567');
      const reader = await req('acme:reader', 'GET', `/v1/tables/customers/rows/${id}`);
      expect(reader.status).toBe(200);
      expect((reader.body['data'] as Json)['phone']).not.toContain('5551234567');
      expect((reader.body['data'] as Json)['phone']).toMatch(/\*/);
      const other = await req('globex:admin', 'GET', `/v1/tables/customers/rows/${id}`);
      expect(other.status).toBe(404);
      const list = await req('globex:admin', 'GET', `/v1/tables/customers/rows?name=eq.${name}`);
      expect(list.body['data']).toEqual([]);
    });

    it('the coordinator counters see none of the rows a transaction deletes on a worker (why erasure counts from the change log there)', async () => {
      const name = `probe-${randomUUID()}`;
      expect((await req('acme:writer', 'POST', '/v1/tables/customers/rows', { name })).status).toBe(201);
      const c = new pg.Client({ connectionString: cluster.coordinator.url });
      await c.connect();
      try {
        await c.query('BEGIN');
        const del = await c.query(`DELETE FROM customers WHERE name = $1`, [name]);
        expect(del.rowCount).toBe(1);
        const stat = await c.query<{ n: string }>(`SELECT coalesce(sum(n_tup_del), 0)::text AS n FROM pg_stat_xact_user_tables WHERE relname = 'customers'`);
        expect(stat.rows[0]!.n).toBe('0');
      } finally {
        await c.query('ROLLBACK');
        await c.end();
      }
      expect(await stored('name', name)).toEqual([name]);
    });

    it('erases a subject with an exact report (direct and cascaded rows on the shards), and another tenant keeps its rows', async () => {
      expect((await put('/v1/admin/compliance/subjects/pipelines', { columns: ['name'], action: 'delete' })).statusCode).toBe(200);
      expect((await put('/v1/admin/compliance/subjects/customers', { columns: ['name'], action: 'delete' })).statusCode).toBe(200);
      const subject = `subj-${randomUUID()}`;
      const p = await req('acme:writer', 'POST', '/v1/tables/pipelines/rows', { name: subject });
      expect(p.status).toBe(201);
      const pid = (p.body['data'] as Json)['id'];
      for (const body of [{ name: subject }, { name: `child-a-${subject}`, pipeline_id: pid }, { name: `child-b-${subject}`, pipeline_id: pid }]) {
        expect((await req('acme:writer', 'POST', '/v1/tables/customers/rows', body)).status).toBe(201);
      }
      // globex has a row of the same subject id: it must stay
      expect((await req('globex:writer', 'POST', '/v1/tables/customers/rows', { name: subject })).status).toBe(201);
      const e = await req('acme:admin', 'DELETE', `/v1/subjects/${subject}`);
      expect(e.status, JSON.stringify(e.body)).toBe(200);
      const report = e.body['data'] as Json;
      expect(report['tables']).toEqual([
        { table: 'customers', action: 'delete', matched_by: ['name'], deleted: 3, anonymized: 0 },
        { table: 'pipelines', action: 'delete', matched_by: ['name'], deleted: 1, anonymized: 0 },
      ]);
      expect(report['totals']).toEqual({ rows: 4, deleted: 4, anonymized: 0 });
      expect((report['change_log'] as Json)['entries_anonymized']).toBeGreaterThanOrEqual(4);
      const left = await cluster.query<{ tenant_id: string }>(cluster.coordinator, `SELECT tenant_id FROM customers WHERE name LIKE '%${subject}' UNION ALL SELECT tenant_id FROM pipelines WHERE name = '${subject}'`);
      expect(left.rows).toEqual([{ tenant_id: 'globex' }]);
      // the change events of the erased rows hold no value any more
      const events = await cluster.query<{ n: number }>(cluster.coordinator, `SELECT count(*)::int AS n FROM strata.changes WHERE tenant_id = 'acme' AND (before::text LIKE '%${subject}%' OR after::text LIKE '%${subject}%')`);
      expect(events.rows[0]!.n).toBe(0);
      // a second erasure finds nothing
      expect((await req('acme:admin', 'DELETE', `/v1/subjects/${subject}`)).status).toBe(404);
    });

    it('converts plaintext written before a declaration, and rotates the tenant data key (rows re-encrypted on the shards)', async () => {
      const names = [0, 1, 2].map((i) => `conv-${i}-${randomUUID()}`);
      for (const name of names) expect((await req('acme:writer', 'POST', '/v1/tables/customers/rows', { name, notes: `note of ${name}` })).status).toBe(201);
      const d = await put('/v1/admin/compliance/columns/customers/notes', { encrypted: true, pii: 'free_text', plaintext_roles: ['admin'] });
      expect(d.statusCode, d.body).toBe(200);
      const conv = d.json().conversion as { job_id: string } | null;
      expect(conv).not.toBeNull();
      expect((await jobDone(conv!.job_id)).state).toBe('completed');
      for (const name of names) {
        const v = await stored('notes', name);
        expect(v[0]).toMatch(/^sx1\.1\./);
      }
      const rot = await req('acme:admin', 'POST', '/v1/admin/compliance/keys/rotate', { kind: 'data' });
      expect(rot.status, JSON.stringify(rot.body)).toBe(202);
      expect((await jobDone(String(rot.body['job_id']))).state).toBe('completed');
      const r = await req('acme:admin', 'GET', `/v1/admin/compliance/keys/rotations/${String((rot.body['data'] as Json)['id'])}`);
      expect((r.body['data'] as Json)['state']).toBe('completed');
      for (const name of names) {
        const v = await stored('notes', name);
        expect(v[0]).toMatch(/^sx1\.2\./);
        const got = await req('acme:admin', 'GET', `/v1/tables/customers/rows?name=eq.${name}&select=notes`);
        expect(got.body['data']).toEqual([{ notes: `note of ${name}` }]);
      }
    });

    it('scans the tenant tables for undeclared PII through the coordinator', async () => {
      expect((await req('acme:writer', 'POST', '/v1/tables/customers/rows', { name: 'scan', email: 'scan.me@example.com' })).status).toBe(201);
      const s = await req('acme:admin', 'POST', '/v1/admin/compliance/scan', { tables: ['customers'], sample_size: 50 });
      expect(s.status, JSON.stringify(s.body)).toBe(202);
      const job = await jobDone(String(s.body['job_id']));
      expect(job.state, JSON.stringify(job)).toBe('completed');
      const got = await req('acme:admin', 'GET', `/v1/admin/compliance/scan/${String(s.body['job_id'])}`);
      const findings = ((got.body['data'] as Json)['result'] as { findings: Array<{ table: string; column: string }> }).findings;
      expect(findings.some((f) => f.table === 'customers' && f.column === 'email')).toBe(true);
    });

    it('makes an anonymized copy of one tenant (rows read through the coordinator from the shards) with every declared value faked', async () => {
      const source = (await cluster.query<{ n: number }>(cluster.coordinator, `SELECT count(*)::int AS n FROM customers WHERE tenant_id = 'acme'`)).rows[0]!.n;
      expect(source).toBeGreaterThan(0);
      const s = await req('platform', 'POST', '/v1/admin/compliance/anonymize', { tenant: 'acme', seed: 'cluster' });
      expect(s.status, JSON.stringify(s.body)).toBe(202);
      const target = String(s.body['target_database']);
      try {
        const job = await jobDone(String(s.body['job_id']));
        expect(job.state, JSON.stringify(job)).toBe('completed');
        expect((job.result as Json)['tables']).toMatchObject({ customers: source });
        const copy = new pg.Client({ connectionString: cluster.coordinator.url.replace(/\/postgres$/, `/${target}`) });
        await copy.connect();
        try {
          const rows = (await copy.query<{ tenant_id: string; phone: string | null; notes: string | null }>('SELECT tenant_id, phone, notes FROM public.customers')).rows;
          expect(rows).toHaveLength(source);
          expect(new Set(rows.map((r) => r.tenant_id))).toEqual(new Set(['acme']));
          for (const r of rows) {
            expect(r.phone ?? '').not.toMatch(/^sx1\.|5551234567/);
            expect(r.notes ?? '').not.toMatch(/^sx1\.|note of/);
          }
        } finally {
          await copy.end();
        }
      } finally {
        await cluster.query(cluster.coordinator, `DROP DATABASE IF EXISTS "${target}" WITH (FORCE)`);
      }
    }, 120_000);
  });

  describe('support matrix', () => {
    it('answers 501 NOT_SUPPORTED_ON_CLUSTER with the reason for a capability that does not run on a cluster', async () => {
      const r = await req('acme:admin', 'GET', '/v1/admin/index-advice');
      expect(r.status).toBe(501);
      expect(r.body['error']).toMatchObject({ code: 'NOT_SUPPORTED_ON_CLUSTER', details: { capability: 'index advice' } });
      expect(String((r.body['error'] as Json)['message'])).toMatch(/coordinator/);
      const backup = await req('platform', 'POST', '/v1/admin/backups', { kind: 'full' });
      expect(backup.status).toBe(501);
      expect((backup.body['error'] as Json)['code']).toBe('NOT_SUPPORTED_ON_CLUSTER');
      expect(await jobs.queues.backups.getJobCounts('waiting', 'active', 'delayed')).toMatchObject({ waiting: 0, active: 0, delayed: 0 });
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
      // the insert's RETURNING rows are read back on the coordinator (subplans of its bounded answer): 1 task each
      const counts = await taskCounts([...created, ...read, ...list, ...update]);
      expect(counts.map((c) => c.split(',').every((n) => n === '1')), counts.join(' | ')).toEqual([true, true, true, true]);
      expect(counts.slice(1)).toEqual(['1', '1', '1']);
    });

    it('bounds a write answer in bytes on a cluster: 413 and nothing written (rows, change events), the write still routed to one shard', async () => {
      const desc = 'x'.repeat(1000);
      await t.db.adminQuery(
        "INSERT INTO pipelines (tenant_id, name, description, status) SELECT tn, tn || '-bulk-' || i, $1, 'archived' FROM generate_series(1, 100) i, unnest(ARRAY['acme', 'globex']) tn",
        [desc],
      );
      const state = async () =>
        (
          await t.db.adminQuery<{ s: string }>(
            "SELECT (SELECT md5(string_agg(p::text, ',' ORDER BY tenant_id, id)) FROM pipelines p) || ':' || (SELECT count(*) FROM strata.changes) || ':' || (SELECT coalesce(sum(last_id), 0) FROM strata.change_counters) AS s",
          )
        ).rows[0]!.s;
      const before = await state();
      const statements = await statementsOf(async () => {
        const r = await req('acme:writer', 'PATCH', '/v1/tables/pipelines/rows?status=eq.archived', { status: 'paused' });
        expect(r.status, JSON.stringify(r.body)).toBe(413);
        expect((r.body['error'] as Json)['code']).toBe('RESPONSE_TOO_LARGE');
      });
      const big = await req('acme:writer', 'POST', '/v1/tables/pipelines/rows', { name: 'huge', description: 'y'.repeat(WRITE_MAX + 1) });
      expect(big.status, JSON.stringify(big.body)).toBe(413);
      expect(await state()).toBe(before);
      // the bounded statement (WITH strata_w AS (UPDATE ... RETURNING ...) ... strata.answer_within(...)) is router-planned
      expect(statements.map((x) => x.text).join('\n')).toMatch(/strata_w[\s\S]*answer_within/);
      const counts = await taskCounts(statements);
      expect(counts.every((c) => c.split(',').every((n) => n === '1')), counts.join(' | ')).toBe(true);
      // globex's rows were not touched; a smaller write of the same kind goes through
      const ok = await req('acme:writer', 'PATCH', '/v1/tables/pipelines/rows?status=eq.archived&name=in.(acme-bulk-1,acme-bulk-2)', { status: 'paused' });
      expect(ok.status, JSON.stringify(ok.body)).toBe(200);
      expect((ok.body['data'] as Json[]).map((r) => r['tenant_id'])).toEqual(['acme', 'acme']);
      const { rows } = await t.db.adminQuery<{ n: number }>("SELECT count(*)::int AS n FROM pipelines WHERE tenant_id = 'globex' AND status = 'archived'");
      expect(rows[0]!.n).toBe(100);
      // the bulk rows go: later tests list every pipeline of a tenant in one answer
      await t.db.adminQuery("DELETE FROM pipelines WHERE name LIKE '%-bulk-%'");
    });

    it('without the explicit tenant qual the same read fans out to every shard', async () => {
      const counts = await taskCounts([{ text: 'SELECT * FROM pipelines WHERE id = $1', values: [1] }]);
      expect(Number(counts[0])).toBeGreaterThan(1);
    });
  });

  describe('tenant placement (platform_admin)', () => {
    const finished = (id: string): Promise<JobView> =>
      waitFor(async () => {
        const res = await t.app.inject({ url: `/v1/jobs/${id}`, headers: headers['platform'] });
        const v = res.json<{ data: JobView }>().data;
        return ['completed', 'failed', 'cancelled'].includes(v.state) ? v : undefined;
      });
    const placement = async (tenant: string) =>
      (await req('platform', 'GET', `/v1/admin/tenants/${tenant}/placement`)).body['data'] as { shard_id: number; node: { host: string; port: number }; shared_with: number };
    const queued = () => jobs.queues.cluster.getJobCounts('waiting', 'active', 'delayed', 'completed', 'failed');

    it('shows nodes, shards, sizes and tenants per node', async () => {
      const r = await req('platform', 'GET', '/v1/admin/cluster');
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      const data = r.body['data'] as { nodes: Array<{ port: number; role: string; shards: number; tenants: number }>; tenants: Array<{ tenant: string }>; distributed_tables: Array<{ table: string }> };
      expect(data.nodes.map((n) => [n.port, n.role])).toEqual([[cluster.coordinator.port, 'coordinator'], ...cluster.workers.map((w) => [w.port, 'worker'])]);
      expect(data.nodes.filter((n) => n.role === 'worker').reduce((a, n) => a + n.shards, 0)).toBe(data.distributed_tables.length * 8);
      expect(data.nodes.reduce((a, n) => a + n.tenants, 0)).toBe(data.tenants.length);
      expect(data.tenants.map((x) => x.tenant)).toEqual(expect.arrayContaining(['acme', 'globex']));
      // the tenant tables, the change log (its daily partitions are distributed tables too) and its counters
      const expected = [...report!.distributed, ...report!.platformDistributed];
      expect(data.distributed_tables.map((x) => x.table)).toEqual(expect.arrayContaining(expected));
      expect(data.distributed_tables.map((x) => x.table).filter((x) => !expected.includes(x) && !/^strata\.changes_(default|p\d{8})$/.test(x))).toEqual([]);
    });

    it('refuses bad moves with 4xx and queues nothing', async () => {
      const before = await queued();
      const unknownNode = await req('platform', 'POST', '/v1/admin/tenants/acme/move', { node: { host: '127.0.0.1', port: 1 } });
      expect(unknownNode.status).toBe(400);
      expect((unknownNode.body['error'] as Json)['code']).toBe('UNKNOWN_NODE');
      const unknownTenant = await req('platform', 'POST', '/v1/admin/tenants/nobody/move', { node: { host: '127.0.0.1', port: cluster.workers[0]!.port } });
      expect(unknownTenant.status).toBe(404);
      expect((unknownTenant.body['error'] as Json)['code']).toBe('TENANT_NOT_FOUND');
      const badBody = await req('platform', 'POST', '/v1/admin/tenants/acme/move', { node: { host: '127.0.0.1' } });
      expect(badBody.status).toBe(400);
      const tenantAdmin = await req('acme:admin', 'POST', '/v1/admin/tenants/acme/move', { node: { host: '127.0.0.1', port: cluster.workers[0]!.port } });
      expect(tenantAdmin.status).toBe(403);
      expect(await queued()).toEqual(before);
    });

    it('isolates a tenant on a shard of its own', async () => {
      // tenants hashed into acme's shard until one shares it
      const acmeShard = (await placement('acme')).shard_id;
      for (let i = 0; (await placement('acme')).shared_with === 0; i++) {
        await t.db.adminQuery('INSERT INTO strata.tenants (id, name) VALUES ($1, $1)', [`neighbour-${i}`]);
      }
      const r = await req('platform', 'POST', '/v1/admin/tenants/acme/isolate');
      expect(r.status).toBe(202);
      const job = await finished(String(r.body['job_id']));
      expect(job.state, JSON.stringify(job)).toBe('completed');
      expect(job.result).toMatchObject({ isolated: true });
      const after = await placement('acme');
      expect(after.shared_with).toBe(0);
      expect(after.shard_id).not.toBe(acmeShard);
      // every acme row is still there and readable
      const list = await req('acme:writer', 'GET', '/v1/tables/pipelines/rows?limit=1000');
      expect((list.body['data'] as Json[]).length).toBeGreaterThan(0);
    });

    it('flushes tenant commits on workers that commit asynchronously (the setting under which moves lost writes)', async () => {
      const acme: SessionContext = { tenantId: 'acme', actor: 'test', role: 'writer', requestId: 'sync-commit' };
      // the workers run with synchronous_commit = off (test/helpers/citus-cluster.ts); a router
      // query is evaluated on the worker holding the shard, inside the tenant transaction there
      const { rows } = await t.db.withTenant(acme, (tx) =>
        tx.query<{ v: string }>("SELECT DISTINCT current_setting('synchronous_commit') AS v FROM pipelines WHERE tenant_id = 'acme'"),
      );
      expect(rows).toEqual([{ v: 'local' }]);
      const single = await t.db.tenantQuery<{ v: string }>(acme, "SELECT DISTINCT current_setting('synchronous_commit') AS v FROM pipelines WHERE tenant_id = 'acme'");
      expect(single.rows).toEqual([{ v: 'local' }]);
      const { rows: workers } = await cluster.query<{ result: string }>(cluster.coordinator, "SELECT result FROM run_command_on_workers('SHOW synchronous_commit')");
      expect(workers.map((w) => w.result)).toEqual(['off', 'off']);
    });

    const MOVE_WRITERS = 2;
    it('moves a tenant to the other worker and back while writers insert continuously: no write lost, every row readable', async () => {
      const acked: string[] = [];
      const failures: string[] = [];
      /** Inserts that waited at the cutover longer than DB_LOCK_TIMEOUT_MS: refused, so never written. */
      const refused: string[] = [];
      const completions: number[] = [];
      let writing = true;
      const writers = Array.from({ length: MOVE_WRITERS }, async (_, w) => {
        for (let i = 0; writing; i++) {
          const r = await req('acme:writer', 'POST', '/v1/tables/pipelines/rows', { name: `during-move-${w}-${i}` });
          completions.push(performance.now());
          if (r.status === 201) acked.push(String((r.body['data'] as Json)['id']));
          else if (r.status === 409 && (r.body['error'] as Json)['code'] === 'LOCK_TIMEOUT') refused.push(`during-move-${w}-${i}`);
          else failures.push(`${r.status} ${JSON.stringify(r.body)}`);
          // a steady trickle (not a flood), the load under which an unflushed commit was missed
          await new Promise((res) => setTimeout(res, 20));
        }
      });
      const pauses: number[] = [];
      const durations: number[] = [];
      try {
        await waitFor(async () => (acked.length >= 10 ? true : undefined));
        for (let round = 0; round < 2; round++) {
          const from = await placement('acme');
          const target = cluster.workers.find((w) => w.port !== from.node.port)!;
          const moveStarted = performance.now();
          const r = await req('platform', 'POST', '/v1/admin/tenants/acme/move', { node: { host: '127.0.0.1', port: target.port } });
          expect(r.status).toBe(202);
          const job = await finished(String(r.body['job_id']));
          const moveEnded = performance.now();
          expect(job.state, JSON.stringify(job)).toBe('completed');
          expect(job.result).toMatchObject({ moved: true, to: { port: target.port } });
          expect((await placement('acme')).node.port).toBe(target.port);
          const ackedAtEnd = acked.length;
          await waitFor(async () => (acked.length >= ackedAtEnd + 10 ? true : undefined));
          // the write pause: the longest gap between two answered inserts while the move ran
          const during = completions.filter((c) => c >= moveStarted && c <= moveEnded + 1000).sort((a, b) => a - b);
          pauses.push(Math.round(Math.max(0, ...during.slice(1).map((c, i) => c - during[i]!))));
          durations.push(Math.round(moveEnded - moveStarted));
        }
      } finally {
        writing = false;
        await Promise.all(writers);
      }
      expect(failures).toEqual([]);
      const { rows } = await t.db.adminQuery<{ id: string }>("SELECT id::text FROM pipelines WHERE tenant_id = 'acme' AND id = ANY($1::bigint[])", [acked]);
      const found = new Set(rows.map((x) => x.id));
      expect(acked.filter((a) => !found.has(a))).toEqual([]);
      const { rows: phantoms } = await t.db.adminQuery<{ name: string }>("SELECT name FROM pipelines WHERE tenant_id = 'acme' AND name = ANY($1::text[])", [refused]);
      expect(phantoms).toEqual([]);
      // every acknowledged row is readable through the API on its new node
      const seen = new Set<string>();
      for (let after = '0'; ; ) {
        const page = await req('acme:writer', 'GET', `/v1/tables/pipelines/rows?name=like.during-move-*&id=gt.${after}&order=id&limit=1000&select=id`);
        expect(page.status, JSON.stringify(page.body)).toBe(200);
        const rows = page.body['data'] as Json[];
        for (const r of rows) seen.add(String(r['id']));
        if (rows.length < 1000) break;
        after = String(rows[rows.length - 1]!['id']);
      }
      expect(acked.filter((a) => !seen.has(a))).toEqual([]);
      console.log(`tenant moves under write load (${MOVE_WRITERS} writers): ${durations.join(' ms, ')} ms; ${acked.length} writes acknowledged, 0 lost, ${refused.length} refused at the cutover (409 LOCK_TIMEOUT, none written); longest write pause ${pauses.join(' ms, ')} ms`);
    }, 240_000);

    it('adds a worker and rebalances shards onto it', async () => {
      const extra = await cluster.startExtraNode();
      const bad = await req('platform', 'POST', '/v1/admin/cluster/nodes', { host: '127.0.0.1', port: 1 });
      expect(bad.status).toBe(400);
      expect((bad.body['error'] as Json)['code']).toBe('NODE_UNREACHABLE');
      const added = await req('platform', 'POST', '/v1/admin/cluster/nodes', { host: '127.0.0.1', port: extra.port });
      expect(added.status, JSON.stringify(added.body)).toBe(201);
      const r = await req('platform', 'POST', '/v1/admin/cluster/rebalance');
      expect(r.status).toBe(202);
      const job = await finished(String(r.body['job_id']));
      expect(job.state, JSON.stringify(job)).toBe('completed');
      const overview = (await req('platform', 'GET', '/v1/admin/cluster')).body['data'] as { nodes: Array<{ port: number; shards: number }> };
      expect(overview.nodes.find((n) => n.port === extra.port)?.shards).toBeGreaterThan(0);
      // every tenant still reads exactly its own rows
      const list = await req('globex:writer', 'GET', '/v1/tables/pipelines/rows?limit=1000');
      for (const row of list.body['data'] as Json[]) expect(row['tenant_id']).toBe('globex');
      const { rows: n } = await t.db.adminQuery<{ n: number }>("SELECT count(*)::int AS n FROM pipelines WHERE tenant_id = 'globex'");
      expect((list.body['data'] as Json[]).length).toBe(n[0]!.n);
      expect(n[0]!.n).toBeGreaterThanOrEqual(5);
    }, 180_000);
  });

  // last: it adds a distributed table, which the shard counts above do not expect
  describe('migrations on a cluster', () => {
    it('migrate:check passes in cluster mode: every migration up, down, up on a scratch cluster database, the cluster step after each up', async () => {
      const { execFile } = await import('node:child_process');
      const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        execFile('npx', ['tsx', 'scripts/check-reversible.ts'], { env: { ...process.env, DATABASE_URL: cluster.coordinator.url }, timeout: 400_000, maxBuffer: 8 << 20 }, (err, stdout, stderr) =>
          resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        );
      });
      expect(out.code, `${out.stdout}\n${out.stderr}`).toBe(0);
      expect(out.stdout).toMatch(/cluster mode: Citus 13/);
      expect(out.stdout).toMatch(/ok {2}0018_cluster_change_capture {2}\(up, down, up\)/);
      expect(out.stdout).toMatch(/all migrations are reversible/);
      // the scratch database is gone from every node
      for (const node of [cluster.coordinator, ...cluster.workers]) {
        const { rows } = await cluster.query<{ n: number }>(node, "SELECT count(*)::int AS n FROM pg_database WHERE datname LIKE 'strata_revcheck_%'");
        expect(rows[0]!.n).toBe(0);
      }
    }, 420_000);
  });

  describe('time partitioning on a cluster (create_time_partitions / drop_old_time_partitions)', () => {
    const DAY = 86_400_000;
    const ranges = async () =>
      (((await req('platform', 'GET', '/v1/admin/partitions')).body['data'] as Array<{ partitions: Array<{ from: string | null; to: string | null; default: boolean }> }>)[0]?.partitions ?? []).filter((p) => !p.default);

    beforeAll(async () => {
      await cluster.query(cluster.coordinator, EVENTS_DDL);
      const pool = new pg.Pool({ connectionString: cluster.coordinator.url, max: 1 });
      try {
        const again = await prepareCluster(pool, pino({ level: 'silent' }));
        expect(again?.distributed).toEqual(['events_p']);
      } finally {
        await pool.end();
      }
    }, 120_000);

    it('refuses a plain table and a bad interval with nothing written', async () => {
      const plain = await req('platform', 'POST', '/v1/admin/partitions', { table: 'pipelines', column: 'created_at', interval: '1 day' });
      expect(plain.status).toBe(409);
      expect((plain.body['error'] as Json)['code']).toBe('TABLE_NOT_PARTITIONED');
      const bad = await req('platform', 'POST', '/v1/admin/partitions', { table: 'events_p', column: 'at', interval: '90 minutes' });
      expect(bad.status).toBe(400);
      expect((bad.body['error'] as Json)['code']).toBe('INVALID_INTERVAL');
      const { rows } = await t.db.adminQuery<{ n: number }>("SELECT (SELECT count(*) FROM strata.time_partitions) + (SELECT count(*) FROM pg_inherits WHERE inhparent = 'events_p'::regclass) AS n");
      expect(Number(rows[0]!.n)).toBe(0);
    });

    it('makes distributed partitions ahead, keeps RLS through the parent, and drops past retention', async () => {
      const r = await req('platform', 'POST', '/v1/admin/partitions', { table: 'events_p', column: 'at', interval: '1 day', premake: 3, retention: '3 days', start: new Date(Date.now() - 10 * DAY).toISOString() });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      expect(r.body['data']).toMatchObject({ engine: 'citus', interval: '1 day', premake: 3, retention: '3 days' });
      let parts = await ranges();
      expect(Date.parse(parts[0]!.from!)).toBeLessThanOrEqual(Date.now() - 9 * DAY);
      expect(Date.parse(parts[parts.length - 1]!.to!)).toBeGreaterThanOrEqual(Date.now() + 3 * DAY);
      // every partition is a distributed table colocated with the tenant's rows
      const { rows: dist } = await t.db.adminQuery<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_inherits i JOIN pg_dist_partition p ON p.logicalrelid = i.inhrelid WHERE i.inhparent = 'events_p'::regclass",
      );
      expect(dist[0]!.n).toBe(parts.length);

      const acme: SessionContext = { tenantId: 'acme', actor: 'test', role: 'writer', requestId: 'partitions' };
      const globex: SessionContext = { ...acme, tenantId: 'globex' };
      await t.db.withTenant(acme, (tx) => tx.query("INSERT INTO events_p (kind, at) VALUES ('now', now()), ('old', now() - interval '9 days')"));
      const seen = async (ctx: SessionContext) => (await t.db.withTenant(ctx, (tx) => tx.query<{ kind: string }>('SELECT kind FROM events_p ORDER BY kind'))).rows.map((x) => x.kind);
      expect(await seen(acme)).toEqual(['now', 'old']);
      expect(await seen(globex)).toEqual([]);

      expect(await t.app.services.partitions.maintain()).toEqual({ maintained: 1, failed: 0 });
      parts = await ranges();
      expect(Date.parse(parts[0]!.from!)).toBeGreaterThanOrEqual(Date.now() - 5 * DAY);
      expect(Date.parse(parts[parts.length - 1]!.to!)).toBeGreaterThanOrEqual(Date.now() + 3 * DAY);
      expect(await seen(acme)).toEqual(['now']);
    }, 120_000);
  });
});

async function waitFor<T>(fn: () => Promise<T | undefined>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 100));
  }
}

function appUrl(url: string): string {
  const u = new URL(url);
  u.username = TEST_APP_ROLE;
  u.password = TEST_APP_PASSWORD;
  return u.toString();
}
