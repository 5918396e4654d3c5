/**
 * The tenant registry (platform_admin only) through HTTP: register, list, read, suspend and
 * reactivate; every bad input is a 4xx with a stable code and writes nothing.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';

const TENANTS = '/v1/admin/tenants';
const ROWS = '/v1/tables/pipelines/rows';

describe('tenant registry', () => {
  let t: TestApp;
  let platform: Record<string, string>;
  /** Every column of every tenant, to prove a refused request changed nothing at all. */
  const snapshot = async () => (await t.db.adminQuery('SELECT * FROM strata.tenants ORDER BY id')).rows;

  type Method = 'GET' | 'POST' | 'PATCH';
  /** Send a request as platform_admin and expect a 4xx with `code`, with strata.tenants unchanged. */
  async function expectRefused(
    req: { method: Method; url: string; payload?: unknown; headers?: Record<string, string> },
    status: number,
    code: string,
  ) {
    const before = await snapshot();
    const res = await t.app.inject({
      method: req.method,
      url: req.url,
      headers: { ...platform, ...req.headers },
      ...(req.payload === undefined ? {} : { payload: req.payload as string }),
    });
    expect(res.statusCode, res.body).toBe(status);
    expect(res.json().error.code).toBe(code);
    expect(await snapshot()).toEqual(before);
    return res;
  }

  beforeAll(async () => {
    t = await createTestApp();
    platform = await t.auth('platform_admin', null);
  });
  afterEach(() => expectNoCheckedOutClients(t.db));
  afterAll(() => t.close());

  describe('as platform_admin', () => {
    it('registers a tenant with 201 and status active', async () => {
      const res = await t.app.inject({
        method: 'POST',
        url: TENANTS,
        headers: platform,
        payload: { id: 'initech', name: 'Initech' },
      });
      expect(res.statusCode).toBe(201);
      const data = res.json().data;
      expect(data).toMatchObject({ id: 'initech', name: 'Initech', status: 'active' });
      expect(Date.parse(data.created_at)).not.toBeNaN();
      expect(Date.parse(data.updated_at)).not.toBeNaN();
      const { rows } = await t.db.adminQuery<{ name: string }>(
        "SELECT name FROM strata.tenants WHERE id = 'initech'",
      );
      expect(rows).toEqual([{ name: 'Initech' }]);
    });

    it('answers a duplicate id with 409 TENANT_EXISTS and leaves the tenant unchanged', async () => {
      await expectRefused(
        { method: 'POST', url: TENANTS, payload: { id: 'acme', name: 'Not Acme' } },
        409,
        'TENANT_EXISTS',
      );
    });

    it('lists every tenant ordered by id', async () => {
      const res = await t.app.inject({ url: TENANTS, headers: platform });
      expect(res.statusCode).toBe(200);
      const ids = (res.json().data as Array<{ id: string }>).map((d) => d.id);
      expect(ids).toEqual([...ids].sort());
      expect(ids).toEqual(expect.arrayContaining(['acme', 'globex', 'initech']));
    });

    it('reads one tenant by id', async () => {
      const res = await t.app.inject({ url: `${TENANTS}/globex`, headers: platform });
      expect(res.statusCode).toBe(200);
      expect(res.json().data).toMatchObject({ id: 'globex', name: 'Globex', status: 'active' });
    });

    it('answers an unknown id with 404 TENANT_NOT_FOUND on GET and PATCH, creating nothing', async () => {
      const get = await t.app.inject({ url: `${TENANTS}/umbrella`, headers: platform });
      expect(get.statusCode).toBe(404);
      expect(get.json().error.code).toBe('TENANT_NOT_FOUND');
      await expectRefused(
        { method: 'PATCH', url: `${TENANTS}/umbrella`, payload: { status: 'suspended' } },
        404,
        'TENANT_NOT_FOUND',
      );
    });

    it('suspends and reactivates a tenant with PATCH, moving updated_at forward', async () => {
      const before = (await t.app.inject({ url: `${TENANTS}/initech`, headers: platform })).json().data;
      const suspended = await t.app.inject({
        method: 'PATCH',
        url: `${TENANTS}/initech`,
        headers: platform,
        payload: { status: 'suspended' },
      });
      expect(suspended.statusCode).toBe(200);
      expect(suspended.json().data).toMatchObject({
        id: 'initech',
        status: 'suspended',
        name: 'Initech',
        created_at: before.created_at,
      });
      expect(Date.parse(suspended.json().data.updated_at)).toBeGreaterThanOrEqual(
        Date.parse(before.updated_at),
      );
      const reader = await t.auth('reader', 'initech');
      const refused = await t.app.inject({ url: ROWS, headers: reader });
      expect(refused.statusCode).toBe(403);
      expect(refused.json().error.code).toBe('TENANT_SUSPENDED');

      const active = await t.app.inject({
        method: 'PATCH',
        url: `${TENANTS}/initech`,
        headers: platform,
        payload: { status: 'active' },
      });
      expect(active.statusCode).toBe(200);
      expect(active.json().data.status).toBe('active');
      expect((await t.app.inject({ url: ROWS, headers: reader })).statusCode).toBe(200);
    });

    it('renames a tenant with PATCH', async () => {
      const res = await t.app.inject({
        method: 'PATCH',
        url: `${TENANTS}/initech`,
        headers: platform,
        payload: { name: 'Initech Corp' },
      });
      expect(res.statusCode).toBe(200);
      expect(res.json().data).toMatchObject({ id: 'initech', name: 'Initech Corp', status: 'active' });
    });

    it('lets a tenant be used right after registration even when a token named it just before', async () => {
      const reader = await t.auth('reader', 'hooli');
      const early = await t.app.inject({ url: ROWS, headers: reader });
      expect(early.statusCode).toBe(403);
      expect(early.json().error.code).toBe('TENANT_UNKNOWN');
      const created = await t.app.inject({
        method: 'POST',
        url: TENANTS,
        headers: platform,
        payload: { id: 'hooli', name: 'Hooli' },
      });
      expect(created.statusCode).toBe(201);
      const after = await t.app.inject({ url: ROWS, headers: reader });
      expect(after.statusCode).toBe(200);
      expect(after.json().data).toEqual([]);
    });

    it('serves more registry requests in a row than the admin pool has connections', async () => {
      for (let i = 0; i < 12; i++) {
        const res = await t.app.inject({ url: `${TENANTS}/acme`, headers: platform });
        expect(res.statusCode, `request ${i}`).toBe(200);
      }
    });
  });

  describe('bad input', () => {
    it.each([
      ['a space and a bang', 'bad id!'],
      ['70 characters', 'a'.repeat(70)],
      ['a leading dash', '-acme'],
      ['a quote', "acme'--"],
      ['an empty string', ''],
    ])(
      'rejects a tenant id with %s with 400 VALIDATION_FAILED naming body.id, writing nothing',
      async (_label, id) => {
        const res = await expectRefused(
          { method: 'POST', url: TENANTS, payload: { id, name: 'Bad' } },
          400,
          'VALIDATION_FAILED',
        );
        expect(res.json().error.details.field).toBe('body.id');
      },
    );

    it('accepts a 63-character id, the longest allowed', async () => {
      const id = `t${'x'.repeat(62)}`;
      const res = await t.app.inject({
        method: 'POST',
        url: TENANTS,
        headers: platform,
        payload: { id, name: 'Long' },
      });
      expect(res.statusCode).toBe(201);
    });

    it('rejects a missing, empty or over-long name with 400 VALIDATION_FAILED, writing nothing', async () => {
      for (const payload of [
        { id: 'noname' },
        { id: 'noname', name: '' },
        { id: 'noname', name: 'n'.repeat(201) },
      ]) {
        const res = await expectRefused({ method: 'POST', url: TENANTS, payload }, 400, 'VALIDATION_FAILED');
        expect(res.json().error.details.field).toBe('body.name');
      }
    });

    it('rejects an extra property on POST (status) with 400 VALIDATION_FAILED, writing nothing', async () => {
      await expectRefused(
        { method: 'POST', url: TENANTS, payload: { id: 'extra', name: 'Extra', status: 'suspended' } },
        400,
        'VALIDATION_FAILED',
      );
    });

    it('rejects a malformed JSON body with 400 MALFORMED_JSON, writing nothing', async () => {
      await expectRefused(
        {
          method: 'POST',
          url: TENANTS,
          payload: '{"id": "json",',
          headers: { 'content-type': 'application/json' },
        },
        400,
        'MALFORMED_JSON',
      );
    });

    it('rejects a bad id in the path with 400 VALIDATION_FAILED on GET and PATCH, writing nothing', async () => {
      const url = `${TENANTS}/${encodeURIComponent('bad id!')}`;
      await expectRefused({ method: 'GET', url }, 400, 'VALIDATION_FAILED');
      await expectRefused(
        { method: 'PATCH', url, payload: { status: 'suspended' } },
        400,
        'VALIDATION_FAILED',
      );
    });

    it('rejects a PATCH with an empty body object with 400 VALIDATION_FAILED, writing nothing', async () => {
      await expectRefused({ method: 'PATCH', url: `${TENANTS}/acme`, payload: {} }, 400, 'VALIDATION_FAILED');
    });

    it('rejects a PATCH with an unknown status value with 400 VALIDATION_FAILED naming body.status, writing nothing', async () => {
      for (const status of ['deleted', 'ACTIVE', '']) {
        const res = await expectRefused(
          { method: 'PATCH', url: `${TENANTS}/acme`, payload: { status } },
          400,
          'VALIDATION_FAILED',
        );
        expect(res.json().error.details.field).toBe('body.status');
      }
    });

    it('rejects a PATCH that tries to change the id with 400 VALIDATION_FAILED, writing nothing', async () => {
      await expectRefused(
        { method: 'PATCH', url: `${TENANTS}/acme`, payload: { id: 'acme2' } },
        400,
        'VALIDATION_FAILED',
      );
    });
  });

  describe('other roles', () => {
    it('refuses a tenant admin with 403 ROLE_FORBIDDEN on every registry route, writing nothing', async () => {
      const admin = await t.auth('admin', 'acme');
      const routes: Array<{ method: Method; url: string; payload?: unknown }> = [
        { method: 'POST', url: TENANTS, payload: { id: 'sneaky', name: 'Sneaky' } },
        { method: 'GET', url: TENANTS },
        { method: 'GET', url: `${TENANTS}/acme` },
        { method: 'PATCH', url: `${TENANTS}/globex`, payload: { status: 'suspended' } },
      ];
      for (const r of routes) {
        const res = await expectRefused({ ...r, headers: admin }, 403, 'ROLE_FORBIDDEN');
        expect(res.json().error.message, `${r.method} ${r.url}`).toContain('platform_admin');
      }
    });

    it('refuses a writer and a reader with 403 ROLE_FORBIDDEN', async () => {
      for (const role of ['writer', 'reader'] as const) {
        await expectRefused(
          {
            method: 'PATCH',
            url: `${TENANTS}/acme`,
            payload: { status: 'suspended' },
            headers: await t.auth(role, 'acme'),
          },
          403,
          'ROLE_FORBIDDEN',
        );
      }
    });

    it('answers without credentials with 401 AUTH_REQUIRED', async () => {
      const res = await t.app.inject({ method: 'POST', url: TENANTS, payload: { id: 'anon', name: 'Anon' } });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe('AUTH_REQUIRED');
    });
  });
});
