/**
 * A sweep of malformed input over every route in openapi/openapi.json, as an outside client would
 * send it: hostile path parameters, nonsense query strings, bodies that are not JSON, not objects,
 * too deep, or of the wrong types, under every role. No answer may be a 5xx (501 for an optional
 * extension that is absent and 503 for a dependency that is down are the only server answers
 * allowed, and they must carry an error code), every error has the `{ error: { code, message } }`
 * shape, and nothing is written anywhere.
 *
 * Oversized and amplifying inputs (AMPLIFYING_QUERIES, OVERSIZED_BODIES and the last hostile
 * bodies) go to every route too, and writes get amplifying query strings with a valid body (the
 * select list is what multiplies a write's answer). The PostgREST face (/rest/v1, left out of the
 * OpenAPI document) is swept as well; its errors have PostgREST's `{ code, message }` shape.
 *
 * The per-route tests elsewhere assert the exact code of each bad input; this one makes sure no
 * route was left out. The PostgREST face (/rest/v1, hidden from the OpenAPI document) gets the same
 * sweep plus its own headers (Prefer, Accept, Range, profiles), with PostgREST's flat error shape.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';

interface OpenApi {
  paths: Record<string, Record<string, unknown>>;
}

const spec = JSON.parse(readFileSync(path.join(import.meta.dirname, '..', 'openapi', 'openapi.json'), 'utf8')) as OpenApi;

/** Routes that change the whole database or never end by design: covered by their own tests. */
const SKIP = new Set(['post /v1/admin/migrations/up', 'post /v1/admin/migrations/down', 'post /v1/admin/migrations/redo', 'post /v1/admin/restores/']);

const HOSTILE_SEGMENTS = [
  "x'; DROP TABLE public.pipelines; --",
  '..%2F..%2Fetc%2Fpasswd',
  '%00',
  'a'.repeat(3000),
  'b'.repeat(500),
  '%F0%9F%92%A5',
  '-1',
  '99999999999999999999999999',
];

const HOSTILE_QUERIES = [
  'limit=-1&after=%25%25%25&select=(((&order=id.sideways',
  'limit=99999999999999999999&offset=abc&format=xml&from=yesterday&to=never&bucket=fortnight',
  "q=%27%29%3B%20DROP%20TABLE%20x%3B--&id=in.(1,2&name=zz.3&or=(id.eq.1",
  `select=${'a,'.repeat(2000)}a&cursor=eyJub3QiOiJ2YWxpZCJ9`,
  'table=no_such_table&op=truncate&after=-5&kind=nonsense&status=what',
];

/** The 26-level fragment doubling document (~1 KB): 2^26 fields if fragments were walked per spread. */
const DOUBLING_FRAGMENTS =
  'query Q { ...F0 }\n' + Array.from({ length: 26 }, (_, i) => `fragment F${i} on Query { ...F${i + 1} ...F${i + 1} }\n`).join('') + 'fragment F26 on Query { __typename }\n';

/**
 * Oversized and amplifying inputs, on every route: answers that would multiply (520 aliases of one
 * column, deep and repeated embeds, a gap-filled series over every row, a wide analyst result, a
 * GraphQL document whose fragments double 26 times) must be refused or bounded, never a 5xx.
 */
const AMPLIFYING_QUERIES = [
  `select=${Array.from({ length: 520 }, (_, i) => `a${i}:description`).join(',')}`,
  'select=*,pipeline_runs(*,pipelines(*,pipeline_runs(*,pipelines(*,pipeline_runs(*)))))',
  `select=id,${Array.from({ length: 12 }, (_, i) => `r${i}:pipeline_runs(*)`).join(',')}&limit=1000`,
  'select=*,*,*,*,*,*,*,*&limit=1000',
  'time=created_at&bucket=1h&group=id&fill=zero&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z',
  `query=${encodeURIComponent(DOUBLING_FRAGMENTS)}`,
];

/** Bodies past BODY_LIMIT_BYTES (1 MiB by default): a bulk insert of 90,000 rows, one 2 MB string. */
const OVERSIZED_BODIES: { body: string; type: string }[] = [
  { body: `[${Array.from({ length: 90_000 }, (_, i) => `{"name":"n${i}"}`).join(',')}]`, type: 'application/json' },
  { body: JSON.stringify({ name: 'x'.repeat(2_000_000), sql: 'select 1', query: '{ __typename }' }), type: 'application/json' },
];

/**
 * Amplifying query strings sent with a valid write body: a write's answer repeats what the select
 * asks for once per row written, so these must be refused before the write runs (or bounded).
 */
