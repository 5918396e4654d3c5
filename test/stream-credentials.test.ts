/**
 * Issue 13, item 7: long-lived streams re-check their credential. An SSE change stream, a job event
 * stream and a GraphQL subscription end with a last event naming why once the API key is revoked,
 * the token expires or the tenant is suspended, and deliver nothing after it. Tokens without exp are
 * refused unless JWT_MAX_AGE_S allows them.
 */
import http from 'node:http';
import { SignJWT } from 'jose';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';
import { TEST_JWT_SECRET } from './helpers/constants.js';
import { createAuthenticator } from '../src/services/identity/index.js';

const PORT = 3481;
const RECHECK_MS = 200;


interface Frame {
  event: string;
  data: Record<string, unknown>;
}

/** An open SSE response: its frames as they come, and whether the server closed it. */
function openStream(path: string, headers: Record<string, string>) {
  const frames: Frame[] = [];
  let closedAt: number | undefined;
  let buf = '';
  const ready = new Promise<http.ClientRequest>((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: PORT, path, headers }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`status ${res.statusCode}`));
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buf += chunk;
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const event = block.split('\n').find((l) => l.startsWith('event: '))?.slice(7);
          const data = block.split('\n').find((l) => l.startsWith('data: '))?.slice(6);
          if (event && data) frames.push({ event, data: JSON.parse(data) as Record<string, unknown> });
        }
      });
      res.on('end', () => (closedAt = Date.now()));
      resolve(req);
    });
    req.on('error', reject);
  });
  return {
    frames,
    ready,
    closedAt: () => closedAt,
    close: async () => (await ready).destroy(),
  };
}

const until = async (cond: () => boolean, timeoutMs = 10_000) => {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 25));
  }
};

