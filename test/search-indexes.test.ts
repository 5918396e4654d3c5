/**
 * Search indexes (SPEC 10): creation and removal as jobs run by a real BullMQ worker (progress,
 * trigger-maintained column, concurrent indexes), who may manage them, and the 4xx paths, each
 * checked to have written nothing (no definition, no column, no job).
 */
import { randomUUID } from 'node:crypto';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createJobs, type JobsService, type JobView } from '../src/jobs/queues.js';
import { startWorkers, type WorkerRuntime } from '../src/jobs/runtime.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { REDIS_URL } from './helpers/databases.js';

const log = pino({ level: 'silent' });

async function waitFor<T>(fn: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('search indexes', () => {
  const prefix = `test-${randomUUID()}`;
  let t: TestApp;
  let jobs: JobsService;
  let workers: WorkerRuntime;

  const platform = () => t.auth('platform_admin', null);
  const finished = async (id: string): Promise<JobView> =>
    waitFor(async () => {
      const res = await t.app.inject({ url: `/v1/jobs/${id}`, headers: await platform() });
      const v = res.json().data as JobView;
      return ['completed', 'failed', 'cancelled'].includes(v.state) ? v : undefined;
    });
  const hasColumn = async (table: string, column: string) =>
    (await t.db.adminQuery('SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped', [`public.${table}`, column])).rowCount === 1;
  const indexNames = async (table: string) =>
    (await t.db.adminQuery<{ n: string; valid: boolean }>('SELECT ic.relname AS n, i.indisvalid AS valid FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = $1::regclass ORDER BY 1', [`public.${table}`])).rows;
  const definitions = async () => (await t.db.adminQuery<{ table_name: string }>('SELECT table_name FROM strata.search_indexes ORDER BY 1')).rows.map((r) => r.table_name);
  const queued = async () => (await jobs.queues.search.getJobCounts('waiting', 'active', 'delayed', 'completed', 'failed'));

  beforeAll(async () => {
    jobs = createJobs({ redisUrl: REDIS_URL, prefix, log });
    t = await createTestApp({ seed: true, jobs });
    workers = startWorkers({ redisUrl: REDIS_URL, prefix, log, db: t.db, queues: ['search'], cancelPollMs: 50 });
  });
  afterAll(async () => {
    await workers?.close({ timeoutMs: 5_000 });
    await t?.close();
    if (jobs) {
      for (const q of Object.values(jobs.queues)) await q.obliterate({ force: true });
      await jobs.close();
    }
  });

  it('lists the demo tables indexed by the migration', async () => {
    const res = await t.app.inject({ url: '/v1/admin/search-indexes', headers: await t.auth('admin', 'acme') });
    expect(res.statusCode).toBe(200);
    const data = res.json().data as Array<{ table: string; status: string; maintenance: string; vector: unknown }>;
    expect(data.map((d) => d.table)).toEqual(['documents', 'pipelines', 'run_logs']);
    expect(data.every((d) => d.status === 'ready' && d.maintenance === 'generated')).toBe(true);
    expect(data.find((d) => d.table === 'documents')?.vector).toEqual({ column: 'embedding', dimensions: 384 });
  });

  it('builds an index in a job (progress to 100%), keeps it current for new rows, and drops it in another', async () => {
    const before = await t.app.inject({ url: '/v1/search?table=run_steps&q=build', headers: await t.auth('reader', 'acme') });
    expect(before.json().error.code).toBe('TABLE_NOT_SEARCHABLE');

    const created = await t.app.inject({
      method: 'POST',
      url: '/v1/admin/search-indexes',
      headers: await platform(),
      payload: { table: 'run_steps', columns: [{ name: 'name', weight: 'A' }], language: 'simple' },
    });
    expect(created.statusCode).toBe(202);
    const { job_id, data } = created.json<{ job_id: string; data: { status: string; job_id: string } }>();
    expect(job_id).toMatch(/^search-/);
    expect(data).toMatchObject({ status: 'building', job_id });
    const job = await finished(job_id);
    expect(job.state).toBe('completed');
    const progress = job.progress as { done: number; total: number; percent: number };
    expect(progress.percent).toBe(100);
    expect(progress.done).toBe(progress.total);
    const steps = await t.db.adminQuery<{ n: number }>('SELECT count(*)::int AS n FROM run_steps');
    expect((job.result as { rows: number }).rows).toBe(steps.rows[0]!.n);
    expect(await hasColumn('run_steps', 'search_tsv')).toBe(true);
    const idx = await indexNames('run_steps');
    expect(idx).toEqual(expect.arrayContaining([{ n: 'run_steps_search_tsv_idx', valid: true }, { n: 'run_steps_name_trgm_idx', valid: true }]));
    const view = await t.app.inject({ url: '/v1/admin/search-indexes/run_steps', headers: await t.auth('admin', 'acme') });
    expect(view.json().data.status).toBe('ready');

    // existing rows were backfilled; acme sees only its own
    const found = await t.app.inject({ url: '/v1/search?table=run_steps&q=deploy&limit=100', headers: await t.auth('reader', 'acme') });
    expect(found.statusCode).toBe(200);
    const acmeDeploys = await t.db.withTenant({ tenantId: 'acme', actor: 't', role: 'reader', requestId: 't' }, (tx) => tx.query<{ n: number }>("SELECT count(*)::int AS n FROM run_steps WHERE name = 'deploy'"));
    expect(found.json().total).toBe(acmeDeploys.rows[0]!.n);
    expect((found.json().data as Array<{ row: { tenant_id: string } }>).every((h) => h.row.tenant_id === 'acme')).toBe(true);

    // a row written afterwards through the rows API (a tenant session) is indexed by the trigger
    const run = await t.app.inject({ url: '/v1/tables/pipeline_runs/rows?limit=1', headers: await t.auth('reader', 'acme') });
    const runId = run.json().data[0].id as string;
    const inserted = await t.app.inject({ method: 'POST', url: '/v1/tables/run_steps/rows', headers: await t.auth('writer', 'acme'), payload: { run_id: runId, name: 'zebra crossing' } });
    expect(inserted.statusCode).toBe(201);
    expect(inserted.json().data).not.toHaveProperty('search_tsv');
    const zebra = await t.app.inject({ url: '/v1/search?table=run_steps&q=zebra', headers: await t.auth('reader', 'acme') });
    expect(zebra.json().data.map((h: { row: { name: string } }) => h.row.name)).toEqual(['zebra crossing']);
    const globexZebra = await t.app.inject({ url: '/v1/search?table=run_steps&q=zebra', headers: await t.auth('reader', 'globex') });
    expect(globexZebra.json().total).toBe(0);

    // a second index on the same table: 409, nothing enqueued
    const countsBefore = await queued();
    const again = await t.app.inject({ method: 'POST', url: '/v1/admin/search-indexes', headers: await platform(), payload: { table: 'run_steps', columns: [{ name: 'name', weight: 'B' }] } });
    expect(again.statusCode).toBe(409);
    expect(again.json().error.code).toBe('SEARCH_INDEX_EXISTS');
    expect(await queued()).toEqual(countsBefore);

    const dropped = await t.app.inject({ method: 'DELETE', url: '/v1/admin/search-indexes/run_steps', headers: await platform() });
    expect(dropped.statusCode).toBe(202);
    const dropJob = await finished(dropped.json().job_id as string);
    expect(dropJob.state).toBe('completed');
    expect((dropJob.progress as { percent: number }).percent).toBe(100);
    expect(await hasColumn('run_steps', 'search_tsv')).toBe(false);
    expect((await indexNames('run_steps')).map((i) => i.n)).not.toContain('run_steps_search_tsv_idx');
    expect(await definitions()).toEqual(['documents', 'pipelines', 'run_logs']);
    const after = await t.app.inject({ url: '/v1/search?table=run_steps&q=deploy', headers: await t.auth('reader', 'acme') });
    expect(after.statusCode).toBe(400);
    expect(after.json().error.code).toBe('TABLE_NOT_SEARCHABLE');
    // the rows API still writes run_steps (no trigger left behind)
    const later = await t.app.inject({ method: 'POST', url: '/v1/tables/run_steps/rows', headers: await t.auth('writer', 'acme'), payload: { run_id: runId, name: 'after drop' } });
    expect(later.statusCode).toBe(201);
  });

  it("keeps the backfill's counts of every tenant's rows from a tenant: the jobs are the platform's, even when a platform_admin token names a tenant", async () => {
    const asAcmePlatform = await t.auth('platform_admin', 'acme');
    const created = await t.app.inject({ method: 'POST', url: '/v1/admin/search-indexes', headers: asAcmePlatform, payload: { table: 'run_steps', columns: [{ name: 'name', weight: 'A' }] } });
    expect(created.statusCode, created.body).toBe(202);
    const jobId = created.json<{ job_id: string }>().job_id;
    const job = await finished(jobId);
    expect(job.state).toBe('completed');
    // the platform sees the total: every tenant's rows (acme's alone are fewer)
    const all = (await t.db.adminQuery<{ n: number; acme: number }>("SELECT count(*)::int AS n, count(*) FILTER (WHERE tenant_id = 'acme')::int AS acme FROM run_steps")).rows[0]!;
    expect((job.result as { rows: number }).rows).toBe(all.n);
    expect(all.acme).toBeLessThan(all.n);
    // acme's admin, who may read the index's status and job id, cannot read the job (its progress
    // and result count globex's rows); before, a job enqueued by acme's platform token was acme's
    const view = await t.app.inject({ url: '/v1/admin/search-indexes/run_steps', headers: await t.auth('admin', 'acme') });
    expect(view.json().data.job_id).toBe(jobId);
    for (const role of ['admin', 'reader'] as const) {
      const res = await t.app.inject({ url: `/v1/jobs/${jobId}`, headers: await t.auth(role, 'acme') });
      expect(res.statusCode, role).toBe(404);
      expect(res.json().error.code).toBe('JOB_NOT_FOUND');
      const events = await t.app.inject({ url: `/v1/jobs/${jobId}/events`, headers: await t.auth(role, 'acme') });
      expect(events.statusCode, role).toBe(404);
    }
    const dropped = await t.app.inject({ method: 'DELETE', url: '/v1/admin/search-indexes/run_steps', headers: asAcmePlatform });
    expect(dropped.statusCode).toBe(202);
    const dropJob = dropped.json<{ job_id: string }>().job_id;
    expect((await finished(dropJob)).state).toBe('completed');
    expect((await t.app.inject({ url: `/v1/jobs/${dropJob}`, headers: await t.auth('admin', 'acme') })).statusCode).toBe(404);
  });

  it('declares a vector column on a table and searches it exactly', async () => {
    // pipeline_runs has no real[] column: refused; documents' own vector is searched exactly
    const res = await t.app.inject({ method: 'POST', url: '/v1/admin/search-indexes', headers: await platform(), payload: { table: 'pipeline_runs', vector: { column: 'params', dimensions: 3 } } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.code).toBe('INVALID_VECTOR_COLUMN');
  });

  it('refuses index management to roles other than platform_admin with 403', async () => {
    for (const role of ['reader', 'writer', 'analyst', 'admin'] as const) {
      const res = await t.app.inject({ method: 'POST', url: '/v1/admin/search-indexes', headers: await t.auth(role, 'acme'), payload: { table: 'run_steps', columns: [{ name: 'name', weight: 'A' }] } });
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe('ROLE_FORBIDDEN');
      const del = await t.app.inject({ method: 'DELETE', url: '/v1/admin/search-indexes/run_logs', headers: await t.auth(role, 'acme') });
      expect(del.statusCode).toBe(403);
    }
    for (const role of ['reader', 'writer'] as const) {
      const list = await t.app.inject({ url: '/v1/admin/search-indexes', headers: await t.auth(role, 'acme') });
      expect(list.statusCode).toBe(403);
    }
    expect(await definitions()).toEqual(['documents', 'pipelines', 'run_logs']);
    expect(await hasColumn('run_steps', 'search_tsv')).toBe(false);
  });

  describe('bad input -> 4xx, nothing written, nothing enqueued', () => {
    const cases: Array<[string, unknown, number, string]> = [
      ['unknown table', { table: 'nope', columns: [{ name: 'x', weight: 'A' }] }, 400, 'UNKNOWN_TABLE'],
      ['unknown column', { table: 'run_steps', columns: [{ name: 'nope', weight: 'A' }] }, 400, 'UNKNOWN_COLUMN'],
      ['non-text column', { table: 'run_steps', columns: [{ name: 'duration_ms', weight: 'A' }] }, 400, 'COLUMN_NOT_TEXT'],
      ['duplicate column', { table: 'run_steps', columns: [{ name: 'name', weight: 'A' }, { name: 'name', weight: 'B' }] }, 400, 'DUPLICATE_COLUMN'],
      ['bad weight', { table: 'run_steps', columns: [{ name: 'name', weight: 'E' }] }, 400, 'VALIDATION_FAILED'],
      ['unknown language', { table: 'run_steps', columns: [{ name: 'name', weight: 'A' }], language: 'klingon' }, 400, 'UNKNOWN_LANGUAGE'],
      ['nothing to index', { table: 'run_steps' }, 400, 'NOTHING_TO_INDEX'],
      ['vector column of another type', { table: 'run_steps', vector: { column: 'name', dimensions: 3 } }, 400, 'INVALID_VECTOR_COLUMN'],
      ['zero dimensions', { table: 'documents', vector: { column: 'embedding', dimensions: 0 } }, 400, 'VALIDATION_FAILED'],
      ['an indexed table', { table: 'run_logs', columns: [{ name: 'message', weight: 'A' }] }, 409, 'SEARCH_INDEX_EXISTS'],
    ];
    it.each(cases)('%s', async (_name, body, status, code) => {
      const before = await queued();
      const res = await t.app.inject({ method: 'POST', url: '/v1/admin/search-indexes', headers: await platform(), payload: body as object });
      expect(res.statusCode).toBe(status);
      expect(res.json().error.code).toBe(code);
      expect(await definitions()).toEqual(['documents', 'pipelines', 'run_logs']);
      expect(await hasColumn('run_steps', 'search_tsv')).toBe(false);
      expect(await queued()).toEqual(before);
    });

    it('answers DELETE of a table without an index with 404 SEARCH_INDEX_NOT_FOUND', async () => {
      const res = await t.app.inject({ method: 'DELETE', url: '/v1/admin/search-indexes/run_steps', headers: await platform() });
      expect(res.statusCode).toBe(404);
      expect(res.json().error.code).toBe('SEARCH_INDEX_NOT_FOUND');
      expect(await definitions()).toEqual(['documents', 'pipelines', 'run_logs']);
    });
  });
});
