/**
 * The GraphQL-to-SQL compiler: one query operation (every root field, aliases, fragments, @skip /
 * @include, relationships both ways, filters, ordering, cursor connections forward and backward,
 * totalCount, aggregates) becomes ONE SQL statement that builds the whole response
 * (`{"data": ...}`) as JSON inside PostgreSQL: `json_build_object` per row, `json_agg` over
 * correlated subqueries per relationship, with the same plans as the REST embedding (a one-to-many
 * list fenced with OFFSET 0 so the children are found through the foreign-key index, then sorted and
 * cut). Identifiers come from the schema registry only (quoted); every value is a $n parameter.
 *
 * Fields the compiler does not know (search, views, introspection, mutations, subscriptions) throw
 * Unsupported: the caller then runs the operation through the resolvers instead.
 */
import pg from 'pg';
import {
  GraphQLIncludeDirective,
  GraphQLSkipDirective,
  Kind,
  OperationTypeNode,
  getArgumentValues,
  getDirectiveValues,
  getNamedType,
  isListType,
  isNonNullType,
  isObjectType,
  type FieldNode,
  type FragmentDefinitionNode,
  type GraphQLField,
  type GraphQLObjectType,
  type GraphQLOutputType,
  type OperationDefinitionNode,
  type SelectionSetNode,
} from 'graphql/index.js';
import type { ColumnInfo, Relationship, TableInfo } from '../../services/data/index.js';
import type { Guard } from '../../services/compliance/index.js';
import { checkFirst } from './cost.js';
import { kindOf, ref } from './columns.js';
import { paging, type Paging } from './cursor.js';
import { guardArgs, joinColumns, type TableModel } from './resolvers.js';
import { Params, compileWhere, orderItems, orderSql, keysetPredicate, reverseItems, type BoolExp, type OrderSpec } from './sql.js';

/** How a schema field maps to SQL (set as the field's `extensions.strata` by schema.ts). */
export type FieldPlan =
  | { kind: 'column'; column: ColumnInfo }
  | { kind: 'byPk'; model: TableModel }
  | { kind: 'aggregate'; model: TableModel }
  /** A cursor connection: a root list, or a one-to-many relationship when `parent`/`rel` are set. */
  | { kind: 'connection'; model: TableModel; parent?: TableModel; rel?: Relationship }
  | { kind: 'object'; parent: TableModel; remote: TableModel; rel: Relationship }
  | { kind: 'children'; parent: TableModel; remote: TableModel; rel: Relationship };

/** The operation (or a part of it) has no one-statement form: run it through the resolvers. */
export class Unsupported extends Error {}

type Vars = Record<string, unknown>;
type Fields = Map<string, FieldNode[]>;
type OrderBy = ReadonlyArray<Record<string, OrderSpec>>;

/** json_build_object takes at most 100 arguments: 50 keys. */
const MAX_KEYS = 50;

interface Scope {
  p: Params;
  vars: Vars;
  fragments: Record<string, FragmentDefinitionNode>;
  n: number;
  /** The compliance guard of the caller, when any column is declared. */
  guard?: Guard;
  /** Declared columns in the answer, revealed in node (compiled.ts). */
  reveals: Reveal[];
}

/**
 * A declared column's place in the answer: `path` from the top of `{"data": ...}`, `*` standing for
 * every item of a list. Its stored value is rendered as the resolvers hold it, then revealed per
 * role in node by the guard (Guard.revealField: decrypted, masked, audited), as the column
 * resolvers do.
 */
export interface Reveal {
  path: string[];
  table: string;
  column: string;
}

const lit = (s: string) => pg.escapeLiteral(s);

function included(node: FieldNode | SelectionSetNode['selections'][number], vars: Vars): boolean {
  const skip = getDirectiveValues(GraphQLSkipDirective, node, vars);
  if (skip?.['if'] === true) return false;
  const include = getDirectiveValues(GraphQLIncludeDirective, node, vars);
  return include?.['if'] !== false;
}

