/** Row reads through the tenant session; identifiers only from the schema registry. */
import pg from 'pg';
import type { Database } from '../db/database.js';
import type { SessionContext } from '../db/session.js';
import { badRequest, notFound } from '../errors.js';
import type { TableInfo } from './schema-registry.js';

function singlePk(t: TableInfo): string {
  const [pk, ...rest] = t.primaryKey;
  if (!pk || rest.length) throw badRequest('NO_SINGLE_PRIMARY_KEY', `table ${t.name} has no single-column primary key`);
  return pg.escapeIdentifier(pk);
}

const selectList = (t: TableInfo) => t.columns.map((c) => pg.escapeIdentifier(c.name)).join(', ');

/** One row by primary key: one round trip (BEGIN, tenant settings, SELECT, COMMIT pipelined). */
export async function getRow(db: Database, ctx: SessionContext, t: TableInfo, pk: string): Promise<Record<string, unknown>> {
  const { rows } = await db.tenantQuery(ctx, `SELECT ${selectList(t)} FROM ${t.qualified} WHERE ${singlePk(t)} = $1`, [pk], { readOnly: true });
  const row = rows[0];
  if (!row) throw notFound('ROW_NOT_FOUND', `no row ${JSON.stringify(pk)} in ${t.name}`);
  return row;
}

/** A page ordered by primary key, with an opaque keyset cursor (no OFFSET). */
export async function listRows(
  db: Database,
  ctx: SessionContext,
  t: TableInfo,
  q: { limit: number; cursor?: string },
): Promise<{ data: Record<string, unknown>[]; next_cursor: string | null }> {
  const pk = singlePk(t);
  let after: string | undefined;
  if (q.cursor !== undefined) {
    try {
      const decoded = JSON.parse(Buffer.from(q.cursor, 'base64url').toString('utf8')) as unknown;
      if (!Array.isArray(decoded) || decoded[0] !== t.name || typeof decoded[1] !== 'string') throw new Error('shape');
      after = decoded[1];
    } catch {
      throw badRequest('INVALID_CURSOR', 'the cursor is malformed or belongs to another query');
    }
  }
  const values: unknown[] = [q.limit + 1];
  const where = after === undefined ? '' : `WHERE ${pk} > $2`;
  if (after !== undefined) values.push(after);
  const { rows } = await db.tenantQuery(ctx, `SELECT ${selectList(t)} FROM ${t.qualified} ${where} ORDER BY ${pk} LIMIT $1`, values, { readOnly: true });
  const more = rows.length > q.limit;
  const data = more ? rows.slice(0, q.limit) : rows;
  const last = data[data.length - 1];
  const pkName = t.primaryKey[0] as string;
  return {
    data,
    next_cursor: more && last ? Buffer.from(JSON.stringify([t.name, String(last[pkName])])).toString('base64url') : null,
  };
}

/**
 * Insert one row. Columns are checked against the registry (unknown -> 400 naming it); `tenant_id`
 * defaults from the session, and a value naming another tenant is refused by PostgreSQL's RLS
 * WITH CHECK (answered 403), never rewritten.
 */
export async function insertRow(db: Database, ctx: SessionContext, t: TableInfo, body: Record<string, unknown>): Promise<Record<string, unknown>> {
  const known = new Set(t.columns.map((c) => c.name));
  const names = Object.keys(body);
  for (const n of names) {
    if (!known.has(n)) throw badRequest('UNKNOWN_COLUMN', `column ${JSON.stringify(n)} does not exist in ${t.name}`, { column: n });
  }
  const cols = names.map((n) => pg.escapeIdentifier(n)).join(', ');
  const params = names.map((_, i) => `$${i + 1}`).join(', ');
  const values = names.map((n) => {
    const v = body[n];
    return v !== null && typeof v === 'object' ? JSON.stringify(v) : v;
  });
  const sql = names.length
    ? `INSERT INTO ${t.qualified} (${cols}) VALUES (${params}) RETURNING ${selectList(t)}`
    : `INSERT INTO ${t.qualified} DEFAULT VALUES RETURNING ${selectList(t)}`;
  const { rows } = await db.tenantQuery(ctx, sql, values);
  return rows[0] as Record<string, unknown>;
}
