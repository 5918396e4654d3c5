/**
 * The GraphQL schema, generated from the schema registry with Hasura's naming (which users know):
 * for a table `t`: `t(where, order_by, first, after)` (a cursor connection), `t_by_pk`,
 * `t_aggregate(where, group_by)`, and the mutations `insert_t`, `insert_t_one`, `update_t_by_pk`,
 * `update_t`, `delete_t_by_pk`, `delete_t`. Relationships come from foreign keys both ways.
 */
import {
  GraphQLBoolean,
  GraphQLEnumType,
  GraphQLFloat,
  GraphQLID,
  GraphQLInputObjectType,
  GraphQLInt,
  GraphQLList,
  GraphQLNonNull,
  GraphQLObjectType,
  GraphQLSchema,
  GraphQLString,
  type GraphQLFieldConfig,
  type GraphQLFieldConfigArgumentMap,
  type GraphQLFieldConfigMap,
  type GraphQLInputFieldConfigMap,
  type GraphQLInputType,
  type GraphQLOutputType,
  type GraphQLScalarType,
} from 'graphql/index.js';
import type { FastifyBaseLogger } from 'fastify';
import { relationships, type ColumnInfo, type TableInfo } from '../../services/data/index.js';
import type { GraphqlContext } from './context.js';
import { kindOf } from './columns.js';
import { BigIntScalar, JSONScalar } from './scalars.js';
import {
  aggregateResolver,
  columnResolver,
  byPkResolver,
  deleteByPkResolver,
  deleteWhereResolver,
  insertResolver,
  listResolver,
  relationshipResolver,
  relationshipConnectionResolver,
  updateByPkResolver,
  updateWhereResolver,
  type TableModel,
} from './resolvers.js';
import { changesSubscriptionType } from './changes.js';
import { SEARCH_TYPE_NAMES, searchField } from './search.js';
import type { FieldPlan } from './compile.js';

/** What the one-statement compiler needs to know about a field (absent: the compiler does not serve it). */
const plan = (p: FieldPlan) => ({ strata: p });

type Fields = GraphQLFieldConfigMap<Record<string, unknown>, GraphqlContext>;
const NAME = /^[_A-Za-z][_0-9A-Za-z]*$/;
const validName = (n: string) => NAME.test(n) && !n.startsWith('__');
const SUFFIXES = ['', '_connection', '_edge', '_bool_exp', '_order_by', '_select_column', '_aggregate', '_aggregate_group', '_sum_fields', '_avg_fields', '_min_fields', '_max_fields', '_insert_input', '_set_input', '_pk_columns_input', '_mutation_response'];
const nonNull = <T extends GraphQLInputType | GraphQLOutputType>(t: T) => new GraphQLNonNull(t);
const listOf = <T extends GraphQLInputType | GraphQLOutputType>(t: T) => new GraphQLList(new GraphQLNonNull(t));

const OrderByEnum = new GraphQLEnumType({
  name: 'order_by',
  description: 'Column ordering; plain asc puts nulls last and plain desc puts them first, as PostgreSQL does.',
  values: {
    asc: { value: { desc: false, nullsFirst: false } },
    asc_nulls_first: { value: { desc: false, nullsFirst: true } },
    asc_nulls_last: { value: { desc: false, nullsFirst: false } },
    desc: { value: { desc: true, nullsFirst: true } },
    desc_nulls_first: { value: { desc: true, nullsFirst: true } },
    desc_nulls_last: { value: { desc: true, nullsFirst: false } },
  },
});

const PageInfo = new GraphQLObjectType({
  name: 'PageInfo',
  fields: {
    hasNextPage: { type: nonNull(GraphQLBoolean), description: 'More rows follow this page (paging forward with first; false when paging with last).' },
    hasPreviousPage: { type: nonNull(GraphQLBoolean), description: 'More rows precede this page (paging backward with last; false when paging with first).' },
    startCursor: { type: GraphQLString, description: 'The cursor of the first row of the page.' },
    endCursor: { type: GraphQLString, description: 'The cursor of the last row of the page.' },
  },
});

const RESERVED = new Set(['Query', 'Mutation', 'Subscription', 'PageInfo', 'order_by', 'BigInt', 'JSON', 'DateTime', 'String', 'Int', 'Float', 'Boolean', 'ID', ...SEARCH_TYPE_NAMES]);

