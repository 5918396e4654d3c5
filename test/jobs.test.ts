/**
 * The jobs layer end to end, against the real Redis and PostgreSQL: enqueue, run by a BullMQ
 * worker, read, follow as Server-Sent Events, cancel, tenant isolation of jobs, Redis outage as a
 * fast 503, the API-key expiry job, and bull-board's guard. Queues live under a unique prefix.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { Redis } from 'ioredis';
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { build } from '../src/app.js';
import type { RequestContext } from '../src/domain.js';
import { AppError } from '../src/errors.js';
import { QUEUE_NAMES, createJobs, type JobsService, type JobView } from '../src/jobs/queues.js';
import { startWorkers, type WorkerRuntime } from '../src/jobs/runtime.js';
import { API_KEY_SWEEP_SCHEDULER, registerSchedules } from '../src/jobs/schedules.js';
import { hashApiKey } from '../src/services/identity/index.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { TEST_JWT_SECRET } from './helpers/constants.js';
import { REDIS_URL } from './helpers/databases.js';

const log = pino({ level: 'silent' });
const acme: RequestContext = { requestId: 'req-test', tenantId: 'acme', actor: 'user@acme', role: 'writer' };

async function waitFor<T>(fn: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A local TCP port that nothing listens on (bound, then released). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Remove what obliterate leaves under a prefix (the cancellation records). */
async function deleteKeys(prefix: string): Promise<void> {
  const r = new Redis(REDIS_URL);
  const keys = await r.keys(`${prefix}:*`);
  if (keys.length) await r.del(...keys);
  await r.quit();
}

/** Parse an SSE body into its messages (comments dropped). */
function parseSse(body: string): Array<{ id?: string; event?: string; data?: unknown }> {
  return body
    .split('\n\n')
    .filter((block) => block.trim() && !block.startsWith(':'))
    .map((block) => {
      const msg: { id?: string; event?: string; data?: unknown } = {};
      for (const line of block.split('\n')) {
        const [field, ...rest] = line.split(': ');
        const value = rest.join(': ');
        if (field === 'id') msg.id = value;
        else if (field === 'event') msg.event = value;
        else if (field === 'data') msg.data = JSON.parse(value);
      }
      return msg;
    });
}

