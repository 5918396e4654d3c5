/**
 * Fair shares per tenant: the limits capability's public face. One tenant's burst may use its own
 * share of the service, never the others': a request rate counted across API processes (Redis),
 * caps on the connections it holds from each pool, on its streamed exports and on its running jobs.
 * Limits are per tenant (PATCH /v1/admin/tenants/{id} `limits`), defaults from the configuration,
 * cached per process for LIMITS_CACHE_TTL_MS so the hot path reads a Map, not the database.
 */
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config } from '../../config.js';
import type { Database, PoolKind, TenantGate } from '../../db/database.js';
import { AppError } from '../../errors.js';
import { DbTimeBudgets, dbTimeLimited } from './budget.js';
import { Gates, concurrencyLimited } from './gates.js';
import { JobSlots } from './job-slots.js';
import { RateWindows } from './rate-window.js';
import { defaultLimits, mergeLimits, overridesOf, type LimitOverrides, type TenantLimits } from './settings.js';

export * from './settings.js';
export { concurrencyLimited } from './gates.js';
export { DbTimeBudgets, dbTimeLimited, type BudgetOptions } from './budget.js';
export { JobSlots, type JobSlot } from './job-slots.js';

export interface LimitsDeps {
  db: Database;
  config: Config;
  log: Pick<Logger, 'warn' | 'debug'>;
}

interface CacheEntry {
  limits: TenantLimits;
  at: number;
}

/** 429 RATE_LIMITED, the answer past a tenant's request rate. */
export function rateLimited(limit: number, retryAfterS: number): AppError {
  return new AppError(
    429,
    'RATE_LIMITED',
    `this tenant made more than ${limit} requests this second (its rate limit); retry after ${retryAfterS} s`,
    { limit, window_ms: 1000, retry_after_s: retryAfterS },
    { headers: { 'retry-after': String(retryAfterS) } },
  );
}

/** The window of LIMIT_REQUESTS_PER_SECOND. */
export const RATE_WINDOW_MS = 1000;

