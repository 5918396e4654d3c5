import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';

type Json = Record<string, unknown>;

describe('rows API: validated writes', () => {
  let t: TestApp;
  let writer: Record<string, string>;
  beforeAll(async () => {
    t = await createTestApp({ seed: true });
    writer = await t.auth('writer', 'acme');
  });
  afterAll(() => t.close());

  const req = async (method: 'POST' | 'PATCH' | 'DELETE', url: string, payload?: unknown, extra: Record<string, string> = {}) => {
    const res = await t.app.inject({ method, url, payload: payload as never, headers: { ...writer, ...extra } });
    return { status: res.statusCode, body: res.body ? res.json<Json>() : undefined, headers: res.headers };
  };
  const sql = async <R extends Json>(text: string, values: unknown[] = []) => (await t.db.adminQuery<R>(text, values)).rows;
  const snapshot = () => sql('SELECT * FROM pipelines ORDER BY id');
  const code = (r: { body?: Json }) => (r.body?.['error'] as Json | undefined)?.['code'];

  it('inserts one row, filling tenant_id and defaults, and returns it with an ETag', async () => {
    const r = await req('POST', '/v1/tables/pipelines/rows', { name: 'w-one', description: 'd' });
    expect(r.status).toBe(201);
    expect(r.body!['data']).toMatchObject({ name: 'w-one', tenant_id: 'acme', status: 'active' });
    expect(r.headers['etag']).toMatch(/^"\d+"$/);
  });

  it('inserts many rows at once, with a column missing in some rows taking its default', async () => {
    const r = await req('POST', '/v1/tables/pipelines/rows?select=name,status', [{ name: 'w-bulk-1', status: 'paused' }, { name: 'w-bulk-2' }]);
    expect(r.status).toBe(201);
    expect(r.body!['data']).toEqual([
      { name: 'w-bulk-1', status: 'paused' },
      { name: 'w-bulk-2', status: 'active' },
    ]);
  });

  it('upserts on a unique key with on_conflict', async () => {
    const created = await req('POST', '/v1/tables/pipelines/rows', { name: 'w-upsert' });
    const id = (created.body!['data'] as Json)['id'];
    const r = await req('POST', '/v1/tables/pipelines/rows?on_conflict=id', { id, name: 'w-upsert-2', status: 'paused' });
    expect(r.status).toBe(201);
    const rows = await sql('SELECT name, status FROM pipelines WHERE id = $1', [id]);
    expect(rows).toEqual([{ name: 'w-upsert-2', status: 'paused' }]);
    const ignored = await req('POST', '/v1/tables/pipelines/rows?on_conflict=id', { id, name: 'ignored' }, { prefer: 'resolution=ignore-duplicates' });
    expect(ignored.status).toBe(201);
    expect((await sql('SELECT name FROM pipelines WHERE id = $1', [id]))[0]).toEqual({ name: 'w-upsert-2' });
  });

  it('answers return=minimal with no body', async () => {
    const r = await req('POST', '/v1/tables/pipelines/rows', { name: 'w-minimal' }, { prefer: 'return=minimal' });
    expect(r.status).toBe(201);
    expect(r.body).toBeUndefined();
    expect(await sql("SELECT 1 FROM pipelines WHERE name = 'w-minimal'")).toHaveLength(1);
  });

  it('updates by primary key with If-Match, and refuses a stale version with 412', async () => {
    const created = await req('POST', '/v1/tables/pipelines/rows', { name: 'w-occ' });
    const id = (created.body!['data'] as Json)['id'] as number;
    const etag = created.headers['etag'] as string;
    const first = await req('PATCH', `/v1/tables/pipelines/rows/${id}`, { status: 'paused' }, { 'if-match': etag });
    expect(first.status).toBe(200);
    expect(first.body!['data']).toMatchObject({ id, status: 'paused' });
    const stale = await req('PATCH', `/v1/tables/pipelines/rows/${id}`, { status: 'archived' }, { 'if-match': etag });
    expect(stale.status).toBe(412);
    expect(code(stale)).toBe('VERSION_MISMATCH');
    expect(((stale.body!['error'] as Json)['details'] as Json)['current_etag']).toBe(first.headers['etag']);
    expect((await sql('SELECT status FROM pipelines WHERE id = $1', [id]))[0]).toEqual({ status: 'paused' });
    const del = await req('DELETE', `/v1/tables/pipelines/rows/${id}`, undefined, { 'if-match': etag });
    expect(del.status).toBe(412);
    const ok = await req('DELETE', `/v1/tables/pipelines/rows/${id}`, undefined, { 'if-match': first.headers['etag'] as string });
    expect(ok.status).toBe(200);
    expect(await sql('SELECT 1 FROM pipelines WHERE id = $1', [id])).toHaveLength(0);
  });

  it('updates and deletes a filtered set', async () => {
    await req('POST', '/v1/tables/pipelines/rows', [{ name: 'w-set-1' }, { name: 'w-set-2' }]);
    const up = await req('PATCH', '/v1/tables/pipelines/rows?name=like.w-set-*&select=name,status', { status: 'archived' });
    expect(up.status).toBe(200);
    expect((up.body!['data'] as Json[]).map((r) => r['status'])).toEqual(['archived', 'archived']);
    const del = await req('DELETE', '/v1/tables/pipelines/rows?name=like.w-set-*', undefined, { prefer: 'return=minimal' });
    expect(del.status).toBe(204);
    expect(await sql("SELECT 1 FROM pipelines WHERE name LIKE 'w-set-%'")).toHaveLength(0);
  });

  it('cannot update or delete another tenant rows, by key or by filter', async () => {
    const [theirs] = await sql<{ id: number }>("SELECT id::int FROM pipelines WHERE tenant_id = 'globex' LIMIT 1");
    const before = await sql("SELECT * FROM pipelines WHERE tenant_id = 'globex' ORDER BY id");
    expect((await req('PATCH', `/v1/tables/pipelines/rows/${theirs!.id}`, { name: 'stolen' })).status).toBe(404);
    expect((await req('DELETE', `/v1/tables/pipelines/rows/${theirs!.id}`)).status).toBe(404);
    const setUpdate = await req('PATCH', '/v1/tables/pipelines/rows?tenant_id=eq.globex', { name: 'stolen' });
    expect(setUpdate.status).toBe(200);
    expect(setUpdate.body!['data']).toEqual([]);
    const moved = await req('PATCH', '/v1/tables/pipelines/rows?name=eq.w-one', { tenant_id: 'globex' });
    expect(moved.status).toBe(403);
    expect(code(moved)).toBe('FORBIDDEN_BY_DATABASE');
    expect(await sql("SELECT * FROM pipelines WHERE tenant_id = 'globex' ORDER BY id")).toEqual(before);
  });

  describe('bad input: 4xx with a stable code, and nothing written', () => {
    it.each<[string, 'POST' | 'PATCH' | 'DELETE', string, unknown, number, string, Record<string, string>?]>([
      ['unknown column', 'POST', '/v1/tables/pipelines/rows', { name: 'x', nope: 1 }, 400, 'UNKNOWN_COLUMN'],
      ['missing required column', 'POST', '/v1/tables/pipelines/rows', { description: 'x' }, 400, 'MISSING_REQUIRED_COLUMN'],
      ['wrong type', 'POST', '/v1/tables/pipelines/rows', { name: 42 }, 400, 'INVALID_VALUE'],
      ['over-long string', 'POST', '/v1/tables/pipelines/rows', { name: 'x'.repeat(201) }, 400, 'VALUE_TOO_LONG'],
      ['value outside the check', 'POST', '/v1/tables/pipelines/rows', { name: 'x', status: 'exploded' }, 400, 'INVALID_ENUM_VALUE'],
      ['bad timestamp', 'POST', '/v1/tables/pipelines/rows', { name: 'x', created_at: 'soon' }, 400, 'INVALID_VALUE'],
      ['a bulk whose third row is bad', 'POST', '/v1/tables/pipelines/rows', [{ name: 'a' }, { name: 'b' }, { name: 'c', status: 'bad' }], 400, 'INVALID_ENUM_VALUE'],
      ['an empty bulk', 'POST', '/v1/tables/pipelines/rows', [], 400, 'EMPTY_BODY'],
      ['a text/plain body', 'POST', '/v1/tables/pipelines/rows', 'hello', 415, 'UNSUPPORTED_MEDIA_TYPE'],
      ['on_conflict without a unique key', 'POST', '/v1/tables/pipelines/rows?on_conflict=name', { name: 'x' }, 400, 'NO_UNIQUE_KEY'],
      ['on_conflict naming an unknown column', 'POST', '/v1/tables/pipelines/rows?on_conflict=nope', { name: 'x' }, 400, 'UNKNOWN_COLUMN'],
      ['an unfiltered mass update', 'PATCH', '/v1/tables/pipelines/rows', { status: 'archived' }, 400, 'UNFILTERED_MASS_WRITE'],
      ['an unfiltered mass delete', 'DELETE', '/v1/tables/pipelines/rows', undefined, 400, 'UNFILTERED_MASS_WRITE'],
      ['an unfiltered mass delete with only select', 'DELETE', '/v1/tables/pipelines/rows?select=id', undefined, 400, 'UNFILTERED_MASS_WRITE'],
      ['an empty patch', 'PATCH', '/v1/tables/pipelines/rows?id=eq.1', {}, 400, 'EMPTY_BODY'],
      ['a malformed If-Match', 'PATCH', '/v1/tables/pipelines/rows/1', { name: 'x' }, 400, 'INVALID_IF_MATCH', { 'if-match': 'whatever' }],
      ['a write to an unknown table', 'POST', '/v1/tables/nope/rows', { name: 'x' }, 404, 'TABLE_NOT_FOUND'],
      ['a foreign key to a missing row', 'POST', '/v1/tables/pipeline_runs/rows', { pipeline_id: 999999999 }, 409, 'FOREIGN_KEY_VIOLATION'],
      ['a duplicate primary key', 'POST', '/v1/tables/pipelines/rows', { id: 1, name: 'dup' }, 409, 'UNIQUE_VIOLATION'],
      ['SQL in a column name', 'POST', '/v1/tables/pipelines/rows', { 'name") VALUES (1); --': 'x' }, 400, 'UNKNOWN_COLUMN'],
      ['a limit on a filtered delete (it would delete every match)', 'DELETE', '/v1/tables/pipelines/rows?status=eq.active&limit=1', undefined, 400, 'UNSUPPORTED_PARAMETER'],
      ['an order on a filtered update', 'PATCH', '/v1/tables/pipelines/rows?status=eq.active&order=id.desc', { status: 'paused' }, 400, 'UNSUPPORTED_PARAMETER'],
      ['a filter beside a primary key on a delete', 'DELETE', '/v1/tables/pipelines/rows/1?status=eq.paused', undefined, 400, 'UNSUPPORTED_PARAMETER'],
      ['a limit on a delete by primary key', 'DELETE', '/v1/tables/pipelines/rows/1?limit=99999999999999999999&offset=abc', undefined, 400, 'UNSUPPORTED_PARAMETER'],
      ['a stray parameter on an update by primary key', 'PATCH', '/v1/tables/pipelines/rows/1?bucket=fortnight', { status: 'paused' }, 400, 'UNSUPPORTED_PARAMETER'],
    ])('%s -> %i %s', async (_what, method, url, payload, status, expected, headers = {}) => {
      const before = await snapshot();
      const runsBefore = await sql('SELECT count(*)::int AS n FROM pipeline_runs');
      const r = await req(method, url, payload, headers);
      expect(r.status).toBe(status);
      expect(code(r)).toBe(expected);
      expect(await snapshot()).toEqual(before);
      expect(await sql('SELECT count(*)::int AS n FROM pipeline_runs')).toEqual(runsBefore);
    });

    it('refuses a body that is not JSON, with 400 MALFORMED_JSON', async () => {
      const before = await snapshot();
      const res = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: { ...writer, 'content-type': 'application/json' }, payload: '{"name": ' });
      expect(res.statusCode).toBe(400);
      expect(res.json<{ error: Json }>().error['code']).toBe('MALFORMED_JSON');
      expect(await snapshot()).toEqual(before);
    });

    it('refuses a body larger than the limit with 413', async () => {
      const before = await snapshot();
      const res = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: writer, payload: { name: 'x', description: 'y'.repeat(2_000_000) } });
      expect(res.statusCode).toBe(413);
      expect(res.json<{ error: Json }>().error['code']).toBe('BODY_TOO_LARGE');
      expect(await snapshot()).toEqual(before);
    });

    it('refuses a JSON scalar body with 400 VALIDATION_FAILED', async () => {
      const before = await snapshot();
      const res = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: { ...writer, 'content-type': 'application/json' }, payload: '42' });
      expect(res.statusCode).toBe(400);
      expect(res.json<{ error: Json }>().error['code']).toBe('VALIDATION_FAILED');
      expect(await snapshot()).toEqual(before);
    });

    it('names the row and field of a bad bulk row', async () => {
      const r = await req('POST', '/v1/tables/pipelines/rows', [{ name: 'ok' }, { name: 'x'.repeat(300) }]);
      expect(((r.body!['error'] as Json)['details'] as Json)).toMatchObject({ column: 'name', index: 1 });
    });

    it('refuses writes from a reader with 403', async () => {
      const before = await snapshot();
      const res = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: await t.auth('reader'), payload: { name: 'x' } });
      expect(res.statusCode).toBe(403);
      expect(await snapshot()).toEqual(before);
    });
  });
});