describe('long-lived streams re-check their credential', () => {
  let t: TestApp;
  let writer: Record<string, string>;

  beforeAll(async () => {
    t = await createTestApp({ env: { STREAM_AUTH_RECHECK_MS: String(RECHECK_MS), CHANGES_POLL_MS: '50', CHANGES_HEARTBEAT_MS: '100' } });
    writer = await t.auth('writer', 'acme');
    await t.app.listen({ port: PORT, host: '127.0.0.1' });
  });
  afterAll(() => t.close());

  const insert = async (name: string) => {
    const r = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: writer, payload: { name } });
    expect(r.statusCode).toBe(201);
  };
  const newKey = async () => {
    const r = await t.app.inject({ method: 'POST', url: '/v1/admin/api-keys', headers: await t.auth('admin', 'acme'), payload: { name: 'stream', role: 'reader' } });
    expect(r.statusCode).toBe(201);
    return r.json<{ data: { id: string; key: string } }>().data;
  };
  const revoke = async (id: string) => {
    const r = await t.app.inject({ method: 'DELETE', url: `/v1/admin/api-keys/${id}`, headers: await t.auth('admin', 'acme') });
    expect(r.statusCode).toBe(200);
    return Date.now();
  };
  const changes = (s: ReturnType<typeof openStream>) => s.frames.filter((f) => f.event === 'change');
  const names = (s: ReturnType<typeof openStream>) => changes(s).map((f) => (f.data['after'] as { name: string }).name);

  it('ends an SSE change stream opened with an API key once the key is revoked, and delivers nothing after', async () => {
    const key = await newKey();
    const s = openStream('/v1/changes/stream?table=pipelines', { 'x-api-key': key.key });
    await s.ready;
    await insert('before-revoke');
    await until(() => names(s).includes('before-revoke'));
    const revokedAt = await revoke(key.id);
    await until(() => s.closedAt() !== undefined);
    expect(s.closedAt()! - revokedAt).toBeLessThan(30_000);
    const last = s.frames.at(-1)!;
    expect(last).toMatchObject({ event: 'error', data: { code: 'CREDENTIAL_REVOKED' } });
    await insert('after-revoke');
    await new Promise((r) => setTimeout(r, 300));
    expect(names(s)).not.toContain('after-revoke');
    expect(s.frames.at(-1)).toBe(last);
  });

  it('ends an SSE change stream when its JWT expires, at the expiry', async () => {
    const exp = Math.floor(Date.now() / 1000) + 5;
    const token = await t.token('reader', 'acme', { expiresIn: exp });
    const s = openStream('/v1/changes/stream?table=pipelines', { authorization: `Bearer ${token}` });
    await s.ready;
    await insert('while-valid');
    await until(() => names(s).includes('while-valid'));
    await until(() => s.closedAt() !== undefined, 15_000);
    expect(s.closedAt()!).toBeGreaterThanOrEqual(exp * 1000);
    expect(s.closedAt()! - exp * 1000).toBeLessThan(30_000);
    expect(s.frames.at(-1)).toMatchObject({ event: 'error', data: { code: 'TOKEN_EXPIRED' } });
    await insert('after-expiry');
    await new Promise((r) => setTimeout(r, 300));
    expect(names(s)).not.toContain('after-expiry');
    expect(s.frames.filter((f) => f.event === 'error')).toHaveLength(1);
  });

  it('ends a job event stream opened with an API key once the key is revoked', async () => {
    const key = await newKey();
    // an export job: no worker runs in this test app, so it stays waiting and its stream stays open
    const job = await t.app.inject({ method: 'POST', url: '/v1/exports', headers: { 'x-api-key': key.key }, payload: { table: 'pipelines', format: 'csv' } });
    expect(job.statusCode, job.body).toBe(202);
    const id = job.json<{ job_id: string }>().job_id;
    const s = openStream(`/v1/jobs/${id}/events`, { 'x-api-key': key.key });
    await s.ready;
    await new Promise((r) => setTimeout(r, RECHECK_MS * 2));
    expect(s.closedAt()).toBeUndefined();
    const revokedAt = await revoke(key.id);
    await until(() => s.closedAt() !== undefined);
    expect(s.closedAt()! - revokedAt).toBeLessThan(30_000);
    expect(s.frames.at(-1)).toMatchObject({ event: 'error', data: { code: 'CREDENTIAL_REVOKED' } });
  });

  it('ends a GraphQL subscription opened with an API key once the key is revoked', async () => {
    const key = await newKey();
    const ws = new WebSocket(`ws://127.0.0.1:${PORT}/graphql`, 'graphql-transport-ws', { headers: { 'x-api-key': key.key } });
    const messages: Array<{ type: string; payload?: { data?: { changes?: { after?: { name?: string } } } | null; errors?: Array<{ message: string }> } }> = [];
    let closedAt: number | undefined;
    ws.on('message', (raw: Buffer) => {
      const msg = JSON.parse(raw.toString()) as (typeof messages)[number];
      messages.push(msg);
      if (msg.type === 'connection_ack') {
        ws.send(JSON.stringify({ id: '1', type: 'subscribe', payload: { query: 'subscription { changes(table: ["pipelines"]) { id after } }' } }));
      }
      if (msg.type === 'complete' || msg.type === 'error') closedAt ??= Date.now();
    });
    await new Promise<void>((resolve, reject) => {
      ws.on('error', reject);
      ws.on('open', () => {
        ws.send(JSON.stringify({ type: 'connection_init', payload: {} }));
        resolve();
      });
    });
    try {
      await until(() => messages.some((m) => m.type === 'connection_ack'));
      await new Promise((r) => setTimeout(r, 300)); // the subscription is registered
      await insert('gql-before');
      const data = () => messages.filter((m) => m.type === 'next' && m.payload?.data?.changes);
      await until(() => data().length === 1);
      const revokedAt = await revoke(key.id);
      await until(() => messages.some((m) => m.type === 'next' && m.payload?.errors));
      const end = messages.find((m) => m.type === 'next' && m.payload?.errors)!;
      expect(end.payload!.errors![0]).toMatchObject({ message: expect.stringMatching(/^CREDENTIAL_REVOKED: /), extensions: { code: 'CREDENTIAL_REVOKED' } });
      expect(Date.now() - revokedAt).toBeLessThan(30_000);
      await until(() => closedAt !== undefined);
      await insert('gql-after');
      await new Promise((r) => setTimeout(r, 300));
      expect(data().map((m) => m.payload!.data!.changes!.after!.name)).toEqual(['gql-before']);
    } finally {
      ws.close();
    }
  });

  it('ends every stream of a tenant when the tenant is suspended', async () => {
    const s = openStream('/v1/changes/stream', { authorization: `Bearer ${await t.token('reader', 'acme')}` });
    await s.ready;
    const platform = await t.auth('platform_admin', null);
    try {
      const r = await t.app.inject({ method: 'PATCH', url: '/v1/admin/tenants/acme', headers: platform, payload: { status: 'suspended' } });
      expect(r.statusCode, r.body).toBe(200);
      const at = Date.now();
      await until(() => s.closedAt() !== undefined);
      expect(s.closedAt()! - at).toBeLessThan(30_000);
      expect(s.frames.at(-1)).toMatchObject({ event: 'error', data: { code: 'TENANT_SUSPENDED' } });
    } finally {
      await t.app.inject({ method: 'PATCH', url: '/v1/admin/tenants/acme', headers: platform, payload: { status: 'active' } });
    }
  });

  describe('tokens without exp', () => {
    const sign = (claims: { iat?: number }) => {
      const jwt = new SignJWT({ role: 'reader', tenant_id: 'acme' }).setProtectedHeader({ alg: 'HS256' }).setSubject('no-exp');
      if (claims.iat !== undefined) jwt.setIssuedAt(claims.iat);
      return jwt.sign(new TextEncoder().encode(TEST_JWT_SECRET));
    };

    it('refuses a signed token without exp with 401 TOKEN_NO_EXPIRY, reading nothing', async () => {
      for (const token of [await sign({}), await sign({ iat: Math.floor(Date.now() / 1000) })]) {
        const r = await t.app.inject({ method: 'GET', url: '/v1/tables/pipelines/rows', headers: { authorization: `Bearer ${token}` } });
        expect(r.statusCode).toBe(401);
        expect(r.json<{ error: { code: string } }>().error.code).toBe('TOKEN_NO_EXPIRY');
        expect(r.body).not.toContain('"data"');
      }
    });

    it('accepts one up to iat + JWT_MAX_AGE_S when that is set, and never without iat', async () => {
      const auth = createAuthenticator({ config: { ...t.config, JWT_MAX_AGE_S: 60 }, db: t.db, jwtSecret: TEST_JWT_SECRET });
      const now = Math.floor(Date.now() / 1000);
      const fresh = await sign({ iat: now - 10 });
      await expect(auth.authenticate({ authorization: `Bearer ${fresh}` })).resolves.toMatchObject({ tenantId: 'acme', role: 'reader' });
      await expect(auth.authenticate({ authorization: `Bearer ${await sign({ iat: now - 61 })}` })).rejects.toMatchObject({ statusCode: 401, code: 'TOKEN_EXPIRED' });
      await expect(auth.authenticate({ authorization: `Bearer ${await sign({})}` })).rejects.toMatchObject({ statusCode: 401, code: 'TOKEN_NO_EXPIRY' });
      // a stream under such a token ends at iat + JWT_MAX_AGE_S
      const watch = auth.watch({ authorization: `Bearer ${fresh}` }, { tenantId: 'acme', role: 'reader', actor: 'no-exp' });
      expect(watch.current()).toBeUndefined();
      const old = auth.watch({ authorization: `Bearer ${await sign({ iat: now - 61 })}` }, { tenantId: 'acme', role: 'reader', actor: 'no-exp' });
      expect(old.current()).toMatchObject({ code: 'TOKEN_EXPIRED' });
    });
  });
});
