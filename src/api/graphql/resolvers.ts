/**
 * Resolvers of the generated schema. Lists and lookups run one statement each (read-only, one
 * round trip); relationships go through per-request batch loaders so each level of a result costs
 * one query whatever the row count; mutations share the request's one transaction.
 */
import type { GraphQLFieldResolver, GraphQLResolveInfo } from 'graphql';
import type { ColumnInfo, Relationship, TableInfo } from '../../services/data/index.js';
import { AppError, badRequest } from '../../errors.js';
import type { GraphqlContext, GraphqlRequest } from './context.js';
import type { Guard } from '../../services/compliance/index.js';
import { checkFirst } from './cost.js';
import { encodeCursor, paging, type Paging } from './cursor.js';
import { BatchLoader, keyOf } from './loaders.js';
import { cached, nodePlan, subFields, type NodePlan } from './selection.js';
import {
  Params,
  aggAlias,
  aggregateSql,
  batchChildrenSql,
  batchCountSql,
  batchKeyName,
  batchLookupSql,
  byPkSql,
  compileWhere,
  countSql,
  keyName,
  listSql,
  orderItems,
  keysetPredicate,
  reverseItems,
  type AggregateFn,
  type AggregatePlan,
  type BoolExp,
  type OrderItem,
  type OrderSpec,
} from './sql.js';
import { deleteByPkSql, deleteWhereSql, insertSql, updateByPkSql, updateWhereSql } from './sql-write.js';
import { validateWrite } from './validate.js';

type Row = Record<string, unknown>;
type Args = Record<string, unknown>;
export type Resolver = GraphQLFieldResolver<Row, GraphqlContext, Args>;
type OrderBy = ReadonlyArray<Record<string, OrderSpec>>;

/** A table with its relationships by field name, as exposed in the schema. */
export interface TableModel {
  table: TableInfo;
  rels: Map<string, Relationship>;
}

interface ConnectionPlan {
  node: NodePlan;
  rows: boolean;
  edges: boolean;
  count: boolean;
}

const connectionPlans = new WeakMap<object, ConnectionPlan>();
const nodePlans = new WeakMap<object, NodePlan>();
const returningPlans = new WeakMap<object, NodePlan | null>();
const aggregatePlans = new WeakMap<object, Omit<AggregatePlan, 'groupBy'>>();

function connectionPlan(m: TableModel, info: GraphQLResolveInfo): ConnectionPlan {
  return cached(connectionPlans, info.fieldNodes, () => {
    const subs = subFields(info, info.fieldNodes);
    const nodeFields = [...(subs.get('nodes') ?? [])];
    for (const e of subs.get('edges') ?? []) nodeFields.push(...(subFields(info, [e]).get('node') ?? []));
    return {
      node: nodePlan(m.table, m.rels, info, nodeFields),
      rows: subs.has('nodes') || subs.has('edges') || subs.has('pageInfo'),
      edges: subs.has('edges'),
      count: subs.has('totalCount'),
    };
  });
}

const rowPlan = (m: TableModel, info: GraphQLResolveInfo) => cached(nodePlans, info.fieldNodes, () => nodePlan(m.table, m.rels, info, info.fieldNodes));

/** Columns for `returning { ... }` of a mutation response; null when not selected. */
const returningPlan = (m: TableModel, info: GraphQLResolveInfo) =>
  cached(returningPlans, info.fieldNodes, () => {
    const nodes = subFields(info, info.fieldNodes).get('returning');
    return nodes ? nodePlan(m.table, m.rels, info, nodes) : null;
  });

const pkArgs = (t: TableInfo, args: Args) => Object.fromEntries(t.primaryKey.map((k) => [k, args[k]]));

/**
 * A connection from a page fetched with one row more than asked (that row only says whether more
 * follow). `backward` (last/before): the rows came in reverse order and are turned back.
 */
