/**
 * Idempotency keys (Stripe's scheme): a write sent with `Idempotency-Key` runs once per key and
 * tenant; a retry with the same key and the same request gets the first answer again (same status
 * and body), the same key with a different request is refused, and a retry while the first is still
 * running is told so. Records live IDEMPOTENCY_TTL_S in strata.idempotency_keys (PostgreSQL: a hung
 * Redis must not stop, or silently un-protect, writes; and the record sits next to the data).
 */
import { createHash } from 'node:crypto';
import type { Database } from '../../db/database.js';

export type IdempotencyBegin =
  | { kind: 'new' }
  | { kind: 'replay'; status: number; headers: Record<string, string>; body: string }
  | { kind: 'mismatch' }
  | { kind: 'in_progress' };

/** A well-formed key: 1 to 255 visible ASCII characters (a UUID v4 is the usual choice). */
export const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

/** What identifies "the same request": method, path with query, and body. */
export function requestFingerprint(method: string, url: string, body: unknown): string {
  return createHash('sha256')
    .update(`${method} ${url}\n`)
    .update(body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body))
    .digest('hex');
}

export function createIdempotencyStore(deps: { db: Database; ttlS: number; abandonAfterMs: number }) {
  const { db } = deps;
  return {
    /** Claim `key` for this request, or say what happened to it before. */
    async begin(tenant: string, key: string, fingerprint: string): Promise<IdempotencyBegin> {
      // A record past its expiry, or left running by a process that died, is taken over.
      const claimed = await db.adminQuery(
        `INSERT INTO strata.idempotency_keys AS k (tenant_id, key, fingerprint, state, expires_at)
         VALUES ($1, $2, $3, 'running', now() + make_interval(secs => $4))
         ON CONFLICT (tenant_id, key) DO UPDATE
            SET fingerprint = EXCLUDED.fingerprint, state = 'running', status = NULL, headers = NULL, body = NULL,
                created_at = now(), updated_at = now(), expires_at = EXCLUDED.expires_at
          WHERE k.expires_at < now() OR (k.state = 'running' AND k.updated_at < now() - make_interval(secs => $5::double precision / 1000))
         RETURNING 1`,
        [tenant, key, fingerprint, deps.ttlS, deps.abandonAfterMs],
      );
      if (claimed.rowCount) return { kind: 'new' };
      const { rows } = await db.adminQuery<{ fingerprint: string; state: string; status: number | null; headers: Record<string, string> | null; body: string | null }>(
        'SELECT fingerprint, state, status, headers, body FROM strata.idempotency_keys WHERE tenant_id = $1 AND key = $2',
        [tenant, key],
      );
      const r = rows[0];
      if (!r) return this.begin(tenant, key, fingerprint); // removed in between: claim again
      if (r.fingerprint !== fingerprint) return { kind: 'mismatch' };
      if (r.state !== 'done' || r.status === null) return { kind: 'in_progress' };
      return { kind: 'replay', status: r.status, headers: r.headers ?? {}, body: r.body ?? '' };
    },

    /** Store the first answer. */
    async finish(tenant: string, key: string, status: number, headers: Record<string, string>, body: string): Promise<void> {
      await db.adminQuery(
        `UPDATE strata.idempotency_keys SET state = 'done', status = $3, headers = $4, body = $5, updated_at = now()
          WHERE tenant_id = $1 AND key = $2 AND state = 'running'`,
        [tenant, key, status, JSON.stringify(headers), body],
      );
    },

    /** Forget a key whose request did not complete (5xx, dropped): a retry runs it afresh. */
    async release(tenant: string, key: string): Promise<void> {
      await db.adminQuery(`DELETE FROM strata.idempotency_keys WHERE tenant_id = $1 AND key = $2 AND state = 'running'`, [tenant, key]);
    },
  };
}

export type IdempotencyStore = ReturnType<typeof createIdempotencyStore>;
