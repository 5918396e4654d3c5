-- Issue 13: what change capture's platform functions reveal to, and allow, a tenant.
--
-- 1. strata.maintain_change_partitions and strata.ensure_change_partition are SECURITY DEFINER (they
--    create, attach and drop partitions of strata.changes as its owner) and were executable by PUBLIC:
--    any role with USAGE on schema strata (strata_tenant has it) could create partitions or, with a
--    retention, drop every tenant's change history. Only the maintenance job calls them, on the
--    migration owner's connection (the owner keeps EXECUTE: owners are never revoked by PUBLIC).
--
-- 2. strata.change_horizon() read pg_locks for the whole cluster: an advisory lock of the capture
--    namespace taken in ANY database of the cluster held this database's horizon back, and one
--    tenant's open write transaction held back every other tenant's change feed (a tenant could tell,
--    from its own feed's delay, when another tenant had a transaction open, and stall it). Now:
--    - only locks of this database count (pg_locks.database);
--    - the capture trigger also takes, once per transaction and tenant and BEFORE that tenant's first
--      id, a shared transaction-level advisory lock naming the tenant (0016: key 17221 << 16,
--      hashtext(tenant)); strata.change_horizon(tenant) of 0016 counts the same;
--    - a tenant session's horizon is the smallest capture lock key held by a transaction that also
--      holds its tenant's lock (same virtualtransaction). Transactions writing only other tenants'
--      events never move it (a hash collision, 1 in 2^32, only makes it more careful).
--    Why it stays safe: V, the sequence's position, is read first, then pg_locks. A transaction still
--    running that commits an event of tenant T with id <= V took its id before V was read, so it took
--    T's lock and its capture lock before that, holds both until it ends, and its capture key (below
--    all its ids) is in the minimum. Without a tenant (the owner's delivery loops) the horizon is the
--    database-wide one, as before.

REVOKE ALL ON FUNCTION strata.maintain_change_partitions(int, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION strata.ensure_change_partition(date) FROM PUBLIC;

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
COMMENT ON FUNCTION strata.change_horizon() IS
  'Highest change id safe to expose to id-ordered readers of the session''s tenant (every tenant without one): read events with id <= horizon in a LATER statement (snapshot taken after this call).';


-- 3. Byte bound of a write's answer (rows API and /rest/v1 writes returning their rows): the write
--    statement is `WITH strata_w AS (<dml> RETURNING <row JSON> AS j ...) SELECT ... FROM strata_w
--    WHERE strata.answer_within(<sum of the rows' JSON bytes>, <bound>)`. Past the bound this raises
--    SQLSTATE ST413 before any row is sent, and the statement fails: the transaction rolls back and
--    nothing is written (the service answers 413 RESPONSE_TOO_LARGE). Only tenant sessions need it.
CREATE FUNCTION strata.answer_within(bytes bigint, max_bytes bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF bytes > max_bytes THEN
    RAISE EXCEPTION 'the rows this statement returns come to % bytes of JSON, more than one answer may carry (% bytes)', bytes, max_bytes
      USING ERRCODE = 'ST413', DETAIL = max_bytes::text;
  END IF;
  RETURN true;
END $$;
REVOKE ALL ON FUNCTION strata.answer_within(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION strata.answer_within(bigint, bigint) TO strata_tenant;
