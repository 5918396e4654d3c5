/**
 * Request counters per tenant in fixed windows, shared by every API process through Redis without a
 * Redis round trip per request. Each process counts locally and adds its counts to the window's
 * Redis counter every RATE_LIMIT_SYNC_MS (INCRBY answers the total of every process); a request is
 * judged on `last known total + local count since`. The first request of a tenant in a window sends
 * its count at once (in the background), so a process learns within one Redis round trip what the
 * others already served. No request ever waits for Redis: Redis slow, hanging or down, the limiter
 * fails open on the local counts (each process then enforces the limit alone); an add that Redis
 * does not answer within RATE_LIMIT_REDIS_TIMEOUT_MS is counted locally instead.
 *
 * Counting is synchronous and allocates nothing past a tenant's first request of a window: it runs
 * on every request (src/plugins/limits.ts).
 */
import type { Redis } from 'ioredis';

interface Counter {
  window: number;
  /** Total of every process as Redis last answered it (including what we had added then). */
  known: number;
  /** Counted here and not yet added to Redis. */
  pending: number;
  /** Counts being added right now (in flight to Redis). */
  flushing: number;
}

export interface RateWindowOptions {
  redis: Redis;
  prefix: string;
  syncMs: number;
  timeoutMs: number;
  onRedisError?: (err: unknown) => void;
}

/**
 * KEYS: the counters; ARGV[1]: their time to live (ms); ARGV[1 + i]: what to add to KEYS[i].
 * Answers the totals, in order.
 */
const ADD_SCRIPT = `local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('INCRBY', KEYS[i], ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
return out`;

export class RateWindows {
  private readonly counters = new Map<string, Counter>();
  private timer: NodeJS.Timeout | undefined;
  /** A flush asked for at once (a tenant's first request of a window), coalesced per event-loop turn. */
  private immediate: NodeJS.Immediate | undefined;
  private flushing = false;
  private closed = false;

  constructor(private readonly o: RateWindowOptions) {}

  private redisKey(key: string, windowMs: number, window: number): string {
    return `${this.o.prefix}:${windowMs}:${key}:${window}`;
  }

  /**
   * Count one request of `key` at `now` (Date.now()); answers, synchronously and without allocating,
   * the count of the window so far, all processes. The window ends at the next multiple of windowMs.
   */
  hit(key: string, windowMs: number, now: number): number {
    const window = Math.floor(now / windowMs);
    const c = this.counters.get(key);
    if (c === undefined || c.window !== window) {
      this.counters.set(key, { window, known: 0, pending: 1, flushing: 0 });
      // learn what the other processes counted in this window soon, without holding the request:
      // every tenant starting a window in this turn of the event loop shares one Redis round trip
      this.flushSoon(windowMs);
      return 1;
    }
    c.pending++;
    this.schedule(windowMs);
    return c.known + c.pending + c.flushing;
  }

  private flushSoon(windowMs: number): void {
    if (this.immediate || this.closed) return;
    this.immediate = setImmediate(() => {
      this.immediate = undefined;
      void this.flushAll(windowMs);
    });
  }

  private schedule(windowMs: number): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flushAll(windowMs);
    }, this.o.syncMs);
    this.timer.unref();
  }

  /**
   * Add every pending count to Redis in one command (a script running INCRBY + PEXPIRE per counter
   * and answering the totals): one round trip and one command per sync interval, however many
   * tenants are active. On failure or timeout the counts stay local (fail open).
   */
  private async flushAll(windowMs: number): Promise<void> {
    if (this.flushing) return this.schedule(windowMs); // one batch in flight at a time
    const now = Math.floor(Date.now() / windowMs);
    const batch: Array<[Counter, number]> = [];
    const keys: string[] = [];
    const counts: number[] = [];
    for (const [key, c] of this.counters) {
      if (c.window < now - 1) {
        this.counters.delete(key); // a window long gone: its counts no longer matter
        continue;
      }
      if (c.pending === 0) continue;
      const n = c.pending;
      c.pending = 0;
      c.flushing = n;
      batch.push([c, n]);
      keys.push(this.redisKey(key, windowMs, c.window));
      counts.push(n);
    }
    if (batch.length === 0) return;
    this.flushing = true;
    let timer: NodeJS.Timeout | undefined;
    try {
      const totals = await Promise.race([
        this.o.redis.eval(ADD_SCRIPT, keys.length, ...keys, windowMs * 2, ...counts),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`rate limit counters: Redis did not answer within ${this.o.timeoutMs} ms`)), this.o.timeoutMs);
        }),
      ]);
      let failed: unknown;
      batch.forEach(([c, n], i) => {
        const v = Array.isArray(totals) ? Number(totals[i]) : NaN;
        c.flushing = 0;
        if (Number.isNaN(v)) {
          failed ??= new Error('rate limit counters: Redis answered no total');
          c.known += n; // counted here, not in Redis
        } else {
          // the total includes our n; counts made meanwhile are still in `pending`
          c.known = Math.max(c.known + n, v);
        }
      });
      if (failed) this.o.onRedisError?.(failed);
    } catch (err) {
      // fail open: keep counting locally (these counts stay here, not in Redis)
      for (const [c, n] of batch) {
        c.known += n;
        c.flushing = 0;
      }
      this.o.onRedisError?.(err);
    } finally {
      clearTimeout(timer);
      this.flushing = false;
    }
    for (const c of this.counters.values()) if (c.pending > 0) return this.schedule(windowMs);
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.immediate) clearImmediate(this.immediate);
    this.timer = undefined;
    this.immediate = undefined;
  }
}
