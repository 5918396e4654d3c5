/**
 * SQL for the rows API, built from a parsed query and the schema registry. Every identifier comes
 * from the registry (quoted with escapeIdentifier); every value is a $n parameter. Rows are
 * rendered to JSON by PostgreSQL (`to_json`), embedded relationships as correlated subqueries, so
 * a page with two levels of embedding is still one statement.
 */
import pg from 'pg';
import { badRequest } from '../../../errors.js';
import { relationships, type ColumnInfo, type Relationship, type TableInfo } from '../schema-registry.js';
import { parseInList, type EmbedOptions, type Filter, type JsonStep, type OrderItem, type SelectItem } from './parse.js';

const q = pg.escapeIdentifier;

/** Parameters collected while building one statement. */
export class Params {
  readonly values: unknown[] = [];
  /** The compliance guard of the request (src/services/compliance/enforce.ts), when columns are declared. */
  constructor(readonly guard?: ColumnGuard) {}
  add(v: unknown): string {
    this.values.push(v);
    return `$${this.values.length}`;
  }
}

/**
 * What the builders ask of the compliance policy (implemented by the compliance capability's
 * Guard): tag declared columns in select lists, route filters on encrypted columns through their
 * blind index, refuse filters and order that would leak a masked value.
 */
export interface ColumnGuard {
  columnSql(table: string, column: string, expr: string): string;
  /** Left out of `*` (a blind index column). */
  omit(table: string, column: string): boolean;
  checkFilter(table: string, column: string, op: string, opts?: { path?: boolean; quant?: boolean }): { via: 'bidx'; column: string } | { via: 'null' } | undefined;
  blindIndexOf(table: string, column: string, value: string): string;
  checkOrder(table: string, column: string): void;
}

export interface BuildScope {
  tables: Map<string, TableInfo>;
  params: Params;
  embeds: Map<string, EmbedOptions>;
  maxEmbedLimit: number;
  alias: number;
  /**
   * How an embed names its relationship. The default is the rows API's naming (relationships());
   * the PostgREST face passes PostgREST's (table names, hints, many-to-many, ambiguity errors).
   */
  relate?: (t: TableInfo, item: Extract<SelectItem, { kind: 'embed' }>) => Relationship;
  /** Order embedded lists by primary key when no order is given (the rows API does; PostgREST does not). */
  implicitEmbedOrder?: boolean;
}

function column(t: TableInfo, name: string): ColumnInfo {
  const c = t.columnMap.get(name);
  if (!c) throw badRequest('UNKNOWN_COLUMN', `column ${JSON.stringify(name)} does not exist in ${t.name}`, { column: name, table: t.name });
  return c;
}

const INT_RANGE: Record<string, [bigint, bigint]> = {
  int2: [-32768n, 32767n],
  int4: [-2147483648n, 2147483647n],
  int8: [-9223372036854775808n, 9223372036854775807n],
};
const UUID = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;
const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

/** Check a filter value against the column's type before it reaches SQL: 400 naming the column. */
export function checkValue(c: ColumnInfo, value: string): void {
  const bad = (why: string) =>
    badRequest('INVALID_FILTER_VALUE', `${JSON.stringify(value)} is not a valid value for column ${c.name} (${c.type}): ${why}`, { column: c.name, value });
  if (c.isArray) return; // array literals are parsed by PostgreSQL into the element type
  const range = INT_RANGE[c.udt];
  if (range) {
    if (!/^[+-]?\d{1,20}$/.test(value)) throw bad('expected an integer');
    const n = BigInt(value);
    if (n < range[0] || n > range[1]) throw bad('out of range');
    return;
  }
  switch (c.udt) {
    case 'numeric':
    case 'float4':
    case 'float8':
      if (!NUMBER.test(value) && !/^(NaN|-?Infinity)$/.test(value)) throw bad('expected a number');
      return;
    case 'bool':
      if (!/^(true|false|t|f)$/i.test(value)) throw bad('expected true or false');
      return;
    case 'uuid':
      if (!UUID.test(value)) throw bad('expected a UUID');
      return;
    case 'date':
    case 'timestamp':
    case 'timestamptz':
      if (Number.isNaN(Date.parse(value)) && !/^-?infinity$/i.test(value)) throw bad('expected an ISO 8601 date or timestamp');
      return;
    case 'json':
    case 'jsonb':
      try {
        JSON.parse(value);
      } catch {
        throw bad('expected JSON');
      }
      return;
  }
}

