/**
 * Webhooks end to end: real BullMQ workers (queue `webhooks`, unique prefix), real local HTTP
 * receivers, the real PostgreSQL change log. Retries until success, per-row order, signatures,
 * dead-lettering and replay, a worker process killed mid-delivery, SSRF checks, tenant isolation and
 * bad input.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import http from 'node:http';
import { QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { startWorkers, type WorkerRuntime } from '../src/jobs/runtime.js';
import { createJobs, type JobsService } from '../src/jobs/queues.js';
import { checkWebhookUrl, guardedLookup, isPrivateAddress } from '../src/services/changes/index.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { TEST_APP_PASSWORD, TEST_APP_ROLE, TEST_JWT_SECRET } from './helpers/constants.js';
import { REDIS_URL } from './helpers/databases.js';

type Json = Record<string, unknown>;
interface Received {
  headers: http.IncomingHttpHeaders;
  body: string;
  event: { id: string; table: string; op: string; pk: Json; tenant_id: string; after: Json | null; webhook_id: string };
}

const ENV = {
  WEBHOOK_ALLOW_PRIVATE: 'true',
  WEBHOOK_BACKOFF_BASE_MS: '20',
  WEBHOOK_BACKOFF_MAX_MS: '200',
  WEBHOOK_MAX_ATTEMPTS: '4',
  WEBHOOK_LEASE_MS: '2000',
  WEBHOOK_TIMEOUT_MS: '20000',
  CHANGES_POLL_MS: '100',
  WEBHOOK_BREAKER_COOLDOWN_MS: '200',
};
const log = pino({ level: 'silent' });

/**
 * A local receiver on a free port (chosen at listen: parallel runs on one machine do not collide):
 * `fail(n)` answers 500 to the next n requests.
 */
function receiver() {
  const got: Received[] = [];
  let failures = 0;
  let hang = false;
  const hung: http.ServerResponse[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (body += c));
    req.on('end', () => {
      const entry = { headers: req.headers, body, event: JSON.parse(body) as Received['event'] };
      if (hang) {
        got.push(entry);
        hung.push(res);
        return;
      }
      if (failures > 0) {
        failures--;
        res.writeHead(500).end('nope');
        return;
      }
      got.push(entry);
      res.writeHead(204).end();
    });
  });
  return {
    got,
    get url() {
      return `http://127.0.0.1:${(server.address() as { port: number }).port}/hook`;
    },
    fail(n: number) {
      failures = n;
    },
    hang(on: boolean) {
      hang = on;
    },
    listen: () => new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r())),
    close: () =>
      new Promise<void>((r) => {
        for (const res of hung) res.destroy();
        server.closeAllConnections();
        server.close(() => r());
      }),
    /** Delivered event ids, de-duplicated, in first-arrival order. */
    ids: () => [...new Set(got.map((g) => g.event.id))],
  };
}

