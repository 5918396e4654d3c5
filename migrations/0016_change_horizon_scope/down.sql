-- Back to the cluster-wide, all-tenant horizon of 0004.
DROP FUNCTION IF EXISTS strata.change_horizon(text);

CREATE OR REPLACE FUNCTION strata.change_horizon() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v bigint;
  k bigint;
BEGIN
  SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO v FROM strata.changes_id_seq;
  SELECT min(((l.classid::bigint & 65535) << 32) | l.objid::bigint) INTO k
    FROM pg_locks l
   WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND (l.classid::bigint >> 16) = 17220;
  RETURN least(v, coalesce(k, v));
END $$;

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
  -- current_user is the owner, and a tenant session's session_user never is.
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