/** What filterSql checks of an `eq` value (a range column's value is left to PostgreSQL). */
export function checkEqValue(c: ColumnInfo, value: string): void {
  if (!isRange(c)) checkValue(c, value);
}

const TEXTUAL = new Set(['text', 'varchar', 'bpchar', 'name', 'citext']);
const COMPARE: Record<string, string> = { eq: '=', neq: '<>', gt: '>', gte: '>=', lt: '<', lte: '<=', like: 'LIKE', ilike: 'ILIKE', match: '~', imatch: '~*' };
const RANGE_OPS: Record<string, string> = { sl: '<<', sr: '>>', nxl: '&<', nxr: '&>', adj: '-|-', cs: '@>', cd: '<@', ov: '&&' };
const isRange = (c: ColumnInfo) => !c.isArray && /range$/.test(c.udt);

/** `alias."col"->'a'->>'b'`, keys as parameters (text, or int for array indexes). */
export function pathSql(col: string, path: JsonStep[] | undefined, params: Params): string {
  if (!path?.length) return col;
  return path.reduce((acc, s) => `${acc}${s.op}${params.add(s.key)}::${/^-?\d+$/.test(s.key) ? 'int' : 'text'}`, col);
}

/** The column a filter with a JSON path compares: JSON after `->`, text after `->>`. */
function pathColumn(c: ColumnInfo, path: JsonStep[]): ColumnInfo {
  const text = path[path.length - 1]!.op === '->>';
  return { ...c, type: text ? 'text' : 'jsonb', udt: text ? 'text' : 'jsonb', isArray: false, enum: null, maxLength: null };
}

/** `{a,b}` or `(a,b)` -> ['a', 'b'] for quantified operators. */
function quantList(c: ColumnInfo, value: string): string[] {
  const m = /^\{(.*)\}$/s.exec(value) ?? /^\((.*)\)$/s.exec(value);
  if (!m) throw badRequest('INVALID_FILTER_VALUE', `a quantified filter on ${c.name} takes a list such as {a,b}`, { column: c.name });
  return parseInList(c.name, `(${m[1]!})`);
}
const FTS: Record<string, string> = { fts: 'to_tsquery', plfts: 'plainto_tsquery', phfts: 'phraseto_tsquery', wfts: 'websearch_to_tsquery' };

