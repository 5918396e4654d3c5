/**
 * The contract of a benchmark scenario module: bench/run.ts imports every file in this folder
 * (except this one), and runs each whose `name` is in BENCH_SCENARIOS (or all by default) after the
 * built-in scenarios, on the prepared benchmark database (bench/setup.ts). A scenario starts what
 * it measures (Strata from dist/, anchors, psql, pg_dump...) through bench/lib.ts, runs it and its
 * reference side by side in the same run, and returns medians and ratios.
 */
export interface BenchContext {
  /** Superuser URL of the benchmark database (migrated, demo-seeded for tenant '1', 1M-row items). */
  dbUrl: string;
  /** The login role Strata's tenant sessions use on it. */
  appUrl: string;
  /** `Bearer <jwt>` reader tokens per tenant: tokens[1..100] (index 0 is empty). Signed with `secret`. */
  tokens: string[];
  /** The JWT secret Strata servers started by the bench must use (JWT_SECRET). */
  secret: string;
  log: (message: string) => void;
}

export interface BenchScenario {
  /** The BENCH_SCENARIOS name. */
  name: string;
  run(ctx: BenchContext): Promise<{ md: string[]; json: unknown }>;
}