const AMPLIFYING_WRITE_QUERIES = [
  `id=eq.999999999&select=${Array.from({ length: 520 }, (_, i) => `a${i}:description`).join(',')}`,
  'id=eq.999999999&select=*,pipeline_runs(*,pipelines(*,pipeline_runs(*,pipelines(*,pipeline_runs(*)))))',
  `select=${Array.from({ length: 520 }, (_, i) => `a${i}:description`).join(',')}`,
];
const WRITE_BODY = { body: JSON.stringify({ name: 'amplified', status: 'paused' }), type: 'application/json' };

/** The PostgREST face's routes (not in the OpenAPI document). */
const POSTGREST_SWEPT_ROUTES = ['GET', 'POST', 'PATCH', 'DELETE'].flatMap((method) => [
  { method, path: '/rest/v1/pipelines' },
  { method, path: '/rest/v1/{table}' },
  ...(method === 'GET' || method === 'POST' ? [{ method, path: '/rest/v1/rpc/{fn}' }] : []),
]);

const WIDE_SQL = `SELECT ${Array.from({ length: 300 }, (_, i) => `null::int AS ${`c${String(i).padStart(3, '0')}`.padEnd(63, 'x')}`).join(', ')} FROM generate_series(1, 2000)`;

const deep = (n: number): unknown => (n === 0 ? 1 : { a: deep(n - 1) });

const HOSTILE_BODIES: { body: string; type: string }[] = [
  { body: '{"unterminated": ', type: 'application/json' },
  { body: 'not json at all', type: 'application/json' },
  { body: '[]', type: 'application/json' },
  { body: 'null', type: 'application/json' },
  { body: '"a string"', type: 'application/json' },
  { body: JSON.stringify(deep(200)), type: 'application/json' },
  { body: JSON.stringify({ name: 12, sql: 5, operations: 'x', query: { nested: true }, url: 7, table: ['a'], rows: 'no' }), type: 'application/json' },
  { body: '<xml/>', type: 'application/xml' },
  // amplifying: a GraphQL document whose fragments double 26 times, an analyst result of 300 NULL
  // columns with 63-character names (bounded as JSON bytes), a NUL in values pasted into exports
  { body: JSON.stringify({ query: DOUBLING_FRAGMENTS, sql: WIDE_SQL, format: 'ndjson', table: 'pipelines', filters: { name: 'eq.\u0000x' } }), type: 'application/json' },
  { body: JSON.stringify({ sql: 'select $1::text as v', params: ['a\u0000b'], format: 'csv', query: 'subscription { changes { id } }' }), type: 'application/json' },
];

/** The PostgREST face's routes (hidden from openapi.json); {fn} is a function that does not exist. */
const POSTGREST_ROUTES = [
  { method: 'GET', path: '/rest/v1/' },
  { method: 'GET', path: '/rest/v1/{table}' },
  { method: 'HEAD', path: '/rest/v1/{table}' },
  { method: 'POST', path: '/rest/v1/{table}' },
  { method: 'PATCH', path: '/rest/v1/{table}' },
  { method: 'DELETE', path: '/rest/v1/{table}' },
  { method: 'GET', path: '/rest/v1/rpc/{fn}' },
  { method: 'POST', path: '/rest/v1/rpc/{fn}' },
];

/** PostgREST's query syntax gone wrong. */
const POSTGREST_QUERIES = [
  'select=id,pipeline_runs!nope(*)&pipeline_runs.limit=-1&order=pipeline_runs(id).up',
  'id=not.in.(1,2&or=(id.eq.1,and(name.eq.x)&and=)&name=like(any).{',
  'select=id::bogus_type,name->>a->b::int[]&id=cs.{1,2&name=fts(xx).a b',
  'select=count(),id.sum()&limit=1e9&offset=-3',
  'select=...pipeline_runs(*)&columns=a b&on_conflict=;drop',
  // a long list (matching no row: a DELETE with it is a valid request)
  `id=in.(${Array.from({ length: 1500 }, (_, i) => -1 - i).join(',')})`,
];

/** PostgREST's headers gone wrong (each sent with a plain URL). */
const POSTGREST_HEADERS: Record<string, string>[] = [
  { prefer: 'return=representation, count=exact, tx=rollback, handling=strict, max-affected=-1' },
  { prefer: 'handling=strict, timezone=../../etc/passwd, params=single-object, missing=default, resolution=merge-duplicates' },
  { accept: 'application/vnd.pgrst.object+json' },
  { accept: 'bogus/type;q=2, text/csv;q=0' },
  { range: 'items=9-1', 'range-unit': 'items' },
  { 'accept-profile': 'strata', 'content-profile': 'pg_catalog' },
];

