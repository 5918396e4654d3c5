/**
 * One tenant's requests cannot crash, freeze or flood the service (issue: bounded cost per request),
 * on the real PostgreSQL and Redis:
 * - exports that exhaust the export pool, connections killed under requests: the process serves on;
 * - every answer is bounded in bytes inside PostgreSQL (rows API, GraphQL, /v1/sql as JSON bytes,
 *   time series points, change history) and select lists are bounded when parsed;
 * - GraphQL cost analysis is linear (the 26-level fragment doubling document is refused at once);
 * - values that cannot reach PostgreSQL (NUL in an export filter, > 65,535 bind parameters, a
 *   subscription over HTTP) answer 4xx and write nothing.
 */
import { EventEmitter } from 'node:events';
import { Registry } from 'prom-client';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';
import { GuardedSocket, UnreadableResultError, isOversizedResult } from '../src/db/guarded-socket.js';
import { toAppError } from '../src/db/errors.js';
import { installLastResort, UNCAUGHT_METRIC } from '../src/last-resort.js';

const BIG = 700 * 1024; // one description; two of them pass the 1 MiB bound below

describe('bounded cost per request', () => {
  let t: TestApp;
  let reader: Record<string, string>;
  let writer: Record<string, string>;
  let analyst: Record<string, string>;
  const count = async () => Number((await t.db.adminQuery<{ n: string }>('SELECT count(*)::text AS n FROM pipelines')).rows[0]!.n);
  const alive = async () => {
    const h = await t.app.inject({ url: '/healthz' });
    expect(h.statusCode).toBe(200);
    const r = await t.app.inject({ url: '/v1/tables/pipelines/rows?select=id&limit=1', headers: reader });
    expect(r.statusCode).toBe(200);
  };

  beforeAll(async () => {
    t = await createTestApp({
      env: {
        DB_POOL_MAX: '2', // the export (stream) pool holds 2 connections
        LIMITS_ENABLED: 'false', // the pool itself must run out here (the per-tenant caps are tested in limits.test.ts)
        DB_ACQUIRE_TIMEOUT_MS: '1000',
        RESPONSE_MAX_BYTES: String(1024 * 1024),
        SQL_MAX_RESULT_BYTES: String(2 * 1024 * 1024),
        TIMESERIES_MAX_POINTS: '10000',
        ROWS_MAX_LIMIT: '2000',
        BODY_LIMIT_BYTES: String(8 * 1024 * 1024),
      },
    });
    reader = await t.auth('reader', 'acme');
    writer = await t.auth('writer', 'acme');
    analyst = await t.auth('analyst', 'acme');
    await t.db.adminQuery(
      `INSERT INTO pipelines (tenant_id, name, description, created_at)
       SELECT 'acme', 'p' || g, NULL, '2026-01-01T00:00:00Z'::timestamptz + g * interval '1 hour' FROM generate_series(1, 400) g`,
    );
    await t.db.adminQuery(`INSERT INTO pipelines (tenant_id, name, description) VALUES ('acme', 'big1', repeat('x', ${BIG})), ('acme', 'big2', repeat('y', ${BIG}))`);
  }, 120_000);
  afterEach(async () => expectNoCheckedOutClients(t.db));
  afterAll(() => t?.close());

  describe('the process keeps serving', () => {
    it('answers 503 DB_POOL_EXHAUSTED to exports past the export pool, and serves on (no unhandled stream error)', async () => {
      const sql = (i: number) =>
        t.app.inject({ method: 'POST', url: '/v1/sql/export', headers: analyst, payload: { sql: `select pg_sleep(2.5) as s, ${i} as i`, format: 'csv' } });
      const table = () => t.app.inject({ url: '/v1/tables/pipelines/export?select=id&format=csv&limit=1', headers: reader });
      const answers = await Promise.all([sql(1), sql(2), sql(3), sql(4), table()]);
      const statuses = answers.map((a) => a.statusCode).sort();
      expect(statuses.every((s) => s === 200 || s === 503), String(statuses)).toBe(true);
      expect(statuses.filter((s) => s === 200).length, String(statuses)).toBeGreaterThanOrEqual(1);
      const refused = answers.filter((a) => a.statusCode === 503);
      expect(refused.length).toBeGreaterThanOrEqual(1);
      for (const r of refused) expect(r.json().error.code).toBe('DB_POOL_EXHAUSTED');
      // the failed exports' streams were destroyed with an error: give the event loop a turn to show it
      await new Promise((r) => setTimeout(r, 100));
      await alive();
    });

    it('serves on when every tenant connection is killed under running requests', async () => {
      const running = [
        t.app.inject({ method: 'POST', url: '/v1/sql', headers: analyst, payload: { sql: 'select pg_sleep(1.5) as s' } }),
        t.app.inject({ method: 'POST', url: '/v1/sql/export', headers: analyst, payload: { sql: 'select pg_sleep(1.5) as s', format: 'csv' } }),
      ];
      await new Promise((r) => setTimeout(r, 400));
      await t.db.adminQuery("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%pg_sleep%'");
      const answers = await Promise.all(running);
      for (const a of answers) {
        // a read is run again on another connection (200) or answered 503 with a code; never a crash
        expect([200, 503]).toContain(a.statusCode);
        if (a.statusCode === 503) expect(a.json().error.code).toBe('DB_UNAVAILABLE');
      }
      await alive();
    });

    it('a database socket whose answer cannot be parsed fails its own queries, not the process', async () => {
      const socket = new GuardedSocket();
      const failed = new Promise<unknown>((resolve) => socket.on('error', resolve));
      socket.on('data', () => {
        // what pg-protocol throws when one value is longer than V8's largest string
        throw Object.assign(new Error('Cannot create a string longer than 0x1fffffe8 characters'), { code: 'ERR_STRING_TOO_LONG' });
      });
      expect(socket.emit('data', Buffer.from('x'))).toBe(false);
      const err = await failed;
      expect(err).toBeInstanceOf(UnreadableResultError);
      expect(isOversizedResult(err)).toBe(true);
      expect(socket.destroyed).toBe(true);
      const mapped = toAppError(err);
      expect(mapped?.statusCode).toBe(413);
      expect(mapped?.code).toBe('RESPONSE_TOO_LARGE');
    });

    it('last resort: a rejection is logged, counted and served on; an exception drains and exits with 1', async () => {
      const exits: number[] = [];
      const emitter = new EventEmitter();
      const target = Object.assign(emitter, { exit: (code?: number) => exits.push(code ?? 0) }) as unknown as NodeJS.Process;
      const drains: Array<[string, number]> = [];
      const logged: string[] = [];
      const registry = new Registry();
      const log = { error: (_o: unknown, m: string) => logged.push(m), fatal: (_o: unknown, m: string) => logged.push(m) };
      installLastResort({ log: log as never, registry, drainAndExit: (reason, code) => drains.push([reason, code]), target });
      emitter.emit('unhandledRejection', new Error('forgotten await'));
      expect(drains).toEqual([]);
      emitter.emit('uncaughtException', new Error('bug'));
      expect(drains).toEqual([['uncaughtException', 1]]);
      emitter.emit('uncaughtException', new Error('again, while draining'));
      expect(exits).toEqual([1]);
      const metric = await registry.getSingleMetricAsString(UNCAUGHT_METRIC);
      expect(metric).toContain('kind="rejection"} 1');
      expect(metric).toContain('kind="exception"} 2');
      expect(logged).toHaveLength(3);
    });
  });

  describe('rows API', () => {
    it('refuses a select repeating one column under many aliases with 400 TOO_MANY_ALIASES (the 520-alias crash)', async () => {
      const select = Array.from({ length: 520 }, (_, i) => `a${i}:description`).join(',');
      const r = await t.app.inject({ url: `/v1/tables/pipelines/rows?select=${select}`, headers: reader });
      expect(r.statusCode).toBe(400);
      expect(r.json().error.code).toBe('TOO_MANY_ALIASES');
    });

    it('refuses too wide a select (SELECT_TOO_WIDE), too deep embedding (EMBED_TOO_DEEP) and too many embeds (TOO_MANY_EMBEDS)', async () => {
      const wide = Array.from({ length: 101 }, (_, i) => `c${i}`).join(',');
      const cases: Array<[string, string]> = [
        [`select=${wide}`, 'SELECT_TOO_WIDE'],
        ['select=*,*,*,*,*', 'TOO_MANY_ALIASES'],
        ['select=id,pipeline_runs(id,pipelines(id,pipeline_runs(id,pipelines(id))))', 'EMBED_TOO_DEEP'],
        [`select=id,${Array.from({ length: 11 }, (_, i) => `r${i}:pipeline_runs(id)`).join(',')}`, 'TOO_MANY_EMBEDS'],
      ];
      for (const [qs, code] of cases) {
        const r = await t.app.inject({ url: `/v1/tables/pipelines/rows?${qs}`, headers: reader });
        expect(r.statusCode, qs.slice(0, 60)).toBe(400);
        expect(r.json().error.code).toBe(code);
      }
    });

    it('answers 413 RESPONSE_TOO_LARGE past RESPONSE_MAX_BYTES (page and single row), computed inside PostgreSQL', async () => {
      const page = await t.app.inject({ url: '/v1/tables/pipelines/rows?select=id,description&name=like.big*', headers: reader });
      expect(page.statusCode).toBe(413);
      expect(page.json().error.code).toBe('RESPONSE_TOO_LARGE');
      const big = (await t.db.adminQuery<{ id: string }>("SELECT id::text FROM pipelines WHERE name = 'big1'")).rows[0]!.id;
      const one = await t.app.inject({ url: `/v1/tables/pipelines/rows/${big}?select=a:description,b:description`, headers: reader });
      expect(one.statusCode).toBe(413);
      expect(one.json().error.code).toBe('RESPONSE_TOO_LARGE');
      // within the bound: the same rows, fewer bytes
      const ok = await t.app.inject({ url: '/v1/tables/pipelines/rows?select=id,name&name=like.big*', headers: reader });
      expect(ok.statusCode).toBe(200);
      expect(ok.json().data).toHaveLength(2);
      const single = await t.app.inject({ url: `/v1/tables/pipelines/rows/${big}?select=id,description`, headers: reader });
      expect(single.statusCode).toBe(200);
      expect(single.json().data.description).toHaveLength(BIG);
    });
  });

  describe('/v1/sql', () => {
    it('counts the JSON sent, not the row text: 1,000 NULL columns x 5,000 rows is cut by bytes', async () => {
      const cols = Array.from({ length: 1000 }, (_, i) => `null::int AS ${`c${String(i).padStart(4, '0')}`.padEnd(63, 'x')}`).join(', ');
      const r = await t.app.inject({ method: 'POST', url: '/v1/sql', headers: analyst, payload: { sql: `SELECT ${cols} FROM generate_series(1, 5000)` } });
      expect(r.statusCode).toBe(200);
      const body = r.json();
      expect(body.truncated).toBe(true);
      expect(body.truncated_by).toBe('bytes');
      // ~71 KB of JSON per row within 2 MiB: about 29 rows (the row text alone would have let all 5,000 through)
      expect(body.row_count).toBeGreaterThan(10);
      expect(body.row_count).toBeLessThan(40);
      expect(r.rawPayload.length).toBeLessThan(2 * 1024 * 1024 + 200_000);
    });
  });

  describe('time series', () => {
    const base = '/v1/tables/pipelines/timeseries?time=created_at&bucket=1h&fill=zero&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z';
    it('refuses a gap-filled series of more points than TIMESERIES_MAX_POINTS with 400 TOO_MANY_POINTS (400 groups x 744 buckets)', async () => {
      const r = await t.app.inject({ url: `${base}&group=id`, headers: reader });
      expect(r.statusCode).toBe(400);
      expect(r.json().error.code).toBe('TOO_MANY_POINTS');
      expect(r.json().error.details.max).toBe(10000);
    });
    it('still answers a series within the bound', async () => {
      const r = await t.app.inject({ url: `${base}&group=status`, headers: reader });
      expect(r.statusCode).toBe(200);
      expect(r.json().data).toHaveLength(744);
    });
  });

  describe('change history', () => {
    it('ends a page at the byte bound with a next_cursor, and the next page goes on', async () => {
      const start = (await t.db.adminQuery<{ id: string }>("SELECT (id - 1)::text AS id FROM strata.changes WHERE after->>'name' = 'big1'")).rows[0]!.id;
      // the change horizon is lowered by any open capturing transaction on the cluster: wait it out
      const p1 = await vi.waitFor(
        async () => {
          const first = await t.app.inject({ url: `/v1/changes?table=pipelines&after=${start}&limit=50`, headers: reader });
          expect(first.statusCode).toBe(200);
          const body = first.json();
          expect(body.data.length).toBeGreaterThan(0);
          return body;
        },
        { timeout: 10_000, interval: 200 },
      );
      expect(p1.data).toHaveLength(1);
      expect(p1.data[0].after.name).toBe('big1');
      expect(p1.next_cursor).not.toBeNull();
      const second = await t.app.inject({ url: `/v1/changes?table=pipelines&after=${p1.next_cursor}&limit=50`, headers: reader });
      expect(second.statusCode).toBe(200);
      expect(second.json().data.map((e: { after: { name: string } }) => e.after.name)).toEqual(['big2']);
    });
  });

  describe('GraphQL', () => {
    const gql = (headers: Record<string, string>, query: string) => t.app.inject({ method: 'POST', url: '/graphql', headers, payload: { query } });

    it('refuses the 26-level fragment doubling document with QUERY_TOO_COSTLY, and /healthz answers meanwhile', async () => {
      let doc = 'query Q { ...F0 }\n';
      for (let i = 0; i < 26; i++) doc += `fragment F${i} on Query { ...F${i + 1} ...F${i + 1} }\n`;
      doc += 'fragment F26 on Query { __typename }\n';
      expect(Buffer.byteLength(doc)).toBeLessThan(1100);
      const [r, health] = await Promise.all([gql(reader, doc), t.app.inject({ url: '/healthz' })]);
      expect(health.statusCode).toBe(200);
      expect(r.statusCode).toBe(400);
      expect(r.json().errors[0].extensions.code).toBe('QUERY_TOO_COSTLY');
    });

    it('costs every field, __typename included: 1000 x 100 of them are refused', async () => {
      const r = await gql(reader, '{ pipelines(first: 1000) { nodes { pipeline_runs(first: 100) { __typename } } } }');
      expect(r.statusCode).toBe(400);
      expect(r.json().errors[0].extensions.code).toBe('QUERY_TOO_COSTLY');
      expect(r.json().errors[0].extensions.details?.maxCost ?? 100_000).toBe(100_000);
    });

    it('costs _aggregate(group_by:) and timeseries', async () => {
      const aggs = Array.from({ length: 101 }, (_, i) => `a${i}: pipelines_aggregate(group_by: [id]) { groups { count } }`).join(' ');
      const r = await gql(reader, `{ ${aggs} }`);
      expect(r.json().errors[0].extensions.code).toBe('QUERY_TOO_COSTLY');
      const series = Array.from({ length: 101 }, (_, i) => `s${i}: timeseries(table: "pipelines", time: "created_at", bucket: "1d")`).join(' ');
      expect((await gql(reader, `{ ${series} }`)).json().errors[0].extensions.code).toBe('QUERY_TOO_COSTLY');
    });

    it('bounds the answer in bytes (413 RESPONSE_TOO_LARGE) and a time series in points', async () => {
      const r = await gql(reader, '{ pipelines(first: 5, where: { name: { _like: "big%" } }) { nodes { id description } } }');
      expect(r.statusCode).toBe(413);
      expect(r.json().errors[0].extensions.code).toBe('RESPONSE_TOO_LARGE');
      const ts = await gql(reader, '{ timeseries(table: "pipelines", time: "created_at", bucket: "1h", group: "id", fill: "zero", from: "2026-01-01T00:00:00Z", to: "2026-02-01T00:00:00Z") }');
      expect(ts.statusCode).toBe(400);
      expect(ts.json().errors[0].extensions.code).toBe('TOO_MANY_POINTS');
      const ok = await gql(reader, '{ pipelines(first: 5, where: { name: { _like: "big%" } }) { nodes { id name } } }');
      expect(ok.statusCode).toBe(200);
      expect(ok.json().data.pipelines.nodes).toHaveLength(2);
    });

    it('bounds a mutation answer in bytes: 413 RESPONSE_TOO_LARGE, and the write is rolled back', async () => {
      const names = async () => (await t.db.adminQuery<{ name: string }>(`SELECT name FROM pipelines WHERE tenant_id = 'acme' AND name LIKE 'big%' ORDER BY name`)).rows.map((r) => r.name);
      const before = await count();
      // RETURNING two 700 KiB descriptions passes the 1 MiB bound: nothing renamed
      const upd = await gql(writer, 'mutation { update_pipelines(where: { name: { _like: "big%" } }, _set: { name: "bigger" }) { affected_rows returning { id description } } }');
      expect(upd.statusCode).toBe(413);
      expect(upd.json().data).toBeNull();
      expect(upd.json().errors[0].extensions.code).toBe('RESPONSE_TOO_LARGE');
      expect(await names()).toEqual(['big1', 'big2']);
      // an insert returning a row past the bound (sized inside PostgreSQL): nothing inserted
      const ins = await gql(writer, `mutation { insert_pipelines(objects: [{ name: "huge", description: "${'z'.repeat(1100 * 1024)}" }]) { id description } }`);
      expect(ins.statusCode).toBe(413);
      expect(ins.json().errors[0].extensions.code).toBe('RESPONSE_TOO_LARGE');
      expect(await count()).toBe(before);
      // several fields share one budget: each of the two fits alone, both together do not; both roll back
      const two = await gql(writer, 'mutation { a: update_pipelines_by_pk(pk_columns: { id: "0" }, _set: { name: "x" }) { id } b: update_pipelines(where: { name: { _eq: "big1" } }, _set: { name: "big1b" }) { returning { description } } c: update_pipelines(where: { name: { _eq: "big2" } }, _set: { name: "big2b" }) { returning { description } } }');
      expect(two.statusCode).toBe(413);
      expect(two.json().errors[0].extensions.code).toBe('RESPONSE_TOO_LARGE');
      expect(await names()).toEqual(['big1', 'big2']);
      // the same write with a small answer goes through, affected_rows counts every row
      const small = await gql(writer, 'mutation { update_pipelines(where: { name: { _like: "big%" } }, _set: { name: "bigger" }) { affected_rows returning { id } } }');
      expect(small.statusCode).toBe(200);
      expect(small.json().data.update_pipelines.affected_rows).toBe(2);
      expect(small.json().data.update_pipelines.returning).toHaveLength(2);
      expect(await names()).toEqual(['bigger', 'bigger']);
      await t.db.adminQuery(`UPDATE pipelines SET name = CASE WHEN description LIKE 'x%' THEN 'big1' ELSE 'big2' END WHERE tenant_id = 'acme' AND name = 'bigger'`);
      await alive();
    });

    it('answers a subscription sent over HTTP POST with 400 SUBSCRIPTION_NEEDS_WEBSOCKET', async () => {
      const r = await gql(reader, 'subscription { changes { id } }');
      expect(r.statusCode).toBe(400);
      expect(r.json().errors[0].extensions.code).toBe('SUBSCRIPTION_NEEDS_WEBSOCKET');
    });
  });

  describe('values that cannot reach PostgreSQL', () => {
    it('refuses a NUL in a streamed export filter and in an export job with 400 INVALID_TEXT', async () => {
      const before = await count();
      const streamed = await t.app.inject({ url: '/v1/tables/pipelines/export?format=csv&name=eq.%00x', headers: reader });
      expect(streamed.statusCode).toBe(400);
      expect(streamed.json().error.code).toBe('INVALID_TEXT');
      const job = await t.app.inject({ method: 'POST', url: '/v1/exports', headers: reader, payload: { table: 'pipelines', filters: { name: 'eq.\u0000x' }, format: 'csv' } });
      expect(job.statusCode).toBe(400);
      expect(job.json().error.code).toBe('INVALID_TEXT');
      const sqlJob = await t.app.inject({ method: 'POST', url: '/v1/sql/export', headers: analyst, payload: { sql: 'select $1::text as v', params: ['a\u0000b'], format: 'csv' } });
      expect(sqlJob.statusCode).toBe(400);
      expect(sqlJob.json().error.code).toBe('INVALID_TEXT');
      expect(await count()).toBe(before);
    });

    it('refuses more than 65,535 bind parameters with 400 TOO_MANY_PARAMETERS before sending, writing nothing', async () => {
      const before = await count();
      const rows = Array.from({ length: 17_000 }, (_, i) => ({ name: `n${i}`, description: 'd', status: 'active', created_at: '2026-01-01T00:00:00Z' }));
      const r = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: writer, payload: rows });
      expect(r.statusCode).toBe(400);
      expect(r.json().error.code).toBe('TOO_MANY_PARAMETERS');
      expect(r.json().error.details.parameters).toBe(68_000);
      expect(await count()).toBe(before);
    });
  });
});
