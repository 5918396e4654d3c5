/**
 * Testing mode over HTTP: off by default (404 TESTING_MODE_DISABLED, nothing written), refused with
 * NODE_ENV=production; on, factories, tenant snapshots/restores and DELETE /v1/testing/data, each
 * confined to the caller's tenant by row-level security, with every bad input a 4xx writing nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';

type Headers = Record<string, string>;

const counts = async (t: TestApp) => {
  const { rows } = await t.db.adminQuery<{ tenant_id: string; t: string; n: number }>(
    `SELECT tenant_id, 'pipelines' AS t, count(*)::int AS n FROM pipelines GROUP BY 1
     UNION ALL SELECT tenant_id, 'pipeline_runs', count(*)::int FROM pipeline_runs GROUP BY 1
     UNION ALL SELECT tenant_id, 'run_steps', count(*)::int FROM run_steps GROUP BY 1
     UNION ALL SELECT tenant_id, 'run_logs', count(*)::int FROM run_logs GROUP BY 1
     UNION ALL SELECT tenant_id, 'documents', count(*)::int FROM documents GROUP BY 1 ORDER BY 1, 2`,
  );
  return rows;
};
const tenantRows = async (t: TestApp, tenant: string) =>
  (
    await t.db.adminQuery<{ r: unknown }>(
      `SELECT jsonb_build_object('p', (SELECT jsonb_agg(to_jsonb(x) ORDER BY id) FROM pipelines x WHERE tenant_id = $1),
                                 'r', (SELECT jsonb_agg(to_jsonb(x) ORDER BY id) FROM pipeline_runs x WHERE tenant_id = $1),
                                 's', (SELECT jsonb_agg(to_jsonb(x) - 'search_tsv' ORDER BY id) FROM run_steps x WHERE tenant_id = $1),
                                 'l', (SELECT jsonb_agg(to_jsonb(x) - 'search_tsv' ORDER BY id) FROM run_logs x WHERE tenant_id = $1)) AS r`,
      [tenant],
    )
  ).rows[0]!.r;

describe('testing mode off (the default)', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp();
  });
  afterAll(async () => {
    await t?.close();
  });

  it('answers 404 TESTING_MODE_DISABLED on every testing route and writes nothing', async () => {
    const h = await t.auth('admin', 'acme');
    const before = await counts(t);
    for (const [method, url, payload] of [
      ['POST', '/v1/testing/factories/pipelines', { count: 3 }],
      ['POST', '/v1/testing/snapshots', { name: 'x' }],
      ['POST', '/v1/testing/snapshots/x/restore', undefined],
      ['DELETE', '/v1/testing/data', undefined],
    ] as const) {
      const res = await t.app.inject({ method, url, headers: h, ...(payload ? { payload } : {}) });
      expect({ url, status: res.statusCode, code: res.json().error?.code }).toEqual({ url, status: 404, code: 'TESTING_MODE_DISABLED' });
    }
    expect(await counts(t)).toEqual(before);
  });

  it('cannot be switched on in production', () => {
    expect(() => loadConfig({ TESTING_MODE: 'true', NODE_ENV: 'production', DATABASE_URL: 'postgres://x@h/db', JWT_SECRET: 'x'.repeat(40) })).toThrow(/TESTING_MODE must not be true with NODE_ENV=production/);
    expect(loadConfig({ TESTING_MODE: 'true', NODE_ENV: 'test', DATABASE_URL: 'postgres://x@h/db', JWT_SECRET: 'x'.repeat(40) }).TESTING_MODE).toBe(true);
    expect(loadConfig({ DATABASE_URL: 'postgres://x@h/db', JWT_SECRET: 'x'.repeat(40) }).TESTING_MODE).toBe(false);
  });
});

describe('testing mode on', () => {
  let t: TestApp;
  const h: Record<string, Headers> = {};
  const post = (headers: Headers, url: string, payload?: unknown) =>
    t.app.inject({ method: 'POST', url, headers, ...(payload === undefined ? {} : { payload: payload as object }) });

  beforeAll(async () => {
    t = await createTestApp({ env: { TESTING_MODE: 'true', TESTING_SNAPSHOT_MAX_ROWS: '300' } });
    for (const [name, role, tenant] of [
      ['acme', 'admin', 'acme'],
      ['acmeWriter', 'writer', 'acme'],
      ['acmeReader', 'reader', 'acme'],
      ['globex', 'admin', 'globex'],
      ['platform', 'platform_admin', null],
    ] as const) {
      h[name] = await t.auth(role, tenant);
    }
  });
  afterAll(async () => {
    await t?.close();
  });

  describe('POST /v1/testing/factories/{table}', () => {
    it("creates valid rows in the caller's tenant, with overrides, visible to it alone", async () => {
      const res = await post(h['acmeWriter']!, '/v1/testing/factories/pipelines', { count: 3, overrides: { status: 'paused' } });
      expect(res.statusCode).toBe(201);
      const data = res.json<{ data: Array<Record<string, unknown>> }>().data;
      expect(data).toHaveLength(3);
      expect(data.every((r) => r['tenant_id'] === 'acme' && r['status'] === 'paused' && typeof r['name'] === 'string')).toBe(true);
      const acme = await t.app.inject({ method: 'GET', url: '/v1/tables/pipelines/rows?status=eq.paused', headers: h['acme']! });
      expect(acme.json<{ data: unknown[] }>().data).toHaveLength(3);
      const globex = await t.app.inject({ method: 'GET', url: '/v1/tables/pipelines/rows', headers: h['globex']! });
      expect(globex.json<{ data: unknown[] }>().data).toHaveLength(0);
    });

    it('creates parents on demand for NOT NULL foreign keys, in the same tenant', async () => {
      const res = await post(h['acme']!, '/v1/testing/factories/run_steps', { count: 2 });
      expect(res.statusCode).toBe(201);
      const steps = res.json<{ data: Array<{ run_id: string }> }>().data;
      const { rows } = await t.db.adminQuery<{ tenant_id: string }>(
        'SELECT p.tenant_id FROM pipeline_runs r JOIN pipelines p ON p.id = r.pipeline_id AND p.tenant_id = r.tenant_id WHERE r.id = ANY($1::bigint[])',
        [steps.map((s) => s.run_id)],
      );
      expect(rows.map((r) => r.tenant_id)).toEqual(['acme', 'acme']);
    });

    it('refuses bad input with 4xx codes and writes nothing', async () => {
      const before = await counts(t);
      const cases: Array<[Headers, string, unknown, number, string]> = [
        [h['acme']!, '/v1/testing/factories/no_such_table', { count: 1 }, 404, 'TABLE_NOT_FOUND'],
        [h['acme']!, '/v1/testing/factories/pipelines', { count: 0 }, 400, 'VALIDATION_FAILED'],
        [h['acme']!, '/v1/testing/factories/pipelines', { count: 1001 }, 400, 'VALIDATION_FAILED'],
        [h['acme']!, '/v1/testing/factories/pipelines', { count: 'many' }, 400, 'VALIDATION_FAILED'],
        [h['acme']!, '/v1/testing/factories/pipelines', { count: 1, extra: true }, 400, 'VALIDATION_FAILED'],
        [h['acme']!, '/v1/testing/factories/pipelines', { count: 2, overrides: { colour: 'red' } }, 400, 'UNKNOWN_COLUMN'],
        [h['acme']!, '/v1/testing/factories/pipelines', { count: 2, overrides: { status: 'bogus' } }, 400, 'CHECK_VIOLATION'],
        [h['acme']!, '/v1/testing/factories/pipelines', { count: 2, overrides: { name: 'x'.repeat(201) } }, 400, 'VALUE_TOO_LONG'],
        [h['acme']!, '/v1/testing/factories/run_steps', { count: 2, overrides: { run_id: 'abc' } }, 400, 'INVALID_VALUE'],
        // another tenant's rows cannot be forged: the database refuses (RLS WITH CHECK)
        [h['acme']!, '/v1/testing/factories/pipelines', { count: 2, overrides: { tenant_id: 'globex' } }, 403, 'FORBIDDEN_BY_DATABASE'],
        // nor can a parent of another tenant be named
        [h['acme']!, '/v1/testing/factories/pipeline_runs', { count: 1, overrides: { pipeline_id: 1, tenant_id: 'globex' } }, 403, 'FORBIDDEN_BY_DATABASE'],
        [h['acmeReader']!, '/v1/testing/factories/pipelines', { count: 1 }, 403, 'ROLE_FORBIDDEN'],
        [h['platform']!, '/v1/testing/factories/pipelines', { count: 1 }, 400, 'TENANT_REQUIRED'],
        [{}, '/v1/testing/factories/pipelines', { count: 1 }, 401, 'AUTH_REQUIRED'],
      ];
      for (const [headers, url, payload, status, code] of cases) {
        const res = await post(headers, url, payload);
        expect({ url, payload, status: res.statusCode, code: res.json().error?.code }).toEqual({ url, payload, status, code });
      }
      expect(await counts(t)).toEqual(before);
      await expectNoCheckedOutClients(t.db);
    });
  });

  describe('snapshots and DELETE /v1/testing/data', () => {
    it("restores the caller's tenant exactly, and leaves the other tenant's rows alone", async () => {
      await post(h['acme']!, '/v1/testing/factories/run_logs', { count: 5 });
      await post(h['globex']!, '/v1/testing/factories/pipelines', { count: 2 });
      const acmeBefore = await tenantRows(t, 'acme');
      const snap = await post(h['acme']!, '/v1/testing/snapshots', { name: 'base' });
      expect(snap.statusCode).toBe(201);
      const info = snap.json<{ data: { name: string; rows: number; tables: Record<string, number> } }>().data;
      expect(info.name).toBe('base');
      expect(info.tables['run_logs']).toBe(5);
      expect(info.rows).toBeGreaterThan(5);
      // acme changes its state; globex writes meanwhile
      await post(h['acme']!, '/v1/testing/factories/pipelines', { count: 4 });
      await t.app.inject({ method: 'DELETE', url: '/v1/tables/run_logs/rows?level=neq.zzz', headers: h['acme']! });
      await post(h['globex']!, '/v1/testing/factories/run_logs', { count: 3 });
      const globexBefore = await tenantRows(t, 'globex');
      expect(await tenantRows(t, 'acme')).not.toEqual(acmeBefore);

      const restored = await post(h['acme']!, '/v1/testing/snapshots/base/restore');
      expect(restored.statusCode).toBe(200);
      expect(restored.json<{ data: { deleted: Record<string, number> } }>().data.deleted['pipelines']).toBeGreaterThan(0);
      expect(await tenantRows(t, 'acme')).toEqual(acmeBefore);
      expect(await tenantRows(t, 'globex')).toEqual(globexBefore);
    });

    it("cannot restore another tenant's snapshot, nor unknown or badly named ones", async () => {
      const before = await counts(t);
      const cases: Array<[Headers, string, unknown, number, string]> = [
        [h['globex']!, '/v1/testing/snapshots/base/restore', undefined, 404, 'SNAPSHOT_NOT_FOUND'],
        [h['acme']!, '/v1/testing/snapshots/nope/restore', undefined, 404, 'SNAPSHOT_NOT_FOUND'],
        [h['acme']!, '/v1/testing/snapshots/bad%20name/restore', undefined, 400, 'VALIDATION_FAILED'],
        [h['acme']!, '/v1/testing/snapshots', { name: 'bad name' }, 400, 'VALIDATION_FAILED'],
        [h['acme']!, '/v1/testing/snapshots', {}, 400, 'VALIDATION_FAILED'],
        [h['acmeWriter']!, '/v1/testing/snapshots', { name: 'w' }, 403, 'ROLE_FORBIDDEN'],
        [h['acmeWriter']!, '/v1/testing/snapshots/base/restore', undefined, 403, 'ROLE_FORBIDDEN'],
        [h['platform']!, '/v1/testing/snapshots', { name: 'p' }, 400, 'TENANT_REQUIRED'],
      ];
      for (const [headers, url, payload, status, code] of cases) {
        const res = await post(headers, url, payload);
        expect({ url, status: res.statusCode, code: res.json().error?.code }).toEqual({ url, status, code });
      }
      expect(await counts(t)).toEqual(before);
    });

    it('refuses a snapshot past TESTING_SNAPSHOT_MAX_ROWS with 413, keeping nothing', async () => {
      await post(h['globex']!, '/v1/testing/factories/run_logs', { count: 320 });
      const res = await post(h['globex']!, '/v1/testing/snapshots', { name: 'big' });
      expect(res.statusCode).toBe(413);
      expect(res.json().error.code).toBe('SNAPSHOT_TOO_LARGE');
      const restore = await post(h['globex']!, '/v1/testing/snapshots/big/restore');
      expect(restore.statusCode).toBe(404);
    });

    it("DELETE /v1/testing/data deletes the caller's tenant's rows only", async () => {
      const globexBefore = await tenantRows(t, 'globex');
      const reader = await t.app.inject({ method: 'DELETE', url: '/v1/testing/data', headers: h['acmeWriter']! });
      expect(reader.statusCode).toBe(403);
      const res = await t.app.inject({ method: 'DELETE', url: '/v1/testing/data', headers: h['acme']! });
      expect(res.statusCode).toBe(200);
      expect(res.json<{ deleted: Record<string, number> }>().deleted['pipelines']).toBeGreaterThan(0);
      expect((await counts(t)).filter((r) => r.tenant_id === 'acme')).toEqual([]);
      expect(await tenantRows(t, 'globex')).toEqual(globexBefore);
      // and a restore brings acme back
      const restored = await post(h['acme']!, '/v1/testing/snapshots/base/restore');
      expect(restored.statusCode).toBe(200);
      expect((await counts(t)).some((r) => r.tenant_id === 'acme')).toBe(true);
    });
  });
});
