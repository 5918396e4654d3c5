/**
 * Reads and writes with PostgREST's semantics (the /rest/v1 face): offset paging, no implicit order,
 * counts for Content-Range, bare arrays, writes by filter with PostgREST's preferences. Built from
 * the same pieces as the rows API (parser, filter and select builders, JSON Schema validation) and
 * run in the same tenant session, so row-level security decides exactly as on /v1.
 */
import pg from 'pg';
import type { Database } from '../../db/database.js';
import type { RequestSettings, SessionContext, Tx, TxOptions } from '../../db/session.js';
import { badRequest, AppError } from '../../errors.js';
import type { SchemaRegistry, TableInfo } from './schema-registry.js';
import type { Enforcement, Guard } from '../compliance/index.js';
import { checkEqValue, filterSql, innerJoinsSql, joinWhere, orderSql, Params, pathSql, rowJsonSql, type BuildScope } from './rest-query/build.js';
import type { EmbedOptions, Filter, OrderItem, SelectItem } from './rest-query/parse.js';
import { resolveRelationship } from './rest-query/relations.js';
import { validateRow } from './rest-query/validate.js';
import { toParam } from './rows.js';
import { boundJsonSql, boundOneJsonSql, boundWriteSql, isAnswerTooLarge, isOver, tooLarge } from './response-bounds.js';

const q = pg.escapeIdentifier;

export type CountMethod = 'exact' | 'planned' | 'estimated';

/** A parsed PostgREST read (or the filters of a write). */
export interface RestQuery {
  select: SelectItem[];
  filters: Filter[];
  order: OrderItem[];
  embeds: Map<string, EmbedOptions>;
  limit?: number;
  offset: number;
  /** `embed=is.null` / `embed=not.is.null`: keep parents without / with a related row. */
  embedNull: Array<{ embed: string; isNull: boolean }>;
}

export interface RestCall {
  ctx: SessionContext;
  /** PostgREST's request.* settings for this request. */
  request: RequestSettings;
}

export interface ReadResult {
  /** JSON text of each row. */
  rows: string[];
  offset: number;
  total?: number;
  /** The names of the answer's columns, given when there are no rows (a CSV answer's header line). */
  columns?: string[];
}

export interface WriteOptions {
  select?: SelectItem[];
  /** Roll the transaction back after the statement (Prefer: tx=rollback). */
  rollback?: boolean;
  /** Refuse (and roll back) when more rows would change (Prefer: max-affected with handling=strict). */
  maxAffected?: number;
  /**
   * The rows are sent back (return=representation, or headers-only's Location): default true. When
   * false the statement answers only how many rows it wrote (no row leaves PostgreSQL).
   */
  returnRows?: boolean;
}

/** What a write answers: the rows' JSON text (empty when not asked for) and how many were written. */
export interface Written {
  rows: string[];
  count: number;
}

export interface RestRowsOptions {
  db: Database;
  schema: SchemaRegistry;
  maxRows: number;
  countCap: number;
  /** Most bytes of JSON one answer (a read's page, a write's returned rows) carries (ROWS_MAX_RESPONSE_BYTES / RESPONSE_MAX_BYTES): past it 413. */
  maxResponseBytes?: number;
  afterCommit?: (ctx: SessionContext, tables: string[]) => Promise<void>;
  /** The compliance policy (declared columns: encryption, masking, blind indexes, audit). */
  compliance?: Enforcement;
}

/**
 * A prebuilt statement of readEq: one per table, filtered column, select list and null stripping
 * (and compliance policy version, whose tags the statement carries).
 */
interface EqStatement {
  text: string;
  /** The values after the filter's (`$1`): constants of the select list (JSON path keys). */
  rest: unknown[];
  /** The policy version it was built under (-1: nothing declared). */
  version: number;
  /** The builders tagged a declared column: the answer goes through reveal(). */
  tagged: boolean;
  /** The answer's column names (a CSV answer's header line when there are no rows). */
  columns: string[];
}
/** Prebuilt readEq statements kept per table (the oldest is dropped past this). */
export const EQ_STATEMENTS_PER_TABLE = 64;

/** Thrown inside a transaction to roll it back while keeping its result (Prefer: tx=rollback). */
class Rollback<T> extends Error {
  constructor(readonly value: T) {
    super('rollback');
  }
}

