-- Undo 0017: no write-answer bound function; 0016's database-wide horizon without a tenant, and
-- EXECUTE back to PUBLIC on the partition functions.
-- (the owner's grant is re-made after PUBLIC's, so the ACL reads as the default one did)
REVOKE ALL ON FUNCTION strata.maintain_change_partitions(int, int) FROM CURRENT_USER;
REVOKE ALL ON FUNCTION strata.ensure_change_partition(date) FROM CURRENT_USER;
GRANT EXECUTE ON FUNCTION strata.maintain_change_partitions(int, int) TO PUBLIC, CURRENT_USER;
GRANT EXECUTE ON FUNCTION strata.ensure_change_partition(date) TO PUBLIC, CURRENT_USER;

CREATE OR REPLACE FUNCTION strata.change_horizon() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v bigint;
  k bigint;
BEGIN
  SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO v FROM strata.changes_id_seq;
  SELECT min(((l.classid::bigint & 65535) << 32) | l.objid::bigint) INTO k
    FROM pg_locks l
   WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND (l.classid::bigint >> 16) = 17220
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
  RETURN least(v, coalesce(k, v));
END $$;
COMMENT ON FUNCTION strata.change_horizon() IS
  'Highest change id safe to expose to id-ordered readers: read events with id <= horizon in a LATER statement (snapshot taken after this call).';


DROP FUNCTION strata.answer_within(bigint, bigint);
