/**
 * How each PostgreSQL column type appears in GraphQL and in SQL: the scalar, whether it can be
 * ordered, filtered with LIKE, summed, or min/max-ed, and the select expression that makes the
 * value JSON-exact (timestamps formatted by PostgreSQL, exotic types as text).
 */
import pg from 'pg';
import { GraphQLBoolean, GraphQLFloat, GraphQLInt, GraphQLString, type GraphQLScalarType } from 'graphql/index.js';
import type { ColumnInfo } from '../../services/data/index.js';
import { BigIntScalar, DateTimeScalar, JSONScalar } from './scalars.js';

export interface ColumnKind {
  scalar: GraphQLScalarType;
  /** Comparable with <, >, ORDER BY, min/max. */
  ordered: boolean;
  /** LIKE / ILIKE apply. */
  text: boolean;
  /** sum/avg apply. */
  numeric: boolean;
  json: boolean;
  /** Selected as PostgreSQL's own text rendering (exact), not the driver's parse. */
  select: 'raw' | 'iso' | 'text';
}

const K = (scalar: GraphQLScalarType, o: Partial<ColumnKind> = {}): ColumnKind => ({
  scalar,
  ordered: true,
  text: false,
  numeric: false,
  json: false,
  select: 'raw',
  ...o,
});

const KINDS: Record<string, ColumnKind> = {
  int2: K(GraphQLInt, { numeric: true }),
  int4: K(GraphQLInt, { numeric: true }),
  int8: K(BigIntScalar, { numeric: true }),
  numeric: K(GraphQLString, { numeric: true }),
  float4: K(GraphQLFloat, { numeric: true }),
  float8: K(GraphQLFloat, { numeric: true }),
  bool: K(GraphQLBoolean),
  json: K(JSONScalar, { ordered: false, json: true }),
  jsonb: K(JSONScalar, { ordered: false, json: true }),
  text: K(GraphQLString, { text: true }),
  varchar: K(GraphQLString, { text: true }),
  bpchar: K(GraphQLString, { text: true }),
  name: K(GraphQLString, { text: true }),
  citext: K(GraphQLString, { text: true }),
  uuid: K(GraphQLString),
  timestamptz: K(DateTimeScalar, { select: 'iso' }),
  timestamp: K(DateTimeScalar, { select: 'iso' }),
  date: K(DateTimeScalar, { select: 'iso' }),
};

const OTHER = K(GraphQLString, { ordered: true, select: 'text' });

export function kindOf(c: ColumnInfo): ColumnKind {
  return KINDS[c.udt] ?? OTHER;
}

export const q = (name: string) => pg.escapeIdentifier(name);

/** `alias."col"` or `"col"`. */
export const ref = (c: ColumnInfo, alias?: string) => (alias ? `${alias}.${q(c.name)}` : q(c.name));

/** A SQL expression of column `c`'s type, rendered the way rows carry it (exact, JSON-friendly). */
export function valueExpr(c: ColumnInfo, expr: string): string {
  const kind = kindOf(c);
  if (c.isArray) return kind.select === 'raw' ? expr : `${expr}::text[]`;
  if (kind.select === 'iso') return `to_json(${expr}) #>> '{}'`;
  if (kind.select === 'text') return `${expr}::text`;
  return expr;
}

/** The select-list item for a column, named by the column (rows are keyed by column name). */
export function selectItem(c: ColumnInfo, alias?: string): string {
  const r = ref(c, alias);
  const e = valueExpr(c, r);
  return e === r ? r : `${e} AS ${q(c.name)}`;
}

/** A value bound as a parameter: JSON columns take JSON text (arrays would otherwise become PG arrays). */
export function paramValue(c: ColumnInfo, v: unknown): unknown {
  if (v === null || v === undefined) return null;
  return kindOf(c).json && !c.isArray ? JSON.stringify(v) : v;
}
