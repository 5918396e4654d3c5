/**
 * Fair shares per tenant, against the real PostgreSQL and Redis: per-tenant limits set through
 * PATCH /v1/admin/tenants/{id} (validated, platform_admin only), a tenant's burst of slow exports
 * capped with 429 while its neighbour's export still runs, the per-tenant connection cap, the
 * request rate limit held across two app instances sharing Redis (and failing open when Redis
 * hangs), and running jobs per tenant delayed, not failed, past the limit.
 */
import { randomUUID } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { build } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import type { RequestContext } from '../src/domain.js';
import { createJobs, type JobsService } from '../src/jobs/queues.js';
import { startWorkers, type WorkerRuntime } from '../src/jobs/runtime.js';
import { connectRedis, type RedisHandle } from '../src/redis.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { TEST_JWT_SECRET } from './helpers/constants.js';
import { REDIS_URL } from './helpers/databases.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';
import { startRedis, stopRedis } from './helpers/redis-server.js';

const log = pino({ level: 'silent' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function storedLimits(t: TestApp, id: string): Promise<unknown> {
  const { rows } = await t.db.adminQuery<{ limits: unknown; updated_at: Date }>('SELECT limits, updated_at FROM strata.tenants WHERE id = $1', [id]);
  return rows[0];
}

/** Wait until the start of a one-second rate window, so a short burst falls in one window. */
async function windowStart(): Promise<void> {
  const into = Date.now() % 1000;
  await sleep(1000 - into + 5);
}

describe('PATCH /v1/admin/tenants/{id} limits', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ env: { LIMIT_EXPORTS: '3' } });
  });
  afterAll(async () => t?.close());

  it('sets, shows and resets a tenant limit; the others keep the configured defaults', async () => {
    const admin = await t.auth('platform_admin', null);
    const res = await t.app.inject({ method: 'PATCH', url: '/v1/admin/tenants/acme', headers: admin, payload: { limits: { requests_per_second: 50, exports: 1 } } });
    expect(res.statusCode).toBe(200);
    const data = res.json().data;
    expect(data.limit_overrides).toEqual({ requests_per_second: 50, exports: 1 });
    expect(data.limits).toMatchObject({ requests_per_second: 50, exports: 1, jobs: t.config.LIMIT_JOBS, app_connections: 3, stream_connections: 2 });
    const other = (await t.app.inject({ url: '/v1/admin/tenants/globex', headers: admin })).json().data;
    expect(other.limit_overrides).toEqual({});
    expect(other.limits.exports).toBe(3);
    // the process that served the PATCH applies it at once
    expect((await t.app.limits.forTenant('acme')).exports).toBe(1);

    const reset = await t.app.inject({ method: 'PATCH', url: '/v1/admin/tenants/acme', headers: admin, payload: { limits: { exports: null } } });
    expect(reset.statusCode).toBe(200);
    expect(reset.json().data.limit_overrides).toEqual({ requests_per_second: 50 });
    expect(reset.json().data.limits.exports).toBe(3);
    expect(await storedLimits(t, 'acme')).toMatchObject({ limits: { requests_per_second: 50 } });
  });

  it.each([
    ['an unknown limit', { limits: { connections: 5 } }, 'connections'],
    ['zero', { limits: { exports: 0 } }, 'limits.exports'],
    ['a negative number', { limits: { jobs: -1 } }, 'limits.jobs'],
    ['a fraction', { limits: { requests_per_second: 1.5 } }, 'limits.requests_per_second'],
    ['a string', { limits: { app_connections: 'many' } }, 'limits.app_connections'],
    ['too large a number', { limits: { stream_connections: 1_000_001 } }, 'limits.stream_connections'],
    ['an empty object', { limits: {} }, 'limits'],
    ['an array', { limits: [1] }, 'limits'],
    ['a boolean', { limits: { jobs: false } }, 'limits.jobs'],
    ['null for the whole object', { limits: null }, 'limits'],
  ])('refuses %s with 400 VALIDATION_FAILED naming the field, and writes nothing', async (_what, payload, field) => {
    const before = await storedLimits(t, 'globex');
    const res = await t.app.inject({ method: 'PATCH', url: '/v1/admin/tenants/globex', headers: await t.auth('platform_admin', null), payload });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.code).toBe('VALIDATION_FAILED');
    expect(res.json().error.message).toContain(field);
    expect(await storedLimits(t, 'globex')).toEqual(before);
  });

  it.each(['admin', 'analyst', 'reader'] as const)('answers 403 ROLE_FORBIDDEN to a tenant %s changing its own limits, and writes nothing', async (role) => {
    const before = await storedLimits(t, 'globex');
    const res = await t.app.inject({ method: 'PATCH', url: '/v1/admin/tenants/globex', headers: await t.auth(role, 'globex'), payload: { limits: { requests_per_second: 1_000_000 } } });
    expect(res.statusCode).toBe(403);
    expect(res.json().error.code).toBe('ROLE_FORBIDDEN');
    expect(await storedLimits(t, 'globex')).toEqual(before);
  });

  it('answers 404 TENANT_NOT_FOUND for an unknown tenant', async () => {
    const res = await t.app.inject({ method: 'PATCH', url: '/v1/admin/tenants/nobody', headers: await t.auth('platform_admin', null), payload: { limits: { jobs: 3 } } });
    expect(res.statusCode).toBe(404);
    expect(res.json().error.code).toBe('TENANT_NOT_FOUND');
  });
});

