-- Change capture on a Citus cluster (issue 14). On one server nothing here is used: the capture
-- trigger of 0004/0016 and the horizon of 0017 stay as they are.
--
-- On a cluster the cluster step (src/services/cluster/distribute.ts) distributes strata.changes and
-- strata.change_counters by tenant_id, colocated with the tenant tables: a tenant's events sit in
-- the same shard group, on the same worker, as the tenant's rows, and move with them. The capture
-- trigger then runs on the worker holding the shard and writes only colocated tables, in the row's
-- own transaction (Citus executes those writes locally on that worker).
--
-- Ids. One sequence for all nodes would be a round trip to the coordinator inside every captured
-- write, and per-node sequences go backwards when a tenant moves to another node. So change ids are
-- counted per tenant: strata.change_counters holds each tenant's last id, and the trigger takes the
-- next one with an upsert of that row. The row lock is held until the writing transaction ends, so
-- a tenant's capturing transactions take their ids one after the other and commit in id order: a
-- reader that sees id n sees every id below it that will ever exist. The visibility horizon is then
-- simply the tenant's committed counter (strata.change_horizon_cluster), with no advisory locks and
-- nothing to compute across nodes. Ids are unique and increasing per tenant (the only scope any
-- reader uses: change feed, history, undo and webhooks are per tenant), not across tenants. The
-- cost: a tenant's capturing write transactions are serialized from their first captured write to
-- their commit (other tenants are not affected).
--
-- txid is the transaction id of the worker that wrote the event: events of one transaction share
-- it; it is not comparable across nodes.

CREATE TABLE strata.change_counters (
  tenant_id  text PRIMARY KEY,
  last_id    bigint NOT NULL
);
COMMENT ON TABLE strata.change_counters IS
  'Cluster mode: the last change id of each tenant (ids are per tenant on a cluster). Written only by strata.capture_change_cluster().';

-- The capture trigger on a cluster. TG_ARGV[0] is the table's name (on a worker TG_TABLE_NAME is the
-- shard's, e.g. pipelines_102008), the rest its primary-key columns other than tenant_id.
CREATE FUNCTION strata.capture_change_cluster() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  o jsonb;
  n jsonb;
  r jsonb;
  key jsonb := '{}'::jsonb;
  tenant text;
  next_id bigint;
  col text;
BEGIN
  IF TG_OP = 'UPDATE' AND session_user = current_user AND current_setting('strata.rekey', true) = 'on' THEN
    RETURN NULL;
  END IF;
  IF TG_OP <> 'INSERT' THEN o := to_jsonb(OLD); END IF;
  IF TG_OP <> 'DELETE' THEN n := to_jsonb(NEW); END IF;
  r := coalesce(n, o);
  FOR i IN 1 .. TG_NARGS - 1 LOOP
    col := TG_ARGV[i];
    key := key || jsonb_build_object(col, r -> col);
  END LOOP;
  tenant := r ->> 'tenant_id';
  -- the tenant's next id; the row stays locked until this transaction ends (ids in commit order)
  INSERT INTO strata.change_counters AS k (tenant_id, last_id) VALUES (tenant, 1)
    ON CONFLICT (tenant_id) DO UPDATE SET last_id = k.last_id + 1
    RETURNING k.last_id INTO next_id;
  INSERT INTO strata.changes (id, txid, tenant_id, table_name, op, pk, before, after, actor, at)
  VALUES (next_id, pg_current_xact_id(), tenant, TG_ARGV[0], lower(TG_OP), key, o, n,
          NULLIF(current_setting('strata.actor', true), ''), now());
  RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION strata.capture_change_cluster() FROM PUBLIC;

-- The horizon of one tenant on a cluster: its committed counter (see above). In a tenant session the
-- session's tenant is used whatever is passed, as strata.change_horizon(text) does.
CREATE FUNCTION strata.change_horizon_cluster(p_tenant text) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  t text := coalesce(NULLIF(current_setting('strata.tenant_id', true), ''), p_tenant, '');
  h bigint;
BEGIN
  SELECT k.last_id INTO h FROM strata.change_counters k WHERE k.tenant_id = t;
  RETURN coalesce(h, 0);
END $$;
COMMENT ON FUNCTION strata.change_horizon_cluster(text) IS
  'Cluster mode: highest change id of the tenant safe to expose (ids are per tenant and committed in id order).';
REVOKE ALL ON FUNCTION strata.change_horizon_cluster(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION strata.change_horizon_cluster(text) TO strata_tenant;

-- The horizons of 0016/0017, unchanged on one server, answer from the counters on a cluster (the
-- distributed strata.change_counters is the sign of it), so every reader keeps calling them.
CREATE OR REPLACE FUNCTION strata.change_horizon(p_tenant text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v bigint;
  k bigint;
  t text := coalesce(NULLIF(current_setting('strata.tenant_id', true), ''), p_tenant, '');
BEGIN
  -- cluster mode (0018): ids are per tenant and committed in id order; the horizon is the counter
  IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = 'strata.change_counters'::regclass) THEN
      RETURN strata.change_horizon_cluster(t);
    END IF;
  END IF;
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
  -- cluster mode (0018): ids are per tenant and committed in id order; the horizon is the counter
  -- (without a tenant: the highest of every tenant's, a bound no reader relies on across tenants)
  IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = 'strata.change_counters'::regclass) THEN
      IF t IS NULL THEN RETURN (SELECT coalesce(max(k.last_id), 0) FROM strata.change_counters k); END IF;
      RETURN strata.change_horizon_cluster(t);
    END IF;
  END IF;
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
