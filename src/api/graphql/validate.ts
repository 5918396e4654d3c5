/**
 * Checks on written values before any SQL, with the semantics of the table's JSON Schema
 * (jsonSchemaFor): string length, enum (CHECK ... IN), integer and decimal ranges, uuid and
 * date-time formats, nulls in NOT NULL columns. Types are already enforced by the GraphQL input
 * types; errors name the field (`objects[1].name`).
 */
import type { ColumnInfo, TableInfo } from '../../services/data/index.js';
import { badRequest } from '../../errors.js';

const DECIMAL = /^-?[0-9]+(\.[0-9]+)?$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function checkScalar(c: ColumnInfo, v: unknown, field: string): void {
  if (typeof v === 'string') {
    if (c.maxLength !== null && [...v].length > c.maxLength) {
      throw badRequest('VALUE_TOO_LONG', `${field} is longer than ${c.maxLength} characters`, { field, maxLength: c.maxLength });
    }
    if (c.enum && !c.enum.includes(v)) {
      throw badRequest('INVALID_VALUE', `${field} must be one of ${c.enum.join(', ')}`, { field, allowed: c.enum });
    }
    if (c.udt === 'numeric' && !DECIMAL.test(v)) throw badRequest('INVALID_VALUE', `${field} must be a decimal number`, { field });
    if (c.udt === 'uuid' && !UUID.test(v)) throw badRequest('INVALID_VALUE', `${field} must be a uuid`, { field });
  }
  if (typeof v === 'number' && c.udt === 'int2' && (v < -32768 || v > 32767)) {
    throw badRequest('INVALID_VALUE', `${field} is out of range for a smallint`, { field });
  }
}

/** Validate one row written to `t` (insert when `insert`, else an update's `_set`). */
export function validateWrite(t: TableInfo, row: Record<string, unknown>, path: string): void {
  for (const [name, v] of Object.entries(row)) {
    if (v === undefined) continue;
    const c = t.columnMap.get(name);
    const field = `${path}.${name}`;
    if (!c) throw badRequest('UNKNOWN_COLUMN', `column ${JSON.stringify(name)} does not exist in ${t.name}`, { field });
    if (c.generated) throw badRequest('READ_ONLY_COLUMN', `${field} is generated and cannot be written`, { field });
    if (v === null) {
      if (!c.nullable) throw badRequest('NOT_NULL_VIOLATION', `${field} must not be null`, { field });
      continue;
    }
    if (c.isArray && Array.isArray(v)) v.forEach((x, i) => checkScalar(c, x, `${field}[${i}]`));
    else checkScalar(c, v, field);
  }
}