describe('concurrency caps per tenant', () => {
  let t: TestApp;
  beforeAll(async () => {
    // the production pool sizes: 10 tenant-session connections, a streaming pool of 5
    t = await createTestApp({ env: { DB_POOL_MAX: '10', DB_ACQUIRE_TIMEOUT_MS: '1000', LIMIT_EXPORTS: '2' } });
  });
  afterEach(async () => expectNoCheckedOutClients(t.db));
  afterAll(async () => t?.close());

  it("caps one tenant's burst of slow exports with 429 while another tenant's export still answers 200", async () => {
    const a = await t.auth('analyst', 'acme');
    const b = await t.auth('analyst', 'globex');
    const slow = () => t.app.inject({ method: 'POST', url: '/v1/sql/export', headers: a, payload: { sql: 'select pg_sleep(2) as s' } });
    const burst = Array.from({ length: 6 }, slow);
    await sleep(300); // A's exports are running (holding their connections)
    const bRes = await t.app.inject({ method: 'POST', url: '/v1/sql/export', headers: b, payload: { sql: 'select 42 as answer' } });
    expect(bRes.statusCode).toBe(200);
    expect(bRes.body).toBe('answer\n42\n');
    const aRes = await Promise.all(burst);
    const statuses = aRes.map((r) => r.statusCode).sort();
    expect(statuses).toEqual([200, 200, 429, 429, 429, 429]);
    for (const r of aRes.filter((x) => x.statusCode === 429)) {
      expect(r.json().error.code).toBe('TENANT_CONCURRENCY_LIMIT');
      expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    }
    expect(t.app.limits.held('exports', 'acme')).toBe(0);
  });

  it('makes a tenant over its connection cap wait its turn, then 429, while another tenant is served', async () => {
    const admin = await t.auth('platform_admin', null);
    await t.app.inject({ method: 'PATCH', url: '/v1/admin/tenants/acme', headers: admin, payload: { limits: { app_connections: 1 } } });
    const a = await t.auth('analyst', 'acme');
    const b = await t.auth('analyst', 'globex');
    const q = (h: Record<string, string>, sql: string) => t.app.inject({ method: 'POST', url: '/v1/sql', headers: h, payload: { sql } });
    const first = q(a, 'select pg_sleep(1.6) as s');
    await sleep(100);
    const quick = q(a, 'select 1 as one'); // waits behind its own tenant's query past DB_ACQUIRE_TIMEOUT_MS
    const other = await q(b, 'select 2 as two');
    expect(other.statusCode).toBe(200);
    const [r1, r2] = await Promise.all([first, quick]);
    expect(r1.statusCode).toBe(200);
    expect(r2.statusCode).toBe(429);
    expect(r2.json().error.code).toBe('TENANT_CONCURRENCY_LIMIT');
    expect(r2.headers['retry-after']).toBe('1');
    // and one that waits less than the timeout gets its turn
    const again = q(a, 'select pg_sleep(0.3) as s');
    await sleep(50);
    const behind = await q(a, 'select 3 as three');
    expect(behind.statusCode).toBe(200);
    expect((await again).statusCode).toBe(200);
    await t.app.inject({ method: 'PATCH', url: '/v1/admin/tenants/acme', headers: admin, payload: { limits: { app_connections: null } } });
  });
});

