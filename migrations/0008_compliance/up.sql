-- Encryption and compliance (SPEC 12): declared sensitive columns and the tenants' wrapped keys.
--
-- strata.compliance_columns: the schema-wide policy of a column (tables are shared by every tenant,
-- so the declaration is the platform's): encrypted (with a blind index column for equality filters
-- when searchable), its PII category, and the masking rule per role. Every API process and worker
-- reads the same declarations, and migrations and backups carry them.
--
-- strata.tenant_keys: each tenant's data keys (kind 'data', one per version; values name the version
-- that encrypted them) and blind-index key (kind 'index'), wrapped by a master key of
-- ENCRYPTION_MASTER_KEYS. Never readable by tenant sessions (schema strata is closed to them).
CREATE TABLE strata.compliance_columns (
  table_name       text NOT NULL CHECK (table_name ~ '^[A-Za-z_][A-Za-z0-9_$]{0,62}$'),
  column_name      text NOT NULL CHECK (column_name ~ '^[A-Za-z_][A-Za-z0-9_$]{0,62}$'),
  encrypted        boolean NOT NULL DEFAULT false,
  searchable       boolean NOT NULL DEFAULT false,
  pii              text CHECK (pii IN ('email', 'phone', 'name', 'address', 'card', 'iban', 'national_id', 'date_of_birth', 'ip_address', 'free_text', 'other')),
  masks            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(masks) = 'object'),
  plaintext_roles  text[] NOT NULL DEFAULT '{}',
  declared_by      text NOT NULL,
  declared_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (table_name, column_name),
  CHECK (NOT searchable OR encrypted)
);

CREATE TABLE strata.tenant_keys (
  tenant_id      text NOT NULL REFERENCES strata.tenants (id) ON DELETE CASCADE,
  kind           text NOT NULL CHECK (kind IN ('data', 'index')),
  version        integer NOT NULL CHECK (version > 0),
  master_key_id  text NOT NULL,
  wrapped        bytea NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  retired_at     timestamptz,
  PRIMARY KEY (tenant_id, kind, version)
);