describe('jobs', () => {
  const prefix = `test-${randomUUID()}`;
  let t: TestApp;
  let jobs: JobsService;
  let workers: WorkerRuntime;
  let app: FastifyInstance;

  const getJob = async (id: string): Promise<JobView> => {
    const res = await app.inject({ url: `/v1/jobs/${id}`, headers: await t.auth('reader', 'acme') });
    expect(res.statusCode).toBe(200);
    return res.json().data;
  };
  const until = (id: string, states: string[], timeoutMs?: number) =>
    waitFor(async () => {
      const v = await getJob(id);
      return states.includes(v.state) ? v : undefined;
    }, timeoutMs);

  beforeAll(async () => {
    t = await createTestApp();
    jobs = createJobs({ redisUrl: REDIS_URL, prefix, log });
    workers = startWorkers({ redisUrl: REDIS_URL, prefix, log, db: t.db, concurrency: 4, cancelPollMs: 50 });
    app = await build({ config: t.config, db: t.db, redis: t.redis.client, jwtSecret: TEST_JWT_SECRET, loggerInstance: log, registry: new Registry(), jobs });
    await app.ready();
  });

  afterEach(async () => {
    // Every database client a job or route borrowed is back in its pool.
    const checkedOut = () => t.db.pools().reduce((n, p) => n + p.pg.totalCount - p.pg.idleCount, 0);
    await waitFor(async () => (checkedOut() === 0 ? true : undefined), 2_000).catch(() => undefined);
    expect(checkedOut(), 'database clients not returned to their pool').toBe(0);
  });

  afterAll(async () => {
    await app?.close();
    await workers?.close({ timeoutMs: 5_000 });
    if (jobs) {
      for (const q of Object.values(jobs.queues)) await q.obliterate({ force: true });
      await deleteKeys(prefix);
      await jobs.close();
    }
    await t?.close();
  });

  it('runs an enqueued job on a worker and shows it completed with its result and progress 100', async () => {
    const { job_id } = await jobs.enqueue(acme, 'sleep', { ms: 150, steps: 3 });
    expect(job_id).toMatch(/^noop-[0-9a-f-]{36}$/);
    const done = await until(job_id, ['completed', 'failed']);
    expect(done).toMatchObject({
      id: job_id,
      name: 'sleep',
      queue: 'noop',
      state: 'completed',
      result: { slept: 150 },
      error: null,
      attempts: 1,
      progress: { done: 3, total: 3, percent: 100 },
    });
    expect(Date.parse(done.finished_at ?? '')).toBeGreaterThanOrEqual(Date.parse(done.created_at));
    const raw = await jobs.queues.noop.getJob(job_id);
    expect(raw?.data).toMatchObject({ tenantId: 'acme', actor: 'user@acme', requestId: 'req-test' });
  });

  it("answers another tenant's job with 404 JOB_NOT_FOUND, and shows it to a platform_admin", async () => {
    const { job_id } = await jobs.enqueue(acme, 'sleep', { ms: 10, steps: 1 });
    await until(job_id, ['completed']);
    for (const role of ['reader', 'admin'] as const) {
      const res = await app.inject({ url: `/v1/jobs/${job_id}`, headers: await t.auth(role, 'globex') });
      expect(res.statusCode).toBe(404);
      expect(res.json().error.code).toBe('JOB_NOT_FOUND');
    }
    const del = await app.inject({ method: 'DELETE', url: `/v1/jobs/${job_id}`, headers: await t.auth('admin', 'globex') });
    expect(del.statusCode).toBe(404);
    const events = await app.inject({ url: `/v1/jobs/${job_id}/events`, headers: await t.auth('reader', 'globex') });
    expect(events.statusCode).toBe(404);
    expect(events.json().error.code).toBe('JOB_NOT_FOUND');
    const admin = await app.inject({ url: `/v1/jobs/${job_id}`, headers: await t.auth('platform_admin', null) });
    expect(admin.statusCode).toBe(200);
    expect(admin.json().data.state).toBe('completed');
  });

  it('answers malformed and unknown job ids with 404 JOB_NOT_FOUND, never 500', async () => {
    const headers = await t.auth('writer', 'acme');
    for (const id of [
      'nope',
      'noop-123',
      `noop-${randomUUID()}`,
      `maintenance-${randomUUID()}`,
      `other-${randomUUID()}`,
      `noop-${randomUUID()}-x`,
      `NOOP-${randomUUID()}`,
      `noop-${randomUUID().toUpperCase()}`,
      "noop-' OR 1=1 --",
      '%00',
      '..%2F..%2Fetc',
      'x'.repeat(90),
    ]) {
      for (const [method, url] of [
        ['GET', `/v1/jobs/${id}`],
        ['DELETE', `/v1/jobs/${id}`],
        ['GET', `/v1/jobs/${id}/events`],
      ] as const) {
        const res = await app.inject({ method, url, headers });
        expect(res.statusCode, `${method} ${url.slice(0, 60)}`).toBe(404);
        expect(res.json().error.code).toMatch(/^(JOB_NOT_FOUND|ROUTE_NOT_FOUND)$/);
      }
    }
    const res = await app.inject({ url: `/v1/jobs/noop-${randomUUID()}`, headers });
    expect(res.json().error.code).toBe('JOB_NOT_FOUND');
    const long = await app.inject({ url: `/v1/jobs/${'x'.repeat(5_000)}`, headers });
    expect(long.statusCode).toBeLessThan(500);
  });

  it('requires credentials for jobs: 401 without, 403 for a reader cancelling', async () => {
    const { job_id } = await jobs.enqueue(acme, 'sleep', { ms: 10, steps: 1 });
    expect((await app.inject({ url: `/v1/jobs/${job_id}` })).statusCode).toBe(401);
    const del = await app.inject({ method: 'DELETE', url: `/v1/jobs/${job_id}`, headers: await t.auth('reader', 'acme') });
    expect(del.statusCode).toBe(403);
    expect(del.json().error.code).toBe('ROLE_FORBIDDEN');
  });

  it('streams progress events, then done, as Server-Sent Events ending when the job ends', async () => {
    const { job_id } = await jobs.enqueue(acme, 'sleep', { ms: 1_000, steps: 4 });
    const res = await app.inject({ url: `/v1/jobs/${job_id}/events`, headers: await t.auth('reader', 'acme') });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
    expect(res.headers['x-request-id']).toBeTruthy();
    const messages = parseSse(res.body);
    const progress = messages.filter((m) => m.event === 'progress');
    expect(progress.length).toBeGreaterThanOrEqual(2);
    expect(progress.at(-1)?.data).toEqual({ progress: { done: 4, total: 4, percent: 100 } });
    const percents = progress.map((m) => (m.data as { progress: { percent: number } }).progress.percent);
    expect([...percents].sort((a, b) => a - b)).toEqual(percents);
    expect(messages.filter((m) => m.event === 'state').map((m) => (m.data as { state: string }).state)).toContain('completed');
    const last = messages.at(-1);
    expect(last?.event).toBe('done');
    expect(last?.data).toMatchObject({ id: job_id, state: 'completed', result: { slept: 1_000 } });
    const ids = messages.map((m) => Number(m.id));
    expect(ids).toEqual(ids.map((_, i) => i + 1));
  });

  it('streams events over real HTTP while the job runs, and stops when the client disconnects', async () => {
    const { job_id } = await jobs.enqueue(acme, 'sleep', { ms: 5_000, steps: 50 });
    await until(job_id, ['active']);
    await app.listen({ port: 0, host: '127.0.0.1' });
    const { port } = app.server.address() as AddressInfo;
    const headers = await t.auth('reader', 'acme');
    const req = http.get({ host: '127.0.0.1', port, path: `/v1/jobs/${job_id}/events`, headers });
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => req.on('response', resolve).on('error', reject));
    expect(res.statusCode).toBe(200);
    let text = '';
    await new Promise<void>((resolve) => {
      res.on('data', (chunk: Buffer) => {
        text += chunk.toString();
        if (text.includes('event: progress')) resolve();
      });
    });
    expect(text).toContain('event: state');
    expect((await getJob(job_id)).state).toBe('active'); // streamed before the job ended
    req.on('error', () => undefined);
    req.destroy();
    // The server notices: no connection is left open (the stream and its polling ended).
    await waitFor(async () => {
      const n = await new Promise<number>((resolve) => app.server.getConnections((_e, c) => resolve(c)));
      return n === 0 ? true : undefined;
    }, 3_000);
    await jobs.cancel(acme, job_id);
    await until(job_id, ['cancelled']);
  });

  it('cancels a running job: it ends cancelled, never completed, and is not retried', async () => {
    const { job_id } = await jobs.enqueue(acme, 'sleep', { ms: 10_000, steps: 100 });
    await until(job_id, ['active']);
    const started = Date.now();
    const res = await app.inject({ method: 'DELETE', url: `/v1/jobs/${job_id}`, headers: await t.auth('writer', 'acme') });
    expect(res.statusCode).toBe(202);
    expect(['cancelling', 'cancelled']).toContain(res.json().data.state);
    expect(await jobs.isCancelled(job_id)).toBe(true);
    const end = await until(job_id, ['cancelled', 'completed', 'failed']);
    expect(end.state).toBe('cancelled');
    expect(Date.now() - started).toBeLessThan(3_000);
    // Stays cancelled: no retry brings it back.
    await new Promise((r) => setTimeout(r, 1_200));
    const later = await getJob(job_id);
    expect(later.state).toBe('cancelled');
    expect(later.attempts).toBe(1);
    expect(later.result).toBeNull();
    // Cancelling again is idempotent.
    const again = await app.inject({ method: 'DELETE', url: `/v1/jobs/${job_id}`, headers: await t.auth('writer', 'acme') });
    expect(again.statusCode).toBe(202);
    expect(again.json().data.state).toBe('cancelled');
  });

  it('cancels a job that has not started: removed, shown as cancelled, never run', async () => {
    const { job_id } = await jobs.enqueue(acme, 'sleep', { ms: 10, steps: 1 }, { delay: 60_000 });
    expect((await getJob(job_id)).state).toBe('delayed');
    const res = await app.inject({ method: 'DELETE', url: `/v1/jobs/${job_id}`, headers: await t.auth('writer', 'acme') });
    expect(res.statusCode).toBe(202);
    expect(res.json().data).toMatchObject({ id: job_id, state: 'cancelled', result: null });
    expect(await jobs.queues.noop.getJob(job_id)).toBeUndefined();
    expect((await getJob(job_id)).state).toBe('cancelled');
    const other = await app.inject({ url: `/v1/jobs/${job_id}`, headers: await t.auth('reader', 'globex') });
    expect(other.json().error.code).toBe('JOB_NOT_FOUND');
    expect(other.statusCode).toBe(404);
    const sse = await app.inject({ url: `/v1/jobs/${job_id}/events`, headers: await t.auth('reader', 'acme') });
    expect(parseSse(sse.body).at(-1)?.event).toBe('cancelled');
  });

  it('refuses to cancel a finished job with 409 JOB_FINISHED', async () => {
    const { job_id } = await jobs.enqueue(acme, 'sleep', { ms: 10, steps: 1 });
    await until(job_id, ['completed']);
    const res = await app.inject({ method: 'DELETE', url: `/v1/jobs/${job_id}`, headers: await t.auth('writer', 'acme') });
    expect(res.statusCode).toBe(409);
    expect(res.json().error.code).toBe('JOB_FINISHED');
    expect((await getJob(job_id)).state).toBe('completed');
  });

  it('answers 503 JOBS_UNAVAILABLE quickly when Redis is unreachable', async () => {
    // A port nothing listens on (a fixed one like 6399 may be taken by another suite's Redis).
    const down = createJobs({ redisUrl: `redis://127.0.0.1:${await freePort()}`, prefix, log });
    const downApp = await build({ config: t.config, db: t.db, redis: t.redis.client, jwtSecret: TEST_JWT_SECRET, loggerInstance: log, registry: new Registry(), jobs: down });
    // booted before the clock starts: the first inject would otherwise include the app's boot
    await downApp.ready();
    try {
      const started = Date.now();
      const err = await down.enqueue(acme, 'sleep', { ms: 1, steps: 1 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AppError);
      expect(err).toMatchObject({ statusCode: 503, code: 'JOBS_UNAVAILABLE' });
      expect(Date.now() - started).toBeLessThan(3_000);

      const res = await downApp.inject({ method: 'POST', url: '/v1/admin/maintenance/expire-api-keys', headers: await t.auth('platform_admin', null) });
      expect(res.statusCode).toBe(503);
      expect(res.json().error.code).toBe('JOBS_UNAVAILABLE');
      expect(res.headers['retry-after']).toBeTruthy();
      const get = await downApp.inject({ url: `/v1/jobs/noop-${randomUUID()}`, headers: await t.auth('reader', 'acme') });
      expect(get.statusCode).toBe(503);
      expect(Date.now() - started).toBeLessThan(3_000);
    } finally {
      await downApp.close();
      await down.close();
    }
  });

  it('revokes expired API keys in the expire-api-keys job, triggered by a platform_admin', async () => {
    const insert = async (name: string, expires: string) =>
      (
        await t.db.adminQuery<{ id: string }>(
          `INSERT INTO strata.api_keys (tenant_id, role, name, key_hash, created_by, expires_at)
           VALUES ('acme', 'reader', $1, $2, 'test', now() + $3::interval) RETURNING id`,
          [name, hashApiKey(`sk_${randomBytes(12).toString('hex')}`), expires],
        )
      ).rows[0]!.id;
    const expired = await insert('expired', '-1 hour');
    const valid = await insert('valid', '1 hour');

    const forbidden = await app.inject({ method: 'POST', url: '/v1/admin/maintenance/expire-api-keys', headers: await t.auth('admin', 'acme') });
    expect(forbidden.statusCode).toBe(403);

    const res = await app.inject({ method: 'POST', url: '/v1/admin/maintenance/expire-api-keys', headers: await t.auth('platform_admin', null) });
    expect(res.statusCode).toBe(202);
    const { job_id } = res.json();
    expect(job_id).toMatch(/^maintenance-/);
    const admin = await t.auth('platform_admin', null);
    const done = await waitFor(async () => {
      const v = (await app.inject({ url: `/v1/jobs/${job_id}`, headers: admin })).json().data as JobView;
      return ['completed', 'failed'].includes(v.state) ? v : undefined;
    });
    expect(done.state).toBe('completed');
    expect((done.result as { revoked: number }).revoked).toBeGreaterThanOrEqual(1);
    expect(done.progress).toMatchObject({ percent: 100 });
    const rows = await t.db.adminQuery<{ id: string; revoked_at: Date | null }>('SELECT id, revoked_at FROM strata.api_keys WHERE id = ANY($1)', [[expired, valid]]);
    expect(rows.rows.find((r) => r.id === expired)?.revoked_at).toBeInstanceOf(Date);
    expect(rows.rows.find((r) => r.id === valid)?.revoked_at).toBeNull();
    // A tenant never sees the platform's job.
    expect((await app.inject({ url: `/v1/jobs/${job_id}`, headers: await t.auth('admin', 'acme') })).statusCode).toBe(404);
  });

  it('registers the API-key sweep schedule idempotently', async () => {
    await registerSchedules(jobs, { API_KEY_SWEEP_CRON: '*/5 * * * *' }, log);
    await registerSchedules(jobs, { API_KEY_SWEEP_CRON: '*/10 * * * *' }, log);
    const schedulers = await jobs.queues.maintenance.getJobSchedulers();
    expect(schedulers).toHaveLength(1);
    expect(schedulers[0]).toMatchObject({ key: API_KEY_SWEEP_SCHEDULER, pattern: '*/10 * * * *' });
    await expect(registerSchedules(jobs, { API_KEY_SWEEP_CRON: 'not a cron' }, log)).rejects.toThrow(/API_KEY_SWEEP_CRON/);
    await jobs.queues.maintenance.removeJobScheduler(API_KEY_SWEEP_SCHEDULER);
  });

  it("re-runs a job on another worker when its worker dies mid-job", async () => {
    const prefix2 = `test-${randomUUID()}`;
    const jobs2 = createJobs({ redisUrl: REDIS_URL, prefix: prefix2, log });
    const fast = { lockDuration: 1_000, stalledInterval: 500 };
    const first = startWorkers({ redisUrl: REDIS_URL, prefix: prefix2, log, db: t.db, queues: ['noop'], workerOptions: fast });
    let second: WorkerRuntime | undefined;
    try {
      const { job_id } = await jobs2.enqueue(acme, 'sleep', { ms: 1_500, steps: 3 });
      await waitFor(async () => ((await jobs2.get(acme, job_id)).state === 'active' ? true : undefined));
      // A crash: the worker stops without finishing or releasing the job (its lock lapses).
      await Promise.all(first.workers.map((w) => w.close(true)));
      second = startWorkers({ redisUrl: REDIS_URL, prefix: prefix2, log, db: t.db, queues: ['noop'], workerOptions: fast });
      const done = await waitFor(async () => {
        const v = await jobs2.get(acme, job_id);
        return ['completed', 'failed'].includes(v.state) ? v : undefined;
      }, 15_000);
      expect(done.state).toBe('completed');
      expect(done.result).toEqual({ slept: 1_500 });
      const raw = await jobs2.queues.noop.getJob(job_id);
      expect(raw?.attemptsStarted).toBeGreaterThanOrEqual(2);
    } finally {
      await first.close({ timeoutMs: 2_000 });
      await second?.close({ timeoutMs: 2_000 });
      for (const q of Object.values(jobs2.queues)) await q.obliterate({ force: true });
      await deleteKeys(prefix2);
      await jobs2.close();
    }
  });

  it('serves bull-board at /admin/queues to platform admins only', async () => {
    const none = await app.inject({ url: '/admin/queues' });
    expect(none.statusCode).toBe(401);
    expect(none.json().error.code).toBe('AUTH_REQUIRED');
    const reader = await app.inject({ url: '/admin/queues', headers: await t.auth('admin', 'acme') });
    expect(reader.statusCode).toBe(403);
    const api = await app.inject({ url: '/admin/queues/api/queues', headers: await t.auth('admin', 'acme') });
    expect(api.statusCode).toBe(403);
    const admin = await t.auth('platform_admin', null);
    const page = await app.inject({ url: '/admin/queues', headers: admin });
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toMatch(/text\/html/);
    const queues = await app.inject({ url: '/admin/queues/api/queues', headers: admin });
    expect(queues.statusCode).toBe(200);
    expect(queues.json().queues.map((q: { name: string }) => q.name).sort()).toEqual([...QUEUE_NAMES].sort());
    // Not part of the public API description.
    const spec = await app.inject({ url: '/docs/json' });
    expect(Object.keys(spec.json().paths).some((p) => p.startsWith('/admin/queues'))).toBe(false);
  });
});