describe('heavy tenants on a shared pool', () => {
  let t: TestApp;
  beforeAll(async () => {
    // app_connections 5 of 10; a tenant whose sessions average over 50 ms is heavy: 1 connection while others share the pool
    t = await createTestApp({ env: { DB_POOL_MAX: '10', DB_ACQUIRE_TIMEOUT_MS: '5000', LIMIT_HEAVY_MS: '50', LIMIT_HEAVY_CONNECTIONS: '1' } });
  });
  afterEach(async () => expectNoCheckedOutClients(t.db));
  afterAll(async () => t?.close());

  /** Run `work` while sampling how many app-pool connections `tenant` holds; answers the largest count seen. */
  async function maxHeld(tenant: string, work: () => Promise<unknown>): Promise<number> {
    const pool = t.db.shardFor(tenant).app.options.name;
    let max = 0;
    const timer = setInterval(() => (max = Math.max(max, t.app.limits.held(pool, tenant))), 5);
    try {
      await work();
    } finally {
      clearInterval(timer);
    }
    return max;
  }

  it('runs tenant queries without parallel workers (DB_TENANT_MAX_PARALLEL_WORKERS, default 0), so a connection cap is a CPU cap', async () => {
    const a = await t.auth('analyst', 'acme');
    const res = await t.app.inject({ method: 'POST', url: '/v1/sql', headers: a, payload: { sql: "select current_setting('max_parallel_workers_per_gather') as v" } });
    expect(res.statusCode).toBe(200);
    expect(res.json<{ data: Array<{ v: string }> }>().data[0]!.v).toBe('0');
  });

  it("keeps a slow tenant alone at its whole share, cuts it to LIMIT_HEAVY_CONNECTIONS once another tenant uses the pool, and serves both", async () => {
    const a = await t.auth('analyst', 'acme');
    const b = await t.auth('analyst', 'globex');
    const q = (h: Record<string, string>, sql: string) => t.app.inject({ method: 'POST', url: '/v1/sql', headers: h, payload: { sql } });
    const pool = t.db.shardFor('acme').app.options.name;
    const slowBurst = () => Promise.all(Array.from({ length: 3 }, () => q(a, 'select pg_sleep(0.3) as s')));

    // alone: three slow sessions at once, twice (the first burst makes its average long)
    for (const burst of [1, 2]) {
      let res: Awaited<ReturnType<typeof slowBurst>> = [];
      const seen = await maxHeld('acme', async () => (res = await slowBurst()));
      expect(res.map((r) => r.statusCode)).toEqual([200, 200, 200]);
      expect(seen, `burst ${burst} alone`).toBe(3);
    }
    expect(t.app.limits.averageMs(pool, 'acme')).toBeGreaterThan(50);

    // shared: globex reads while acme bursts again; acme now runs one session at a time, all answered
    let quick: number[] = [];
    const seen = await maxHeld('acme', async () => {
      expect((await q(b, 'select 1 as one')).statusCode).toBe(200);
      const burst = slowBurst();
      const reads: number[] = [];
      for (let i = 0; i < 5; i++) {
        reads.push((await q(b, 'select 2 as two')).statusCode);
        await sleep(60);
      }
      quick = reads;
      expect((await burst).map((r) => r.statusCode)).toEqual([200, 200, 200]);
    });
    expect(seen).toBe(1);
    expect(quick).toEqual([200, 200, 200, 200, 200]);
    expect(t.app.limits.averageMs(pool, 'globex')).toBeLessThan(50);
    expect(t.app.limits.held(pool, 'acme')).toBe(0);
  });
});

