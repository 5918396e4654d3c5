/**
 * The bookkeeping table `strata.schema_migrations`: which migrations are applied, with the
 * checksum of their files at the time.
 */
import type pg from 'pg';

/** Serialises concurrent first-time creation of the table (CREATE ... IF NOT EXISTS can race). */
const BOOKKEEPING_LOCK_KEY = ((0x53545241n << 32n) | 0x424f4f4bn).toString();

export interface AppliedRow {
  id: string;
  checksum: string;
  appliedAt: Date;
}

/**
 * Creates schema `strata` and the table if missing (idempotent). With `inTransaction` the caller
 * already opened a transaction (a dry run), so the creation is rolled back with it.
 */
export async function ensureBookkeeping(client: pg.ClientBase, inTransaction = false): Promise<void> {
  const { rows } = await client.query<{ t: string | null }>(
    `SELECT to_regclass('strata.schema_migrations')::text AS t`,
  );
  if (rows[0]?.t) return;
  if (!inTransaction) await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1::bigint)', [BOOKKEEPING_LOCK_KEY]);
    await client.query('CREATE SCHEMA IF NOT EXISTS strata');
    await client.query(`CREATE TABLE IF NOT EXISTS strata.schema_migrations (
      id          text PRIMARY KEY,
      checksum    text NOT NULL,
      applied_at  timestamptz NOT NULL DEFAULT now(),
      duration_ms int,
      applied_by  text DEFAULT current_user
    )`);
    if (!inTransaction) await client.query('COMMIT');
  } catch (e) {
    if (!inTransaction) await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}

/** Applied migrations, oldest first. */
export async function readApplied(client: pg.ClientBase): Promise<AppliedRow[]> {
  const { rows } = await client.query<{ id: string; checksum: string; applied_at: Date }>(
    'SELECT id, checksum, applied_at FROM strata.schema_migrations ORDER BY applied_at, id',
  );
  return rows.map((r) => ({ id: r.id, checksum: r.checksum, appliedAt: r.applied_at }));
}

export async function recordUp(
  client: pg.ClientBase,
  id: string,
  checksum: string,
  durationMs: number,
): Promise<void> {
  await client.query('INSERT INTO strata.schema_migrations (id, checksum, duration_ms) VALUES ($1, $2, $3)', [
    id,
    checksum,
    Math.round(durationMs),
  ]);
}

export async function recordDown(client: pg.ClientBase, id: string): Promise<void> {
  await client.query('DELETE FROM strata.schema_migrations WHERE id = $1', [id]);
}
