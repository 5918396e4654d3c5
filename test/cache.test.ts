/**
 * The result cache against the real Redis and PostgreSQL: a hit after a miss, a miss after a write
 * by another request (REST row write, POST /v1/transactions, GraphQL mutation, a write to an
 * embedded table), entries never shared between tenants or roles, the opt-in API, and reads served
 * uncached while Redis is down.
 */
import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';
import { startRedis, stopRedis } from './helpers/redis-server.js';
import { freePort } from './helpers/net.js';

type Reply = Awaited<ReturnType<TestApp['app']['inject']>>;
const ids = (r: Reply) => (r.json().data as Array<{ id: number }>).map((x) => x.id);

describe('result cache', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ seed: true, env: { CACHE_TABLES: 'pipelines', CACHE_PREFIX: `test-cache-${randomUUID()}` } });
  });
  afterAll(async () => {
    await t?.close();
  });

  const get = async (url: string, role: 'reader' | 'writer' = 'reader', tenant = 'acme') => t.app.inject({ url, headers: await t.auth(role, tenant) });

  it('misses, then hits with the same body; parameter order does not matter', async () => {
    const first = await get('/v1/tables/pipelines/rows?limit=5&order=id&status=eq.active');
    expect(first.statusCode).toBe(200);
    expect(first.headers['x-cache']).toBe('miss');
    const second = await get('/v1/tables/pipelines/rows?status=eq.active&order=id&limit=5');
    expect(second.headers['x-cache']).toBe('hit');
    expect(second.body).toBe(first.body);
    expect(ids(second).length).toBeGreaterThan(0);
  });

  it('misses after a row written by another request (REST) and shows the new row', async () => {
    const url = '/v1/tables/pipelines/rows?order=id.desc&limit=3';
    await get(url);
    expect((await get(url)).headers['x-cache']).toBe('hit');
    const w = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: await t.auth('writer'), payload: { name: 'cache-rest-write' } });
    expect(w.statusCode).toBe(201);
    const after = await get(url);
    expect(after.headers['x-cache']).toBe('miss');
    expect(ids(after)[0]).toBe(w.json().data.id);
    expect((await get(url)).headers['x-cache']).toBe('hit');
  });

  it('misses after a POST /v1/transactions batch', async () => {
    const url = '/v1/tables/pipelines/rows?order=id.desc&limit=2&select=id,name';
    await get(url);
    expect((await get(url)).headers['x-cache']).toBe('hit');
    const tx = await t.app.inject({
      method: 'POST',
      url: '/v1/transactions',
      headers: await t.auth('writer'),
      payload: { operations: [{ op: 'insert', table: 'pipelines', rows: { name: 'cache-tx-write' } }] },
    });
    expect(tx.statusCode).toBe(200);
    const after = await get(url);
    expect(after.headers['x-cache']).toBe('miss');
    expect(after.json().data[0].name).toBe('cache-tx-write');
  });

  it('misses after an undo of a change (POST /v1/changes/{id}/undo) and shows the restored row', async () => {
    const w = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: await t.auth('writer'), payload: { name: 'cache-undo-before' } });
    expect(w.statusCode).toBe(201);
    const id = w.json().data.id as number;
    const patch = await t.app.inject({ method: 'PATCH', url: `/v1/tables/pipelines/rows/${id}`, headers: await t.auth('writer'), payload: { name: 'cache-undo-after' } });
    expect(patch.statusCode).toBe(200);
    const url = `/v1/tables/pipelines/rows?id=eq.${id}&select=name`;
    await get(url);
    const cached = await get(url);
    expect(cached.headers['x-cache']).toBe('hit');
    expect(cached.json().data[0].name).toBe('cache-undo-after');
    const changes = await t.app.inject({ url: '/v1/changes?table=pipelines&op=update&limit=1000', headers: await t.auth('reader') });
    const change = (changes.json().data as Array<{ id: string; pk: { id: number } }>).filter((c) => Number(c.pk.id) === id).at(-1);
    expect(change).toBeDefined();
    const undo = await t.app.inject({ method: 'POST', url: `/v1/changes/${change!.id}/undo`, headers: await t.auth('writer') });
    expect(undo.statusCode).toBe(200);
    expect(undo.json().data.table).toBe('pipelines');
    const after = await get(url);
    expect(after.headers['x-cache']).toBe('miss');
    expect(after.json().data[0].name).toBe('cache-undo-before');
  });

  it('misses after a GraphQL mutation', async () => {
    const url = '/v1/tables/pipelines/rows?order=id.desc&limit=1&select=name';
    await get(url);
    expect((await get(url)).headers['x-cache']).toBe('hit');
    const m = await t.app.inject({
      method: 'POST',
      url: '/graphql',
      headers: await t.auth('writer'),
      payload: { query: 'mutation { insert_pipelines_one(object: { name: "cache-gql-write" }) { id } }' },
    });
    expect(m.statusCode).toBe(200);
    expect(m.json().errors).toBeUndefined();
    const after = await get(url);
    expect(after.headers['x-cache']).toBe('miss');
    expect(after.json().data[0].name).toBe('cache-gql-write');
  });

  it('misses after a write to a table the select embeds', async () => {
    const url = '/v1/tables/pipelines/rows?order=id&limit=1&select=id,pipeline_runs(id,status)';
    const first = await get(url);
    expect(first.statusCode).toBe(200);
    expect((await get(url)).headers['x-cache']).toBe('hit');
    const pipeline = first.json().data[0] as { id: number; pipeline_runs: Array<{ id: number; status: string }> };
    const run = pipeline.pipeline_runs[0];
    expect(run).toBeDefined();
    const next = run!.status === 'cancelled' ? 'failed' : 'cancelled';
    const w = await t.app.inject({ method: 'PATCH', url: `/v1/tables/pipeline_runs/rows/${run!.id}`, headers: await t.auth('writer'), payload: { status: next } });
    expect(w.statusCode).toBe(200);
    const after = await get(url);
    expect(after.headers['x-cache']).toBe('miss');
    expect(after.json().data[0].pipeline_runs.find((r: { id: number }) => r.id === run!.id).status).toBe(next);
  });

  it('caches a row by key with its ETag and misses after that row changes', async () => {
    const list = await get('/v1/tables/pipelines/rows?order=id&limit=1');
    const id = ids(list)[0]!;
    const url = `/v1/tables/pipelines/rows/${id}`;
    const first = await get(url);
    expect(first.headers['x-cache']).toBe('miss');
    const hit = await get(url);
    expect(hit.headers['x-cache']).toBe('hit');
    expect(hit.headers['etag']).toBe(first.headers['etag']);
    const w = await t.app.inject({ method: 'PATCH', url, headers: await t.auth('writer'), payload: { description: 'changed by cache test' } });
    expect(w.statusCode).toBe(200);
    const after = await get(url);
    expect(after.headers['x-cache']).toBe('miss');
    expect(after.json().data.description).toBe('changed by cache test');
    expect(after.headers['etag']).not.toBe(first.headers['etag']);
  });

  it("never serves another tenant's entry, nor another role's", async () => {
    const url = '/v1/tables/pipelines/rows?order=id&limit=50';
    const acme = await get(url, 'reader', 'acme');
    expect((await get(url, 'reader', 'acme')).headers['x-cache']).toBe('hit');
    const globex = await get(url, 'reader', 'globex');
    expect(globex.headers['x-cache']).toBe('miss');
    const globexIds = ids(globex);
    const acmeIds = ids(acme);
    expect(globexIds.length).toBeGreaterThan(0);
    expect(globexIds.filter((i) => acmeIds.includes(i))).toEqual([]);
    const owners = await t.db.adminQuery<{ tenant_id: string }>('SELECT DISTINCT tenant_id FROM pipelines WHERE id = ANY($1)', [globexIds]);
    expect(owners.rows.map((r) => r.tenant_id)).toEqual(['globex']);
    // a write by acme leaves globex's entry valid, and the reverse
    await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: await t.auth('writer', 'acme'), payload: { name: 'acme-only' } });
    expect((await get(url, 'reader', 'globex')).headers['x-cache']).toBe('hit');
    expect((await get(url, 'writer', 'acme')).headers['x-cache']).toBe('miss');
  });

  it('does not cache tables that did not opt in (X-Cache: bypass)', async () => {
    const r = await get('/v1/tables/run_logs/rows?limit=2');
    expect(r.statusCode).toBe(200);
    expect(r.headers['x-cache']).toBe('bypass');
    expect((await get('/v1/tables/run_logs/rows?limit=2')).headers['x-cache']).toBe('bypass');
  });

  it('opts a table in and out through the admin API (platform_admin only)', async () => {
    const admin = await t.auth('platform_admin', null);
    const denied = await t.app.inject({ method: 'PUT', url: '/v1/admin/cache/tables/run_steps', headers: await t.auth('admin') });
    expect(denied.statusCode).toBe(403);
    const unknown = await t.app.inject({ method: 'PUT', url: '/v1/admin/cache/tables/no_such_table', headers: admin });
    expect(unknown.statusCode).toBe(404);
    expect(unknown.json().error.code).toBe('TABLE_NOT_FOUND');
    expect((await t.db.adminQuery('SELECT 1 FROM strata.cache_tables')).rowCount).toBe(0);

    expect((await t.app.inject({ method: 'PUT', url: '/v1/admin/cache/tables/run_steps', headers: admin })).statusCode).toBe(204);
    const listed = await t.app.inject({ url: '/v1/admin/cache/tables', headers: admin });
    expect(listed.json().data.map((e: { table: string; source: string }) => `${e.table}:${e.source}`)).toEqual(['run_steps:admin', 'pipelines:config']);
    expect((await get('/v1/tables/run_steps/rows?limit=3')).headers['x-cache']).toBe('miss');
    expect((await get('/v1/tables/run_steps/rows?limit=3')).headers['x-cache']).toBe('hit');
    expect((await t.app.inject({ method: 'DELETE', url: '/v1/admin/cache/tables/run_steps', headers: admin })).statusCode).toBe(204);
    expect((await get('/v1/tables/run_steps/rows?limit=3')).headers['x-cache']).toBe('bypass');
  });

  it('counts reads by outcome in strata_cache_reads_total', async () => {
    const text = await t.registry.metrics();
    for (const status of ['hit', 'miss', 'bypass']) expect(text).toMatch(new RegExp(`strata_cache_reads_total\\{status="${status}"\\} [1-9]`));
  });

  it('does not cache errors', async () => {
    const bad = await get('/v1/tables/pipelines/rows?nope=eq.1');
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.code).toBe('UNKNOWN_COLUMN');
    expect((await get('/v1/tables/pipelines/rows?nope=eq.1')).statusCode).toBe(400);
  });
});

