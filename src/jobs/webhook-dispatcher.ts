/**
 * The webhook dispatcher, running beside the workers of queue `webhooks`: woken by the change feed
 * (the id sequence moved, or a NOTIFY; coalesced), it finds webhooks with events to deliver
 * whose delivery loop is not running and enqueues one `deliver-webhook` job each. The job id is
 * `webhooks-<webhook id>`, so a loop already queued or running is not queued twice.
 */
import { Queue } from 'bullmq';
import type { Logger } from 'pino';
import type { ChangeFeed } from '../services/changes/index.js';
import type { WebhookDeliveryService } from '../services/changes/index.js';
import type { JobData } from './queues.js';

export interface WebhookDispatcher {
  /** Run one dispatch pass now (tests). */
  kick(): Promise<void>;
  close(): Promise<void>;
}

export function startWebhookDispatcher(opts: { redisUrl: string; prefix: string; feed: ChangeFeed; delivery: WebhookDeliveryService; log: Logger }): WebhookDispatcher {
  const queue = new Queue('webhooks', { connection: { url: opts.redisUrl, maxRetriesPerRequest: null }, prefix: opts.prefix });
  queue.on('error', () => undefined);
  let running: Promise<void> | undefined;
  let again = false;
  let closed = false;

  async function pass(): Promise<void> {
    const due = await opts.delivery.due();
    for (const w of due) {
      const data: JobData<'deliver-webhook'> = { webhookId: w.id, tenantId: w.tenant_id, actor: 'system:webhooks', requestId: `webhook:${w.id}` };
      await queue.add('deliver-webhook', data, { jobId: `webhooks-${w.id}`, removeOnComplete: true, removeOnFail: true, attempts: 1 });
    }
  }

  function kick(): Promise<void> {
    if (closed) return Promise.resolve();
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        try {
          await pass();
        } catch (err) {
          opts.log.warn({ err }, 'webhook dispatch failed; retrying on the next wake-up');
        }
      } while (again && !closed);
    })().finally(() => {
      running = undefined;
    });
    return running;
  }

  const unsubscribe = opts.feed.subscribe(() => void kick());
  return {
    kick,
    async close() {
      closed = true;
      unsubscribe();
      await running;
      await queue.close().catch(() => undefined);
    },
  };
}
