/**
 * The webhook dispatcher, running beside the workers of queue `webhooks`: woken by the change feed
 * (the id sequence moved, or a NOTIFY; coalesced), it finds webhooks with events to deliver
 * whose delivery loop is not running and enqueues one `deliver-webhook` job each. The job id is
 * `webhooks-<webhook id>`, so a loop already queued or running is not queued twice.
 *
 * It also runs every TICK_MS: retries and parked (circuit-open) webhooks become due by time, not by
 * a new event, and webhooks refused a slot (tenant allowance) are offered again. Its BullMQ
 * connection reconnects with the short capped backoff of src/redis.ts, so events written during a
 * Redis outage are dispatched within about a second of Redis answering.
 */
import { Queue } from 'bullmq';
import type { Logger } from 'pino';
import type { ChangeFeed } from '../services/changes/index.js';
import type { WebhookDeliveryService } from '../services/changes/index.js';
import type { JobData } from './queues.js';
import { bullmqConnection, type RedisBounds } from '../redis.js';

/** How often due retries and waiting webhooks are looked for without a wake-up. */
const TICK_MS = 500;
/** A webhook still due this long after its job was added gets a job under a new id. */
const STUCK_MS = 1_500;

export interface WebhookDispatcher {
  /** Run one dispatch pass now (tests). */
  kick(): Promise<void>;
  close(): Promise<void>;
}

export function startWebhookDispatcher(opts: {
  redisUrl: string;
  prefix: string;
  feed: ChangeFeed;
  delivery: WebhookDeliveryService;
  log: Logger;
  bounds?: RedisBounds;
}): WebhookDispatcher {
  const queue = new Queue('webhooks', { connection: bullmqConnection(opts.redisUrl, opts.bounds), prefix: opts.prefix });
  queue.on('error', () => undefined);
  let running: Promise<void> | undefined;
  let again = false;
  let closed = false;
  let lastWarn = 0;

  // When a webhook stays due (not leased) STUCK_MS after its job was added, that job is stuck (e.g.
  // its worker lost the job's lock during a Redis hang and BullMQ keeps it active until the stalled
  // check): a job under a new id is added. Two loops cannot run at once: the lease decides.
  const firstAdded = new Map<string, { at: number; jobId: string }>();
  async function pass(): Promise<void> {
    const due = await opts.delivery.due();
    const now = Date.now();
    const dueIds = new Set(due.map((w) => w.id));
    for (const id of firstAdded.keys()) if (!dueIds.has(id)) firstAdded.delete(id);
    for (const w of due) {
      let entry = firstAdded.get(w.id);
      if (!entry || now - entry.at > STUCK_MS) {
        entry = { at: now, jobId: entry ? `webhooks-${w.id}-${now}` : `webhooks-${w.id}` };
        firstAdded.set(w.id, entry);
      }
      const data: JobData<'deliver-webhook'> = { webhookId: w.id, tenantId: w.tenant_id, actor: 'system:webhooks', requestId: `webhook:${w.id}` };
      await queue.add('deliver-webhook', data, { jobId: entry.jobId, removeOnComplete: true, removeOnFail: true, attempts: 1 });
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
          if (Date.now() - lastWarn > 10_000) {
            lastWarn = Date.now();
            opts.log.warn({ err }, 'webhook dispatch failed; retrying on the next wake-up');
          }
        }
      } while (again && !closed);
    })().finally(() => {
      running = undefined;
    });
    return running;
  }

  const unsubscribe = opts.feed.subscribe(() => void kick());
  const ticker = setInterval(() => void kick(), TICK_MS);
  ticker.unref();
  return {
    kick,
    async close() {
      closed = true;
      clearInterval(ticker);
      unsubscribe();
      await running;
      await queue.close().catch(() => undefined);
    },
  };
}
