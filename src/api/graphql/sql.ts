/**
 * Read SQL for the GraphQL API: filters (Hasura-style bool expressions), ordering, keyset
 * predicates, lists, lookups by primary key, batched relationship loads and aggregates.
 * Identifiers come only from the schema registry (quoted with pg.escapeIdentifier); every value is
 * a $n parameter.
 */
import type { ColumnInfo, TableInfo } from '../../services/data/index.js';
import { badRequest } from '../../errors.js';
import { kindOf, paramValue, q, ref, selectItem, valueExpr } from './columns.js';

export class Params {
  readonly values: unknown[] = [];
  add(v: unknown): string {
    this.values.push(v);
    return `$${this.values.length}`;
  }
}

export type BoolExp = Record<string, unknown>;
export interface OrderSpec {
  desc: boolean;
  nullsFirst: boolean;
}
export interface OrderItem extends OrderSpec {
  column: ColumnInfo;
}

const OPS: Record<string, string> = { _eq: '=', _neq: '<>', _gt: '>', _gte: '>=', _lt: '<', _lte: '<=', _like: 'LIKE', _ilike: 'ILIKE' };

function columnPredicate(c: ColumnInfo, exp: Record<string, unknown>, p: Params, alias: string | undefined, path: string): string[] {
  const out: string[] = [];
  const col = ref(c, alias);
  for (const [op, v] of Object.entries(exp)) {
    if (v === undefined) continue;
    if (op === '_is_null') {
      if (v === null) continue;
      out.push(`${col} IS ${v ? '' : 'NOT '}NULL`);
      continue;
    }
    if (v === null) throw badRequest('INVALID_ARGUMENT', `${path}.${op} must not be null (use _is_null)`, { field: `${path}.${op}` });
    if (op === '_in') {
      const list = (v as unknown[]).map((x) => paramValue(c, x));
      out.push(list.length ? `${col} = ANY(${p.add(list)})` : 'FALSE');
      continue;
    }
    const sqlOp = OPS[op];
    if (!sqlOp) throw badRequest('INVALID_ARGUMENT', `unknown operator ${path}.${op}`, { field: `${path}.${op}` });
    // LIKE on a non-text column (uuid, numeric...) matches its text form
    const lhs = (op === '_like' || op === '_ilike') && !kindOf(c).text ? `${col}::text` : col;
    out.push(`${lhs} ${sqlOp} ${p.add(op === '_like' || op === '_ilike' ? v : paramValue(c, v))}`);
  }
  return out;
}

/** A bool expression as SQL; null when it filters nothing (no predicate at all). */
export function compileWhere(t: TableInfo, exp: BoolExp | null | undefined, p: Params, alias?: string, path = 'where'): string | null {
  if (!exp) return null;
  const parts: string[] = [];
  for (const [key, v] of Object.entries(exp)) {
    if (v === null || v === undefined) continue;
    if (key === '_and') {
      const subs = (v as BoolExp[]).map((e, i) => compileWhere(t, e, p, alias, `${path}._and[${i}]`)).filter((s): s is string => s !== null);
      parts.push(...subs.map((s) => `(${s})`));
    } else if (key === '_or') {
      const list = v as BoolExp[];
      const subs = list.map((e, i) => compileWhere(t, e, p, alias, `${path}._or[${i}]`));
      if (list.length === 0) parts.push('FALSE');
      else if (subs.every((s) => s !== null)) parts.push(`(${subs.map((s) => `(${s})`).join(' OR ')})`);
      // an empty alternative matches every row: the whole _or filters nothing
    } else if (key === '_not') {
      const sub = compileWhere(t, v as BoolExp, p, alias, `${path}._not`);
      parts.push(sub === null ? 'FALSE' : `NOT (${sub})`);
    } else {
      const c = t.columnMap.get(key);
      if (!c) throw badRequest('UNKNOWN_COLUMN', `column ${JSON.stringify(key)} does not exist in ${t.name}`, { column: key });
      parts.push(...columnPredicate(c, v as Record<string, unknown>, p, alias, `${path}.${key}`));
    }
  }
  return parts.length ? parts.join(' AND ') : null;
}

/** order_by items, then the primary key (ascending) as the tie-breaker that makes keysets total. */
export function orderItems(t: TableInfo, orderBy: ReadonlyArray<Record<string, OrderSpec>> | null | undefined): OrderItem[] {
  const items: OrderItem[] = [];
  const seen = new Set<string>();
  for (const o of orderBy ?? []) {
    for (const [name, spec] of Object.entries(o)) {
      const c = t.columnMap.get(name);
      if (!c || !spec || seen.has(name)) continue;
      seen.add(name);
      items.push({ column: c, ...spec });
    }
  }
  for (const pk of t.primaryKey) {
    const c = t.columnMap.get(pk);
    if (c && !seen.has(pk)) items.push({ column: c, desc: false, nullsFirst: false });
  }
  return items;
}

export const orderSql = (items: OrderItem[], alias?: string) =>
  items.map((i) => `${ref(i.column, alias)} ${i.desc ? 'DESC' : 'ASC'} NULLS ${i.nullsFirst ? 'FIRST' : 'LAST'}`).join(', ');

