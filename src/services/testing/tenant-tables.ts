/**
 * The tables testing mode may touch for a tenant: exposed tables with a tenant_id column under
 * FORCED row-level security, ordered so parents come before children (foreign keys between them).
 */
import type { TableInfo } from '../data/index.js';

/** Tenant tables, parents first (cycles other than self-references are broken arbitrarily). */
export function tenantTables(tables: Map<string, TableInfo>): TableInfo[] {
  const scoped = [...tables.values()].filter(isTenantTable);
  const byName = new Map(scoped.map((t) => [t.name, t]));
  const ordered: TableInfo[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (t: TableInfo) => {
    if (state.has(t.name)) return;
    state.set(t.name, 'visiting');
    for (const fk of t.foreignKeys) {
      const parent = byName.get(fk.table);
      if (parent && parent.name !== t.name) visit(parent);
    }
    state.set(t.name, 'done');
    ordered.push(t);
  };
  for (const t of [...scoped].sort((a, b) => a.name.localeCompare(b.name))) visit(t);
  return ordered;
}

/** Whether `t` is a table testing mode may write for a tenant. */
export const isTenantTable = (t: TableInfo): boolean => t.hasTenantId && t.rls.enabled && t.rls.forced;

/** `t` and every table its foreign keys reach (the tables a factory may write parents into). */
export function withAncestors(t: TableInfo, tables: Map<string, TableInfo>): string[] {
  const seen = new Set<string>();
  const walk = (name: string) => {
    if (seen.has(name)) return;
    seen.add(name);
    for (const fk of tables.get(name)?.foreignKeys ?? []) walk(fk.table);
  };
  walk(t.name);
  return [...seen];
}
