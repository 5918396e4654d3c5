/**
 * In-process concurrency caps per (resource, tenant): a counter and a FIFO of waiters. Admission
 * under the cap is synchronous (no promise, no timer); a waiter is handed the slot of the one that
 * leaves, so a tenant over its cap waits behind its own work only, never in front of other tenants.
 */
import { AppError } from '../../errors.js';

interface Waiter {
  admit: () => void;
  timer: NodeJS.Timeout;
  done: boolean;
}

interface Slot {
  held: number;
  waiters: Waiter[];
  /** Moving average of how long this tenant's sessions held a slot (ms); 0 until one has left. */
  avgMs: number;
  /** When each slot held through enter() was taken (performance.now(), oldest first). */
  starts: number[];
}

/**
 * How heavy a tenant's work is now: its average hold time, or the age of its oldest running
 * session when that is longer (a new tenant's first slow burst counts before any session ends).
 */
function heaviness(s: Slot, now: number): number {
  const oldest = s.starts[0];
  return oldest === undefined ? s.avgMs : Math.max(s.avgMs, now - oldest);
}

/** Weight of the newest hold time in the moving average (about the last 10 sessions count). */
const AVG_WEIGHT = 0.2;

/** 429 TENANT_CONCURRENCY_LIMIT with Retry-After. */
export function concurrencyLimited(what: string, limit: number, retryAfterS = 1): AppError {
  return new AppError(
    429,
    'TENANT_CONCURRENCY_LIMIT',
    `this tenant already has ${limit} ${what} running (its limit); retry when one has finished`,
    { resource: what, limit },
    { headers: { 'retry-after': String(retryAfterS) } },
  );
}

/** How recently another tenant must have entered a resource for it to count as shared (contended). */
export const CONTENDED_MS = 1000;

interface Recent {
  /** The tenant that entered last, and when a different tenant than the one before it last entered. */
  tenant: string;
  switchedAt: number;
}

/** A limit that may depend on the tenant's average hold time and on whether other tenants use the resource. */
export type LimitFn = (avgMs: number, contended: boolean) => number;

export class Gates {
  private readonly slots = new Map<string, Map<string, Slot>>();
  private readonly recent = new Map<string, Recent>();

  /** Note an entry; true when another tenant entered this resource within CONTENDED_MS. */
  private contended(resource: string, tenantId: string, now: number): boolean {
    const r = this.recent.get(resource);
    if (!r) {
      this.recent.set(resource, { tenant: tenantId, switchedAt: 0 });
      return false;
    }
    if (r.tenant !== tenantId) {
      r.tenant = tenantId;
      r.switchedAt = now;
      return true;
    }
    return now - r.switchedAt < CONTENDED_MS;
  }

  private isContended(resource: string, now: number): boolean {
    const r = this.recent.get(resource);
    return r !== undefined && now - r.switchedAt < CONTENDED_MS;
  }

  private slot(resource: string, tenantId: string): Slot {
    let byTenant = this.slots.get(resource);
    if (!byTenant) this.slots.set(resource, (byTenant = new Map<string, Slot>()));
    let s = byTenant.get(tenantId);
    if (!s) byTenant.set(tenantId, (s = { held: 0, waiters: [], avgMs: 0, starts: [] }));
    return s;
  }

  /** Take a slot now if one is free (true), else false. */
  tryEnter(resource: string, tenantId: string, limit: number): boolean {
    const s = this.slot(resource, tenantId);
    if (s.held >= limit) return false;
    s.held++;
    return true;
  }

  /**
   * Take a slot: `true` at once when one is free, else a promise resolved when one is handed over,
   * rejected with `onTimeout()` after `waitMs` (0: at once).
   */
  enter(resource: string, tenantId: string, limit: number | LimitFn, waitMs: number, onTimeout: () => Error): true | Promise<void> {
    const s = this.slot(resource, tenantId);
    const now = performance.now();
    if (typeof limit === 'function') limit = limit(heaviness(s, now), this.contended(resource, tenantId, now));
    if (s.held < limit) {
      s.held++;
      s.starts.push(now);
      return true;
    }
    if (waitMs <= 0) return Promise.reject(onTimeout());
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        done: false,
        admit: () => {
          w.done = true;
          clearTimeout(w.timer);
          s.starts.push(performance.now());
          resolve();
        },
        timer: setTimeout(() => {
          w.done = true;
          const i = s.waiters.indexOf(w);
          if (i >= 0) s.waiters.splice(i, 1);
          reject(onTimeout());
        }, waitMs),
      };
      s.waiters.push(w);
    });
  }

  /**
   * Give a slot back: handed to the tenant's first waiter, or freed. With `heldMs`, the hold time
   * joins the tenant's moving average; with `limitNow`, a slot is handed on only while the tenant
   * holds fewer than that (its limit may have dropped since the waiter queued: a tenant turned heavy).
   */
  leave(resource: string, tenantId: string, heldMs?: number, limitNow?: LimitFn): void {
    const s = this.slots.get(resource)?.get(tenantId);
    if (!s) return;
    const now = performance.now();
    if (heldMs !== undefined) {
      s.avgMs = s.avgMs === 0 ? heldMs : s.avgMs + AVG_WEIGHT * (heldMs - s.avgMs);
      // drop the start of the session that left: the one nearest to now - heldMs (a handful at most)
      const started = now - heldMs;
      let at = -1;
      for (let i = 0, best = Infinity; i < s.starts.length; i++) {
        const d = Math.abs(s.starts[i]! - started);
        if (d < best) [best, at] = [d, i];
      }
      if (at >= 0) s.starts.splice(at, 1);
    }
    if (limitNow !== undefined && s.held > limitNow(heaviness(s, now), this.isContended(resource, now))) {
      if (s.held > 0) s.held--; // over the lowered limit: the slot is not handed on
      return;
    }
    for (let w = s.waiters.shift(); w; w = s.waiters.shift()) {
      if (w.done) continue;
      w.admit(); // the slot passes on: `held` is unchanged
      return;
    }
    // the entry stays (one small object per tenant seen): no allocation churn on the hot path
    if (s.held > 0) s.held--;
  }

  /** The moving average of a tenant's hold times on a resource, ms (0: none yet). */
  averageMs(resource: string, tenantId: string): number {
    return this.slots.get(resource)?.get(tenantId)?.avgMs ?? 0;
  }

  /** Slots held by a tenant (tests, metrics). */
  held(resource: string, tenantId: string): number {
    return this.slots.get(resource)?.get(tenantId)?.held ?? 0;
  }

  /** Total held per resource (metrics). */
  totals(): Array<{ resource: string; tenants: number; held: number; waiting: number }> {
    return [...this.slots].map(([resource, byTenant]) => {
      let held = 0;
      let waiting = 0;
      for (const s of byTenant.values()) {
        held += s.held;
        waiting += s.waiters.length;
      }
      return { resource, tenants: byTenant.size, held, waiting };
    });
  }
}
