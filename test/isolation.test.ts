import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';

describe('tenant isolation is enforced by PostgreSQL', () => {
  let t: TestApp;
  let counts: Record<string, number>;
  beforeAll(async () => {
    t = await createTestApp({ seed: true, env: { DB_POOL_MAX: '3', DB_ACQUIRE_TIMEOUT_MS: '10000' } });
    const { rows } = await t.db.adminQuery<{ tenant_id: string; n: number }>('SELECT tenant_id, count(*)::int AS n FROM pipelines GROUP BY 1');
    counts = Object.fromEntries(rows.map((r) => [r.tenant_id, r.n]));
  });
  afterAll(() => t.close());

  it('seeds both demo tenants', () => {
    expect(counts['acme']).toBeGreaterThan(0);
    expect(counts['globex']).toBeGreaterThan(0);
  });

  it('serves only the caller tenant rows across hundreds of interleaved requests through a pool of 3', async () => {
    const headers = { acme: await t.auth('reader', 'acme'), globex: await t.auth('reader', 'globex') };
    const { rows: ids } = await t.db.adminQuery<{ id: string; tenant_id: 'acme' | 'globex' }>('SELECT id::text, tenant_id FROM pipelines');
    const requests = Array.from({ length: 400 }, (_, i) => {
      const tenant = i % 2 === 0 ? 'acme' : 'globex';
      const kind = i % 3;
      if (kind === 0) return { tenant, url: '/v1/tables/pipelines/rows?limit=100' };
      if (kind === 1) return { tenant, url: '/v1/tables/run_logs/rows?limit=50' };
      const target = ids[i % ids.length]!; // often another tenant's id: must then be 404
      return { tenant, url: `/v1/tables/pipelines/rows/${target.id}`, owner: target.tenant_id };
    });
    const responses = await Promise.all(requests.map((r) => t.app.inject({ url: r.url, headers: headers[r.tenant as 'acme' | 'globex'] })));
    let crossTenantLookups = 0;
    responses.forEach((res, i) => {
      const r = requests[i]!;
      if ('owner' in r && r.owner !== r.tenant) {
        crossTenantLookups++;
        expect(res.statusCode).toBe(404);
        return;
      }
      expect(res.statusCode, res.body).toBe(200);
      const body = res.json<{ data: Array<{ tenant_id: string }> | { tenant_id: string } }>();
      const rows = Array.isArray(body.data) ? body.data : [body.data];
      expect(rows.length).toBeGreaterThan(0);
      for (const row of rows) expect(row.tenant_id).toBe(r.tenant);
      if (r.url.startsWith('/v1/tables/pipelines/rows?')) expect(rows).toHaveLength(counts[r.tenant]!);
    });
    expect(crossTenantLookups).toBeGreaterThan(10);
    expect(t.db.borrowedCount()).toBe(0);
  });

  it('leaves no tenant on a pooled connection after release', async () => {
    await t.app.inject({ url: '/v1/tables/pipelines/rows', headers: await t.auth('reader', 'acme') });
    const pool = t.db.shardFor('acme').app;
    const leases = await Promise.all([pool.acquire(), pool.acquire(), pool.acquire()]);
    try {
      for (const { client } of leases) {
        const setting = await client.query<{ tenant: string | null; n: number }>(
          "SELECT current_setting('strata.tenant_id', true) AS tenant, (SELECT count(*)::int FROM pipelines) AS n",
        );
        expect(setting.rows[0]!.tenant ?? '').toBe('');
        expect(setting.rows[0]!.n).toBe(0);
      }
    } finally {
      for (const l of leases) l.release();
    }
  });

  it('fills tenant_id from the session on insert', async () => {
    const res = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: await t.auth('writer', 'globex'), payload: { name: 'made-by-globex' } });
    expect(res.statusCode).toBe(201);
    expect(res.json().data.tenant_id).toBe('globex');
  });

  it('refuses with 403 a row naming another tenant, and writes nothing', async () => {
    const before = await t.db.adminQuery<{ n: number }>("SELECT count(*)::int AS n FROM pipelines WHERE tenant_id = 'globex'");
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/tables/pipelines/rows',
      headers: await t.auth('writer', 'acme'),
      payload: { name: 'smuggled', tenant_id: 'globex' },
    });
    expect(res.statusCode).toBe(403);
    expect(res.json().error.code).toBe('FORBIDDEN_BY_DATABASE');
    const after = await t.db.adminQuery<{ n: number }>("SELECT count(*)::int AS n FROM pipelines WHERE tenant_id = 'globex'");
    expect(after.rows[0]!.n).toBe(before.rows[0]!.n);
    const smuggled = await t.db.adminQuery("SELECT 1 FROM pipelines WHERE name = 'smuggled'");
    expect(smuggled.rowCount).toBe(0);
  });

  it('refuses in the database itself to move a row to another tenant or touch another tenant row', async () => {
    const ctx = { tenantId: 'acme', actor: 'test', role: 'writer' as const, requestId: 'r1' };
    await expect(t.db.withTenant(ctx, (tx) => tx.query("UPDATE pipelines SET tenant_id = 'globex'"))).rejects.toMatchObject({ code: '42501' });
    const updated = await t.db.withTenant(ctx, (tx) => tx.query("UPDATE pipelines SET name = 'hijacked' WHERE tenant_id = 'globex'"));
    expect(updated.rowCount).toBe(0);
    const deleted = await t.db.withTenant(ctx, (tx) => tx.query("DELETE FROM pipelines WHERE tenant_id = 'globex'"));
    expect(deleted.rowCount).toBe(0);
    const { rows } = await t.db.adminQuery<{ n: number }>("SELECT count(*)::int AS n FROM pipelines WHERE tenant_id = 'globex' AND name = 'hijacked'");
    expect(rows[0]!.n).toBe(0);
  });

  it('refuses a foreign key to another tenant row', async () => {
    const { rows } = await t.db.adminQuery<{ id: string }>("SELECT id::text FROM pipelines WHERE tenant_id = 'globex' LIMIT 1");
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/tables/pipeline_runs/rows',
      headers: await t.auth('writer', 'acme'),
      payload: { pipeline_id: rows[0]!.id },
    });
    expect(res.statusCode).toBe(409);
    expect(res.json().error.code).toBe('FOREIGN_KEY_VIOLATION');
  });

  it('runs tenant sessions under a role that is not superuser, not owner and cannot bypass RLS', async () => {
    const ctx = { tenantId: 'acme', actor: 'test', role: 'reader' as const, requestId: 'r2' };
    const { rows } = await t.db.withTenant(ctx, (tx) =>
      tx.query<{ rolsuper: boolean; rolbypassrls: boolean; owns: number; strata: boolean }>(
        `SELECT r.rolsuper, r.rolbypassrls,
                (SELECT count(*)::int FROM pg_class c WHERE c.relowner = r.oid) AS owns,
                -- schema strata is usable for the tenant-scoped (RLS) change log, webhooks and access audit only
                EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = 'strata'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
                           AND c.relname NOT IN ('changes', 'webhooks', 'webhook_deliveries', 'captured_tables', 'compliance_audit')
                           AND has_table_privilege(c.oid, 'SELECT')) AS strata
           FROM pg_roles r WHERE r.rolname = current_user`,
      ),
    );
    expect(rows[0]).toEqual({ rolsuper: false, rolbypassrls: false, owns: 0, strata: false });
  });

  it('cannot read the platform schema from a tenant session', async () => {
    const ctx = { tenantId: 'acme', actor: 'test', role: 'admin' as const, requestId: 'r3' };
    await expect(t.db.withTenant(ctx, (tx) => tx.query('SELECT * FROM strata.api_keys'))).rejects.toMatchObject({ code: '42501' });
  });
});
