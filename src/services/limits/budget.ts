/**
 * Database-time budgets of heavy tenants (fair shares on a machine whose CPUs, not its pool slots,
 * are what tenants compete for). Every tenant session's connection-hold time is metered per tenant
 * and pool (the tenant-session pool and the streaming pool of each shard are kinds of work: a
 * tenant's long export must not ration its own short reads). A tenant is *heavy* on a pool while
 * the sessions its database time goes to there are long: the time-weighted mean hold time (sum of
 * held^2 / sum of held, both decaying with a one-second time constant) or the mean age of its
 * running sessions is above LIMIT_HEAVY_MS. The weighting by time makes the measure immune to
 * dilution: mixing many 1 ms reads into 500 ms queries leaves the mean near 500 ms, because almost
 * all of the tenant's database time is spent in the long ones (a new tenant counts as light until
 * its first sessions say otherwise). While a *light* tenant (a session that was not heavy, on any
 * pool) has started within the last second, a heavy tenant's sessions on that pool may hold
 * connections for at most `msPerSecond` ms per second in total (a token bucket, at most one
 * second's worth saved up, at most a minute's worth owed; charged only while a light tenant is
 * active): a session starts only while the bucket, less what the tenant's running sessions there
 * are expected to use, is positive; otherwise it waits in its tenant's queue (never in front of
 * another tenant) up to the acquire timeout, then 429. Heavy tenants among themselves, or a tenant
 * alone, are not rationed (nobody's short requests are waiting for the CPUs they use).
 *
 * Hot path (a light tenant): one clock read at entry, two Map lookups, a few comparisons, and at
 * leave one Math.exp and a handful of multiplies; no allocation, no promise.
 */
import { AppError } from '../../errors.js';

/** Time constant of the decaying sums behind a tenant's heaviness (about the last second counts). */
export const HEAVINESS_TAU_MS = 1000;
/** How recently a light tenant must have started a session for heavy tenants to be rationed. */
export const LIGHT_ACTIVE_MS = 1000;
/** A bucket holds at most this many seconds of budget... */
const BUCKET_SECONDS = 1;
/** ...and owes at most this many (a session longer than that is not charged in full). */
const DEBT_SECONDS = 60;

interface Waiter {
  admit: () => void;
  timer: NodeJS.Timeout;
  done: boolean;
}

interface TenantTime {
  /** Decaying sum of hold times (ms) and of their squares, as of `decayedAt`. */
  w1: number;
  w2: number;
  decayedAt: number;
  /** Budget left (ms of connection time; negative: owed), as of `refilledAt`. */
  tokens: number;
  refilledAt: number;
  /** Sessions admitted and not yet left, and the sum of their start times (their mean age). */
  running: number;
  sumStarts: number;
  waiters: Waiter[];
  timer: NodeJS.Timeout | undefined;
}

export interface BudgetOptions {
  /** Connection time per second a heavy tenant may use while a light tenant is active; 0: no budget. */
  msPerSecond: number;
  /** Above this time-weighted mean session length (ms) a tenant is heavy. */
  heavyMs: number;
  /** The clock of the re-checks on timers (default performance.now); enter/leave are given `now`. */
  clock?: () => number;
}

/** 429 TENANT_CONCURRENCY_LIMIT for a heavy tenant past its database-time budget, with Retry-After. */
export function dbTimeLimited(msPerSecond: number, retryAfterS: number): AppError {
  return new AppError(
    429,
    'TENANT_CONCURRENCY_LIMIT',
    `this tenant's queries run long and it has used its share of database time while other tenants are active (${msPerSecond} ms of connection time per second); retry after ${retryAfterS} s`,
    { resource: 'database time', limit: msPerSecond, retry_after_s: retryAfterS },
    { headers: { 'retry-after': String(retryAfterS) } },
  );
}

