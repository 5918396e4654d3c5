/**
 * Writes are validated against the table's JSON Schema (from the registry) before any SQL: wrong
 * type, missing required column, unknown column, over-long string, value outside a CHECK's list.
 * Each failure is a 400 naming the field (and the row index in a bulk write).
 */
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import { badRequest, type AppError } from '../../../errors.js';
import { jsonSchemaFor, type TableInfo } from '../schema-registry.js';

// ajv-formats is CommonJS with a default export
const addFormats = (addFormatsModule as unknown as { default?: typeof addFormatsModule }).default ?? addFormatsModule;

const ajv = new Ajv2020({ allErrors: true, strict: false, coerceTypes: false });
(addFormats as unknown as (a: Ajv2020) => void)(ajv);

interface Compiled {
  full: ValidateFunction;
  partial: ValidateFunction;
}
const cache = new WeakMap<TableInfo, Compiled>();

function compiled(t: TableInfo): Compiled {
  let c = cache.get(t);
  if (!c) {
    const schema = jsonSchemaFor(t);
    c = { full: ajv.compile(schema), partial: ajv.compile({ ...schema, required: [] }) };
    cache.set(t, c);
  }
  return c;
}

const PRIORITY = ['additionalProperties', 'required', 'maxLength', 'enum', 'format', 'pattern', 'minimum', 'maximum', 'type'];

function toError(t: TableInfo, errors: ErrorObject[], index: number | undefined): AppError {
  const sorted = [...errors].sort((a, b) => {
    const pa = PRIORITY.indexOf(a.keyword);
    const pb = PRIORITY.indexOf(b.keyword);
    return (pa < 0 ? 99 : pa) - (pb < 0 ? 99 : pb);
  });
  const e = sorted[0]!;
  const at = index === undefined ? '' : ` (row ${index})`;
  const field = e.instancePath.replace(/^\//, '').split('/')[0] ?? '';
  const details = (column: string, extra: Record<string, unknown> = {}) => ({ column, table: t.name, ...(index === undefined ? {} : { index }), ...extra });
  switch (e.keyword) {
    case 'additionalProperties': {
      const col = String((e.params as { additionalProperty: string }).additionalProperty);
      return badRequest('UNKNOWN_COLUMN', `column ${JSON.stringify(col)} does not exist in ${t.name}${at}`, details(col));
    }
    case 'required': {
      const col = String((e.params as { missingProperty: string }).missingProperty);
      return badRequest('MISSING_REQUIRED_COLUMN', `column ${col} is required in ${t.name}${at}`, details(col));
    }
    case 'maxLength': {
      const limit = (e.params as { limit: number }).limit;
      return badRequest('VALUE_TOO_LONG', `${field} is longer than ${limit} characters${at}`, details(field, { max_length: limit }));
    }
    case 'enum': {
      const allowed = (e.params as { allowedValues: unknown[] }).allowedValues;
      return badRequest('INVALID_ENUM_VALUE', `${field} must be one of ${allowed.join(', ')}${at}`, details(field, { allowed }));
    }
    default: {
      const c = t.columnMap.get(field);
      return badRequest('INVALID_VALUE', `${field} has the wrong type or format for ${c?.type ?? 'its column'}${at}`, details(field, { expected: c?.type }));
    }
  }
}

/** Validate one row (`partial` for updates: nothing is required). Throws 400 naming the field. */
export function validateRow(t: TableInfo, row: unknown, opts: { partial?: boolean; index?: number } = {}): Record<string, unknown> {
  const at = opts.index === undefined ? '' : ` (row ${opts.index})`;
  if (row === null || typeof row !== 'object' || Array.isArray(row)) {
    throw badRequest('INVALID_BODY', `each row must be a JSON object${at}`, opts.index === undefined ? undefined : { index: opts.index });
  }
  const c = compiled(t);
  const fn = opts.partial ? c.partial : c.full;
  if (!fn(row)) throw toError(t, fn.errors ?? [], opts.index);
  for (const key of Object.keys(row)) {
    if (t.columnMap.get(key)?.generated) {
      throw badRequest('READ_ONLY_COLUMN', `column ${key} is generated and cannot be written${at}`, { column: key });
    }
  }
  return row as Record<string, unknown>;
}