function connectionPage(t: TableInfo, signature: string, items: OrderItem[], rows: Row[], limit: number, edges: boolean, totalCount: number | undefined, backward = false) {
  const page = rows.length > limit ? rows.slice(0, limit) : rows;
  const nodes = backward ? page.reverse() : page;
  const cursorOf = (r: Row) => encodeCursor(t.name, signature, items.map((_, i) => (r[keyName(i)] ?? null) as string | null));
  const first = nodes[0];
  const last = nodes[nodes.length - 1];
  const more = rows.length > limit;
  return {
    nodes,
    edges: edges ? nodes.map((node) => ({ cursor: cursorOf(node), node })) : [],
    pageInfo: { hasNextPage: !backward && more, hasPreviousPage: backward && more, startCursor: first ? cursorOf(first) : null, endCursor: last ? cursorOf(last) : null },
    totalCount,
  };
}

/** Filter and cursor bounds of a page (rows after `after`, before `before`), and the scan order. */
function pageBounds(pg: Paging, where: string | null, p: Params, alias?: string): { conds: string | null; scan: OrderItem[] } {
  const conds = [where, pg.after ? keysetPredicate(pg.items, pg.after, p, alias) : null, pg.before ? keysetPredicate(reverseItems(pg.items), pg.before, p, alias) : null];
  const present = conds.filter((c): c is string => c !== null);
  return { conds: present.length ? present.join(' AND ') : null, scan: pg.backward ? reverseItems(pg.items) : pg.items };
}

export function listResolver(m: TableModel): Resolver {
  const t = m.table;
  return async (_src, args, { strata }, info) => {
    guardArgs(strata.guard, t, args);
    const plan = connectionPlan(m, info);
    const pg = paging(t, info.fieldName, args);
    const p = new Params();
    const where = compileWhere(t, args['where'] as BoolExp | undefined, p);
    const whereValues = [...p.values];
    let rows: Row[] = [];
    let totalCount: number | undefined;
    if (plan.rows) {
      const { conds, scan } = pageBounds(pg, where, p);
      const text = listSql(t, plan.node.columns, conds, scan, undefined, pg.limit + 1, p);
      if (plan.count) {
        const [res, n] = await strata.queryWithCount(info, { text, values: p.values }, { text: countSql(t, where), values: whereValues });
        rows = res.rows;
        totalCount = n;
      } else {
        rows = (await strata.query(info, text, p.values)).rows;
      }
    } else if (plan.count) {
      totalCount = (await strata.query<{ n: number }>(info, countSql(t, where), whereValues)).rows[0]?.n ?? 0;
    }
    return connectionPage(t, pg.signature, pg.items, rows, pg.limit, plan.edges, totalCount, pg.backward);
  };
}

export function byPkResolver(m: TableModel): Resolver {
  return async (_src, args, { strata }, info) => {
    const p = new Params();
    const text = byPkSql(m.table, rowPlan(m, info).columns, pkArgs(m.table, args), p);
    return (await strata.query(info, text, p.values)).rows[0] ?? null;
  };
}

const AGG_FNS: AggregateFn[] = ['sum', 'avg', 'min', 'max'];

export function aggregateResolver(m: TableModel): Resolver {
  const t = m.table;
  return async (_src, args, { strata }, info) => {
    const plan = cached(aggregatePlans, info.fieldNodes, () => {
      const groups = subFields(info, info.fieldNodes).get('groups') ?? [];
      const subs = subFields(info, groups);
      const fns = AGG_FNS.flatMap((fn) =>
        [...subFields(info, subs.get(fn) ?? []).keys()].flatMap((name) => {
          const column = t.columnMap.get(name);
          return column ? [{ fn, column }] : [];
        }),
      );
      return { count: subs.has('count'), fns };
    });
    guardArgs(strata.guard, t, args);
    for (const f of plan.fns) strata.guard?.checkAggregate(t.name, f.column.name, f.fn);
    const groupBy = ((args['group_by'] as string[] | undefined) ?? []).map((n) => t.columnMap.get(n)).filter((c): c is ColumnInfo => c !== undefined);
    const p = new Params();
    const where = compileWhere(t, args['where'] as BoolExp | undefined, p);
    const { rows } = await strata.query(info, aggregateSql(t, { ...plan, groupBy }, where), p.values);
    return {
      groups: rows.map((r) => {
        const group: Row = { key: Object.fromEntries(groupBy.map((c) => [c.name, r[c.name]])), count: r['__strata_count'] };
        for (const fn of AGG_FNS) {
          const fields = plan.fns.filter((f) => f.fn === fn);
          group[fn] = Object.fromEntries(fields.map(({ column }) => [column.name, r[aggAlias(fn, column)]]));
        }
        return group;
      }),
    };
  };
}

