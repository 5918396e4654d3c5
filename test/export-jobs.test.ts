/**
 * Export jobs end to end: POST /v1/exports -> a BullMQ worker writes the file into EXPORT_DIR,
 * GET /v1/jobs/{id} shows rows done against the planner's estimate, GET /v1/exports/{id}/file
 * downloads it; tenant isolation; cancellation with a partial file; a worker dying mid-job; bad
 * input answered 4xx with no job and no file.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createJobs, type JobsService, type JobView } from '../src/jobs/queues.js';
import { startWorkers, type WorkerRuntime } from '../src/jobs/runtime.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { REDIS_URL } from './helpers/databases.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';
import { ACME_ROWS, allAcme, allGlobex, expectedCsv, expectedNdjson, seedPipelines } from './helpers/export-data.js';

const log = pino({ level: 'silent' });

async function deleteKeys(prefix: string): Promise<void> {
  const r = new Redis(REDIS_URL);
  const keys = await r.keys(`${prefix}:*`);
  if (keys.length) await r.del(...keys);
  await r.quit();
}

/** An analyst statement that yields `n` rows slowly (about 1 ms each), row by row. */
const slowSql = (n: number) => `SELECT g, 'row ' || g || left(pg_sleep(0.001)::text, 0) AS label FROM (SELECT generate_series(1, ${n}) AS g) s`;
const slowCsv = (n: number) => `g,label\n${Array.from({ length: n }, (_, k) => `${k + 1},row ${k + 1}\n`).join('')}`;