export function createLimits(deps: LimitsDeps) {
  const { db, config, log } = deps;
  const shard = db.shardFor(null);
  const defaults = defaultLimits(config, { app: shard.app.options.max, stream: shard.stream.options.max });
  const cache = new Map<string, CacheEntry>();
  const loading = new Map<string, Promise<TenantLimits>>();
  const gates = new Gates();
  const ttl = config.LIMITS_CACHE_TTL_MS;
  const waitMs = config.DB_ACQUIRE_TIMEOUT_MS;
  const windows: RateWindows[] = [];

  function load(tenantId: string): Promise<TenantLimits> {
    const running = loading.get(tenantId);
    if (running) return running;
    const p = db
      .adminQuery<{ limits: unknown }>('SELECT limits FROM strata.tenants WHERE id = $1', [tenantId])
      .then(({ rows }) => {
        const limits = mergeLimits(defaults, rows[0]?.limits);
        cache.set(tenantId, { limits, at: Date.now() });
        return limits;
      })
      .catch((err: unknown) => {
        // the database is briefly unreachable: keep what we had (or the defaults) rather than fail
        log.warn({ err, tenant: tenantId }, 'could not read tenant limits; using the last known or default');
        return cache.get(tenantId)?.limits ?? defaults;
      })
      .finally(() => loading.delete(tenantId));
    loading.set(tenantId, p);
    return p;
  }

  /** A tenant's limits: at once from the cache (refreshed in the background when stale), else loaded. */
  function forTenant(tenantId: string): TenantLimits | Promise<TenantLimits> {
    const hit = cache.get(tenantId);
    if (!hit) return load(tenantId);
    if (Date.now() - hit.at > ttl) void load(tenantId);
    return hit.limits;
  }

  /** Synchronous: the cached limits, or the defaults while they are being read. */
  function cached(tenantId: string): TenantLimits {
    const l = forTenant(tenantId);
    return l instanceof Promise ? defaults : l;
  }

  const kindLimit = (kind: PoolKind, limits: TenantLimits) => (kind === 'stream' ? limits.stream_connections : limits.app_connections);
  const heavyMs = config.LIMIT_HEAVY_MS;
  const heavyConnections = config.LIMIT_HEAVY_CONNECTIONS;
  /**
   * A tenant's connection limit on a pool now: its own, or, while its sessions run long and other
   * tenants use the same pool, the heavy-tenant limit. A tenant alone keeps its whole share.
   */
  const effective = (limit: number, avgMs: number, contended: boolean) => (contended && avgMs > heavyMs ? Math.min(limit, heavyConnections) : limit);
  const budgets = new DbTimeBudgets({ msPerSecond: config.LIMIT_HEAVY_DB_MS_PER_SECOND, heavyMs });
  const budgetMs = config.LIMIT_HEAVY_DB_MS_PER_SECOND;
  const budgetLimited = (retryAfterS: number) => dbTimeLimited(budgetMs, retryAfterS);
  const slotGate: TenantGate = {
    enter(pool, kind, tenantId) {
      const limit = kindLimit(kind, cached(tenantId));
      let applied = limit;
      return gates.enter(
        pool,
        tenantId,
        (avgMs, contended) => (applied = effective(limit, avgMs, contended)),
        waitMs,
        () => concurrencyLimited(applied < limit ? `${kind} connections while its queries run long (a heavy tenant)` : `${kind} connections`, applied),
      );
    },
    leave: (pool, kind, tenantId, heldMs) =>
      gates.leave(pool, tenantId, heldMs, (avgMs, contended) => effective(kindLimit(kind, cached(tenantId)), avgMs, contended)),
  };
  /**
   * A session takes its pool slot first, then passes the tenant's database-time budget (budget.ts:
   * a heavy tenant while a light one is active), so the budget sees only the time sessions really
   * run (a light tenant queued behind its own connection cap does not look heavy). A slot whose
   * budget wait ends in 429 is given back. Light tenants' fast path: both answer `true`
   * synchronously, nothing is allocated.
   */
  const budgetAfterSlot = (pool: string, kind: PoolKind, tenantId: string): true | Promise<void> => {
    const slotAt = performance.now();
    const admitted = budgets.enter(pool, tenantId, slotAt, waitMs, budgetLimited);
    if (admitted === true) return true;
    return admitted.catch((err: unknown) => {
      slotGate.leave(pool, kind, tenantId, performance.now() - slotAt);
      throw err;
    });
  };
  const poolGate: TenantGate = !budgets.enabled
    ? slotGate
    : {
        enter(pool, kind, tenantId) {
          const slot = slotGate.enter(pool, kind, tenantId);
          if (slot === true) return budgetAfterSlot(pool, kind, tenantId);
          return slot.then(() => {
            const budget = budgetAfterSlot(pool, kind, tenantId);
            return budget === true ? undefined : budget;
          });
        },
        leave(pool, kind, tenantId, heldMs) {
          slotGate.leave(pool, kind, tenantId, heldMs);
          budgets.leave(pool, tenantId, heldMs, performance.now());
        },
      };

  const service = {
    enabled: config.LIMITS_ENABLED,
    defaults,
    forTenant,
    cached,
    /** Drop a tenant's cached limits (after PATCH): the next request reads them again. */
    forget(tenantId: string): void {
      cache.delete(tenantId);
    },
    /** The gate the database layer asks before a tenant session takes a connection. */
    poolGate,
    /**
     * A streamed-export slot: the release function, or 429 TENANT_CONCURRENCY_LIMIT at once when
     * the tenant already runs its limit of exports in this process.
     */
    exportSlot(tenantId: string | null): () => void {
      if (!config.LIMITS_ENABLED || tenantId === null) return () => undefined;
      const limit = cached(tenantId).exports;
      if (!gates.tryEnter('exports', tenantId, limit)) throw concurrencyLimited('streamed exports', limit, 2);
      let done = false;
      return () => {
        if (done) return;
        done = true;
        gates.leave('exports', tenantId);
      };
    },
    /** Held slots (tests and metrics). */
    held: (resource: string, tenantId: string) => gates.held(resource, tenantId),
    /** Moving average of a tenant's connection hold time on a pool, ms (tests and metrics). */
    averageMs: (resource: string, tenantId: string) => gates.averageMs(resource, tenantId),
    totals: () => gates.totals(),
    /** A tenant's database-time budget on a pool: heaviness, budget left, running sessions, waiters (tests and metrics). */
    budget: (pool: string, tenantId: string) => budgets.inspect(pool, tenantId),
    /** Effective limits and the tenant's own overrides, from the stored jsonb. */
    view(stored: unknown): { limits: TenantLimits; overrides: LimitOverrides } {
      return { limits: mergeLimits(defaults, stored), overrides: overridesOf(stored) };
    },
    /**
     * The per-tenant request counters (see rate-window.ts), counted in windows of RATE_WINDOW_MS
     * shared with the other API processes through Redis. Closed with close().
     */
    rateWindows(redis: Redis): RateWindows {
      const w = new RateWindows({
        redis,
        prefix: config.RATE_LIMIT_PREFIX,
        syncMs: config.RATE_LIMIT_SYNC_MS,
        timeoutMs: config.RATE_LIMIT_REDIS_TIMEOUT_MS,
        onRedisError: throttled((err) => log.warn({ err }, 'rate limit counters: Redis unavailable; counting per process (fail open)')),
      });
      windows.push(w);
      return w;
    },
    /** Running-job slots across workers (Redis). */
    jobSlots(redis: Redis, prefix = config.RATE_LIMIT_PREFIX): JobSlots {
      return new JobSlots({ redis, prefix });
    },
    close(): void {
      for (const w of windows) w.close();
    },
  };
  return service;
}

export type LimitsService = ReturnType<typeof createLimits>;

/** Call `fn` at most once per 10 s. */
function throttled(fn: (err: unknown) => void): (err: unknown) => void {
  let last = 0;
  return (err) => {
    if (Date.now() - last < 10_000) return;
    last = Date.now();
    fn(err);
  };
}
