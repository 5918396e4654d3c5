-- Compliance gaps (issue 15): encrypting the rows written before a column was declared encrypted,
-- and data-API writes under per-subject keys.
--
-- strata.compliance_conversions: one row per conversion job (PUT .../columns/{t}/{c} declaring a
-- column encrypted starts one): the plaintext values of that column, in every tenant, are encrypted
-- in primary-key order, a batch per transaction; the position is saved with each batch so a retried
-- job resumes. At most one running conversion per column.
CREATE TABLE strata.compliance_conversions (
  id            uuid PRIMARY KEY,
  table_name    text NOT NULL,
  column_name   text NOT NULL,
  state         text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'completed', 'failed')),
  position      jsonb NOT NULL DEFAULT '{}',
  done          bigint NOT NULL DEFAULT 0,
  job_id        text,
  requested_by  text NOT NULL,
  started_at    timestamptz NOT NULL DEFAULT now(),
  finished_at   timestamptz
);
CREATE UNIQUE INDEX compliance_conversions_running_idx ON strata.compliance_conversions (table_name, column_name) WHERE state = 'running';

-- An encrypted column may be keyed per subject: its values are encrypted under the key of the
-- subject named by `subject_column` of the same row (crypto-shredded by the subject's erasure).
ALTER TABLE strata.compliance_columns ADD COLUMN subject_column text
  CHECK (subject_column IS NULL OR subject_column ~ '^[A-Za-z_][A-Za-z0-9_$]{0,62}$');
ALTER TABLE strata.compliance_columns ADD CONSTRAINT compliance_columns_subject_key_encrypted CHECK (subject_column IS NULL OR encrypted);

-- A subject key is named in its ciphertexts by an opaque reference (never the subject id), so a
-- read can find the key of a value without knowing the row's subject.
ALTER TABLE strata.subject_keys ADD COLUMN key_ref text NOT NULL DEFAULT replace(gen_random_uuid()::text, '-', '');
CREATE UNIQUE INDEX subject_keys_key_ref_idx ON strata.subject_keys (key_ref);
