import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';

type Json = Record<string, unknown>;

describe('rows API: reads with the PostgREST syntax', () => {
  let t: TestApp;
  let acme: Record<string, string>;
  beforeAll(async () => {
    t = await createTestApp({ seed: true });
    acme = await t.auth('reader', 'acme');
  });
  afterAll(() => t.close());

  const get = async (url: string, headers = acme) => {
    const res = await t.app.inject({ url, headers });
    return { status: res.statusCode, body: res.json<Json>(), headers: res.headers };
  };
  const sql = async <R extends Json>(text: string, values: unknown[] = []) => (await t.db.adminQuery<R>(text, values)).rows;

  it('lists the registry with a JSON Schema per table', async () => {
    const { status, body } = await get('/v1/tables');
    expect(status).toBe(200);
    const tables = body['data'] as Array<{ name: string; json_schema: Json; relationships: Array<{ name: string }> }>;
    expect(tables.map((x) => x.name)).toEqual(['customers', 'documents', 'pipeline_runs', 'pipelines', 'run_logs', 'run_steps']);
    const p = tables.find((x) => x.name === 'pipelines')!;
    expect(p.json_schema['required']).toEqual(['name']);
    expect((p.json_schema['properties'] as Json)['status']).toMatchObject({ enum: ['active', 'paused', 'archived'] });
    expect(p.relationships.map((r) => r.name).sort()).toEqual(['customers', 'pipeline_runs']);
    const one = await get('/v1/tables/run_steps');
    expect(one.status).toBe(200);
    expect((one.body['data'] as Json)['primary_key']).toEqual(['id']);
  });

  it('selects columns with aliases and filters with eq, in, is, like', async () => {
    const { status, body } = await get('/v1/tables/pipelines/rows?select=id,title:name,status&status=eq.paused&name=like.pipeline-*&description=not.is.null&order=id');
    expect(status).toBe(200);
    const data = body['data'] as Json[];
    const expected = await sql<{ id: number; name: string }>(
      "SELECT id::int, name FROM pipelines WHERE tenant_id = 'acme' AND status = 'paused' AND name LIKE 'pipeline-%' AND description IS NOT NULL ORDER BY id",
    );
    expect(data.map((d) => [d['id'], d['title']])).toEqual(expected.map((e) => [e.id, e.name]));
    expect(Object.keys(data[0]!)).toEqual(['id', 'title', 'status']);
    const ids = expected.slice(0, 2).map((e) => e.id);
    const inRes = await get(`/v1/tables/pipelines/rows?select=id&id=in.(${ids.join(',')})`);
    expect((inRes.body['data'] as Json[]).map((d) => d['id'])).toEqual(ids);
  });

  it('supports or=(...) with nested and(...), gte/lt and ordering with nulls placement', async () => {
    const { body } = await get('/v1/tables/pipeline_runs/rows?select=id,status&or=(status.eq.failed,and(status.eq.queued,id.lt.100000))&order=status.desc,id.asc&limit=1000');
    const expected = await sql<{ id: number; status: string }>(
      "SELECT id::int, status FROM pipeline_runs WHERE tenant_id='acme' AND (status = 'failed' OR (status = 'queued' AND id < 100000)) ORDER BY status DESC, id ASC",
    );
    expect((body['data'] as Json[]).map((d) => [d['id'], d['status']])).toEqual(expected.map((e) => [e.id, e.status]));
  });

  it('embeds many-to-one and one-to-many relationships with their own order and limit, in one statement', async () => {
    const res = await t.app.inject({
      url: '/v1/tables/pipelines/rows?select=id,name,pipeline_runs(id,status,run_steps(name))&limit=3&order=id&pipeline_runs.order=id.desc&pipeline_runs.limit=2',
      headers: acme,
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['server-timing']).toContain('desc="1 queries"');
    const data = res.json<{ data: Array<{ id: number; pipeline_runs: Array<{ id: number; run_steps: Json[] }> }> }>().data;
    expect(data).toHaveLength(3);
    for (const p of data) {
      const runs = await sql<{ id: number }>('SELECT id::int FROM pipeline_runs WHERE pipeline_id = $1 ORDER BY id DESC LIMIT 2', [p.id]);
      expect(p.pipeline_runs.map((r) => r.id)).toEqual(runs.map((r) => r.id));
      for (const r of p.pipeline_runs) {
        const steps = await sql<{ n: number }>('SELECT count(*)::int AS n FROM run_steps WHERE run_id = $1', [r.id]);
        expect(r.run_steps).toHaveLength(steps[0]!.n);
      }
    }
    const child = await get('/v1/tables/run_logs/rows?select=id,run:pipeline_runs(id,pipeline:pipelines(name))&limit=2');
    const first = (child.body['data'] as Array<{ run: { id: number; pipeline: { name: string } } }>)[0]!;
    expect(typeof first.run.pipeline.name).toBe('string');
  });

  it('filters embedded rows', async () => {
    const { body } = await get('/v1/tables/pipelines/rows?select=id,pipeline_runs(id,status)&limit=5&pipeline_runs.status=eq.failed');
    for (const p of body['data'] as Array<{ pipeline_runs: Array<{ status: string }> }>) {
      expect(p.pipeline_runs.every((r) => r.status === 'failed')).toBe(true);
    }
  });

  it('pages with opaque keyset cursors through every row exactly once, in order', async () => {
    const seen: number[] = [];
    let url = '/v1/tables/run_logs/rows?select=id,at&order=at.desc,id&limit=97';
    for (let guard = 0; guard < 100; guard++) {
      const { status, body } = await get(url);
      expect(status).toBe(200);
      seen.push(...(body['data'] as Array<{ id: number }>).map((d) => d.id));
      const next = body['next_cursor'] as string | null;
      if (!next) break;
      url = `/v1/tables/run_logs/rows?select=id,at&order=at.desc,id&limit=97&cursor=${encodeURIComponent(next)}`;
    }
    const expected = await sql<{ id: number }>("SELECT id::int FROM run_logs WHERE tenant_id = 'acme' ORDER BY at DESC, id");
    expect(seen).toEqual(expected.map((e) => e.id));
  });

  it('pages correctly over a nullable column with nulls first and last', async () => {
    for (const order of ['finished_at.asc.nullsfirst', 'finished_at.desc.nullslast', 'started_at.desc']) {
      const seen: number[] = [];
      let cursor: string | null = null;
      do {
        const { body } = await get(`/v1/tables/pipeline_runs/rows?select=id&order=${order}&limit=40${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
        seen.push(...(body['data'] as Array<{ id: number }>).map((d) => d.id));
        cursor = body['next_cursor'] as string | null;
      } while (cursor);
      const [col, dir, nulls] = order.split('.');
      const sqlOrder = `${col} ${dir!.toUpperCase()}${nulls ? ` NULLS ${nulls.replace('nulls', '').toUpperCase()}` : ''}, id`;
      const expected = await sql<{ id: number }>(`SELECT id::int FROM pipeline_runs WHERE tenant_id = 'acme' ORDER BY ${sqlOrder}`);
      expect(seen).toEqual(expected.map((e) => e.id));
    }
  });

  it('counts exactly or by the planner estimate when asked', async () => {
    const exact = await get('/v1/tables/run_logs/rows?select=id&level=eq.error&count=exact&limit=1');
    const n = await sql<{ n: number }>("SELECT count(*)::int AS n FROM run_logs WHERE tenant_id = 'acme' AND level = 'error'");
    expect(exact.body['total']).toBe(n[0]!.n);
    const est = await get('/v1/tables/run_logs/rows?select=id&count=estimated&limit=1');
    expect(typeof est.body['total']).toBe('number');
  });

  it('reads one row by primary key with an ETag, and 404 for another tenant row', async () => {
    const [mine] = await sql<{ id: number }>("SELECT id::int FROM pipelines WHERE tenant_id = 'acme' LIMIT 1");
    const [theirs] = await sql<{ id: number }>("SELECT id::int FROM pipelines WHERE tenant_id = 'globex' LIMIT 1");
    const ok = await get(`/v1/tables/pipelines/rows/${mine!.id}?select=id,name,pipeline_runs(id)`);
    expect(ok.status).toBe(200);
    expect((ok.body['data'] as Json)['id']).toBe(mine!.id);
    expect(ok.headers['etag']).toMatch(/^"\d+"$/);
    const other = await get(`/v1/tables/pipelines/rows/${theirs!.id}`);
    expect(other.status).toBe(404);
    expect((other.body['error'] as Json)['code']).toBe('ROW_NOT_FOUND');
  });

  it('never returns another tenant row through filters, embedding or counts', async () => {
    const globexRun = await sql<{ id: number }>("SELECT id::int FROM pipeline_runs WHERE tenant_id = 'globex' LIMIT 1");
    const { body } = await get(`/v1/tables/run_logs/rows?select=tenant_id,pipeline_runs(tenant_id)&run_id=eq.${globexRun[0]!.id}&count=exact`);
    expect(body['data']).toEqual([]);
    expect(body['total']).toBe(0);
    const all = await get('/v1/tables/pipelines/rows?select=tenant_id,pipeline_runs(tenant_id)&limit=1000&count=exact');
    for (const p of all.body['data'] as Array<{ tenant_id: string; pipeline_runs: Array<{ tenant_id: string }> }>) {
      expect(p.tenant_id).toBe('acme');
      expect(p.pipeline_runs.every((r) => r.tenant_id === 'acme')).toBe(true);
    }
    const n = await sql<{ n: number }>("SELECT count(*)::int AS n FROM pipelines WHERE tenant_id = 'acme'");
    expect(all.body['total']).toBe(n[0]!.n);
  });

  describe('bad input: 400 with a stable code naming the problem', () => {
    it.each<[string, number, string]>([
      ['/v1/tables/nope/rows', 404, 'TABLE_NOT_FOUND'],
      ['/v1/tables/pipelines/rows?select=id,nope', 400, 'UNKNOWN_COLUMN'],
      ['/v1/tables/pipelines/rows?nope=eq.1', 400, 'UNKNOWN_COLUMN'],
      ['/v1/tables/pipelines/rows?id=zz.1', 400, 'UNKNOWN_OPERATOR'],
      ['/v1/tables/pipelines/rows?id=1', 400, 'INVALID_FILTER'],
      ['/v1/tables/pipelines/rows?id=in.1,2', 400, 'MALFORMED_IN_LIST'],
      ['/v1/tables/pipelines/rows?id=in.(1,"2)', 400, 'INVALID_SYNTAX'],
      ['/v1/tables/pipelines/rows?id=eq.abc', 400, 'INVALID_FILTER_VALUE'],
      ['/v1/tables/pipelines/rows?created_at=gt.yesterday-ish', 400, 'INVALID_FILTER_VALUE'],
      ['/v1/tables/pipelines/rows?id=in.(1,x)', 400, 'INVALID_FILTER_VALUE'],
      ['/v1/tables/pipelines/rows?status=is.maybe', 400, 'INVALID_FILTER_VALUE'],
      ['/v1/tables/pipelines/rows?name=cs.{a}', 400, 'INVALID_OPERATOR'],
      ['/v1/tables/pipelines/rows?limit=100000', 400, 'LIMIT_TOO_LARGE'],
      ['/v1/tables/pipelines/rows?limit=0', 400, 'INVALID_LIMIT'],
      ['/v1/tables/pipelines/rows?limit=-5', 400, 'VALIDATION_FAILED'],
      ['/v1/tables/pipelines/rows?order=name.sideways', 400, 'INVALID_ORDER'],
      ['/v1/tables/pipelines/rows?order=nope', 400, 'UNKNOWN_COLUMN'],
      ['/v1/tables/pipelines/rows?count=maybe', 400, 'VALIDATION_FAILED'],
      ['/v1/tables/pipelines/rows?cursor=garbage', 400, 'INVALID_CURSOR'],
      ['/v1/tables/pipelines/rows?select=id,pipeline_runs(nope)', 400, 'UNKNOWN_COLUMN'],
      ['/v1/tables/pipelines/rows?select=id,secrets(id)', 400, 'UNKNOWN_RELATIONSHIP'],
      ['/v1/tables/pipelines/rows?pipeline_runs.limit=2', 400, 'UNKNOWN_EMBED'],
      ['/v1/tables/pipelines/rows?or=a.eq.1', 400, 'INVALID_FILTER'],
      ['/v1/tables/pipelines/rows/abc', 400, 'INVALID_FILTER_VALUE'],
      // values only PostgreSQL can judge: its error, answered as a 400
      ['/v1/tables/pipelines/rows?name=fts.%21%21', 400, 'INVALID_FTS_QUERY'],
      ['/v1/tables/pipelines/rows?name=fts.a%20%26%20%7C', 400, 'INVALID_FTS_QUERY'],
      ['/v1/tables/pipelines/rows?name=fts(no_such_config).x', 400, 'UNKNOWN_NAME'],
      ['/v1/tables/pipelines/rows?name=like.%5C', 400, 'INVALID_VALUE'],
      ['/v1/tables/pipelines/rows?name=eq.a%00b', 400, 'INVALID_TEXT'],
      // SQL in identifiers, values, order and select
      ['/v1/tables/pipelines%3BDROP%20TABLE%20pipelines/rows', 404, 'TABLE_NOT_FOUND'],
      ['/v1/tables/pipelines/rows?select=id,name%3Bdrop%20table%20pipelines', 400, 'INVALID_SELECT'],
      ['/v1/tables/pipelines/rows?select=(select%201)', 400, 'INVALID_SELECT'],
      ['/v1/tables/pipelines/rows?order=id%3Bdelete%20from%20pipelines', 400, 'INVALID_IDENTIFIER'],
      ['/v1/tables/pipelines/rows?order=id)%20desc', 400, 'INVALID_SYNTAX'],
      ['/v1/tables/pipelines/rows?name%22%3D1--=eq.1', 400, 'INVALID_IDENTIFIER'],
    ])('GET %s -> %i %s', async (url, status, code) => {
      const before = await sql<{ n: number }>('SELECT count(*)::int AS n FROM pipelines');
      const res = await get(url);
      expect(res.status).toBe(status);
      expect((res.body['error'] as Json)['code']).toBe(code);
      expect(String((res.body['error'] as Json)['message']).length).toBeGreaterThan(5);
      const after = await sql<{ n: number }>('SELECT count(*)::int AS n FROM pipelines');
      expect(after).toEqual(before);
    });

    it('treats SQL in a filter value as data', async () => {
      const res = await get("/v1/tables/pipelines/rows?name=eq.x'%3B%20DELETE%20FROM%20pipelines%3B--");
      expect(res.status).toBe(200);
      expect(res.body['data']).toEqual([]);
      const n = await sql<{ n: number }>('SELECT count(*)::int AS n FROM pipelines');
      expect(n[0]!.n).toBeGreaterThan(0);
    });

    it('refuses a cursor that was tampered with or made for another ordering', async () => {
      const first = await get('/v1/tables/pipelines/rows?select=id&limit=2&order=id');
      const cursor = first.body['next_cursor'] as string;
      const [body, mac] = cursor.split('.');
      const forged = Buffer.from(JSON.stringify(['pipelines|id.asc.', ['0']])).toString('base64url');
      for (const bad of [`${forged}.${mac}`, `${body}.${mac!.slice(0, -2)}xx`, `${body}`]) {
        const res = await get(`/v1/tables/pipelines/rows?select=id&limit=2&order=id&cursor=${encodeURIComponent(bad)}`);
        expect(res.status).toBe(400);
        expect((res.body['error'] as Json)['code']).toBe('INVALID_CURSOR');
      }
      const otherOrder = await get(`/v1/tables/pipelines/rows?select=id&limit=2&order=name&cursor=${encodeURIComponent(cursor)}`);
      expect(otherOrder.status).toBe(400);
      expect((otherOrder.body['error'] as Json)['code']).toBe('INVALID_CURSOR');
    });
  });

  it('keeps only parents with a matching embedded row for rel!inner (count included)', async () => {
    const { status, body } = await get('/v1/tables/pipelines/rows?select=id,pipeline_runs!inner(id,status)&pipeline_runs.status=eq.failed&limit=1000&count=exact');
    expect(status).toBe(200);
    const expected = await sql<{ id: number }>(
      "SELECT p.id::int FROM pipelines p WHERE p.tenant_id = 'acme' AND EXISTS (SELECT 1 FROM pipeline_runs r WHERE r.tenant_id = p.tenant_id AND r.pipeline_id = p.id AND r.status = 'failed') ORDER BY p.id",
    );
    const data = body['data'] as Array<{ id: number; pipeline_runs: unknown[] }>;
    expect(expected.length).toBeGreaterThan(0);
    expect(data.map((d) => d.id)).toEqual(expected.map((e) => e.id));
    expect(data.every((d) => d.pipeline_runs.length > 0)).toBe(true);
    expect(body['total']).toBe(expected.length);
  });

  it('refuses a bad regular expression and an impossible cast with 400, not 500', async () => {
    const regex = await get('/v1/tables/pipelines/rows?name=match.(((');
    expect(regex.status).toBe(400);
    expect((regex.body['error'] as Json)['code']).toBe('INVALID_REGEX');
    const cast = await get('/v1/tables/pipeline_runs/rows?select=id,params::int');
    expect(cast.status).toBe(400);
    expect((cast.body['error'] as Json)['code']).toBe('INVALID_CAST');
  });
});
