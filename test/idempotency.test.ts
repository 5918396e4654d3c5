/**
 * Idempotency-Key on writes (Stripe's scheme) and the shutdown drain's 503 shape. Real PostgreSQL and
 * Redis; the "retried after a timeout" case holds the table lock so the first request outlives its
 * client, as a stalled database would.
 */
import net from 'node:net';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';

describe('Idempotency-Key', () => {
  let t: TestApp;
  let writer: Record<string, string>;
  let globex: Record<string, string>;
  let base: string;
  beforeAll(async () => {
    t = await createTestApp({ seed: false });
    writer = await t.auth('writer', 'acme');
    globex = await t.auth('writer', 'globex');
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    base = `http://127.0.0.1:${(t.app.server.address() as { port: number }).port}`;
  });
  afterAll(async () => {
    await t?.close();
  });

  const count = async (name: string) => Number((await t.db.adminQuery<{ n: string }>('SELECT count(*) AS n FROM pipelines WHERE name = $1', [name])).rows[0]?.n);
  const insert = (name: string, key: string | undefined, headers = writer) =>
    t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: { ...headers, ...(key ? { 'idempotency-key': key } : {}) }, payload: { name } });

  it('runs a keyed write once and replays its first answer (same status and body)', async () => {
    const key = randomUUID();
    const first = await insert('idem-once', key);
    expect(first.statusCode).toBe(201);
    const again = await insert('idem-once', key);
    expect(again.statusCode).toBe(201);
    expect(again.body).toBe(first.body);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.headers['content-type']).toBe(first.headers['content-type']);
    expect(await count('idem-once')).toBe(1);
  });

  it('replays a 4xx answer too, and a GraphQL mutation', async () => {
    const key = randomUUID();
    const bad = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: { ...writer, 'idempotency-key': key }, payload: { nope: 1 } });
    expect(bad.statusCode).toBe(400);
    const again = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: { ...writer, 'idempotency-key': key }, payload: { nope: 1 } });
    expect(again.statusCode).toBe(400);
    expect(again.body).toBe(bad.body);

    const gkey = randomUUID();
    const q = { query: 'mutation { insert_pipelines_one(object: { name: "idem-gql" }) { id name } }' };
    const g1 = await t.app.inject({ method: 'POST', url: '/graphql', headers: { ...writer, 'idempotency-key': gkey }, payload: q });
    const g2 = await t.app.inject({ method: 'POST', url: '/graphql', headers: { ...writer, 'idempotency-key': gkey }, payload: q });
    expect(g1.statusCode).toBe(200);
    expect(g2.body).toBe(g1.body);
    expect(await count('idem-gql')).toBe(1);
  });

  it('answers 422 IDEMPOTENCY_KEY_REUSED for the same key with another request, writing nothing', async () => {
    const key = randomUUID();
    expect((await insert('idem-a', key)).statusCode).toBe(201);
    const other = await insert('idem-b', key);
    expect(other.statusCode).toBe(422);
    expect(other.json().error.code).toBe('IDEMPOTENCY_KEY_REUSED');
    expect(await count('idem-b')).toBe(0);
  });

  it('answers 400 BAD_IDEMPOTENCY_KEY for a malformed key, writing nothing', async () => {
    const r = await insert('idem-badkey', 'x'.repeat(256));
    expect(r.statusCode).toBe(400);
    expect(r.json().error.code).toBe('BAD_IDEMPOTENCY_KEY');
    expect(await count('idem-badkey')).toBe(0);
  });

  it('keeps keys per tenant: the same key in another tenant is a new request', async () => {
    const key = randomUUID();
    expect((await insert('idem-tenant', key)).statusCode).toBe(201);
    const other = await insert('idem-tenant', key, globex);
    expect(other.statusCode).toBe(201);
    expect(other.headers['idempotent-replayed']).toBeUndefined();
    expect(JSON.parse(other.body).data.tenant_id ?? 'globex').toBe('globex');
    expect(await count('idem-tenant')).toBe(2);
  });

  it('retried after a client timeout: 409 while the first still runs, then its answer; one row', async () => {
    const key = randomUUID();
    const blocker = await t.db.admin.pg.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query('LOCK TABLE pipelines IN EXCLUSIVE MODE'); // the insert waits behind it
      const ac = new AbortController();
      const first = fetch(`${base}/v1/tables/pipelines/rows`, {
        method: 'POST',
        headers: { ...writer, 'content-type': 'application/json', 'idempotency-key': key },
        body: JSON.stringify({ name: 'idem-timeout' }),
        signal: ac.signal,
      });
      await new Promise((r) => setTimeout(r, 400));
      ac.abort(); // the client times out; its insert is already sent and waits for the lock
      await expect(first).rejects.toThrow();
      const during = await insert('idem-timeout', key);
      expect(during.statusCode).toBe(409);
      expect(during.json().error.code).toBe('IDEMPOTENCY_KEY_IN_USE');
      expect(during.headers['retry-after']).toBe('1');
    } finally {
      await blocker.query('ROLLBACK');
      blocker.release();
    }
    // the first insert commits (its statement was sent before the client left); the retry gets its answer
    let retry = await insert('idem-timeout', key);
    for (let i = 0; i < 50 && retry.statusCode === 409; i++) {
      await new Promise((r) => setTimeout(r, 100));
      retry = await insert('idem-timeout', key);
    }
    expect(retry.statusCode).toBe(201);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(await count('idem-timeout')).toBe(1);
  });

  it('drops a keyed write whose client left before it ran, so the retry runs it: one row', async () => {
    const key = randomUUID();
    // every connection of the tenant pool is busy: the write waits for one
    const pool = t.db.shardFor('acme').app;
    const leases = await Promise.all(Array.from({ length: t.config.DB_POOL_MAX }, () => pool.acquire()));
    const ac = new AbortController();
    const first = fetch(`${base}/v1/tables/pipelines/rows`, {
      method: 'POST',
      headers: { ...writer, 'content-type': 'application/json', 'idempotency-key': key },
      body: JSON.stringify({ name: 'idem-dropped' }),
      signal: ac.signal,
    });
    await new Promise((r) => setTimeout(r, 300));
    ac.abort();
    await expect(first).rejects.toThrow();
    await new Promise((r) => setTimeout(r, 100));
    for (const l of leases) l.release();
    await new Promise((r) => setTimeout(r, 500));
    expect(await count('idem-dropped')).toBe(0); // not executed for a client that was gone
    const retry = await insert('idem-dropped', key);
    expect(retry.statusCode).toBe(201);
    expect(retry.headers['idempotent-replayed']).toBeUndefined();
    expect(await count('idem-dropped')).toBe(1);
  });
});

