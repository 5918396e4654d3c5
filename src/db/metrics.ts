/** Prometheus metrics of the database layer (pool, acquire wait, queries, errors, leaks). */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

interface PoolLike {
  readonly options: { readonly name: string };
  readonly totalCount: number;
  readonly idleCount: number;
  readonly waitingCount: number;
  readonly borrowedCount: number;
}

export interface DbMetrics {
  acquireSeconds: Histogram<'pool'>;
  querySeconds: Histogram<'pool'>;
  errors: Counter<'pool' | 'sqlstate'>;
  acquireTimeouts: Counter<'pool'>;
  leaks: Counter<'pool'>;
  destroyedInTransaction: Counter<'pool'>;
  retries: Counter<'sqlstate'>;
  /** querySeconds bound to a pool's label, cached (observing through labels() objects skips hashing). */
  queryHistogram(pool: string): { observe(v: number): void };
  registerPool(pool: PoolLike): void;
  /** A pool closed for good (a dropped sandbox's): its gauges stop being reported. */
  unregisterPool(pool: PoolLike): void;
}

/** Metrics live on the given registry so several apps (tests) never collide. */
export function createDbMetrics(registry: Registry): DbMetrics {
  const pools = new Set<PoolLike>();
  const gauge = (name: string, help: string, read: (p: PoolLike) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['pool'],
      registers: [registry],
      collect() {
        this.reset();
        for (const p of pools) this.set({ pool: p.options.name }, read(p));
      },
    });
  gauge('strata_db_pool_total', 'Open connections in the pool', (p) => p.totalCount);
  gauge('strata_db_pool_idle', 'Idle connections in the pool', (p) => p.idleCount);
  gauge('strata_db_pool_waiting', 'Requests waiting for a connection', (p) => p.waitingCount);
  gauge('strata_db_pool_borrowed', 'Connections currently checked out', (p) => p.borrowedCount);
  const queryByPool = new Map<string, { observe(v: number): void }>();
  const buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
  const querySeconds = new Histogram({
    name: 'strata_db_query_seconds',
    help: 'Query duration',
    labelNames: ['pool'],
    buckets,
    registers: [registry],
  });
  return {
    queryHistogram(pool: string) {
      let h = queryByPool.get(pool);
      if (!h) queryByPool.set(pool, (h = querySeconds.labels(pool)));
      return h;
    },
    acquireSeconds: new Histogram({
      name: 'strata_db_pool_acquire_seconds',
      help: 'Time waited to borrow a connection',
      labelNames: ['pool'],
      buckets,
      registers: [registry],
    }),
    querySeconds,
    errors: new Counter({
      name: 'strata_db_errors_total',
      help: 'Database errors by SQLSTATE',
      labelNames: ['pool', 'sqlstate'],
      registers: [registry],
    }),
    acquireTimeouts: new Counter({
      name: 'strata_db_pool_acquire_timeouts_total',
      help: 'Borrow attempts that ran past the acquire timeout (answered 503)',
      labelNames: ['pool'],
      registers: [registry],
    }),
    leaks: new Counter({
      name: 'strata_db_pool_leaked_clients_total',
      help: 'Clients held past the leak detection threshold',
      labelNames: ['pool'],
      registers: [registry],
    }),
    destroyedInTransaction: new Counter({
      name: 'strata_db_pool_destroyed_in_transaction_total',
      help: 'Clients released inside an open transaction and destroyed',
      labelNames: ['pool'],
      registers: [registry],
    }),
    retries: new Counter({
      name: 'strata_db_transaction_retries_total',
      help: 'Transactions retried after a serialization failure or deadlock',
      labelNames: ['sqlstate'],
      registers: [registry],
    }),
    registerPool: (p) => void pools.add(p),
    unregisterPool: (p) => void pools.delete(p),
  };
}