/** The join columns of a relationship; tenant_id drops out when RLS already pins both sides to one tenant. */
export function joinColumns(local: TableInfo, remote: TableInfo, rel: Relationship): { local: ColumnInfo[]; remote: ColumnInfo[] } {
  const pinned = (t: TableInfo) => t.hasTenantId && t.rls.enabled && t.rls.forced;
  const pairs = rel.localColumns.map((c, i) => [c, rel.remoteColumns[i] as string] as const);
  const reduced = pinned(local) && pinned(remote) ? pairs.filter(([a, b]) => !(a === 'tenant_id' && b === 'tenant_id')) : pairs;
  const use = reduced.length ? reduced : pairs;
  return {
    local: use.map(([a]) => local.columnMap.get(a) as ColumnInfo),
    remote: use.map(([, b]) => remote.columnMap.get(b) as ColumnInfo),
  };
}

function loader<V>(strata: GraphqlRequest, key: string, make: () => BatchLoader<V>): BatchLoader<V> {
  let l = strata.loaders.get(key) as BatchLoader<V> | undefined;
  if (!l) {
    l = make();
    strata.loaders.set(key, l as BatchLoader<unknown>);
  }
  return l;
}

/** A relationship field: many-to-one as an object, one-to-many as a list with where/order_by/first. */
export function relationshipResolver(parent: TableModel, remote: TableModel, rel: Relationship): Resolver {
  const join = joinColumns(parent.table, remote.table, rel);
  const id = `${parent.table.name}.${rel.name}`;
  if (rel.kind === 'many-to-one') {
    return (src, _args, { strata }, info) => {
      const values = join.local.map((c) => src[c.name]);
      if (values.some((v) => v === null || v === undefined)) return null;
      const plan = rowPlan(remote, info);
      const l = loader<Row | null>(
        strata,
        `${id}|${plan.signature}`,
        () =>
          new BatchLoader(async (keys) => {
            const p = new Params();
            const text = batchLookupSql(remote.table, plan.columns, join.remote, keys.map((k) => k.values), p);
            const { rows } = await strata.query(info, text, p.values);
            return new Map(rows.map((r) => [keyOf(join.remote.map((_, i) => r[batchKeyName(i)])), r]));
          }, () => null),
      );
      return l.load(keyOf(values), values);
    };
  }
  return (src, args, { strata }, info) => {
    const values = join.local.map((c) => src[c.name]);
    if (values.some((v) => v === null || v === undefined)) return [];
    guardArgs(strata.guard, remote.table, args);
    const plan = rowPlan(remote, info);
    const first = checkFirst(args['first'], info.fieldName);
    const l = loader<Row[]>(
      strata,
      `${id}|${plan.signature}|${JSON.stringify(args)}`,
      () =>
        new BatchLoader(async (keys) => {
          const p = new Params();
          const where = compileWhere(remote.table, args['where'] as BoolExp | undefined, p, 'r');
          const items = orderItems(remote.table, args['order_by'] as OrderBy | undefined);
          const text = batchChildrenSql(remote.table, plan.columns, join.remote, keys.map((k) => k.values), where, items, first, p);
          const { rows } = await strata.query(info, text, p.values);
          const out = new Map<string, Row[]>();
          for (const r of rows) {
            const k = keyOf(join.remote.map((_, i) => r[batchKeyName(i)]));
            const list = out.get(k);
            if (list) list.push(r);
            else out.set(k, [r]);
          }
          return out;
        }, () => []),
    );
    return l.load(keyOf(values), values);
  };
}

/**
 * `<relationship>_connection`: a one-to-many relationship as a cursor connection (nodes, edges,
 * pageInfo, totalCount) with where/order_by/first/after. All parents of a level are fetched with one
 * query (one more for totalCount when selected); `after` applies to each parent's list.
 */