/** Fields by response key in first-seen order, merged across fragments (graphql-js' collectFields). */
function collect(s: Scope, type: GraphQLObjectType, sets: ReadonlyArray<SelectionSetNode | undefined>): Fields {
  const out: Fields = new Map();
  const seen = new Set<string>();
  const walk = (set: SelectionSetNode | undefined) => {
    for (const sel of set?.selections ?? []) {
      if (!included(sel, s.vars)) continue;
      if (sel.kind === Kind.FIELD) {
        const key = sel.alias?.value ?? sel.name.value;
        const list = out.get(key);
        if (list) list.push(sel);
        else out.set(key, [sel]);
      } else if (sel.kind === Kind.INLINE_FRAGMENT) {
        if (sel.typeCondition && sel.typeCondition.name.value !== type.name) continue;
        walk(sel.selectionSet);
      } else {
        const name = sel.name.value;
        if (seen.has(name)) continue;
        seen.add(name);
        const frag = s.fragments[name];
        if (!frag || frag.typeCondition.name.value !== type.name) continue;
        walk(frag.selectionSet);
      }
    }
  };
  sets.forEach(walk);
  return out;
}

const subFields = (s: Scope, type: GraphQLObjectType, nodes: FieldNode[]) =>
  collect(
    s,
    type,
    nodes.map((n) => n.selectionSet),
  );

function fieldOf(type: GraphQLObjectType, nodes: FieldNode[]): GraphQLField<unknown, unknown> {
  const def = type.getFields()[(nodes[0] as FieldNode).name.value];
  if (!def) throw new Unsupported(`no field ${(nodes[0] as FieldNode).name.value} on ${type.name}`);
  return def;
}

const planOf = (def: GraphQLField<unknown, unknown>) => def.extensions['strata'] as FieldPlan | undefined;

function objectTypeOf(t: GraphQLOutputType): GraphQLObjectType {
  const named = getNamedType(t);
  if (!isObjectType(named)) throw new Unsupported('not an object type');
  return named;
}

function jsonObject(pairs: string[]): string {
  if (pairs.length > MAX_KEYS * 2) throw new Unsupported('too many keys for one json_build_object');
  return `json_build_object(${pairs.join(', ')})`;
}

/**
 * A scalar as the GraphQL serializer would render it: BigInt and String as JSON strings (int8,
 * numeric and exotic types as PostgreSQL's text), DateTime as PostgreSQL's ISO rendering
 * (to_json), JSON as it is, the rest as JSON numbers and booleans.
 */
function leaf(type: GraphQLOutputType, expr: string, c?: ColumnInfo): string {
  const named = getNamedType(type).name;
  const inner = isNonNullType(type) ? type.ofType : type;
  const list = isListType(inner);
  if (named === 'BigInt' || named === 'String' || (list && named === 'DateTime') || (c && kindOf(c).select === 'text')) {
    if (c && kindOf(c).json) return expr;
    return list ? `${expr}::text[]` : `${expr}::text`;
  }
  return expr;
}

const alias = (s: Scope) => `_${++s.n}`;

/** The JSON object of one row of `table` (aliased `a`) for the selection `fields`, found at `path` in the answer. */
function rowJson(s: Scope, table: TableInfo, type: GraphQLObjectType, a: string, fields: Fields, path: string[]): string {
  const pairs: string[] = [];
  for (const [key, nodes] of fields) {
    const name = (nodes[0] as FieldNode).name.value;
    if (name === '__typename') {
      pairs.push(lit(key), lit(type.name));
      continue;
    }
    const def = fieldOf(type, nodes);
    const plan = planOf(def);
    if (!plan) throw new Unsupported(`field ${type.name}.${name}`);
    const args = () => getArgumentValues(def, nodes[0] as FieldNode, s.vars);
    let expr: string;
    switch (plan.kind) {
      case 'column':
        expr = leaf(def.type, ref(plan.column, a), plan.column);
        if (s.guard?.table(table.name)?.has(plan.column.name)) s.reveals.push({ path: [...path, key], table: table.name, column: plan.column.name });
        break;
      case 'object': {
        const b = alias(s);
        const join = joinColumns(plan.parent.table, plan.remote.table, plan.rel);
        const on = join.remote.map((c, i) => `${ref(c, b)} = ${ref(join.local[i] as ColumnInfo, a)}`).join(' AND ');
        const remoteType = objectTypeOf(def.type);
        expr = `(SELECT ${rowJson(s, plan.remote.table, remoteType, b, subFields(s, remoteType, nodes), [...path, key])} FROM ${plan.remote.table.qualified} ${b} WHERE ${on} LIMIT 1)`;
        break;
      }
      case 'children':
        expr = children(s, def, nodes, plan, a, args(), [...path, key]);
        break;
      case 'connection':
        expr = connection(s, def, nodes, plan, a, args(), [...path, key]);
        break;
      default:
        throw new Unsupported(`field kind ${plan.kind} inside a row`);
    }
    pairs.push(lit(key), expr);
  }
  return jsonObject(pairs);
}

