DROP TABLE IF EXISTS strata.tenant_keys;
DROP TABLE IF EXISTS strata.compliance_columns;
