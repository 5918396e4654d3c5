/**
 * One refresh of a materialized view, on the admin connection (a view spans every tenant):
 * `REFRESH MATERIALIZED VIEW CONCURRENTLY` when the view is populated and has a unique index on
 * plain columns (readers keep reading meanwhile), plain `REFRESH` otherwise. The duration, mode and
 * time are recorded on strata.views; `dirty` tells whether a watched table was written after the
 * refresh began (its snapshot misses that write, so a debounced refresh runs again).
 */
import pg from 'pg';
import type { Database } from '../../db/database.js';

export const MATVIEW_SCHEMA = 'strata_matviews';
export const VIEW_SCHEMA = 'strata_views';

export interface RefreshOutcome {
  view: string;
  mode: 'concurrently' | 'plain' | 'skipped';
  ms: number;
  dirty: boolean;
  debounceMs: number;
}

export async function refreshMaterializedView(
  db: Database,
  name: string,
  opts: { jobId: string | undefined; timeoutMs: number; progress?: (done: number, total: number) => Promise<void> },
): Promise<RefreshOutcome> {
  const matview = `${pg.escapeIdentifier(MATVIEW_SCHEMA)}.${pg.escapeIdentifier(name)}`;
  await opts.progress?.(0, 3);
  return db.admin.with(async (c) => {
    const { rows } = await c.query<{ populated: boolean; unique_index: boolean; debounce_ms: number; started: Date }>(
      `SELECT cl.relispopulated AS populated, v.debounce_ms, clock_timestamp() AS started,
              EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = cl.oid AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL) AS unique_index
         FROM strata.views v JOIN pg_class cl ON cl.relname = v.name AND cl.relnamespace = $2::regnamespace
        WHERE v.name = $1`,
      [name, MATVIEW_SCHEMA],
    );
    const info = rows[0];
    if (!info) return { view: name, mode: 'skipped', ms: 0, dirty: false, debounceMs: 0 };
    await opts.progress?.(1, 3);
    const mode = info.populated && info.unique_index ? 'concurrently' : 'plain';
    const started = performance.now();
    try {
      await c.query('BEGIN');
      await c.query(`SET LOCAL statement_timeout = ${Math.floor(opts.timeoutMs)}`);
      await c.query(`REFRESH MATERIALIZED VIEW ${mode === 'concurrently' ? 'CONCURRENTLY ' : ''}${matview}`);
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      await c.query('UPDATE strata.views SET last_error = $2, last_job_id = $3 WHERE name = $1', [name, (err as Error).message, opts.jobId ?? null]);
      throw err;
    }
    const ms = Math.round(performance.now() - started);
    await opts.progress?.(2, 3);
    const done = await c.query<{ dirty: boolean }>(
      `UPDATE strata.views SET last_refreshed_at = $2, last_refresh_ms = $3, last_refresh_mode = $4, last_job_id = $5, last_error = NULL,
              refresh_count = refresh_count + 1
        WHERE name = $1 RETURNING COALESCE(last_write_at > $2, false) AS dirty`,
      [name, info.started, ms, mode, opts.jobId ?? null],
    );
    await opts.progress?.(3, 3);
    return { view: name, mode, ms, dirty: done.rows[0]?.dirty ?? false, debounceMs: info.debounce_ms };
  });
}