/** The join of a one-to-many relationship: the children (aliased `b`) of the parent row `a`. */
function childJoin(plan: { parent: TableModel; model?: TableModel; remote?: TableModel; rel: Relationship }, remote: TableModel, a: string, b: string): string {
  const join = joinColumns(plan.parent.table, remote.table, plan.rel);
  return join.remote.map((c, i) => `${ref(c, b)} = ${ref(join.local[i] as ColumnInfo, a)}`).join(' AND ');
}

function children(s: Scope, def: GraphQLField<unknown, unknown>, nodes: FieldNode[], plan: Extract<FieldPlan, { kind: 'children' }>, a: string, args: Vars, path: string[]): string {
  const t = plan.remote.table;
  guardArgs(s.guard, t, args);
  const b = alias(s);
  const e = alias(s);
  const first = checkFirst(args['first'], def.name);
  const items = orderItems(t, args['order_by'] as OrderBy | undefined);
  const where = compileWhere(t, args['where'] as BoolExp | undefined, s.p, b);
  const conds = [childJoin(plan, plan.remote, a, b), ...(where ? [where] : [])].join(' AND ');
  const type = objectTypeOf(def.type);
  const order = orderSql(items, b);
  return (
    `COALESCE((SELECT json_agg(${e}.j ORDER BY ${e}.n) FROM (SELECT ${rowJson(s, t, type, b, subFields(s, type, nodes), [...path, '*'])} AS j, row_number() OVER (ORDER BY ${order}) AS n ` +
    `FROM (SELECT * FROM ${t.qualified} ${b} WHERE ${conds} OFFSET 0) ${b} ORDER BY ${order} LIMIT ${s.p.add(first)}) ${e}), '[]'::json)`
  );
}

/** Cursor of the row aliased `b`: base64url of {"t": table, "o": ordering, "v": [keys as text]}. */
function cursorSql(m: TableModel, pg_: Paging, b: string): string {
  // the same text as JSON.stringify (cursor.ts encodeCursor), so both paths hand out identical cursors
  const keys = pg_.items.map((i) => `COALESCE(to_json(${ref(i.column, b)}::text)::text, 'null')`).join(` || ',' || `);
  const head = lit(`{"t":${JSON.stringify(m.table.name)},"o":${JSON.stringify(pg_.signature)},"v":[`);
  return `translate(encode(convert_to(${head} || ${keys} || ']}', 'UTF8'), 'base64'), E'+/=\\n', '-_')`;
}

/**
 * A cursor connection over `m`: the page (limit + 1 rows, the extra one only tells whether more
 * follow), its nodes, edges and pageInfo, and totalCount when selected. `a` is the parent row of a
 * one-to-many relationship (undefined at the root).
 */
