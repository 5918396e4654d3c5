/** Table helpers shared by the scan, erasure, rotation and copy: ordering, primary-key SQL, quoting. */
import pg from 'pg';
import type { TableInfo } from '../data/index.js';

export const q = (ident: string) => pg.escapeIdentifier(ident);

/** Tables parents before children along foreign keys (other cycles broken arbitrarily). */
export function parentsFirst(tables: Iterable<TableInfo>): TableInfo[] {
  const list = [...tables].sort((a, b) => a.name.localeCompare(b.name));
  const byName = new Map(list.map((t) => [t.name, t]));
  const out: TableInfo[] = [];
  const seen = new Set<string>();
  const visit = (t: TableInfo) => {
    if (seen.has(t.name)) return;
    seen.add(t.name);
    for (const fk of t.foreignKeys) {
      const parent = byName.get(fk.table);
      if (parent && parent !== t) visit(parent);
    }
    out.push(t);
  };
  list.forEach(visit);
  return out;
}

/** `jsonb_to_recordset` column definitions of the primary key (for batched keyed updates). */
export function pkRecordDef(t: TableInfo): string {
  return t.primaryKey.map((c) => `${q(c)} ${t.columnMap.get(c)!.type}`).join(', ');
}

/** `t.a = v.a AND t.b = v.b` over the primary key. */
export function pkJoin(t: TableInfo, left = 't', right = 'v'): string {
  return t.primaryKey.map((c) => `${left}.${q(c)} = ${right}.${q(c)}`).join(' AND ');
}

/** Names of the base tables (not views) of schema public. */
export async function baseTableNames(query: (text: string) => Promise<{ rows: Array<{ name: string }> }>): Promise<Set<string>> {
  const { rows } = await query(`SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition`);
  return new Set(rows.map((r) => r.name));
}