/** Comparison inputs per scalar (`String_comparison_exp`...), made once per schema. */
function comparisons() {
  const made = new Map<string, GraphQLInputObjectType>();
  return (c: ColumnInfo): GraphQLInputObjectType => {
    const kind = kindOf(c);
    const scalar = kind.scalar;
    const name = `${scalar.name}_comparison_exp`;
    let t = made.get(name);
    if (!t) {
      const fields: GraphQLInputFieldConfigMap = { _eq: { type: scalar }, _neq: { type: scalar } };
      if (kind.ordered) Object.assign(fields, { _gt: { type: scalar }, _gte: { type: scalar }, _lt: { type: scalar }, _lte: { type: scalar } });
      if (scalar === GraphQLString) Object.assign(fields, { _like: { type: GraphQLString }, _ilike: { type: GraphQLString } });
      fields['_in'] = { type: listOf(scalar) };
      fields['_is_null'] = { type: GraphQLBoolean };
      t = new GraphQLInputObjectType({ name, fields });
      made.set(name, t);
    }
    return t;
  };
}

const columnType = (c: ColumnInfo): GraphQLScalarType | GraphQLList<GraphQLNonNull<GraphQLScalarType>> => (c.isArray ? listOf(kindOf(c).scalar) : kindOf(c).scalar);

function sumType(c: ColumnInfo): GraphQLScalarType {
  if (c.udt === 'numeric') return GraphQLString;
  return kindOf(c).scalar === GraphQLInt || c.udt === 'int8' ? BigIntScalar : kindOf(c).scalar;
}

const canMinMax = (c: ColumnInfo) => !c.isArray && kindOf(c).ordered && !['bool', 'uuid'].includes(c.udt);