describe('request rate per tenant across API processes', () => {
  let t: TestApp;
  let second: FastifyInstance;
  const prefix = `test-rl-${randomUUID()}`;
  beforeAll(async () => {
    const env = { RATE_LIMIT_PREFIX: prefix, RATE_LIMIT_SYNC_MS: '10' };
    t = await createTestApp({ env });
    // a second API instance on the same database and Redis: its own counters, caches and gates
    second = await build({ config: t.config, db: t.db, redis: t.redis.client, jwtSecret: TEST_JWT_SECRET, loggerInstance: log, registry: new Registry(), jobs: t.jobs });
    await second.ready();
    await t.db.adminQuery(`UPDATE strata.tenants SET limits = '{"requests_per_second": 10}' WHERE id = 'acme'`);
  });
  afterAll(async () => {
    await second?.close();
    await t?.close();
  });

  it('holds one limit for a tenant over two instances, answering 429 RATE_LIMITED with Retry-After; other tenants are not counted', async () => {
    const a = await t.auth('reader', 'acme');
    const b = await t.auth('reader', 'globex');
    const get = (app: FastifyInstance, h: Record<string, string>) => app.inject({ url: '/v1/tables/pipelines/rows?limit=1', headers: h });
    // load the limits in both instances first (the first request of a tenant reads them)
    await get(t.app, b);
    await get(second, b);
    await windowStart();
    const one: number[] = [];
    for (let i = 0; i < 7; i++) one.push((await get(t.app, a)).statusCode);
    await sleep(40); // > RATE_LIMIT_SYNC_MS: instance one has added its counts to Redis
    const two = [await get(second, a)];
    await sleep(40); // instance two has sent its first count and read the total of both
    for (let i = 0; i < 6; i++) two.push(await get(second, a));
    const neighbour = await get(second, b);
    expect(one).toEqual([200, 200, 200, 200, 200, 200, 200]);
    expect(two.map((r) => r.statusCode)).toEqual([200, 200, 200, 429, 429, 429, 429]);
    const limited = two[3]!;
    expect(limited.json().error.code).toBe('RATE_LIMITED');
    expect(limited.json().error.details).toMatchObject({ limit: 10 });
    expect(limited.headers['retry-after']).toBe('1');
    expect(limited.headers['x-ratelimit-limit']).toBe('10');
    expect(neighbour.statusCode).toBe(200);
    // the next window starts afresh
    await windowStart();
    expect((await get(second, a)).statusCode).toBe(200);
  });

  it('does not count a tenantless platform_admin or unauthenticated health checks', async () => {
    const admin = await t.auth('platform_admin', null);
    await windowStart();
    for (let i = 0; i < 15; i++) expect((await t.app.inject({ url: '/v1/admin/tenants', headers: admin })).statusCode).toBe(200);
    for (let i = 0; i < 15; i++) expect((await t.app.inject({ url: '/healthz' })).statusCode).toBe(200);
  });
});

