ALTER TABLE strata.tenants DROP COLUMN IF EXISTS limits;