/** Build the schema for the registry's tables (those with GraphQL-safe names). */
export function buildGraphqlSchema(tables: ReadonlyMap<string, TableInfo>, log: FastifyBaseLogger, extra: Fields = {}): GraphQLSchema {
  const usable = new Map<string, TableInfo>();
  const taken = new Set(RESERVED);
  for (const t of tables.values()) {
    const names = SUFFIXES.map((s) => t.name + s);
    if (!validName(t.name) || names.some((n) => taken.has(n) || n.endsWith('_comparison_exp'))) {
      log.warn({ table: t.name }, 'table not exposed over GraphQL: its name is not a valid or unique GraphQL name');
      continue;
    }
    names.forEach((n) => taken.add(n));
    usable.set(t.name, t);
  }
  const comparison = comparisons();
  const models = new Map<string, TableModel>();
  for (const t of usable.values()) {
    const cols = new Set(t.columns.map((c) => c.name));
    const rels = new Map(relationships(t).filter((r) => usable.has(r.table) && validName(r.name) && !cols.has(r.name)).map((r) => [r.name, r]));
    models.set(t.name, { table: t, rels });
  }
  const exposed = (t: TableInfo) => t.columns.filter((c) => validName(c.name));

  const objectTypes = new Map<string, GraphQLObjectType>();
  const connections = new Map<string, GraphQLObjectType>();
  const boolExps = new Map<string, GraphQLInputObjectType>();
  const orderBys = new Map<string, GraphQLInputObjectType | undefined>();

  for (const m of models.values()) {
    const t = m.table;
    const boolExp: GraphQLInputObjectType = new GraphQLInputObjectType({
      name: `${t.name}_bool_exp`,
      description: `Filter on ${t.name}: columns with comparison operators, combined with _and, _or and _not.`,
      fields: () => {
        const f: GraphQLInputFieldConfigMap = {};
        for (const c of exposed(t)) if (!c.isArray) f[c.name] = { type: comparison(c) };
        f['_and'] = { type: listOf(boolExp) };
        f['_or'] = { type: listOf(boolExp) };
        f['_not'] = { type: boolExp };
        return f;
      },
    });
    boolExps.set(t.name, boolExp);
    const orderCols = exposed(t).filter((c) => !c.isArray && kindOf(c).ordered);
    orderBys.set(
      t.name,
      orderCols.length
        ? new GraphQLInputObjectType({ name: `${t.name}_order_by`, fields: Object.fromEntries(orderCols.map((c) => [c.name, { type: OrderByEnum }])) })
        : undefined,
    );
  }

  const listArgs = (name: string, withAfter: boolean): GraphQLFieldConfigArgumentMap => {
    const order = orderBys.get(name);
    const args: GraphQLFieldConfigArgumentMap = { where: { type: boolExps.get(name) as GraphQLInputObjectType } };
    if (order) args['order_by'] = { type: listOf(order) };
    args['first'] = { type: GraphQLInt, description: 'Rows to return (default 50, at most 1000).' };
    if (withAfter) {
      args['after'] = { type: GraphQLString, description: 'An endCursor or edge cursor of the same list and ordering.' };
      args['last'] = { type: GraphQLInt, description: 'Rows to return from the end (at most 1000; not with first): pages backward.' };
      args['before'] = { type: GraphQLString, description: 'A startCursor or edge cursor of the same list and ordering: rows before it.' };
    }
    return args;
  };

  for (const m of models.values()) {
    const t = m.table;
    objectTypes.set(
      t.name,
      new GraphQLObjectType<Record<string, unknown>, GraphqlContext>({
        name: t.name,
        description: t.comment ?? `Rows of ${t.schema}.${t.name}`,
        extensions: { strataTable: t.name },
        fields: () => {
          const f: Fields = {};
          for (const c of exposed(t)) {
            const type = columnType(c);
            f[c.name] = { type: c.nullable ? type : nonNull(type), resolve: columnResolver(t.name, c.name), extensions: plan({ kind: 'column', column: c }) };
          }
          for (const rel of m.rels.values()) {
            const remote = models.get(rel.table) as TableModel;
            const remoteType = objectTypes.get(rel.table) as GraphQLObjectType;
            f[rel.name] =
              rel.kind === 'many-to-one'
                ? { type: remoteType, resolve: relationshipResolver(m, remote, rel), extensions: plan({ kind: 'object', parent: m, remote, rel }) }
                : {
                    type: nonNull(listOf(remoteType)),
                    args: listArgs(rel.table, false),
                    resolve: relationshipResolver(m, remote, rel),
                    extensions: plan({ kind: 'children', parent: m, remote, rel }),
                  };
            const connectionName = `${rel.name}_connection`;
            if (rel.kind === 'one-to-many' && !f[connectionName] && !m.rels.has(connectionName)) {
              f[connectionName] = {
                type: nonNull(connections.get(rel.table) as GraphQLObjectType),
                args: listArgs(rel.table, true),
                description: `${rel.name} as a cursor connection (nodes, edges, pageInfo, totalCount), paged with first/after or last/before.`,
                resolve: relationshipConnectionResolver(m, remote, rel),
                extensions: plan({ kind: 'connection', model: remote, parent: m, rel }),
              };
            }
          }
          return f;
        },
      }),
    );
  }

  const query: Fields = {};
  const mutation: Fields = {};
  for (const m of models.values()) {
    const t = m.table;
    const n = t.name;
    const type = objectTypes.get(n) as GraphQLObjectType;
    const edge = new GraphQLObjectType({ name: `${n}_edge`, fields: { cursor: { type: nonNull(GraphQLString) }, node: { type: nonNull(type) } } });
    const connection = new GraphQLObjectType({
      name: `${n}_connection`,
      fields: {
        nodes: { type: nonNull(listOf(type)) },
        edges: { type: nonNull(listOf(edge)) },
        pageInfo: { type: nonNull(PageInfo) },
        totalCount: { type: nonNull(GraphQLInt), description: 'Rows matching `where` (counted only when selected).' },
      },
    });
    connections.set(n, connection);
    query[n] = { type: nonNull(connection), args: listArgs(n, true), resolve: listResolver(m), extensions: plan({ kind: 'connection', model: m }) };
    query[`${n}_aggregate`] = aggregateField(m, boolExps.get(n) as GraphQLInputObjectType, exposed(t));

    const pkCols = t.primaryKey.map((k) => t.columnMap.get(k)).filter((c): c is ColumnInfo => c !== undefined && validName(c.name));
    if (pkCols.length !== t.primaryKey.length || !pkCols.length) continue; // views and PK-less tables: read-only lists
    const pkArgs: GraphQLFieldConfigArgumentMap =
      pkCols.length === 1
        ? { [(pkCols[0] as ColumnInfo).name]: { type: nonNull(GraphQLID) } }
        : Object.fromEntries(pkCols.map((c) => [c.name, { type: nonNull(kindOf(c).scalar) }]));
    query[`${n}_by_pk`] = { type, args: pkArgs, resolve: byPkResolver(m), extensions: plan({ kind: 'byPk', model: m }) };

    const writable = exposed(t).filter((c) => !c.generated);
    const insertInput = new GraphQLInputObjectType({
      name: `${n}_insert_input`,
      fields: Object.fromEntries(writable.map((c) => [c.name, { type: !c.nullable && !c.hasDefault ? nonNull(columnType(c)) : columnType(c) }])),
    });
    const response = new GraphQLObjectType({
      name: `${n}_mutation_response`,
      fields: { affected_rows: { type: nonNull(GraphQLInt) }, returning: { type: nonNull(listOf(type)) } },
    });
    const where = { type: nonNull(boolExps.get(n) as GraphQLInputObjectType), description: 'Rows to change; an empty filter is refused (UNFILTERED_MASS_WRITE).' };
    if (writable.length) {
      mutation[`insert_${n}`] = { type: nonNull(listOf(type)), args: { objects: { type: nonNull(listOf(insertInput)) } }, resolve: insertResolver(m, false) };
      mutation[`insert_${n}_one`] = { type, args: { object: { type: nonNull(insertInput) } }, resolve: insertResolver(m, true) };
      const setInput = new GraphQLInputObjectType({ name: `${n}_set_input`, fields: Object.fromEntries(writable.map((c) => [c.name, { type: columnType(c) }])) });
      const pkInput = new GraphQLInputObjectType({ name: `${n}_pk_columns_input`, fields: Object.fromEntries(pkCols.map((c) => [c.name, { type: nonNull(pkCols.length === 1 ? GraphQLID : kindOf(c).scalar) }])) });
      mutation[`update_${n}_by_pk`] = { type, args: { pk_columns: { type: nonNull(pkInput) }, _set: { type: nonNull(setInput) } }, resolve: updateByPkResolver(m) };
      mutation[`update_${n}`] = { type: nonNull(response), args: { where, _set: { type: nonNull(setInput) } }, resolve: updateWhereResolver(m) };
    }
    mutation[`delete_${n}_by_pk`] = { type, args: pkArgs, resolve: deleteByPkResolver(m) };
    mutation[`delete_${n}`] = { type: nonNull(response), args: { where }, resolve: deleteWhereResolver(m) };
  }
  for (const [k, v] of Object.entries(extra)) if (!(k in query)) query[k] = v; // views.ts: dashboards (a table of that name wins)
  query['search'] = searchField();
  if (!Object.keys(query).length) query['_empty'] = { type: GraphQLBoolean, description: 'No table is exposed yet.' };
  const queryType = new GraphQLObjectType({ name: 'Query', fields: query });
  return new GraphQLSchema({
    query: queryType,
    mutation: Object.keys(mutation).length ? new GraphQLObjectType({ name: 'Mutation', fields: mutation }) : undefined,
    subscription: changesSubscriptionType(queryType),
  });
}

