/**
 * The benchmark database: Strata's migrations plus the anchorbench dataset (`items`, 1,000,000
 * rows, 100 tenants, tenant_id = id % 100 + 1) with the anchor's roles, so the bare Fastify + pg
 * reference servers and Strata read the very same table. Built once, reused while it holds 1M rows.
 */
import pg from 'pg';
import pino from 'pino';
import { ensureAppRole } from '../src/db/database.js';
import { createMigrator, defaultMigrationsDir } from '../src/db/migrations/index.js';
import { SEED_SQL } from '../src/db/seed.js';

export const BENCH_ROWS = 1_000_000;
export const BENCH_TENANTS = 100;
export const APP_ROLE = 'strata_app_bench';
export const APP_PASSWORD = 'strata-bench';

const ITEMS_SQL = `
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anchor_owner') THEN CREATE ROLE anchor_owner LOGIN PASSWORD 'anchor'; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anchor_app') THEN CREATE ROLE anchor_app LOGIN PASSWORD 'anchor'; END IF;
END $$;
GRANT ALL ON SCHEMA public TO anchor_owner;
GRANT USAGE ON SCHEMA public TO anchor_app;
DROP TABLE IF EXISTS public.items;
SET ROLE anchor_owner;
CREATE TABLE public.items (
  id bigserial PRIMARY KEY,
  tenant_id int NOT NULL,
  name text,
  payload jsonb,
  created_at timestamptz DEFAULT now()
);
INSERT INTO public.items (id, tenant_id, name, payload)
SELECT g, (g % 100) + 1, 'item-' || g,
       jsonb_build_object('sku', md5(g::text), 'qty', g % 1000, 'price', round((g % 10000) / 100.0, 2),
                          'tags', jsonb_build_array('t' || (g % 7), 't' || (g % 11)))
FROM generate_series(1, ${BENCH_ROWS}) g;
SELECT setval('items_id_seq', ${BENCH_ROWS});
CREATE INDEX items_tenant_id_idx ON public.items (tenant_id);
ALTER TABLE public.items ENABLE ROW LEVEL SECURITY;
-- the anchor's policy, for its reference server (B-rls)
CREATE POLICY tenant_isolation ON public.items TO anchor_app
  USING (tenant_id = current_setting('app.tenant_id')::int);
-- Strata's policy, for tenant sessions
CREATE POLICY strata_tenant_isolation ON public.items TO strata_tenant
  USING (tenant_id = NULLIF(current_setting('strata.tenant_id', true), '')::int)
  WITH CHECK (tenant_id = NULLIF(current_setting('strata.tenant_id', true), '')::int);
GRANT SELECT ON public.items TO anchor_app;
GRANT SELECT ON public.items TO strata_tenant;
RESET ROLE;
ANALYZE public.items;
`;

/** Create (if missing) and prepare the bench database; returns its owner URL. */
export async function prepareBenchDatabase(serverUrl: string, database: string, log: (m: string) => void): Promise<string> {
  const server = new pg.Client({ connectionString: serverUrl });
  await server.connect();
  try {
    const { rowCount } = await server.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (!rowCount) {
      log(`creating database ${database}`);
      await server.query(`CREATE DATABASE ${pg.escapeIdentifier(database)}`);
    }
  } finally {
    await server.end();
  }
  const u = new URL(serverUrl);
  u.pathname = `/${database}`;
  const url = u.toString();
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  try {
    await createMigrator({ pool, dir: defaultMigrationsDir(), log: pino({ level: 'silent' }) }).up();
    const c = await pool.connect();
    try {
      await ensureAppRole(c, APP_ROLE, APP_PASSWORD);
      const exists = (await c.query("SELECT to_regclass('public.items') IS NOT NULL AS ok")).rows[0] as { ok: boolean };
      const rows = exists.ok ? (await c.query<{ n: string }>('SELECT count(*) AS n FROM public.items')).rows : [{ n: '0' }];
      const policy = await c.query("SELECT 1 FROM pg_policies WHERE tablename = 'items' AND policyname = 'strata_tenant_isolation'");
      if (Number(rows[0]?.n) !== BENCH_ROWS || !policy.rowCount) {
        log(`building items (${BENCH_ROWS.toLocaleString()} rows, ${BENCH_TENANTS} tenants); takes about a minute`);
        await c.query(ITEMS_SQL);
      }
      // Migration 0003 revokes set_config from PUBLIC (the analyst sandbox); the anchors' reference
      // servers set their tenant with it, so their role gets it back here.
      await c.query('GRANT EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) TO anchor_app');
      await c.query(
        `INSERT INTO strata.tenants (id, name) SELECT g::text, 'bench tenant ' || g FROM generate_series(1, ${BENCH_TENANTS}) g ON CONFLICT DO NOTHING`,
      );
      // Demo pipelines for tenant 1, for the relationship benchmark (defaults take the session tenant).
      const seeded = await c.query("SELECT 1 FROM pipelines WHERE tenant_id = '1' LIMIT 1");
      if (!seeded.rowCount) {
        await c.query('BEGIN');
        await c.query("SELECT set_config('strata.tenant_id', '1', true)");
        for (const sql of SEED_SQL) await c.query(sql);
        await c.query('COMMIT');
      }
      await c.query('ANALYZE pipelines, pipeline_runs, run_steps, run_logs');
      await c.query('CHECKPOINT');
    } finally {
      c.release();
    }
  } finally {
    await pool.end();
  }
  return url;
}
