import { Writable } from 'node:stream';
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createDbMetrics } from '../src/db/metrics.js';
import { StrataPool, type PoolOptions } from '../src/db/pool.js';
import { createTestApp, type TestApp } from './helpers/app.js';

function capturingLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, stream), lines };
}

describe('the pool under pressure', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ env: { DB_POOL_MAX: '2', DB_ACQUIRE_TIMEOUT_MS: '300', DB_VALIDATE_AFTER_IDLE_MS: '0' } });
  });
  afterAll(() => t.close());
  afterEach(() => {
    expect(t.db.borrowedCount()).toBe(0);
  });

  it('answers 503 DB_POOL_EXHAUSTED with Retry-After past the acquire timeout, then recovers', async () => {
    const pool = t.db.shardFor('acme').app;
    const held = [await pool.acquire(), await pool.acquire()];
    const headers = await t.auth('reader');
    const started = Date.now();
    let res;
    try {
      res = await t.app.inject({ url: '/v1/tables/pipelines/rows', headers });
    } finally {
      for (const l of held) l.release();
    }
    const waited = Date.now() - started;
    expect(res.statusCode).toBe(503);
    expect(res.json().error.code).toBe('DB_POOL_EXHAUSTED');
    expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(waited).toBeGreaterThanOrEqual(250); // it waited for the acquire timeout (300 ms), no hang
    const after = await t.app.inject({ url: '/v1/tables/pipelines/rows', headers });
    expect(after.statusCode).toBe(200);
    const metrics = await t.registry.getSingleMetricAsString('strata_db_pool_acquire_timeouts_total');
    expect(metrics).toMatch(/pool="default\/app"} [1-9]/);
  });

  it('recovers without a restart after every backend is killed with pg_terminate_backend', async () => {
    const headers = await t.auth('reader');
    // open both pooled connections
    await Promise.all([1, 2, 3, 4].map(() => t.app.inject({ url: '/v1/tables/pipelines/rows', headers })));
    const killed = await t.db.adminQuery<{ n: number }>(
      'SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()',
    );
    expect(killed.rows[0]!.n).toBeGreaterThan(0);
    // reads whose connection died are run again on another one: no error reaches the caller
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++) statuses.push((await t.app.inject({ url: '/v1/tables/pipelines/rows', headers })).statusCode);
    expect(statuses).toEqual(Array(20).fill(200));
  });

  it('runs a read again on another connection when its own is killed mid-flight, and never a write', async () => {
    const headers = await t.auth('writer');
    const before = Number((await t.db.adminQuery<{ n: string }>('SELECT count(*) AS n FROM public.pipelines')).rows[0]!.n);
    // kill every tenant backend while reads and writes are in flight
    const reads = Array.from({ length: 8 }, () => t.app.inject({ url: '/v1/tables/pipelines/rows?select=id,name', headers }));
    const writes = Array.from({ length: 4 }, (_, i) =>
      t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers, payload: { name: `kill-${i}` } }),
    );
    await t.db.adminQuery(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND usename <> current_user",
    );
    const readStatuses = (await Promise.all(reads)).map((r) => r.statusCode);
    expect(readStatuses).toEqual(Array(8).fill(200));
    const writeResults = await Promise.all(writes);
    for (const w of writeResults) expect([201, 503]).toContain(w.statusCode);
    // a write answered 503 was not retried behind the caller's back: at most the 201s were written
    const created = writeResults.filter((w) => w.statusCode === 201).length;
    const after = Number((await t.db.adminQuery<{ n: string }>('SELECT count(*) AS n FROM public.pipelines')).rows[0]!.n);
    expect(after - before).toBeGreaterThanOrEqual(created);
    expect(after - before).toBeLessThanOrEqual(4);
  });

  it('destroys a client released inside an open transaction instead of reusing it', async () => {
    const pool = t.db.shardFor('acme').app;
    const lease = await pool.acquire();
    const pid = (await lease.client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    await lease.client.query('BEGIN');
    await lease.client.query("SELECT set_config('strata.tenant_id', 'acme', true)");
    lease.release();
    const metric = await t.registry.getSingleMetricAsString('strata_db_pool_destroyed_in_transaction_total');
    expect(metric).toMatch(/pool="default\/app"} [1-9]/);
    const leases = [await pool.acquire(), await pool.acquire()];
    try {
      for (const l of leases) {
        const r = await l.client.query<{ pid: number; tenant: string | null }>(
          "SELECT pg_backend_pid() AS pid, current_setting('strata.tenant_id', true) AS tenant",
        );
        expect(r.rows[0]!.pid).not.toBe(pid);
        expect(r.rows[0]!.tenant ?? '').toBe('');
      }
    } finally {
      for (const l of leases) l.release();
    }
  });
});