export function createRestRowsService(opts: RestRowsOptions) {
  const guardOf = (ctx: SessionContext) => (opts.compliance ? opts.compliance.guard(ctx) : undefined);
  /** Rows (JSON texts) as the caller's role may see them. */
  async function reveal(guard: Guard | undefined, rows: string[]): Promise<string[]> {
    if (!guard?.tagged || rows.length === 0) return rows;
    const out = JSON.parse(await guard.reveal(`[${rows.join(',')}]`, { path: 'rest' })) as unknown[];
    return out.map((r) => JSON.stringify(r));
  }
  const protect = async (guard: Guard | undefined, t: TableInfo, row: Record<string, unknown>) => (guard ? guard.protectRow(t.name, row) : row);
  const { db, schema } = opts;
  const maxBytes = opts.maxResponseBytes ?? 16 * 1024 * 1024;
  const SETTING = 'ROWS_MAX_RESPONSE_BYTES / RESPONSE_MAX_BYTES';
  const readOverflow = () => tooLarge('the answer', maxBytes, SETTING, 'ask for fewer rows (limit), fewer columns (select) or smaller embeds (<embed>.limit)');
  /** ST413 of a bounded write (rolled back) as the 413 naming the setting. */
  const writeOverflow = (err: unknown): never => {
    if (!isAnswerTooLarge(err)) throw err;
    throw tooLarge('the rows this write returns', maxBytes, SETTING, 'nothing was written; ask for Prefer: return=minimal, fewer columns (select) or change fewer rows at a time');
  };

  /**
   * `<dml> RETURNING <row JSON>` bounded in bytes (past the bound PostgreSQL fails the statement,
   * nothing is written), or, when the rows are not sent back, only the count of rows written.
   */
  function returning(dml: string, json: string, o: WriteOptions): string {
    if (o.returnRows === false) return `WITH strata_w AS (${dml} RETURNING 1) SELECT NULL::text AS j, count(*)::int AS n FROM strata_w`;
    // the bound is the service's own setting, an integer: written in the statement, not one more parameter
    return boundWriteSql(`strata_w AS (${dml} RETURNING ${json}::text AS j)`, String(Math.floor(maxBytes)));
  }

  async function scopeFor(params: Params, embeds: Map<string, EmbedOptions>): Promise<BuildScope> {
    const tables = await schema.tables();
    return {
      tables,
      params,
      embeds,
      maxEmbedLimit: opts.maxRows,
      alias: 0,
      relate: (t, item) => resolveRelationship(tables, t, item),
      implicitEmbedOrder: false,
    };
  }

  /** WHERE conditions of a query: filters, `!inner` embeds and embed null checks. */
  function conditions(t: TableInfo, rq: RestQuery, s: BuildScope): string[] {
    const out = rq.filters.map((f) => filterSql(t, 't0', f, s.params));
    out.push(...innerJoinsSql(t, 't0', rq.select, s));
    for (const n of rq.embedNull) {
      const item = findEmbed(rq.select, n.embed);
      if (!item) throw badRequest('UNKNOWN_EMBED', `${n.embed} is not an embedded resource in select; embed it first`, { embed: n.embed });
      const exists = innerJoinsSql(t, 't0', [{ ...item, inner: true }], s)[0]!;
      out.push(n.isNull ? `NOT ${exists}` : exists);
    }
    return out;
  }

  /** ORDER BY with PostgREST's JSON paths and to-one embedded columns (`authors(name).desc`). */
  function orderBy(t: TableInfo, rq: RestQuery, s: BuildScope): string {
    const items = rq.order.map((o) => {
      const dir = `${o.direction.toUpperCase()}${o.nulls ? ` NULLS ${o.nulls.toUpperCase()}` : ''}`;
      if (o.relation !== undefined) {
        const item = findEmbed(rq.select, o.relation);
        if (!item) throw badRequest('UNKNOWN_EMBED', `'${o.relation}' is not an embedded resource in this request`, { hint: `Verify that '${o.relation}' is included in the 'select' query parameter.` });
        const rel = s.relate!(t, item);
        const target = s.tables.get(rel.table)!;
        if (rel.kind !== 'many-to-one' && rel.kind !== 'one-to-one') {
          throw badRequest('RELATED_ORDER_NOT_TO_ONE', `A related order on '${o.relation}' is not possible`, { hint: 'Note that only to-one relationships can be ordered by' });
        }
        if (!target.columnMap.has(o.column)) throw badRequest('UNKNOWN_COLUMN', `column ${target.name}.${o.column} does not exist`, { column: o.column, table: target.name });
        s.params.guard?.checkOrder(target.name, o.column);
        const a = `t${++s.alias}`;
        return `(SELECT ${a}.${q(o.column)} FROM ${target.qualified} ${a} WHERE ${joinWhere(a, 't0', rel, target, s, o.relation)} LIMIT 1) ${dir}`;
      }
      if (!t.columnMap.has(o.column)) throw badRequest('UNKNOWN_COLUMN', `column ${t.name}.${o.column} does not exist`, { column: o.column, table: t.name });
      s.params.guard?.checkOrder(t.name, o.column);
      if (o.path?.length) return `${pathSql(`t0.${q(o.column)}`, o.path, s.params)} ${dir}`;
      return orderSql('t0', [o]);
    });
    return items.length ? ` ORDER BY ${items.join(', ')}` : '';
  }

  function txOptions(call: RestCall, readOnly: boolean): TxOptions {
    return { readOnly, request: call.request };
  }

  const rowJson = (t: TableInfo, select: SelectItem[], s: BuildScope, stripNulls = false) => {
    const json = rowJsonSql(t, 't0', select, s);
    return stripNulls ? `json_strip_nulls(${json})` : json;
  };

  async function runWrite(call: RestCall, t: TableInfo, o: WriteOptions, text: string, values: unknown[]): Promise<Written> {
    const written = (rows: Array<{ j: string | null; n?: number }>): Written =>
      rows[0]?.n !== undefined ? { rows: [], count: rows[0].n } : { rows: rows.map((x) => x.j ?? 'null'), count: rows.length };
    const check = (n: number) => {
      if (o.maxAffected !== undefined && n > o.maxAffected) {
        throw new AppError(400, 'MAX_AFFECTED_EXCEEDED', 'Query result exceeds max-affected preference constraint', { details: `The query affects ${n} rows` });
      }
    };
    if (!o.rollback && o.maxAffected === undefined) {
      const res = await db.tenantQuery<{ j: string | null; n?: number }>(call.ctx, text, values, txOptions(call, false)).catch(writeOverflow);
      await opts.afterCommit?.(call.ctx, [t.name]);
      return written(res.rows);
    }
    try {
      const out = await db.withTenant(
        call.ctx,
        async (tx: Tx) => {
          const res = await tx.query<{ j: string | null; n?: number }>(text, values).catch(writeOverflow);
          const value = written(res.rows);
          check(value.count);
          if (o.rollback) throw new Rollback(value);
          return value;
        },
        txOptions(call, false),
      );
      await opts.afterCommit?.(call.ctx, [t.name]);
      return out;
    } catch (err) {
      if (err instanceof Rollback) return err.value as Written;
      throw err;
    }
  }

  function writeWhere(t: TableInfo, rq: RestQuery, s: BuildScope, verb: string): string {
    const conds = conditions(t, rq, s);
    if (conds.length === 0) {
      // Strata refuses a write to every row, as PostgREST does with pg-safeupdate
      throw badRequest('UNFILTERED_MASS_WRITE', `${verb} requires a WHERE clause`, { hint: 'add a filter, e.g. ?id=eq.1' });
    }
    return `WHERE ${conds.join(' AND ')}`;
  }

  /** readEq's statements per table (a schema refresh makes new TableInfo, and so new statements). */
  const eqStatements = new WeakMap<TableInfo, Map<string, EqStatement>>();

  /** Build the statement of `column = $1` with a select list, exactly as read() would build it. */
  async function buildEq(t: TableInfo, column: string, value: string, select: SelectItem[], stripNulls: boolean, guard: Guard | undefined): Promise<EqStatement> {
    const params = new Params(guard);
    const s = await scopeFor(params, new Map());
    const rq: RestQuery = { select, filters: [{ kind: 'cond', column, op: 'eq', not: false, value }], order: [], embeds: s.embeds, offset: 0, embedNull: [] };
    const where = conditions(t, rq, s).join(' AND ');
    const json = rowJson(t, select, s, stripNulls);
    // a single-column primary key (not a view's inferred one, nor one with tenant_id first): at most
    // one row, so the bound needs no window and no LIMIT; otherwise read()'s LIMIT and bound
    const unique = t.sources === undefined && t.indexes.some((ix) => ix.primary && ix.columns.length === 1 && ix.columns[0] === column);
    const inner = `SELECT ${json}::text AS j FROM ${t.qualified} t0 WHERE ${where}`;
    const max = String(Math.floor(maxBytes));
    const text = unique ? boundOneJsonSql(inner, max) : boundJsonSql(`${inner} LIMIT ${opts.maxRows}`, [], max);
    return { text, rest: params.values.slice(1), version: guard ? guard.version : -1, tagged: guard?.tagged === true, columns: columnNames(t, select, s) };
  }

  return {
    /**
     * read() of the commonest shape, `?<column>=eq.<value>` with an optional select and nothing
     * else (postgrest-js's `.eq(col, v).single()` / `.maybeSingle()`): the statement is built once
     * per table, column and select list and kept, so a request only checks the value and runs it,
     * in the same tenant session, with the same bound and the same masking as read(). Undefined
     * when the column is not one this path serves (unknown, declared by the compliance policy or a
     * blind index): the caller then takes read(), which answers or refuses as usual.
     */
    async readEq(call: RestCall, table: string, column: string, value: string, select: SelectItem[], selectKey: string, o: { stripNulls?: boolean } = {}): Promise<ReadResult | undefined> {
      const t = await schema.table(table);
      const c = t.columnMap.get(column);
      if (c === undefined) return undefined;
      const guard = await guardOf(call.ctx);
      // a declared column's filter is checked (and maybe rewritten to its blind index) per role and tenant
      if (guard && (guard.table(t.name)?.has(column) || guard.isBlindIndex(t.name, column))) return undefined;
      checkEqValue(c, value);
      const stripNulls = o.stripNulls === true;
      const key = `${stripNulls ? 's' : 'k'}${column}\u0000${selectKey}`;
      let byTable = eqStatements.get(t);
      if (byTable === undefined) eqStatements.set(t, (byTable = new Map<string, EqStatement>()));
      let st = byTable.get(key);
      if (st === undefined || st.version !== (guard ? guard.version : -1)) {
        st = await buildEq(t, column, value, select, stripNulls, guard);
        if (byTable.size >= EQ_STATEMENTS_PER_TABLE) byTable.delete(byTable.keys().next().value!);
        byTable.set(key, st);
      } else if (st.tagged && guard) guard.tagged = true;
      const values = st.rest.length === 0 ? [value] : [value, ...st.rest];
      const res = await db.tenantQuery<{ j: string }>(call.ctx, st.text, values, txOptions(call, true));
      const rows = res.rows;
      if (rows.length > 0 && isOver(rows[rows.length - 1]!)) throw readOverflow();
      const out: string[] = new Array<string>(rows.length);
      for (let i = 0; i < rows.length; i++) out[i] = rows[i]!.j;
      return { rows: await reveal(guard, out), offset: 0, ...(rows.length === 0 ? { columns: st.columns } : {}) };
    },

    /** A read: rows as JSON text, and the total when a count was asked for. */
    async read(
      call: RestCall,
      table: string,
      rq: RestQuery,
      o: {
        count?: CountMethod;
        stripNulls?: boolean;
        /**
         * Read a function's result instead of the table: `sql` is the call. Of a table's row type it
         * is read like the table (embeds and all); otherwise `table` describes its columns
         * (resultTable) and `value` names the one column of a scalar result, answered bare.
         */
        from?: { sql: (params: Params) => string; readOnly: boolean; table?: (sql: string) => TableInfo; value?: string };
      } = {},
    ): Promise<ReadResult> {
      const guard = await guardOf(call.ctx);
      const params = new Params(guard);
      const from = o.from;
      const t = from?.table ? from.table(from.sql(params)) : from ? { ...(await schema.table(table)), qualified: from.sql(params) } : await schema.table(table);
      const readOnly = o.from?.readOnly ?? true;
      const s = await scopeFor(params, rq.embeds);
      const conds = conditions(t, rq, s);
      const where = conds.length ? ` WHERE ${conds.join(' AND ')}` : '';
      const countValues = [...params.values];
      const limit = Math.min(rq.limit ?? opts.maxRows, opts.maxRows);
      const json = from?.value !== undefined ? `to_json(t0.${q(from.value)})` : rowJson(t, rq.select, s, o.stripNulls);
      const order = orderBy(t, rq, s);
      const paging = ` LIMIT ${params.add(limit)}${rq.offset ? ` OFFSET ${params.add(rq.offset)}` : ''}`;
      // PostgreSQL sums the rows' JSON sizes and sends none past the bound (response-bounds.ts)
      const text = boundJsonSql(`SELECT ${json}::text AS j FROM ${t.qualified} t0${where}${order}${paging}`, [], String(Math.floor(maxBytes)));
      const page = (rows: Array<Record<string, unknown>>): string[] => {
        if (rows.length > 0 && isOver(rows[rows.length - 1]!)) throw readOverflow();
        return rows.map((r) => r['j'] as string);
      };
      const answer = (rows: string[], total?: number): ReadResult => ({
        rows,
        offset: rq.offset,
        ...(total === undefined ? {} : { total }),
        ...(rows.length === 0 ? { columns: columnNames(t, rq.select, s) } : {}),
      });
      if (!o.count) {
        const res = await db.tenantQuery<{ j: string }>(call.ctx, text, params.values, txOptions(call, readOnly));
        return answer(await reveal(guard, page(res.rows)));
      }
      // planned and estimated counts would read the planner's table-wide statistics, which describe
      // every tenant's rows: a tenant gets an exact count capped at POSTGREST_COUNT_CAP instead
      const countSql =
        o.count === 'exact'
          ? `SELECT count(*)::bigint AS n FROM ${t.qualified} t0${where}`
          : `SELECT count(*)::bigint AS n FROM (SELECT 1 FROM ${t.qualified} t0${where} LIMIT ${opts.countCap}) c`;
      const counted = await db.withTenant(
        call.ctx,
        async (tx) => {
          const [p, counted] = await Promise.all([
            tx.query<{ j: string }>(text, params.values),
            tx.query<{ n: string }>(countSql, countValues, { final: true }),
          ]);
          return answer(await reveal(guard, page(p.rows)), Number(counted.rows[0]?.n ?? 0));
        },
        txOptions(call, readOnly),
      );
      return { ...counted, rows: await reveal(guard, counted.rows) };
    },

    /**
     * Insert rows (an empty array inserts nothing). `columns` limits the columns taken from each
     * object; a key missing from an object is NULL, or the column default with `missingDefault`.
     */
    async insert(
      call: RestCall,
      table: string,
      body: unknown,
      o: WriteOptions & { columns?: string[]; missingDefault?: boolean; onConflict?: string[]; resolution?: 'merge' | 'ignore' },
    ): Promise<Written> {
      const t = await schema.table(table);
      const many = Array.isArray(body);
      const raw = (many ? (body as unknown[]) : [body]);
      if (raw.length === 0) return { rows: [], count: 0 };
      if (raw.length > opts.maxRows * 10) throw badRequest('TOO_MANY_ROWS', `at most ${opts.maxRows * 10} rows per request`);
      let columns: string[];
      if (o.columns) {
        for (const c of o.columns) {
          if (!t.columnMap.has(c)) throw badRequest('UNKNOWN_COLUMN', `Could not find the '${c}' column of '${t.name}' in the schema cache`, { column: c, table: t.name });
        }
        columns = o.columns;
      } else {
        const first = raw[0];
        columns = first !== null && typeof first === 'object' && !Array.isArray(first) ? Object.keys(first) : [];
        const key = [...columns].sort().join(',');
        raw.forEach((r, i) => {
          if (r !== null && typeof r === 'object' && !Array.isArray(r) && [...Object.keys(r)].sort().join(',') !== key) {
            throw badRequest('KEYS_MISMATCH', 'All object keys must match', { index: i });
          }
        });
      }
      const guard = await guardOf(call.ctx);
      const rows = await Promise.all(
        raw.map((r, i) => {
          const picked = o.columns && r !== null && typeof r === 'object' && !Array.isArray(r) ? Object.fromEntries(Object.entries(r).filter(([k]) => columns.includes(k))) : r;
          return protect(guard, t, validateRow(t, picked, { partial: Boolean(o.columns), ...(many ? { index: i } : {}) }));
        }),
      );
      // an encrypted searchable column brings its blind index column along
      for (const r of rows) for (const k of Object.keys(r)) if (!columns.includes(k)) columns = [...columns, k];
      const params = new Params(guard);
      const values = rows.map(
        (r) => `(${columns.map((c) => (c in r ? params.add(toParam(t, c, r[c])) : o.missingDefault ? 'DEFAULT' : 'NULL')).join(', ')})`,
      );
      let conflict = '';
      if (o.resolution) {
        const keys = o.onConflict ?? t.primaryKey;
        if (keys.length === 0) throw badRequest('NO_UNIQUE_KEY', `${t.name} has no primary key: give on_conflict`);
        for (const k of keys) if (!t.columnMap.has(k)) throw badRequest('UNKNOWN_COLUMN', `column ${t.name}.${k} does not exist`, { column: k });
        const unique = t.indexes.some((ix) => ix.unique && ix.columns.length === keys.length && ix.columns.every((c) => keys.includes(c)));
        if (!unique) throw badRequest('NO_UNIQUE_KEY', 'there is no unique or exclusion constraint matching the ON CONFLICT specification', { on_conflict: keys });
        const updates = columns.filter((c) => !keys.includes(c));
        conflict =
          o.resolution === 'ignore' || updates.length === 0
            ? ` ON CONFLICT (${keys.map(q).join(', ')}) DO NOTHING`
            : ` ON CONFLICT (${keys.map(q).join(', ')}) DO UPDATE SET ${updates.map((c) => `${q(c)} = EXCLUDED.${q(c)}`).join(', ')}`;
      } else if (o.onConflict) {
        throw badRequest('ON_CONFLICT_WITHOUT_RESOLUTION', 'on_conflict needs Prefer: resolution=merge-duplicates or resolution=ignore-duplicates');
      }
      const s = await scopeFor(params, new Map());
      const head = columns.length ? ` (${columns.map(q).join(', ')}) VALUES ${values.join(', ')}` : ' DEFAULT VALUES';
      if (!columns.length && rows.length > 1) throw badRequest('EMPTY_BODY', 'bulk rows must name at least one column');
      const text = returning(`INSERT INTO ${t.qualified} AS t0${head}${conflict}`, rowJson(t, o.select ?? [{ kind: 'star' }], s), o);
      const w = await runWrite(call, t, o, text, params.values);
      return { ...w, rows: await reveal(guard, w.rows) };
    },

    /** Update the rows the filters match; `{}` changes nothing. */
    async update(call: RestCall, table: string, rq: RestQuery, patch: unknown, o: WriteOptions): Promise<Written> {
      const t = await schema.table(table);
      const guard = await guardOf(call.ctx);
      const row = await protect(guard, t, validateRow(t, patch, { partial: true }));
      const columns = Object.keys(row);
      const params = new Params(guard);
      const s = await scopeFor(params, rq.embeds);
      const where = writeWhere(t, rq, s, 'UPDATE');
      if (columns.length === 0) return { rows: [], count: 0 };
      const sets = columns.map((c) => `${q(c)} = ${params.add(toParam(t, c, row[c]))}`).join(', ');
      const text = returning(`UPDATE ${t.qualified} AS t0 SET ${sets} ${where}`, rowJson(t, o.select ?? [{ kind: 'star' }], s), o);
      const w = await runWrite(call, t, o, text, params.values);
      return { ...w, rows: await reveal(guard, w.rows) };
    },

    /** Delete the rows the filters match. */
    async remove(call: RestCall, table: string, rq: RestQuery, o: WriteOptions): Promise<Written> {
      const t = await schema.table(table);
      const guard = await guardOf(call.ctx);
      const params = new Params(guard);
      const s = await scopeFor(params, rq.embeds);
      const where = writeWhere(t, rq, s, 'DELETE');
      const text = returning(`DELETE FROM ${t.qualified} AS t0 ${where}`, rowJson(t, o.select ?? [{ kind: 'star' }], s), o);
      const w = await runWrite(call, t, o, text, params.values);
      return { ...w, rows: await reveal(guard, w.rows) };
    },
  };
}

/** The names the select gives its answer's columns, in order (as rowJsonSql names them). */
function columnNames(t: TableInfo, select: SelectItem[], s: BuildScope): string[] {
  const out: string[] = [];
  for (const item of select) {
    if (item.kind === 'star') out.push(...t.columns.map((c) => c.name));
    else if (item.kind === 'column') out.push(item.alias ?? (item.path?.length ? item.path[item.path.length - 1]!.key : item.name));
    else if (!item.spread) out.push(item.alias ?? item.relation);
    else {
      const target = s.tables.get(s.relate!(t, item).table);
      if (target) out.push(...columnNames(target, item.select, s));
    }
  }
  return out;
}

function findEmbed(select: SelectItem[], name: string): Extract<SelectItem, { kind: 'embed' }> | undefined {
  for (const s of select) if (s.kind === 'embed' && (s.alias ?? s.relation) === name) return s;
  return undefined;
}

export type RestRowsService = ReturnType<typeof createRestRowsService>;
