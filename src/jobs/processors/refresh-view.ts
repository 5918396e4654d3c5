/**
 * Refresh one materialized view (CONCURRENTLY when it can). A debounced refresh (after writes) that
 * finds a write landed after it began goes back to delayed for another round, so no write is missed.
 */
import { DelayedError } from 'bullmq';
import { refreshMaterializedView, type RefreshOutcome } from '../../services/analytics/index.js';
import type { ProcessorContext } from '../processor.js';

export async function refreshView(ctx: ProcessorContext<'refresh-view'>): Promise<RefreshOutcome> {
  const { view, reason } = ctx.job.data;
  const outcome = await refreshMaterializedView(ctx.db, view, {
    jobId: ctx.job.id,
    timeoutMs: ctx.db.config.VIEW_REFRESH_TIMEOUT_MS,
    progress: (done, total) => ctx.progress(done, total),
  });
  ctx.log.info({ view, reason, mode: outcome.mode, ms: outcome.ms }, 'materialized view refreshed');
  if (outcome.dirty && reason === 'writes' && ctx.token) {
    await ctx.job.moveToDelayed(Date.now() + outcome.debounceMs, ctx.token);
    throw new DelayedError();
  }
  return outcome;
}