export class DbTimeBudgets {
  /** Per pool, per tenant (two Map lookups, no key built per session). */
  private readonly pools = new Map<string, Map<string, TenantTime>>();
  /** The two light tenants that started a session last (distinct), and when: no allocation per entry. */
  private light1: string | undefined;
  private light1At = -Infinity;
  private light2: string | undefined;
  private light2At = -Infinity;
  private readonly rate: number;
  private readonly cap: number;
  private readonly floor: number;
  private readonly clock: () => number;

  constructor(private readonly o: BudgetOptions) {
    this.rate = o.msPerSecond / 1000;
    this.cap = o.msPerSecond * BUCKET_SECONDS;
    this.floor = -o.msPerSecond * DEBT_SECONDS;
    this.clock = o.clock ?? (() => performance.now());
  }

  get enabled(): boolean {
    return this.o.msPerSecond > 0;
  }

  private state(pool: string, tenantId: string, now: number): TenantTime {
    let byTenant = this.pools.get(pool);
    if (!byTenant) this.pools.set(pool, (byTenant = new Map<string, TenantTime>()));
    let s = byTenant.get(tenantId);
    if (!s) {
      s = { w1: 0, w2: 0, decayedAt: now, tokens: this.cap, refilledAt: now, running: 0, sumStarts: 0, waiters: [], timer: undefined };
      byTenant.set(tenantId, s);
    }
    return s;
  }

  /** The time-weighted mean hold time, or the mean age of the running sessions when longer (ms). */
  private heaviness(s: TenantTime, now: number): number {
    const mean = s.w1 > 0 ? s.w2 / s.w1 : 0;
    if (s.running === 0) return mean;
    const age = now - s.sumStarts / s.running;
    return age > mean ? age : mean;
  }

  /** Whether a light tenant other than `tenantId` started a session within LIGHT_ACTIVE_MS. */
  private lightOtherActive(tenantId: string, now: number): boolean {
    return (this.light1 !== tenantId && now - this.light1At < LIGHT_ACTIVE_MS) || (this.light2 !== tenantId && now - this.light2At < LIGHT_ACTIVE_MS);
  }

  private noteLight(tenantId: string, now: number): void {
    if (this.light1 === tenantId) {
      this.light1At = now;
      return;
    }
    this.light2 = this.light1;
    this.light2At = this.light1At;
    this.light1 = tenantId;
    this.light1At = now;
  }

  private refill(s: TenantTime, now: number): void {
    const t = s.tokens + (now - s.refilledAt) * this.rate;
    s.tokens = t > this.cap ? this.cap : t;
    s.refilledAt = now;
  }

  /**
   * Budget left once the running sessions are done: each running session is expected to use at
   * least the tenant's heaviness (its typical session), or what it already used.
   */
  private available(s: TenantTime, h: number, now: number): number {
    if (s.running === 0) return s.tokens;
    const used = s.running * now - s.sumStarts;
    const expected = s.running * h;
    return s.tokens - (used > expected ? used : expected);
  }

  /** Whether the tenant must wait now (heavy, a light tenant active, over its budget). */
  private blocked(tenantId: string, s: TenantTime, now: number): boolean {
    const h = this.heaviness(s, now);
    if (h <= this.o.heavyMs) return false;
    if (!this.lightOtherActive(tenantId, now)) return false;
    this.refill(s, now);
    return this.available(s, h, now) <= 0;
  }

  private start(s: TenantTime, now: number): void {
    s.running++;
    s.sumStarts += now;
  }