function connection(s: Scope, def: GraphQLField<unknown, unknown>, nodes: FieldNode[], plan: Extract<FieldPlan, { kind: 'connection' }>, a: string | undefined, args: Vars, path: string[]): string {
  const m = plan.model;
  const t = m.table;
  guardArgs(s.guard, t, args);
  const type = objectTypeOf(def.type);
  const fields = subFields(s, type, nodes);
  const pg_ = paging(m.table, def.name, args);
  const join = (b: string) => (plan.parent && plan.rel && a ? [childJoin({ parent: plan.parent, rel: plan.rel }, m, a, b)] : []);

  // what is selected: row JSONs (one per distinct selection: nodes, edges.node), cursors, pageInfo, count
  const rowCols: string[] = [];
  let cursor = false;
  let rows = false;
  const pairs: Array<[string, (sa: string) => string]> = [];
  const b = alias(s);
  const sa = alias(s);
  let keepParam: string | undefined;
  const keep = () => `${sa}.n <= ${(keepParam ??= s.p.add(pg_.limit))}`;
  const outOrder = pg_.backward ? `${sa}.n DESC` : `${sa}.n`;
  const rowCol = (nodeType: GraphQLObjectType, nodeNodes: FieldNode[], at: string[]) => {
    rowCols.push(`${rowJson(s, t, nodeType, b, subFields(s, nodeType, nodeNodes), at)} AS j${rowCols.length}`);
    return `j${rowCols.length - 1}`;
  };
  for (const [key, fnodes] of fields) {
    const name = (fnodes[0] as FieldNode).name.value;
    if (name === '__typename') {
      pairs.push([key, () => lit(type.name)]);
      continue;
    }
    const fdef = fieldOf(type, fnodes);
    if (name === 'totalCount') {
      const c = alias(s);
      const where = compileWhere(t, args['where'] as BoolExp | undefined, s.p, c);
      const conds = [...join(c), ...(where ? [where] : [])];
      const sql = `(SELECT count(*)::int FROM ${t.qualified} ${c}${conds.length ? ` WHERE ${conds.join(' AND ')}` : ''})`;
      pairs.push([key, () => sql]);
    } else if (name === 'nodes') {
      rows = true;
      const col = rowCol(objectTypeOf(fdef.type), fnodes, [...path, key, '*']);
      pairs.push([key, (x) => `COALESCE(json_agg(${x}.${col} ORDER BY ${outOrder}) FILTER (WHERE ${keep()}), '[]'::json)`]);
    } else if (name === 'edges') {
      rows = true;
      const edgeType = objectTypeOf(fdef.type);
      const edgePairs: string[] = [];
      for (const [ekey, enodes] of subFields(s, edgeType, fnodes)) {
        const ename = (enodes[0] as FieldNode).name.value;
        if (ename === '__typename') edgePairs.push(lit(ekey), lit(edgeType.name));
        else if (ename === 'cursor') {
          cursor = true;
          edgePairs.push(lit(ekey), `${sa}.c`);
        } else if (ename === 'node') edgePairs.push(lit(ekey), `${sa}.${rowCol(objectTypeOf(fieldOf(edgeType, enodes).type), enodes, [...path, key, '*', ekey])}`);
        else throw new Unsupported(`edge field ${ename}`);
      }
      const obj = jsonObject(edgePairs);
      pairs.push([key, () => `COALESCE(json_agg(${obj} ORDER BY ${outOrder}) FILTER (WHERE ${keep()}), '[]'::json)`]);
    } else if (name === 'pageInfo') {
      rows = true;
      const infoType = objectTypeOf(fdef.type);
      const infoPairs: string[] = [];
      const firstCursor = () => `(array_agg(${sa}.c ORDER BY ${sa}.n) FILTER (WHERE ${keep()}))[1]`;
      const lastCursor = () => `(array_agg(${sa}.c ORDER BY ${sa}.n DESC) FILTER (WHERE ${keep()}))[1]`;
      const more = () => `count(*) > ${s.p.add(pg_.limit)}`;
      for (const [ikey, inodes] of subFields(s, infoType, fnodes)) {
        const iname = (inodes[0] as FieldNode).name.value;
        let expr: string;
        if (iname === '__typename') expr = lit(infoType.name);
        else if (iname === 'hasNextPage') expr = pg_.backward ? 'false' : more();
        else if (iname === 'hasPreviousPage') expr = pg_.backward ? more() : 'false';
        else if (iname === 'startCursor') {
          cursor = true;
          expr = pg_.backward ? lastCursor() : firstCursor();
        } else if (iname === 'endCursor') {
          cursor = true;
          expr = pg_.backward ? firstCursor() : lastCursor();
        } else throw new Unsupported(`pageInfo field ${iname}`);
        infoPairs.push(lit(ikey), expr);
      }
      const obj = jsonObject(infoPairs);
      pairs.push([key, () => obj]);
    } else throw new Unsupported(`connection field ${name}`);
  }
  const objectPairs = (x: string) => pairs.flatMap(([k, f]) => [lit(k), f(x)]);
  if (!rows) return jsonObject(objectPairs(sa));

  const scan = pg_.backward ? reverseItems(pg_.items) : pg_.items;
  const where = compileWhere(t, args['where'] as BoolExp | undefined, s.p, b);
  const conds = [...join(b), ...(where ? [where] : [])];
  if (pg_.after) conds.push(keysetPredicate(pg_.items, pg_.after, s.p, b));
  if (pg_.before) conds.push(keysetPredicate(reverseItems(pg_.items), pg_.before, s.p, b));
  const order = orderSql(scan, b);
  const cols = [...rowCols, ...(cursor ? [`${cursorSql(m, pg_, b)} AS c`] : []), `row_number() OVER (ORDER BY ${order}) AS n`];
  const filtered = conds.length ? ` WHERE ${conds.join(' AND ')}` : '';
  // a relationship's children are fenced (OFFSET 0): found by the foreign-key index, then sorted and cut
  const from = a ? `(SELECT * FROM ${t.qualified} ${b}${filtered} OFFSET 0) ${b}` : `${t.qualified} ${b}${filtered}`;
  const page = `(SELECT ${cols.join(', ')} FROM ${from} ORDER BY ${order} LIMIT ${s.p.add(pg_.limit + 1)}) ${sa}`;
  return `(SELECT ${jsonObject(objectPairs(sa))} FROM ${page})`;
}

