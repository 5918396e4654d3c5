/**
 * Opaque keyset cursors: base64url JSON `{ t: table, o: ordering, v: [values as PostgreSQL text] }`.
 * A cursor is bound to its table and ordering; one that does not decode, names another table or
 * ordering, or carries values that do not fit their columns is refused with INVALID_CURSOR before
 * any SQL runs.
 */
import { badRequest } from '../../errors.js';
import type { TableInfo } from '../../services/data/index.js';
import { orderItems, orderSignature, type OrderItem, type OrderSpec } from './sql.js';
import { kindOf } from './columns.js';
import { LIMITS, checkFirst } from './cost.js';

const invalid = () => badRequest('INVALID_CURSOR', 'the cursor is malformed or belongs to another query (table or ordering)');
const MAX_CURSOR = 4096;

export function encodeCursor(table: string, signature: string, values: Array<string | null>): string {
  return Buffer.from(JSON.stringify({ t: table, o: signature, v: values })).toString('base64url');
}

const INTEGER = /^-?[0-9]{1,19}$/;
const DECIMAL = /^-?[0-9]+(\.[0-9]+)?$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function fits(item: OrderItem, v: string | null): boolean {
  if (v === null) return item.column.nullable;
  const { udt } = item.column;
  if (udt === 'int2' || udt === 'int4' || udt === 'int8') return INTEGER.test(v);
  if (udt === 'numeric' || udt === 'float4' || udt === 'float8') return DECIMAL.test(v) || /^-?(Infinity|NaN)$/.test(v);
  if (udt === 'uuid') return UUID.test(v);
  if (udt === 'bool') return v === 'true' || v === 'false';
  if (kindOf(item.column).select === 'iso') return !Number.isNaN(Date.parse(v.replace(' ', 'T').replace(/([+-]\d{2})$/, '$1:00')));
  return true;
}

/** The keyset values of a cursor, checked against the table, the ordering and the column types. */
export function decodeCursor(cursor: string, table: string, items: OrderItem[], signature: string): Array<string | null> {
  if (cursor.length > MAX_CURSOR || !/^[A-Za-z0-9_-]+$/.test(cursor)) throw invalid();
  let decoded: unknown;
  try {
    decoded = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw invalid();
  }
  if (!decoded || typeof decoded !== 'object') throw invalid();
  const { t, o, v } = decoded as { t?: unknown; o?: unknown; v?: unknown };
  if (t !== table || o !== signature || !Array.isArray(v) || v.length !== items.length) throw invalid();
  const values = v as unknown[];
  if (!values.every((x, i) => (x === null || typeof x === 'string') && fits(items[i] as OrderItem, x))) throw invalid();
  return values as Array<string | null>;
}

function checkLast(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw badRequest('INVALID_ARGUMENT', `${field}.last must be a non-negative integer`, { field: `${field}.last` });
  }
  if (value > LIMITS.maxFirst) {
    throw badRequest('LIMIT_TOO_LARGE', `${field}.last may be at most ${LIMITS.maxFirst} (got ${value})`, { field: `${field}.last`, max: LIMITS.maxFirst });
  }
  return value;
}

/** Paging arguments of a connection, checked: the ordering, the bounds and the page size and direction. */
export interface Paging {
  items: OrderItem[];
  signature: string;
  after?: Array<string | null>;
  before?: Array<string | null>;
  backward: boolean;
  limit: number;
}

export function paging(t: TableInfo, field: string, args: Record<string, unknown>): Paging {
  const items = orderItems(t, args['order_by'] as ReadonlyArray<Record<string, OrderSpec>> | undefined);
  const signature = orderSignature(items);
  const hasLast = args['last'] !== undefined && args['last'] !== null;
  if (hasLast && args['first'] !== undefined && args['first'] !== null) {
    throw badRequest('INVALID_ARGUMENT', `${field}: give first or last, not both`, { field: `${field}.last` });
  }
  const limit = hasLast ? checkLast(args['last'], field) : checkFirst(args['first'], field);
  const cursor = (name: 'after' | 'before') => (typeof args[name] === 'string' ? decodeCursor(args[name], t.name, items, signature) : undefined);
  return { items, signature, after: cursor('after'), before: cursor('before'), backward: hasLast, limit };
}
