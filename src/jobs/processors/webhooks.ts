/** Webhook delivery jobs (queue `webhooks`): the ordered delivery loop of one webhook, and replays. */
import type { ProcessorContext } from '../processor.js';

export async function deliverWebhook(ctx: ProcessorContext<'deliver-webhook'>) {
  const stats = await ctx.services.webhookDelivery.runLoop(ctx.job.data.webhookId, ctx.signal);
  if (stats.delivered || stats.failed || stats.dead) ctx.log.debug({ webhook: ctx.job.data.webhookId, ...stats }, 'webhook delivery loop ended');
  return stats;
}

export async function replayWebhook(ctx: ProcessorContext<'replay-webhook'>) {
  const { webhookId, after, until, tenantId } = ctx.job.data;
  if (!tenantId) return { delivered: 0, dead: 0 };
  const stats = await ctx.services.webhookDelivery.replay(webhookId, tenantId, { after, until }, ctx.signal, (done, total) => ctx.progress(done, total));
  ctx.log.info({ webhook: webhookId, after, until, ...stats }, 'webhook replay finished');
  return stats;
}