describe('StrataPool on its own', () => {
  let t: TestApp;
  const pools: StrataPool[] = [];
  beforeAll(async () => {
    t = await createTestApp({ tenants: false });
  });
  afterAll(async () => {
    for (const p of pools) await p.drain(1000);
    await t.close();
  });

  function makePool(overrides: Partial<PoolOptions>, log = pino({ level: 'silent' })) {
    const registry = new Registry();
    const metrics = createDbMetrics(registry);
    const pool = new StrataPool(
      {
        name: 'unit',
        connectionString: t.database.url,
        max: 2,
        min: 0,
        acquireTimeoutMs: 1000,
        idleTimeoutMs: 10_000,
        maxLifetimeMs: 0,
        leakThresholdMs: 0,
        validateAfterIdleMs: 0,
        healthCheckIntervalMs: 0,
        ...overrides,
      },
      log,
      metrics,
    );
    pools.push(pool);
    return { pool, registry };
  }

  it('reports a client held past the leak threshold with the borrower stack, and counts it', async () => {
    const { log, lines } = capturingLogger();
    const { pool, registry } = makePool({ leakThresholdMs: 100, leakStackSample: 1 }, log);
    const lease = await pool.acquire();
    await new Promise((r) => setTimeout(r, 250));
    lease.release();
    const leak = lines.find((l) => l['msg'] === 'database client held past DB_LEAK_THRESHOLD_MS (possible leak)');
    expect(leak).toBeDefined();
    expect(String(leak!['borrowStack'])).toContain('pool.test.ts');
    expect(await registry.getSingleMetricAsString('strata_db_pool_leaked_clients_total')).toMatch(/pool="unit"} 1/);
  });

  it('samples borrower stacks, and records every borrow once the pool has seen a leak', async () => {
    const { log, lines } = capturingLogger();
    const { pool, registry } = makePool({ leakThresholdMs: 60, leakStackSample: 1000 }, log);
    const leaks = () => lines.filter((l) => l['msg'] === 'database client held past DB_LEAK_THRESHOLD_MS (possible leak)');
    const first = await pool.acquire();
    await new Promise((r) => setTimeout(r, 150));
    first.release();
    expect(leaks()).toHaveLength(1);
    expect(String(leaks()[0]!['borrowStack'])).toMatch(/not captured for this borrow/);
    const second = await pool.acquire();
    await new Promise((r) => setTimeout(r, 150));
    second.release();
    expect(leaks()).toHaveLength(2);
    expect(String(leaks()[1]!['borrowStack'])).toContain('pool.test.ts');
    expect(await registry.getSingleMetricAsString('strata_db_pool_leaked_clients_total')).toMatch(/pool="unit"} 2/);
  });

  it('does not report a client released before the threshold', async () => {
    const { log, lines } = capturingLogger();
    const { pool } = makePool({ leakThresholdMs: 200 }, log);
    const lease = await pool.acquire();
    lease.release();
    await new Promise((r) => setTimeout(r, 300));
    expect(lines.some((l) => String(l['msg']).includes('possible leak'))).toBe(false);
  });

  it('prewarms the minimum number of connections', async () => {
    const { pool } = makePool({ min: 2, max: 3 });
    await pool.start();
    expect(pool.totalCount).toBe(2);
    expect(pool.idleCount).toBe(2);
  });

  it('retires a connection past its max lifetime instead of reusing it', async () => {
    const { pool } = makePool({ maxLifetimeMs: 100 });
    const a = await pool.acquire();
    const pidA = (await a.client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    a.release();
    await new Promise((r) => setTimeout(r, 150));
    const b = await pool.acquire();
    const pidB = (await b.client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    b.release();
    expect(pidB).not.toBe(pidA);
  });

  it('validates a connection idle past the threshold and replaces a dead one transparently', async () => {
    const { pool } = makePool({ validateAfterIdleMs: 1 });
    const a = await pool.acquire();
    const pid = (await a.client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    a.release();
    await t.db.adminQuery('SELECT pg_terminate_backend($1)', [pid]);
    await new Promise((r) => setTimeout(r, 50));
    const b = await pool.acquire();
    const r = await b.client.query<{ ok: number }>('SELECT 1 AS ok');
    b.release();
    expect(r.rows[0]!.ok).toBe(1);
  });

  it('fails fast with 503 DB_UNAVAILABLE when PostgreSQL cannot be reached', async () => {
    const { pool } = makePool({ connectionString: 'postgres://postgres@127.0.0.1:1/none', acquireTimeoutMs: 2000 });
    await expect(pool.acquire()).rejects.toMatchObject({ statusCode: 503, code: 'DB_UNAVAILABLE' });
    // while backing off, the next attempt is refused at once without touching the network
    const started = Date.now();
    await expect(pool.acquire()).rejects.toMatchObject({ statusCode: 503, code: 'DB_UNAVAILABLE' });
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('drains: waits for a borrowed client, then closes', async () => {
    const { pool } = makePool({});
    const lease = await pool.acquire();
    setTimeout(() => lease.release(), 100);
    await pool.drain(5000);
    expect(pool.borrowedCount).toBe(0);
    expect(pool.totalCount).toBe(0);
    await expect(pool.acquire()).rejects.toMatchObject({ code: 'SHUTTING_DOWN' });
  });
});

describe('leak detection of stream leases', () => {
  it('does not call an export-length stream lease a leak, while the same hold on the app pool is one', async () => {
    const t = await createTestApp({ env: { DB_LEAK_THRESHOLD_MS: '100', EXPORT_MAX_TIMEOUT_MS: '60000' } });
    try {
      const ctx = { tenantId: 'acme', actor: 'leak-test', role: 'reader' as const, requestId: 'leak-test' };
      const hold = () => new Promise((r) => setTimeout(r, 300));
      await t.db.withTenantStream(ctx, hold);
      await t.db.withTenant(ctx, hold);
      const text = await t.registry.getSingleMetricAsString('strata_db_pool_leaked_clients_total');
      expect(text).toMatch(/pool="default\/app"} 1/);
      expect(text).not.toMatch(/pool="default\/stream"} [1-9]/);
    } finally {
      await t.close();
    }
  });
});
