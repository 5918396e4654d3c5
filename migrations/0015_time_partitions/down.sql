DROP TABLE IF EXISTS strata.time_partitions;
