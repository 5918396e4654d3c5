/**
 * The schema registry: exposed tables read from the database catalog (columns, types, nullability,
 * defaults, primary keys, RLS). Identifiers in requests are checked against it and only ever quoted
 * from it. Refreshed on demand (after migrations).
 */
import pg from 'pg';
import type { Database } from '../db/database.js';
import { notFound } from '../errors.js';

export interface ColumnInfo {
  name: string;
  type: string;
  nullable: boolean;
  hasDefault: boolean;
  maxLength: number | null;
}

export interface TableInfo {
  schema: string;
  name: string;
  columns: ColumnInfo[];
  primaryKey: string[];
  rls: { enabled: boolean; forced: boolean };
  hasTenantId: boolean;
  /** `"schema"."table"`, quoted from the catalog. */
  qualified: string;
}

const EXPOSED_SCHEMAS = ['public'];

const INTROSPECT = `
SELECT c.relname AS name, n.nspname AS schema, c.relrowsecurity AS rls, c.relforcerowsecurity AS forced,
  (SELECT json_agg(json_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
     'nullable', NOT a.attnotnull, 'hasDefault', a.atthasdef OR a.attidentity <> '',
     'maxLength', CASE WHEN a.atttypmod > 4 AND a.atttypid IN (1043, 1042) THEN a.atttypmod - 4 END) ORDER BY a.attnum)
     FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
  (SELECT json_agg(a.attname ORDER BY array_position(i.indkey, a.attnum))
     FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
     WHERE i.indrelid = c.oid AND i.indisprimary) AS pk
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1)
ORDER BY c.relname`;

export function createRegistryService(deps: { db: Database }) {
  let tables: Map<string, TableInfo> | undefined;
  let loading: Promise<Map<string, TableInfo>> | undefined;

  async function load(): Promise<Map<string, TableInfo>> {
    const { rows } = await deps.db.adminQuery<{
      name: string;
      schema: string;
      rls: boolean;
      forced: boolean;
      columns: ColumnInfo[];
      pk: string[] | null;
    }>(INTROSPECT, [EXPOSED_SCHEMAS]);
    const map = new Map<string, TableInfo>();
    for (const r of rows) {
      map.set(r.name, {
        schema: r.schema,
        name: r.name,
        columns: r.columns,
        primaryKey: r.pk ?? [],
        rls: { enabled: r.rls, forced: r.forced },
        hasTenantId: r.columns.some((c) => c.name === 'tenant_id'),
        qualified: `${pg.escapeIdentifier(r.schema)}.${pg.escapeIdentifier(r.name)}`,
      });
    }
    return map;
  }

  return {
    /** All exposed tables (loaded once, then cached until refresh()). */
    async tables(): Promise<Map<string, TableInfo>> {
      if (tables) return tables;
      loading ??= load().then((m) => (tables = m));
      try {
        return await loading;
      } finally {
        loading = undefined;
      }
    },
    /** A table by name; 404 TABLE_NOT_FOUND when it is not exposed. */
    async table(name: string): Promise<TableInfo> {
      const t = (await this.tables()).get(name);
      if (!t) throw notFound('TABLE_NOT_FOUND', `table ${JSON.stringify(name)} does not exist or is not exposed`);
      return t;
    },
    /** Re-read the catalog (after migrations). */
    async refresh(): Promise<void> {
      tables = await load();
    },
  };
}
export type SchemaRegistry = ReturnType<typeof createRegistryService>;