  /**
   * Admit a session of `tenantId` on `pool` (true, at once) or queue it: the promise resolves when the budget
   * allows, or rejects with `onTimeout(retryAfterS)` after `waitMs`.
   */
  enter(pool: string, tenantId: string, now: number, waitMs: number, onTimeout: (retryAfterS: number) => Error): true | Promise<void> {
    const s = this.state(pool, tenantId, now);
    if (s.waiters.length === 0) {
      const heavy = this.heaviness(s, now) > this.o.heavyMs;
      if (!heavy) {
        this.noteLight(tenantId, now);
        this.start(s, now);
        return true;
      }
      if (!this.blocked(tenantId, s, now)) {
        this.start(s, now);
        return true;
      }
    }
    if (waitMs <= 0) return Promise.reject(onTimeout(this.retryAfterS(s, now)));
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        done: false,
        admit: () => {
          w.done = true;
          clearTimeout(w.timer);
          resolve();
        },
        timer: setTimeout(() => {
          w.done = true;
          const i = s.waiters.indexOf(w);
          if (i >= 0) s.waiters.splice(i, 1);
          reject(onTimeout(this.retryAfterS(s, this.clock())));
        }, waitMs),
      };
      s.waiters.push(w);
      this.wakeLater(tenantId, s);
    });
  }

  /** A session of `tenantId` on `pool` admitted by enter() has ended after holding its connection `heldMs`. */
  leave(pool: string, tenantId: string, heldMs: number, now: number): void {
    const s = this.pools.get(pool)?.get(tenantId);
    if (!s) return;
    if (s.running > 0) s.running--;
    s.sumStarts = s.running === 0 ? 0 : s.sumStarts - (now - heldMs);
    const d = Math.exp((s.decayedAt - now) / HEAVINESS_TAU_MS);
    s.w1 = s.w1 * d + heldMs;
    s.w2 = s.w2 * d + heldMs * heldMs;
    s.decayedAt = now;
    // metered only while rationing could apply: a tenant alone carries no debt into contention
    if (this.lightOtherActive(tenantId, now)) {
      this.refill(s, now);
      s.tokens -= heldMs;
      if (s.tokens < this.floor) s.tokens = this.floor;
    }
    if (s.waiters.length > 0) this.pump(tenantId, s, now);
  }

  /** Admit the tenant's waiters while its budget allows, in order. */
  private pump(tenantId: string, s: TenantTime, now: number): void {
    while (s.waiters.length > 0) {
      const w = s.waiters[0]!;
      if (w.done) {
        s.waiters.shift();
        continue;
      }
      if (this.blocked(tenantId, s, now)) break;
      s.waiters.shift();
      this.start(s, now);
      w.admit();
    }
    if (s.waiters.length > 0) this.wakeLater(tenantId, s);
  }

  /**
   * With waiters and nothing running (no leave() will come to re-check), look again once the
   * bucket has refilled past zero, or after LIGHT_ACTIVE_MS (the light tenant may have gone).
   */
  private wakeLater(tenantId: string, s: TenantTime): void {
    if (s.timer !== undefined || s.running > 0) return;
    const refillIn = this.rate > 0 ? Math.ceil(-s.tokens / this.rate) + 1 : LIGHT_ACTIVE_MS;
    const delay = Math.max(1, Math.min(refillIn, LIGHT_ACTIVE_MS));
    s.timer = setTimeout(() => {
      s.timer = undefined;
      this.pump(tenantId, s, this.clock());
    }, delay);
    s.timer.unref?.();
  }

  /** Seconds until the tenant's budget is positive again, at least 1 (Retry-After). */
  private retryAfterS(s: TenantTime, now: number): number {
    if (this.rate <= 0) return 1;
    this.refill(s, now);
    const owed = -this.available(s, this.heaviness(s, now), now);
    return Math.max(1, Math.ceil(owed / this.rate / 1000));
  }

  /** A tenant's state (tests and metrics): heaviness (ms), budget left (ms), running sessions, waiters. */
  inspect(pool: string, tenantId: string): { heavinessMs: number; tokensMs: number; running: number; waiting: number } | undefined {
    const s = this.pools.get(pool)?.get(tenantId);
    if (!s) return undefined;
    const now = this.clock();
    return { heavinessMs: this.heaviness(s, now), tokensMs: s.tokens, running: s.running, waiting: s.waiters.filter((w) => !w.done).length };
  }
}
