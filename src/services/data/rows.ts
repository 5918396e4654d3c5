/**
 * The rows API service: PostgREST-style reads (select with embedding, filters, order, keyset
 * cursors, counts) and validated writes (insert, bulk, upsert, update and delete by primary key or
 * filter, optimistic concurrency). Every statement runs in the caller's tenant session, so
 * PostgreSQL's row-level security decides what exists. Responses are JSON rendered by PostgreSQL.
 */
import pg from 'pg';
import type { Database } from '../../db/database.js';
import type { SessionContext, Tx } from '../../db/session.js';
import { badRequest, notFound, preconditionFailed } from '../../errors.js';
import type { SchemaRegistry, TableInfo } from './schema-registry.js';
import {
  checkEmbedPaths,
  checkValue,
  filterSql,
  innerJoinsSql,
  keysetSql,
  orderSql,
  Params,
  rowJsonSql,
  totalOrder,
  type BuildScope,
} from './rest-query/build.js';
import type { CursorCodec } from './rest-query/cursor.js';
import { parseRowsQuery, parseSelect, type Filter, type RowsQuery } from './rest-query/parse.js';
import { validateRow } from './rest-query/validate.js';
import { boundJsonSql, boundWriteSql, isAnswerTooLarge, isOver, tooLarge } from './response-bounds.js';
import type { Enforcement, Guard } from '../compliance/index.js';

const q = pg.escapeIdentifier;
/** Read-only query parameters an update or delete by filter refuses rather than ignores. */
const WRITE_UNSUPPORTED = new Set(['limit', 'order', 'cursor', 'count', 'on_conflict', 'columns']);

export type QueryString = Record<string, string | string[] | undefined>;
export type ReturnPreference = 'representation' | 'minimal';

export interface WriteResult {
  /** JSON text of `{ "data": ... }`, absent for `return=minimal`. */
  body?: string;
  count: number;
  etag?: string;
}

export interface RowsServiceOptions {
  db: Database;
  schema: SchemaRegistry;
  cursors: CursorCodec;
  defaultLimit: number;
  maxLimit: number;
  /** count=estimated for tenant roles: an exact count stopped at this cap (COUNT_ESTIMATE_CAP; default 10,000). */
  countCap?: number;
  /** Most bytes of JSON one read answers (ROWS_MAX_RESPONSE_BYTES / RESPONSE_MAX_BYTES): past it 413 RESPONSE_TOO_LARGE. */
  maxResponseBytes?: number;
  /** Called after a write of its own transaction commits (src/services/analytics/write-hooks.ts); not inside a caller's transaction. */
  afterCommit?: (ctx: SessionContext, tables: string[]) => Promise<void>;
  /** The compliance policy (declared columns: encryption, masking, blind indexes, audit). */
  compliance?: Enforcement;
}

interface Runner {
  query<R extends pg.QueryResultRow>(
    text: string,
    values: unknown[],
    final?: boolean,
  ): Promise<pg.QueryResult<R>>;
}

