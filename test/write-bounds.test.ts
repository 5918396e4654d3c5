/**
 * Issue 13: a write's answer is bounded in bytes like a read's (rows API and /rest/v1). A filtered
 * PATCH or DELETE with a body of a few bytes can return every row it touched, and `select` aliases
 * repeat a column up to four times: without a bound, one small request answered hundreds of
 * megabytes (or ended the process). Past ROWS_MAX_RESPONSE_BYTES the write fails inside PostgreSQL
 * before any row is sent: 413 RESPONSE_TOO_LARGE, and nothing is written (no row, no change event).
 * `return=minimal` sends no rows, so it is not bounded. /rest/v1 reads are bounded as /v1's are.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';

const MAX = 64 * 1024;
const DESC = 'x'.repeat(1000); // 200 rows of it: about 200 KB of JSON, three times the bound

describe('byte bounds of write answers', () => {
  let t: TestApp;
  let writer: Record<string, string>;
  let globex: Record<string, string>;
  beforeAll(async () => {
    t = await createTestApp({ env: { ROWS_MAX_RESPONSE_BYTES: String(MAX), RESPONSE_MAX_BYTES: String(MAX) } });
    writer = await t.auth('writer', 'acme');
    globex = await t.auth('writer', 'globex');
    await t.db.adminQuery(
      `INSERT INTO pipelines (tenant_id, name, description, status)
       SELECT tn, tn || '-' || i, $1, 'paused' FROM generate_series(1, 200) i, unnest(ARRAY['acme', 'globex']) tn`,
      [DESC],
    );
  });
  afterAll(() => t.close());
  afterEach(() => expectNoCheckedOutClients(t.db));

  /** What the table and the change log hold: a write refused must change neither. */
  const state = async () =>
    (
      await t.db.adminQuery<{ s: string }>(
        `SELECT (SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM pipelines p) || ':' || (SELECT count(*) FROM strata.changes) AS s`,
      )
    ).rows[0]!.s;
  const paused = async (tenant: string) =>
    Number((await t.db.adminQuery<{ n: string }>("SELECT count(*) AS n FROM pipelines WHERE tenant_id = $1 AND status = 'paused'", [tenant])).rows[0]!.n);
  const send = (method: 'POST' | 'PATCH' | 'DELETE' | 'GET', url: string, headers: Record<string, string>, payload?: unknown) =>
    t.app.inject({ method, url, headers, ...(payload === undefined ? {} : { payload: payload as never }) });
  const expectTooLarge = (res: { statusCode: number; body: string; json: () => unknown }) => {
    expect(res.statusCode, res.body).toBe(413);
    const err = (res.json() as { error?: { code: string; message: string }; code?: string; message?: string });
    const code = err.error?.code ?? err.code;
    expect(code).toBe('RESPONSE_TOO_LARGE');
    expect(err.error?.message ?? err.message).toMatch(/ROWS_MAX_RESPONSE_BYTES/);
  };

  describe('/v1 rows API', () => {
    it('a filtered PATCH whose returned rows pass the bound answers 413 and writes nothing', async () => {
      const before = await state();
      expectTooLarge(await send('PATCH', '/v1/tables/pipelines/rows?status=eq.paused', writer, { status: 'active' }));
      expectTooLarge(await send('PATCH', '/v1/tables/pipelines/rows?status=eq.paused', { ...writer, prefer: 'return=representation' }, { status: 'active' }));
      expect(await state()).toBe(before);
    });

    it('a filtered DELETE whose returned rows pass the bound answers 413 and deletes nothing', async () => {
      const before = await state();
      expectTooLarge(await send('DELETE', '/v1/tables/pipelines/rows?name=like.acme-1*', writer));
      expect(await state()).toBe(before);
    });

    it('aliases multiply a small insert past the bound: 413, nothing inserted', async () => {
      const before = await state();
      const rows = Array.from({ length: 20 }, (_, i) => ({ name: `wb-ins-${i}`, description: DESC }));
      // 20 KB of body, 80 KB of answer (four aliases of description)
      const select = 'a:description,b:description,c:description,d:description';
      expectTooLarge(await send('POST', `/v1/tables/pipelines/rows?select=${select}`, writer, rows));
      expect(await state()).toBe(before);
      // within the bound the same insert goes through
      const ok = await send('POST', '/v1/tables/pipelines/rows?select=id,a:description', writer, rows.slice(0, 10));
      expect(ok.statusCode, ok.body).toBe(201);
      expect(ok.json<{ data: unknown[] }>().data).toHaveLength(10);
    });

    it('the same writes with return=minimal or a small select are not refused, and touch only the caller’s rows', async () => {
      const globexBefore = await paused('globex');
      const small = await send('PATCH', '/v1/tables/pipelines/rows?status=eq.paused&name=like.acme-1*&select=id', writer, { status: 'active' });
      expect(small.statusCode, small.body).toBe(200);
      expect(small.json<{ data: unknown[] }>().data).toHaveLength(111); // acme-1, acme-10..19, acme-100..199
      const minimal = await send('PATCH', '/v1/tables/pipelines/rows?status=eq.paused', { ...writer, prefer: 'return=minimal' }, { status: 'active' });
      expect(minimal.statusCode, minimal.body).toBe(204);
      expect(await paused('acme')).toBe(0);
      expect(await paused('globex')).toBe(globexBefore); // RLS: globex's rows untouched
      // a single row by primary key with return=minimal keeps its ETag
      const id = (await t.db.adminQuery<{ id: string }>("SELECT id::text AS id FROM pipelines WHERE tenant_id = 'acme' ORDER BY id LIMIT 1")).rows[0]!.id;
      const one = await send('PATCH', `/v1/tables/pipelines/rows/${id}`, { ...writer, prefer: 'return=minimal' }, { status: 'paused' });
      expect(one.statusCode, one.body).toBe(204);
      expect(one.headers['etag']).toMatch(/^"\d+"$/);
      // another tenant's row by primary key: not found, with or without rows returned
      const theirs = (await t.db.adminQuery<{ id: string }>("SELECT id::text AS id FROM pipelines WHERE tenant_id = 'globex' LIMIT 1")).rows[0]!.id;
      for (const prefer of ['return=minimal', 'return=representation']) {
        const r = await send('PATCH', `/v1/tables/pipelines/rows/${theirs}`, { ...writer, prefer }, { status: 'active' });
        expect(r.statusCode, prefer).toBe(404);
      }
      expect(await paused('globex')).toBe(globexBefore);
    });

    it('a batch (POST /v1/transactions) whose update answers past the bound is rolled back whole', async () => {
      const before = await state();
      const res = await send('POST', '/v1/transactions', writer, {
        operations: [
          { op: 'insert', table: 'pipelines', rows: { name: 'wb-batch' } },
          { op: 'update', table: 'pipelines', filters: { tenant_id: 'eq.acme' }, set: { description: `${DESC}!` } },
        ],
      });
      expect(res.statusCode, res.body).toBe(413);
      expect(res.json<{ error: { code: string } }>().error.code).toBe('RESPONSE_TOO_LARGE');
      expect(await state()).toBe(before);
    });
  });

  describe('/rest/v1 (PostgREST face)', () => {
    it('PATCH and DELETE with return=representation past the bound answer 413 and write nothing', async () => {
      const before = await state();
      expectTooLarge(await send('PATCH', '/rest/v1/pipelines?tenant_id=eq.globex', { ...globex, prefer: 'return=representation' }, { status: 'active' }));
      expectTooLarge(await send('DELETE', '/rest/v1/pipelines?tenant_id=eq.globex', { ...globex, prefer: 'return=representation' }));
      const rows = Array.from({ length: 100 }, (_, i) => ({ name: `wb-rest-${i}`, description: DESC }));
      expectTooLarge(await send('POST', '/rest/v1/pipelines', { ...globex, prefer: 'return=representation' }, rows));
      expect(await state()).toBe(before);
    });

    it('without return=representation no row leaves PostgreSQL: the write goes through and Content-Range counts it', async () => {
      const n = await paused('globex');
      const res = await send('PATCH', '/rest/v1/pipelines?status=eq.paused', { ...globex, prefer: 'return=minimal' }, { status: 'active' });
      expect(res.statusCode, res.body).toBe(204);
      expect(res.headers['content-range']).toBe(`0-${n - 1}/*`);
      expect(await paused('globex')).toBe(0);
      // max-affected still counts the rows (and rolls back past it)
      const strict = await send('PATCH', '/rest/v1/pipelines?status=eq.active', { ...globex, prefer: 'handling=strict, max-affected=5' }, { status: 'paused' });
      expect(strict.statusCode, strict.body).toBe(400);
      expect(await paused('globex')).toBe(0);
    });

    it('a read past the bound answers 413 (it was unbounded: 1,000 rows x four aliases)', async () => {
      const res = await send('GET', '/rest/v1/pipelines?select=a:description,b:description,c:description,d:description', globex);
      expectTooLarge(res);
      const ok = await send('GET', '/rest/v1/pipelines?select=id&limit=5', globex);
      expect(ok.statusCode).toBe(200);
      expect(ok.json<unknown[]>()).toHaveLength(5);
    });
  });

  describe('search (issue 13 item 2: bounded, not tested before)', () => {
    it('answers 413 RESPONSE_TOO_LARGE when the hits pass RESPONSE_MAX_BYTES, and the hits within it', async () => {
      // 200 rows of globex's match, each with 1 KB of description: 100 hits of 1 KB, the bound is 64 KB
      const res = await send('GET', '/v1/search?table=pipelines&q=globex&limit=100', globex);
      expect(res.statusCode, res.body).toBe(413);
      expect(res.json<{ error: { code: string; message: string } }>().error).toMatchObject({ code: 'RESPONSE_TOO_LARGE' });
      expect(res.json<{ error: { message: string } }>().error.message).toMatch(/RESPONSE_MAX_BYTES/);
      const ok = await send('GET', '/v1/search?table=pipelines&q=globex&limit=10', globex);
      expect(ok.statusCode, ok.body).toBe(200);
      expect(ok.json<{ data: unknown[] }>().data).toHaveLength(10);
    });
  });
});
