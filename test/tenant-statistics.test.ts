/**
 * Issue 13, item 9: no planner statistics of other tenants reach a tenant. Globex holds many rows
 * of a value acme holds none (or few) of; whatever acme asks for (count=estimated, an export's
 * estimated_rows, EXPLAIN), the numbers it gets are about its own rows only.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';

const CAP = 100;
const hasHypopg = inject('extensions').hypopg.available;

describe('statistics seen by a tenant', () => {
  let t: TestApp;

  beforeAll(async () => {
    t = await createTestApp({ env: { COUNT_ESTIMATE_CAP: String(CAP), SLOW_QUERY_MS: '40', SLOW_QUERY_LOG_KEY: `test:slow-queries:${randomUUID()}` } });
    await t.db.adminQuery(`
      INSERT INTO pipelines (tenant_id, name, status)
      SELECT 'globex', 'g' || i, CASE WHEN i <= 600 THEN 'active' ELSE 'paused' END FROM generate_series(1, 2600) i;
      INSERT INTO pipelines (tenant_id, name, status)
      SELECT 'acme', 'a' || i, CASE WHEN i <= 3 THEN 'archived' ELSE 'paused' END FROM generate_series(1, 153) i;
      ANALYZE pipelines`);
  });
  afterAll(() => t.close());

  const total = async (role: 'reader' | 'platform_admin', query: string) => {
    const res = await t.app.inject({ method: 'GET', url: `/v1/tables/pipelines/rows?${query}&count=estimated&limit=1`, headers: await t.auth(role, 'acme') });
    expect(res.statusCode, res.body).toBe(200);
    return res.json<{ total: number }>().total;
  };

  it("count=estimated counts the caller's own rows, stopped at COUNT_ESTIMATE_CAP", async () => {
    // globex holds 600 active rows; acme none: the planner would have said about 600
    expect(await total('reader', 'status=eq.active')).toBe(0);
    expect(await total('reader', 'status=eq.archived')).toBe(3);
    // 150 paused rows of acme: the count stops at the cap (globex's 2,000 never show)
    expect(await total('reader', 'status=eq.paused')).toBe(CAP);
    expect(await total('reader', 'name=like.a1*')).toBe(1 + 10 + 54);
  });

  it("an export's estimated_rows counts the caller's own rows (table exports); SQL exports say -1 (not run twice)", async () => {
    const post = async (payload: Record<string, unknown>, role: 'reader' | 'analyst') => {
      const res = await t.app.inject({ method: 'POST', url: '/v1/exports', headers: await t.auth(role, 'acme'), payload });
      expect(res.statusCode, res.body).toBe(202);
      return res.json<{ estimated_rows: number }>().estimated_rows;
    };
    expect(await post({ table: 'pipelines', format: 'csv', filters: { status: 'eq.active' } }, 'reader')).toBe(0);
    expect(await post({ table: 'pipelines', format: 'ndjson', filters: { status: 'eq.archived' } }, 'reader')).toBe(3);
    expect(await post({ table: 'pipelines', format: 'csv', filters: { status: 'eq.paused' } }, 'reader')).toBe(CAP);
    // analyst SQL is not run a second time to count it: no planner figure, no doubled cost
    expect(await post({ sql: "SELECT id FROM pipelines WHERE status = 'active'", format: 'csv' }, 'analyst')).toBe(-1);
    expect(await post({ sql: 'SELECT id FROM pipelines WHERE status = $1', params: ['archived'], format: 'csv' }, 'analyst')).toBe(-1);
  });

  describe('EXPLAIN', () => {
    const explain = async (role: 'admin' | 'platform_admin', payload: Record<string, unknown>) => {
      const res = await t.app.inject({ method: 'POST', url: '/v1/admin/explain', headers: await t.auth(role, 'acme'), payload });
      expect(res.statusCode, res.body).toBe(200);
      return res.json<{ plan: unknown; redacted: boolean; summary: Record<string, unknown> }>();
    };
    const HIDDEN = ['Plan Rows', 'Plan Width', 'Total Cost', 'Startup Cost', 'Actual Rows', 'Rows Removed by Filter', 'Shared Hit Blocks', 'Heap Fetches'];

    it("gives a tenant admin the plan's shape without row estimates, costs, filter counts or buffers", async () => {
      for (const payload of [
        { sql: "SELECT * FROM pipelines WHERE status = 'active'", analyze: true },
        { sql: "SELECT * FROM pipelines WHERE status = 'active'" },
        { table: 'pipelines', query: 'status=eq.paused&order=id', analyze: true },
      ]) {
        const out = await explain('admin', payload);
        const text = JSON.stringify(out.plan);
        expect(text).toContain('"Node Type"');
        for (const field of HIDDEN) expect(text, `${field} in ${JSON.stringify(payload)}`).not.toContain(`"${field}"`);
        expect(out.redacted).toBe(true);
        expect(out.summary).toMatchObject({ total_cost: null, costliest_node: null, misestimates: null });
        for (const s of out.summary['seq_scans_on_large_tables'] as { table_rows: unknown }[]) expect(s.table_rows).toBeNull();
        // no number in the answer may grow with globex's rows
        expect(text).not.toMatch(/\b(600|2000|2600|2753)\b/);
      }
    });

    it('keeps the full plan for platform_admin', async () => {
      const out = await explain('platform_admin', { sql: "SELECT * FROM pipelines WHERE status = 'active'", analyze: true });
      const text = JSON.stringify(out.plan);
      expect(out.redacted).toBe(false);
      expect(text).toContain('"Plan Rows"');
      expect(text).toContain('"Rows Removed by Filter"');
      expect(typeof out.summary['total_cost']).toBe('number');
    });
  });

  describe('index advice', () => {
    interface Advice {
      redacted: boolean;
      suggestions: { table: string; columns: string[]; cost_before: number | null; cost_after: number | null; queries: { sql: string; cost_before: number | null }[] }[];
    }
    const advice = async (role: 'admin' | 'platform_admin') => {
      const res = await t.app.inject({ method: 'GET', url: '/v1/admin/index-advice', headers: await t.auth(role, 'acme') });
      expect(res.statusCode, res.body).toBe(200);
      return res.json<Advice>();
    };
    const onDescription = (a: Advice) => a.suggestions.find((s) => s.table === '"public"."stat_events"' && s.columns.join() === 'category');

    it.runIf(hasHypopg)("tells a tenant admin the same whether the other tenant holds 3,000 rows or 60,000 (no planner cost)", async () => {
      // a table of this test's own (the demo tables' indexes all lead with tenant_id): acme holds
      // 300 rows, globex 3,000; acme runs a slow query (the sleep: slow on any machine) on a column
      // without an index
      await t.db.adminQuery(`
        CREATE TABLE public.stat_events (
          id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
          tenant_id text NOT NULL DEFAULT NULLIF(current_setting('strata.tenant_id', true), ''),
          category int NOT NULL);
        ALTER TABLE public.stat_events ENABLE ROW LEVEL SECURITY;
        ALTER TABLE public.stat_events FORCE ROW LEVEL SECURITY;
        CREATE POLICY tenant_isolation ON public.stat_events USING (tenant_id = NULLIF(current_setting('strata.tenant_id', true), ''));
        GRANT SELECT ON public.stat_events TO strata_tenant, strata_analyst;
        INSERT INTO public.stat_events (tenant_id, category) SELECT 'acme', g % 50 FROM generate_series(1, 300) g;
        INSERT INTO public.stat_events (tenant_id, category) SELECT 'globex', g % 50 FROM generate_series(1, 3000) g;
        ANALYZE public.stat_events`);
      const res = await t.app.inject({
        method: 'POST',
        url: '/v1/sql',
        headers: await t.auth('analyst', 'acme'),
        payload: { sql: 'SELECT e.id FROM stat_events e, (SELECT pg_sleep(0.06)) s WHERE e.category = $1', params: [7] },
      });
      expect(res.statusCode, res.body).toBe(200);
      const before = await advice('admin');
      const platformBefore = onDescription(await advice('platform_admin'));
      expect(before.redacted).toBe(true);
      const mine = onDescription(before);
      expect(mine).toBeDefined();
      expect([mine!.cost_before, mine!.cost_after, mine!.queries[0]!.cost_before]).toEqual([null, null, null]);

      // globex grows twentyfold; acme's rows are as they were
      await t.db.adminQuery(`INSERT INTO stat_events (tenant_id, category) SELECT 'globex', g % 50 FROM generate_series(1, 57000) g; ANALYZE stat_events`);
      const after = await advice('admin');
      expect(after).toEqual(before);
      // the planner's figures did move (what the platform sees): the tenant's answer would have told
      const platformAfter = onDescription(await advice('platform_admin'));
      expect(platformAfter!.cost_before).toBeGreaterThan(platformBefore!.cost_before! * 2);
    });
  });
});
