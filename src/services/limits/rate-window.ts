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
 * The interface is @fastify/rate-limit's store (`incr(key, cb, timeWindow, max)`, `child`).
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

export type IncrCallback = (err: Error | null, res: { current: number; ttl: number }) => void;

export class RateWindows {
  private readonly counters = new Map<string, Counter>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly o: RateWindowOptions) {}

  private redisKey(key: string, windowMs: number, window: number): string {
    return `${this.o.prefix}:${windowMs}:${key}:${window}`;
  }

  /** Count one request of `key`; answers (synchronously) the count of the window so far, all processes, and the ms left. */
  incr(key: string, cb: IncrCallback, windowMs: number): void {
    const now = Date.now();
    const window = Math.floor(now / windowMs);
    const ttl = (window + 1) * windowMs - now;
    let c = this.counters.get(key);
    if (!c || c.window !== window) {
      c = { window, known: 0, pending: 1, flushing: 0 };
      this.counters.set(key, c);
      // learn what the other processes counted in this window at once, without holding the request
      void this.flushOne(key, c, windowMs);
      cb(null, { current: 1, ttl });
      return;
    }
    c.pending++;
    this.schedule(windowMs);
    cb(null, { current: c.known + c.pending + c.flushing, ttl });
  }

  private schedule(windowMs: number): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flushAll(windowMs);
    }, this.o.syncMs);
    this.timer.unref();
  }

  private async flushAll(windowMs: number): Promise<void> {
    const now = Math.floor(Date.now() / windowMs);
    const work: Array<Promise<void>> = [];
    for (const [key, c] of this.counters) {
      if (c.window < now - 1) {
        this.counters.delete(key); // a window long gone: its counts no longer matter
        continue;
      }
      if (c.pending > 0 && c.flushing === 0) work.push(this.flushOne(key, c, windowMs));
    }
    await Promise.all(work);
    for (const c of this.counters.values()) if (c.pending > 0) return this.schedule(windowMs);
  }

  /** Add the pending count of one window to Redis; on failure or timeout the counts stay local. */
  private async flushOne(key: string, c: Counter, windowMs: number): Promise<void> {
    const n = c.pending;
    c.pending = 0;
    c.flushing = n;
    const rkey = this.redisKey(key, windowMs, c.window);
    let timer: NodeJS.Timeout | undefined;
    try {
      const total = await Promise.race([
        this.o.redis
          .multi()
          .incrby(rkey, n)
          .pexpire(rkey, windowMs * 2)
          .exec()
          .then((r) => {
            const [err, v] = r?.[0] ?? [new Error('no reply'), null];
            if (err) throw err;
            return Number(v);
          }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`rate limit counter: Redis did not answer within ${this.o.timeoutMs} ms`)), this.o.timeoutMs);
        }),
      ]);
      // `total` includes our n; counts made meanwhile are still in `pending`
      c.known = Math.max(c.known + n, total);
      c.flushing = 0;
    } catch (err) {
      // fail open: keep counting locally (these n stay counted here, not in Redis)
      c.known += n;
      c.flushing = 0;
      this.o.onRedisError?.(err);
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
