-- Undo 0017: no write-answer bound function; the 0004 definitions of the horizon (cluster-wide) and of the capture trigger (no tenant
-- lock), and EXECUTE back to PUBLIC on the partition functions.
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
   WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND (l.classid::bigint >> 16) = 17220;
  RETURN least(v, coalesce(k, v));
END $$;
COMMENT ON FUNCTION strata.change_horizon() IS
  'Highest change id safe to expose to id-ordered readers: read events with id <= horizon in a LATER statement (snapshot taken after this call).';

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

DROP FUNCTION strata.answer_within(bigint, bigint);
