DROP TABLE IF EXISTS public.customers;
DROP TABLE IF EXISTS strata.compliance_audit;
