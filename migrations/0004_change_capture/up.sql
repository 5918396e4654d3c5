-- Change data capture (SPEC 9). Every insert, update and delete on an opted-in table becomes one row
-- of strata.changes, written by an AFTER ROW trigger in the writing transaction (rolled back with it).
--
-- Ordering. `id` comes from a sequence at write time, so across transactions id order is not commit
-- order: a transaction holding id 10 may commit after one holding id 11. Readers therefore only see
-- events at or below a visibility horizon (strata.change_horizon()): the capture trigger takes, once
-- per transaction and BEFORE its first nextval, a shared transaction-level advisory lock whose key is
-- a strict lower bound of every id that transaction will get; the horizon is the smallest such key
-- held (capped by the sequence position read before it), so no transaction still running can commit
-- an id at or below it. Reading "after id X" in id order, up to the horizon, in a snapshot taken
-- after the horizon was computed, never skips a later-committing lower id. Per row, ids follow commit
-- order because a writer waits for the row lock of the previous one.

CREATE SEQUENCE strata.changes_id_seq AS bigint CACHE 1; -- CACHE 1: ids increase across sessions

CREATE TABLE strata.changes (
  id          bigint NOT NULL DEFAULT nextval('strata.changes_id_seq'),
  txid        xid8 NOT NULL,
  tenant_id   text NOT NULL,
  table_name  text NOT NULL,
  op          text NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
  pk          jsonb NOT NULL,
  before      jsonb,
  after       jsonb,
  actor       text,
  at          timestamptz NOT NULL,
  PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
ALTER SEQUENCE strata.changes_id_seq OWNED BY strata.changes.id;

CREATE INDEX changes_id_idx ON strata.changes (id);
CREATE INDEX changes_tenant_idx ON strata.changes (tenant_id, id);
CREATE INDEX changes_row_idx ON strata.changes (tenant_id, table_name, pk, id);
CREATE INDEX changes_txid_idx ON strata.changes (txid);

-- Rows whose day has no partition yet land here instead of failing the user's write; the
-- maintenance function moves them into their day's partition when it creates it.
CREATE TABLE strata.changes_default PARTITION OF strata.changes DEFAULT;

-- Tenants read their own events through the API's tenant session; only the capture trigger (as the
-- migration owner) writes. No INSERT/UPDATE/DELETE for strata_tenant: events cannot be forged.
ALTER TABLE strata.changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE strata.changes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON strata.changes FOR SELECT TO strata_tenant
  USING (tenant_id = NULLIF(current_setting('strata.tenant_id', true), ''));
-- The owner (capture trigger, dispatcher, backup replay) reads and writes every tenant's events.
CREATE POLICY owner_all ON strata.changes TO CURRENT_USER USING (true) WITH CHECK (true);
GRANT USAGE ON SCHEMA strata TO strata_tenant;
GRANT SELECT ON strata.changes TO strata_tenant;

