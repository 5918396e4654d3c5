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
import { filterSql, innerJoinsSql, joinWhere, orderSql, Params, pathSql, rowJsonSql, type BuildScope } from './rest-query/build.js';
import type { EmbedOptions, Filter, OrderItem, SelectItem } from './rest-query/parse.js';
import { resolveRelationship } from './rest-query/relations.js';
import { validateRow } from './rest-query/validate.js';
import { toParam } from './rows.js';

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
}

export interface WriteOptions {
  select?: SelectItem[];
  /** Roll the transaction back after the statement (Prefer: tx=rollback). */
  rollback?: boolean;
  /** Refuse (and roll back) when more rows would change (Prefer: max-affected with handling=strict). */
  maxAffected?: number;
}

export interface RestRowsOptions {
  db: Database;
  schema: SchemaRegistry;
  maxRows: number;
  countCap: number;
  afterCommit?: (ctx: SessionContext, tables: string[]) => Promise<void>;
  /** The compliance policy (declared columns: encryption, masking, blind indexes, audit). */
  compliance?: Enforcement;
}

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

  async function runWrite<T>(call: RestCall, t: TableInfo, o: WriteOptions, text: string, values: unknown[], map: (rows: Array<{ j: string }>) => T): Promise<T> {
    const check = (n: number) => {
      if (o.maxAffected !== undefined && n > o.maxAffected) {
        throw new AppError(400, 'MAX_AFFECTED_EXCEEDED', 'Query result exceeds max-affected preference constraint', { details: `The query affects ${n} rows` });
      }
    };
    if (!o.rollback && o.maxAffected === undefined) {
      const res = await db.tenantQuery<{ j: string }>(call.ctx, text, values, txOptions(call, false));
      await opts.afterCommit?.(call.ctx, [t.name]);
      return map(res.rows);
    }
    try {
      const out = await db.withTenant(
        call.ctx,
        async (tx: Tx) => {
          const res = await tx.query<{ j: string }>(text, values);
          check(res.rows.length);
          const value = map(res.rows);
          if (o.rollback) throw new Rollback(value);
          return value;
        },
        txOptions(call, false),
      );
      await opts.afterCommit?.(call.ctx, [t.name]);
      return out;
    } catch (err) {
      if (err instanceof Rollback) return err.value as T;
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

  return {
    /** A read: rows as JSON text, and the total when a count was asked for. */
    async read(
      call: RestCall,
      table: string,
      rq: RestQuery,
      o: { count?: CountMethod; stripNulls?: boolean; from?: { sql: (params: Params) => string; readOnly: boolean } } = {},
    ): Promise<ReadResult> {
      const guard = await guardOf(call.ctx);
      const params = new Params(guard);
      const registered = await schema.table(table);
      // a set-returning function of this table's row type is read like the table (RPC with filters)
      const t = o.from ? { ...registered, qualified: o.from.sql(params) } : registered;
      const readOnly = o.from?.readOnly ?? true;
      const s = await scopeFor(params, rq.embeds);
      const conds = conditions(t, rq, s);
      const where = conds.length ? ` WHERE ${conds.join(' AND ')}` : '';
      const countValues = [...params.values];
      const limit = Math.min(rq.limit ?? opts.maxRows, opts.maxRows);
      const json = rowJson(t, rq.select, s, o.stripNulls);
      const order = orderBy(t, rq, s);
      const paging = ` LIMIT ${params.add(limit)}${rq.offset ? ` OFFSET ${params.add(rq.offset)}` : ''}`;
      const text = `SELECT ${json}::text AS j FROM ${t.qualified} t0${where}${order}${paging}`;
      if (!o.count) {
        const res = await db.tenantQuery<{ j: string }>(call.ctx, text, params.values, txOptions(call, readOnly));
        return { rows: await reveal(guard, res.rows.map((r) => r.j)), offset: rq.offset };
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
          const [page, counted] = await Promise.all([
            tx.query<{ j: string }>(text, params.values),
            tx.query<{ n: string }>(countSql, countValues, { final: true }),
          ]);
          return { rows: page.rows.map((r) => r.j), offset: rq.offset, total: Number(counted.rows[0]?.n ?? 0) };
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
    ): Promise<string[]> {
      const t = await schema.table(table);
      const many = Array.isArray(body);
      const raw = (many ? (body as unknown[]) : [body]);
      if (raw.length === 0) return [];
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
      const text = `INSERT INTO ${t.qualified} AS t0${head}${conflict} RETURNING ${rowJson(t, o.select ?? [{ kind: 'star' }], s)}::text AS j`;
      return reveal(guard, await runWrite(call, t, o, text, params.values, (r) => r.map((x) => x.j)));
    },

    /** Update the rows the filters match; `{}` changes nothing. */
    async update(call: RestCall, table: string, rq: RestQuery, patch: unknown, o: WriteOptions): Promise<string[]> {
      const t = await schema.table(table);
      const guard = await guardOf(call.ctx);
      const row = await protect(guard, t, validateRow(t, patch, { partial: true }));
      const columns = Object.keys(row);
      const params = new Params(guard);
      const s = await scopeFor(params, rq.embeds);
      const where = writeWhere(t, rq, s, 'UPDATE');
      if (columns.length === 0) return [];
      const sets = columns.map((c) => `${q(c)} = ${params.add(toParam(t, c, row[c]))}`).join(', ');
      const text = `UPDATE ${t.qualified} AS t0 SET ${sets} ${where} RETURNING ${rowJson(t, o.select ?? [{ kind: 'star' }], s)}::text AS j`;
      return reveal(guard, await runWrite(call, t, o, text, params.values, (r) => r.map((x) => x.j)));
    },

    /** Delete the rows the filters match. */
    async remove(call: RestCall, table: string, rq: RestQuery, o: WriteOptions): Promise<string[]> {
      const t = await schema.table(table);
      const guard = await guardOf(call.ctx);
      const params = new Params(guard);
      const s = await scopeFor(params, rq.embeds);
      const where = writeWhere(t, rq, s, 'DELETE');
      const text = `DELETE FROM ${t.qualified} AS t0 ${where} RETURNING ${rowJson(t, o.select ?? [{ kind: 'star' }], s)}::text AS j`;
      return reveal(guard, await runWrite(call, t, o, text, params.values, (r) => r.map((x) => x.j)));
    },
  };
}

function findEmbed(select: SelectItem[], name: string): Extract<SelectItem, { kind: 'embed' }> | undefined {
  for (const s of select) if (s.kind === 'embed' && (s.alias ?? s.relation) === name) return s;
  return undefined;
}

export type RestRowsService = ReturnType<typeof createRestRowsService>;
