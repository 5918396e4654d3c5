/**
 * The PostgREST-compatible face, mounted at /rest/v1 (where supabase-js puts it): `/{table}` and
 * `/rpc/{function}` with PostgREST 12's syntax, headers, statuses and error shape. A thin layer:
 * it reads the request, calls the data capability (the same core, tenant session and row-level
 * security as /v1) and writes PostgREST's answer. Its routes are hidden from Strata's own OpenAPI
 * document; `GET /rest/v1/` serves PostgREST's.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Capability } from '../../domain.js';
import type { Principal } from '../../services/identity/index.js';
import {
  EXPOSED_SCHEMAS,
  resultTable,
  type FunctionInfo,
  type Params,
  type SelectItem,
  type RestCall,
  type RestFunctionsService,
  type RestRowsService,
  type Written,
} from '../../services/data/index.js';
import { admit, knownPrincipal, lookupPrincipal, requestSettings, restPath } from './auth.js';
import { PgrstError, pgrstErrorHandler } from './errors.js';
import { checkProfile, negotiate, parsePrefer, parseRange, rangeAnswer, timezoneOf, type Preferences } from './headers.js';
import { openApiDocument } from './openapi.js';
import { eqRead, parseRequest, type EqRead, type QueryString } from './query.js';
import { toCsv } from './csv.js';

export interface PostgrestOptions {
  rows: RestRowsService;
  functions: RestFunctionsService;
}

const JSON_TYPE = 'application/json; charset=utf-8';
const hide = { hide: true };

export default async function postgrestRoutes(app: FastifyInstance, opts: PostgrestOptions) {
  const { rows, functions } = opts;
  // An empty body is valid here (a bodiless DELETE, an RPC without arguments).
  app.removeContentTypeParser(['application/json']);
  app.addContentTypeParser(['application/json', 'application/vnd.pgrst.object+json'], { parseAs: 'string' }, (_req, body, done) => {
    const text = String(body);
    if (text.trim() === '') return done(null, undefined);
    try {
      done(null, JSON.parse(text));
    } catch {
      done(new PgrstError(400, 'PGRST102', 'Empty or invalid json'), undefined);
    }
  });
  app.setErrorHandler(pgrstErrorHandler);
  app.setNotFoundHandler((request, reply) =>
    reply.code(404).type(JSON_TYPE).send({ code: 'PGRST125', message: `Invalid path specified in request URL: ${request.url.split('?')[0]}`, details: null, hint: null }),
  );

  // functions decide for themselves (a reader's POST /rpc runs read-only); the path alone decides, never the query
  const capabilityOf = (method: string, route: string | undefined): Capability =>
    method === 'GET' || method === 'HEAD' || (route ?? '').endsWith('/rpc/:fn') ? 'read' : 'write';
  // callback style, as /v1's: a credential seen before is admitted without a promise or a microtask
  app.addHook('onRequest', (request, _reply, done) => {
    const finish = (principal: Principal) => {
      try {
        // (routeOptions is built anew at each read: read once)
        const route = request.routeOptions.url;
        admit(request, principal, capabilityOf(request.method, route));
        checkProfile(request.headers, EXPOSED_SCHEMAS);
        // an Accept no answer can be given in is refused before anything runs (PostgREST answers 406
        // to a write too, even one that would send no body); the OpenAPI root has its own media type
        if ((route ?? '/').endsWith('/') === false) negotiate(request.headers.accept);
      } catch (err) {
        return done(err as Error);
      }
      done();
    };
    const known = knownPrincipal(request, app.auth);
    if (known !== undefined) return finish(known);
    lookupPrincipal(request, app.auth).then(finish, done);
  });

  /** The tenant session of this request, with `Prefer: timezone` when PostgreSQL knows the zone. */
  const call = async (request: FastifyRequest, p: Preferences): Promise<RestCall> => {
    const timezone = p.timezone === undefined ? undefined : timezoneOf(p, await functions.timezones());
    p.applied = timezone === undefined ? [] : [`timezone=${timezone}`];
    const settings = requestSettings(request, restPath(request.url));
    return { ctx: request.ctx, request: timezone === undefined ? settings : { ...settings, timezone } };
  };
  const applied = (reply: FastifyReply, p: Preferences, names: string[]) => {
    const all = [...names, ...p.applied];
    if (all.length) void reply.header('preference-applied', all.join(', '));
  };

  app.get('/', { schema: hide }, async (request, reply) => {
    const tables = [...(await app.services.schema.tables()).values()];
    const doc = openApiDocument(tables, await functions.list(), request.headers.host);
    return reply.type('application/openapi+json; charset=utf-8').send(JSON.stringify(doc));
  });

  /** A read (of a table, or of a set-returning function's rows) answered as PostgREST does. */
  async function read(request: FastifyRequest, reply: FastifyReply, table: string, qs: QueryString, from?: NonNullable<Parameters<RestRowsService['read']>[3]>['from']) {
    const media = negotiate(request.headers.accept);
    const prefer = parsePrefer(request.headers.prefer);
    const session = await call(request, prefer);
    const rq = parseRequest(qs, { write: false });
    const range = parseRange(request.headers);
    if (range) {
      if (!('offset' in qs)) rq.offset = range.offset;
      if (range.limit !== undefined && rq.limit === undefined) rq.limit = range.limit;
    }
    const r = await rows.read(session, table, rq, { count: prefer.count, stripNulls: media.stripNulls, from });
    const { status, contentRange } = rangeAnswer(r.offset, r.rows.length, r.total);
    void reply.header('content-range', contentRange);
    applied(reply, prefer, prefer.count ? [`count=${prefer.count}`] : []);
    if (status === 416) {
      throw new PgrstError(416, 'PGRST103', 'Requested range not satisfiable', `An offset of ${r.offset} was requested, but there are only ${r.total ?? 0} rows.`);
    }
    if (media.kind === 'object') {
      if (r.rows.length !== 1) throw new PgrstError(406, 'PGRST116', 'JSON object requested, multiple (or no) rows returned', `The result contains ${r.rows.length} rows`);
      return reply.code(200).type('application/vnd.pgrst.object+json; charset=utf-8').send(r.rows[0]);
    }
    if (media.kind === 'csv') return reply.code(status).type('text/csv; charset=utf-8').send(toCsv(r.rows, r.columns));
    return reply
      .code(status)
      .type(media.stripNulls ? 'application/vnd.pgrst.array+json;nulls=stripped; charset=utf-8' : JSON_TYPE)
      .send(`[${r.rows.join(',')}]`);
  }

  /**
   * `?<column>=eq.<value>` (and at most a select), answered as JSON or one object, without Prefer
   * or Range: the shape of postgrest-js's `.eq(col, v).single()` / `.maybeSingle()`. The statement is
   * prebuilt per table, column and select list (rows.readEq); the answer is read()'s for the same
   * request. False when this path does not serve the request (read() then does); true once sent.
   */
  async function readEq(request: FastifyRequest, reply: FastifyReply, table: string, eq: EqRead): Promise<boolean> {
    const media = negotiate(request.headers.accept);
    if (media.kind === 'csv') return false;
    const session: RestCall = { ctx: request.ctx, request: requestSettings(request, restPath(request.url)) };
    const r = await rows.readEq(session, table, eq.column, eq.value, eq.select, eq.selectKey, { stripNulls: media.stripNulls });
    if (r === undefined) return false;
    const n = r.rows.length;
    void reply.header('content-range', n === 0 ? '*/*' : `0-${n - 1}/*`);
    if (media.kind === 'object') {
      if (n !== 1) throw new PgrstError(406, 'PGRST116', 'JSON object requested, multiple (or no) rows returned', `The result contains ${n} rows`);
      void reply.code(200).type('application/vnd.pgrst.object+json; charset=utf-8').send(r.rows[0]);
      return true;
    }
    // (a reply is thenable: it is sent here and never returned from this async function)
    void reply
      .code(200)
      .type(media.stripNulls ? 'application/vnd.pgrst.array+json;nulls=stripped; charset=utf-8' : JSON_TYPE)
      .send(n === 1 ? `[${r.rows[0]!}]` : `[${r.rows.join(',')}]`);
    return true;
  }

  app.get('/:table', { schema: hide }, async (request, reply) => {
    const table = (request.params as { table: string }).table;
    const qs = request.query as QueryString;
    const h = request.headers;
    const eq = h.prefer === undefined && h.range === undefined ? eqRead(qs) : undefined;
    if (eq !== undefined && (await readEq(request, reply, table, eq))) return reply;
    return read(request, reply, table, qs);
  });

  /** Send a write's rows as PostgREST does for `Prefer: return=...`. */
  function sendWritten(request: FastifyRequest, reply: FastifyReply, p: Preferences, w: Written, created: boolean, extra: string[]) {
    const written = w.rows;
    const names = [...extra];
    if (p.return) names.push(`return=${p.return}`);
    if (p.tx) names.push(`tx=${p.tx}`);
    if (p.handling) names.push(`handling=${p.handling}`);
    if (p.maxAffected !== undefined) names.push(`max-affected=${p.maxAffected}`);
    if (p.count) names.push(`count=${p.count}`);
    applied(reply, p, names);
    // the total is the number of rows written when a count was asked for (PostgREST: `*/2`)
    const total = created || p.count ? String(w.count) : '*';
    void reply.header('content-range', w.count ? `${created ? '*' : `0-${w.count - 1}`}/${total}` : `*/${p.count ? 0 : '*'}`);
    if (p.return === 'representation') {
      const media = negotiate(request.headers.accept);
      if (media.kind === 'object') {
        if (written.length !== 1) throw new PgrstError(406, 'PGRST116', 'JSON object requested, multiple (or no) rows returned', `The result contains ${written.length} rows`);
        return reply.code(created ? 201 : 200).type('application/vnd.pgrst.object+json; charset=utf-8').send(written[0]);
      }
      if (media.kind === 'csv') return reply.code(created ? 201 : 200).type('text/csv; charset=utf-8').send(toCsv(written));
      return reply.code(created ? 201 : 200).type(JSON_TYPE).send(`[${written.join(',')}]`);
    }
    return reply.code(created ? 201 : 204).send();
  }

  const writeOptions = (p: Preferences, rq: { select: SelectItem[]; selectGiven: boolean }, location = false) => ({
    select: rq.selectGiven ? rq.select : undefined,
    rollback: p.tx === 'rollback',
    maxAffected: p.maxAffected,
    // the rows leave PostgreSQL only when they are sent back (or name the created row's Location)
    returnRows: p.return === 'representation' || (location && p.return === 'headers-only' && !rq.selectGiven),
  });

  app.post('/:table', { schema: hide }, async (request, reply) => {
    const { table } = request.params as { table: string };
    const p = parsePrefer(request.headers.prefer);
    const rq = parseRequest(request.query as QueryString, { write: true });
    const body = request.body === undefined ? {} : request.body;
    if (body === null || typeof body !== 'object') throw new PgrstError(400, 'PGRST102', 'Empty or invalid json', 'the body must be a JSON object or an array of objects');
    const written = await rows.insert(await call(request, p), table, body, {
      ...writeOptions(p, rq, true),
      columns: rq.columns,
      missingDefault: p.missing === 'default',
      onConflict: rq.onConflict,
      resolution: p.resolution === 'merge-duplicates' ? 'merge' : p.resolution === 'ignore-duplicates' ? 'ignore' : undefined,
    });
    const extra = [p.resolution ? `resolution=${p.resolution}` : '', p.missing ? `missing=${p.missing}` : ''].filter(Boolean);
    if (p.return === 'headers-only' && written.rows.length === 1 && !rq.selectGiven) {
      // PostgREST's Location: the created row by its primary key
      const t = await app.services.schema.table(table);
      const row = JSON.parse(written.rows[0]!) as Record<string, unknown>;
      if (t.primaryKey.length && t.primaryKey.every((k) => row[k] !== undefined && row[k] !== null)) {
        void reply.header('location', `/${table}?${t.primaryKey.map((k) => `${encodeURIComponent(k)}=eq.${encodeURIComponent(String(row[k] as string | number))}`).join('&')}`);
      }
    }
    return sendWritten(request, reply, p, written, true, extra);
  });

  app.patch('/:table', { schema: hide }, async (request, reply) => {
    const { table } = request.params as { table: string };
    const p = parsePrefer(request.headers.prefer);
    const rq = parseRequest(request.query as QueryString, { write: true });
    refuseReadParams(rq);
    const body = request.body === undefined ? {} : request.body;
    const written = await rows.update(await call(request, p), table, rq, body, writeOptions(p, rq));
    return sendWritten(request, reply, p, written, false, []);
  });

  app.delete('/:table', { schema: hide }, async (request, reply) => {
    const { table } = request.params as { table: string };
    const p = parsePrefer(request.headers.prefer);
    const rq = parseRequest(request.query as QueryString, { write: true });
    refuseReadParams(rq);
    const written = await rows.remove(await call(request, p), table, rq, writeOptions(p, rq));
    return sendWritten(request, reply, p, written, false, []);
  });

  /**
   * Call a function. A set-returning function of a table's row type is read like that table, so
   * select, filters, order, limit/offset, counts and embedding apply to its rows; the results of
   * other functions (SETOF a composite or record type, TABLE(...), scalars) are read the same way
   * over their result columns (a scalar's one column is named after the function), without
   * embedding. A void function takes no query parameters beyond its arguments.
   */
  const rpc = async (request: FastifyRequest, reply: FastifyReply, f: FunctionInfo, args: Record<string, unknown>, rest: QueryString, o: { readOnly: boolean; whole?: boolean }) => {
    const tables = await app.services.schema.tables();
    const readOnly = o.readOnly || f.volatility !== 'v';
    const sql = (params: Params) => functions.callSql(f, args, params, { whole: o.whole });
    if (f.setof && f.composite && tables.has(f.returnType)) return read(request, reply, f.returnType, rest, { sql, readOnly });
    const extra = Object.keys(rest);
    const scalar = !f.composite && f.columns.length === 1 ? f.columns[0]!.name : undefined;
    if (scalar !== undefined && rest['select'] !== undefined && ![`*`, scalar].includes(String(rest['select']))) {
      throw new PgrstError(400, 'PGRST100', `"failed to parse select parameter (${String(rest['select'])})"`, `${f.name} returns a scalar: select takes only * or ${scalar}`);
    }
    const from = { sql, readOnly, table: (call: string) => resultTable(f, call), ...(scalar !== undefined ? { value: scalar } : {}) };
    if (f.setof && f.columns.length) return read(request, reply, f.name, rest, from);
    if (extra.length && f.columns.length) {
      // one row (a composite or a scalar) that the filters keep or not: the value, or null
      const p = parsePrefer(request.headers.prefer);
      const r = await rows.read(await call(request, p), f.name, parseRequest(rest, { write: false }), { from });
      applied(reply, p, []);
      return reply.code(200).type(JSON_TYPE).send(r.rows[0] ?? 'null');
    }
    if (extra.length) throw new PgrstError(400, 'PGRST100', `"${extra[0]}" is not supported on /rpc/${f.name} by Strata`, 'a function returning void or a record of no declared columns takes only its arguments');
    const p = parsePrefer(request.headers.prefer);
    const r = await functions.call(await call(request, p), f, args, { readOnly: o.readOnly, whole: o.whole });
    applied(reply, p, o.whole ? ['params=single-object'] : []);
    if (r.json === undefined) return reply.code(204).send();
    return reply.code(200).type(JSON_TYPE).send(r.json);
  };
  app.get('/rpc/:fn', { schema: hide }, async (request, reply) => {
    const { fn } = request.params as { fn: string };
    const names = await functions.argNames(fn);
    const args: Record<string, unknown> = {};
    const rest: QueryString = {};
    for (const [k, v] of Object.entries(request.query as QueryString)) {
      if (names.has(k)) args[k] = v;
      else rest[k] = v;
    }
    return rpc(request, reply, await functions.resolve(fn, Object.keys(args)), args, rest, { readOnly: true });
  });
  app.post('/rpc/:fn', { schema: hide }, async (request, reply) => {
    const { fn } = request.params as { fn: string };
    const body = request.body ?? {};
    const p = parsePrefer(request.headers.prefer);
    const canWrite = ['writer', 'admin', 'platform_admin'].includes(request.ctx.role);
    if (p.params === 'single-object') {
      // the whole body, whatever its shape, is the one json/jsonb argument
      const f = await functions.resolveSingleObject(fn);
      return rpc(request, reply, f, body as Record<string, unknown>, request.query as QueryString, { readOnly: !canWrite, whole: true });
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      // an array or a scalar can only be the argument of a function taking one unnamed json argument
      const f = await functions.resolve(fn, [], { body: true }).catch(() => undefined);
      if (!f || f.args.length !== 1 || f.args[0]!.name !== '') throw new PgrstError(400, 'PGRST102', 'Empty or invalid json', 'the arguments must be a JSON object');
      return rpc(request, reply, f, body as Record<string, unknown>, request.query as QueryString, { readOnly: !canWrite });
    }
    const args = body as Record<string, unknown>;
    return rpc(request, reply, await functions.resolve(fn, Object.keys(args), { body: true }), args, request.query as QueryString, { readOnly: !canWrite });
  });
}

/** limit/order/offset on PATCH and DELETE are refused rather than ignored (they would change every matching row). */
function refuseReadParams(rq: { limit?: number; offset: number; order: unknown[] }) {
  if (rq.limit !== undefined || rq.offset || rq.order.length) {
    throw new PgrstError(400, 'PGRST100', 'limit, offset and order are not supported on PATCH and DELETE by Strata', 'filter the rows to change instead');
  }
}