export function relationshipConnectionResolver(parent: TableModel, remote: TableModel, rel: Relationship): Resolver {
  const join = joinColumns(parent.table, remote.table, rel);
  const t = remote.table;
  const id = `${parent.table.name}.${rel.name}_connection`;
  interface Page {
    rows: Row[];
    total?: number;
  }
  return (src, args, { strata }, info) => {
    guardArgs(strata.guard, t, args);
    const plan = connectionPlan(remote, info);
    const pg = paging(t, info.fieldName, args);
    const values = join.local.map((c) => src[c.name]);
    const l = loader<Page>(
      strata,
      `${id}|${plan.node.signature}|${plan.rows}|${plan.count}|${JSON.stringify(args)}`,
      () =>
        new BatchLoader(async (keys) => {
          const tuples = keys.map((k) => k.values);
          const out = new Map<string, Page>();
          const keyOfRow = (r: Row) => keyOf(join.remote.map((_, i) => r[batchKeyName(i)]));
          if (plan.rows) {
            const p = new Params();
            const where = compileWhere(t, args['where'] as BoolExp | undefined, p, 'r');
            const { conds, scan } = pageBounds(pg, where, p, 'r');
            const text = batchChildrenSql(t, plan.node.columns, join.remote, tuples, conds, scan, pg.limit + 1, p, true);
            for (const r of (await strata.query(info, text, p.values)).rows) {
              const k = keyOfRow(r);
              const page = out.get(k);
              if (page) page.rows.push(r);
              else out.set(k, { rows: [r] });
            }
          }
          if (plan.count) {
            const p = new Params();
            const where = compileWhere(t, args['where'] as BoolExp | undefined, p, 'r');
            for (const r of (await strata.query(info, batchCountSql(t, join.remote, tuples, where, p), p.values)).rows) {
              const k = keyOfRow(r);
              const page = out.get(k) ?? { rows: [] };
              page.total = r['__strata_count'] as number;
              out.set(k, page);
            }
          }
          return out;
        }, () => ({ rows: [], total: 0 })),
    );
    const page: Promise<Page> = values.some((v) => v === null || v === undefined) ? Promise.resolve({ rows: [], total: 0 }) : l.load(keyOf(values), values);
    return page.then(({ rows, total }) => connectionPage(t, pg.signature, pg.items, rows, pg.limit, plan.edges, total ?? 0, pg.backward));
  };
}

/** Mutation root fields: writer role, serial, sharing the request transaction; one failure dooms the rest. */
function mutation(m: TableModel, fn: Resolver): Resolver {
  return async (src, args, context, info) => {
    const { strata } = context;
    strata.assertCanWrite();
    if (strata.mutationFailed) throw new AppError(409, 'MUTATION_ABORTED', 'not run: an earlier mutation of this request failed, and the request is rolled back');
    strata.loaders.clear(); // reads after a write must not see rows cached before it
    strata.written.add(m.table.name); // for the after-commit hook (result cache, views)
    try {
      return await fn(src, args, context, info);
    } catch (err) {
      strata.mutationFailed = true;
      throw err;
    }
  };
}

/**
 * The compliance policy on GraphQL arguments: a filter or order on a declared column the caller
 * may not read in full (or on any encrypted column, whose blind-index equality is served by /v1
 * and /rest/v1 only) is refused with the codes of the rows API.
 */
export function guardArgs(g: Guard | undefined, t: TableInfo, args: Args): void {
  if (!g?.table(t.name)) return;
  const walk = (exp: unknown) => {
    if (!exp || typeof exp !== 'object') return;
    for (const [key, v] of Object.entries(exp as Record<string, unknown>)) {
      if (v === null || v === undefined) continue;
      if (key === '_and' || key === '_or') for (const e of v as unknown[]) walk(e);
      else if (key === '_not') walk(v);
      else if (t.columnMap.has(key)) {
        for (const op of Object.keys(v)) {
          if (op === '_is_null') continue;
          const c = g.column(t.name, key);
          if (c?.encrypted) throw badRequest('ENCRYPTED_COLUMN_FILTER', `${t.name}.${key} is encrypted: GraphQL filters it by _is_null only (blind-index equality is on /v1 and /rest/v1)`, { table: t.name, column: key });
          g.checkFilter(t.name, key, op.slice(1));
        }
      }
    }
  };
  walk(args['where']);
  for (const o of (args['order_by'] as Array<Record<string, unknown>> | undefined) ?? []) for (const name of Object.keys(o ?? {})) g.checkOrder(t.name, name);
  for (const name of (args['group_by'] as string[] | undefined) ?? []) g.checkAggregate(t.name, name, 'group_by');
}

