/**
 * Materialized views and the declared policy (issue 15). A materialized view stores what its SQL
 * selected, outside the tables the declarations cover, and is read through /v1/views and GraphQL
 * without the guard: a view over a declared column would carry its value out (plaintext a role reads
 * masked, or ciphertext). The rule: a view may not depend on a declared column at all (select list,
 * filter, join, function argument: a filter would be an oracle for the value), nor on a whole-row
 * reference of a table that has declared columns. Both directions are checked:
 *
 * - creating a view (POST /v1/admin/views): after `CREATE MATERIALIZED VIEW ... WITH NO DATA` in the
 *   creating transaction, PostgreSQL's own dependency records (pg_depend of the view's rewrite rule:
 *   one entry per base-table column the query uses, `*` already expanded) name the columns; a
 *   whole-row reference is found in the parse tree. A hit is 400 VIEW_DECLARED_COLUMN and the
 *   transaction rolls back (nothing is created).
 * - declaring a column (PUT /v1/admin/compliance/columns/...): a view already depending on it is
 *   409 COLUMN_USED_BY_VIEW (drop the view, declare, create it again without the column).
 */
import type pg from 'pg';
import type { Database } from '../../db/database.js';
import { badRequest, conflict } from '../../errors.js';
import { parse } from '../data/index.js';
import type { PolicySnapshot } from './enforce.js';

const MATVIEW_SCHEMA = 'strata_matviews';

type Query = (text: string, values: unknown[]) => Promise<{ rows: Array<Record<string, unknown>> }>;

/** Base-table columns (schema public) a materialized view's rewrite rule depends on. */
async function dependedColumns(query: Query, viewOids: string): Promise<Array<{ view: string; table: string; column: string }>> {
  const { rows } = await query(
    `SELECT DISTINCT v.relname AS view, t.relname AS table, a.attname AS column
       FROM pg_rewrite r
       JOIN pg_class v ON v.oid = r.ev_class
       JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0
       JOIN pg_class t ON t.oid = d.refobjid AND t.relnamespace = 'public'::regnamespace
       JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
      WHERE ${viewOids}`,
    [MATVIEW_SCHEMA],
  );
  return rows as Array<{ view: string; table: string; column: string }>;
}

/** Tables of `tables` the SQL references as a whole row (`t`, `row_to_json(t)`, `(t)::text`). */
export async function wholeRowReferences(sql: string, tables: ReadonlySet<string>): Promise<string[]> {
  let tree: unknown;
  try {
    tree = await parse(sql);
  } catch {
    return [];
  }
  const names = new Map<string, string>(); // relation name or alias -> table
  const refs: string[] = [];
  const visit = (n: unknown) => {
    if (Array.isArray(n)) return n.forEach(visit);
    if (!n || typeof n !== 'object') return;
    const o = n as Record<string, unknown>;
    const rv = o['RangeVar'] as { relname?: string; alias?: { aliasname?: string } } | undefined;
    if (rv?.relname && tables.has(rv.relname)) {
      names.set(rv.relname, rv.relname);
      if (rv.alias?.aliasname) names.set(rv.alias.aliasname, rv.relname);
    }
    const cr = o['ColumnRef'] as { fields?: Array<Record<string, { sval?: string }>> } | undefined;
    if (cr?.fields?.length === 1 && cr.fields[0]!['String']) refs.push(cr.fields[0]!['String'].sval ?? '');
    for (const v of Object.values(o)) visit(v);
  };
  visit(tree);
  return [...new Set(refs.filter((r) => names.has(r)).map((r) => names.get(r)!))];
}

/**
 * 400 VIEW_DECLARED_COLUMN when the materialized view just created (in `client`'s open transaction)
 * depends on a declared column or on a whole row of a table with declared columns.
 */
export async function checkViewLineage(client: pg.ClientBase, name: string, sql: string, snap: PolicySnapshot): Promise<void> {
  if (snap.tables.size === 0) return;
  const query: Query = (text, values) => client.query(text, [...values, name]);
  const cols = await dependedColumns(query, `v.relnamespace = $1::regnamespace AND v.relname = $2`);
  const hits = cols.filter((c) => snap.tables.get(c.table)?.has(c.column)).map((c) => `${c.table}.${c.column}`);
  for (const t of await wholeRowReferences(sql, new Set(snap.tables.keys()))) hits.push(`${t}.*`);
  if (hits.length) {
    const list = [...new Set(hits)].sort();
    throw badRequest(
      'VIEW_DECLARED_COLUMN',
      `the view reads declared column${list.length > 1 ? 's' : ''} ${list.join(', ')}: a materialized view stores values outside the declared policy, so it may not select, filter or join on a declared column (leave it out, or read it through the rows API, which masks it)`,
      { columns: list },
    );
  }
}

/** 409 COLUMN_USED_BY_VIEW when an existing materialized view depends on `table.column` (or a whole row of `table`). */
export async function checkNoViewUses(db: Database, table: string, column: string): Promise<void> {
  const query: Query = (text, values) => db.adminQuery(text, values);
  const cols = await dependedColumns(query, `v.relnamespace = $1::regnamespace`);
  const views = new Set(cols.filter((c) => c.table === table && c.column === column).map((c) => c.view));
  const { rows } = await db.adminQuery<{ name: string; sql: string }>(`SELECT name, sql FROM strata.views WHERE sql ~* $1`, [`\\m${table}\\M`]);
  for (const v of rows) if ((await wholeRowReferences(v.sql, new Set([table]))).length) views.add(v.name);
  if (views.size) {
    const list = [...views].sort();
    throw conflict('COLUMN_USED_BY_VIEW', `${table}.${column} is read by materialized view${list.length > 1 ? 's' : ''} ${list.join(', ')}: drop ${list.length > 1 ? 'them' : 'it'} (DELETE /v1/admin/views/{name}) before declaring the column, then create ${list.length > 1 ? 'them' : 'it'} again without it`, { views: list });
  }
}
