DROP TABLE IF EXISTS strata.api_keys;
DROP TABLE IF EXISTS strata.tenants;
-- strata schema itself holds the migration bookkeeping table, so it stays; the role is cluster-wide and stays.