describe('webhooks', () => {
  const prefix = `test-${randomUUID()}`;
  let t: TestApp;
  let jobs: JobsService;
  let workers: WorkerRuntime | undefined;
  let admin: Record<string, string>;
  let writer: Record<string, string>;
  let globexAdmin: Record<string, string>;
  const rx = receiver();
  const rxGlobex = receiver();

  beforeAll(async () => {
    jobs = createJobs({ redisUrl: REDIS_URL, prefix, log });
    t = await createTestApp({ jobs, env: ENV });
    admin = await t.auth('admin', 'acme');
    writer = await t.auth('writer', 'acme');
    globexAdmin = await t.auth('admin', 'globex');
    await rx.listen();
    await rxGlobex.listen();
    workers = startWorkers({ redisUrl: REDIS_URL, prefix, log, db: t.db, queues: ['webhooks'], workerOptions: { stalledInterval: 500, lockDuration: 1000 } });
  });
  afterAll(async () => {
    await workers?.close({ timeoutMs: 5000 });
    await rx.close();
    await rxGlobex.close();
    await t.close();
    await Promise.all(Object.values(jobs.queues).map((q) => q.obliterate({ force: true }).catch(() => undefined)));
    await jobs.close();
    const r = new Redis(REDIS_URL);
    const keys = await r.keys(`${prefix}:*`);
    if (keys.length) await r.del(...keys);
    await r.quit();
  });

  const call = async (method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, headers: Record<string, string>, payload?: unknown) => {
    const res = await t.app.inject({ method, url, headers, payload: payload as never });
    return { status: res.statusCode, body: res.body ? res.json<Json>() : {} };
  };
  const code = (r: { body: Json }) => (r.body['error'] as Json | undefined)?.['code'];
  const webhookCount = async () => Number((await t.db.adminQuery<{ n: string }>('SELECT count(*) AS n FROM strata.webhooks')).rows[0]?.n);
  const create = async (body: Json, headers = admin) => {
    const r = await call('POST', '/v1/webhooks', headers, body);
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return r.body['data'] as Json & { id: string; secret: string };
  };
  const insert = async (name: string, headers = writer) => {
    const r = await call('POST', '/v1/tables/pipelines/rows', headers, { name });
    expect(r.status).toBe(201);
    return String((r.body['data'] as Json)['id']);
  };
  const patch = async (id: string, body: Json) => expect((await call('PATCH', `/v1/tables/pipelines/rows/${id}`, writer, body)).status).toBe(200);
  const deliveries = async (id: string) => ((await call('GET', `/v1/webhooks/${id}/deliveries?limit=1000`, admin)).body['data'] as Json[]) ?? [];

  afterEach(async () => {
    // one webhook at a time: the next test starts with none active
    await t.db.adminQuery('UPDATE strata.webhooks SET active = false');
    rx.fail(0);
    rx.hang(false);
  });

  it('creates a webhook (secret shown once), reads, changes and deletes it', async () => {
    const w = await create({ url: rx.url, tables: ['pipelines'], ops: ['insert', 'update'] });
    expect(w.secret).toMatch(/^whsec_/);
    expect(w).toMatchObject({ url: rx.url, tables: ['pipelines'], ops: ['insert', 'update'], active: true });
    const got = await call('GET', `/v1/webhooks/${w.id}`, admin);
    expect(got.status).toBe(200);
    expect(got.body['data']).not.toHaveProperty('secret');
    expect(((await call('GET', '/v1/webhooks', admin)).body['data'] as Json[]).map((x) => x['id'])).toContain(w.id);
    const p = await call('PATCH', `/v1/webhooks/${w.id}`, admin, { ops: ['delete'], active: false });
    expect(p.status).toBe(200);
    expect(p.body['data']).toMatchObject({ ops: ['delete'], active: false });
    expect((await call('DELETE', `/v1/webhooks/${w.id}`, admin)).status).toBe(200);
    expect((await call('GET', `/v1/webhooks/${w.id}`, admin)).status).toBe(404);
  });

  it('delivers every event, signed, in order per row, to a receiver that fails 3 times first', async () => {
    const w = await create({ url: rx.url, tables: ['pipelines'] });
    rx.fail(3);
    const start = rx.got.length;
    const a = await insert('wh-a');
    const b = await insert('wh-b');
    await patch(a, { description: 'a1' });
    await patch(b, { description: 'b1' });
    await patch(a, { description: 'a2' });
    await call('DELETE', `/v1/tables/pipelines/rows/${b}`, writer);
    await vi.waitFor(() => expect(new Set(rx.got.slice(start).map((g) => g.event.id)).size).toBe(6), { timeout: 15_000, interval: 50 });
    const mine = rx.got.slice(start);
    const unique = [...new Map(mine.map((g) => [g.event.id, g])).values()];
    // per row, the ops arrive in commit order (lanes by row; rows go in parallel)
    const rowA = unique.filter((g) => String(g.event.pk['id']) === a);
    expect(rowA.map((g) => [g.event.op, g.event.after?.['description'] ?? null])).toEqual([
      ['insert', null],
      ['update', 'a1'],
      ['update', 'a2'],
    ]);
    expect(unique.filter((g) => String(g.event.pk['id']) === b).map((g) => g.event.op)).toEqual(['insert', 'update', 'delete']);
    // every request is signed: sha256=HMAC(secret, "<timestamp>.<body>"), with the event id header
    for (const g of mine) {
      const ts = g.headers['x-strata-timestamp'] as string;
      const expected = `sha256=${createHmac('sha256', w.secret).update(`${ts}.${g.body}`).digest('hex')}`;
      expect(g.headers['x-strata-signature']).toBe(expected);
      expect(g.headers['x-strata-event-id']).toBe(g.event.id);
      expect(g.event.webhook_id).toBe(w.id);
      expect(Math.abs(Number(ts) - Date.now() / 1000)).toBeLessThan(600);
    }
    // a wrong secret does not verify
    const g0 = mine[0]!;
    expect(`sha256=${createHmac('sha256', 'whsec_wrong').update(`${g0.headers['x-strata-timestamp'] as string}.${g0.body}`).digest('hex')}`).not.toBe(g0.headers['x-strata-signature']);
    // the attempts are visible: 3 failures, 6 successes, each success after its event's failures
    const d = await vi.waitFor(async () => {
      const all = await deliveries(w.id);
      expect(all.filter((x) => x['status'] === 'succeeded').length).toBe(6);
      return all;
    });
    expect(d.filter((x) => x['status'] === 'failed').length).toBe(3);
    expect(d.find((x) => x['status'] === 'failed')).toMatchObject({ http_status: 500, attempt: 1, replay: false });
    for (const ok of d.filter((x) => x['status'] === 'succeeded')) {
      const failedBefore = d.filter((x) => x['change_id'] === ok['change_id'] && x['status'] === 'failed').length;
      expect(ok['attempt']).toBe(failedBefore + 1);
    }
    await vi.waitFor(async () => {
      const state = (await call('GET', `/v1/webhooks/${w.id}`, admin)).body['data'] as Json;
      expect(state['cursor']).toBe(unique.map((g) => BigInt(g.event.id)).reduce((a, b) => (a > b ? a : b)).toString());
    });
  });

  it('dead-letters an event after the attempt budget, moves on, and re-delivers it on replay', async () => {
    // ordering 'webhook': one lane, so the second event waits for the first to be dead-lettered
    const w = await create({ url: rx.url, tables: ['pipelines'], ops: ['insert'], ordering: 'webhook' });
    expect(w['ordering']).toBe('webhook');
    rx.fail(4); // WEBHOOK_MAX_ATTEMPTS = 4: the first event is dead-lettered
    const start = rx.got.length;
    await insert('wh-dead');
    await insert('wh-next');
    await vi.waitFor(() => expect(rx.got.slice(start).map((g) => g.event.after?.['name'])).toEqual(['wh-next']), { timeout: 15_000, interval: 50 });
    // a success is recorded with its batch's cursor move, a moment after the receiver has it
    const d = await vi.waitFor(
      async () => {
        const all = await deliveries(w.id);
        expect(all.map((x) => x['status'])).toEqual(['failed', 'failed', 'failed', 'dead', 'succeeded']);
        return all;
      },
      { timeout: 5_000, interval: 50 },
    );
    const deadId = d[3]!['change_id'] as string;
    const r = await call('POST', `/v1/webhooks/${w.id}/replay`, admin, { after: String(BigInt(deadId) - 1n), until: deadId });
    expect(r.status).toBe(202);
    await vi.waitFor(() => expect(rx.got.slice(start).map((g) => g.event.after?.['name'])).toEqual(['wh-next', 'wh-dead']), { timeout: 15_000, interval: 50 });
    expect(rx.got.at(-1)?.headers['x-strata-replay']).toBe('true');
    const job = await vi.waitFor(
      async () => {
        const j = await call('GET', `/v1/jobs/${r.body['job_id'] as string}`, admin);
        expect((j.body['data'] as Json)['state']).toBe('completed');
        return j.body['data'] as Json;
      },
      { timeout: 10_000, interval: 50 },
    );
    expect(job['result']).toEqual({ delivered: 1, dead: 0 });
    expect((await deliveries(w.id)).at(-1)).toMatchObject({ status: 'succeeded', replay: true, change_id: deadId });
  });

  it('a replay waits out its retries as a delayed job, not in a worker slot, and keeps its attempt count', async () => {
    const w = await create({ url: rx.url, tables: ['pipelines'], ops: ['insert'] });
    const start = rx.got.length;
    const id = await insert('wh-replay');
    await vi.waitFor(() => expect(rx.got.slice(start).map((g) => g.event.after?.['name'])).toContain('wh-replay'), { timeout: 15_000, interval: 50 });
    const changeId = rx.got.slice(start).find((g) => g.event.after?.['name'] === 'wh-replay')!.event.id;
    // the delivery loop is idle (no new events); the next 3 requests (the replay's) answer 500
    await t.db.adminQuery('UPDATE strata.webhooks SET active = false WHERE id = $1', [w.id]);
    rx.fail(3);
    const events = new QueueEvents('webhooks', { connection: { url: REDIS_URL }, prefix });
    const delayed: string[] = [];
    events.on('delayed', ({ jobId }) => delayed.push(jobId));
    await events.waitUntilReady();
    try {
      const r = await call('POST', `/v1/webhooks/${w.id}/replay`, admin, { after: String(BigInt(changeId) - 1n), until: changeId });
      expect(r.status).toBe(202);
      const jobId = r.body['job_id'] as string;
      const job = await vi.waitFor(
        async () => {
          const j = (await call('GET', `/v1/jobs/${jobId}`, admin)).body['data'] as Json;
          expect(j['state']).toBe('completed');
          return j;
        },
        { timeout: 15_000, interval: 50 },
      );
      expect(job['result']).toEqual({ delivered: 1, dead: 0 });
      // each failed attempt sent the job back to delayed (the worker slot was free during the
      // backoff) and a later run went on from the saved progress: 4 runs, one per attempt
      expect(delayed.filter((x) => x === jobId).length).toBe(3);
      const raw = await jobs.queues.webhooks.getJob(jobId);
      expect(raw?.attemptsStarted).toBe(4);
      expect((raw?.data as { resume?: Json }).resume).toMatchObject({ cursor: String(BigInt(changeId) - 1n), attempts: 3, total: 1 });
      const mine = (await deliveries(w.id)).filter((d) => d['replay'] === true);
      expect(mine.map((d) => [d['status'], d['attempt']])).toEqual([
        ['failed', 1],
        ['failed', 2],
        ['failed', 3],
        ['succeeded', 4],
      ]);
      expect(mine.every((d) => d['change_id'] === changeId)).toBe(true);
      expect(id).toBeTruthy();
    } finally {
      await events.close();
    }
  });

  it('a replay that keeps meeting failures can be cancelled: it ends cancelled and sends nothing more', async () => {
    const w = await create({ url: rx.url, tables: ['pipelines'], ops: ['insert'] });
    const start = rx.got.length;
    for (let i = 0; i < 30; i++) await insert(`wh-cancel-${i}`);
    await vi.waitFor(() => expect(rx.got.slice(start).map((g) => g.event.after?.['name'])).toContain('wh-cancel-29'), { timeout: 15_000, interval: 50 });
    const ids = rx.got.slice(start).map((g) => BigInt(g.event.id));
    const [first, last] = [ids.reduce((x, y) => (x < y ? x : y)), ids.reduce((x, y) => (x > y ? x : y))];
    await t.db.adminQuery('UPDATE strata.webhooks SET active = false WHERE id = $1', [w.id]);
    rx.fail(1_000_000); // the endpoint keeps failing: 30 events x 4 attempts, each failure a delayed step
    const r = await call('POST', `/v1/webhooks/${w.id}/replay`, admin, { after: String(first - 1n), until: String(last) });
    expect(r.status).toBe(202);
    const jobId = r.body['job_id'] as string;
    const replayed = async () => (await deliveries(w.id)).filter((d) => d['replay'] === true).length;
    await vi.waitFor(async () => expect(await replayed()).toBeGreaterThanOrEqual(6), { timeout: 10_000, interval: 50 });
    expect((await call('DELETE', `/v1/jobs/${jobId}`, admin)).status).toBe(202);
    await vi.waitFor(
      async () => expect(((await call('GET', `/v1/jobs/${jobId}`, admin)).body['data'] as Json)['state']).toBe('cancelled'),
      { timeout: 10_000, interval: 50 },
    );
    const sent = await replayed();
    // longer than the largest backoff (WEBHOOK_BACKOFF_MAX_MS 200): a run still scheduled would have sent
    await new Promise((res) => setTimeout(res, 1_000));
    expect(await replayed()).toBe(sent);
    expect(sent).toBeLessThan(120);
  });

  it('delivers after a worker process is killed mid-delivery', async () => {
    // Only the child process serves the queue until it is killed.
    await workers?.close({ timeoutMs: 5000 });
    workers = undefined;
    const u = new URL(t.database.url);
    u.username = TEST_APP_ROLE;
    u.password = TEST_APP_PASSWORD;
    const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/webhook-worker.ts'], {
      env: { ...process.env, ...ENV, DATABASE_URL: t.database.url, APP_DATABASE_URL: u.toString(), JWT_SECRET: TEST_JWT_SECRET, REDIS_URL, TEST_JOBS_PREFIX: prefix, LOG_LEVEL: 'silent', NODE_ENV: 'test' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let webhookId = '';
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout?.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
        child.on('exit', (c) => reject(new Error(`worker exited ${c}`)));
      });
      webhookId = (await create({ url: rx.url, tables: ['pipelines'], ops: ['insert'] })).id;
      rx.hang(true);
      const start = rx.got.length;
      await insert('wh-killed');
      // the child has the request in flight (the receiver holds it): kill it there
      await vi.waitFor(() => expect(rx.got.length).toBe(start + 1), { timeout: 15_000, interval: 50 });
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    rx.hang(false);
    const start = rx.got.length;
    workers = startWorkers({ redisUrl: REDIS_URL, prefix, log, db: t.db, queues: ['webhooks'], workerOptions: { stalledInterval: 500, lockDuration: 1000 } });
    // the lease lapses, the stalled job (or the dispatcher) runs the loop again, and the event arrives
    await vi.waitFor(() => expect(rx.got.slice(start).map((g) => g.event.after?.['name'])).toEqual(['wh-killed']), { timeout: 20_000, interval: 100 });
    const id = rx.got.at(-1)!.event.id;
    expect(rx.got.filter((g) => g.event.id === id).length).toBe(2); // at-least-once: the killed attempt, then the real one
    await vi.waitFor(async () => expect((await deliveries(webhookId)).map((d) => d['status'])).toEqual(['succeeded']), { timeout: 5_000, interval: 50 });
  });

  it("never delivers one tenant's events to another's webhook, nor lets a tenant touch another's webhook", async () => {
    const gw = await create({ url: rxGlobex.url, tables: ['pipelines'] }, globexAdmin);
    const aw = await create({ url: rx.url, tables: ['pipelines'] });
    const start = rx.got.length;
    await insert('iso-acme');
    await insert('iso-globex', await t.auth('writer', 'globex'));
    await vi.waitFor(() => expect(rxGlobex.got.map((g) => g.event.after?.['name'])).toContain('iso-globex'), { timeout: 15_000, interval: 50 });
    await vi.waitFor(() => expect(rx.got.slice(start).map((g) => g.event.after?.['name'])).toContain('iso-acme'), { timeout: 15_000, interval: 50 });
    expect(rxGlobex.got.every((g) => g.event.tenant_id === 'globex')).toBe(true);
    expect(rx.got.every((g) => g.event.tenant_id === 'acme')).toBe(true);
    // acme's admin cannot see, change, delete, list deliveries of or replay globex's webhook
    const settings = 'SELECT url, tables, ops, active, secret, updated_at FROM strata.webhooks WHERE id = $1';
    const before = await t.db.adminQuery(settings, [gw.id]);
    for (const [method, url, body] of [
      ['GET', `/v1/webhooks/${gw.id}`, undefined],
      ['PATCH', `/v1/webhooks/${gw.id}`, { url: rx.url }],
      ['DELETE', `/v1/webhooks/${gw.id}`, undefined],
      ['GET', `/v1/webhooks/${gw.id}/deliveries`, undefined],
      ['POST', `/v1/webhooks/${gw.id}/replay`, { after: '0' }],
    ] as const) {
      const r = await call(method, url, admin, body);
      expect(r.status, `${method} ${url}`).toBe(404);
      expect(code(r)).toBe('WEBHOOK_NOT_FOUND');
    }
    expect(((await call('GET', '/v1/webhooks', admin)).body['data'] as Json[]).map((x) => x['id'])).not.toContain(gw.id);
    expect((await t.db.adminQuery(settings, [gw.id])).rows).toEqual(before.rows);
    expect(aw.id).not.toBe(gw.id);
  });

  it('rejects bad input with 4xx codes and writes nothing', async () => {
    const n = await webhookCount();
    for (const [body, status, c, headers] of [
      [{ url: 'ftp://example.com/x' }, 400, 'BAD_WEBHOOK_URL', admin],
      [{ url: 'not a url' }, 400, 'BAD_WEBHOOK_URL', admin],
      [{ url: 'http://user:pw@example.com/' }, 400, 'BAD_WEBHOOK_URL', admin],
      [{ url: 'http://no-such-host.invalid/' }, 400, 'BAD_WEBHOOK_URL', admin],
      [{ url: rx.url, tables: ['nope'] }, 400, 'UNKNOWN_TABLE', admin],
      [{ url: rx.url, ops: ['upsert'] }, 400, 'VALIDATION_FAILED', admin],
      [{ url: rx.url, ops: [] }, 400, 'VALIDATION_FAILED', admin],
      [{ url: rx.url, extra: 1 }, 400, 'VALIDATION_FAILED', admin],
      [{ url: rx.url, ordering: 'random' }, 400, 'VALIDATION_FAILED', admin],
      [{ url: rx.url }, 403, 'ROLE_FORBIDDEN', await t.auth('reader', 'acme')],
      [{ url: rx.url }, 403, 'ROLE_FORBIDDEN', writer],
    ] as const) {
      const r = await call('POST', '/v1/webhooks', headers, body);
      expect(r.status, JSON.stringify(body)).toBe(status);
      expect(code(r), JSON.stringify(body)).toBe(c);
    }
    const w = await create({ url: rx.url });
    const m = await webhookCount();
    for (const [method, url, body, c] of [
      ['PATCH', `/v1/webhooks/${w.id}`, { url: 'gopher://x' }, 'BAD_WEBHOOK_URL'],
      ['PATCH', `/v1/webhooks/${w.id}`, { tables: ['nope'] }, 'UNKNOWN_TABLE'],
      ['POST', `/v1/webhooks/${w.id}/replay`, { after: 'x' }, 'BAD_CURSOR'],
      ['POST', `/v1/webhooks/${w.id}/replay`, { after: '10', until: '5' }, 'BAD_RANGE'],
      ['GET', `/v1/webhooks/${w.id}/deliveries?after=-3`, undefined, 'BAD_CURSOR'],
    ] as const) {
      const r = await call(method, url, admin, body);
      expect(r.status, url).toBe(400);
      expect(code(r), url).toBe(c);
    }
    expect((await call('GET', `/v1/webhooks/${w.id}`, admin)).body['data']).toMatchObject({ url: rx.url, tables: [] });
    expect((await call('GET', '/v1/webhooks/not-a-uuid', admin)).status).toBe(404);
    expect(await webhookCount()).toBe(m);
    expect(m).toBe(n + 1);
  });

  it('refuses private, loopback and link-local webhook URLs unless allowed', async () => {
    expect(['127.0.0.1', '10.1.2.3', '192.168.0.9', '169.254.169.254', '::1', 'fe80::1', '::ffff:127.0.0.1', 'fd00::1', '0.0.0.0'].every(isPrivateAddress)).toBe(true);
    expect(['93.184.216.34', '2606:4700:4700::1111', '8.8.8.8'].some(isPrivateAddress)).toBe(false);
    await expect(checkWebhookUrl('http://localhost:3222/x', false)).rejects.toMatchObject({ code: 'PRIVATE_WEBHOOK_URL' });
    await expect(checkWebhookUrl('http://[::1]/x', false)).rejects.toMatchObject({ code: 'PRIVATE_WEBHOOK_URL' });
    await expect(checkWebhookUrl('http://localhost:3222/x', true)).resolves.toBeInstanceOf(URL);
    // at delivery, the socket's own lookup refuses a host that resolves to a private address (DNS rebinding)
    const refused = await new Promise<string>((resolve) => {
      const req = http.request('http://localhost:3222/hook', { method: 'POST', lookup: guardedLookup(false) }, () => resolve('connected'));
      req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      req.end('{}');
    });
    expect(refused).toBe('EPRIVATEADDR');
    const strict = await createTestApp({ env: { WEBHOOK_ALLOW_PRIVATE: 'false' } });
    try {
      const h = await strict.auth('admin', 'acme');
      for (const url of ['http://127.0.0.1:3222/hook', 'http://169.254.169.254/latest/meta-data', 'http://localhost/', 'http://10.0.0.1/']) {
        const r = await strict.app.inject({ method: 'POST', url: '/v1/webhooks', headers: h, payload: { url } });
        expect(r.statusCode, url).toBe(400);
        expect(r.json<{ error: { code: string } }>().error.code).toBe('PRIVATE_WEBHOOK_URL');
      }
      expect((await strict.db.adminQuery<{ n: string }>('SELECT count(*) AS n FROM strata.webhooks')).rows[0]?.n).toBe('0');
    } finally {
      await strict.close();
    }
  });
});
