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
}

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

export class Gates {
  private readonly slots = new Map<string, Map<string, Slot>>();

  private slot(resource: string, tenantId: string): Slot {
    let byTenant = this.slots.get(resource);
    if (!byTenant) this.slots.set(resource, (byTenant = new Map<string, Slot>()));
    let s = byTenant.get(tenantId);
    if (!s) byTenant.set(tenantId, (s = { held: 0, waiters: [] }));
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
  enter(resource: string, tenantId: string, limit: number, waitMs: number, onTimeout: () => Error): true | Promise<void> {
    const s = this.slot(resource, tenantId);
    if (s.held < limit) {
      s.held++;
      return true;
    }
    if (waitMs <= 0) return Promise.reject(onTimeout());
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
          reject(onTimeout());
        }, waitMs),
      };
      s.waiters.push(w);
    });
  }

  /** Give a slot back: handed to the tenant's first waiter, or freed. */
  leave(resource: string, tenantId: string): void {
    const s = this.slots.get(resource)?.get(tenantId);
    if (!s) return;
    for (let w = s.waiters.shift(); w; w = s.waiters.shift()) {
      if (w.done) continue;
      w.admit(); // the slot passes on: `held` is unchanged
      return;
    }
    // the entry stays (one small object per tenant seen): no allocation churn on the hot path
    if (s.held > 0) s.held--;
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
