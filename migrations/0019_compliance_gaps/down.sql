-- Undo 0019.
DROP INDEX strata.subject_keys_key_ref_idx;
ALTER TABLE strata.subject_keys DROP COLUMN key_ref;
ALTER TABLE strata.compliance_columns DROP CONSTRAINT compliance_columns_subject_key_encrypted;
ALTER TABLE strata.compliance_columns DROP COLUMN subject_column;
DROP TABLE strata.compliance_conversions;
