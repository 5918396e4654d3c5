/**
 * Custom scalars: BigInt (int8 as a string, to keep 64-bit precision), JSON (jsonb values as they
 * are) and DateTime (ISO 8601 strings, exact to the microsecond because PostgreSQL formats them).
 * Parse errors are GraphQLErrors, so they surface as GRAPHQL_VALIDATION_FAILED.
 */
import { GraphQLError, GraphQLScalarType, Kind, type ValueNode } from 'graphql/index.js';

const INT8_MIN = -(2n ** 63n);
const INT8_MAX = 2n ** 63n - 1n;
const INTEGER = /^-?[0-9]{1,19}$/;
// Date, then optionally a time with fraction and zone: what PostgreSQL accepts for timestamptz.
const ISO_DATE_TIME = /^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?$/i;

function toBigInt(value: unknown): string {
  const text = typeof value === 'number' && Number.isSafeInteger(value) ? String(value) : value;
  if (typeof text !== 'string' || !INTEGER.test(text)) throw new GraphQLError('BigInt expects an integer or a string of digits');
  const n = BigInt(text);
  if (n < INT8_MIN || n > INT8_MAX) throw new GraphQLError('BigInt value is out of the 64-bit range');
  return n.toString();
}

export const BigIntScalar = new GraphQLScalarType<string, string>({
  name: 'BigInt',
  description: 'A 64-bit integer, serialized as a string to keep its precision; a string or an Int is accepted as input.',
  serialize: (value) => {
    if (typeof value === 'string' || typeof value === 'number' || typeof value === 'bigint') return String(value);
    throw new GraphQLError(`BigInt cannot represent ${typeof value}`);
  },
  parseValue: toBigInt,
  parseLiteral: (ast) => {
    if (ast.kind === Kind.INT || ast.kind === Kind.STRING) return toBigInt(ast.value);
    throw new GraphQLError('BigInt expects an integer or a string of digits', { nodes: ast });
  },
});

function toDateTime(value: unknown): string {
  if (typeof value !== 'string' || !ISO_DATE_TIME.test(value) || Number.isNaN(Date.parse(value.replace(' ', 'T')))) {
    throw new GraphQLError('DateTime expects an ISO 8601 date-time string');
  }
  return value;
}

export const DateTimeScalar = new GraphQLScalarType<string, string>({
  name: 'DateTime',
  description: 'An ISO 8601 date-time string (timestamps and dates).',
  serialize: (value) => {
    if (value instanceof Date) return value.toISOString();
    if (typeof value === 'string') return value;
    throw new GraphQLError(`DateTime cannot represent ${typeof value}`);
  },
  parseValue: toDateTime,
  parseLiteral: (ast) => {
    if (ast.kind === Kind.STRING) return toDateTime(ast.value);
    throw new GraphQLError('DateTime expects a string', { nodes: ast });
  },
});

function literal(ast: ValueNode, variables: Record<string, unknown> | null | undefined): unknown {
  switch (ast.kind) {
    case Kind.STRING:
    case Kind.BOOLEAN:
      return ast.value;
    case Kind.INT:
    case Kind.FLOAT:
      return Number(ast.value);
    case Kind.NULL:
      return null;
    case Kind.ENUM:
      return ast.value;
    case Kind.LIST:
      return ast.values.map((v) => literal(v, variables));
    case Kind.OBJECT:
      return Object.fromEntries(ast.fields.map((f) => [f.name.value, literal(f.value, variables)]));
    case Kind.VARIABLE:
      return variables?.[ast.name.value];
  }
}

export const JSONScalar = new GraphQLScalarType<unknown, unknown>({
  name: 'JSON',
  description: 'Any JSON value (jsonb columns, aggregate group keys).',
  serialize: (value) => value,
  parseValue: (value) => value,
  parseLiteral: literal,
});
