/**
 * Row assertions that work under any test runner (they throw): the rows of a table matching a
 * filter, compared with partial expected rows.
 *
 *   await db.tenant('acme').expectRows('pipelines', { status: 'archived' }).toMatch([{ name: 'old' }]);
 */
import { isDeepStrictEqual } from 'node:util';
import pg from 'pg';

type Query = (text: string, values?: unknown[]) => Promise<{ rows: Record<string, unknown>[] }>;

export class RowAssertionError extends Error {
  constructor(
    message: string,
    readonly actual: unknown,
    readonly expected: unknown,
  ) {
    super(message);
    this.name = 'AssertionError';
  }
}

export interface RowExpectation {
  /** The matching rows (as JSON: numbers, strings, objects), ordered by primary key / first column. */
  rows(): Promise<Record<string, unknown>[]>;
  /** Exactly these rows (each a partial row); in order with `{ ordered: true }`, else in any order. */
  toMatch(expected: Record<string, unknown>[], opts?: { ordered?: boolean }): Promise<void>;
  toHaveLength(n: number): Promise<void>;
  toBeEmpty(): Promise<void>;
}

export function expectRows(query: Query, table: string, where: Record<string, unknown> = {}): RowExpectation {
  const [schema, name] = table.includes('.') ? (table.split('.', 2) as [string, string]) : ['public', table];
  const rel = `${pg.escapeIdentifier(schema)}.${pg.escapeIdentifier(name)}`;
  const load = async () => {
    const values: unknown[] = [];
    const conds = Object.entries(where).map(([col, v]) => {
      if (v === null) return `r.${pg.escapeIdentifier(col)} IS NULL`;
      values.push(typeof v === 'object' && !(v instanceof Date) ? JSON.stringify(v) : v);
      return `r.${pg.escapeIdentifier(col)} = $${values.length}`;
    });
    const { rows } = await query(
      `SELECT to_jsonb(r) AS row FROM ${rel} r ${conds.length ? `WHERE ${conds.join(' AND ')}` : ''} ORDER BY 1`,
      values,
    );
    return rows.map((r) => r['row'] as Record<string, unknown>);
  };
  const label = `${table}${Object.keys(where).length ? ` where ${JSON.stringify(where)}` : ''}`;
  return {
    rows: load,
    async toMatch(expected, opts = {}) {
      const actual = await load();
      if (actual.length !== expected.length) {
        throw new RowAssertionError(`expected ${expected.length} rows in ${label}, found ${actual.length}: ${JSON.stringify(actual)}`, actual, expected);
      }
      const free = [...actual];
      expected.forEach((want, i) => {
        const at = opts.ordered ? (matches(free[0], want) ? 0 : -1) : free.findIndex((row) => matches(row, want));
        if (at < 0) {
          throw new RowAssertionError(
            `no row of ${label} matches expected row ${i} ${JSON.stringify(want)}; rows: ${JSON.stringify(actual)}`,
            actual,
            expected,
          );
        }
        free.splice(at, 1);
      });
    },
    async toHaveLength(n) {
      const actual = await load();
      if (actual.length !== n) throw new RowAssertionError(`expected ${n} rows in ${label}, found ${actual.length}`, actual.length, n);
    },
    async toBeEmpty() {
      const actual = await load();
      if (actual.length) throw new RowAssertionError(`expected no rows in ${label}, found ${actual.length}: ${JSON.stringify(actual)}`, actual, []);
    },
  };
}

/** Every key of `want` equals the row's (numbers and numeric strings, Dates and ISO strings alike). */
function matches(row: Record<string, unknown> | undefined, want: Record<string, unknown>): boolean {
  if (!row) return false;
  return Object.entries(want).every(([k, v]) => same(row[k], v));
}

function same(actual: unknown, want: unknown): boolean {
  if (want instanceof Date) return typeof actual === 'string' && new Date(actual).getTime() === want.getTime();
  if (typeof want === 'number' || typeof want === 'bigint') return actual !== null && Number(actual) === Number(want);
  if (typeof want === 'string' && typeof actual === 'number') return String(actual) === want;
  if (typeof want === 'string' && typeof actual === 'string' && /^\d{4}-\d\d-\d\dT/.test(want) && /^\d{4}-\d\d-\d\dT/.test(actual)) {
    return new Date(actual).getTime() === new Date(want).getTime();
  }
  return isDeepStrictEqual(actual, want);
}
