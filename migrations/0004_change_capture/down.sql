DROP TABLE IF EXISTS strata.webhook_deliveries;
DROP TABLE IF EXISTS strata.webhooks;
DROP VIEW IF EXISTS strata.captured_tables;
DO $$
DECLARE rel regclass;
BEGIN
  FOR rel IN SELECT t.tgrelid::regclass FROM pg_trigger t WHERE t.tgname = 'strata_capture' LOOP
    EXECUTE format('DROP TRIGGER strata_capture ON %s', rel);
  END LOOP;
END
$$;
DROP FUNCTION IF EXISTS strata.enable_capture(regclass, boolean);
DROP FUNCTION IF EXISTS strata.disable_capture(regclass);
DROP FUNCTION IF EXISTS strata.capture_change();
DROP FUNCTION IF EXISTS strata.change_horizon();
DROP FUNCTION IF EXISTS strata.maintain_change_partitions(int, int);
DROP FUNCTION IF EXISTS strata.ensure_change_partition(date);
DROP TABLE IF EXISTS strata.changes;
REVOKE USAGE ON SCHEMA strata FROM strata_tenant;
