-- Time partitioning (SPEC 11): the range-partitioned tables Strata keeps partitions for. The
-- partitions themselves are made and dropped by the engine of the mode: pg_partman on a single
-- server (its own part_config holds its settings), Citus's create_time_partitions /
-- drop_old_time_partitions on a cluster. This table is what GET /v1/admin/partitions lists and
-- what the scheduled maintenance job walks.
CREATE TABLE strata.time_partitions (
  table_name     text PRIMARY KEY,
  column_name    text NOT NULL,
  engine         text NOT NULL CHECK (engine IN ('pg_partman', 'citus')),
  part_interval  interval NOT NULL,
  premake        int NOT NULL CHECK (premake BETWEEN 1 AND 366),
  retention      interval,
  created_at     timestamptz NOT NULL DEFAULT now(),
  maintained_at  timestamptz,
  last_error     text
);