describe('export jobs', () => {
  const prefix = `test-${randomUUID()}`;
  const exportDir = mkdtempSync(join(tmpdir(), 'strata-exports-'));
  let t: TestApp;
  let jobs: JobsService;
  let workers: WorkerRuntime;

  beforeAll(async () => {
    jobs = createJobs({ redisUrl: REDIS_URL, prefix, log });
    t = await createTestApp({ jobs, env: { EXPORT_DIR: exportDir, DB_POOL_MAX: '6' } });
    await seedPipelines(t.db);
    workers = startWorkers({ redisUrl: REDIS_URL, prefix, log, db: t.db, queues: ['exports'], cancelPollMs: 50 });
  }, 60_000);
  afterEach(async () => expectNoCheckedOutClients(t.db));
  afterAll(async () => {
    await workers?.close({ timeoutMs: 5_000 });
    if (jobs) {
      for (const q of Object.values(jobs.queues)) await q.obliterate({ force: true });
      await deleteKeys(prefix);
    }
    await t?.close();
    await jobs?.close();
    rmSync(exportDir, { recursive: true, force: true });
  });

  const files = () => readdirSync(exportDir).sort();
  const getJob = async (id: string, tenant = 'acme'): Promise<JobView> => {
    const res = await t.app.inject({ url: `/v1/jobs/${id}`, headers: await t.auth('reader', tenant) });
    expect(res.statusCode).toBe(200);
    return res.json().data;
  };
  const until = (id: string, test: (v: JobView) => boolean, timeout = 30_000, tenant = 'acme') =>
    vi.waitFor(
      async () => {
        const v = await getJob(id, tenant);
        if (!test(v)) throw new Error(`job ${id} is ${v.state}`);
        return v;
      },
      { timeout, interval: 50 },
    );
  const start = async (payload: Record<string, unknown>, role: 'reader' | 'analyst' = 'reader', tenant = 'acme') => {
    const res = await t.app.inject({ method: 'POST', url: '/v1/exports', headers: await t.auth(role, tenant), payload });
    expect(res.statusCode, res.body).toBe(202);
    const body = res.json<{ job_id: string; estimated_rows: number }>();
    expect(body.job_id).toMatch(/^exports-[0-9a-f-]{36}$/);
    expect(res.headers.location).toBe(`/v1/jobs/${body.job_id}`);
    return body;
  };
  const download = async (id: string, tenant = 'acme') => t.app.inject({ url: `/v1/exports/${id}/file`, headers: await t.auth('reader', tenant) });

  it(`writes a ${ACME_ROWS}-row table export to a file, shows progress against the estimate, and serves the file`, async () => {
    const { job_id, estimated_rows } = await start({ table: 'pipelines', format: 'csv', filters: { select: 'id,name,description' } });
    // the caller's rows counted up to COUNT_ESTIMATE_CAP (a planner estimate would count every tenant's)
    expect(estimated_rows).toBe(Math.min(ACME_ROWS, t.config.COUNT_ESTIMATE_CAP));
    const done = await until(job_id, (v) => v.state === 'completed' || v.state === 'failed');
    expect(done.state).toBe('completed');
    expect(done.progress).toEqual({ done: ACME_ROWS, total: ACME_ROWS, percent: 100 });
    const expected = expectedCsv(allAcme());
    expect(done.result).toEqual({ file: `${job_id}.csv`, format: 'csv', rows: ACME_ROWS, bytes: Buffer.byteLength(expected) });
    expect(files()).toContain(`${job_id}.csv`);
    expect(files().some((f) => f.endsWith('.tmp'))).toBe(false);
    expect(readFileSync(join(exportDir, `${job_id}.csv`), 'utf8') === expected).toBe(true);
    const res = await download(job_id);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/csv; charset=utf-8');
    expect(res.headers['content-disposition']).toBe(`attachment; filename="${job_id}.csv"`);
    expect(res.body === expected).toBe(true);
  });

  it('streams the job progress as Server-Sent Events ending with done', async () => {
    const { job_id } = await start({ sql: slowSql(400), format: 'csv' }, 'analyst');
    const res = await t.app.inject({ url: `/v1/jobs/${job_id}/events`, headers: await t.auth('reader', 'acme') });
    expect(res.statusCode).toBe(200);
    const events = res.body.split('\n\n').filter((b) => b.startsWith('id:'));
    expect(events.some((e) => e.includes('event: progress'))).toBe(true);
    expect(events.at(-1)).toMatch(/event: done/);
    expect(readFileSync(join(exportDir, `${job_id}.csv`), 'utf8')).toBe(slowCsv(400));
  });

  it("keeps each tenant to its own rows and jobs: another tenant's job and file are 404", async () => {
    const { job_id } = await start({ table: 'pipelines', format: 'ndjson', filters: { select: 'id,name,description' } }, 'reader', 'globex');
    const done = await until(job_id, (v) => ['completed', 'failed'].includes(v.state), 20_000, 'globex');
    expect(done, JSON.stringify(done)).toMatchObject({ state: 'completed' });
    expect(readFileSync(join(exportDir, `${job_id}.ndjson`), 'utf8')).toBe(expectedNdjson(allGlobex()));
    const other = await t.app.inject({ url: `/v1/jobs/${job_id}`, headers: await t.auth('reader', 'acme') });
    expect(other.statusCode).toBe(404);
    expect(other.json().error.code).toBe('JOB_NOT_FOUND');
    const file = await download(job_id, 'acme');
    expect(file.statusCode).toBe(404);
    expect(file.json().error.code).toBe('JOB_NOT_FOUND');
    // acme's analyst cannot reach globex rows through SQL either.
    const sql = await start({ sql: "SELECT id FROM pipelines WHERE tenant_id = 'globex'", format: 'csv' }, 'analyst');
    await until(sql.job_id, (v) => v.state === 'completed');
    expect(readFileSync(join(exportDir, `${sql.job_id}.csv`), 'utf8')).toBe('id\n');
  });

  it('answers 409 EXPORT_NOT_READY for the file of a running export', async () => {
    const { job_id } = await start({ sql: slowSql(1_500), format: 'csv' }, 'analyst');
    await until(job_id, (v) => v.state === 'active');
    const res = await download(job_id);
    expect(res.statusCode).toBe(409);
    expect(res.json().error).toMatchObject({ code: 'EXPORT_NOT_READY', details: { state: 'active' } });
    await until(job_id, (v) => v.state === 'completed');
    expect((await download(job_id)).body).toBe(slowCsv(1_500));
  });

  it('cancels a running export: the query stops, the partial file is kept as .partial, the job ends cancelled', async () => {
    const { job_id } = await start({ sql: slowSql(200_000), format: 'csv' }, 'analyst');
    const running = await until(job_id, (v) => v.state === 'active' && typeof v.progress === 'object' && (v.progress as { done: number }).done > 0);
    // While running: rows done; analyst SQL is not run twice to count it, so its total is unknown (-1).
    const p = running.progress as { done: number; total: number; percent: number | null; estimated: boolean };
    expect(p.estimated).toBe(true);
    expect(p.total).toBe(-1);
    expect(p.percent).toBeNull();
    const del = await t.app.inject({ method: 'DELETE', url: `/v1/jobs/${job_id}`, headers: await t.auth('writer', 'acme') });
    expect(del.statusCode).toBe(202);
    const ended = await until(job_id, (v) => ['cancelled', 'completed', 'failed'].includes(v.state));
    expect(ended.state).toBe('cancelled');
    expect(ended.result).toBeNull();
    expect(ended.progress).toMatchObject({ partial: true, partial_file: `${job_id}.csv.partial` });
    expect(files()).toContain(`${job_id}.csv.partial`);
    expect(files()).not.toContain(`${job_id}.csv`);
    const partial = readFileSync(join(exportDir, `${job_id}.csv.partial`), 'utf8');
    expect(partial.startsWith('g,label\n1,row 1\n')).toBe(true);
    expect(partial.length).toBeLessThan(slowCsv(200_000).length);
    const file = await download(job_id);
    expect(file.statusCode).toBe(409);
    expect(file.json().error).toMatchObject({ code: 'EXPORT_NOT_READY', details: { state: 'cancelled' } });
    const { rows } = await t.db.adminQuery<{ n: number }>("SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE '%pg_sleep(0.001)%' AND pid <> pg_backend_pid()");
    expect(rows[0]!.n).toBe(0);
  });

  it('retries an export whose worker died mid-job, from scratch, and finishes it', async () => {
    const prefix2 = `test-${randomUUID()}`;
    const jobs2 = createJobs({ redisUrl: REDIS_URL, prefix: prefix2, log });
    const fast = { lockDuration: 1_000, stalledInterval: 500 };
    const first = startWorkers({ redisUrl: REDIS_URL, prefix: prefix2, log, db: t.db, queues: ['exports'], workerOptions: fast });
    let second: WorkerRuntime | undefined;
    const ctx = { requestId: 'req-export', tenantId: 'acme', actor: 'user@acme', role: 'analyst' as const };
    try {
      const { job_id } = await jobs2.enqueue(ctx, 'export', { sql: slowSql(2_000), params: [], format: 'csv', role: 'analyst' });
      await vi.waitFor(async () => expect((await jobs2.get(ctx, job_id)).state).toBe('active'), { timeout: 10_000, interval: 50 });
      // A crash: the worker stops without finishing or releasing the job (its lock lapses).
      await Promise.all(first.workers.map((w) => w.close(true)));
      second = startWorkers({ redisUrl: REDIS_URL, prefix: prefix2, log, db: t.db, queues: ['exports'], workerOptions: fast });
      const done = await vi.waitFor(
        async () => {
          const v = await jobs2.get(ctx, job_id);
          if (!['completed', 'failed'].includes(v.state)) throw new Error(v.state);
          return v;
        },
        { timeout: 30_000, interval: 100 },
      );
      expect(done.state).toBe('completed');
      expect(done.result).toMatchObject({ file: `${job_id}.csv`, rows: 2_000 });
      expect(readFileSync(join(exportDir, `${job_id}.csv`), 'utf8')).toBe(slowCsv(2_000));
      const raw = await jobs2.queues.exports.getJob(job_id);
      expect(raw?.attemptsStarted).toBeGreaterThanOrEqual(2);
    } finally {
      await first.close({ timeoutMs: 10_000 });
      await second?.close({ timeoutMs: 10_000 });
      for (const q of Object.values(jobs2.queues)) await q.obliterate({ force: true });
      await deleteKeys(prefix2);
      await jobs2.close();
    }
    // The first worker's abandoned run finished on its own; no temporary file is left behind.
    await vi.waitFor(() => expect(files().some((f) => f.endsWith('.tmp'))).toBe(false), { timeout: 10_000 });
  });

  describe('refuses bad input with 4xx and a code: no job, no file', () => {
    const cases: Array<[string, Record<string, unknown>, 'reader' | 'analyst', number, string]> = [
      ['a bad format', { table: 'pipelines', format: 'xml' }, 'reader', 400, 'INVALID_EXPORT_FORMAT'],
      ['an unknown table', { table: 'nope', format: 'csv' }, 'reader', 404, 'TABLE_NOT_FOUND'],
      ['a bad filter', { table: 'pipelines', format: 'csv', filters: { id: 'eq.abc' } }, 'reader', 400, 'INVALID_FILTER_VALUE'],
      ['an unknown filter column', { table: 'pipelines', format: 'csv', filters: { nope: 'eq.1' } }, 'reader', 400, 'UNKNOWN_COLUMN'],
      ['an embed in CSV', { table: 'pipelines', format: 'csv', filters: { select: 'id,pipeline_runs(id)' } }, 'reader', 400, 'EXPORT_EMBED_UNSUPPORTED'],
      ['neither table nor sql', { format: 'csv' }, 'analyst', 400, 'EXPORT_SOURCE_REQUIRED'],
      ['both table and sql', { table: 'pipelines', sql: 'SELECT 1', format: 'csv' }, 'analyst', 400, 'EXPORT_SOURCE_REQUIRED'],
      ['SQL from a reader', { sql: 'SELECT 1', format: 'csv' }, 'reader', 403, 'ROLE_FORBIDDEN'],
      ['a write statement', { sql: 'DELETE FROM pipelines', format: 'csv' }, 'analyst', 400, 'SQL_NOT_READ_ONLY'],
      ['an unknown column in SQL', { sql: 'SELECT nope FROM pipelines', format: 'csv' }, 'analyst', 400, 'SQL_ERROR'],
      ['an unknown body field', { table: 'pipelines', format: 'csv', extra: 1 }, 'reader', 400, 'VALIDATION_FAILED'],
      ['a timeout beyond the maximum', { table: 'pipelines', format: 'csv', timeout_ms: 999_999_999 }, 'reader', 400, 'INVALID_TIMEOUT'],
    ];
    for (const [what, payload, role, status, code] of cases) {
      it(`answers ${what} with ${status} ${code}`, async () => {
        const before = files();
        const counts = await jobs.queues.exports.getJobCounts();
        const res = await t.app.inject({ method: 'POST', url: '/v1/exports', headers: await t.auth(role, 'acme'), payload });
        expect(res.statusCode, res.body).toBe(status);
        expect(res.json().error.code).toBe(code);
        expect(await jobs.queues.exports.getJobCounts()).toEqual(counts);
        expect(files()).toEqual(before);
      });
    }

    it('answers the file of a job that is not an export with 404 EXPORT_NOT_FOUND', async () => {
      const { job_id } = await jobs.enqueue({ requestId: 'r', tenantId: 'acme', actor: 'a', role: 'writer' }, 'sleep', { ms: 1, steps: 1 });
      const res = await download(job_id);
      expect(res.statusCode).toBe(404);
      expect(res.json().error.code).toBe('EXPORT_NOT_FOUND');
      expect(existsSync(join(exportDir, `${job_id}.csv`))).toBe(false);
    });
  });
});