describe('result cache with Redis down', () => {
  let port: number;
  let t: TestApp;
  let redis: ChildProcess;
  beforeAll(async () => {
    port = await freePort();
    redis = await startRedis(port);
    t = await createTestApp({ seed: true, env: { REDIS_URL: `redis://127.0.0.1:${port}`, CACHE_TABLES: 'pipelines' } });
  });
  afterAll(async () => {
    await t?.close();
    if (redis) await stopRedis(redis);
  });

  it('serves reads uncached at once (bypass), writes still succeed, and caching resumes when Redis is back', async () => {
    const reader = await t.auth('reader');
    const url = '/v1/tables/pipelines/rows?order=id.desc&limit=2';
    expect((await t.app.inject({ url, headers: reader })).headers['x-cache']).toBe('miss');
    expect((await t.app.inject({ url, headers: reader })).headers['x-cache']).toBe('hit');

    await stopRedis(redis);
    const down = await t.app.inject({ url, headers: reader });
    expect(down.statusCode).toBe(200);
    expect(down.headers['x-cache']).toBe('bypass');
    const w = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: await t.auth('writer'), payload: { name: 'written-while-cache-down' } });
    expect(w.statusCode).toBe(201);
    const fresh = await t.app.inject({ url, headers: reader });
    expect(fresh.headers['x-cache']).toBe('bypass');
    expect(fresh.json().data[0].name).toBe('written-while-cache-down');

    redis = await startRedis(port);
    const deadline = Date.now() + 10_000;
    let status: string | undefined;
    while (Date.now() < deadline) {
      const r = await t.app.inject({ url, headers: reader });
      expect(r.json().data[0].name).toBe('written-while-cache-down');
      status = r.headers['x-cache'] as string;
      if (status === 'hit') break;
      await new Promise((res) => setTimeout(res, 200));
    }
    expect(status).toBe('hit');
  });

  it('never serves a stale entry after a write whose version bump timed out (Redis paused for writes)', async () => {
    const reader = await t.auth('reader');
    const url = '/v1/tables/pipelines/rows?order=id.desc&limit=1&select=name';
    await t.app.inject({ url, headers: reader });
    expect((await t.app.inject({ url, headers: reader })).headers['x-cache']).toBe('hit');
    const admin = new Redis(`redis://127.0.0.1:${port}`);
    await admin.call('CLIENT', 'PAUSE', '1500', 'WRITE');
    const w = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: await t.auth('writer'), payload: { name: 'written-while-paused' } });
    expect(w.statusCode).toBe(201);
    const deadline = Date.now() + 10_000;
    const seen: string[] = [];
    while (Date.now() < deadline) {
      const r = await t.app.inject({ url, headers: reader });
      expect(r.json().data[0].name).toBe('written-while-paused');
      seen.push(r.headers['x-cache'] as string);
      if (seen[seen.length - 1] === 'hit') break;
      await new Promise((res) => setTimeout(res, 200));
    }
    await admin.quit();
    expect(seen[0]).toBe('bypass');
    expect(seen[seen.length - 1]).toBe('hit');
  });
});
