/**
 * Heavy tenants' database-time budget (src/services/limits/budget.ts, LIMIT_HEAVY_DB_MS_PER_SECOND).
 * First the policy on its own, with explicit clocks (no timing involved): who is heavy (time-weighted,
 * so light requests cannot dilute it), that only a heavy tenant is rationed and only while a light
 * tenant is active, and that its queued sessions are admitted in order as its budget refills. Then
 * through the API against the real PostgreSQL: a heavy analyst's burst runs one session at a time
 * (the database's own clocks show no overlap) while a light neighbour's reads are all answered first,
 * and past the acquire timeout the heavy tenant gets 429 TENANT_CONCURRENCY_LIMIT with Retry-After.
 * Assertions are on order and counts, never on durations.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { DbTimeBudgets } from '../src/services/limits/index.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';

/** The pool of the policy tests (a tenant's budget is per pool). */
const P = 'shard/app';
const limited = (retryAfterS: number) => Object.assign(new Error('limited'), { retryAfterS });

describe('DbTimeBudgets (the policy, explicit clocks)', () => {
  // the re-checks on timers run only when the test advances them, on the test's clock
  beforeEach(() => vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] }));
  afterEach(() => vi.useRealTimers());
  let clock = 0;
  /** 100 ms of connection time per second for a heavy tenant; heavy above 50 ms. */
  const make = () => new DbTimeBudgets({ msPerSecond: 100, heavyMs: 50, clock: () => clock });
  /** One session of `tenant` from `at` holding `ms` (admitted at once, or the test fails). */
  const session = (b: DbTimeBudgets, tenant: string, at: number, ms: number, pool = P) => {
    expect(b.enter(pool, tenant, at, 0, limited), `${tenant} at ${at}`).toBe(true);
    b.leave(pool, tenant, ms, at + ms);
  };
  const flush = () => new Promise<void>((r) => setImmediate(r));

  it('never rations a light tenant, nor a heavy tenant alone or among heavy tenants only', () => {
    const b = make();
    let t = 10_000;
    // a heavy tenant alone: four concurrent 500 ms sessions, then again
    for (const round of [1, 2]) {
      for (let i = 0; i < 4; i++) expect(b.enter(P, 'heavy', t, 0, limited), `alone, round ${round}`).toBe(true);
      t += 500;
      for (let i = 0; i < 4; i++) b.leave(P, 'heavy', 500, t);
    }
    expect(b.inspect(P, 'heavy')!.heavinessMs).toBeGreaterThan(50);
    // a second tenant turns heavy (a new tenant counts as light until then), a second passes
    session(b, 'heavy2', t, 400);
    t += 1500;
    // heavy tenants among themselves are not rationed
    expect(b.enter(P, 'heavy2', t, 0, limited)).toBe(true);
    for (let i = 0; i < 4; i++) expect(b.enter(P, 'heavy', t + 1, 0, limited), 'among heavy tenants').toBe(true);
    for (let i = 0; i < 4; i++) b.leave(P, 'heavy', 500, t + 501);
    b.leave(P, 'heavy2', 500, t + 501);
    t += 600;
    // a light tenant's sessions pass whatever the heavy ones do
    for (let i = 0; i < 200; i++) session(b, 'light', t + i, 2);
    expect(b.inspect(P, 'light')!.heavinessMs).toBeLessThan(50);
    expect(b.inspect(P, 'heavy')).toMatchObject({ running: 0, waiting: 0 });
  });

  it('rations a heavy tenant while a light one is active: one session within its budget, the next refused until the budget refills', async () => {
    const b = make();
    const t = 50_000;
    session(b, 'a', t, 300); // alone: heavy now, neither rationed nor charged
    session(b, 'b', t + 400, 1); // a light tenant is active
    // a starts one session: its bucket is full (100 ms) and nothing runs
    expect(b.enter(P, 'a', t + 401, 0, limited)).toBe(true);
    // a second one at once: the running session is expected to use ~300 ms, more than the bucket holds
    await expect(b.enter(P, 'a', t + 402, 0, limited)).rejects.toMatchObject({ retryAfterS: 2 });
    b.leave(P, 'a', 300, t + 701); // charged 300 ms: the bucket owes 200 ms
    session(b, 'b', t + 702, 1);
    await expect(b.enter(P, 'a', t + 703, 0, limited)).rejects.toMatchObject({ retryAfterS: 2 });
    // the light tenant keeps passing meanwhile
    for (let i = 0; i < 50; i++) session(b, 'b', t + 710 + i, 1);
    session(b, 'b', t + 2590, 1);
    await expect(b.enter(P, 'a', t + 2600, 0, limited)).rejects.toMatchObject({ retryAfterS: 1 });
    // 100 ms/s has refilled the debt 2 s later; the light tenant is still active then
    session(b, 'b', t + 2800, 1);
    expect(b.enter(P, 'a', t + 2801, 0, limited)).toBe(true);
    b.leave(P, 'a', 300, t + 3101);
    // once the light tenant has been gone for a second, the heavy tenant is not rationed
    for (let i = 0; i < 3; i++) expect(b.enter(P, 'a', t + 4000, 0, limited)).toBe(true);
  });

  it("rations a tenant's long work on one pool without rationing its short sessions on another", async () => {
    const b = make();
    const t = 70_000;
    const S = 'shard/stream';
    session(b, 'a', t, 2000, S); // a long export: heavy on the streaming pool
    session(b, 'c', t + 2100, 1); // a light neighbour
    expect(b.enter(S, 'a', t + 2101, 0, limited)).toBe(true); // one export within the budget
    await expect(b.enter(S, 'a', t + 2102, 0, limited)).rejects.toMatchObject({ retryAfterS: expect.any(Number) });
    // meanwhile a's own short reads on the tenant-session pool pass, as light ones
    for (let i = 0; i < 20; i++) session(b, 'a', t + 2110 + i, 2);
    expect(b.inspect(P, 'a')!.heavinessMs).toBeLessThan(50);
    expect(b.inspect(S, 'a')).toMatchObject({ running: 1 });
  });

  it('measures heaviness by time: light sessions mixed into long ones do not hide them', () => {
    const b = make();
    let t = 90_000;
    for (let round = 0; round < 5; round++) {
      session(b, 'mixer', t, 500);
      t += 500;
      for (let i = 0; i < 100; i++) session(b, 'mixer', t + i, 1);
      t += 100;
    }
    // a plain mean would be (500 + 100) / 101, about 6 ms: light. Weighted by time it is heavy.
    expect(b.inspect(P, 'mixer')!.heavinessMs).toBeGreaterThan(250);
    // and a tenant whose long queries stop becomes light again
    for (let i = 0; i < 200; i++) session(b, 'mixer', t + 5000 + i, 1);
    expect(b.inspect(P, 'mixer')!.heavinessMs).toBeLessThan(50);
  });

  it('admits queued sessions of a heavy tenant in order as its budget refills, never two long ones at once', async () => {
    const b = make();
    const t = 120_000;
    session(b, 'a', t, 300);
    session(b, 'b', t + 400, 1);
    expect(b.enter(P, 'a', t + 401, 0, limited)).toBe(true); // runs
    const order: number[] = [];
    const queued = [1, 2, 3].map((n) => {
      const p = b.enter(P, 'a', t + 402, 60_000, limited);
      expect(p).not.toBe(true);
      return (p as Promise<void>).then(() => order.push(n));
    });
    expect(b.inspect(P, 'a')).toMatchObject({ running: 1, waiting: 3 });
    // a later request queues behind them, even once the budget would let it in
    session(b, 'b', t + 3000, 1);
    b.leave(P, 'a', 300, t + 3001); // charged 300 from a full bucket: owes 200, nothing admitted
    await flush();
    expect(order).toEqual([]);
    // re-checked on a timer (nothing is running): still owing at t+4001
    session(b, 'b', t + 4000, 1);
    clock = t + 4001;
    vi.advanceTimersByTime(1000);
    await flush();
    expect(order).toEqual([]);
    // refilled by t+5100: the first waiter runs; the next waits for it (a ~300 ms session expected)
    session(b, 'b', t + 5050, 1);
    clock = t + 5100;
    vi.advanceTimersByTime(1000);
    await flush();
    expect(order).toEqual([1]);
    expect(b.inspect(P, 'a')).toMatchObject({ running: 1, waiting: 2 });
    await expect(b.enter(P, 'a', t + 5101, 0, limited)).rejects.toMatchObject({ retryAfterS: expect.any(Number) });
    b.leave(P, 'a', 10, t + 5110); // short: budget left, the second runs
    await flush();
    expect(order).toEqual([1, 2]);
    b.leave(P, 'a', 10, t + 5130); // owes a little: the third waits for the refill
    await flush();
    expect(order).toEqual([1, 2]);
    session(b, 'b', t + 5200, 1);
    clock = t + 5210;
    vi.advanceTimersByTime(1000);
    await Promise.all(queued);
    expect(order).toEqual([1, 2, 3]);
    b.leave(P, 'a', 10, t + 5220);
    expect(b.inspect(P, 'a')).toMatchObject({ running: 0, waiting: 0 });
  });
});