const refuseUnfiltered = (field: string) =>
  badRequest('UNFILTERED_MASS_WRITE', `${field} needs a non-empty where: an unfiltered mass write is refused`, { field: `${field}.where` });

/**
 * A column field: the stored value, or (when the column is declared) the value as the caller's role
 * may see it: decrypted, masked, audited. A mask whose result is not of the column's GraphQL type
 * (a range of an Int column) answers null.
 */
export function columnResolver(table: string, column: string): Resolver {
  return (src, _args, { strata }) => {
    const v = src[column];
    const g = strata.guard;
    if (!g?.table(table)?.has(column)) return v;
    return g.revealField(table, column, v, src);
  };
}

export function insertResolver(m: TableModel, one: boolean): Resolver {
  return mutation(m, async (_src, args, { strata }, info) => {
    const given = one ? [args['object'] as Row] : (args['objects'] as Row[]);
    given.forEach((o, i) => validateWrite(m.table, o, one ? 'object' : `objects[${i}]`));
    if (!given.length) return [];
    const g = strata.guard;
    const objects = g ? await Promise.all(given.map((o) => g.protectRow(m.table.name, o))) : given;
    const p = new Params();
    const { rows } = await strata.query(info, insertSql(m.table, objects, rowPlan(m, info).columns, p), p.values);
    return one ? (rows[0] ?? null) : rows;
  });
}

async function protectSet(strata: GraphqlRequest, m: TableModel, set: Row): Promise<Row> {
  return strata.guard ? strata.guard.protectRow(m.table.name, set) : set;
}

function setArg(m: TableModel, args: Args): Row {
  const set = (args['_set'] as Row | undefined) ?? {};
  validateWrite(m.table, set, '_set');
  if (!Object.values(set).some((v) => v !== undefined)) throw badRequest('NOTHING_TO_UPDATE', '_set names no column to update', { field: '_set' });
  return set;
}

export function updateByPkResolver(m: TableModel): Resolver {
  return mutation(m, async (_src, args, { strata }, info) => {
    const set = await protectSet(strata, m, setArg(m, args));
    const p = new Params();
    const text = updateByPkSql(m.table, args['pk_columns'] as Row, set, rowPlan(m, info).columns, p);
    return (await strata.query(info, text, p.values)).rows[0] ?? null;
  });
}

export function updateWhereResolver(m: TableModel): Resolver {
  return mutation(m, async (_src, args, { strata }, info) => {
    guardArgs(strata.guard, m.table, args);
    const p = new Params();
    const where = compileWhere(m.table, args['where'] as BoolExp, p);
    if (where === null) throw refuseUnfiltered(info.fieldName);
    const set = await protectSet(strata, m, setArg(m, args));
    const res = await strata.query(info, updateWhereSql(m.table, where, set, returningPlan(m, info)?.columns ?? null, p), p.values);
    return { affected_rows: res.rowCount ?? 0, returning: res.rows };
  });
}

export function deleteByPkResolver(m: TableModel): Resolver {
  return mutation(m, async (_src, args, { strata }, info) => {
    const p = new Params();
    const text = deleteByPkSql(m.table, pkArgs(m.table, args), rowPlan(m, info).columns, p);
    return (await strata.query(info, text, p.values)).rows[0] ?? null;
  });
}

export function deleteWhereResolver(m: TableModel): Resolver {
  return mutation(m, async (_src, args, { strata }, info) => {
    guardArgs(strata.guard, m.table, args);
    const p = new Params();
    const where = compileWhere(m.table, args['where'] as BoolExp, p);
    if (where === null) throw refuseUnfiltered(info.fieldName);
    const res = await strata.query(info, deleteWhereSql(m.table, where, returningPlan(m, info)?.columns ?? null), p.values);
    return { affected_rows: res.rowCount ?? 0, returning: res.rows };
  });
}
