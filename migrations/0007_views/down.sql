DROP SCHEMA IF EXISTS strata_views CASCADE;
DROP SCHEMA IF EXISTS strata_matviews CASCADE;
DROP TABLE IF EXISTS strata.views;
DROP TABLE IF EXISTS strata.cache_tables;
