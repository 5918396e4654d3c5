/**
 * Materialized views end to end, with a real BullMQ worker: creation and first refresh as a job,
 * CONCURRENTLY when a unique index exists (plain otherwise), staleness, the debounced refresh after
 * a burst of writes (exactly one job), cron schedules, tenant isolation of the rows (the matview
 * itself is out of tenants' reach), GraphQL, and every bad definition refused with nothing written.
 */
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorkers, type WorkerRuntime } from '../src/jobs/runtime.js';
import { debounceJobId, schedulerId } from '../src/services/analytics/index.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { REDIS_URL } from './helpers/databases.js';

const log = pino({ level: 'silent' });

async function waitFor<T>(fn: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface ViewBody {
  name: string;
  populated: boolean;
  refresh_mode: string;
  last_refresh_mode: string | null;
  last_refresh_ms: number | null;
  last_refreshed_at: string | null;
  refresh_count: number;
  staleness_s: number | null;
  stale: boolean;
  last_error: string | null;
}

describe('materialized views', () => {
  let t: TestApp;
  let workers: WorkerRuntime;
  let admin: Record<string, string>;

  const view = async (name: string): Promise<ViewBody> => {
    const r = await t.app.inject({ url: `/v1/admin/views/${name}`, headers: admin });
    expect(r.statusCode).toBe(200);
    return r.json().data;
  };
  const jobDone = (id: string) =>
    waitFor(async () => {
      const r = await t.app.inject({ url: `/v1/jobs/${id}`, headers: admin });
      const state = r.json().data?.state as string | undefined;
      return state === 'completed' || state === 'failed' ? (r.json().data as { state: string; result: unknown; progress: unknown }) : undefined;
    });
  const create = (body: Record<string, unknown>) => t.app.inject({ method: 'POST', url: '/v1/admin/views', headers: admin, payload: body });
  const nothingWritten = async (name: string) => {
    const r = await t.db.adminQuery<{ defs: string; mat: string | null; bar: string | null }>(
      "SELECT (SELECT count(*) FROM strata.views WHERE name = $1)::text AS defs, to_regclass('strata_matviews.' || $1)::text AS mat, to_regclass('strata_views.' || $1)::text AS bar",
      [name],
    );
    expect(r.rows[0]).toEqual({ defs: '0', mat: null, bar: null });
  };
  const schedulers = async () => (await t.jobs.queues.views.getJobSchedulers()).map((s) => `${s.key}|${s.pattern ?? ''}`);
  const runsByTenant = async () => {
    const { rows } = await t.db.adminQuery<{ tenant_id: string; n: number }>('SELECT tenant_id, count(*)::int AS n FROM pipeline_runs GROUP BY 1');
    return Object.fromEntries(rows.map((r) => [r.tenant_id, r.n]));
  };

  beforeAll(async () => {
    t = await createTestApp({ seed: true });
    workers = startWorkers({ redisUrl: REDIS_URL, prefix: t.jobs.prefix, log, db: t.db, queues: ['views'], concurrency: 2 });
    admin = await t.auth('platform_admin', null);
  });
  afterAll(async () => {
    await workers?.close({ timeoutMs: 5_000 });
    if (t) for (const q of Object.values(t.jobs.queues)) await q.obliterate({ force: true });
    await t?.close();
  });

  it('creates a view, refreshes it as a job (plain first, then CONCURRENTLY with a unique key) and shows staleness', async () => {
    const r = await create({
      name: 'runs_per_pipeline',
      sql: 'SELECT tenant_id, pipeline_id, count(*)::int AS runs FROM pipeline_runs GROUP BY tenant_id, pipeline_id',
      unique_key: ['tenant_id', 'pipeline_id'],
      refresh: { after_writes_to: ['pipeline_runs'], debounce: 1500 },
    });
    expect(r.statusCode).toBe(201);
    expect(r.json().job_id).toMatch(/^views-/);
    const first = await jobDone(r.json().job_id);
    expect(first.state).toBe('completed');
    expect(first.progress).toMatchObject({ done: 3, total: 3, percent: 100 });
    let v = await view('runs_per_pipeline');
    expect(v).toMatchObject({ populated: true, last_refresh_mode: 'plain', refresh_count: 1, refresh_mode: 'concurrently', stale: false, last_error: null });
    expect(v.last_refresh_ms).toBeGreaterThanOrEqual(0);
    expect(v.staleness_s).toBeGreaterThanOrEqual(0);

    const again = await t.app.inject({ method: 'POST', url: '/v1/admin/views/runs_per_pipeline/refresh', headers: admin });
    expect(again.statusCode).toBe(202);
    expect((await jobDone(again.json().job_id)).state).toBe('completed');
    v = await view('runs_per_pipeline');
    expect(v).toMatchObject({ last_refresh_mode: 'concurrently', refresh_count: 2 });

    const listed = await t.app.inject({ url: '/v1/admin/views', headers: admin });
    expect(listed.json().data.map((x: ViewBody) => x.name)).toContain('runs_per_pipeline');
  });

  it('takes only an EXCLUSIVE lock (CONCURRENTLY) with a unique key, so tenants keep reading; ACCESS EXCLUSIVE (plain) without', async () => {
    const slow = 'WITH s AS MATERIALIZED (SELECT pg_sleep(1.5)) SELECT r.tenant_id, r.id, r.status FROM pipeline_runs r, s';
    const lockModes = async (name: string) =>
      (await t.db.adminQuery<{ mode: string }>("SELECT mode FROM pg_locks WHERE relation = to_regclass('strata_matviews.' || $1) AND granted", [name])).rows.map((r) => r.mode);
    for (const [name, key, mode] of [['slow_uk', ['id'], 'ExclusiveLock'], ['slow_plain', undefined, 'AccessExclusiveLock']] as const) {
      const created = await create({ name, sql: slow, ...(key ? { unique_key: key } : {}) });
      expect(created.statusCode).toBe(201);
      await jobDone(created.json().job_id);
      const r = await t.app.inject({ method: 'POST', url: `/v1/admin/views/${name}/refresh`, headers: admin });
      const modes = await waitFor(async () => {
        const m = await lockModes(name);
        return m.length ? m : undefined;
      });
      expect(modes).toContain(mode);
      if (key) {
        expect(modes).not.toContain('AccessExclusiveLock');
        const read = await t.app.inject({ url: `/v1/views/${name}/rows?limit=1`, headers: await t.auth('reader', 'acme') });
        expect(read.statusCode).toBe(200);
        expect((await t.app.inject({ url: `/v1/jobs/${r.json().job_id}`, headers: admin })).json().data.state).toBe('active'); // read while refreshing
      }
      await jobDone(r.json().job_id);
      expect((await view(name)).last_refresh_mode).toBe(key ? 'concurrently' : 'plain');
      await t.app.inject({ method: 'DELETE', url: `/v1/admin/views/${name}`, headers: admin });
    }
  });

  it('refreshes plainly when the view has no unique index', async () => {
    const r = await create({ name: 'runs_by_status', sql: 'SELECT tenant_id, status, count(*)::int AS n FROM pipeline_runs GROUP BY 1, 2' });
    expect(r.statusCode).toBe(201);
    await jobDone(r.json().job_id);
    const again = await t.app.inject({ method: 'POST', url: '/v1/admin/views/runs_by_status/refresh', headers: admin });
    await jobDone(again.json().job_id);
    expect(await view('runs_by_status')).toMatchObject({ refresh_mode: 'plain', last_refresh_mode: 'plain', refresh_count: 2 });
  });

  it("shows each tenant only its own rows; the matview itself is out of tenants' reach", async () => {
    const counts = await runsByTenant();
    for (const tenant of ['acme', 'globex']) {
      const r = await t.app.inject({ url: '/v1/views/runs_per_pipeline/rows?limit=1000&order=pipeline_id', headers: await t.auth('reader', tenant) });
      expect(r.statusCode).toBe(200);
      const rows = r.json().data as Array<{ tenant_id: string; runs: number }>;
      expect(rows.length).toBeGreaterThan(0);
      expect(new Set(rows.map((x) => x.tenant_id))).toEqual(new Set([tenant]));
      expect(rows.reduce((a, x) => a + x.runs, 0)).toBe(counts[tenant]);
    }
    const other = await t.app.inject({ url: '/v1/views/runs_per_pipeline/rows?tenant_id=eq.globex', headers: await t.auth('reader', 'acme') });
    expect(other.statusCode).toBe(200);
    expect(other.json().data).toEqual([]);
    const ctx = { requestId: 'r', tenantId: 'acme', actor: 'x', role: 'reader' as const };
    await expect(t.db.tenantQuery(ctx, 'SELECT * FROM strata_matviews.runs_per_pipeline')).rejects.toMatchObject({ code: '42501' });
    const sql = await t.app.inject({ method: 'POST', url: '/v1/sql', headers: await t.auth('analyst'), payload: { sql: 'SELECT * FROM strata_matviews.runs_per_pipeline' } });
    expect(sql.statusCode).toBeGreaterThanOrEqual(400);
    expect(sql.statusCode).toBeLessThan(500);
    const unknown = await t.app.inject({ url: '/v1/views/nope/rows', headers: await t.auth('reader') });
    expect(unknown.statusCode).toBe(404);
    expect(unknown.json().error.code).toBe('VIEW_NOT_FOUND');
  });

  it("serves view rows over GraphQL with where/order/first, the caller's tenant only", async () => {
    const query = '{ view_rows(name: "runs_per_pipeline", where: { runs: "gte.1" }, order_by: "runs.desc", first: 2) }';
    const r = await t.app.inject({ method: 'POST', url: '/graphql', headers: await t.auth('reader', 'globex'), payload: { query } });
    expect(r.statusCode).toBe(200);
    const rows = r.json().data.view_rows.data as Array<{ tenant_id: string; runs: number }>;
    expect(rows.length).toBeGreaterThan(0);
    expect(rows.length).toBeLessThanOrEqual(2);
    expect(rows.every((x) => x.tenant_id === 'globex')).toBe(true);
    expect([...rows].sort((a, b) => b.runs - a.runs)).toEqual(rows);
  });

  it('refreshes once, debounced, after a burst of writes through every write path', async () => {
    const before = (await view('runs_per_pipeline')).refresh_count;
    const { rows } = await t.db.adminQuery<{ id: number }>("SELECT id FROM pipelines WHERE tenant_id = 'acme' ORDER BY id LIMIT 1");
    const pipeline = rows[0]!.id;
    const writer = await t.auth('writer', 'acme');
    for (let i = 0; i < 3; i++) {
      const w = await t.app.inject({ method: 'POST', url: '/v1/tables/pipeline_runs/rows', headers: writer, payload: { pipeline_id: pipeline } });
      expect(w.statusCode).toBe(201);
    }
    const tx = await t.app.inject({ method: 'POST', url: '/v1/transactions', headers: writer, payload: { operations: [{ op: 'insert', table: 'pipeline_runs', rows: [{ pipeline_id: pipeline }] }] } });
    expect(tx.statusCode).toBe(200);
    const gql = await t.app.inject({ method: 'POST', url: '/graphql', headers: writer, payload: { query: `mutation { insert_pipeline_runs_one(object: { pipeline_id: ${pipeline} }) { id } }` } });
    expect(gql.json().errors).toBeUndefined();
    // One delayed job (the view's deterministic id) stands for the whole burst.
    const queue = t.jobs.queues.views;
    const pending = await queue.getJob(debounceJobId('runs_per_pipeline'));
    expect(pending).toBeDefined();
    expect(await queue.getDelayedCount()).toBe(1);
    expect((await view('runs_per_pipeline')).stale).toBe(true);

    const done = await waitFor(async () => {
      const v = await view('runs_per_pipeline');
      const left = await queue.getJob(debounceJobId('runs_per_pipeline'));
      return v.refresh_count > before && !left ? v : undefined;
    });
    expect(done.refresh_count).toBe(before + 1);
    expect(done.stale).toBe(false);
    expect(await queue.getDelayedCount()).toBe(0);
    expect(await queue.getWaitingCount()).toBe(0);
    const r = await t.app.inject({ url: `/v1/views/runs_per_pipeline/rows?pipeline_id=eq.${pipeline}`, headers: await t.auth('reader', 'acme') });
    const { rows: truth } = await t.db.adminQuery<{ n: number }>("SELECT count(*)::int AS n FROM pipeline_runs WHERE tenant_id = 'acme' AND pipeline_id = $1", [pipeline]);
    expect(r.json().data[0].runs).toBe(truth[0]!.n);
  });

  it('runs a debounced refresh once more when a write lands while it runs, so no write is missed', async () => {
    const r = await create({
      name: 'slow_runs',
      // the materialized CTE makes each refresh take 1.5 s, long enough to write during it
      sql: 'WITH s AS MATERIALIZED (SELECT pg_sleep(1.5)) SELECT r.tenant_id, count(*)::int AS n FROM pipeline_runs r, s GROUP BY 1',
      refresh: { after_writes_to: ['pipeline_runs'], debounce: 100 },
    });
    expect(r.statusCode).toBe(201);
    await jobDone(r.json().job_id);
    const before = (await view('slow_runs')).refresh_count;
    const { rows } = await t.db.adminQuery<{ id: number }>("SELECT id FROM pipelines WHERE tenant_id = 'acme' ORDER BY id LIMIT 1");
    const writer = await t.auth('writer', 'acme');
    const write = () => t.app.inject({ method: 'POST', url: '/v1/tables/pipeline_runs/rows', headers: writer, payload: { pipeline_id: rows[0]!.id } });
    expect((await write()).statusCode).toBe(201);
    const queue = t.jobs.queues.views;
    const id = debounceJobId('slow_runs');
    // the REFRESH itself must be running (BullMQ calls a job active a moment before it starts it)
    const refreshing = async () =>
      (
        await t.db.adminQuery<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query ILIKE 'REFRESH MATERIALIZED VIEW%slow_runs%'",
        )
      ).rows[0]!.n > 0;
    await waitFor(async () => ((await (await queue.getJob(id))?.getState()) === 'active' && (await refreshing()) ? true : undefined));
    expect((await write()).statusCode).toBe(201); // the job is running: this add is a no-op, the dirty mark is not
    const done = await waitFor(async () => {
      const v = await view('slow_runs');
      return v.refresh_count >= before + 2 && !(await queue.getJob(id)) ? v : undefined;
    });
    expect(done.refresh_count).toBe(before + 2);
    expect(done.stale).toBe(false);
    const got = await t.app.inject({ url: '/v1/views/slow_runs/rows', headers: await t.auth('reader', 'acme') });
    expect(got.json().data[0].n).toBe((await runsByTenant())['acme']);
    await t.app.inject({ method: 'DELETE', url: '/v1/admin/views/slow_runs', headers: admin });
  });

  it('serves a time series of a view', async () => {
    const r = await create({ name: 'run_starts', sql: 'SELECT tenant_id, id, started_at FROM pipeline_runs WHERE started_at IS NOT NULL', unique_key: ['id'] });
    expect(r.statusCode).toBe(201);
    await jobDone(r.json().job_id);
    const ts = await t.app.inject({ url: '/v1/views/run_starts/timeseries?time=started_at&bucket=1d', headers: await t.auth('reader', 'acme') });
    expect(ts.statusCode).toBe(200);
    const { rows } = await t.db.adminQuery<{ n: number }>("SELECT count(*)::int AS n FROM pipeline_runs WHERE tenant_id = 'acme' AND started_at IS NOT NULL");
    expect((ts.json().data as Array<{ count: number }>).reduce((a, p) => a + p.count, 0)).toBe(rows[0]!.n);
  });

  it('registers a cron schedule and drops the view with its schedule', async () => {
    const r = await create({ name: 'cron_view', sql: 'SELECT tenant_id, count(*)::int AS n FROM pipelines GROUP BY 1', refresh: { cron: '*/5 * * * *' } });
    expect(r.statusCode).toBe(201);
    await jobDone(r.json().job_id);
    expect(await schedulers()).toContain(`${schedulerId('cron_view')}|*/5 * * * *`);
    const del = await t.app.inject({ method: 'DELETE', url: '/v1/admin/views/cron_view', headers: admin });
    expect(del.statusCode).toBe(204);
    expect((await schedulers()).filter((s) => s.startsWith(`${schedulerId('cron_view')}|`))).toEqual([]);
    await nothingWritten('cron_view');
    expect((await t.app.inject({ url: '/v1/admin/views/cron_view', headers: admin })).statusCode).toBe(404);
  });

  it('is for platform admins only', async () => {
    const r = await t.app.inject({ method: 'POST', url: '/v1/admin/views', headers: await t.auth('admin'), payload: { name: 'x_view', sql: 'SELECT tenant_id FROM pipelines' } });
    expect(r.statusCode).toBe(403);
    await nothingWritten('x_view');
    expect((await t.app.inject({ method: 'POST', url: '/v1/admin/views/runs_per_pipeline/refresh', headers: await t.auth('admin') })).statusCode).toBe(403);
  });

  const bad: Array<[string, Record<string, unknown>, number, string]> = [
    ['a statement that is not a SELECT', { name: 'bad_view', sql: 'DELETE FROM pipelines' }, 400, 'SQL_NOT_READ_ONLY'],
    ['two statements', { name: 'bad_view', sql: 'SELECT tenant_id FROM pipelines; SELECT 1' }, 400, 'SQL_MULTIPLE_STATEMENTS'],
    ['a data-modifying CTE', { name: 'bad_view', sql: 'WITH d AS (DELETE FROM pipelines RETURNING tenant_id) SELECT tenant_id FROM d' }, 400, 'SQL_NOT_READ_ONLY'],
    ['no tenant_id column', { name: 'bad_view', sql: 'SELECT id, name FROM pipelines' }, 400, 'VIEW_NEEDS_TENANT_ID'],
    ['SQL that does not run', { name: 'bad_view', sql: 'SELECT tenant_id, nope FROM pipelines' }, 400, 'INVALID_VIEW_SQL'],
    ['the platform schema', { name: 'bad_view', sql: 'SELECT id AS tenant_id FROM strata.tenants' }, 403, 'SQL_FORBIDDEN_SCHEMA'],
    ['a bad name', { name: 'Bad-View', sql: 'SELECT tenant_id FROM pipelines' }, 400, 'INVALID_VIEW_NAME'],
    ['an unknown watched table', { name: 'bad_view', sql: 'SELECT tenant_id FROM pipelines', refresh: { after_writes_to: ['nope'] } }, 400, 'UNKNOWN_TABLE'],
    ['a bad cron', { name: 'bad_view', sql: 'SELECT tenant_id FROM pipelines', refresh: { cron: 'every minute' } }, 400, 'INVALID_CRON'],
    ['an impossible cron', { name: 'bad_view', sql: 'SELECT tenant_id FROM pipelines', refresh: { cron: '99 * * * *' } }, 400, 'INVALID_CRON'],
    ['an unknown unique_key column', { name: 'bad_view', sql: 'SELECT tenant_id FROM pipelines', unique_key: ['nope'] }, 400, 'UNKNOWN_COLUMN'],
  ];
  for (const [what, body, status, code] of bad) {
    it(`refuses ${what} with ${status} ${code} and writes nothing`, async () => {
      const r = await create(body);
      expect(r.statusCode).toBe(status);
      expect(r.json().error.code).toBe(code);
      await nothingWritten(String(body['name']));
      expect((await schedulers()).filter((s) => s.startsWith(`${schedulerId(String(body['name']))}|`))).toEqual([]);
    });
  }

  it('refuses a second view of the same name with 409 VIEW_EXISTS', async () => {
    const r = await create({ name: 'runs_per_pipeline', sql: 'SELECT tenant_id FROM pipelines' });
    expect(r.statusCode).toBe(409);
    expect(r.json().error.code).toBe('VIEW_EXISTS');
    expect((await t.db.adminQuery("SELECT sql FROM strata.views WHERE name = 'runs_per_pipeline'")).rows[0]).toMatchObject({ sql: expect.stringContaining('pipeline_id') });
  });
});