function byPk(s: Scope, def: GraphQLField<unknown, unknown>, nodes: FieldNode[], m: TableModel, args: Vars, path: string[]): string {
  const t = m.table;
  const b = alias(s);
  const type = objectTypeOf(def.type);
  const cond = t.primaryKey.map((k) => `${ref(t.columnMap.get(k) as ColumnInfo, b)} = ${s.p.add(args[k])}`).join(' AND ');
  return `(SELECT ${rowJson(s, t, type, b, subFields(s, type, nodes), path)} FROM ${t.qualified} ${b} WHERE ${cond})`;
}

const AGG_FNS = ['sum', 'avg', 'min', 'max'] as const;

function aggExpr(fn: (typeof AGG_FNS)[number], c: ColumnInfo, b: string): string {
  const col = ref(c, b);
  if (fn === 'avg') return c.udt === 'numeric' ? `avg(${col})::text` : `avg(${col})::float8`;
  if (fn === 'sum') return c.udt === 'numeric' || c.udt === 'int8' ? `sum(${col})::text` : `sum(${col})`;
  return `${fn}(${col})`;
}

/** `t_aggregate(where, group_by) { groups { key count sum {..} avg {..} min {..} max {..} } }`. */
function aggregate(s: Scope, def: GraphQLField<unknown, unknown>, nodes: FieldNode[], m: TableModel, args: Vars): string {
  const t = m.table;
  guardArgs(s.guard, t, args);
  const b = alias(s);
  const g = alias(s);
  const type = objectTypeOf(def.type);
  const groupBy = [...new Set((args['group_by'] as string[] | undefined) ?? [])].map((n) => t.columnMap.get(n)).filter((c): c is ColumnInfo => c !== undefined);
  const cols = new Map<string, string>(); // aggregate expression -> output column
  const col = (expr: string) => {
    let name = cols.get(expr);
    if (!name) {
      name = `a${cols.size}`;
      cols.set(expr, name);
    }
    return `${g}.${name}`;
  };
  const outer: string[] = [];
  for (const [key, fnodes] of subFields(s, type, nodes)) {
    const name = (fnodes[0] as FieldNode).name.value;
    if (name === '__typename') {
      outer.push(lit(key), lit(type.name));
      continue;
    }
    if (name !== 'groups') throw new Unsupported(`aggregate field ${name}`);
    const groupType = objectTypeOf(fieldOf(type, fnodes).type);
    const pairs: string[] = [];
    for (const [gkey, gnodes] of subFields(s, groupType, fnodes)) {
      const gname = (gnodes[0] as FieldNode).name.value;
      if (gname === '__typename') pairs.push(lit(gkey), lit(groupType.name));
      else if (gname === 'key') pairs.push(lit(gkey), jsonObject(groupBy.flatMap((c, i) => [lit(c.name), keyLeaf(c, `${g}.k${i}`)])));
      else if (gname === 'count') pairs.push(lit(gkey), col('count(*)::int'));
      else if ((AGG_FNS as readonly string[]).includes(gname)) {
        const fn = gname as (typeof AGG_FNS)[number];
        const fnType = objectTypeOf(fieldOf(groupType, gnodes).type);
        const inner: string[] = [];
        for (const [ckey, cnodes] of subFields(s, fnType, gnodes)) {
          const cname = (cnodes[0] as FieldNode).name.value;
          if (cname === '__typename') {
            inner.push(lit(ckey), lit(fnType.name));
            continue;
          }
          const c = t.columnMap.get(cname);
          if (!c) throw new Unsupported(`aggregate column ${cname}`);
          s.guard?.checkAggregate(t.name, c.name, fn);
          inner.push(lit(ckey), leaf(fieldOf(fnType, cnodes).type, col(aggExpr(fn, c, b))));
        }
        pairs.push(lit(gkey), jsonObject(inner));
      } else throw new Unsupported(`group field ${gname}`);
    }
    outer.push(lit(key), `COALESCE((SELECT json_agg(${jsonObject(pairs)} ORDER BY ${g}.n) FROM (__GROUPS__) ${g}), '[]'::json)`);
  }
  const where = compileWhere(t, args['where'] as BoolExp | undefined, s.p, b);
  const keys = groupBy.map((c) => ref(c, b));
  const select = [...keys.map((k, i) => `${k} AS k${i}`), ...[...cols].map(([expr, name]) => `${expr} AS ${name}`), `row_number() OVER (${keys.length ? `ORDER BY ${keys.join(', ')}` : ''}) AS n`];
  const groups = `SELECT ${select.join(', ')} FROM ${t.qualified} ${b}${where ? ` WHERE ${where}` : ''}${keys.length ? ` GROUP BY ${keys.join(', ')}` : ''}`;
  return jsonObject(outer.map((x) => x.replace('__GROUPS__', () => groups)));
}

