-- Undo 0003 in this database. The role strata_analyst and its membership in strata_tenant are
-- cluster-wide and shared with other databases, so they stay (as 0001 leaves strata_tenant).
DO $$
BEGIN
  IF pg_has_role(current_user, (SELECT proowner FROM pg_proc WHERE oid = 'pg_catalog.set_config(text,text,boolean)'::regprocedure), 'USAGE') THEN
    GRANT EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) TO PUBLIC;
    REVOKE EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) FROM strata_tenant;
  END IF;
END
$$;

DO $$
DECLARE rel regclass;
BEGIN
  FOR rel IN
    SELECT c.oid::regclass FROM pg_class c
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
     ORDER BY c.relname
  LOOP
    EXECUTE format('REVOKE ALL ON %s FROM strata_analyst', rel);
  END LOOP;
END
$$;

REVOKE USAGE ON SCHEMA public FROM strata_analyst;