describe('database-time budget through the API (real PostgreSQL)', () => {
  let t: TestApp;
  beforeAll(async () => {
    // heavy above 250 ms (the light tenant's reads stay far below it even on a loaded machine); the
    // per-pool heavy cap is out of the way (5), so only the budget (the default, 250 ms/s) limits
    t = await createTestApp({ env: { DB_POOL_MAX: '10', DB_ACQUIRE_TIMEOUT_MS: '20000', LIMIT_HEAVY_MS: '250', LIMIT_HEAVY_CONNECTIONS: '5', LIMIT_REQUESTS_PER_SECOND: '10000000' } });
  });
  afterEach(async () => expectNoCheckedOutClients(t.db));
  afterAll(async () => t?.close());

  const appPool = () => t.db.shardFor('acme').app.options.name;
  const sql = (h: Record<string, string>, q: string) => t.app.inject({ method: 'POST', url: '/v1/sql', headers: h, payload: { sql: q } });
  /** Light reads of `h` one after the other until `until` settles: keeps a light tenant active. */
  async function readWhile(h: Record<string, string>, until: Promise<unknown>): Promise<number[]> {
    let done = false;
    void until.finally(() => (done = true));
    const statuses: number[] = [];
    while (!done) statuses.push((await t.app.inject({ method: 'GET', url: '/v1/tables/pipelines/rows?limit=1', headers: h })).statusCode);
    return statuses;
  }

  it("runs a heavy tenant's burst one session at a time while a light tenant reads, and answers the light reads first", async () => {
    const a = await t.auth('analyst', 'acme');
    const b = await t.auth('reader', 'globex');
    expect((await sql(a, 'select pg_sleep(0.5) as s')).statusCode).toBe(200); // alone: heavy now
    expect((await t.app.inject({ method: 'GET', url: '/v1/tables/pipelines/rows?limit=1', headers: b })).statusCode).toBe(200);

    const finished: string[] = [];
    const burst = Promise.all(
      Array.from({ length: 4 }, (_, i) =>
        sql(a, 'select clock_timestamp() as s, pg_sleep(0.5) as z, clock_timestamp() as e').then((r) => {
          finished.push(`a${i}`);
          return r;
        }),
      ),
    );
    const light: number[] = [];
    const reads = (async () => {
      for (let i = 0; i < 5; i++) {
        light.push((await t.app.inject({ method: 'GET', url: '/v1/tables/pipelines/rows?limit=1', headers: b })).statusCode);
        finished.push(`b${i}`);
      }
    })();
    const [res, , more] = await Promise.all([burst, reads, readWhile(b, burst)]);
    expect(res.map((r) => r.statusCode)).toEqual([200, 200, 200, 200]);
    expect(light).toEqual([200, 200, 200, 200, 200]);
    expect(more.filter((s) => s !== 200), `statuses other than 200 among ${more.length} reads`).toEqual([]);
    // the database's clocks: no two of the heavy tenant's sessions overlapped
    const spans = res
      .map((r) => r.json<{ data: Array<{ s: string; e: string }> }>().data[0]!)
      .map((row) => [Date.parse(row.s), Date.parse(row.e)] as const)
      .sort((x, y) => x[0] - y[0]);
    const state = JSON.stringify({ acme: t.app.limits.budget(appPool(), 'acme'), globex: t.app.limits.budget(appPool(), 'globex') });
    for (let i = 1; i < spans.length; i++) expect(spans[i]![0], `session ${i} started before ${i - 1} ended (${state})`).toBeGreaterThanOrEqual(spans[i - 1]![1]);
    // the light tenant's five reads were all answered before the heavy burst's last session
    const lastHeavy = Math.max(...['a0', 'a1', 'a2', 'a3'].map((k) => finished.indexOf(k)));
    expect(finished.indexOf('b4')).toBeLessThan(lastHeavy);
    expect(t.app.limits.budget(appPool(), 'globex')!.heavinessMs).toBeLessThan(250);
    expect(t.app.limits.budget(appPool(), 'acme')).toMatchObject({ running: 0, waiting: 0 });
  });

  it('answers a heavy tenant past its budget 429 TENANT_CONCURRENCY_LIMIT (database time) with Retry-After, and serves it again later', async () => {
    const quick = await createTestApp({
      env: { DB_POOL_MAX: '10', DB_ACQUIRE_TIMEOUT_MS: '400', LIMIT_HEAVY_MS: '250', LIMIT_HEAVY_CONNECTIONS: '5', LIMIT_HEAVY_DB_MS_PER_SECOND: '100', LIMIT_REQUESTS_PER_SECOND: '10000000' },
    });
    try {
      const a = await quick.auth('analyst', 'acme');
      const b = await quick.auth('reader', 'globex');
      const q = (payload: string) => quick.app.inject({ method: 'POST', url: '/v1/sql', headers: a, payload: { sql: payload } });
      const read = () => quick.app.inject({ method: 'GET', url: '/v1/tables/pipelines/rows?limit=1', headers: b });
      expect((await q('select pg_sleep(0.5) as s')).statusCode).toBe(200); // alone: heavy now
      expect((await read()).statusCode).toBe(200);
      const burst = Promise.all([0, 1, 2].map(() => q('select pg_sleep(0.5) as s')));
      let done = false;
      void burst.finally(() => (done = true));
      const reads: number[] = [];
      while (!done) reads.push((await read()).statusCode);
      const res = await burst;
      // one runs within the budget; the others would wait ~4 s for it to refill, past the 400 ms timeout
      expect(res.map((r) => r.statusCode).sort()).toEqual([200, 429, 429]);
      for (const r of res.filter((x) => x.statusCode === 429)) {
        expect(r.json().error).toMatchObject({ code: 'TENANT_CONCURRENCY_LIMIT', details: { resource: 'database time', limit: 100 } });
        expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      }
      expect(reads.length).toBeGreaterThan(0);
      expect(reads.every((s) => s === 200)).toBe(true);
      // nothing is left held or queued, and once the light tenant is gone the heavy one runs freely
      expect(quick.app.limits.budget(quick.db.shardFor('acme').app.options.name, 'acme')).toMatchObject({ running: 0, waiting: 0 });
      await new Promise((r) => setTimeout(r, 1100));
      const again = await Promise.all([0, 1, 2].map(() => q('select pg_sleep(0.1) as s')));
      expect(again.map((r) => r.statusCode)).toEqual([200, 200, 200]);
      await expectNoCheckedOutClients(quick.db);
    } finally {
      await quick.close();
    }
  });
});
