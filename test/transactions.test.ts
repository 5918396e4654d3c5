import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { toAppError } from '../src/db/errors.js';
import type { Tx } from '../src/db/session.js';
import { createTestApp, type TestApp } from './helpers/app.js';

const acme = { tenantId: 'acme', actor: 'test', role: 'writer' as const, requestId: 'tx-test' };

describe('withTransaction: savepoints, retries, timeouts', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ env: { DB_POOL_MAX: '6' } });
  });
  afterAll(() => t.close());
  afterEach(() => {
    expect(t.db.borrowedCount()).toBe(0);
  });

  const names = async (prefix: string) =>
    (await t.db.adminQuery<{ name: string }>('SELECT name FROM pipelines WHERE name LIKE $1 ORDER BY name', [`${prefix}%`])).rows.map((r) => r.name);
  const insert = (tx: Tx, name: string) => tx.query('INSERT INTO pipelines (name) VALUES ($1)', [name]);

  it('turns nested calls into savepoints and rolls back only the failing level', async () => {
    await t.db.withTransaction(acme, async (tx) => {
      await insert(tx, 'nest-a');
      await expect(
        t.db.withTransaction(tx, async (inner) => {
          await insert(inner, 'nest-b');
          throw new Error('inner fails');
        }),
      ).rejects.toThrow('inner fails');
      await t.db.withTransaction(tx, async (inner) => {
        await insert(inner, 'nest-c');
        await expect(
          t.db.withTransaction(inner, async (innermost) => {
            await insert(innermost, 'nest-d');
            await innermost.query('SELECT 1/0');
          }),
        ).rejects.toMatchObject({ code: '22012' });
        await insert(inner, 'nest-e');
      });
    });
    expect(await names('nest-')).toEqual(['nest-a', 'nest-c', 'nest-e']);
  });

  it('rolls back everything when the outer level fails', async () => {
    await expect(
      t.db.withTransaction(acme, async (tx) => {
        await insert(tx, 'outer-a');
        await t.db.withTransaction(tx, (inner) => insert(inner, 'outer-b'));
        throw new Error('outer fails');
      }),
    ).rejects.toThrow('outer fails');
    expect(await names('outer-')).toEqual([]);
  });

  it('supports named savepoints', async () => {
    await t.db.withTransaction(acme, async (tx) => {
      await insert(tx, 'named-a');
      await tx.savepoint(async (sp) => insert(sp, 'named-b'), 'keep');
      await expect(tx.savepoint(async (sp) => {
        await insert(sp, 'named-c');
        throw new Error('drop');
      }, 'drop_me')).rejects.toThrow('drop');
    });
    expect(await names('named-')).toEqual(['named-a', 'named-b']);
  });

  it('keeps an independent transaction started inside another one separate (not a savepoint)', async () => {
    await t.db.withTransaction(acme, async (tx) => {
      await insert(tx, 'indep-a');
      // a separate transaction (own connection) commits on its own even though the outer fails later
      await t.db.withTransaction(acme, (other) => insert(other, 'indep-b'));
    });
    expect(await names('indep-')).toEqual(['indep-a', 'indep-b']);
  });

  /**
   * Write skew under SERIALIZABLE: two transactions each read both rows and update one. Both
   * start before either commits, so one must fail with 40001 on the first attempt.
   */
  async function writeSkew(retries: number) {
    await t.db.adminQuery("DELETE FROM pipelines WHERE name LIKE 'skew-%'");
    await t.db.withTransaction(acme, async (tx) => {
      await insert(tx, 'skew-x');
      await insert(tx, 'skew-y');
    });
    let arrived = 0;
    let release!: () => void;
    const barrier = new Promise<void>((r) => (release = r));
    const attempts: number[] = [];
    const run = (target: string) =>
      t.db.withTransaction(
        acme,
        async (tx) => {
          await tx.query("SELECT count(*) FROM pipelines WHERE name LIKE 'skew-%' AND status = 'active'");
          if (tx.attempt === 1) {
            if (++arrived === 2) release();
            await barrier; // both have read before either writes
          }
          await tx.query("UPDATE pipelines SET status = 'paused' WHERE name = $1", [target]);
          attempts.push(tx.attempt);
          return tx.attempt;
        },
        { isolation: 'serializable', retries },
      );
    const results = await Promise.allSettled([run('skew-x'), run('skew-y')]);
    return { results, attempts };
  }

  it('retries a real serialization failure and succeeds', async () => {
    const before = await t.registry.getSingleMetricAsString('strata_db_transaction_retries_total');
    const { results } = await writeSkew(5);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
    const finalAttempts = results.map((r) => (r as PromiseFulfilledResult<number>).value).sort();
    expect(finalAttempts[0]).toBe(1);
    expect(finalAttempts[1]).toBeGreaterThan(1);
    const after = await t.registry.getSingleMetricAsString('strata_db_transaction_retries_total');
    expect(after).toMatch(/sqlstate="40001"} [1-9]/);
    expect(after).not.toBe(before);
    const { rows } = await t.db.adminQuery<{ n: number }>("SELECT count(*)::int AS n FROM pipelines WHERE name LIKE 'skew-%' AND status = 'paused'");
    expect(rows[0]!.n).toBe(2);
  });

  it('ends in 409 TRANSACTION_CONFLICT when the retry budget is spent', async () => {
    const { results } = await writeSkew(0);
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(failed).toHaveLength(1);
    expect(failed[0]!.reason).toMatchObject({ code: '40001' });
    const mapped = toAppError(failed[0]!.reason);
    expect(mapped?.statusCode).toBe(409);
    expect(mapped?.code).toBe('TRANSACTION_CONFLICT');
  });

  it('cancels a statement past its per-transaction statement timeout (504 STATEMENT_TIMEOUT)', async () => {
    const err = await t.db
      .withTransaction(acme, (tx) => tx.query('SELECT pg_sleep(2)'), { statementTimeoutMs: 100 })
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: '57014' });
    expect(toAppError(err)).toMatchObject({ statusCode: 504, code: 'STATEMENT_TIMEOUT' });
  });

  it('gives up on a lock past the per-transaction lock timeout', async () => {
    const { rows } = await t.db.withTransaction(acme, (tx) => tx.query<{ id: string }>("INSERT INTO pipelines (name) VALUES ('locked') RETURNING id::text"));
    const id = rows[0]!.id;
    let unlock!: () => void;
    const holding = new Promise<void>((r) => (unlock = r));
    let locked!: () => void;
    const isLocked = new Promise<void>((r) => (locked = r));
    const holder = t.db.withTransaction(acme, async (tx) => {
      await tx.query('SELECT * FROM pipelines WHERE id = $1 FOR UPDATE', [id]);
      locked();
      await holding;
    });
    await isLocked;
    const err = await t.db
      .withTransaction(acme, (tx) => tx.query("UPDATE pipelines SET name = 'x' WHERE id = $1", [id]), { lockTimeoutMs: 100 })
      .catch((e: unknown) => e);
    unlock();
    await holder;
    expect(err).toMatchObject({ code: '55P03' });
    expect(toAppError(err)).toMatchObject({ statusCode: 409, code: 'LOCK_TIMEOUT' });
  });

  it('refuses writes in a read-only transaction', async () => {
    await expect(t.db.withTransaction(acme, (tx) => insert(tx, 'ro'), { readOnly: true })).rejects.toMatchObject({ code: '25006' });
    expect(await names('ro')).toEqual([]);
  });

  it('sets tenant, actor and role for the transaction only', async () => {
    const inside = await t.db.withTransaction(acme, (tx) =>
      tx.query<{ tenant: string; actor: string; role: string }>(
        "SELECT current_setting('strata.tenant_id') AS tenant, current_setting('strata.actor') AS actor, current_setting('strata.role') AS role",
      ),
    );
    expect(inside.rows[0]).toEqual({ tenant: 'acme', actor: 'test', role: 'writer' });
  });

  it('runs a single-statement tenant query in one pipelined round trip and commits it', async () => {
    const res = await t.db.tenantQuery(acme, "INSERT INTO pipelines (name) VALUES ('one-trip') RETURNING tenant_id");
    expect(res.rows[0]).toEqual({ tenant_id: 'acme' });
    expect(await names('one-trip')).toEqual(['one-trip']);
    // a failing final statement is rolled back, not committed
    await expect(t.db.tenantQuery(acme, "INSERT INTO pipelines (name, status) VALUES ('one-trip-bad', 'nope')")).rejects.toMatchObject({ code: '23514' });
    expect(await names('one-trip-bad')).toEqual([]);
  });
});
