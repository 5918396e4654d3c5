/**
 * Streamed exports end to end on the real PostgreSQL: GET /v1/tables/{table}/export and
 * POST /v1/sql/export, byte for byte against expectations computed in JavaScript, tenant isolation,
 * bad input, statement timeouts before and during the stream, and a client that disconnects.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';
import { ACME_ROWS, acmeRow, allAcme, allGlobex, expectedCsv, expectedNdjson, seedPipelines } from './helpers/export-data.js';

describe('streamed exports', () => {
  let t: TestApp;
  let reader: Record<string, string>;
  let analyst: Record<string, string>;
  let pipelinesFingerprint: () => Promise<string>;

  beforeAll(async () => {
    t = await createTestApp({ env: { DB_POOL_MAX: '6' } });
    await seedPipelines(t.db);
    reader = await t.auth('reader', 'acme');
    analyst = await t.auth('analyst', 'acme');
    pipelinesFingerprint = async () =>
      (await t.db.adminQuery<{ f: string }>("SELECT count(*) || ':' || coalesce(sum(hashtext(name || coalesce(description, '~'))), 0) AS f FROM pipelines")).rows[0]!.f;
  }, 60_000);
  afterEach(async () => expectNoCheckedOutClients(t.db));
  afterAll(() => t?.close());

  const exportUrl = (qs: string) => `/v1/tables/pipelines/export?${qs}`;

  it(`exports all ${ACME_ROWS} rows of a table as CSV, byte for byte (quoting, NULL vs empty, unicode), with a file name`, async () => {
    const res = await t.app.inject({ url: exportUrl('format=csv&select=id,name,description'), headers: reader });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/csv; charset=utf-8');
    expect(res.headers['content-disposition']).toMatch(/^attachment; filename="pipelines-\d{8}-\d{6}\.csv"$/);
    const expected = expectedCsv(allAcme());
    expect(res.body.length).toBe(expected.length);
    expect(res.body === expected).toBe(true);
    expect(res.rawPayload.equals(Buffer.from(expected, 'utf8'))).toBe(true);
  });

  it('exports the same rows as NDJSON, one JSON object per line, in primary-key order', async () => {
    const res = await t.app.inject({ url: exportUrl('format=ndjson&select=id,name,description'), headers: reader });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('application/x-ndjson; charset=utf-8');
    expect(res.headers['content-disposition']).toMatch(/filename="pipelines-\d{8}-\d{6}\.ndjson"/);
    const lines = res.body.split('\n');
    expect(lines.pop()).toBe('');
    expect(lines).toHaveLength(ACME_ROWS);
    expect(res.body === expectedNdjson(allAcme())).toBe(true);
    expect(JSON.parse(lines[3]!)).toEqual(acmeRow(4)); // a multi-line name survives as \n inside JSON
  });

  it('applies filters, order, aliases and limit like the rows API', async () => {
    const res = await t.app.inject({ url: exportUrl('select=id,title:name&id=lt.30&description=not.is.null&order=id.desc&limit=3'), headers: reader });
    expect(res.statusCode).toBe(200);
    const want = allAcme()
      .filter((r) => r.id < 30 && r.description !== null)
      .sort((a, b) => b.id - a.id)
      .slice(0, 3);
    expect(res.body).toBe(['id,title\n', ...want.map((r) => `${r.id},${/[",\n\r]/.test(r.name) ? `"${r.name.replace(/"/g, '""')}"` : r.name}\n`)].join(''));
    const ors = await t.app.inject({ url: exportUrl('format=ndjson&select=id&or=(id.eq.2,id.eq.4,id.eq.3)'), headers: reader });
    expect(ors.body).toBe('{"id":2}\n{"id":4}\n');
    const list = await t.app.inject({ url: exportUrl("format=ndjson&select=id&id=in.(6,2,7)&name=like.*m*"), headers: reader });
    expect(list.body).toBe('{"id":2}\n{"id":6}\n');
  });

  it('nests embedded relationships in NDJSON and refuses them in CSV with 400 EXPORT_EMBED_UNSUPPORTED', async () => {
    const nd = await t.app.inject({ url: exportUrl('format=ndjson&select=id,pipeline_runs(id)&id=eq.2'), headers: reader });
    expect(nd.statusCode).toBe(200);
    expect(nd.body).toBe('{"id":2,"pipeline_runs":[]}\n');
    const csv = await t.app.inject({ url: exportUrl('format=csv&select=id,pipeline_runs(id)'), headers: reader });
    expect(csv.statusCode).toBe(400);
    expect(csv.json().error.code).toBe('EXPORT_EMBED_UNSUPPORTED');
  });

  it("never shows another tenant's rows, whatever the filter", async () => {
    const globex = await t.app.inject({ url: exportUrl('select=id,name,description'), headers: await t.auth('reader', 'globex') });
    expect(globex.statusCode).toBe(200);
    expect(globex.body).toBe(expectedCsv(allGlobex()));
    const probe = await t.app.inject({ url: exportUrl('select=id,name&tenant_id=eq.globex'), headers: reader });
    expect(probe.body).toBe('id,name\n');
    const sql = await t.app.inject({
      method: 'POST',
      url: '/v1/sql/export',
      headers: analyst,
      payload: { sql: "SELECT id, name FROM pipelines WHERE name LIKE 'globex%' OR tenant_id <> 'acme'", format: 'csv' },
    });
    expect(sql.statusCode).toBe(200);
    expect(sql.body).toBe('id,name\n');
  });

  it('exports analyst SQL with parameters as CSV and NDJSON, parameters bound as values', async () => {
    const payload = { sql: "SELECT g AS n, $1::text || g AS s, CASE WHEN g % 2 = 0 THEN NULL ELSE '' END AS e FROM generate_series(1, $2::int) g", params: ["it's, \"x\"\n", 4] };
    const csv = await t.app.inject({ method: 'POST', url: '/v1/sql/export', headers: analyst, payload: { ...payload, format: 'csv' } });
    expect(csv.statusCode).toBe(200);
    expect(csv.headers['content-disposition']).toMatch(/filename="sql-export-\d{8}-\d{6}\.csv"/);
    const s = (g: number) => `"it's, ""x""\n${g}"`;
    expect(csv.body).toBe(`n,s,e\n1,${s(1)},""\n2,${s(2)},\n3,${s(3)},""\n4,${s(4)},\n`);
    const nd = await t.app.inject({ method: 'POST', url: '/v1/sql/export', headers: analyst, payload: { ...payload, format: 'ndjson' } });
    expect(nd.body.trim().split('\n').map((l) => JSON.parse(l))).toEqual(
      [1, 2, 3, 4].map((g) => ({ n: g, s: `it's, "x"\n${g}`, e: g % 2 === 0 ? null : '' })),
    );
    // A "$1" inside a string constant is text, not a parameter.
    const lit = await t.app.inject({ method: 'POST', url: '/v1/sql/export', headers: analyst, payload: { sql: "SELECT '$1' AS a, $1::int AS b", params: [7], format: 'ndjson' } });
    expect(lit.body).toBe('{"a":"$1","b":7}\n');
  });

  describe('refuses bad input with 4xx and a code, writing nothing', () => {
    const cases: Array<[string, string, number, string]> = [
      ['a bad format', exportUrl('format=xlsx'), 400, 'INVALID_EXPORT_FORMAT'],
      ['an unknown column in a filter', exportUrl('nope=eq.1'), 400, 'UNKNOWN_COLUMN'],
      ['a filter value of the wrong type', exportUrl('id=eq.abc'), 400, 'INVALID_FILTER_VALUE'],
      ['an unknown operator', exportUrl('id=zz.1'), 400, 'UNKNOWN_OPERATOR'],
      ['an unknown select column', exportUrl('select=id,nope'), 400, 'UNKNOWN_COLUMN'],
      ['a cursor', exportUrl('cursor=abc'), 400, 'INVALID_EXPORT_PARAM'],
      ['a timeout beyond the maximum', exportUrl('timeout_ms=999999999'), 400, 'INVALID_TIMEOUT'],
      ['a non-numeric timeout', exportUrl('timeout_ms=soon'), 400, 'INVALID_TIMEOUT'],
      ['an unknown table', '/v1/tables/nope/export', 404, 'TABLE_NOT_FOUND'],
    ];
    for (const [what, url, status, code] of cases) {
      it(`answers ${what} with ${status} ${code}`, async () => {
        const before = await pipelinesFingerprint();
        const res = await t.app.inject({ url, headers: reader });
        expect(res.statusCode).toBe(status);
        expect(res.json().error.code).toBe(code);
        expect(res.headers['content-disposition']).toBeUndefined();
        expect(await pipelinesFingerprint()).toBe(before);
      });
    }

    it('answers SQL export problems: 403 for a reader, 400 for writes, bad SQL, unknown columns and bad formats', async () => {
      const before = await pipelinesFingerprint();
      const post = (payload: Record<string, unknown>, headers = analyst) => t.app.inject({ method: 'POST', url: '/v1/sql/export', headers, payload });
      const forbidden = await post({ sql: 'SELECT 1', format: 'csv' }, reader);
      expect(forbidden.statusCode).toBe(403);
      expect(forbidden.json().error.code).toBe('ROLE_FORBIDDEN');
      const cases: Array<[Record<string, unknown>, number, string]> = [
        [{ sql: "DELETE FROM pipelines WHERE tenant_id = 'acme'", format: 'csv' }, 400, 'SQL_NOT_READ_ONLY'],
        [{ sql: 'SELECT nope FROM pipelines', format: 'csv' }, 400, 'SQL_ERROR'],
        [{ sql: 'SELEC 1', format: 'csv' }, 400, 'SQL_SYNTAX_ERROR'],
        [{ sql: 'SELECT $1::int', params: [], format: 'csv' }, 400, 'SQL_PARAMS_MISMATCH'],
        [{ sql: 'SELECT 1', format: 'parquet' }, 400, 'INVALID_EXPORT_FORMAT'],
        [{ sql: 'SELECT * FROM strata.tenants', format: 'csv' }, 403, 'SQL_FORBIDDEN_SCHEMA'],
        [{ sql: 'SELECT 1; SELECT 2', format: 'csv' }, 400, 'SQL_MULTIPLE_STATEMENTS'],
      ];
      for (const [payload, status, code] of cases) {
        const res = await post(payload);
        expect(res.statusCode, JSON.stringify(payload)).toBe(status);
        expect(res.json().error.code).toBe(code);
      }
      expect(await pipelinesFingerprint()).toBe(before);
    });
  });

  it('answers 504 STATEMENT_TIMEOUT when the timeout fires before the first row', async () => {
    const sql = await t.app.inject({ method: 'POST', url: '/v1/sql/export', headers: analyst, payload: { sql: 'SELECT pg_sleep(5)', format: 'csv', timeout_ms: 200 } });
    expect(sql.statusCode).toBe(504);
    expect(sql.json().error.code).toBe('STATEMENT_TIMEOUT');
    // Sorting every row by a non-indexed expression takes longer than 1 ms before the first row.
    const table = await t.app.inject({ url: exportUrl('order=description.desc,name.asc&timeout_ms=1'), headers: reader });
    expect(table.statusCode).toBe(504);
    expect(table.json().error.code).toBe('STATEMENT_TIMEOUT');
  });

  describe('over a real HTTP connection', () => {
    let base: URL;
    beforeAll(async () => {
      await t.app.listen({ host: '127.0.0.1', port: 0 });
      base = new URL(`http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`);
    });

    const activeBackends = async (marker: string) =>
      (
        await t.db.adminQuery<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
          [marker],
        )
      ).rows[0]!.n;

    const startExport = (marker: string, timeoutMs?: number) =>
      new Promise<{ req: http.ClientRequest; res: http.IncomingMessage }>((resolve, reject) => {
        const body = JSON.stringify({
          // generate_series in the select list yields row by row (in FROM it would be materialized first)
          sql: `SELECT g, '${marker}' AS marker, repeat('x', 200) AS pad FROM (SELECT generate_series(1, 500000000) AS g) s`,
          format: 'csv',
          ...(timeoutMs ? { timeout_ms: timeoutMs } : {}),
        });
        const req = http.request(new URL('/v1/sql/export', base), {
          method: 'POST',
          headers: { ...analyst, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
        });
        req.on('response', (res) => resolve({ req, res }));
        req.on('error', reject);
        req.end(body);
      });

    it('cancels the query and frees the connection when the client disconnects mid-stream', async () => {
      const marker = `disconnect-${Date.now()}`;
      const { req, res } = await startExport(marker);
      expect(res.statusCode).toBe(200);
      res.pause(); // a slow client: PostgreSQL is held back by backpressure, the query stays active
      expect(await activeBackends(marker)).toBe(1);
      req.destroy();
      await vi.waitFor(async () => expect(await activeBackends(marker)).toBe(0), { timeout: 5_000, interval: 50 });
      await expectNoCheckedOutClients(t.db);
      // The pool serves the next export normally.
      const next = await t.app.inject({ url: exportUrl('select=id&id=eq.2'), headers: reader });
      expect(next.body).toBe('id\n2\n');
    });

    it('cancels the query when the client disconnects before the first row', async () => {
      const marker = `early-${Date.now()}`;
      const body = JSON.stringify({ sql: `SELECT '${marker}' AS m, pg_sleep(60)`, format: 'csv' });
      const req = http.request(new URL('/v1/sql/export', base), {
        method: 'POST',
        headers: { ...analyst, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      });
      req.on('error', () => undefined);
      req.end(body);
      await vi.waitFor(async () => expect(await activeBackends(marker)).toBe(1), { timeout: 5_000, interval: 50 });
      req.destroy();
      await vi.waitFor(async () => expect(await activeBackends(marker)).toBe(0), { timeout: 5_000, interval: 50 });
      await expectNoCheckedOutClients(t.db);
    });

    it('aborts the response (no clean end) when the timeout fires mid-stream, and frees the connection', async () => {
      const marker = `midstream-${Date.now()}`;
      const { res } = await startExport(marker, 1_000);
      expect(res.statusCode).toBe(200);
      let bytes = 0;
      const outcome = await new Promise<string>((resolve) => {
        res.on('data', (c: Buffer) => (bytes += c.length));
        res.on('end', () => resolve('end'));
        res.on('aborted', () => resolve('aborted'));
        res.on('error', () => resolve('aborted'));
      });
      expect(outcome).toBe('aborted');
      expect(bytes).toBeGreaterThan(0);
      await vi.waitFor(async () => expect(await activeBackends(marker)).toBe(0), { timeout: 5_000, interval: 50 });
    });
  });
});