export function createRowsService(opts: RowsServiceOptions) {
  const { db, schema, cursors } = opts;
  const countCap = Math.max(1, Math.floor(opts.countCap ?? 10_000));
  const maxBytes = opts.maxResponseBytes ?? 16 * 1024 * 1024;
  const overflow = () =>
    tooLarge('the answer', maxBytes, 'ROWS_MAX_RESPONSE_BYTES / RESPONSE_MAX_BYTES', 'ask for fewer rows (limit), fewer columns (select) or smaller embeds (<embed>.limit)');
  /** The statement of a plain read by primary key, per table (a schema refresh makes new TableInfo). */
  const plainGets = new WeakMap<TableInfo, string>();
  /** The same for tables with declared columns, per policy version (the tags depend on it). */
  const guardedGets = new WeakMap<TableInfo, { version: number; text: string }>();
  const guardOf = (ctx: SessionContext) => (opts.compliance ? opts.compliance.guard(ctx) : undefined);
  const reveal = async (guard: Guard | undefined, body: string) => (guard?.tagged ? guard.reveal(body, { path: 'rows' }) : body);
  const protect = async (guard: Guard | undefined, t: TableInfo, row: Record<string, unknown>) => (guard ? guard.protectRow(t.name, row) : row);

  const scope = async (params: Params, rq: RowsQuery): Promise<BuildScope> => ({
    tables: await schema.tables(),
    params,
    embeds: rq.embeds,
    maxEmbedLimit: opts.maxLimit,
    alias: 0,
  });

  /** Run on the given transaction, or in a tenant transaction of its own (one round trip). */
  function runner(ctx: SessionContext, tx: Tx | undefined, readOnly: boolean) {
    return async <T>(fn: (r: Runner) => Promise<T>): Promise<T> => {
      // Inside a caller's transaction (POST /v1/transactions) the caller commits: `final` is ignored.
      if (tx) return fn({ query: (text, values) => tx.query(text, values) });
      return db.withTenant(
        ctx,
        (t) =>
          fn({ query: (text, values, final) => t.query(text, values, final ? { final: true } : undefined) }),
        { readOnly },
      );
    };
  }

  function pkFilter(t: TableInfo, pk: string): Filter {
    const [name, ...rest] = t.primaryKey;
    if (!name || rest.length)
      throw badRequest(
        'NO_SINGLE_PRIMARY_KEY',
        `table ${t.name} has no single-column primary key; use filters instead`,
      );
    checkValue(t.columnMap.get(name)!, pk);
    return { kind: 'cond', column: name, op: 'eq', not: false, value: pk };
  }

  function whereSql(t: TableInfo, filters: Filter[], params: Params, ctx?: SessionContext): string {
    const conds = filters.map((f) => filterSql(t, 't0', f, params));
    const routed = ctx && tenantQual(t, ctx, params);
    if (routed) conds.push(routed);
    return conds.length ? `WHERE ${conds.join(' AND ')}` : '';
  }

  /**
   * Cluster mode: `t0.tenant_id = $n` beside the RLS policy, so Citus routes the statement to the
   * tenant's one shard instead of fanning out to all (the policy's qual is not used for routing).
   * RLS still decides what is visible. Undefined on a single server or a table without tenant_id.
   */
  function tenantQual(t: TableInfo, ctx: SessionContext, params: Params): string | undefined {
    return db.cluster && t.hasTenantId ? `t0.tenant_id = ${params.add(ctx.tenantId ?? '')}` : undefined;
  }

  function returningSql(t: TableInfo, select: string | undefined, s: BuildScope): string {
    return `${rowJsonSql(t, 't0', select ? parseSelect(select) : [{ kind: 'star' }], s)}::text AS j, t0.xmin::text AS v`;
  }

  /**
   * `<dml> RETURNING <row JSON>`, bounded: past the answer's byte bound PostgreSQL fails the
   * statement before sending a row (boundWriteSql), so the write rolls back and answers 413.
   * `return=minimal` returns no rows at all: one row with the count and the version (a filtered
   * write of a million rows costs no answer). Cluster mode: Citus refuses functions that are not
   * immutable (to_json) in a RETURNING list, so the write returns its rows from a data-modifying CTE
   * named like the table alias and the JSON is built over them (same columns, same shape).
   */
  function withReturning(t: TableInfo, dml: string, select: string | undefined, s: BuildScope, returning: ReturnPreference | undefined): string {
    if (returning === 'minimal')
      return `WITH strata_w AS (${dml} RETURNING t0.xmin::text AS v) SELECT NULL::text AS j, min(strata_w.v) AS v, count(*)::int AS n FROM strata_w`;
    // the bound is the service's own setting, an integer: written in the statement, not one more parameter
    const max = String(Math.floor(maxBytes));
    if (!db.cluster) return boundWriteSql(`strata_w AS (${dml} RETURNING ${returningSql(t, select, s)})`, max);
    const json = rowJsonSql(t, 't0', select ? parseSelect(select) : [{ kind: 'star' }], s);
    return boundWriteSql(`t0 AS (${dml} RETURNING t0.*, t0.xmin::text AS strata_v), strata_w AS (SELECT ${json}::text AS j, t0.strata_v AS v FROM t0)`, max);
  }

  /** ST413 of a bounded write (rolled back) as the 413 naming the setting. */
  const writeOverflow = (err: unknown): never => {
    if (!isAnswerTooLarge(err)) throw err;
    throw tooLarge(
      'the rows this write returns',
      maxBytes,
      'ROWS_MAX_RESPONSE_BYTES / RESPONSE_MAX_BYTES',
      'nothing was written; ask for return=minimal (Prefer header), fewer columns (select) or change fewer rows at a time',
    );
  };

  const selectParam = (qs: QueryString): string | undefined =>
    typeof qs['select'] === 'string' ? qs['select'] : undefined;

  /** The page statement of a rows-API read (shared by list and EXPLAIN of a rows query). */
  async function buildList(t: TableInfo, qs: QueryString, ctx?: SessionContext, guard?: Guard) {
    const rq = parseRowsQuery(qs, { maxLimit: opts.maxLimit });
    checkEmbedPaths(rq.select, rq.embeds);
    const params = new Params(guard);
    const s = await scope(params, rq);
    const order = totalOrder(t, rq.order, guard);
    const limit = rq.limit ?? opts.defaultLimit;
    const signature = `${t.name}|${order.map((o) => `${o.column}.${o.direction}.${o.nulls ?? ''}`).join(',')}`;
    const filters = rq.filters.map((f) => filterSql(t, 't0', f, params));
    // `rel!inner(...)`: only parents with a related row passing the embed's filters
    filters.push(...innerJoinsSql(t, 't0', rq.select, s));
    const routed = ctx && tenantQual(t, ctx, params);
    if (routed) filters.push(routed);
    const countFilters = [...filters];
    const countValues = [...params.values];
    if (rq.cursor !== undefined)
      filters.push(keysetSql('t0', order, cursors.decode(signature, rq.cursor, order.length), params));
    const json = rowJsonSql(t, 't0', rq.select, s);
    const keys = order.map((o, i) => `t0.${q(o.column)}::text AS k${i}`).join(', ');
    const where = filters.length ? `WHERE ${filters.join(' AND ')}` : '';
    const text = `SELECT ${json}::text AS j, ${keys} FROM ${t.qualified} t0 ${where} ORDER BY ${orderSql('t0', order)} LIMIT ${params.add(limit + 1)}`;
    const keyNames = order.map((_, i) => `k${i}`);
    return { t, rq, params, order, limit, signature, text, keyNames, countFilters, countValues };
  }

  const service = {
    /** The statement and values a rows-API read of `table` with query string `qs` runs (for EXPLAIN). */
    async listStatement(table: string, qs: QueryString, ctx?: SessionContext): Promise<{ text: string; values: unknown[] }> {
      const { text, params } = await buildList(await schema.table(table), qs, ctx);
      return { text, values: [...params.values] };
    },

    /** A page of rows: `{ "data": [...], "next_cursor": ..., "total"? }` as JSON text. */
    async list(ctx: SessionContext, table: string, qs: QueryString, tx?: Tx): Promise<string> {
      return service.listTable(ctx, await schema.table(table), qs, tx);
    },

    /** list() over a relation described outside the registry (the tenant-filtered view of a materialized view). */
    async listTable(ctx: SessionContext, table: TableInfo, qs: QueryString, tx?: Tx): Promise<string> {
      const guard = await guardOf(ctx);
      const { t, rq, params, order, limit, signature, text: unbounded, keyNames, countFilters, countValues } = await buildList(table, qs, ctx, guard);
      // PostgreSQL sums the rows' JSON sizes and sends none past the bound (response-bounds.ts)
      const text = boundJsonSql(unbounded, keyNames, params.add(maxBytes));
      const countWhere = countFilters.length ? `WHERE ${countFilters.join(' AND ')}` : '';
      const countSql =
        rq.count === 'exact'
          ? `SELECT count(*)::bigint AS n FROM ${t.qualified} t0 ${countWhere}`
          : rq.count === 'estimated'
            ? ctx.role === 'platform_admin'
              ? `EXPLAIN (FORMAT JSON) SELECT 1 FROM ${t.qualified} t0 ${countWhere}`
              : // planner statistics span every tenant: a tenant gets its own rows counted, up to the cap
                `SELECT count(*)::bigint AS n FROM (SELECT FROM ${t.qualified} t0 ${countWhere} LIMIT ${countCap}) c`
            : undefined;
      // Without a count the page is one statement (one round trip); with one, both share a transaction.
      const { rows, total } =
        countSql === undefined
          ? {
              rows: (await singleStatement<Record<string, string | null>>(ctx, tx, true, text, params.values))
                .rows,
              total: undefined,
            }
          : await runner(
              ctx,
              tx,
              true,
            )(async (r) => {
              const page = r.query<Record<string, string | null>>(text, params.values, false);
              const counted = r.query<Record<string, unknown>>(countSql, countValues, true);
              const [p, c] = await Promise.all([page, counted]);
              const first = c.rows[0];
              const n =
                first?.['n'] !== undefined
                  ? Number(first['n'])
                  : Number(
                      (first?.['QUERY PLAN'] as Array<{ Plan: { 'Plan Rows': number } }> | undefined)?.[0]
                        ?.Plan['Plan Rows'] ?? 0,
                    );
              return { rows: p.rows, total: n };
            });
      if (rows.length > 0 && isOver(rows[rows.length - 1]!)) throw overflow();
      const more = rows.length > limit;
      const pageRows = more ? rows.slice(0, limit) : rows;
      const last = pageRows[pageRows.length - 1];
      const next =
        more && last
          ? cursors.encode(
              signature,
              order.map((_, i) => last[`k${i}`] ?? null),
            )
          : null;
      return reveal(guard, `{"data":[${pageRows.map((r) => r['j']).join(',')}],"next_cursor":${JSON.stringify(next)}${total === undefined ? '' : `,"total":${total}`}}`);
    },

    /** One row by primary key: `{ "data": {...} }` and its version (ETag). 404 when RLS hides it. */
    async get(
      ctx: SessionContext,
      table: string,
      pk: string,
      qs: QueryString,
      tx?: Tx,
    ): Promise<{ body: string; etag: string }> {
      const t = await schema.table(table);
      const filter = pkFilter(t, pk);
      // the plain read (no select, no other parameters) has one statement per table: built once
      const plain = isEmpty(qs);
      // a plain read of a table the policy declares nothing on needs no guard (no embed can reach
      // a declared one)
      const guard = plain && (opts.compliance === undefined || opts.compliance.undeclared(t.name)) ? undefined : await guardOf(ctx);
      const declared = guard?.table(t.name) !== undefined;
      let text: string | undefined;
      if (plain && !declared) text = plainGets.get(t);
      else if (plain && declared) {
        const g = guardedGets.get(t);
        if (g && g.version === guard.version) {
          text = g.text;
          guard.tagged = true;
        }
      }
      const routed = db.cluster && t.hasTenantId;
      let values: unknown[] = routed ? [pk, ctx.tenantId ?? ''] : [pk];
      if (text === undefined) {
        const rq = parseRowsQuery(qs, { maxLimit: opts.maxLimit });
        const params = new Params(guard);
        const s = await scope(params, rq);
        checkEmbedPaths(rq.select, s.embeds);
        const where = filterSql(t, 't0', filter, params);
        const qual = tenantQual(t, ctx, params);
        text = `SELECT ${rowJsonSql(t, 't0', rq.select, s)}::text AS j, t0.xmin::text AS v FROM ${t.qualified} t0 WHERE ${where}${qual ? ` AND ${qual}` : ''}`;
        // The plain read (the table's own columns, one row) stays as it is: its size is what one row
        // holds, and it is the hot path. A select (aliases, embeds) is bounded like a page.
        if (!plain) text = boundJsonSql(text, ['v'], params.add(maxBytes));
        values = params.values;
        if (plain && values.length === (routed ? 2 : 1) && values[0] === pk) {
          if (declared) guardedGets.set(t, { version: guard.version, text });
          else plainGets.set(t, text);
        }
      }
      const { rows } = await singleStatement<{ j: string; v: string }>(ctx, tx, true, text, values);
      const row = rows[0];
      if (row && isOver(row)) throw overflow();
      if (!row) throw notFound('ROW_NOT_FOUND', `no row ${JSON.stringify(pk)} in ${t.name}`);
      const body = `{"data":${row.j}}`;
      return { body: guard?.tagged ? await guard.reveal(body, { path: 'rows' }) : body, etag: `"${row.v}"` };
    },

    /**
     * Insert one row or many (`on_conflict` = columns of a unique key -> upsert). Validated against
     * the table's JSON Schema first; `tenant_id` defaults from the session and another tenant's id
     * is refused by RLS (403).
     */
    async insert(
      ctx: SessionContext,
      table: string,
      body: unknown,
      o: { onConflict?: string; ignoreDuplicates?: boolean; returning?: ReturnPreference; select?: string },
      tx?: Tx,
    ): Promise<WriteResult> {
      const t = await schema.table(table);
      const many = Array.isArray(body);
      const guard = await guardOf(ctx);
      const rows = await Promise.all((many ? body : [body]).map((r, i) => protect(guard, t, validateRow(t, r, many ? { index: i } : {}))));
      if (rows.length === 0) throw badRequest('EMPTY_BODY', 'nothing to insert: the array is empty');
      if (rows.length > opts.maxLimit * 10)
        throw badRequest('TOO_MANY_ROWS', `at most ${opts.maxLimit * 10} rows per request`);
      const columns = [...new Set(rows.flatMap((r) => Object.keys(r)))];
      const params = new Params(guard);
      const values = rows.map(
        (r) => `(${columns.map((c) => (c in r ? params.add(toParam(t, c, r[c])) : 'DEFAULT')).join(', ')})`,
      );
      let conflict = '';
      if (o.onConflict !== undefined) {
        const keys = o.onConflict.split(',').map((c) => c.trim());
        for (const k of keys)
          if (!t.columnMap.has(k))
            throw badRequest(
              'UNKNOWN_COLUMN',
              `on_conflict column ${JSON.stringify(k)} does not exist in ${t.name}`,
              { column: k },
            );
        const unique = t.indexes.some(
          (ix) => ix.unique && ix.columns.length === keys.length && ix.columns.every((c) => keys.includes(c)),
        );
        if (!unique)
          throw badRequest(
            'NO_UNIQUE_KEY',
            `on_conflict needs the columns of a unique key of ${t.name}; (${keys.join(', ')}) is not one`,
          );
        const updates = columns.filter((c) => !keys.includes(c));
        conflict =
          o.ignoreDuplicates || updates.length === 0
            ? ` ON CONFLICT (${keys.map(q).join(', ')}) DO NOTHING`
            : ` ON CONFLICT (${keys.map(q).join(', ')}) DO UPDATE SET ${updates.map((c) => `${q(c)} = EXCLUDED.${q(c)}`).join(', ')}`;
      }
      const s = await scope(params, { select: [], filters: [], order: [], embeds: new Map() });
      const cols = columns.length ? ` (${columns.map(q).join(', ')})` : '';
      const valuesSql = columns.length ? `VALUES ${values.join(', ')}` : 'DEFAULT VALUES';
      if (!columns.length && rows.length > 1)
        throw badRequest('EMPTY_BODY', 'bulk rows must name at least one column');
      const text = withReturning(t, `INSERT INTO ${t.qualified} AS t0${cols} ${valuesSql}${conflict}`, o.select, s, o.returning);
      const res = await singleStatement<WrittenRow>(ctx, tx, false, text, params.values).catch(writeOverflow);
      if (!tx) await opts.afterCommit?.(ctx, [t.name]);
      return revealResult(guard, result(res.rows, many, o.returning));
    },

    /** Update by primary key (`pk`) or by filters in `qs`; an unfiltered mass update is refused. */
    async update(
      ctx: SessionContext,
      table: string,
      target: { pk?: string; qs: QueryString },
      patch: unknown,
      o: { ifMatch?: string; returning?: ReturnPreference; select?: string },
      tx?: Tx,
    ): Promise<WriteResult> {
      const t = await schema.table(table);
      const guard = await guardOf(ctx);
      const row = await protect(guard, t, validateRow(t, patch, { partial: true }));
      const columns = Object.keys(row);
      if (columns.length === 0) throw badRequest('EMPTY_BODY', 'nothing to update: the body names no column');
      const params = new Params(guard);
      const sets = columns.map((c) => `${q(c)} = ${params.add(toParam(t, c, row[c]))}`).join(', ');
      const { where, single } = writeTarget(t, target, params, ctx);
      const version =
        o.ifMatch === undefined ? '' : ` AND t0.xmin::text = ${params.add(parseEtag(o.ifMatch))}`;
      const s = await scope(params, { select: [], filters: [], order: [], embeds: new Map() });
      const text = withReturning(t, `UPDATE ${t.qualified} AS t0 SET ${sets} ${where}${version}`, o.select ?? selectParam(target.qs), s, o.returning);
      const r = await write(ctx, t, target, text, params, single, o, tx);
      if (!tx) await opts.afterCommit?.(ctx, [t.name]);
      return revealResult(guard, r);
    },

    /** Delete by primary key or by filters; an unfiltered mass delete is refused. */
    async remove(
      ctx: SessionContext,
      table: string,
      target: { pk?: string; qs: QueryString },
      o: { ifMatch?: string; returning?: ReturnPreference; select?: string },
      tx?: Tx,
    ): Promise<WriteResult> {
      const t = await schema.table(table);
      const guard = await guardOf(ctx);
      const params = new Params(guard);
      const { where, single } = writeTarget(t, target, params, ctx);
      const version =
        o.ifMatch === undefined ? '' : ` AND t0.xmin::text = ${params.add(parseEtag(o.ifMatch))}`;
      const s = await scope(params, { select: [], filters: [], order: [], embeds: new Map() });
      const text = withReturning(t, `DELETE FROM ${t.qualified} AS t0 ${where}${version}`, o.select ?? selectParam(target.qs), s, o.returning);
      const r = await write(ctx, t, target, text, params, single, o, tx);
      if (!tx) await opts.afterCommit?.(ctx, [t.name]);
      return revealResult(guard, r);
    },
  };
  return service;

  function writeTarget(
    t: TableInfo,
    target: { pk?: string; qs: QueryString },
    params: Params,
    ctx: SessionContext,
  ): { where: string; single: boolean } {
    // A parameter a write would silently ignore is refused: `limit=1` on a filtered DELETE must
    // not delete every matching row, and a filter beside a primary key must not be dropped.
    for (const k of Object.keys(target.qs)) {
      if (k === 'select') continue;
      if (target.pk !== undefined)
        throw badRequest('UNSUPPORTED_PARAMETER', `query parameter ${JSON.stringify(k)} does not apply to a write by primary key (only select does)`, { parameter: k });
      if (WRITE_UNSUPPORTED.has(k))
        throw badRequest('UNSUPPORTED_PARAMETER', `query parameter ${JSON.stringify(k)} does not apply to an update or delete: it changes every row the filters match`, { parameter: k });
    }
    if (target.pk !== undefined)
      return { where: whereSql(t, [pkFilter(t, target.pk)], params, ctx), single: true };
    const filterOnly: QueryString = {};
    for (const [k, v] of Object.entries(target.qs)) if (k !== 'select') filterOnly[k] = v;
    const rq = parseRowsQuery(filterOnly, { maxLimit: opts.maxLimit });
    if (rq.filters.length === 0) {
      throw badRequest(
        'UNFILTERED_MASS_WRITE',
        `refusing to change every row of ${t.name}: add a filter (e.g. ?id=eq.1) or use /rows/{pk}`,
      );
    }
    return { where: whereSql(t, rq.filters, params, ctx), single: false };
  }

  async function revealResult(guard: Guard | undefined, r: WriteResult): Promise<WriteResult> {
    if (!guard?.tagged || r.body === undefined) return r;
    return { ...r, body: await guard.reveal(r.body, { path: 'rows' }) };
  }

  /** One statement: in the caller's transaction, or as a single-round-trip tenant transaction. */
  function singleStatement<R extends pg.QueryResultRow>(
    ctx: SessionContext,
    tx: Tx | undefined,
    readOnly: boolean,
    text: string,
    values: unknown[],
  ) {
    return tx ? tx.query<R>(text, values) : db.tenantQuery<R>(ctx, text, values, { readOnly });
  }

  async function write(
    ctx: SessionContext,
    t: TableInfo,
    target: { pk?: string },
    text: string,
    params: Params,
    single: boolean,
    o: { ifMatch?: string; returning?: ReturnPreference },
    tx: Tx | undefined,
  ): Promise<WriteResult> {
    if (o.ifMatch === undefined) {
      const res = await singleStatement<WrittenRow>(ctx, tx, false, text, params.values).catch(writeOverflow);
      if (single && writtenCount(res.rows) === 0)
        throw notFound('ROW_NOT_FOUND', `no row ${JSON.stringify(target.pk)} in ${t.name}`);
      return result(res.rows, !single, o.returning);
    }
    return runner(
      ctx,
      tx,
      false,
    )(async (r) => {
      const res = await r.query<WrittenRow>(text, params.values, false).catch(writeOverflow);
      if (single && writtenCount(res.rows) === 0) {
        if (o.ifMatch !== undefined) {
          const p = new Params();
          const cur = await r.query<{ v: string }>(
            `SELECT t0.xmin::text AS v FROM ${t.qualified} t0 ${whereSql(t, [pkFilter(t, target.pk!)], p, ctx)}`,
            p.values,
            true,
          );
          const current = cur.rows[0];
          if (current)
            throw preconditionFailed(
              'VERSION_MISMATCH',
              `row ${target.pk} of ${t.name} has changed since version ${o.ifMatch}`,
              { current_etag: `"${current.v}"` },
            );
        }
        throw notFound('ROW_NOT_FOUND', `no row ${JSON.stringify(target.pk)} in ${t.name}`);
      }
      return result(res.rows, !single, o.returning);
    });
  }
}

