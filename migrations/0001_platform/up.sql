-- The platform's own schema. Tenant sessions (role strata_tenant) get no access to it.
CREATE SCHEMA IF NOT EXISTS strata;

-- Group role every tenant session runs under: not an owner, no BYPASSRLS, no login.
-- Roles are cluster-wide, so creation is conditional and the down migration leaves it.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'strata_tenant') THEN
    CREATE ROLE strata_tenant NOLOGIN NOBYPASSRLS;
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  NULL; -- another database of this cluster created it at the same moment
END
$$;
REVOKE ALL ON SCHEMA strata FROM PUBLIC;

CREATE TABLE strata.tenants (
  id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$'),
  name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE strata.api_keys (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id     text NOT NULL REFERENCES strata.tenants (id) ON DELETE CASCADE,
  role          text NOT NULL CHECK (role IN ('reader', 'writer', 'analyst', 'admin', 'platform_admin')),
  name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  -- sha256 of the whole key; the key itself is shown once and never stored.
  key_hash      bytea NOT NULL UNIQUE,
  created_by    text NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  expires_at    timestamptz,
  revoked_at    timestamptz,
  last_used_at  timestamptz
);
CREATE INDEX api_keys_tenant_idx ON strata.api_keys (tenant_id, created_at DESC);
CREATE INDEX api_keys_expiry_idx ON strata.api_keys (expires_at) WHERE revoked_at IS NULL AND expires_at IS NOT NULL;
