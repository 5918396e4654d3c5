/**
 * Database states for assertions: every row of every table of the given schemas, keyed by primary
 * key, and the difference of two states per table (rows added, removed, changed).
 */
import pg from 'pg';

type Query = (text: string, values?: unknown[]) => Promise<{ rows: Record<string, unknown>[] }>;

export interface DbState {
  /** table (`schema.table` outside `public`) -> row key -> row as JSON. */
  tables: Record<string, Map<string, Record<string, unknown>>>;
}

export interface TableDiff {
  added: Record<string, unknown>[];
  removed: Record<string, unknown>[];
  changed: Array<{ key: string; before: Record<string, unknown>; after: Record<string, unknown> }>;
}

export interface StateDiff {
  /** Only tables that differ. */
  tables: Record<string, TableDiff>;
  /** True when the two states hold the same rows. */
  empty: boolean;
}

const LIST = `
SELECT n.nspname AS schema, c.relname AS name,
  (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i
     CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = c.oid AND i.indisprimary) AS pk
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ANY($1)
ORDER BY 1, 2`;

/** Capture the rows of every table in `schemas` (default `public`). */
export async function captureState(query: Query, schemas: string[] = ['public']): Promise<DbState> {
  const { rows: tables } = await query(LIST, [schemas]);
  const state: DbState = { tables: {} };
  for (const t of tables as Array<{ schema: string; name: string; pk: string[] | null }>) {
    const rel = `${pg.escapeIdentifier(t.schema)}.${pg.escapeIdentifier(t.name)}`;
    const key = t.pk?.length ? `jsonb_build_array(${t.pk.map((c) => `r.${pg.escapeIdentifier(c)}`).join(', ')})::text` : 'to_jsonb(r)::text';
    const { rows } = await query(`SELECT ${key} AS k, to_jsonb(r) AS row FROM ${rel} r`);
    const map = new Map<string, Record<string, unknown>>();
    for (const r of rows as Array<{ k: string; row: Record<string, unknown> }>) {
      // rows without a primary key can repeat: count duplicates into the key
      let k = r.k;
      for (let i = 2; map.has(k); i++) k = `${r.k}#${i}`;
      map.set(k, r.row);
    }
    state.tables[t.schema === 'public' ? t.name : `${t.schema}.${t.name}`] = map;
  }
  return state;
}

/** What changed from `a` to `b`. */
export function diffStates(a: DbState, b: DbState): StateDiff {
  const tables: Record<string, TableDiff> = {};
  for (const name of new Set([...Object.keys(a.tables), ...Object.keys(b.tables)])) {
    const empty = new Map<string, Record<string, unknown>>();
    const before = a.tables[name] ?? empty;
    const after = b.tables[name] ?? empty;
    const d: TableDiff = { added: [], removed: [], changed: [] };
    for (const [k, row] of after) {
      const old = before.get(k);
      if (!old) d.added.push(row);
      else if (!sameJson(old, row)) d.changed.push({ key: k, before: old, after: row });
    }
    for (const [k, row] of before) if (!after.has(k)) d.removed.push(row);
    if (d.added.length || d.removed.length || d.changed.length) tables[name] = d;
  }
  return { tables, empty: Object.keys(tables).length === 0 };
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(sortKeys(a)) === JSON.stringify(sortKeys(b));
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]));
  }
  return v;
}