/** The same ordering backward (for last/before): every direction and nulls placement flipped. */
export const reverseItems = (items: OrderItem[]): OrderItem[] => items.map((i) => ({ ...i, desc: !i.desc, nullsFirst: !i.nullsFirst }));

/** Identifies an ordering inside a cursor. */
export const orderSignature = (items: OrderItem[]) => items.map((i) => `${i.column.name}:${i.desc ? 'd' : 'a'}${i.nullsFirst ? 'f' : 'l'}`).join(',');

export const keyAlias = (i: number) => q(`__strata_k${i}`);
export const keyName = (i: number) => `__strata_k${i}`;

/** Rows strictly after the cursor row in this ordering (values as PostgreSQL text, null-aware). */
export function keysetPredicate(items: OrderItem[], values: Array<string | null>, p: Params, alias?: string): string {
  const sameDir = items.every((i) => i.desc === items[0]?.desc);
  if (sameDir && items.every((i) => !i.column.nullable) && values.every((v) => v !== null)) {
    const cols = items.map((i) => ref(i.column, alias)).join(', ');
    const vals = values.map((v) => p.add(v)).join(', ');
    return `(${cols}) ${items[0]?.desc ? '<' : '>'} (${vals})`;
  }
  const alternatives: string[] = [];
  for (let i = 0; i < items.length; i++) {
    const conds: string[] = [];
    for (let j = 0; j < i; j++) {
      const v = values[j] ?? null;
      const col = ref((items[j] as OrderItem).column, alias);
      conds.push(v === null ? `${col} IS NULL` : `${col} = ${p.add(v)}`);
    }
    const it = items[i] as OrderItem;
    const v = values[i] ?? null;
    const col = ref(it.column, alias);
    let after: string | null;
    if (v === null) after = it.nullsFirst ? `${col} IS NOT NULL` : null;
    else {
      const cmp = `${col} ${it.desc ? '<' : '>'} ${p.add(v)}`;
      after = it.nullsFirst || !it.column.nullable ? cmp : `(${cmp} OR ${col} IS NULL)`;
    }
    if (after === null) continue;
    alternatives.push([...conds, after].join(' AND '));
  }
  return alternatives.length ? `(${alternatives.map((a) => `(${a})`).join(' OR ')})` : 'FALSE';
}

export const selectList = (cols: ColumnInfo[], alias?: string) => cols.map((c) => selectItem(c, alias)).join(', ');

/** A page of a list: filter, keyset, order, limit (one more row than asked, to learn hasNextPage). */
export function listSql(
  t: TableInfo,
  cols: ColumnInfo[],
  where: string | null,
  items: OrderItem[],
  after: Array<string | null> | undefined,
  limit: number,
  p: Params,
): string {
  const conds = where ? [where] : [];
  if (after) conds.push(keysetPredicate(items, after, p));
  const keys = items.map((i, n) => `${ref(i.column)}::text AS ${keyAlias(n)}`);
  return (
    `SELECT ${[selectList(cols), ...keys].join(', ')} FROM ${t.qualified}` +
    (conds.length ? ` WHERE ${conds.join(' AND ')}` : '') +
    ` ORDER BY ${orderSql(items)} LIMIT ${p.add(limit)}`
  );
}

export function countSql(t: TableInfo, where: string | null): string {
  return `SELECT count(*)::int AS n FROM ${t.qualified}${where ? ` WHERE ${where}` : ''}`;
}

export function pkCondition(t: TableInfo, pk: Record<string, unknown>, p: Params): string {
  return t.primaryKey.map((name) => `${q(name)} = ${p.add(pk[name])}`).join(' AND ');
}

export function byPkSql(t: TableInfo, cols: ColumnInfo[], pk: Record<string, unknown>, p: Params): string {
  return `SELECT ${selectList(cols)} FROM ${t.qualified} WHERE ${pkCondition(t, pk, p)}`;
}

export const batchKeyName = (i: number) => `__strata_b${i}`;

/**
 * Many-to-one: the rows of `t` whose `keyCols` match any of the key tuples. One query for every
 * parent of a level: `= ANY($1)` for one column, `IN (SELECT * FROM unnest(...))` for several.
 */
export function batchLookupSql(t: TableInfo, cols: ColumnInfo[], keyCols: ColumnInfo[], keys: unknown[][], p: Params): string {
  const keyItems = keyCols.map((c, i) => `${valueExpr(c, ref(c, 'r'))} AS ${q(batchKeyName(i))}`);
  const select = `SELECT ${[selectList(cols, 'r'), ...keyItems].join(', ')} FROM ${t.qualified} r`;
  if (keyCols.length === 1) {
    const c = keyCols[0] as ColumnInfo;
    return `${select} WHERE ${ref(c, 'r')} = ANY(${p.add(keys.map((k) => k[0]))}::${c.type}[])`;
  }
  const arrays = keyCols.map((c, i) => `${p.add(keys.map((k) => k[i]))}::${c.type}[]`);
  return `${select} WHERE (${keyCols.map((c) => ref(c, 'r')).join(', ')}) IN (SELECT * FROM unnest(${arrays.join(', ')}))`;
}