/** One filter as SQL on the table aliased `alias`. */
export function filterSql(t: TableInfo, alias: string, f: Filter, params: Params): string {
  if (f.kind !== 'cond') {
    const parts = f.items.map((i) => filterSql(t, alias, i, params));
    const joined = `(${parts.join(f.kind === 'and' ? ' AND ' : ' OR ')})`;
    return f.not ? `NOT ${joined}` : joined;
  }
  const base = column(t, f.column);
  if (params.guard) {
    const via = params.guard.checkFilter(t.name, base.name, f.op, { path: !!f.path?.length, quant: !!f.quant });
    if (via?.via === 'bidx') return blindIndexFilterSql(t, alias, f, params, via.column);
  }
  const c = f.path?.length ? pathColumn(base, f.path) : base;
  const col = pathSql(`${alias}.${q(base.name)}`, f.path, params);
  const textual = (x: string) => (TEXTUAL.has(c.udt) && !c.isArray ? x : `${x}::text`);
  let sql: string;
  if (f.quant) {
    const list = quantList(c, f.value);
    const pattern = f.op === 'like' || f.op === 'ilike';
    if (!pattern && f.op !== 'match' && f.op !== 'imatch') for (const v of list) checkValue(c, v);
    const values = pattern ? list.map((v) => v.replace(/\*/g, '%')) : list;
    const left = pattern || f.op === 'match' || f.op === 'imatch' ? textual(col) : col;
    sql = `${left} ${COMPARE[f.op]} ${f.quant.toUpperCase()}(${params.add(values)})`;
    return f.not ? `NOT (${sql})` : sql;
  }
  switch (f.op) {
    case 'eq':
    case 'neq':
    case 'gt':
    case 'gte':
    case 'lt':
    case 'lte':
      if (!isRange(c)) checkValue(c, f.value);
      sql = `${col} ${COMPARE[f.op]} ${params.add(f.value)}`;
      break;
    case 'isdistinct':
      checkValue(c, f.value);
      sql = `${col} IS DISTINCT FROM ${params.add(f.value)}`;
      break;
    case 'like':
    case 'ilike':
      sql = `${textual(col)} ${COMPARE[f.op]} ${params.add(f.value.replace(/\*/g, '%'))}`;
      break;
    case 'match':
    case 'imatch':
      sql = `${textual(col)} ${COMPARE[f.op]} ${params.add(f.value)}`;
      break;
    case 'sl':
    case 'sr':
    case 'nxl':
    case 'nxr':
    case 'adj':
      if (!isRange(c)) throw badRequest('INVALID_OPERATOR', `${f.op} needs a range column; ${c.name} is ${c.type}`, { column: c.name });
      sql = `${col} ${RANGE_OPS[f.op]} ${params.add(f.value)}::${c.type}`;
      break;
    case 'in': {
      const list = parseInList(c.name, f.value);
      for (const v of list) checkValue(c, v);
      sql = list.length === 0 ? 'false' : `${col} = ANY(${params.add(list)})`;
      break;
    }
    case 'is': {
      const v = f.value.toLowerCase();
      if (!['null', 'true', 'false', 'unknown'].includes(v)) {
        throw badRequest('INVALID_FILTER_VALUE', `is filter on ${c.name} takes null, true, false or unknown, got ${JSON.stringify(f.value)}`, { column: c.name });
      }
      if (v !== 'null' && c.udt !== 'bool') throw badRequest('INVALID_FILTER_VALUE', `is.${v} needs a boolean column; ${c.name} is ${c.type}`, { column: c.name });
      sql = `${col} IS ${v.toUpperCase()}`;
      break;
    }
    case 'cs':
    case 'cd':
    case 'ov': {
      if (isRange(c)) {
        sql = `${col} ${RANGE_OPS[f.op]} ${params.add(f.value)}::${c.type}`;
        break;
      }
      const isJson = c.udt === 'jsonb';
      if (!c.isArray && !isJson) throw badRequest('INVALID_OPERATOR', `${f.op} needs an array or jsonb column; ${c.name} is ${c.type}`, { column: c.name });
      if (f.op === 'ov' && !c.isArray) throw badRequest('INVALID_OPERATOR', `ov needs an array column; ${c.name} is ${c.type}`, { column: c.name });
      if (isJson) checkValue(c, f.value);
      else if (!/^\{.*\}$/s.test(f.value)) throw badRequest('INVALID_FILTER_VALUE', `${f.op} on ${c.name} takes an array literal such as {a,b}`, { column: c.name });
      sql = `${col} ${f.op === 'cs' ? '@>' : f.op === 'cd' ? '<@' : '&&'} ${params.add(f.value)}`;
      break;
    }
    case 'fts':
    case 'plfts':
    case 'phfts':
    case 'wfts': {
      const lang = f.language === undefined ? '' : `${params.add(f.language)}::regconfig, `;
      const doc = c.udt === 'tsvector' ? col : `to_tsvector(${lang}${TEXTUAL.has(c.udt) ? col : `${col}::text`})`;
      sql = `${doc} @@ ${FTS[f.op]}(${lang}${params.add(f.value)})`;
      break;
    }
  }
  return f.not ? `NOT (${sql})` : sql;
}

