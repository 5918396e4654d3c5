REVOKE EXECUTE ON FUNCTION pg_advisory_xact_lock(integer, integer) FROM strata_tenant;
DROP TABLE IF EXISTS strata.idempotency_keys;
DROP INDEX IF EXISTS strata.webhook_deliveries_change_idx;
DROP INDEX IF EXISTS strata.webhooks_leased_idx;
ALTER TABLE strata.webhooks DROP COLUMN IF EXISTS failures, DROP COLUMN IF EXISTS last_success_at;
