/**
 * Maintenance mode: a flag in Redis, per database, set by an in-place restore for its duration. The
 * API's write routes check it (src/plugins/maintenance.ts) and answer 503 MAINTENANCE_IN_PROGRESS.
 * The flag has a TTL that the restore keeps refreshing, so a restore that dies does not leave the
 * service read-only for ever (an in-place restore touches the live database only in its final swap).
 */
import type { Redis } from 'ioredis';

// Not `strata:maintenance:*`: that is the BullMQ namespace of the queue named maintenance.
export const maintenanceKey = (database: string) => `strata:maintenance-mode:${database}`;
/** Lifetime of the flag without a refresh. */
export const MAINTENANCE_TTL_S = 600;
/** How long the API may cache the flag; a restore waits longer than this before it starts. */
export const MAINTENANCE_CACHE_MS = 250;

export interface MaintenanceState {
  reason: string;
  job_id: string | null;
  since: string;
}

export async function enterMaintenance(redis: Redis, database: string, state: MaintenanceState): Promise<void> {
  await redis.set(maintenanceKey(database), JSON.stringify(state), 'EX', MAINTENANCE_TTL_S);
}

export async function refreshMaintenance(redis: Redis, database: string): Promise<void> {
  await redis.expire(maintenanceKey(database), MAINTENANCE_TTL_S);
}

export async function leaveMaintenance(redis: Redis, database: string): Promise<void> {
  await redis.del(maintenanceKey(database));
}

export interface MaintenanceReaderOptions {
  /** The longest a caller waits for the flag (MAINTENANCE_CHECK_TIMEOUT_MS). */
  timeoutMs?: number;
  /** How long the last value read is trusted when Redis cannot answer (MAINTENANCE_STALE_MS). */
  staleMs?: number;
}

/**
 * A cached, time-bounded reader of the flag for the request hook: at most one Redis read per
 * MAINTENANCE_CACHE_MS, and no caller waits longer than `timeoutMs`. It never throws.
 *
 * When Redis does not answer in time (hung, partitioned, down), the last value read is used while it
 * is younger than `staleMs` (a restore that was running is still taken as running: fail closed for
 * that window); with nothing known, or only an older value, the flag is taken as absent (fail open:
 * a Redis outage must not stop writes, and an in-place restore cannot start or run without Redis).
 */
export function maintenanceReader(redis: Redis, database: string, opts: MaintenanceReaderOptions = {}) {
  const timeoutMs = opts.timeoutMs ?? 250;
  const staleMs = opts.staleMs ?? 60_000;
  let cached: { at: number; state: MaintenanceState | null } | undefined;
  let inflight: Promise<MaintenanceState | null> | undefined;
  const fallback = () => (cached && Date.now() - cached.at < staleMs ? cached.state : null);
  return async function current(): Promise<MaintenanceState | null> {
    if (cached && Date.now() - cached.at < MAINTENANCE_CACHE_MS) return cached.state;
    inflight ??= redis
      .get(maintenanceKey(database))
      .then((raw) => (raw ? (JSON.parse(raw) as MaintenanceState) : null))
      .then((state) => {
        cached = { at: Date.now(), state };
        return state;
      })
      .finally(() => {
        inflight = undefined;
      });
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    try {
      const r = await Promise.race([inflight, timedOut]);
      return r === 'timeout' ? fallback() : r;
    } catch {
      return fallback();
    } finally {
      clearTimeout(timer);
    }
  };
}
