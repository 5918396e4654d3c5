/**
 * Faults injected by the test on a Redis of its own (redis-server child on port 6500): hung
 * (SIGSTOP: the TCP connection stays open, nothing answers), resumed (SIGCONT), and restarted empty.
 * The app listens on a real port, so a client can give up mid-request.
 */
import type { ChildProcess } from 'node:child_process';
import http from 'node:http';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorkers, type WorkerRuntime } from '../src/jobs/runtime.js';
import { API_KEY_SWEEP_SCHEDULER, SWEEP_SCHEDULER, registerSchedules } from '../src/jobs/schedules.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { startRedis, stopRedis } from './helpers/redis-server.js';

const PORT = 6500;
const log = pino({ level: process.env['FAULTS_DEBUG'] ? 'debug' : 'silent' }, pino.destination(2));

async function until<T>(fn: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('faults: a hung, resumed and emptied Redis', () => {
  let t: TestApp;
  let redis: ChildProcess;
  let workers: WorkerRuntime;
  let base: string;
  let writer: Record<string, string>;
  let admin: Record<string, string>;
  const received: Array<{ id: string; name: string | undefined; at: number }> = [];
  let hook: http.Server;
  let hookUrl: string;

  beforeAll(async () => {
    redis = await startRedis(PORT);
    t = await createTestApp({
      seed: false,
      env: {
        REDIS_URL: `redis://127.0.0.1:${PORT}`,
        REDIS_COMMAND_TIMEOUT_MS: '500',
        READYZ_TIMEOUT_MS: '500',
        MAINTENANCE_CHECK_TIMEOUT_MS: '250',
        WEBHOOK_ALLOW_PRIVATE: 'true',
        CHANGES_POLL_MS: '50',
      },
    });
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    base = `http://127.0.0.1:${(t.app.server.address() as { port: number }).port}`;
    writer = await t.auth('writer', 'acme');
    admin = await t.auth('admin', 'acme');
    hook = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        const e = JSON.parse(body) as { id: string; after?: { name?: string } };
        received.push({ id: e.id, name: e.after?.name, at: Date.now() });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', () => r()));
    hookUrl = `http://127.0.0.1:${(hook.address() as { port: number }).port}/hook`;
    workers = startWorkers({
      redisUrl: `redis://127.0.0.1:${PORT}`,
      prefix: t.jobs.prefix,
      log,
      db: t.db,
      queues: ['noop', 'webhooks', 'maintenance'],
      onReconnect: () => registerSchedules(t.jobs, t.config, log),
    });
  });
  afterAll(async () => {
    if (redis.signalCode === null && redis.exitCode === null) redis.kill('SIGCONT');
    await workers?.close({ timeoutMs: 3000 });
    await t?.close();
    await stopRedis(redis);
    await new Promise((r) => hook.close(r));
  });

  const post = async (path: string, body: unknown, headers: Record<string, string>, signal?: AbortSignal) => {
    const started = performance.now();
    const res = await fetch(`${base}${path}`, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify(body), signal });
    return { status: res.status, json: (await res.json()) as Record<string, unknown>, ms: performance.now() - started };
  };
  const rowsNamed = async (name: string) => Number((await t.db.adminQuery<{ n: string }>('SELECT count(*) AS n FROM pipelines WHERE name = $1', [name])).rows[0]?.n);

  it('hung: writes answer within the bound, abandoned writes never commit, reads work, /readyz 503 in time; SIGCONT: all resumes', async () => {
    const w = await post('/v1/webhooks', { url: hookUrl, tables: ['pipelines'], ops: ['insert'] }, admin);
    expect(w.status).toBe(201);
    expect((await post('/v1/tables/pipelines/rows', { name: 'before-hang' }, writer)).status).toBe(201);
    await until(async () => (received.some((r) => r.name === 'before-hang') ? true : undefined));

    redis.kill('SIGSTOP');
    await new Promise((r) => setTimeout(r, 300)); // the cached maintenance flag is older than its cache time

    // REST writes and a GraphQL mutation answer, within the maintenance-check bound plus the write
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await post('/v1/tables/pipelines/rows', { name: `during-hang-${i}` }, writer);
      expect(r.status).toBe(201);
      times.push(r.ms);
      await new Promise((r) => setTimeout(r, 300));
    }
    const gql = await post('/graphql', { query: 'mutation { insert_pipelines_one(object: { name: "during-hang-gql" }) { id } }' }, writer);
    expect(gql.status).toBe(200);
    expect(gql.json['errors']).toBeUndefined();
    times.push(gql.ms);
    console.log(`[figures] write answer time under a hung Redis (ms): ${times.map((x) => x.toFixed(0)).join(', ')}`);
    expect(Math.max(...times)).toBeLessThan(3000); // unbounded (hung until SIGCONT) before

    // a client that gives up while its write waits: the write is dropped, not committed later
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 80);
    await expect(post('/v1/tables/pipelines/rows', { name: 'abandoned' }, writer, ac.signal)).rejects.toThrow();

    // reads keep working
    const read = await fetch(`${base}/v1/tables/pipelines/rows?limit=5`, { headers: writer });
    expect(read.status).toBe(200);

    // /readyz answers 503 within its bound
    const rs = performance.now();
    const ready = await fetch(`${base}/readyz`);
    const readyMs = performance.now() - rs;
    expect(ready.status).toBe(503);
    expect(((await ready.json()) as { checks: { redis: { ok: boolean } } }).checks.redis.ok).toBe(false);
    expect(readyMs).toBeLessThan(2000);
    console.log(`[figures] /readyz under a hung Redis: 503 in ${readyMs.toFixed(0)} ms`);

    // enqueueing fails fast with a coded 503
    const job = await post('/v1/admin/maintenance/expire-api-keys', {}, await t.auth('platform_admin', null));
    expect(job.status).toBe(503);
    expect((job.json['error'] as { code: string }).code).toBe('JOBS_UNAVAILABLE');

    await new Promise((r) => setTimeout(r, 1000));
    expect(await rowsNamed('abandoned')).toBe(0);
    // a running delivery loop needs no Redis (it delivered the events above); once it has ended, a
    // new event needs a job, so it waits for Redis
    await new Promise((r) => setTimeout(r, 2500));
    expect((await post('/v1/tables/pipelines/rows', { name: 'late-in-hang' }, writer)).status).toBe(201);
    await new Promise((r) => setTimeout(r, 300));

    // SIGCONT: readiness, jobs and webhook deliveries resume
    const resumed = Date.now();
    redis.kill('SIGCONT');
    await until(async () => ((await fetch(`${base}/readyz`)).status === 200 ? true : undefined));
    const readyAfter = Date.now() - resumed;
    const { job_id } = await t.jobs.enqueue({ tenantId: 'acme', actor: 'test', role: 'admin', requestId: 'r' } as never, 'sleep', { ms: 10, steps: 1 });
    await until(async () => ((await t.jobs.get({ tenantId: 'acme', actor: 'test', role: 'admin', requestId: 'r' } as never, job_id)).state === 'completed' ? true : undefined));
    const jobAfter = Date.now() - resumed;
    await until(async () => (['during-hang-0', 'during-hang-4', 'during-hang-gql', 'late-in-hang'].every((n) => received.some((r) => r.name === n)) ? true : undefined));
    const deliveryAfter = received.find((r) => r.name === 'late-in-hang')!.at - resumed;
    console.log(`[figures] after SIGCONT: /readyz 200 in ${readyAfter} ms, a new job completed in ${jobAfter} ms, an event written late in the hang delivered in ${deliveryAfter} ms`);
    expect(Math.max(readyAfter, jobAfter, deliveryAfter)).toBeLessThan(4000);
    expect(await rowsNamed('abandoned')).toBe(0);
  });

  it('restarted empty: the schedules are registered again within seconds', async () => {
    await registerSchedules(t.jobs, t.config, log);
    expect(await t.jobs.queues.maintenance.getJobScheduler(API_KEY_SWEEP_SCHEDULER)).toBeDefined();
    await stopRedis(redis);
    redis = await startRedis(PORT); // a new, empty Redis on the same address
    const back = Date.now();
    await until(async () => (await t.jobs.queues.maintenance.getJobScheduler(API_KEY_SWEEP_SCHEDULER)) ?? undefined, 20_000);
    await until(async () => (await t.jobs.queues.maintenance.getJobScheduler(SWEEP_SCHEDULER)) ?? undefined, 5_000);
    console.log(`[figures] schedules back ${Date.now() - back} ms after an empty Redis came up`);
  });
});
