/**
 * A pg.Pool with the production behaviour HikariCP users expect: prewarmed minimum, staggered max
 * lifetime, validation on borrow after idle, a background health check, acquire timeout answered as a
 * clean 503, fail-fast with backoff while PostgreSQL is down, leak detection with the borrower's
 * stack, destroy-on-release of a client left inside a transaction, and graceful drain.
 */
import pg from 'pg';
import type { Logger } from 'pino';
import { unavailable } from '../errors.js';
import type { DbMetrics } from './metrics.js';
import { isConnectionError } from './errors.js';
import { guardedStream } from './guarded-socket.js';

export interface PoolOptions {
  /** Name in metrics and logs, e.g. `default/app`. */
  readonly name: string;
  readonly connectionString: string;
  readonly max: number;
  readonly min: number;
  readonly acquireTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly maxLifetimeMs: number;
  readonly leakThresholdMs: number;
  /**
   * Capture the borrower's stack on one borrow in this many (1: every borrow). Capturing a stack
   * costs more than the rest of a borrow, so by default it is sampled; once a pool has seen a leak
   * it captures on every borrow, so the next report of a recurring leak names its borrower.
   */
  readonly leakStackSample?: number;
  readonly validateAfterIdleMs: number;
  readonly healthCheckIntervalMs: number;
  /** Send queries without waiting for the previous answer (one round trip for a whole transaction). */
  readonly pipeline?: boolean;
  /** Server settings every connection starts with (libpq `options`, e.g. `-c max_parallel_workers_per_gather=0`). */
  readonly serverOptions?: string;
  /** Client-side limit on waiting for a statement's answer (node-postgres `query_timeout`); the connection is dropped past it. */
  readonly readTimeoutMs?: number;
  readonly applicationName?: string;
}

interface ClientState {
  expiresAt: number;
  lastReleasedAt: number;
  borrowedAt: number;
  /** Captured at borrow time (sampled, see leakStackSample); formatted only when a leak is reported. */
  borrowStack: Error | undefined;
  leaked: boolean;
}

/** A borrowed client: release exactly once; pass `destroy` to throw the connection away. */
export interface Lease {
  readonly client: pg.PoolClient;
  release(destroy?: boolean | Error): void;
}

const LIFETIME_JITTER = 0.2;
const MAX_BACKOFF_MS = 5_000;
/** Borrows per captured borrower stack, unless PoolOptions.leakStackSample says otherwise. */
const DEFAULT_STACK_SAMPLE = 64;

export class StrataPool {
  readonly pg: pg.Pool;
  private readonly state = new WeakMap<pg.PoolClient, ClientState>();
  private readonly borrowed = new Set<pg.PoolClient>();
  private healthTimer: NodeJS.Timeout | undefined;
  /** One sweep over the borrowed clients finds those held past the threshold (no timer per borrow). */
  private leakSweep: NodeJS.Timeout | undefined;
  private borrows = 0;
  private stackEvery: number;
  private downUntil = 0;
  private backoffMs = 0;
  private closing = false;
  private drained: Promise<void> = Promise.resolve();
  /** Label-bound child: no label hashing on the hot path. */
  private readonly acquireHistogram: { observe(v: number): void };

  constructor(
    readonly options: PoolOptions,
    private readonly log: Logger,
    private readonly metrics: DbMetrics,
  ) {
    this.pg = new pg.Pool({
      connectionString: options.connectionString,
      max: options.max,
      min: options.min,
      idleTimeoutMillis: options.idleTimeoutMs,
      connectionTimeoutMillis: options.acquireTimeoutMs,
      application_name: options.applicationName ?? `strata:${options.name}`,
      // pg passes unknown options through to each Client; `pipeline` is Client config in pg >= 8.22.
      ...(options.pipeline ? { pipeline: true } : {}),
      ...(options.serverOptions ? { options: options.serverOptions } : {}),
      ...(options.readTimeoutMs ? { query_timeout: options.readTimeoutMs } : {}),
      // an exception while parsing an answer fails that connection's queries, not the process
      stream: guardedStream,
    });
    // An idle client whose server went away emits here; the pool drops it, we only record it.
    this.pg.on('error', (err) => {
      this.metrics.errors.inc({ pool: options.name, sqlstate: sqlstateOf(err) });
      this.log.warn({ pool: options.name, err }, 'idle database client failed and was removed');
    });
    this.pg.on('connect', (client) => {
      // A borrowed client whose connection drops between queries emits 'error' with no pool listener
      // attached; without this it would be an unhandled error event. The next query fails instead.
      client.on('error', (err) => {
        this.metrics.errors.inc({ pool: options.name, sqlstate: sqlstateOf(err) });
        this.log.debug({ pool: options.name, err }, 'database client connection error');
      });
      const lifetime = options.maxLifetimeMs * (1 - Math.random() * LIFETIME_JITTER);
      this.state.set(client, {
        expiresAt: options.maxLifetimeMs > 0 ? Date.now() + lifetime : Number.POSITIVE_INFINITY,
        lastReleasedAt: Date.now(),
        borrowedAt: 0,
        borrowStack: undefined,
        leaked: false,
      });
    });
    this.stackEvery = Math.max(1, options.leakStackSample ?? DEFAULT_STACK_SAMPLE);
    if (options.leakThresholdMs > 0) {
      this.leakSweep = setInterval(() => this.sweepLeaks(), Math.max(10, Math.min(1000, options.leakThresholdMs / 4)));
      this.leakSweep.unref();
    }
    metrics.registerPool(this);
    this.acquireHistogram = metrics.acquireSeconds.labels(options.name);
  }

