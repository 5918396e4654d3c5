-- The sandbox of raw analyst SQL (POST /v1/sql). The statement runs in a READ ONLY tenant transaction
-- after `SET LOCAL ROLE strata_analyst`, a role that
--   * may only SELECT the tables a tenant session may read (row-level security still applies: the
--     tenant_isolation policies name no role, so they bind every role),
--   * owns nothing, cannot bypass RLS, and has no USAGE on schema strata,
--   * cannot EXECUTE pg_catalog.set_config, so nothing it runs can change strata.tenant_id, its role
--     or its timeouts.
-- The service refuses analyst SQL (503 SQL_SANDBOX_UNAVAILABLE) until all of that holds.

-- Roles are cluster-wide: created conditionally, left in place by the down migration.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'strata_analyst') THEN
    CREATE ROLE strata_analyst NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  NULL; -- another database of this cluster created it at the same moment
END
$$;

-- Tenant sessions' login role is a member of strata_tenant, which makes it (indirectly) a member of
-- strata_analyst: that is what lets it SET ROLE strata_analyst. Never the other way round:
-- strata_analyst must not inherit strata_tenant's EXECUTE on set_config.
GRANT strata_analyst TO strata_tenant;

GRANT USAGE ON SCHEMA public TO strata_analyst;

-- SELECT, and nothing else, on every table of schema public a tenant session can read. Sequences
-- are left out on purpose (nextval/setval are not for analysts). A later migration adding a tenant
-- table grants SELECT to strata_analyst itself; no default privileges, so a table meant to stay
-- hidden from tenants is never exposed to analysts by accident.
DO $$
DECLARE rel regclass;
BEGIN
  FOR rel IN
    SELECT c.oid::regclass FROM pg_class c
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
       AND has_table_privilege('strata_tenant', c.oid, 'SELECT')
     ORDER BY c.relname
  LOOP
    EXECUTE format('GRANT SELECT ON %s TO strata_analyst', rel);
  END LOOP;
END
$$;

-- set_config is EXECUTE-able by PUBLIC by default. Take it from PUBLIC and give it back to
-- strata_tenant (tenant sessions set their tenant with it), so strata_analyst alone goes without.
-- Function ACLs live in this database's pg_proc: other databases of the cluster are unaffected.
-- Only the function's owner (the bootstrap superuser) or a superuser can revoke it; run by anyone
-- else, this step is skipped with a notice and /v1/sql stays unavailable. Roles outside
-- strata_tenant that need set_config here (pg_dump as a non-superuser, say) must be granted it.
DO $$
BEGIN
  IF pg_has_role(current_user, (SELECT proowner FROM pg_proc WHERE oid = 'pg_catalog.set_config(text,text,boolean)'::regprocedure), 'USAGE') THEN
    REVOKE EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) TO strata_tenant;
  ELSE
    RAISE NOTICE 'strata_analyst sandbox incomplete: % may not revoke EXECUTE on pg_catalog.set_config from PUBLIC; run this migration as a superuser to enable POST /v1/sql', current_user;
  END IF;
END
$$;
