-- Undo 0018: the horizons of 0016/0017 as they were; no cluster capture function, horizon or counters.
CREATE OR REPLACE FUNCTION strata.change_horizon(p_tenant text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v bigint;
  k bigint;
  t text := coalesce(NULLIF(current_setting('strata.tenant_id', true), ''), p_tenant, '');
BEGIN
  SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO v FROM strata.changes_id_seq;
  WITH l AS MATERIALIZED (
    SELECT classid::bigint AS c, objid::bigint AS o, virtualtransaction AS vx
      FROM pg_locks
     WHERE locktype = 'advisory' AND objsubid = 2
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))
  SELECT min(((p.c & 65535) << 32) | p.o) INTO k
    FROM l p
   WHERE (p.c >> 16) = 17220
     AND EXISTS (SELECT 1 FROM l w WHERE w.vx = p.vx AND w.c = (17221::bigint << 16) AND w.o = (hashtext(t)::bigint & 4294967295));
  RETURN least(v, coalesce(k, v));
END $$;

CREATE OR REPLACE FUNCTION strata.change_horizon() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v bigint;
  k bigint;
  t text := NULLIF(current_setting('strata.tenant_id', true), '');
  db oid := (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
BEGIN
  SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO v FROM strata.changes_id_seq;
  IF t IS NULL THEN
    SELECT min(((l.classid::bigint & 65535) << 32) | l.objid::bigint) INTO k
      FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.database = db AND l.objsubid = 2 AND (l.classid::bigint >> 16) = 17220;
  ELSE
    -- one read of the lock table: the capture locks, and the lock of this tenant
    WITH l AS MATERIALIZED (
      SELECT l.virtualtransaction AS vx, l.classid, l.objid
        FROM pg_locks l
       WHERE l.locktype = 'advisory' AND l.database = db AND l.objsubid = 2
         AND ((l.classid::bigint >> 16) = 17220 OR (l.classid = (17221::bigint << 16)::oid AND l.objid = (hashtext(t)::bigint & 4294967295)::oid)))
    SELECT min(((c.classid::bigint & 65535) << 32) | c.objid::bigint) INTO k
      FROM l c
     WHERE (c.classid::bigint >> 16) = 17220
       AND c.vx IN (SELECT m.vx FROM l m WHERE m.classid = (17221::bigint << 16)::oid);
  END IF;
  RETURN least(v, coalesce(k, v));
END $$;

-- On a cluster, the capture triggers the cluster step made with the function go back to the
-- single-server trigger (as strata.enable_capture makes it: every key column), disabled, as the
-- cluster step leaves them before 0018.
DO $$
DECLARE
  r record;
BEGIN
  FOR r IN
    SELECT t.tgrelid::regclass AS rel,
           (SELECT string_agg(quote_literal(a.attname), ', ' ORDER BY k.o)
              FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(n, o), pg_attribute a
             WHERE i.indrelid = t.tgrelid AND i.indisprimary AND a.attrelid = t.tgrelid AND a.attnum = k.n) AS cols
      FROM pg_trigger t WHERE t.tgname = 'strata_capture' AND t.tgfoid = 'strata.capture_change_cluster()'::regprocedure
  LOOP
    EXECUTE format('DROP TRIGGER strata_capture ON %s', r.rel);
    EXECUTE format('CREATE TRIGGER strata_capture AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION strata.capture_change(%s)', r.rel, '''quiet'', ' || r.cols);
    EXECUTE format('ALTER TABLE %s DISABLE TRIGGER strata_capture', r.rel);
  END LOOP;
END $$;
DROP FUNCTION strata.change_horizon_cluster(text);
DROP FUNCTION strata.capture_change_cluster();
DROP TABLE strata.change_counters;