/** A written row (`j` its JSON, `v` its version), or with return=minimal the one row of the count `n`. */
type WrittenRow = { j: string; v: string; n?: number };

/** No own keys (without building the array Object.keys would). */
function isEmpty(o: object): boolean {
  for (const k in o) if (Object.hasOwn(o, k)) return false;
  return true;
}

const writtenCount = (rows: WrittenRow[]): number => (rows[0]?.n !== undefined ? rows[0].n : rows.length);

function result(
  rows: WrittenRow[],
  many: boolean,
  returning: ReturnPreference | undefined,
): WriteResult {
  const count = writtenCount(rows);
  const etag = !many && count > 0 && rows[0] ? `"${rows[0].v}"` : undefined;
  if (returning === 'minimal') return { count, etag };
  const data = many ? `[${rows.map((r) => r.j).join(',')}]` : (rows[0]?.j ?? 'null');
  return { body: `{"data":${data}}`, count: rows.length, etag };
}

/** JSON columns take JSON text; other values go as they are (arrays become PostgreSQL arrays). */
export function toParam(t: TableInfo, column: string, value: unknown): unknown {
  const c = t.columnMap.get(column);
  if (value === null) return null;
  if (c && (c.udt === 'json' || c.udt === 'jsonb') && !c.isArray) return JSON.stringify(value);
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) return JSON.stringify(value);
  return value;
}

function parseEtag(v: string): string {
  const m = /^(?:W\/)?"?(\d{1,10})"?$/.exec(v.trim());
  if (!m) throw badRequest('INVALID_IF_MATCH', 'If-Match must be an ETag returned by this API, e.g. "12345"');
  return m[1]!;
}

export type RowsService = ReturnType<typeof createRowsService>;