-- Partition management: one partition per UTC day, named changes_pYYYYMMDD.
CREATE FUNCTION strata.ensure_change_partition(day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  name text := 'changes_p' || to_char(day, 'YYYYMMDD');
  lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
  hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
  IF to_regclass('strata.' || name) IS NOT NULL THEN RETURN false; END IF;
  EXECUTE format('CREATE TABLE strata.%I (LIKE strata.changes INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
  -- events that fell into the default partition for that day move to their own partition
  EXECUTE format('WITH moved AS (DELETE FROM strata.changes_default WHERE at >= $1 AND at < $2 RETURNING *) INSERT INTO strata.%I SELECT * FROM moved', name) USING lo, hi;
  EXECUTE format('ALTER TABLE strata.changes ATTACH PARTITION strata.%I FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
  RETURN true;
END $$;

/**
 * Create the partitions of today and the next `days_ahead` days, and drop those entirely older than
 * `retention_days` (0: keep everything). Returns how many were created and dropped.
 */
CREATE FUNCTION strata.maintain_change_partitions(days_ahead int, retention_days int, OUT created int, OUT dropped int)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  today date := (now() AT TIME ZONE 'UTC')::date;
  part record;
BEGIN
  created := 0;
  dropped := 0;
  FOR i IN 0 .. greatest(days_ahead, 0) LOOP
    IF strata.ensure_change_partition(today + i) THEN created := created + 1; END IF;
  END LOOP;
  IF retention_days > 0 THEN
    FOR part IN
      SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
       WHERE i.inhparent = 'strata.changes'::regclass AND c.relname ~ '^changes_p[0-9]{8}$'
         AND to_date(substr(c.relname, 10), 'YYYYMMDD') + 1 <= today - retention_days
    LOOP
      EXECUTE format('DROP TABLE strata.%I', part.relname);
      dropped := dropped + 1;
    END LOOP;
    DELETE FROM strata.changes_default WHERE at < (today - retention_days)::timestamp AT TIME ZONE 'UTC';
  END IF;
END $$;

SELECT strata.maintain_change_partitions(7, 0);

-- Advisory lock namespace of capturing transactions: classid = 0x4344 ('CD') << 16 | id bits 32..47,
-- objid = id bits 0..31 (two-int4 form, objsubid 2).
--
-- The horizon H: no transaction running now, or starting later, can commit an id <= H. A reader calls this in one statement and reads `id <= H` in a LATER
-- statement (a later snapshot: READ COMMITTED, or a transaction begun after it): every event with
-- id <= H is then committed-and-visible or will never exist. Why: V = the sequence's position, read
-- first; then K = the smallest lock key held. A transaction holding ids <= min(K, V) and still
-- running when the reader's snapshot is taken either held its lock when pg_locks was read (so its
-- key, below its ids, is in K), or took it after V was read, so its key (the sequence position then)
-- is >= V and its ids are > V.
CREATE FUNCTION strata.change_horizon() RETURNS bigint
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
REVOKE ALL ON FUNCTION strata.change_horizon() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION strata.change_horizon() TO strata_tenant;

-- The capture trigger. TG_ARGV[0] is 'notify' or 'quiet'; the rest are the table's primary-key columns
-- (both set by enable_capture).
CREATE FUNCTION strata.capture_change() RETURNS trigger
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
REVOKE ALL ON FUNCTION strata.capture_change() FROM PUBLIC;

/**
 * Opt a table of schema public in: (re)creates its capture trigger with its current primary key.
 * `notify` adds a pg_notify per transaction (lower latency for LISTENers, at a cost to write throughput).
 */
CREATE FUNCTION strata.enable_capture(rel regclass, notify boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  cols text[];
BEGIN
  IF (SELECT relnamespace FROM pg_class WHERE oid = rel) <> 'public'::regnamespace THEN
    RAISE EXCEPTION 'change capture is for tables of schema public (got %)', rel USING ERRCODE = '22023';
  END IF;
  SELECT array_agg(a.attname ORDER BY k.ord) INTO cols
    FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(attnum, ord), pg_attribute a
   WHERE i.indrelid = rel AND i.indisprimary AND a.attrelid = rel AND a.attnum = k.attnum;
  IF cols IS NULL THEN
    RAISE EXCEPTION 'table % has no primary key; change capture needs one', rel USING ERRCODE = '22023';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = rel AND attname = 'tenant_id' AND NOT attisdropped) THEN
    RAISE EXCEPTION 'table % has no tenant_id column; change capture needs one', rel USING ERRCODE = '22023';
  END IF;
  EXECUTE format('DROP TRIGGER IF EXISTS strata_capture ON %s', rel);
  EXECUTE format('CREATE TRIGGER strata_capture AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION strata.capture_change(%s)',
                 rel, (SELECT string_agg(quote_literal(c), ', ') FROM unnest(array_prepend(CASE WHEN notify THEN 'notify' ELSE 'quiet' END, cols)) c));
END $$;

/** Opt a table out: its writes are no longer captured (its past events stay). */
CREATE FUNCTION strata.disable_capture(rel regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  EXECUTE format('DROP TRIGGER IF EXISTS strata_capture ON %s', rel);
END $$;
REVOKE ALL ON FUNCTION strata.enable_capture(regclass, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION strata.disable_capture(regclass) FROM PUBLIC;

/** The captured tables (those with the capture trigger). */
CREATE VIEW strata.captured_tables AS
  SELECT c.relname AS table_name FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
   WHERE t.tgname = 'strata_capture' AND c.relnamespace = 'public'::regnamespace;
GRANT SELECT ON strata.captured_tables TO strata_tenant;

SELECT strata.enable_capture(t::regclass) FROM unnest(ARRAY['public.pipelines', 'public.pipeline_runs', 'public.run_steps', 'public.run_logs']) t;

-- Webhooks: per tenant, delivered by one delivery loop per webhook (lease below), in id order per lane.
CREATE TABLE strata.webhooks (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id        text NOT NULL DEFAULT NULLIF(current_setting('strata.tenant_id', true), '') REFERENCES strata.tenants (id) ON DELETE CASCADE,
  url              text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2048),
  tables           text[] NOT NULL DEFAULT '{}',  -- empty: every captured table
  ops              text[] NOT NULL DEFAULT '{insert,update,delete}' CHECK (ops <@ '{insert,update,delete}' AND cardinality(ops) > 0),
  -- delivery lanes: events of one row (default), of one table, or all of the webhook, in id order
  ordering         text NOT NULL DEFAULT 'row' CHECK (ordering IN ('row', 'table', 'webhook')),
  secret           text NOT NULL,
  active           boolean NOT NULL DEFAULT true,
  -- delivery state: last event acknowledged, retries of the next one, lease of the delivery loop
  cursor           bigint NOT NULL DEFAULT 0,
  attempt          int NOT NULL DEFAULT 0,
  next_attempt_at  timestamptz NOT NULL DEFAULT now(),
  lease_owner      text,
  lease_until      timestamptz,
  created_by       text NOT NULL DEFAULT coalesce(NULLIF(current_setting('strata.actor', true), ''), 'unknown'),
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_tenant_idx ON strata.webhooks (tenant_id, created_at);

CREATE TABLE strata.webhook_deliveries (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  webhook_id   uuid NOT NULL REFERENCES strata.webhooks (id) ON DELETE CASCADE,
  tenant_id    text NOT NULL,
  change_id    bigint NOT NULL,
  attempt      int NOT NULL,
  status       text NOT NULL CHECK (status IN ('succeeded', 'failed', 'dead')),
  http_status  int,
  error        text,
  duration_ms  int NOT NULL,
  replay       boolean NOT NULL DEFAULT false,
  at           timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX webhook_deliveries_webhook_idx ON strata.webhook_deliveries (webhook_id, id);

ALTER TABLE strata.webhooks ENABLE ROW LEVEL SECURITY;
ALTER TABLE strata.webhooks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON strata.webhooks TO strata_tenant
  USING (tenant_id = NULLIF(current_setting('strata.tenant_id', true), ''))
  WITH CHECK (tenant_id = NULLIF(current_setting('strata.tenant_id', true), ''));
CREATE POLICY owner_all ON strata.webhooks TO CURRENT_USER USING (true) WITH CHECK (true);
ALTER TABLE strata.webhook_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE strata.webhook_deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON strata.webhook_deliveries FOR SELECT TO strata_tenant
  USING (tenant_id = NULLIF(current_setting('strata.tenant_id', true), ''));
CREATE POLICY owner_all ON strata.webhook_deliveries TO CURRENT_USER USING (true) WITH CHECK (true);

-- The secret is written by tenant sessions (creation) but read back only by the delivery workers.
GRANT SELECT (id, tenant_id, url, tables, ops, ordering, active, cursor, attempt, next_attempt_at, created_by, created_at, updated_at),
      INSERT (url, tables, ops, ordering, secret, active, cursor),
      UPDATE (url, tables, ops, ordering, active, updated_at, cursor, attempt, next_attempt_at),
      DELETE
   ON strata.webhooks TO strata_tenant;
GRANT SELECT ON strata.webhook_deliveries TO strata_tenant;
