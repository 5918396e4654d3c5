/**
 * Authentication and authorization through HTTP: every way a credential can be missing or bad is a
 * 401 with a stable code, a role too weak is a 403, and nothing but the verified credential decides
 * the tenant. Against the real PostgreSQL (RLS) and Redis.
 */
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { build, loggerOptions } from '../src/app.js';
import type { Role } from '../src/domain.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';

const ROWS = '/v1/tables/pipelines/rows';
const b64url = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

describe('authentication and authorization', () => {
  let t: TestApp;
  const count = async (sql: string, values: unknown[] = []) =>
    Number((await t.db.adminQuery<{ n: string }>(sql, values)).rows[0]?.n ?? NaN);
  const pipelines = (tenant: string) =>
    count('SELECT count(*) AS n FROM public.pipelines WHERE tenant_id = $1', [tenant]);

  beforeAll(async () => {
    t = await createTestApp();
    await t.db.adminQuery(
      "INSERT INTO public.pipelines (tenant_id, name) VALUES ('acme', 'acme-1'), ('acme', 'acme-2'), ('globex', 'globex-1')",
    );
  });
  afterEach(() => expectNoCheckedOutClients(t.db));
  afterAll(() => t.close());

  describe('credentials (401)', () => {
    it('answers a tenant route without credentials with 401 AUTH_REQUIRED', async () => {
      const res = await t.app.inject({ url: ROWS });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe('AUTH_REQUIRED');
      expect(res.headers['x-request-id']).toBeTruthy();
    });

    it('answers an admin route without credentials with 401 AUTH_REQUIRED', async () => {
      for (const url of ['/v1/admin/tenants', '/v1/admin/api-keys']) {
        const res = await t.app.inject({ url });
        expect(res.statusCode, url).toBe(401);
        expect(res.json().error.code, url).toBe('AUTH_REQUIRED');
      }
    });

    it('rejects a non-Bearer Authorization header with 401 AUTH_MALFORMED', async () => {
      for (const authorization of ['Basic x', 'Bearer', 'Bearer a b', 'token abc']) {
        const res = await t.app.inject({ url: ROWS, headers: { authorization } });
        expect(res.statusCode, authorization).toBe(401);
        expect(res.json().error.code, authorization).toBe('AUTH_MALFORMED');
      }
    });

    it('rejects an expired token with 401 TOKEN_EXPIRED', async () => {
      const token = await t.token('reader', 'acme', { expiresIn: Math.floor(Date.now() / 1000) - 60 });
      const res = await t.app.inject({ url: ROWS, headers: bearer(token) });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe('TOKEN_EXPIRED');
    });

    it('refuses a token with 401 TOKEN_EXPIRED once it expires, even after it was accepted (and cached)', async () => {
      const exp = Math.floor(Date.now() / 1000) + 2;
      const headers = bearer(await t.token('reader', 'acme', { expiresIn: exp }));
      expect((await t.app.inject({ url: ROWS, headers })).statusCode).toBe(200);
      await new Promise((r) => setTimeout(r, exp * 1000 - Date.now() + 50));
      const res = await t.app.inject({ url: ROWS, headers });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe('TOKEN_EXPIRED');
    });

    it('rejects a token signed with another secret with 401 TOKEN_INVALID', async () => {
      const token = await t.token('admin', 'acme', { secret: 'another-secret-another-secret-another-0123' });
      for (const url of [ROWS, '/v1/admin/api-keys']) {
        const res = await t.app.inject({ url, headers: bearer(token) });
        expect(res.statusCode, url).toBe(401);
        expect(res.json().error.code, url).toBe('TOKEN_INVALID');
      }
    });

    it('rejects an unsigned token (alg none) with 401 TOKEN_INVALID', async () => {
      const now = Math.floor(Date.now() / 1000);
      const payload = { sub: 'mallory', role: 'platform_admin', iat: now, exp: now + 600 };
      const token = `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url(payload)}.`;
      const res = await t.app.inject({ url: '/v1/admin/tenants', headers: bearer(token) });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe('TOKEN_INVALID');
    });

    it('rejects a token whose payload was tampered with (role raised) with 401 TOKEN_INVALID', async () => {
      const [header, payload, signature] = (await t.token('reader', 'acme')).split('.');
      const claims = JSON.parse(Buffer.from(payload ?? '', 'base64url').toString('utf8')) as Record<
        string,
        unknown
      >;
      const forged = `${header}.${b64url({ ...claims, role: 'admin' })}.${signature}`;
      const res = await t.app.inject({ url: '/v1/admin/api-keys', headers: bearer(forged) });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe('TOKEN_INVALID');
    });

    it('rejects a garbage bearer token with 401 TOKEN_INVALID', async () => {
      const res = await t.app.inject({ url: ROWS, headers: bearer('not.a.jwt') });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe('TOKEN_INVALID');
    });

    it('rejects a token without tenant_id for a non-platform role with 401 TOKEN_INVALID', async () => {
      for (const role of ['reader', 'writer', 'admin'] as const) {
        const res = await t.app.inject({ url: ROWS, headers: bearer(await t.token(role, null)) });
        expect(res.statusCode, role).toBe(401);
        expect(res.json().error.code, role).toBe('TOKEN_INVALID');
      }
    });

    it('rejects a token with a role outside the known set (superuser) with 401 TOKEN_INVALID', async () => {
      const token = await t.token('superuser' as Role, 'acme');
      const res = await t.app.inject({ url: ROWS, headers: bearer(token) });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe('TOKEN_INVALID');
    });

    it('rejects a token whose tenant_id claim is malformed with 401 TOKEN_INVALID', async () => {
      const token = await t.token('reader', "acme' OR '1'='1");
      const res = await t.app.inject({ url: ROWS, headers: bearer(token) });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe('TOKEN_INVALID');
    });
  });

  describe('tenants (403)', () => {
    it('refuses a token naming an unregistered tenant with 403 TENANT_UNKNOWN', async () => {
      const res = await t.app.inject({ url: ROWS, headers: await t.auth('reader', 'initech') });
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe('TENANT_UNKNOWN');
    });

    it('refuses a suspended tenant with 403 TENANT_SUSPENDED and restores access when it is reactivated', async () => {
      const platform = await t.auth('platform_admin', null);
      const reader = await t.auth('reader', 'acme');
      // Warm the tenant status cache first: the PATCH must invalidate it, not wait 5 s for expiry.
      expect((await t.app.inject({ url: ROWS, headers: reader })).statusCode).toBe(200);
      try {
        const suspend = await t.app.inject({
          method: 'PATCH',
          url: '/v1/admin/tenants/acme',
          headers: platform,
          payload: { status: 'suspended' },
        });
        expect(suspend.statusCode).toBe(200);
        const refused = await t.app.inject({ url: ROWS, headers: reader });
        expect(refused.statusCode).toBe(403);
        expect(refused.json().error.code).toBe('TENANT_SUSPENDED');
        // Other tenants are unaffected.
        expect(
          (await t.app.inject({ url: ROWS, headers: await t.auth('reader', 'globex') })).statusCode,
        ).toBe(200);
      } finally {
        const reactivate = await t.app.inject({
          method: 'PATCH',
          url: '/v1/admin/tenants/acme',
          headers: platform,
          payload: { status: 'active' },
        });
        expect(reactivate.statusCode).toBe(200);
      }
      const back = await t.app.inject({ url: ROWS, headers: reader });
      expect(back.statusCode).toBe(200);
      expect(back.json().data).toHaveLength(2);
    });
  });

  describe('roles (403)', () => {
    it('refuses a reader on a write route with 403 ROLE_FORBIDDEN and writes nothing', async () => {
      const before = await pipelines('acme');
      const res = await t.app.inject({
        method: 'POST',
        url: ROWS,
        headers: await t.auth('reader', 'acme'),
        payload: { name: 'by-reader' },
      });
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe('ROLE_FORBIDDEN');
      expect(await pipelines('acme')).toBe(before);
      expect(await count("SELECT count(*) AS n FROM public.pipelines WHERE name = 'by-reader'")).toBe(0);
    });

    it('refuses a reader and a writer on the tenant admin routes with 403 ROLE_FORBIDDEN and writes no key', async () => {
      const before = await count('SELECT count(*) AS n FROM strata.api_keys');
      for (const role of ['reader', 'writer', 'analyst'] as const) {
        const headers = await t.auth(role, 'acme');
        const list = await t.app.inject({ url: '/v1/admin/api-keys', headers });
        expect(list.statusCode, role).toBe(403);
        expect(list.json().error.code, role).toBe('ROLE_FORBIDDEN');
        const create = await t.app.inject({
          method: 'POST',
          url: '/v1/admin/api-keys',
          headers,
          payload: { name: 'sneaky', role: 'reader' },
        });
        expect(create.statusCode, role).toBe(403);
        expect(create.json().error.code, role).toBe('ROLE_FORBIDDEN');
      }
      expect(await count('SELECT count(*) AS n FROM strata.api_keys')).toBe(before);
    });

    it('refuses a reader and a tenant admin on the platform tenant routes with 403 ROLE_FORBIDDEN', async () => {
      const before = await count('SELECT count(*) AS n FROM strata.tenants');
      for (const role of ['reader', 'admin'] as const) {
        const headers = await t.auth(role, 'acme');
        const list = await t.app.inject({ url: '/v1/admin/tenants', headers });
        expect(list.statusCode, role).toBe(403);
        expect(list.json().error.code, role).toBe('ROLE_FORBIDDEN');
        const create = await t.app.inject({
          method: 'POST',
          url: '/v1/admin/tenants',
          headers,
          payload: { id: 'initech', name: 'Initech' },
        });
        expect(create.statusCode, role).toBe(403);
        expect(create.json().error.code, role).toBe('ROLE_FORBIDDEN');
      }
      expect(await count('SELECT count(*) AS n FROM strata.tenants')).toBe(before);
    });

    it('lets a writer insert a row, filed under its own tenant', async () => {
      const res = await t.app.inject({
        method: 'POST',
        url: ROWS,
        headers: await t.auth('writer', 'acme'),
        payload: { name: 'by-writer' },
      });
      expect(res.statusCode).toBe(201);
      expect(res.json().data).toMatchObject({ name: 'by-writer', tenant_id: 'acme' });
      await t.db.adminQuery("DELETE FROM public.pipelines WHERE name = 'by-writer'");
    });
  });

  describe('the tenant comes only from the credential', () => {
    it('ignores an x-tenant-id header on reads', async () => {
      const headers = { ...(await t.auth('writer', 'acme')), 'x-tenant-id': 'globex' };
      const res = await t.app.inject({ url: ROWS, headers });
      expect(res.statusCode).toBe(200);
      const rows = res.json().data as Array<{ tenant_id: string; name: string }>;
      expect(rows.map((r) => r.name).sort()).toEqual(['acme-1', 'acme-2']);
      expect(rows.every((r) => r.tenant_id === 'acme')).toBe(true);
    });

    it('treats tenant_id in the query string as an ordinary filter that cannot reach another tenant', async () => {
      const headers = await t.auth('writer', 'acme');
      const filtered = await t.app.inject({ url: `${ROWS}?tenant_id=eq.globex`, headers });
      expect(filtered.statusCode).toBe(200);
      expect(filtered.json().data).toEqual([]);
      const malformed = await t.app.inject({ url: `${ROWS}?tenant_id=globex`, headers });
      expect(malformed.statusCode).toBe(400);
      expect(malformed.json().error.code).toBe('INVALID_FILTER');
    });

    it('files an insert sent with x-tenant-id: globex under the caller tenant', async () => {
      const headers = { ...(await t.auth('writer', 'acme')), 'x-tenant-id': 'globex' };
      const globexBefore = await pipelines('globex');
      const res = await t.app.inject({
        method: 'POST',
        url: `${ROWS}?tenant_id=globex`,
        headers,
        payload: { name: 'header-insert' },
      });
      expect(res.statusCode).toBe(201);
      expect(res.json().data.tenant_id).toBe('acme');
      expect(await pipelines('globex')).toBe(globexBefore);
      await t.db.adminQuery("DELETE FROM public.pipelines WHERE name = 'header-insert'");
    });

    it('refuses an insert whose body names another tenant with 403 FORBIDDEN_BY_DATABASE and writes nothing', async () => {
      const headers = { ...(await t.auth('writer', 'acme')), 'x-tenant-id': 'globex' };
      const [acmeBefore, globexBefore] = [await pipelines('acme'), await pipelines('globex')];
      const res = await t.app.inject({
        method: 'POST',
        url: `${ROWS}?tenant_id=globex`,
        headers,
        payload: { name: 'x', tenant_id: 'globex' },
      });
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe('FORBIDDEN_BY_DATABASE');
      expect(await pipelines('globex')).toBe(globexBefore);
      expect(await pipelines('acme')).toBe(acmeBefore);
    });

    it('does not let a reader read another tenant row by primary key', async () => {
      const { rows } = await t.db.adminQuery<{ id: string }>(
        "SELECT id::text AS id FROM public.pipelines WHERE tenant_id = 'globex' LIMIT 1",
      );
      const id = rows[0]?.id;
      expect(id).toBeDefined();
      const res = await t.app.inject({ url: `${ROWS}/${id}`, headers: await t.auth('reader', 'acme') });
      expect(res.statusCode).toBe(404);
      expect(res.json().error.code).toBe('ROW_NOT_FOUND');
    });
  });

  describe('logs', () => {
    it('never writes a bearer token or an API key into the logs, even at trace level', async () => {
      const lines: string[] = [];
      const log = pino(
        { ...(loggerOptions(t.config)), level: 'trace' },
        { write: (s: string) => void lines.push(s) },
      );
      const app = await build({
        config: t.config,
        db: t.db,
        redis: t.redis.client,
        registry: new Registry(),
        jwtSecret: t.config.JWT_SECRET,
        loggerInstance: log,
      });
      try {
        await app.ready();
        const good = await t.token('writer', 'acme');
        const expired = await t.token('reader', 'acme', { expiresIn: Math.floor(Date.now() / 1000) - 60 });
        const forged = await t.token('admin', 'acme', {
          secret: 'another-secret-another-secret-another-0123',
        });
        const apiKey = 'sk_this-key-does-not-exist-0123456789';
        expect((await app.inject({ url: ROWS, headers: bearer(good) })).statusCode).toBe(200);
        expect(
          (
            await app.inject({
              method: 'POST',
              url: ROWS,
              headers: bearer(good),
              payload: { name: 'x', tenant_id: 'globex' },
            })
          ).statusCode,
        ).toBe(403);
        expect((await app.inject({ url: ROWS, headers: bearer(expired) })).statusCode).toBe(401);
        expect((await app.inject({ url: ROWS, headers: bearer(forged) })).statusCode).toBe(401);
        expect((await app.inject({ url: ROWS, headers: { 'x-api-key': apiKey } })).statusCode).toBe(401);
        const out = lines.join('');
        expect(out.length).toBeGreaterThan(0);
        expect(out).toContain('TOKEN_EXPIRED'); // the requests were logged...
        for (const secret of [good, expired, forged, apiKey, String(t.config.JWT_SECRET)]) {
          expect(out).not.toContain(secret); // ...without their credentials
        }
        // Log lines carry the request id, and tenant, actor and role once authenticated.
        expect(out).toMatch(/"tenant":"acme"/);
        const parsed = lines.flatMap((l) => l.split('\n')).filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
        const refused = parsed.find((l) => l['code'] === 'FORBIDDEN_BY_DATABASE');
        expect(refused).toMatchObject({ tenant: 'acme', role: 'writer', actor: 'user-writer@acme' });
        expect(refused!['reqId']).toEqual(expect.any(String));
        const expiredLine = parsed.find((l) => l['code'] === 'TOKEN_EXPIRED');
        expect(expiredLine).toBeDefined();
        expect(expiredLine).not.toHaveProperty('tenant');
      } finally {
        await app.close();
      }
    });
  });
});
