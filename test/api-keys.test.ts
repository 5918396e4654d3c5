/**
 * API keys through HTTP: created by a tenant admin (secret shown once, only its hash kept), used via
 * X-API-Key with the key's role and tenant, revocable, expiring; every bad input is a 4xx with a
 * stable code and writes nothing. Against the real PostgreSQL and Redis.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Role } from '../src/domain.js';
import { hashApiKey } from '../src/services/identity/index.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';

const KEYS = '/v1/admin/api-keys';
const ROWS = '/v1/tables/pipelines/rows';

interface CreatedKey {
  id: string;
  key: string;
  tenant_id: string;
  role: Role;
  name: string;
  created_by: string;
  expires_at: string | null;
  revoked_at: string | null;
}

describe('API keys', () => {
  let t: TestApp;
  const count = async (sql: string, values: unknown[] = []) =>
    Number((await t.db.adminQuery<{ n: string }>(sql, values)).rows[0]?.n ?? NaN);
  const keyCount = () => count('SELECT count(*) AS n FROM strata.api_keys');
  /** Every column of every key, to prove a refused request changed nothing at all. */
  const snapshot = async () => (await t.db.adminQuery('SELECT * FROM strata.api_keys ORDER BY id')).rows;
  const pipelines = (tenant: string) =>
    count('SELECT count(*) AS n FROM public.pipelines WHERE tenant_id = $1', [tenant]);

  async function createKey(body: Record<string, unknown>, tenant = 'acme'): Promise<CreatedKey> {
    const res = await t.app.inject({
      method: 'POST',
      url: KEYS,
      headers: await t.auth('admin', tenant),
      payload: body,
    });
    expect(res.statusCode, res.body).toBe(201);
    return res.json().data as CreatedKey;
  }

  /** Send a body and expect a 4xx with `code`, with strata.api_keys unchanged. */
  async function expectRefused(
    req: { method?: 'POST' | 'DELETE'; url?: string; payload?: unknown; headers?: Record<string, string> },
    status: number,
    code: string,
  ) {
    const before = await snapshot();
    const res = await t.app.inject({
      method: req.method ?? 'POST',
      url: req.url ?? KEYS,
      headers: { ...(await t.auth('admin', 'acme')), ...req.headers },
      ...(req.payload === undefined ? {} : { payload: req.payload as string }),
    });
    expect(res.statusCode, res.body).toBe(status);
    expect(res.json().error.code).toBe(code);
    expect(await snapshot()).toEqual(before);
    return res;
  }

  beforeAll(async () => {
    t = await createTestApp();
    await t.db.adminQuery(
      "INSERT INTO public.pipelines (tenant_id, name) VALUES ('acme', 'acme-1'), ('globex', 'globex-1')",
    );
  });
  afterEach(() => expectNoCheckedOutClients(t.db));
  afterAll(() => t.close());

  describe('creating and listing', () => {
    it('creates a key with 201, returning the sk_ secret once and storing only its sha256', async () => {
      const before = await keyCount();
      const k = await createKey({ name: 'ci', role: 'reader' });
      expect(k.key).toMatch(/^sk_[A-Za-z0-9_-]{20,}$/);
      expect(k).toMatchObject({
        name: 'ci',
        role: 'reader',
        tenant_id: 'acme',
        created_by: 'user-admin@acme',
        expires_at: null,
        revoked_at: null,
      });
      expect(k.id).toMatch(/^[0-9a-f-]{36}$/);
      expect(await keyCount()).toBe(before + 1);
      const { rows } = await t.db.adminQuery<{ key_hash: Buffer; row: string }>(
        'SELECT key_hash, row_to_json(k)::text AS row FROM strata.api_keys k WHERE id = $1',
        [k.id],
      );
      expect(rows[0]?.key_hash.equals(hashApiKey(k.key))).toBe(true);
      expect(rows[0]?.row).not.toContain(k.key);
    });

    it('lists the keys of the caller tenant without the secret or its hash', async () => {
      const k = await createKey({ name: 'listed', role: 'writer' });
      const res = await t.app.inject({ url: KEYS, headers: await t.auth('admin', 'acme') });
      expect(res.statusCode).toBe(200);
      const data = res.json().data as Array<Record<string, unknown>>;
      const listed = data.find((d) => d['id'] === k.id);
      expect(listed).toMatchObject({ name: 'listed', role: 'writer', tenant_id: 'acme' });
      for (const d of data) {
        expect(d).not.toHaveProperty('key');
        expect(d).not.toHaveProperty('key_hash');
        expect(d['tenant_id']).toBe('acme');
      }
      expect(res.body).not.toContain(k.key);
    });

    it('accepts an expires_at in the future and returns it', async () => {
      const expires = new Date(Date.now() + 86_400_000).toISOString();
      const k = await createKey({ name: 'expiring', role: 'reader', expires_at: expires });
      expect(k.expires_at).toBe(expires);
    });

    it('lets an admin mint an admin key but refuses a platform_admin key with 403 ROLE_ESCALATION, writing nothing', async () => {
      expect((await createKey({ name: 'peer', role: 'admin' })).role).toBe('admin');
      await expectRefused({ payload: { name: 'root', role: 'platform_admin' } }, 403, 'ROLE_ESCALATION');
    });

    it('refuses a tenantless platform_admin with 400 TENANT_REQUIRED, writing nothing', async () => {
      await expectRefused(
        { payload: { name: 'nowhere', role: 'reader' }, headers: await t.auth('platform_admin', null) },
        400,
        'TENANT_REQUIRED',
      );
    });
  });

  describe('authenticating with X-API-Key', () => {
    it('authenticates a reader key as a reader of its tenant: reads, but 403 ROLE_FORBIDDEN on write with nothing written', async () => {
      const k = await createKey({ name: 'reader-key', role: 'reader' });
      const read = await t.app.inject({ url: ROWS, headers: { 'x-api-key': k.key } });
      expect(read.statusCode).toBe(200);
      expect((read.json().data as Array<{ tenant_id: string }>).map((r) => r.tenant_id)).toEqual(['acme']);
      const before = await pipelines('acme');
      const write = await t.app.inject({
        method: 'POST',
        url: ROWS,
        headers: { 'x-api-key': k.key },
        payload: { name: 'by-key' },
      });
      expect(write.statusCode).toBe(403);
      expect(write.json().error.code).toBe('ROLE_FORBIDDEN');
      expect(await pipelines('acme')).toBe(before);
      const admin = await t.app.inject({ url: KEYS, headers: { 'x-api-key': k.key } });
      expect(admin.statusCode).toBe(403);
      expect(admin.json().error.code).toBe('ROLE_FORBIDDEN');
    });

    it('authenticates a writer key whose inserts are filed under the key tenant', async () => {
      const k = await createKey({ name: 'writer-key', role: 'writer' }, 'globex');
      const res = await t.app.inject({
        method: 'POST',
        url: ROWS,
        headers: { 'x-api-key': k.key, 'x-tenant-id': 'acme' },
        payload: { name: 'by-globex-key' },
      });
      expect(res.statusCode).toBe(201);
      expect(res.json().data.tenant_id).toBe('globex');
      await t.db.adminQuery("DELETE FROM public.pipelines WHERE name = 'by-globex-key'");
    });

    it('records last_used_at after a key is used', async () => {
      const k = await createKey({ name: 'used', role: 'reader' });
      expect((await t.app.inject({ url: ROWS, headers: { 'x-api-key': k.key } })).statusCode).toBe(200);
      await vi.waitFor(async () => {
        expect(
          await count(
            'SELECT count(*) AS n FROM strata.api_keys WHERE id = $1 AND last_used_at IS NOT NULL',
            [k.id],
          ),
        ).toBe(1);
      });
    });

    it('rejects an unknown key with 401 API_KEY_INVALID', async () => {
      for (const key of ['sk_this-key-was-never-issued-0123456789', 'short', 'x'.repeat(201)]) {
        const res = await t.app.inject({ url: ROWS, headers: { 'x-api-key': key } });
        expect(res.statusCode, key).toBe(401);
        expect(res.json().error.code, key).toBe('API_KEY_INVALID');
      }
    });

    it('rejects a key past its expires_at with 401 API_KEY_EXPIRED', async () => {
      const k = await createKey({
        name: 'soon-expired',
        role: 'reader',
        expires_at: new Date(Date.now() + 3_600_000).toISOString(),
      });
      expect((await t.app.inject({ url: ROWS, headers: { 'x-api-key': k.key } })).statusCode).toBe(200);
      await t.db.adminQuery(
        "UPDATE strata.api_keys SET expires_at = now() - interval '1 minute' WHERE id = $1",
        [k.id],
      );
      const res = await t.app.inject({ url: ROWS, headers: { 'x-api-key': k.key } });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe('API_KEY_EXPIRED');
    });

    it('refuses the key of a suspended tenant with 403 TENANT_SUSPENDED', async () => {
      const k = await createKey({ name: 'suspended-tenant', role: 'reader' }, 'globex');
      const platform = await t.auth('platform_admin', null);
      try {
        const patch = await t.app.inject({
          method: 'PATCH',
          url: '/v1/admin/tenants/globex',
          headers: platform,
          payload: { status: 'suspended' },
        });
        expect(patch.statusCode).toBe(200);
        const res = await t.app.inject({ url: ROWS, headers: { 'x-api-key': k.key } });
        expect(res.statusCode).toBe(403);
        expect(res.json().error.code).toBe('TENANT_SUSPENDED');
      } finally {
        await t.app.inject({
          method: 'PATCH',
          url: '/v1/admin/tenants/globex',
          headers: platform,
          payload: { status: 'active' },
        });
      }
      expect((await t.app.inject({ url: ROWS, headers: { 'x-api-key': k.key } })).statusCode).toBe(200);
    });
  });

  describe('revoking', () => {
    it('revokes a key with DELETE; using it afterwards is 401 API_KEY_REVOKED', async () => {
      const k = await createKey({ name: 'to-revoke', role: 'reader' });
      expect((await t.app.inject({ url: ROWS, headers: { 'x-api-key': k.key } })).statusCode).toBe(200);
      const del = await t.app.inject({
        method: 'DELETE',
        url: `${KEYS}/${k.id}`,
        headers: await t.auth('admin', 'acme'),
      });
      expect(del.statusCode).toBe(200);
      expect(del.json().data).toMatchObject({ id: k.id });
      expect(del.json().data.revoked_at).toEqual(expect.any(String));
      expect(del.json().data).not.toHaveProperty('key');
      const res = await t.app.inject({ url: ROWS, headers: { 'x-api-key': k.key } });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe('API_KEY_REVOKED');
    });

    it('keeps the first revocation time when a key is revoked twice', async () => {
      const k = await createKey({ name: 'twice', role: 'reader' });
      const headers = await t.auth('admin', 'acme');
      const first = await t.app.inject({ method: 'DELETE', url: `${KEYS}/${k.id}`, headers });
      expect(first.statusCode).toBe(200);
      await new Promise((r) => setTimeout(r, 20));
      const second = await t.app.inject({ method: 'DELETE', url: `${KEYS}/${k.id}`, headers });
      expect(second.statusCode).toBe(200);
      expect(second.json().data.revoked_at).toBe(first.json().data.revoked_at);
    });

    it("answers an acme admin revoking globex's key with 404 API_KEY_NOT_FOUND and the key keeps working", async () => {
      const k = await createKey({ name: 'globex-key', role: 'reader' }, 'globex');
      const before = await snapshot();
      const res = await t.app.inject({
        method: 'DELETE',
        url: `${KEYS}/${k.id}`,
        headers: await t.auth('admin', 'acme'),
      });
      expect(res.statusCode).toBe(404);
      expect(res.json().error.code).toBe('API_KEY_NOT_FOUND');
      expect(await snapshot()).toEqual(before);
      const use = await t.app.inject({ url: ROWS, headers: { 'x-api-key': k.key } });
      expect(use.statusCode).toBe(200);
      expect((use.json().data as Array<{ tenant_id: string }>).every((r) => r.tenant_id === 'globex')).toBe(
        true,
      );
      const acmeList = await t.app.inject({ url: KEYS, headers: await t.auth('admin', 'acme') });
      expect((acmeList.json().data as Array<{ id: string }>).some((d) => d.id === k.id)).toBe(false);
    });

    it('answers an unknown key id with 404 API_KEY_NOT_FOUND, writing nothing', async () => {
      await expectRefused(
        { method: 'DELETE', url: `${KEYS}/00000000-0000-4000-8000-000000000000` },
        404,
        'API_KEY_NOT_FOUND',
      );
    });
  });

  describe('bad input', () => {
    it('rejects a body without name with 400 VALIDATION_FAILED naming it, writing nothing', async () => {
      const res = await expectRefused({ payload: { role: 'reader' } }, 400, 'VALIDATION_FAILED');
      expect(res.json().error.details.field).toBe('body.name');
    });

    it('rejects an empty or over-long name with 400 VALIDATION_FAILED, writing nothing', async () => {
      await expectRefused({ payload: { name: '', role: 'reader' } }, 400, 'VALIDATION_FAILED');
      await expectRefused({ payload: { name: 'n'.repeat(201), role: 'reader' } }, 400, 'VALIDATION_FAILED');
    });

    it('rejects an unknown role with 400 VALIDATION_FAILED, writing nothing', async () => {
      await expectRefused({ payload: { name: 'k', role: 'superuser' } }, 400, 'VALIDATION_FAILED');
    });

    it('rejects an extra property with 400 VALIDATION_FAILED naming it, writing nothing', async () => {
      const res = await expectRefused(
        { payload: { name: 'k', role: 'reader', tenant_id: 'globex' } },
        400,
        'VALIDATION_FAILED',
      );
      expect(res.json().error.details.field).toBe('body.tenant_id');
    });

    it('rejects an expires_at that is not a date-time with 400 VALIDATION_FAILED, writing nothing', async () => {
      for (const expires_at of ['tomorrow', '2030-01-01', '']) {
        await expectRefused({ payload: { name: 'k', role: 'reader', expires_at } }, 400, 'VALIDATION_FAILED');
      }
    });

    it('rejects an expires_at in the past with 400 INVALID_EXPIRY, writing nothing', async () => {
      await expectRefused(
        { payload: { name: 'k', role: 'reader', expires_at: new Date(Date.now() - 60_000).toISOString() } },
        400,
        'INVALID_EXPIRY',
      );
    });

    it('rejects a non-uuid id on DELETE with 400 VALIDATION_FAILED, revoking nothing', async () => {
      for (const id of ['not-a-uuid', "1' OR '1'='1", '123']) {
        await expectRefused(
          { method: 'DELETE', url: `${KEYS}/${encodeURIComponent(id)}` },
          400,
          'VALIDATION_FAILED',
        );
      }
    });

    it('rejects malformed and empty JSON bodies with 400 MALFORMED_JSON, writing nothing', async () => {
      for (const payload of ['{"name": "k", "role": ', '{name: k}', '']) {
        await expectRefused(
          { payload, headers: { 'content-type': 'application/json' } },
          400,
          'MALFORMED_JSON',
        );
      }
    });

    it('rejects a non-JSON content type with 415 UNSUPPORTED_MEDIA_TYPE, writing nothing', async () => {
      await expectRefused(
        { payload: 'name=k&role=reader', headers: { 'content-type': 'application/x-www-form-urlencoded' } },
        415,
        'UNSUPPORTED_MEDIA_TYPE',
      );
    });
  });
});

describe('API keys with a small BODY_LIMIT_BYTES', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ env: { BODY_LIMIT_BYTES: '2048' } });
  });
  afterEach(() => expectNoCheckedOutClients(t.db));
  afterAll(() => t.close());

  it('rejects a body over BODY_LIMIT_BYTES with 413 BODY_TOO_LARGE, writing nothing', async () => {
    const count = async () =>
      Number((await t.db.adminQuery<{ n: string }>('SELECT count(*) AS n FROM strata.api_keys')).rows[0]?.n);
    const before = await count();
    const res = await t.app.inject({
      method: 'POST',
      url: KEYS,
      headers: await t.auth('admin', 'acme'),
      payload: { name: 'k', role: 'reader', padding: 'x'.repeat(4096) },
    });
    expect(res.statusCode).toBe(413);
    expect(res.json().error.code).toBe('BODY_TOO_LARGE');
    expect(await count()).toBe(before);
  });

  it('still accepts a body under the limit', async () => {
    const res = await t.app.inject({
      method: 'POST',
      url: KEYS,
      headers: await t.auth('admin', 'acme'),
      payload: { name: 'small', role: 'reader' },
    });
    expect(res.statusCode).toBe(201);
  });
});
