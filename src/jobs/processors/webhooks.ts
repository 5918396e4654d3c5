/** Webhook delivery jobs (queue `webhooks`): the ordered delivery loop of one webhook, and replays. */
import { DelayedError } from 'bullmq';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ProcessorContext } from '../processor.js';

export async function deliverWebhook(ctx: ProcessorContext<'deliver-webhook'>) {
  const stats = await ctx.services.webhookDelivery.runLoop(ctx.job.data.webhookId, ctx.signal);
  if (stats.delivered || stats.failed || stats.dead) ctx.log.debug({ webhook: ctx.job.data.webhookId, ...stats }, 'webhook delivery loop ended');
  return stats;
}

/**
 * A replay runs until an attempt fails; then it saves where it stands in the job's data and goes back
 * to delayed for the backoff (BullMQ's step-job pattern), so a replay against a failing endpoint
 * holds no worker slot while it waits. Each run continues with the saved progress.
 */
export async function replayWebhook(ctx: ProcessorContext<'replay-webhook'>) {
  const { webhookId, after, until, tenantId, resume } = ctx.job.data;
  if (!tenantId) return { delivered: 0, dead: 0 };
  let progress = resume;
  for (;;) {
    const step = await ctx.services.webhookDelivery.replay(webhookId, tenantId, { after, until, progress }, ctx.signal, (done, total) => ctx.progress(done, total));
    progress = step.progress;
    if (step.waitMs === undefined || ctx.signal.aborted) break;
    if (ctx.token) {
      await ctx.job.updateData({ ...ctx.job.data, resume: progress });
      await ctx.job.moveToDelayed(Date.now() + step.waitMs, ctx.token);
      ctx.log.debug({ webhook: webhookId, waitMs: step.waitMs, cursor: progress.cursor, attempts: progress.attempts }, 'webhook replay waits for a retry (delayed)');
      throw new DelayedError();
    }
    // no lock token (a processor called outside a BullMQ worker): wait in place
    await sleep(step.waitMs, undefined, { signal: ctx.signal }).catch(() => undefined);
  }
  const { delivered, dead } = progress;
  ctx.log.info({ webhook: webhookId, after, until: progress.until, delivered, dead, total: progress.total }, 'webhook replay finished');
  return { delivered, dead };
}
