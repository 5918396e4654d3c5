/** Small PostgreSQL helpers shared by backups, verification and restores (admin connections only). */
import pg from 'pg';

/** The same server, another database. */
export function urlForDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

export function databaseOf(url: string): string {
  return decodeURIComponent(new URL(url).pathname.replace(/^\//, '')) || 'postgres';
}

/** Run `fn` with a dedicated client (not a pooled one: long transactions and DDL on other databases). */
export async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url, application_name: 'strata-backups' });
  c.on('error', () => undefined); // a terminated connection surfaces on the next query
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

export const quoteIdent = (s: string) => `"${s.replace(/"/g, '""')}"`;

/** Database names we create: lower-case identifiers, so they never need quoting surprises. */
export const DATABASE_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

export interface TableRef {
  schema: string;
  name: string;
}
export const tableKey = (t: TableRef) => `${t.schema}.${t.name}`;

/** Ordinary and partitioned tables (not partitions: their parent counts them) of the given schemas (null: all user schemas). */
export async function listTables(c: pg.ClientBase, schemas: string[] | null): Promise<TableRef[]> {
  const { rows } = await c.query<{ schema: string; name: string }>(
    `SELECT n.nspname AS schema, c.relname AS name
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
        AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
        AND ($1::text[] IS NULL OR n.nspname = ANY($1::text[]))
      ORDER BY 1, 2`,
    [schemas],
  );
  return rows;
}

/** Exact row counts, RLS off (fails loudly rather than count only what a policy shows). */
export async function countRows(c: pg.ClientBase, tables: TableRef[], signal?: AbortSignal): Promise<Record<string, number>> {
  await c.query('SET row_security = off');
  const counts: Record<string, number> = {};
  for (const t of tables) {
    signal?.throwIfAborted();
    const { rows } = await c.query<{ n: string }>(`SELECT count(*) AS n FROM ${quoteIdent(t.schema)}.${quoteIdent(t.name)}`);
    counts[tableKey(t)] = Number(rows[0]?.n ?? 0);
  }
  return counts;
}

export async function databaseExists(c: pg.ClientBase, name: string): Promise<boolean> {
  return (await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).rowCount === 1;
}

/** Drop a database we created, disconnecting whoever is on it. */
export async function dropDatabase(serverUrl: string, name: string): Promise<void> {
  await withClient(urlForDatabase(serverUrl, 'postgres'), (c) => c.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`));
}
