/**
 * Analyst SQL and views that read past row-level security. Migration 0003 grants strata_analyst
 * SELECT on what tenant sessions can read, so a view created without `security_invoker` (it reads
 * its tables as its owner) or a materialized view (no RLS at all) granted to tenants would hand an
 * analyst every tenant's rows. /v1 and /rest/v1 do not serve such views (the schema registry leaves
 * them out); /v1/sql and SQL exports refuse to name them: 403 VIEW_NOT_SECURITY_INVOKER.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';

describe('analyst SQL and views that bypass row-level security', () => {
  let t: TestApp;
  let analyst: Record<string, string>;
  let all: number;
  let acme: number;
  beforeAll(async () => {
    t = await createTestApp({ seed: true });
    analyst = await t.auth('analyst', 'acme');
    await t.db.adminQuery('CREATE VIEW leaky_pipelines AS SELECT id, tenant_id, name FROM pipelines');
    await t.db.adminQuery('CREATE MATERIALIZED VIEW leaky_counts AS SELECT tenant_id, count(*) AS n FROM pipelines GROUP BY tenant_id');
    await t.db.adminQuery('CREATE VIEW safe_pipelines WITH (security_invoker = true) AS SELECT id, tenant_id, name FROM pipelines');
    for (const v of ['leaky_pipelines', 'leaky_counts', 'safe_pipelines']) await t.db.adminQuery(`GRANT SELECT ON ${v} TO strata_tenant, strata_analyst`);
    all = Number((await t.db.adminQuery<{ n: string }>('SELECT count(*) AS n FROM pipelines')).rows[0]!.n);
    acme = Number((await t.db.adminQuery<{ n: string }>("SELECT count(*) AS n FROM pipelines WHERE tenant_id = 'acme'")).rows[0]!.n);
    expect(acme).toBeGreaterThan(0);
    expect(all).toBeGreaterThan(acme);
  });
  afterAll(async () => t?.close());

  const sql = (text: string) => t.app.inject({ method: 'POST', url: '/v1/sql', headers: analyst, payload: { sql: text } });

  it.each([
    ['select count(*) as n from leaky_pipelines'],
    ['select * from public.leaky_pipelines'],
    ['select n from leaky_counts'],
    ['with x as (select 1) select * from x, (select name from "leaky_pipelines") y'],
    ['select (select count(*) from leaky_pipelines) as n'],
  ])('refuses %s with 403 VIEW_NOT_SECURITY_INVOKER, naming the view', async (text) => {
    const res = await sql(text);
    expect(res.statusCode, res.body).toBe(403);
    expect(res.json().error.code).toBe('VIEW_NOT_SECURITY_INVOKER');
    expect(res.json().error.message).toMatch(/leaky_/);
  });

  it('refuses the same view in a SQL export', async () => {
    const res = await t.app.inject({ method: 'POST', url: '/v1/sql/export', headers: analyst, payload: { sql: 'select name from leaky_pipelines' } });
    expect(res.statusCode, res.body).toBe(403);
    expect(res.json().error.code).toBe('VIEW_NOT_SECURITY_INVOKER');
  });

  it('serves a security_invoker view under row-level security: the tenant sees only its own rows', async () => {
    const res = await sql('select count(*)::int as n, count(*) filter (where tenant_id <> $$acme$$)::int as other from safe_pipelines');
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json<{ data: Array<{ n: number; other: number }> }>().data[0]).toEqual({ n: acme, other: 0 });
  });
});
