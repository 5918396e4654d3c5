/**
 * One runner at a time: a session-level advisory lock held on one dedicated connection for the
 * whole run. Session locks die with their connection, so a crashed runner never leaves a lock
 * behind (unlike a lock-table row). Advisory locks are per database.
 */
import type pg from 'pg';
import { MigrationError } from './types.js';

/** 'STRA' 'MIGR' as one bigint; fixed so every Strata runner contends on the same key. */
export const MIGRATION_LOCK_KEY = ((0x53545241n << 32n) | 0x4d494752n).toString();

const RETRY_MS = 100;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** pid of the session holding the runner lock, for the LOCK_TIMEOUT message. */
async function lockHolder(client: pg.ClientBase): Promise<number | null> {
  const key = BigInt(MIGRATION_LOCK_KEY);
  const { rows } = await client.query<{ pid: number }>(
    `SELECT pid FROM pg_locks
      WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1
      LIMIT 1`,
    [(key >> 32n).toString(), (key & 0xffffffffn).toString()],
  );
  return rows[0]?.pid ?? null;
}

/**
 * Runs `fn` on a dedicated client holding the runner lock; retries `pg_try_advisory_lock` until
 * `timeoutMs`, then throws MigrationError LOCK_TIMEOUT. The lock and the client are always released.
 */
export async function withMigrationLock<T>(
  pool: pg.Pool,
  timeoutMs: number,
  dir: string,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  // A connection lost between queries emits 'error' on the checked-out client; without a listener
  // that would crash the process. The next query rejects anyway, and the client is destroyed below.
  const onError = (e: Error) => {
    broken = e;
  };
  client.on('error', onError);
  try {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { rows } = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1::bigint) AS ok', [
        MIGRATION_LOCK_KEY,
      ]);
      if (rows[0]?.ok) break;
      const left = deadline - Date.now();
      if (left <= 0) {
        const pid = await lockHolder(client);
        throw new MigrationError(
          'LOCK_TIMEOUT',
          `${dir}: another migration runner${pid === null ? '' : ` (backend pid ${pid})`} held the lock for more than ${timeoutMs} ms`,
          dir,
        );
      }
      await sleep(Math.min(RETRY_MS, left));
    }
    try {
      return await fn(client);
    } finally {
      try {
        await client.query('SELECT pg_advisory_unlock($1::bigint)', [MIGRATION_LOCK_KEY]);
      } catch (e) {
        // The connection is unusable; destroying it below releases the lock server-side.
        broken = e instanceof Error ? e : new Error(String(e));
      }
    }
  } finally {
    client.off('error', onError);
    client.release(broken);
  }
}