/** eq / neq / in on an encrypted searchable column: compared through its blind index column. */
function blindIndexFilterSql(t: TableInfo, alias: string, f: Extract<Filter, { kind: 'cond' }>, params: Params, bidx: string): string {
  const g = params.guard!;
  const col = `${alias}.${q(column(t, bidx).name)}`;
  let sql: string;
  if (f.op === 'in') {
    const list = parseInList(f.column, f.value).map((v) => g.blindIndexOf(t.name, f.column, v));
    sql = list.length === 0 ? 'false' : `${col} = ANY(${params.add(list)})`;
  } else {
    sql = `${col} ${f.op === 'eq' ? '=' : 'IS DISTINCT FROM'} ${params.add(g.blindIndexOf(t.name, f.column, f.value))}`;
  }
  return f.not ? `NOT (${sql})` : sql;
}

/** ORDER BY items, with the primary key appended so the order is total (needed for keyset paging). */
export function totalOrder(t: TableInfo, order: OrderItem[], guard?: ColumnGuard): OrderItem[] {
  for (const o of order) {
    column(t, o.column);
    guard?.checkOrder(t.name, o.column);
  }
  const out = [...order];
  for (const pk of t.primaryKey) if (!out.some((o) => o.column === pk)) out.push({ column: pk, direction: 'asc' });
  if (out.length === 0) throw badRequest('NO_PRIMARY_KEY', `table ${t.name} has no primary key; give an order`);
  return out;
}

const nullsFirst = (o: OrderItem) => o.nulls === 'first' || (o.nulls === undefined && o.direction === 'desc');

export function orderSql(alias: string, order: OrderItem[]): string {
  return order.map((o) => `${alias}.${q(o.column)} ${o.direction.toUpperCase()} NULLS ${nullsFirst(o) ? 'FIRST' : 'LAST'}`).join(', ');
}

/**
 * Rows strictly after `values` in `order` (keyset pagination), null-aware:
 * OR over i of (keys before i equal) AND (key i after value i).
 */
export function keysetSql(alias: string, order: OrderItem[], values: Array<string | null>, params: Params): string {
  const ors: string[] = [];
  for (let i = 0; i < order.length; i++) {
    const ands: string[] = [];
    for (let j = 0; j < i; j++) {
      const v = values[j];
      const col = `${alias}.${q(order[j]!.column)}`;
      ands.push(v === null || v === undefined ? `${col} IS NULL` : `${col} = ${params.add(v)}`);
    }
    const o = order[i]!;
    const col = `${alias}.${q(o.column)}`;
    const v = values[i];
    const cmp = o.direction === 'asc' ? '>' : '<';
    let after: string;
    if (v === null || v === undefined) after = nullsFirst(o) ? `${col} IS NOT NULL` : 'false';
    else after = nullsFirst(o) ? `${col} ${cmp} ${params.add(v)}` : `(${col} ${cmp} ${params.add(v)} OR ${col} IS NULL)`;
    if (after === 'false') continue;
    ands.push(after);
    ors.push(ands.length === 1 ? ands[0]! : `(${ands.join(' AND ')})`);
  }
  return ors.length ? `(${ors.join(' OR ')})` : 'false';
}

function relationFor(t: TableInfo, name: string): Relationship {
  const rel = relationships(t).find((r) => r.name === name) ?? relationships(t).find((r) => r.table === name);
  if (!rel) {
    throw badRequest('UNKNOWN_RELATIONSHIP', `${t.name} has no relationship ${JSON.stringify(name)}`, {
      table: t.name,
      relationship: name,
      known: relationships(t).map((r) => r.name),
    });
  }
  return rel;
}

/**
 * The JSON of one row of `t` (aliased `alias`) for a select list: `to_json` of a subselect, so
 * column order, aliases and embedded relationships come out as asked.
 */