describe('bad input sweep over every route', () => {
  let t: TestApp;
  let base: string;
  const headers: Record<string, Record<string, string>> = {};

  const snapshot = async () =>
    (
      await t.db.adminQuery<{ s: string }>(
        `SELECT string_agg(n || '=' || c, ',' ORDER BY n) AS s FROM (
           SELECT 'pipelines' AS n, count(*) AS c FROM public.pipelines
           UNION ALL SELECT 'pipeline_runs', count(*) FROM public.pipeline_runs
           UNION ALL SELECT 'run_steps', count(*) FROM public.run_steps
           UNION ALL SELECT 'run_logs', count(*) FROM public.run_logs
           UNION ALL SELECT 'tenants', count(*) FROM strata.tenants
           UNION ALL SELECT 'api_keys', count(*) FROM strata.api_keys
           UNION ALL SELECT 'webhooks', count(*) FROM strata.webhooks
           UNION ALL SELECT 'views', count(*) FROM strata.views
           UNION ALL SELECT 'changes', count(*) FROM strata.changes) x`,
      )
    ).rows[0]!.s;

  beforeAll(async () => {
    t = await createTestApp({ seed: true });
    for (const role of ['reader', 'writer', 'admin', 'analyst'] as const) headers[role] = await t.auth(role, 'acme');
    headers['platform_admin'] = await t.auth('platform_admin', null);
    headers['none'] = {};
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    const addr = t.app.server.address();
    base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  });
  afterAll(() => t?.close());

  const routes = [
    ...Object.entries(spec.paths).flatMap(([p, methods]) =>
      Object.keys(methods)
        .filter((m) => !SKIP.has(`${m} ${p}`))
        .map((m) => ({ method: m.toUpperCase(), path: p })),
    ),
    // GraphQL is served by mercurius, outside the OpenAPI document
    { method: 'POST', path: '/graphql' },
    { method: 'GET', path: '/graphql' },
    ...POSTGREST_SWEPT_ROUTES,
  ];

  /** Every concrete URL to try for one route: hostile values in each path parameter, then hostile query strings. */
  function urls(p: string): string[] {
    const params = p.match(/\{[^}]+\}/g) ?? [];
    // an existing row for {pk} (a write that ignored a bad parameter would show in the snapshot);
    // ids of other things match nothing, since a valid command with an ignored parameter is no bad input
    const fill = (u: string) => u.replace(/\{table\}/g, 'pipelines').replace(/\{pk\}/g, '1').replace(/\{[^}]+\}/g, '999999999');
    const plain = fill(p);
    const out = new Set<string>();
    for (const param of params) for (const v of HOSTILE_SEGMENTS) out.add(fill(p.replace(param, v)));
    for (const q of [...HOSTILE_QUERIES, ...AMPLIFYING_QUERIES]) out.add(`${plain}?${q}`);
    return [...out];
  }

  it('answers every malformed request with a 4xx (or a coded 501/503), writing nothing', async () => {
    const before = await snapshot();
    const failures: string[] = [];
    let sent = 0;
    for (const r of routes) {
      const withBody = ['POST', 'PUT', 'PATCH', 'DELETE'].includes(r.method);
      for (const role of ['none', 'reader', 'writer', 'admin', 'analyst', 'platform_admin']) {
        const attempts: { url: string; body?: { body: string; type: string } }[] = urls(r.path).map((url) => ({ url }));
        if (withBody) {
          // a key that matches no row: a route that rightly ignores a body (DELETE) then changes nothing
          const plain = r.path.replace(/\{table\}/g, 'pipelines').replace(/\{[^}]+\}/g, '999999999');
          for (const b of [...HOSTILE_BODIES, ...OVERSIZED_BODIES]) attempts.push({ url: plain, body: b });
          if (plain.includes('pipelines')) for (const q of AMPLIFYING_WRITE_QUERIES) attempts.push({ url: `${plain}?${q}`, body: WRITE_BODY });
        }
        for (const a of attempts) {
          sent++;
          const res = await fetch(`${base}${a.url}`, {
            method: r.method,
            headers: { ...headers[role], ...(a.body ? { 'content-type': a.body.type } : {}) },
            body: a.body?.body,
            signal: AbortSignal.timeout(15000),
          });
          const text = res.headers.get('content-type')?.includes('text/event-stream') ? '' : await res.text();
          if (res.headers.get('content-type')?.includes('text/event-stream')) await res.body?.cancel();
          const where = `${role} ${r.method} ${a.url.slice(0, 120)}${a.body ? ` body=${a.body.body.slice(0, 40)}` : ''}`;
          if (res.status >= 500) {
            let code: unknown;
            try {
              code = (JSON.parse(text) as { error?: { code?: unknown } }).error?.code;
            } catch {
              code = undefined;
            }
            if (!((res.status === 501 || res.status === 503) && typeof code === 'string')) failures.push(`${res.status} ${where}: ${text.slice(0, 200)}`);
          } else if (res.status >= 400 && res.headers.get('content-type')?.includes('application/json')) {
            const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown }; errors?: { message?: unknown; extensions?: { code?: unknown } }[]; code?: unknown; message?: unknown };
            // REST: { error: { code, message } }; GraphQL: { errors: [{ message, extensions: { code } }] }; /rest/v1:
            // { code, message } (the router's own refusals, such as 414 PARAM_TOO_LONG, keep Strata's shape there)
            const err = body.error ?? (a.url.startsWith('/rest/v1/') ? { code: body.code, message: body.message } : { code: body.errors?.[0]?.extensions?.code, message: body.errors?.[0]?.message });
            if (typeof err?.code !== 'string' || typeof err.message !== 'string') failures.push(`${res.status} without an error code: ${where}: ${text.slice(0, 200)}`);
          }
        }
      }
    }
    expect(sent).toBeGreaterThan(1000);
    expect(failures).toEqual([]);
    expect(await snapshot()).toBe(before);
    await expectNoCheckedOutClients(t.db);
  }, 300_000);

  it('answers every malformed /rest/v1 request with a 4xx in PostgREST shape (PGRSTxxx or a SQLSTATE), writing nothing', async () => {
    const before = await snapshot();
    const failures: string[] = [];
    let sent = 0;
    const fill = (u: string) => u.replace('{table}', 'pipelines').replace('{fn}', 'no_such_function');
    for (const r of POSTGREST_ROUTES) {
      const withBody = ['POST', 'PATCH', 'DELETE'].includes(r.method);
      for (const role of ['none', 'reader', 'writer', 'admin', 'analyst', 'platform_admin']) {
        const attempts: { url: string; body?: { body: string; type: string }; headers?: Record<string, string> }[] = [];
        for (const param of r.path.match(/\{[^}]+\}/g) ?? []) for (const v of HOSTILE_SEGMENTS) attempts.push({ url: fill(r.path.replace(param, v)) });
        for (const q of [...HOSTILE_QUERIES, ...AMPLIFYING_QUERIES, ...POSTGREST_QUERIES]) attempts.push({ url: `${fill(r.path)}?${q}` });
        // the plain URL with bad headers and a valid body: a filter matching no row for PATCH and
        // DELETE, and tx=rollback for an insert the headers alone do not make invalid
        for (const h of POSTGREST_HEADERS) {
          const rollback: Record<string, string> = r.method === 'POST' && r.path.endsWith('{table}') ? { prefer: [h['prefer'], 'tx=rollback'].filter(Boolean).join(', ') } : {};
          attempts.push({ url: `${fill(r.path)}?id=eq.-42`, headers: { ...h, ...rollback }, ...(withBody ? { body: { body: '{"name":"sweep"}', type: 'application/json' } } : {}) });
        }
        if (withBody) for (const b of HOSTILE_BODIES) attempts.push({ url: `${fill(r.path)}?id=eq.-42`, body: b });
        for (const a of attempts) {
          sent++;
          const res = await fetch(`${base}${a.url}`, {
            method: r.method,
            headers: { ...headers[role], ...a.headers, ...(a.body ? { 'content-type': a.body.type } : {}) },
            body: a.body?.body,
            signal: AbortSignal.timeout(15000),
          });
          const text = await res.text();
          const where = `${role} ${r.method} ${a.url.slice(0, 120)}${a.body ? ` body=${a.body.body.slice(0, 40)}` : ''}${a.headers ? ` ${JSON.stringify(a.headers)}` : ''}`;
          let body: { code?: unknown; message?: unknown } | undefined;
          try {
            body = text ? (JSON.parse(text) as typeof body) : undefined;
          } catch {
            body = undefined;
          }
          const coded = typeof body?.code === 'string' && /^(PGRST\d{3}|[0-9A-Z]{5})$/.test(body.code) && typeof body.message === 'string';
          if (res.status >= 500 && !(res.status === 503 && coded)) failures.push(`${res.status} ${where}: ${text.slice(0, 200)}`);
          else if (res.status >= 400 && r.method !== 'HEAD' && !coded) failures.push(`${res.status} without a PostgREST error: ${where}: ${text.slice(0, 200)}`);
        }
      }
    }
    expect(sent).toBeGreaterThan(1000);
    expect(failures).toEqual([]);
    expect(await snapshot()).toBe(before);
    await expectNoCheckedOutClients(t.db);
  }, 300_000);
});
