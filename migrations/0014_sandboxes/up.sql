-- Tenant sandboxes (docs/testing.md#tenant-sandboxes): one tenant's rows copied into a database of
-- their own, served by Strata when a request names the sandbox (X-Strata-Sandbox or a `sandbox`
-- claim), dropped on DELETE or when expired. Platform table: read and written through the owner
-- connection only; tenant sessions cannot see schema strata.
CREATE TABLE strata.sandboxes (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id   text NOT NULL REFERENCES strata.tenants (id) ON DELETE CASCADE,
  name        text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
  -- the database holding the copy: strata_sbx_ + the id's hex, never from input
  database    text NOT NULL UNIQUE CHECK (database ~ '^strata_sbx_[0-9a-f]{32}$'),
  status      text NOT NULL DEFAULT 'creating' CHECK (status IN ('creating', 'ready', 'failed')),
  anonymized  boolean NOT NULL DEFAULT false,
  job_id      text,
  error       text,
  tables      int,
  rows        bigint,
  created_by  text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  ready_at    timestamptz,
  expires_at  timestamptz NOT NULL,
  UNIQUE (tenant_id, name)
);
CREATE INDEX sandboxes_expiry_idx ON strata.sandboxes (expires_at);