/**
 * One-to-many with a per-parent limit: a LATERAL subquery per parent key (index-friendly), all
 * parents of a level in one statement. Rows come back grouped by parent in the requested order.
 */
export function batchChildrenSql(
  t: TableInfo,
  cols: ColumnInfo[],
  keyCols: ColumnInfo[],
  keys: unknown[][],
  where: string | null,
  items: OrderItem[],
  limit: number,
  p: Params,
  withKeys = false,
): string {
  const arrays = keyCols.map((c, i) => `${p.add(keys.map((k) => k[i]))}::${c.type}[]`);
  const kCols = keyCols.map((_, i) => q(batchKeyName(i)));
  const join = keyCols.map((c, i) => `${ref(c, 'r')} = k.${kCols[i]}`);
  if (where) join.push(where);
  // OFFSET 0 fences the parent's rows: found through the foreign-key index, then sorted and cut.
  // Without it a generic plan (prepared statements) walks the whole table in primary-key order,
  // filtering on the foreign key, to stop after `limit` rows (the REST embedding does the same).
  const inner =
    `SELECT ${[selectList(cols, 'r'), ...(withKeys ? items.map((i, n) => `${ref(i.column, 'r')}::text AS ${keyAlias(n)}`) : [])].join(', ')}, row_number() OVER (ORDER BY ${orderSql(items, 'r')}) AS "__strata_rn" ` +
    `FROM (SELECT * FROM ${t.qualified} r WHERE ${join.join(' AND ')} OFFSET 0) r ORDER BY ${orderSql(items, 'r')} LIMIT ${p.add(limit)}`;
  return (
    `SELECT ${keyCols.map((c, i) => `${valueExpr(c, `k.${kCols[i]}`)} AS ${kCols[i]}`).join(', ')}, s.* FROM unnest(${arrays.join(', ')}) WITH ORDINALITY AS k(${kCols.join(', ')}, "__strata_ord") ` +
    `CROSS JOIN LATERAL (${inner}) s ORDER BY k."__strata_ord", s."__strata_rn"`
  );
}

/** Rows per parent key (for a nested connection's totalCount): one grouped count for the level. */
export function batchCountSql(t: TableInfo, keyCols: ColumnInfo[], keys: unknown[][], where: string | null, p: Params): string {
  const arrays = keyCols.map((c, i) => `${p.add(keys.map((k) => k[i]))}::${c.type}[]`);
  const kCols = keyCols.map((_, i) => q(batchKeyName(i)));
  const join = keyCols.map((c, i) => `${ref(c, 'r')} = k.${kCols[i]}`);
  if (where) join.push(where);
  return (
    `SELECT ${keyCols.map((c, i) => `${valueExpr(c, `k.${kCols[i]}`)} AS ${kCols[i]}`).join(', ')}, count(r.*)::int AS "__strata_count" ` +
    `FROM unnest(${arrays.join(', ')}) AS k(${kCols.join(', ')}) LEFT JOIN ${t.qualified} r ON ${join.join(' AND ')} GROUP BY ${kCols.map((k) => `k.${k}`).join(', ')}`
  );
}

export type AggregateFn = 'sum' | 'avg' | 'min' | 'max';
export interface AggregatePlan {
  groupBy: ColumnInfo[];
  count: boolean;
  fns: Array<{ fn: AggregateFn; column: ColumnInfo }>;
}
export const aggAlias = (fn: AggregateFn, c: ColumnInfo) => `__strata_${fn}_${c.name}`;

function aggExpr(fn: AggregateFn, c: ColumnInfo): string {
  const col = ref(c);
  const kind = kindOf(c);
  if (fn === 'avg') return c.udt === 'numeric' ? `avg(${col})::text` : `avg(${col})::float8`;
  if (fn === 'sum') return c.udt === 'numeric' || c.udt === 'int8' ? `sum(${col})::text` : `sum(${col})`;
  if (kind.select === 'iso') return `to_json(${fn}(${col})) #>> '{}'`;
  if (kind.select === 'text') return `${fn}(${col})::text`;
  return `${fn}(${col})`;
}

/** Aggregates per group (one group for the whole filtered set when there is no group_by). */
export function aggregateSql(t: TableInfo, plan: AggregatePlan, where: string | null): string {
  const items = [
    ...plan.groupBy.map((c) => selectItem(c)),
    `count(*)::int AS "__strata_count"`,
    ...plan.fns.map(({ fn, column }) => `${aggExpr(fn, column)} AS ${q(aggAlias(fn, column))}`),
  ];
  const group = plan.groupBy.map((c) => ref(c)).join(', ');
  return (
    `SELECT ${items.join(', ')} FROM ${t.qualified}${where ? ` WHERE ${where}` : ''}` +
    (group ? ` GROUP BY ${group} ORDER BY ${group}` : '')
  );
}