export function rowJsonSql(t: TableInfo, alias: string, select: SelectItem[], scope: BuildScope, path = ''): string {
  return `(SELECT to_json(_r) FROM (SELECT ${selectItemsSql(t, alias, select, scope, path).join(', ')}) _r)`;
}

/** The select list's items as `expr AS name` (spread embeds contribute several). */
export function selectItemsSql(t: TableInfo, alias: string, select: SelectItem[], scope: BuildScope, path = ''): string[] {
  const items: string[] = [];
  for (const s of select) {
    const g = scope.params.guard;
    if (s.kind === 'star') {
      for (const c of t.columns) {
        if (g?.omit(t.name, c.name)) continue;
        const plain = `${alias}.${q(c.name)}`;
        const expr = g ? g.columnSql(t.name, c.name, plain) : plain;
        items.push(expr === plain ? plain : `${expr} AS ${q(c.name)}`);
      }
    } else if (s.kind === 'column') {
      const c = column(t, s.name);
      let expr = pathSql(`${alias}.${q(c.name)}`, s.path, scope.params);
      if (s.cast) expr = `(${expr})::${s.cast}`;
      if (g) expr = g.columnSql(t.name, c.name, expr);
      const name = s.alias ?? (s.path?.length ? s.path[s.path.length - 1]!.key : c.name);
      items.push(expr === `${alias}.${q(c.name)}` && name === c.name ? expr : `${expr} AS ${q(name)}`);
    } else {
      const rel = scope.relate ? scope.relate(t, s) : relationFor(t, s.relation);
      const target = scope.tables.get(rel.table);
      if (!target) throw badRequest('UNKNOWN_RELATIONSHIP', `relationship ${s.relation} points at a table that is not exposed`);
      const name = s.alias ?? s.relation;
      const embedPath = path ? `${path}.${name}` : name;
      if (s.spread) {
        if (rel.kind !== 'many-to-one' && rel.kind !== 'one-to-one') {
          throw badRequest('INVALID_SPREAD', `...${s.relation} spreads a to-many relationship; only to-one relationships can be spread`, { relationship: s.relation });
        }
        const a = `t${++scope.alias}`;
        const where = joinWhere(a, alias, rel, target, scope, embedPath);
        for (const inner of selectItemsSql(target, a, s.select, scope, embedPath)) {
          const m = / AS ("(?:[^"]|"")+")$/.exec(inner);
          const expr = m ? inner.slice(0, m.index) : inner;
          const outName = m ? m[1]! : inner.slice(inner.lastIndexOf('.') + 1);
          items.push(`(SELECT ${expr} FROM ${target.qualified} ${a} WHERE ${where} LIMIT 1) AS ${outName}`);
        }
        continue;
      }
      items.push(`${embedSql(alias, rel, target, s.select, scope, embedPath)} AS ${q(name)}`);
    }
  }
  if (items.length === 0) throw badRequest('INVALID_SELECT', 'select must name at least one column');
  return items;
}

/** Rows of `target` (aliased `a`) related to the parent row `parent`, with the embed's filters. */
export function joinWhere(a: string, parent: string, rel: Relationship, target: TableInfo, scope: BuildScope, path: string): string {
  const opts = scope.embeds.get(path);
  let join: string;
  if (rel.junction) {
    const j = rel.junction;
    const on = j.remoteColumns.map((jc, i) => `${a}.${q(j.targetColumns[i]!)} = _j.${q(jc)}`).join(' AND ');
    const back = j.localColumns.map((jc, i) => `_j.${q(jc)} = ${parent}.${q(rel.localColumns[i]!)}`).join(' AND ');
    join = `EXISTS (SELECT 1 FROM ${j.qualified} _j WHERE ${on} AND ${back})`;
  } else {
    join = rel.localColumns.map((lc, i) => `${a}.${q(rel.remoteColumns[i]!)} = ${parent}.${q(lc)}`).join(' AND ');
  }
  return [join, ...(opts?.filters ?? []).map((f) => filterSql(target, a, f, scope.params))].join(' AND ');
}