  /** Open the minimum number of connections and start the background health check. */
  async start(): Promise<void> {
    const leases: Lease[] = [];
    try {
      for (let i = 0; i < this.options.min; i++) leases.push(await this.acquire());
    } finally {
      for (const l of leases) l.release();
    }
    if (this.options.healthCheckIntervalMs > 0) {
      this.healthTimer = setInterval(() => void this.healthCheck(), this.options.healthCheckIntervalMs);
      this.healthTimer.unref();
    }
  }

  get totalCount(): number {
    return this.pg.totalCount;
  }
  get idleCount(): number {
    return this.pg.idleCount;
  }
  get waitingCount(): number {
    return this.pg.waitingCount;
  }
  /** Clients currently borrowed and not yet released. */
  get borrowedCount(): number {
    return this.borrowed.size;
  }

  /**
   * Borrow a client. Fails with 503 DB_POOL_EXHAUSTED past the acquire timeout and with
   * 503 DB_UNAVAILABLE (fast, with backoff) while PostgreSQL cannot be reached.
   */
  async acquire(): Promise<Lease> {
    if (this.closing) throw unavailable('SHUTTING_DOWN', 'the service is shutting down');
    const now = Date.now();
    if (now < this.downUntil) {
      throw unavailable('DB_UNAVAILABLE', 'the database is unreachable; retry shortly', Math.ceil(this.backoffMs / 1000));
    }
    const started = process.hrtime.bigint();
    for (let attempt = 0; ; attempt++) {
      let client: pg.PoolClient;
      try {
        client = await this.pg.connect();
      } catch (err) {
        throw this.acquireError(err);
      }
      const st = this.state.get(client);
      const idleFor = st ? Date.now() - st.lastReleasedAt : 0;
      const expired = st !== undefined && Date.now() >= st.expiresAt;
      if (expired) {
        client.release(true);
        continue;
      }
      if (st && this.options.validateAfterIdleMs > 0 && idleFor >= this.options.validateAfterIdleMs && attempt < 3) {
        try {
          await client.query('SELECT 1');
        } catch (err) {
          this.log.warn({ pool: this.options.name, err }, 'stale database client failed validation, reconnecting');
          client.release(true);
          continue;
        }
      }
      this.markUp();
      this.acquireHistogram.observe(Number(process.hrtime.bigint() - started) / 1e9);
      return this.lease(client);
    }
  }

  private acquireError(err: unknown): Error {
    const timedOut = err instanceof Error && /timeout exceeded when trying to connect/i.test(err.message);
    // A timeout while the pool holds live connections is congestion, not an outage: never back off
    // for it (that would turn a slow moment into a burst of refusals).
    if (timedOut && this.pg.totalCount > 0) {
      this.metrics.acquireTimeouts.inc({ pool: this.options.name });
      return unavailable('DB_POOL_EXHAUSTED', 'all database connections are busy; retry shortly', 1, err);
    }
    if (isConnectionError(err) || timedOut) {
      this.markDown();
      this.metrics.errors.inc({ pool: this.options.name, sqlstate: sqlstateOf(err) });
      return unavailable('DB_UNAVAILABLE', 'the database is unreachable; retry shortly', Math.max(1, Math.ceil(this.backoffMs / 1000)), err);
    }
    return err instanceof Error ? err : new Error(String(err));
  }

