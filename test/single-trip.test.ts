import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { STATEMENT_CACHE_SIZE } from '../src/db/single-trip.js';
import { createTestApp, type TestApp } from './helpers/app.js';

const acme = { tenantId: 'acme', actor: 'test', role: 'writer' as const, requestId: 'st' };

describe('single-round-trip tenant statements and their per-connection statement cache', () => {
  let t: TestApp;
  beforeAll(async () => {
    // one connection, so every statement below lands on the same backend
    t = await createTestApp({ seed: true, env: { DB_POOL_MAX: '1', DB_POOL_MIN: '1' } });
  });
  afterAll(() => t.close());
  afterEach(() => {
    expect(t.db.borrowedCount()).toBe(0);
  });

  const prepared = async () => {
    const { rows } = await t.db.tenantQuery<{ n: number }>(acme, 'SELECT count(*)::int AS n FROM pg_prepared_statements');
    return rows[0]!.n;
  };

  it('applies the tenant, commits writes and forgets the settings at the end of the statement', async () => {
    const ins = await t.db.tenantQuery<{ tenant_id: string }>(acme, "INSERT INTO pipelines (name) VALUES ('st-1') RETURNING tenant_id");
    expect(ins.rows).toEqual([{ tenant_id: 'acme' }]);
    const lease = await t.db.shardFor('acme').app.acquire();
    try {
      const r = await lease.client.query<{ tenant: string | null; n: number }>(
        "SELECT current_setting('strata.tenant_id', true) AS tenant, (SELECT count(*)::int FROM pipelines WHERE name = 'st-1') AS n",
      );
      expect(r.rows[0]!.tenant ?? '').toBe('');
      expect(r.rows[0]!.n).toBe(0); // no tenant: RLS shows nothing
    } finally {
      lease.release();
    }
    expect((await t.db.adminQuery("SELECT tenant_id FROM pipelines WHERE name = 'st-1'")).rows).toEqual([{ tenant_id: 'acme' }]);
  });

  it('rolls back the statement when it fails, and the connection stays usable', async () => {
    await expect(t.db.tenantQuery(acme, "INSERT INTO pipelines (name, status) VALUES ('st-bad', 'nope')")).rejects.toMatchObject({ code: '23514' });
    await expect(t.db.tenantQuery(acme, 'SELEC 1')).rejects.toMatchObject({ code: '42601' });
    await expect(t.db.tenantQuery(acme, 'SELECT id FROM pipelines WHERE id = $1', ['not-a-number'])).rejects.toMatchObject({ code: '22P02' });
    expect((await t.db.adminQuery("SELECT 1 FROM pipelines WHERE name = 'st-bad'")).rowCount).toBe(0);
    const ok = await t.db.tenantQuery<{ n: number }>(acme, 'SELECT count(*)::int AS n FROM pipelines');
    expect(ok.rows[0]!.n).toBeGreaterThan(0);
  });

  it('enforces read-only and the statement timeout inside the single trip', async () => {
    await expect(t.db.tenantQuery(acme, "INSERT INTO pipelines (name) VALUES ('st-ro')", [], { readOnly: true })).rejects.toMatchObject({ code: '25006' });
    await expect(t.db.tenantQuery(acme, 'SELECT pg_sleep(2)', [], { statementTimeoutMs: 100 })).rejects.toMatchObject({ code: '57014' });
  });

  it('prepares each query shape once per connection and reuses it', async () => {
    const before = await prepared();
    for (let i = 0; i < 20; i++) await t.db.tenantQuery(acme, 'SELECT id FROM pipelines WHERE id = $1', [i]);
    const after = await prepared();
    expect(after - before).toBeLessThanOrEqual(1);
  });

  it('keeps at most the configured number of prepared statements, closing the least recently used', async () => {
    for (let i = 0; i < STATEMENT_CACHE_SIZE + 30; i++) await t.db.tenantQuery(acme, `SELECT ${i} AS n, id FROM pipelines WHERE id = $1`, [1]);
    // the failed statements of the previous test were closed too
    // cached statements, plus the two setup statements and the one being counted with
    expect(await prepared()).toBeLessThanOrEqual(STATEMENT_CACHE_SIZE + 3);
  });

  it('re-prepares transparently when a schema change invalidates a cached statement', async () => {
    const sql = 'SELECT * FROM pipelines WHERE name = $1';
    await t.db.tenantQuery(acme, sql, ['st-1']);
    await t.db.adminQuery('ALTER TABLE pipelines ADD COLUMN st_extra integer');
    try {
      const r = await t.db.tenantQuery<Record<string, unknown>>(acme, sql, ['st-1']);
      expect(r.rows[0]).toHaveProperty('st_extra', null);
    } finally {
      await t.db.adminQuery('ALTER TABLE pipelines DROP COLUMN st_extra');
    }
  });
});
