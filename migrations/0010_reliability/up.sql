-- Reliability under faults (docs/reliability.md).
--
-- Webhook circuit breaker and fair delivery: `failures` counts consecutive failed attempts of the
-- endpoint (reset by a success); at WEBHOOK_BREAKER_THRESHOLD the breaker opens (next_attempt_at is
-- pushed out by WEBHOOK_BREAKER_COOLDOWN_MS, then one probe). `last_success_at` tells a proven
-- endpoint from an unproven or failing one: those share a small per-tenant slot allowance.
ALTER TABLE strata.webhooks
  ADD COLUMN failures int NOT NULL DEFAULT 0,
  ADD COLUMN last_success_at timestamptz;
CREATE INDEX webhooks_leased_idx ON strata.webhooks (tenant_id) WHERE lease_until IS NOT NULL;
-- A retried batch skips the events already delivered (exactly once per success, not per batch).
CREATE INDEX webhook_deliveries_change_idx ON strata.webhook_deliveries (webhook_id, change_id);

-- Idempotency-Key: the first answer to a keyed write, per tenant, for IDEMPOTENCY_TTL_S. Kept in
-- PostgreSQL, not Redis: a hung Redis must not stop (or un-protect) writes. Platform table, read and
-- written by the API through the owner connection only.
CREATE TABLE strata.idempotency_keys (
  tenant_id     text NOT NULL,            -- '' for tenantless (platform) callers
  key           text NOT NULL,
  fingerprint   text NOT NULL,            -- sha256 of method, path and body
  state         text NOT NULL CHECK (state IN ('running', 'done')),
  status        int,
  headers       jsonb,
  body          text,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  expires_at    timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_expiry_idx ON strata.idempotency_keys (expires_at);

-- Webhook creation serialises one tenant's creations (the WEBHOOK_TENANT_MAX count) with a
-- transaction-level advisory lock taken in the tenant session. 0009_analyst_sandbox took EXECUTE on
-- the advisory-lock functions away from PUBLIC; tenant sessions get back this one form. Analysts do
-- not: strata_analyst is NOINHERIT and a member of nothing, so a grant to strata_tenant never reaches it.
GRANT EXECUTE ON FUNCTION pg_advisory_xact_lock(integer, integer) TO strata_tenant;
