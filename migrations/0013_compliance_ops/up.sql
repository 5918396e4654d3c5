-- Compliance operations (SPEC 12, issue 15): subject declarations and erasures, per-subject data keys
-- (crypto-shredding), scan findings, key rotations; and capture skips in-place re-encryption.
--
-- strata.compliance_subjects: which columns of a table identify a data subject (a row belongs to
-- subject X when any of them equals X), and whether erasure deletes the row or anonymizes it.
-- Schema-wide like strata.compliance_columns (the tables are shared by every tenant).
CREATE TABLE strata.compliance_subjects (
  table_name   text PRIMARY KEY CHECK (table_name ~ '^[A-Za-z_][A-Za-z0-9_$]{0,62}$'),
  columns      text[] NOT NULL CHECK (cardinality(columns) BETWEEN 1 AND 8),
  action       text NOT NULL CHECK (action IN ('delete', 'anonymize')),
  declared_by  text NOT NULL,
  declared_at  timestamptz NOT NULL DEFAULT now()
);

-- Optional per-subject data keys: values encrypted under one are unreadable once it is deleted
-- (crypto-shredding), in the live database and in every backup alike. Wrapped by the master key ring.
CREATE TABLE strata.subject_keys (
  tenant_id      text NOT NULL REFERENCES strata.tenants (id) ON DELETE CASCADE,
  subject_id     text NOT NULL CHECK (length(subject_id) BETWEEN 1 AND 256),
  master_key_id  text NOT NULL,
  wrapped        bytea NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, subject_id)
);

-- One row per DELETE /v1/subjects/{id}: the subject is kept as a keyed digest only (the request must
-- not itself keep the identifier it erased), with the exact report.
CREATE TABLE strata.compliance_erasures (
  id            uuid PRIMARY KEY,
  tenant_id     text NOT NULL,
  subject_hash  text NOT NULL,
  requested_by  text NOT NULL,
  request_id    text,
  requested_at  timestamptz NOT NULL DEFAULT now(),
  outcome       text NOT NULL CHECK (outcome IN ('erased')),
  report        jsonb NOT NULL
);
CREATE INDEX compliance_erasures_tenant_idx ON strata.compliance_erasures (tenant_id, requested_at DESC);

-- Finished PII scans (the job's result, kept beyond the job's retention for the report's coverage).
CREATE TABLE strata.compliance_scans (
  job_id       text PRIMARY KEY,
  tenant_id    text,
  requested_by text NOT NULL,
  finished_at  timestamptz NOT NULL DEFAULT now(),
  findings     jsonb NOT NULL CHECK (jsonb_typeof(findings) = 'array')
);
CREATE INDEX compliance_scans_recent_idx ON strata.compliance_scans (tenant_id, finished_at DESC);

-- Key rotations: the resumable state of each rotation job (kind 'master': re-wrap every wrapped key
-- under the active master key; kind 'data': re-encrypt a tenant's values under a new data key).
CREATE TABLE strata.key_rotations (
  id              uuid PRIMARY KEY,
  kind            text NOT NULL CHECK (kind IN ('master', 'data')),
  tenant_id       text,
  target          text NOT NULL,
  state           text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'completed', 'failed')),
  position        jsonb NOT NULL DEFAULT '{}',
  done            bigint NOT NULL DEFAULT 0,
  job_id          text,
  requested_by    text NOT NULL,
  started_at      timestamptz NOT NULL DEFAULT now(),
  finished_at     timestamptz,
  CHECK ((kind = 'data') = (tenant_id IS NOT NULL))
);
-- at most one running rotation per tenant (data) and one master rotation
CREATE UNIQUE INDEX key_rotations_running_idx ON strata.key_rotations (kind, coalesce(tenant_id, '')) WHERE state = 'running';

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