describe('rate limit while Redis hangs', () => {
  let redisChild: ChildProcess;
  let t: TestApp;
  let app: FastifyInstance;
  let redis: RedisHandle;
  beforeAll(async () => {
    redisChild = await startRedis(6491);
    t = await createTestApp();
    const config = loadConfig({ ...pick(t.config), REDIS_URL: 'redis://127.0.0.1:6491', RATE_LIMIT_REDIS_TIMEOUT_MS: '50', CACHE_ENABLED: 'false' });
    redis = await connectRedis(config.REDIS_URL, log);
    app = await build({ config, db: t.db, redis: redis.client, jwtSecret: TEST_JWT_SECRET, loggerInstance: log, registry: new Registry(), jobs: t.jobs });
    await app.ready();
    await t.db.adminQuery(`UPDATE strata.tenants SET limits = '{"requests_per_second": 5}' WHERE id = 'acme'`);
  });
  afterAll(async () => {
    if (redisChild?.pid) process.kill(redisChild.pid, 'SIGCONT');
    await app?.close();
    redis?.client.disconnect();
    if (redisChild) await stopRedis(redisChild);
    await t?.close();
  });

  it('fails open on local counts: requests are answered, and the limit still holds per process', async () => {
    const a = await t.auth('reader', 'acme');
    await app.inject({ url: '/v1/tables/pipelines/rows?limit=1', headers: await t.auth('reader', 'globex') });
    process.kill(redisChild.pid!, 'SIGSTOP'); // Redis accepts nothing and answers nothing
    await windowStart();
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) statuses.push((await app.inject({ url: '/v1/tables/pipelines/rows?limit=1', headers: a })).statusCode);
    process.kill(redisChild.pid!, 'SIGCONT');
    expect(statuses).toEqual([200, 200, 200, 200, 200, 429, 429, 429]);
  });
});

describe('running jobs per tenant', () => {
  const prefix = `test-${randomUUID()}`;
  let t: TestApp;
  let jobs: JobsService;
  let workers: WorkerRuntime;
  const acme: RequestContext = { requestId: 'req-limits', tenantId: 'acme', actor: 'user@acme', role: 'writer' };
  beforeAll(async () => {
    t = await createTestApp({ env: { LIMIT_JOBS: '1' } });
    jobs = createJobs({ redisUrl: REDIS_URL, prefix, log });
    workers = startWorkers({ redisUrl: REDIS_URL, prefix, log, db: t.db, concurrency: 4, queues: ['noop'] });
  });
  afterAll(async () => {
    await workers?.close({ timeoutMs: 5_000 });
    if (jobs) {
      for (const q of Object.values(jobs.queues)) await q.obliterate({ force: true });
      await jobs.close();
    }
    await t?.close();
  });

  it("delays a tenant's job past its limit instead of failing it; every job completes, one at a time", async () => {
    const ids = await Promise.all([1, 2, 3].map(() => jobs.enqueue(acme, 'sleep', { ms: 300, steps: 1 })));
    const queue = jobs.queues.noop;
    const deadline = Date.now() + 20_000;
    let done: Array<{ processedOn?: number; finishedOn?: number; failedReason?: string }> = [];
    while (Date.now() < deadline) {
      done = await Promise.all(ids.map(async ({ job_id }) => (await queue.getJob(job_id))!));
      if (done.every((j) => j.finishedOn)) break;
      await sleep(100);
    }
    const states = await Promise.all(ids.map(({ job_id }) => queue.getJobState(job_id)));
    expect(states).toEqual(['completed', 'completed', 'completed']);
    expect(done.map((j) => j.failedReason ?? null)).toEqual([null, null, null]);
    // never two of acme's jobs at once: each started after the previous finished
    const spans = done.map((j) => [j.processedOn!, j.finishedOn!] as const).sort((x, y) => x[0] - y[0]);
    for (let i = 1; i < spans.length; i++) expect(spans[i]![0]).toBeGreaterThanOrEqual(spans[i - 1]![1] - 5);
  });
});

/** The test app's environment as strings (to build a config that differs in one setting). */
function pick(config: object): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of ['DATABASE_URL', 'APP_DATABASE_URL', 'JWT_SECRET', 'LOG_LEVEL', 'DB_POOL_MAX', 'DB_POOL_MIN', 'DB_HEALTHCHECK_INTERVAL_MS', 'NODE_ENV', 'RATE_LIMIT_PREFIX']) {
    const v = (config as Record<string, unknown>)[k];
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') out[k] = String(v);
  }
  return out;
}
