/**
 * One plausible value for a column: by its type, bounded by its CHECK rules and length, picked from
 * its allowed values when there is a list, guided by its name (email, url, name, title...), and made
 * unique with a sequence number when a unique index covers it. Everything random comes from the
 * given faker, so a seed replays the same rows.
 */
import type { Faker } from '@faker-js/faker';
import type { FactoryColumn } from './schema.js';

export class UnsupportedColumnError extends Error {
  readonly code = 'FACTORY_UNSUPPORTED_COLUMN';
  constructor(
    readonly table: string,
    readonly column: string,
    readonly type: string,
  ) {
    super(`the factory for ${table} cannot make a value for ${column} (${type}); give it as an override`);
    this.name = 'UnsupportedColumnError';
  }
}

/** Sentinel: leave the column to its default (or NULL). */
export const SKIP = Symbol('skip');

const INT_BOUNDS: Record<string, [number, number]> = {
  int2: [-32768, 32767],
  int4: [-2147483648, 2147483647],
  int8: [-Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
};

export function valueFor(table: string, c: FactoryColumn, faker: Faker, seq: number): unknown {
  const { rules } = c;
  if (rules.opaqueCheck && c.nullable) return null; // NULL passes any CHECK; a guess might not
  if (rules.oneOf?.length) {
    const v = rules.unique ? rules.oneOf[(seq - 1) % rules.oneOf.length]! : faker.helpers.arrayElement(rules.oneOf);
    return c.isArray ? [v] : v;
  }
  if (c.isArray) {
    const n = faker.number.int({ min: 1, max: 3 });
    const items = Array.from({ length: n }, () => scalar(table, { ...c, rules: { ...rules, unique: false } }, faker, seq));
    return c.udt === 'json' || c.udt === 'jsonb' ? JSON.stringify(items) : items;
  }
  return scalar(table, c, faker, seq);
}

function scalar(table: string, c: FactoryColumn, faker: Faker, seq: number): unknown {
  const { rules } = c;
  switch (c.udt) {
    case 'int2':
    case 'int4':
    case 'int8': {
      const [lo, hi] = INT_BOUNDS[c.udt]!;
      const min = Math.max(lo, Math.ceil(rules.min ?? (rules.unique ? 1 : 0)));
      const max = Math.min(hi, Math.floor(rules.max ?? Math.max(min + 1000, 1000)));
      if (rules.unique) return min + ((seq - 1) % (max - min + 1));
      return faker.number.int({ min, max });
    }
    case 'numeric':
    case 'float4':
    case 'float8': {
      const min = rules.min ?? 0;
      const max = rules.max ?? min + 1000;
      if (rules.unique) return String(min + (seq % Math.max(1, Math.floor(max - min))));
      const v = faker.number.float({ min, max, fractionDigits: 2 });
      return c.udt === 'numeric' ? v.toFixed(2) : v;
    }
    case 'bool':
      return faker.datatype.boolean();
    case 'uuid':
      return faker.string.uuid();
    case 'timestamptz':
    case 'timestamp':
      return faker.date.recent({ days: 30 }).toISOString();
    case 'date':
      return faker.date.recent({ days: 365 }).toISOString().slice(0, 10);
    case 'time':
    case 'timetz':
      return faker.date.recent().toISOString().slice(11, 19);
    case 'interval':
      return `${faker.number.int({ min: 1, max: 3600 })} seconds`;
    case 'json':
    case 'jsonb':
      return JSON.stringify({ [faker.lorem.word()]: faker.lorem.word() });
    case 'inet':
    case 'cidr':
      return faker.internet.ipv4();
    case 'bytea':
      return Buffer.from(faker.string.alphanumeric(16));
    case 'text':
    case 'varchar':
    case 'bpchar':
    case 'citext':
    case 'name':
      return text(c, faker, seq);
    default:
      if (c.nullable) return null;
      throw new UnsupportedColumnError(table, c.name, c.type);
  }
}

function text(c: FactoryColumn, faker: Faker, seq: number): string {
  const n = c.name.toLowerCase();
  let base: string;
  if (n.includes('email')) base = faker.internet.email().toLowerCase();
  else if (n.includes('url') || n.includes('website')) base = faker.internet.url();
  else if (n === 'slug' || n.endsWith('_slug') || n === 'code' || n.endsWith('_code')) base = faker.string.alphanumeric(8).toLowerCase();
  else if (n.includes('phone')) base = faker.phone.number();
  else if (n === 'first_name') base = faker.person.firstName();
  else if (n === 'last_name') base = faker.person.lastName();
  else if (n.includes('company')) base = faker.company.name();
  else if (n === 'name' || n.endsWith('_name') || n === 'title') base = faker.commerce.productName();
  else if (/description|body|message|note|comment|content|text/.test(n)) base = faker.lorem.sentence();
  else base = faker.lorem.words(2);
  const suffix = c.rules.unique ? `-${seq}` : '';
  const max = c.rules.maxLength;
  if (max !== null && base.length + suffix.length > max) {
    if (suffix.length >= max) return String(seq).slice(-max);
    base = base.slice(0, max - suffix.length);
  }
  return base + suffix;
}