  private markDown(): void {
    this.backoffMs = Math.min(MAX_BACKOFF_MS, this.backoffMs ? this.backoffMs * 2 : 100);
    // jitter so that many processes do not reconnect in lockstep
    this.downUntil = Date.now() + this.backoffMs * (0.5 + Math.random() / 2);
  }

  private markUp(): void {
    this.backoffMs = 0;
    this.downUntil = 0;
  }

  private lease(client: pg.PoolClient): Lease {
    const st = this.state.get(client);
    this.borrowed.add(client);
    if (st) {
      st.borrowedAt = Date.now();
      st.leaked = false;
      // the borrower's stack is read only on a leak; capturing it is sampled (see leakStackSample)
      st.borrowStack =
        this.leakSweep !== undefined && ++this.borrows % this.stackEvery === 0 ? new Error('database client borrowed here') : undefined;
    }
    let released = false;
    return {
      client,
      release: (destroy?: boolean | Error) => {
        if (released) return;
        released = true;
        this.borrowed.delete(client);
        if (st) {
          st.lastReleasedAt = Date.now();
          st.borrowStack = undefined;
        }
        const status = client.getTransactionStatus?.() ?? 'I';
        const inTransaction = status === 'T' || status === 'E';
        const expired = st !== undefined && Date.now() >= st.expiresAt;
        if (inTransaction && !destroy) {
          this.metrics.destroyedInTransaction.inc({ pool: this.options.name });
          this.log.warn({ pool: this.options.name, status }, 'client released inside a transaction; destroyed, not reused');
        }
        client.release(destroy || inTransaction || expired ? (destroy instanceof Error ? destroy : true) : undefined);
      },
    };
  }

  private sweepLeaks(): void {
    const now = Date.now();
    for (const client of this.borrowed) {
      const st = this.state.get(client);
      if (st && !st.leaked && now - st.borrowedAt >= this.options.leakThresholdMs) this.reportLeak(st, now);
    }
  }

  private reportLeak(st: ClientState, now: number): void {
    st.leaked = true;
    const sampled = this.stackEvery > 1;
    // a leak tends to recur: from now on every borrow of this pool records its stack
    this.stackEvery = 1;
    this.metrics.leaks.inc({ pool: this.options.name });
    this.log.warn(
      {
        pool: this.options.name,
        heldMs: now - st.borrowedAt,
        borrowStack:
          st.borrowStack?.stack ??
          (sampled ? 'not captured for this borrow (stacks are sampled); every borrow of this pool records its stack from now on' : undefined),
      },
      'database client held past DB_LEAK_THRESHOLD_MS (possible leak)',
    );
  }

  /** Borrow, run `fn`, always release; a failing connection is destroyed, not reused. */
  async with<T>(fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const lease = await this.acquire();
    try {
      const out = await fn(lease.client);
      lease.release();
      return out;
    } catch (err) {
      lease.release(isConnectionError(err) ? true : undefined);
      throw err;
    }
  }

  /** Background health check: validates one idle connection, or probes when the database was down. */
  async healthCheck(): Promise<boolean> {
    if (this.closing) return false;
    if (this.pg.idleCount === 0 && this.downUntil === 0) return true;
    this.downUntil = 0; // a probe is always allowed through
    try {
      await this.with((c) => c.query('SELECT 1'));
      return true;
    } catch (err) {
      this.log.warn({ pool: this.options.name, err }, 'database health check failed');
      return false;
    }
  }

  /** Stop handing out clients, wait up to `timeoutMs` for borrowed ones, then close everything. */
  async drain(timeoutMs = 10_000): Promise<void> {
    if (this.closing) return this.drained;
    this.closing = true;
    this.drained = this.drainNow(timeoutMs);
    return this.drained;
  }

  private async drainNow(timeoutMs: number): Promise<void> {
    if (this.healthTimer) clearInterval(this.healthTimer);
    if (this.leakSweep) clearInterval(this.leakSweep);
    const deadline = Date.now() + timeoutMs;
    while (this.borrowed.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    if (this.borrowed.size > 0) {
      this.log.warn({ pool: this.options.name, borrowed: this.borrowed.size }, 'pool drained with clients still borrowed');
      for (const c of this.borrowed) c.release(true);
      this.borrowed.clear();
    }
    await this.pg.end();
  }
}

export function sqlstateOf(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : 'none';
}
