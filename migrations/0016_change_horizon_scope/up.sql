-- Visibility horizon scoped to this database and to one tenant.
--
-- Before: strata.change_horizon() took the smallest capture lock in pg_locks of the WHOLE cluster,
-- so a write transaction left open in any other database with change capture (another Strata
-- database, a restore target, a test or sandbox clone, whose sequence positions are lower) held back
-- every change reader here: webhooks, change streams and replays of all tenants stalled for as long
-- as that transaction ran (seen as 4-8 s pauses hitting both tenants at once in the webhook-faults
-- benchmark on a shared server). And within one database, one tenant's long write transaction held
-- back the readers of every other tenant.
--
-- Now: the locks are those of this database only, and the capture trigger also takes a shared
-- advisory lock naming the tenant it writes (classid = 17221 << 16, objid = hashtext(tenant)) on the
-- first event of that tenant in the transaction, BEFORE taking the event's id. change_horizon(t)
-- counts only capture locks of transactions that hold t's lock. Why it stays safe: a transaction
-- that writes an event of t with id e either held t's lock when pg_locks was read (so its capture
-- lock, whose key is below e, is counted) or takes it later, hence takes e later still, after the
-- sequence position V was read: e > V. A hash collision only makes the horizon lower (safe).

CREATE OR REPLACE FUNCTION strata.capture_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  o jsonb;
  n jsonb;
  r jsonb;
  key jsonb := '{}'::jsonb;
  tenant text;
  low bigint;
  col text;
BEGIN
  -- A key rotation re-encrypts values in place (same plaintext, new ciphertext): not a change. Only the
  -- owner's own connection (the rotation job's) may skip capture: in this SECURITY DEFINER function
  -- current_user is the owner, and a tenant session's session_user never is (0013).
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
  tenant := coalesce(r ->> 'tenant_id', NULLIF(current_setting('strata.tenant_id', true), ''));
  -- First event of this transaction (or of a subtransaction that rolled back its lock): announce a
  -- lower bound of our ids before taking one (see strata.change_horizon()).
  IF current_setting('strata.cdc_bound', true) IS DISTINCT FROM 'on' THEN
    SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO low FROM strata.changes_id_seq;
    PERFORM pg_advisory_xact_lock_shared(((17220::bigint << 16) | (low >> 32))::int, (low & 4294967295)::bit(32)::int);
    PERFORM set_config('strata.cdc_bound', 'on', true);
  END IF;
  -- First event of this tenant in this transaction: say which tenant we write (before taking the
  -- id), so that readers of other tenants need not wait for us (see strata.change_horizon(text)).
  IF current_setting('strata.cdc_tenant', true) IS DISTINCT FROM 't:' || coalesce(tenant, '') THEN
    PERFORM pg_advisory_xact_lock_shared(17221 << 16, hashtext(coalesce(tenant, '')));
    PERFORM set_config('strata.cdc_tenant', 't:' || coalesce(tenant, ''), true);
  END IF;
  INSERT INTO strata.changes (id, txid, tenant_id, table_name, op, pk, before, after, actor, at)
  VALUES (nextval('strata.changes_id_seq'), pg_current_xact_id(), tenant, TG_TABLE_NAME, lower(TG_OP), key, o, n,
          NULLIF(current_setting('strata.actor', true), ''), now());
  -- Opt-in: one wake-up per tenant and transaction (identical payloads fold), delivered at commit.
  -- Off by default: a notifying commit takes a cluster-wide lock until it is flushed, which
  -- serializes every notifying writer (readers poll the id sequence instead; see change-feed.ts).
  IF TG_ARGV[0] = 'notify' THEN
    PERFORM pg_notify('strata_changes', tenant);
  END IF;
  RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION strata.capture_change() FROM PUBLIC;

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

-- The horizon for the events of one tenant. In a tenant session (strata.tenant_id set) the
-- session's tenant is used whatever is passed, so a tenant learns nothing of another's writes.
CREATE FUNCTION strata.change_horizon(p_tenant text) RETURNS bigint
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
COMMENT ON FUNCTION strata.change_horizon(text) IS
  'Highest change id of the tenant safe to expose to id-ordered readers (this database; only transactions writing that tenant count): read its events with id <= horizon in a LATER statement.';
REVOKE ALL ON FUNCTION strata.change_horizon(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION strata.change_horizon(text) TO strata_tenant;