function aggregateField(m: TableModel, boolExp: GraphQLInputObjectType, columns: ColumnInfo[]): GraphQLFieldConfig<Record<string, unknown>, GraphqlContext> {
  const n = m.table.name;
  const numeric = columns.filter((c) => !c.isArray && kindOf(c).numeric);
  const minMax = columns.filter(canMinMax);
  const groupable = columns.filter((c) => !c.isArray && c.udt !== 'json');
  const groupFields: Fields = {
    key: { type: nonNull(JSONScalar), description: 'The group_by columns and their values for this group ({} without group_by).' },
    count: { type: nonNull(GraphQLInt) },
  };
  if (numeric.length) {
    groupFields['sum'] = { type: nonNull(new GraphQLObjectType({ name: `${n}_sum_fields`, fields: Object.fromEntries(numeric.map((c) => [c.name, { type: sumType(c) }])) })) };
    groupFields['avg'] = {
      type: nonNull(new GraphQLObjectType({ name: `${n}_avg_fields`, fields: Object.fromEntries(numeric.map((c) => [c.name, { type: c.udt === 'numeric' ? GraphQLString : GraphQLFloat }])) })),
    };
  }
  if (minMax.length) {
    for (const fn of ['min', 'max'] as const) {
      groupFields[fn] = { type: nonNull(new GraphQLObjectType({ name: `${n}_${fn}_fields`, fields: Object.fromEntries(minMax.map((c) => [c.name, { type: kindOf(c).scalar }])) })) };
    }
  }
  const args: GraphQLFieldConfigArgumentMap = { where: { type: boolExp } };
  if (groupable.length) {
    const selectColumn = new GraphQLEnumType({ name: `${n}_select_column`, values: Object.fromEntries(groupable.map((c) => [c.name, { value: c.name }])) });
    args['group_by'] = { type: listOf(selectColumn) };
  }
  return {
    type: nonNull(new GraphQLObjectType({ name: `${n}_aggregate`, fields: { groups: { type: nonNull(listOf(new GraphQLObjectType({ name: `${n}_aggregate_group`, fields: groupFields }))) } } })),
    args,
    resolve: aggregateResolver(m),
    extensions: plan({ kind: 'aggregate', model: m }),
  };
}