/** A group_by key value as the resolver rendered it (the driver's value of the column's select expression). */
function keyLeaf(c: ColumnInfo, expr: string): string {
  const kind = kindOf(c);
  if (kind.json) return expr;
  if (kind.scalar.name === 'BigInt' || c.udt === 'numeric' || kind.select === 'text') return `${expr}::text`;
  return expr;
}

/** The statement of a query operation: one row, one text column `j`, the response `{"data": {...}}`. */
export function compileOperation(
  schema: { getQueryType(): GraphQLObjectType | null | undefined },
  op: OperationDefinitionNode,
  fragments: Record<string, FragmentDefinitionNode>,
  vars: Vars,
  guard?: Guard,
): { text: string; values: unknown[]; reveals?: Reveal[] } {
  const root = schema.getQueryType();
  if (op.operation !== OperationTypeNode.QUERY || !root) throw new Unsupported('not a query');
  const s: Scope = { p: new Params(), vars, fragments, n: 0, guard, reveals: [] };
  const pairs: string[] = [];
  for (const [key, nodes] of collect(s, root, [op.selectionSet])) {
    const name = (nodes[0] as FieldNode).name.value;
    if (name === '__typename') {
      pairs.push(lit(key), lit(root.name));
      continue;
    }
    const def = fieldOf(root, nodes);
    const plan = planOf(def);
    if (!plan) throw new Unsupported(`root field ${name}`);
    const args = getArgumentValues(def, nodes[0] as FieldNode, vars);
    let expr: string;
    if (plan.kind === 'connection') expr = connection(s, def, nodes, plan, undefined, args, ['data', key]);
    else if (plan.kind === 'byPk') expr = byPk(s, def, nodes, plan.model, args, ['data', key]);
    else if (plan.kind === 'aggregate') expr = aggregate(s, def, nodes, plan.model, args);
    else throw new Unsupported(`root field kind ${plan.kind}`);
    pairs.push(lit(key), expr);
  }
  if (!pairs.length) throw new Unsupported('empty selection');
  const text = `SELECT json_build_object('data', ${jsonObject(pairs)})::text AS j`;
  return s.reveals.length ? { text, values: s.p.values, reveals: s.reveals } : { text, values: s.p.values };
}
