import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';
import { startRedis, stopRedis } from './helpers/redis-server.js';
import { freePort } from './helpers/net.js';

async function eventually<T>(fn: () => Promise<T>, ok: (v: T) => boolean, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (ok(v) || Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('Redis down', () => {
  let t: TestApp;
  let port: number;
  let redis: ChildProcess;
  beforeAll(async () => {
    port = await freePort();
    redis = await startRedis(port);
    t = await createTestApp({ seed: true, env: { REDIS_URL: `redis://127.0.0.1:${port}` } });
  });
  afterAll(async () => {
    await t.close();
    await stopRedis(redis);
  });

  it('keeps serving reads and writes, reports not ready, answers enqueue with 503, and recovers', async () => {
    const writer = await t.auth('writer');
    const admin = await t.auth('platform_admin', null);
    expect((await t.app.inject({ url: '/readyz' })).statusCode).toBe(200);

    await stopRedis(redis);

    const read = await t.app.inject({ url: '/v1/tables/pipelines/rows?limit=5', headers: writer });
    expect(read.statusCode).toBe(200);
    const write = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: writer, payload: { name: 'written-while-redis-down' } });
    expect(write.statusCode).toBe(201);
    expect((await t.db.adminQuery("SELECT 1 FROM pipelines WHERE name = 'written-while-redis-down'")).rowCount).toBe(1);

    const ready = await t.app.inject({ url: '/readyz' });
    expect(ready.statusCode).toBe(503);
    expect(ready.json().checks.redis.ok).toBe(false);

    const started = Date.now();
    const enqueue = await t.app.inject({ method: 'POST', url: '/v1/admin/maintenance/expire-api-keys', headers: admin });
    expect(enqueue.statusCode).toBe(503);
    expect(enqueue.json().error.code).toBe('JOBS_UNAVAILABLE');
    expect(enqueue.headers['retry-after']).toBeDefined();
    expect(Date.now() - started).toBeLessThan(5000);

    redis = await startRedis(port);
    const back = await eventually(
      () => t.app.inject({ url: '/readyz' }),
      (r) => r.statusCode === 200,
    );
    expect(back.statusCode).toBe(200);
    const again = await eventually(
      () => t.app.inject({ method: 'POST', url: '/v1/admin/maintenance/expire-api-keys', headers: admin }),
      (r) => r.statusCode === 202,
    );
    expect(again.statusCode).toBe(202);
  });
});