describe('shutdown drain', () => {
  it("answers requests arriving during the drain with 503 SHUTTING_DOWN in Strata's error shape", async () => {
    const t = await createTestApp({ seed: false });
    try {
      const token = (await t.auth('analyst', 'acme')).authorization!;
      await t.app.listen({ port: 0, host: '127.0.0.1' });
      const port = (t.app.server.address() as { port: number }).port;
      // a slow request in flight on a connection; the drain starts; then a second request arrives on
      // that (busy, so not closed) connection
      const sock = net.connect(port, '127.0.0.1');
      let data = '';
      sock.on('data', (d: Buffer) => (data += d.toString()));
      const slow = JSON.stringify({ sql: 'SELECT pg_sleep(1)' });
      sock.write(`POST /v1/sql HTTP/1.1\r\nHost: x\r\nAuthorization: ${token}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(slow)}\r\n\r\n${slow}`);
      await new Promise((r) => setTimeout(r, 300));
      const closing = t.app.close();
      await new Promise((r) => setTimeout(r, 100));
      sock.write(`GET /v1/tables HTTP/1.1\r\nHost: x\r\nAuthorization: ${token}\r\n\r\n`);
      await Promise.race([new Promise<void>((resolve) => sock.on('close', () => resolve())), new Promise((r) => setTimeout(r, 5000))]);
      sock.destroy();
      await closing;
      expect(data).toMatch(/^HTTP\/1\.1 200/); // the request in flight is served
      const second = data.slice(data.indexOf('HTTP/1.1', 10));
      expect(second).toMatch(/^HTTP\/1\.1 503/);
      expect(second.toLowerCase()).toContain('connection: close');
      expect(second).toContain('"code":"SHUTTING_DOWN"');
    } finally {
      // the app is closed above (a second close would wait for ever); the rest as t.close() does
      await t.jobs.close();
      await t.redis.close();
      await t.db.close(2000);
      await t.database.drop();
    }
  });
});