/**
 * `!inner` embeds (at any depth of the select) as conditions on the parent: a parent is kept only
 * when a related row passes the embed's filters (and its own inner embeds).
 */
export function innerJoinsSql(t: TableInfo, alias: string, select: SelectItem[], scope: BuildScope, path = ''): string[] {
  const out: string[] = [];
  for (const s of select) {
    if (s.kind !== 'embed' || !s.inner) continue;
    const rel = scope.relate ? scope.relate(t, s) : relationFor(t, s.relation);
    const target = scope.tables.get(rel.table);
    if (!target) continue;
    const name = s.alias ?? s.relation;
    const embedPath = path ? `${path}.${name}` : name;
    const a = `t${++scope.alias}`;
    const nested = innerJoinsSql(target, a, s.select, scope, embedPath);
    out.push(`EXISTS (SELECT 1 FROM ${target.qualified} ${a} WHERE ${[joinWhere(a, alias, rel, target, scope, embedPath), ...nested].join(' AND ')})`);
  }
  return out;
}

function embedSql(parent: string, rel: Relationship, target: TableInfo, select: SelectItem[], scope: BuildScope, path: string): string {
  const a = `t${++scope.alias}`;
  const opts = scope.embeds.get(path);
  const where = [joinWhere(a, parent, rel, target, scope, path), ...innerJoinsSql(target, a, select, scope, path)].join(' AND ');
  const json = rowJsonSql(target, a, select, scope, path);
  if (rel.kind === 'many-to-one' || rel.kind === 'one-to-one') return `(SELECT ${json} FROM ${target.qualified} ${a} WHERE ${where} LIMIT 1)`;
  const givenOrder = opts?.order ?? [];
  const orderItems = scope.implicitEmbedOrder === false && givenOrder.length === 0 ? [] : totalOrder(target, givenOrder, scope.params.guard);
  const order = orderItems.length ? orderSql(a, orderItems) : '';
  const limit = opts?.limit ?? scope.maxEmbedLimit;
  const offset = opts?.offset ? ` OFFSET ${scope.params.add(opts.offset)}` : '';
  // OFFSET 0 fences the parent's rows: found through the foreign-key index, then sorted and cut,
  // rather than a walk of the whole table in primary-key order filtered by the foreign key.
  const children = `(SELECT * FROM ${target.qualified} ${a} WHERE ${where} OFFSET 0) ${a}`;
  if (!order) {
    return `COALESCE((SELECT json_agg(_e.j) FROM (SELECT ${json} AS j FROM ${children} LIMIT ${scope.params.add(limit)}${offset}) _e), '[]'::json)`;
  }
  return `COALESCE((SELECT json_agg(_e.j ORDER BY _e.n) FROM (SELECT ${json} AS j, row_number() OVER (ORDER BY ${order}) AS n FROM ${children} ORDER BY ${order} LIMIT ${scope.params.add(limit)}${offset}) _e), '[]'::json)`;
}

/** Every embed of a select by its dotted path (`runs`, `runs.steps`; an alias names its embed). */
export function embedPaths(select: SelectItem[]): Set<string> {
  const paths = new Set<string>();
  const walk = (items: SelectItem[], prefix: string) => {
    for (const s of items) {
      if (s.kind !== 'embed') continue;
      const p = prefix ? `${prefix}.${s.alias ?? s.relation}` : (s.alias ?? s.relation);
      paths.add(p);
      walk(s.select, p);
    }
  };
  walk(select, '');
  return paths;
}

/** Report embed options (`x.limit`, `x.status=`) that name no embedded relationship of the select. */
export function checkEmbedPaths(select: SelectItem[], embeds: Map<string, EmbedOptions>): void {
  const paths = embedPaths(select);
  for (const p of embeds.keys()) {
    if (!paths.has(p)) throw badRequest('UNKNOWN_EMBED', `${p} is not an embedded relationship in select; embed it first, e.g. select=*,${p}(*)`, { embed: p });
  }
}
