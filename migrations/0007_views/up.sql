-- Result cache opt-in and materialized views (SPEC 6, 11).
--
-- strata.cache_tables: tables whose rows-API reads are cached in Redis (platform-wide opt-in; the
-- CACHE_TABLES variable adds more without a row here).
--
-- Materialized views have no row-level security, so each one lives in schema strata_matviews, which
-- tenant sessions cannot even look into, and is read only through a security_barrier view of the
-- same name in schema strata_views that keeps the rows of the session's tenant:
--   tenant_id::text = NULLIF(current_setting('strata.tenant_id', true), '')
-- The barrier view runs with its owner's rights on the matview; tenant sessions get SELECT on the
-- barrier view alone (granted when a view is created).
CREATE TABLE strata.cache_tables (
  table_name  text PRIMARY KEY CHECK (table_name ~ '^[A-Za-z_][A-Za-z0-9_$]{0,62}$'),
  enabled_by  text NOT NULL,
  enabled_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE strata.views (
  name               text PRIMARY KEY CHECK (name ~ '^[a-z_][a-z0-9_]{0,62}$'),
  sql                text NOT NULL,
  refresh_cron       text,
  after_writes_to    text[] NOT NULL DEFAULT '{}',
  debounce_ms        integer NOT NULL DEFAULT 1000 CHECK (debounce_ms BETWEEN 0 AND 86400000),
  unique_key         text[],
  created_by         text NOT NULL,
  created_at         timestamptz NOT NULL DEFAULT now(),
  last_refreshed_at  timestamptz,
  last_refresh_ms    integer,
  last_refresh_mode  text CHECK (last_refresh_mode IN ('concurrently', 'plain')),
  last_job_id        text,
  last_error         text,
  -- last write to a table of after_writes_to: a refresh that started before it re-runs
  last_write_at      timestamptz,
  refresh_count      integer NOT NULL DEFAULT 0
);
CREATE INDEX views_after_writes_idx ON strata.views USING gin (after_writes_to);

CREATE SCHEMA IF NOT EXISTS strata_matviews;
REVOKE ALL ON SCHEMA strata_matviews FROM PUBLIC;
CREATE SCHEMA IF NOT EXISTS strata_views;
REVOKE ALL ON SCHEMA strata_views FROM PUBLIC;
GRANT USAGE ON SCHEMA strata_views TO strata_tenant;
