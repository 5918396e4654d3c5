-- Undo 0009: EXECUTE goes back to PUBLIC on exactly the functions the up migration took it from,
-- and the grants it made are taken back.
DO $$
DECLARE
  r record;
  g text;
BEGIN
  PERFORM set_config('search_path', 'pg_catalog', true); -- as the up migration recorded the names
  FOR r IN SELECT fn, grantees FROM strata.sandbox_revoked ORDER BY fn LOOP
    IF to_regprocedure(r.fn) IS NULL THEN CONTINUE; END IF; -- its extension was dropped since
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', to_regprocedure(r.fn));
    FOREACH g IN ARRAY r.grantees LOOP
      IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = g) THEN
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM %I', to_regprocedure(r.fn), g);
      END IF;
    END LOOP;
  END LOOP;
END
$$;

DROP TABLE strata.sandbox_revoked;
