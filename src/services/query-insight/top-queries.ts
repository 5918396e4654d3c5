/**
 * GET /v1/admin/queries/top: the statements of this database that cost the most, from
 * pg_stat_statements (PostgreSQL's own normalised statistics, across every process and tenant).
 * Platform-wide by nature, so platform_admin only. Without the extension: 501
 * PG_STAT_STATEMENTS_UNAVAILABLE with the reason (not installed, not preloaded, not creatable).
 */
import type { Database } from '../../db/database.js';
import { AppError } from '../../errors.js';
import type { ExtensionProbe } from './extensions.js';

export interface TopQuery {
  queryid: string;
  query: string;
  calls: number;
  total_ms: number;
  mean_ms: number;
  rows: number;
  shared_blks_hit: number;
  shared_blks_read: number;
}

export const TOP_ORDERS = { total: 'total_exec_time', mean: 'mean_exec_time', calls: 'calls' } as const;
export type TopOrder = keyof typeof TOP_ORDERS;

export function createTopQueries(deps: { db: Database; extensions: ExtensionProbe }) {
  return {
    async top(opts: { order: TopOrder; limit: number }): Promise<TopQuery[]> {
      const state = await deps.extensions('pg_stat_statements');
      if (!state.available) throw new AppError(501, 'PG_STAT_STATEMENTS_UNAVAILABLE', `pg_stat_statements unavailable: ${state.reason}`);
      // the column comes from the fixed map above, never from input
      const { rows } = await deps.db.adminQuery<TopQuery>(
        `SELECT queryid::text AS queryid, query, calls::float8 AS calls,
                round(total_exec_time::numeric, 3)::float8 AS total_ms, round(mean_exec_time::numeric, 3)::float8 AS mean_ms,
                rows::float8 AS rows, shared_blks_hit::float8 AS shared_blks_hit, shared_blks_read::float8 AS shared_blks_read
           FROM pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          ORDER BY ${TOP_ORDERS[opts.order]} DESC
          LIMIT $1`,
        [opts.limit],
      );
      return rows;
    },
  };
}
