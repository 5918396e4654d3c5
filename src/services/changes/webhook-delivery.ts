/**
 * Webhook delivery (BullMQ workers, queue `webhooks`).
 *
 * One delivery loop per webhook: a `deliver-webhook` job (job id `webhooks-<webhook id>`, so at most
 * one is queued or running) takes a lease on the webhook row and reads the tenant's events past the
 * webhook's cursor, in id order, under the visibility horizon, in batches. Within a batch, events are
 * split into lanes by the webhook's `ordering`: `row` (default: table + primary key), `table`, or
 * `webhook` (one lane). A lane's events go one at a time in id order (so a row's events arrive in
 * commit order); lanes go in parallel (WEBHOOK_CONCURRENCY), so one failing row does not hold up the
 * others. The cursor moves past a batch only when every event of it was answered 2xx or
 * dead-lettered: at-least-once, the receiver de-duplicates by X-Strata-Event-Id. A failure is
 * recorded and retried with exponential backoff and jitter; after WEBHOOK_MAX_ATTEMPTS the event is
 * dead-lettered (recorded `dead`) and its lane moves on. A killed worker's lease lapses after
 * WEBHOOK_LEASE_MS and BullMQ's stalled check (or the dispatcher) runs the loop again, re-sending
 * the unfinished batch.
 *
 * Signature: `X-Strata-Signature: sha256=<hex HMAC-SHA256(secret, "<X-Strata-Timestamp>.<body>")>`,
 * the timestamp in Unix seconds, so a captured request cannot be replayed later with a new timestamp.
 */
import { createHmac, randomUUID } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Database } from '../../db/database.js';
import { createLatch, type ChangeFeed } from './change-feed.js';
import { readChanges, type ChangeEvent } from './changes.js';
import { guardedLookup, isPrivateAddress, parseWebhookUrl } from './webhook-url.js';

export interface DeliverySettings {
  maxAttempts: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
  timeoutMs: number;
  leaseMs: number;
  allowPrivate: boolean;
  /** An idle loop waits this long for new events before ending (the dispatcher restarts it). */
  lingerMs: number;
  pollMs: number;
  /** Lanes delivered at once per webhook, and events read per batch. */
  concurrency: number;
  batchSize: number;
}

export type WebhookOrdering = 'row' | 'table' | 'webhook';
type LoopStats = { delivered: number; failed: number; dead: number };

interface LeasedWebhook {
  id: string;
  tenant_id: string;
  url: string;
  tables: string[];
  ops: string[];
  ordering: WebhookOrdering;
  secret: string;
  cursor: string;
  attempt: number;
  wait_ms: number;
}

export interface SendResult {
  ok: boolean;
  status: number | null;
  error: string | null;
  ms: number;
}

/** The headers of one delivery (exported for receivers' tests and docs). */
export function signDelivery(secret: string, body: string, timestamp: number): string {
  return `sha256=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

/** Exponential backoff with full jitter: uniform in [d/2, d], d = min(max, base * 2^(attempt-1)). */
export function backoffMs(attempt: number, base: number, max: number): number {
  const d = Math.min(max, base * 2 ** Math.max(0, attempt - 1));
  return Math.round(d / 2 + Math.random() * (d / 2));
}

const RETURNING = `id, tenant_id, url, tables, ops, ordering, secret, cursor::text AS cursor, attempt,
  greatest(0, ceil(extract(epoch FROM next_attempt_at - now()) * 1000))::int AS wait_ms`;

export function createWebhookDelivery(deps: { db: Database; log: Logger; feed: ChangeFeed; settings: DeliverySettings }) {
  const { db, log, feed, settings: s } = deps;

  /** Two statements on one admin connection, in order (the horizon, then the events after it). */
  async function sequential<T>(fn: (q: { query: Database['adminQuery'] }) => Promise<T>): Promise<T> {
    return db.admin.with((c) => fn({ query: (text, values) => c.query(text, values as unknown[] | undefined) as never }));
  }

  async function nextEvents(w: LeasedWebhook, after: string, limit: number, until?: string): Promise<ChangeEvent[]> {
    return sequential((q) => readChanges(q, w.tenant_id, after, { tables: w.tables, ops: w.ops }, limit, { until }));
  }

  /** POST one event. Never throws: the outcome is recorded by the caller. */
  async function send(w: Pick<LeasedWebhook, 'id' | 'url' | 'secret'>, e: ChangeEvent, attempt: number, replay: boolean, agent?: http.Agent): Promise<SendResult> {
    const started = performance.now();
    const done = (ok: boolean, status: number | null, error: string | null): SendResult => ({ ok, status, error, ms: Math.round(performance.now() - started) });
    let url: URL;
    try {
      url = parseWebhookUrl(w.url);
    } catch (err) {
      return done(false, null, (err as Error).message);
    }
    const host = url.hostname.replace(/^\[|\]$/g, '');
    if (net.isIP(host) && !s.allowPrivate && isPrivateAddress(host)) return done(false, null, `webhook address ${host} is private`);
    const body = JSON.stringify({ ...e, webhook_id: w.id });
    const timestamp = Math.floor(Date.now() / 1000);
    const headers = {
      'content-type': 'application/json',
      'content-length': String(Buffer.byteLength(body)),
      'user-agent': 'Strata-Webhooks/1',
      'x-strata-event-id': e.id,
      'x-strata-timestamp': String(timestamp),
      'x-strata-signature': signDelivery(w.secret, body, timestamp),
      'x-strata-webhook-id': w.id,
      'x-strata-attempt': String(attempt),
      ...(replay ? { 'x-strata-replay': 'true' } : {}),
    };
    return new Promise<SendResult>((resolve) => {
      const client = url.protocol === 'https:' ? https : http;
      const req = client.request(url, { method: 'POST', headers, lookup: guardedLookup(s.allowPrivate), timeout: s.timeoutMs, agent: agent ?? false }, (res) => {
        res.resume(); // the body is not used; drain it
        res.on('end', () => {
          const status = res.statusCode ?? 0;
          resolve(done(status >= 200 && status < 300, status, status >= 200 && status < 300 ? null : `HTTP ${status}`));
        });
        res.on('error', (err) => resolve(done(false, res.statusCode ?? null, err.message)));
      });
      req.on('timeout', () => req.destroy(new Error(`no response within ${s.timeoutMs} ms`)));
      req.on('error', (err) => resolve(done(false, null, err.message)));
      req.end(body);
    });
  }

  /** Record one attempt (while we hold the lease, which it renews). False: the lease is lost. */
  async function record(w: LeasedWebhook, token: string, e: ChangeEvent, r: SendResult, attempt: number, status: 'succeeded' | 'failed' | 'dead'): Promise<boolean> {
    const { rows } = await db.adminQuery(
      `WITH w AS (
         UPDATE strata.webhooks SET lease_until = now() + make_interval(secs => $3::double precision / 1000), attempt = greatest(attempt, $5)
          WHERE id = $1 AND lease_owner = $2 RETURNING id, tenant_id)
       INSERT INTO strata.webhook_deliveries (webhook_id, tenant_id, change_id, attempt, status, http_status, error, duration_ms)
       SELECT id, tenant_id, $4::bigint, $5, $6, $7, $8, $9 FROM w RETURNING 1`,
      [w.id, token, s.leaseMs, e.id, attempt, status, r.status, r.error?.slice(0, 500) ?? null, r.ms],
    );
    if (!r.ok) log.info({ webhook: w.id, tenant: w.tenant_id, change: e.id, attempt, status, error: r.error }, status === 'dead' ? 'webhook event dead-lettered' : 'webhook delivery failed; will retry');
    return rows.length > 0;
  }

  /** The lane an event is delivered in: events of one lane go one at a time, in id order. */
  function laneOf(w: LeasedWebhook, e: ChangeEvent): string {
    if (w.ordering === 'webhook') return '';
    if (w.ordering === 'table') return e.table;
    return `${e.table}\u0000${JSON.stringify(e.pk)}`;
  }

  /**
   * Deliver one batch: lanes (rows, or tables) in parallel, each lane's events one after another in id
   * order, each event retried with backoff until delivered or dead-lettered. True when the whole
   * batch is done (the cursor may move past it); false when the lease was lost or we were stopped.
   */
  async function deliverBatch(
    w: LeasedWebhook,
    token: string,
    events: ChangeEvent[],
    agent: http.Agent,
    signal: AbortSignal,
    stats: LoopStats,
    succeeded: Array<{ e: ChangeEvent; r: SendResult; attempt: number }>,
  ): Promise<boolean> {
    const lanes = new Map<string, ChangeEvent[]>();
    for (const e of events) {
      const k = laneOf(w, e);
      const lane = lanes.get(k);
      if (lane) lane.push(e);
      else lanes.set(k, [e]);
    }
    let ok = true;
    const queue = [...lanes.values()];
    const runLane = async (lane: ChangeEvent[]) => {
      for (const e of lane) {
        for (let attempt = 1; ; attempt++) {
          if (!ok || signal.aborted) return;
          const r = await send(w, e, attempt, false, agent);
          const status = r.ok ? 'succeeded' : attempt >= s.maxAttempts ? 'dead' : 'failed';
          // successes are recorded with the batch's cursor move (one statement); failures at once
          if (status === 'succeeded') succeeded.push({ e, r, attempt });
          else if (!(await record(w, token, e, r, attempt, status))) {
            ok = false;
            return;
          }
          if (status !== 'succeeded') stats[status]++;
          if (status !== 'failed') break;
          await sleep(backoffMs(attempt, s.backoffBaseMs, s.backoffMaxMs), undefined, { signal }).catch(() => undefined);
        }
      }
    };
    const workers = Array.from({ length: Math.min(s.concurrency, queue.length) }, async () => {
      for (let lane = queue.shift(); lane; lane = queue.shift()) await runLane(lane);
    });
    await Promise.all(workers);
    return ok && !signal.aborted;
  }

  const renew = async (id: string, token: string) =>
    (
      await db.adminQuery<LeasedWebhook>(
        `UPDATE strata.webhooks SET lease_until = now() + make_interval(secs => $3::double precision / 1000)
          WHERE id = $1 AND lease_owner = $2 AND active RETURNING ${RETURNING}`,
        [id, token, s.leaseMs],
      )
    ).rows[0];

  return {
    send,

    /**
     * The delivery loop of one webhook: batches of events in id order, the cursor moved past a batch
     * once all of it is delivered (or dead-lettered). Returns when idle for `lingerMs`, when the lease
     * is lost, or when `signal` aborts.
     */
    async runLoop(webhookId: string, signal: AbortSignal): Promise<LoopStats> {
      const token = randomUUID();
      const stats: LoopStats = { delivered: 0, failed: 0, dead: 0 };
      const claimed = await db.adminQuery<LeasedWebhook>(
        `UPDATE strata.webhooks SET lease_owner = $2, lease_until = now() + make_interval(secs => $3::double precision / 1000)
          WHERE id = $1 AND active AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $2) RETURNING ${RETURNING}`,
        [webhookId, token, s.leaseMs],
      );
      let w = claimed.rows[0];
      if (!w) return stats;
      const latch = createLatch(signal);
      const unsubscribe = feed.subscribe(() => latch.wake());
      const agent = new http.Agent({ keepAlive: true, maxSockets: s.concurrency });
      const agents = { http: agent, https: new https.Agent({ keepAlive: true, maxSockets: s.concurrency }) };
      // Long retries keep the lease: it is renewed in the background while a batch runs.
      const heartbeat = setInterval(() => void renew(webhookId, token).catch(() => undefined), Math.max(100, Math.floor(s.leaseMs / 3)));
      let idleSince = Date.now();
      try {
        while (!signal.aborted && w) {
          const events = await nextEvents(w, w.cursor, s.batchSize);
          if (!events.length) {
            const left = s.lingerMs - (Date.now() - idleSince);
            if (left <= 0) break;
            await latch.wait(Math.min(left, s.pollMs));
            w = await renew(webhookId, token);
            continue;
          }
          const last = events[events.length - 1]!.id;
          const agentFor = w.url.startsWith('https:') ? agents.https : agents.http;
          const succeeded: Array<{ e: ChangeEvent; r: SendResult; attempt: number }> = [];
          const complete = await deliverBatch(w, token, events, agentFor, signal, stats, succeeded);
          // Record the successes and, when the whole batch is done, move the cursor past it: one statement.
          const moved = await db.adminQuery<LeasedWebhook>(
            `WITH w AS (
               UPDATE strata.webhooks SET cursor = CASE WHEN $5 THEN $3::bigint ELSE cursor END, attempt = 0, next_attempt_at = now(),
                      lease_until = now() + make_interval(secs => $4::double precision / 1000)
                WHERE id = $1 AND lease_owner = $2 RETURNING ${RETURNING}, active),
             d AS (
               INSERT INTO strata.webhook_deliveries (webhook_id, tenant_id, change_id, attempt, status, http_status, duration_ms)
               SELECT w.id, w.tenant_id, x.change_id, x.attempt, 'succeeded', x.http_status, x.ms
                 FROM w, unnest($6::bigint[], $7::int[], $8::int[], $9::int[]) AS x(change_id, attempt, http_status, ms))
             SELECT * FROM w WHERE active`,
            [
              webhookId,
              token,
              last,
              s.leaseMs,
              complete,
              succeeded.map((x) => x.e.id),
              succeeded.map((x) => x.attempt),
              succeeded.map((x) => x.r.status),
              succeeded.map((x) => x.r.ms),
            ],
          );
          stats.delivered += succeeded.length;
          if (!complete) return stats;
          w = moved.rows[0];
          idleSince = Date.now();
        }
        return stats;
      } finally {
        clearInterval(heartbeat);
        unsubscribe();
        latch.dispose();
        agents.http.destroy();
        agents.https.destroy();
        await db
          .adminQuery('UPDATE strata.webhooks SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2', [webhookId, token])
          .catch((err: unknown) => log.warn({ err, webhook: webhookId }, 'could not release webhook lease (it lapses by itself)'));
      }
    },

    /** Re-deliver the events in (after, until] of one webhook (of `tenantId`), each retried as usual. */
    async replay(
      webhookId: string,
      tenantId: string,
      range: { after: string; until?: string },
      signal: AbortSignal,
      progress: (done: number, total: number) => Promise<void>,
    ): Promise<{ delivered: number; dead: number }> {
      const found = await db.adminQuery<LeasedWebhook>(`SELECT ${RETURNING} FROM strata.webhooks WHERE id = $1 AND tenant_id = $2`, [webhookId, tenantId]);
      const w = found.rows[0];
      if (!w) return { delivered: 0, dead: 0 };
      const until = range.until ?? (await db.adminQuery<{ h: string }>('SELECT strata.change_horizon()::text AS h')).rows[0]?.h ?? '0';
      const { rows } = await db.adminQuery<{ n: string }>(
        `SELECT count(*)::text AS n FROM strata.changes WHERE tenant_id = $1 AND id > $2::bigint AND id <= $3::bigint
            AND (cardinality($4::text[]) = 0 OR table_name = ANY ($4)) AND op = ANY ($5)`,
        [tenantId, range.after, until, w.tables, w.ops],
      );
      const total = Number(rows[0]?.n ?? 0);
      const stats = { delivered: 0, dead: 0 };
      let cursor = range.after;
      let done = 0;
      await progress(0, total);
      while (!signal.aborted) {
        const events = await nextEvents(w, cursor, 100, until);
        if (!events.length) break;
        for (const e of events) {
          for (let attempt = 1; ; attempt++) {
            const r = await send(w, e, attempt, true);
            const dead = !r.ok && attempt >= s.maxAttempts;
            await db.adminQuery(
              `INSERT INTO strata.webhook_deliveries (webhook_id, tenant_id, change_id, attempt, status, http_status, error, duration_ms, replay)
               VALUES ($1, $2, $3::bigint, $4, $5, $6, $7, $8, true)`,
              [w.id, w.tenant_id, e.id, attempt, r.ok ? 'succeeded' : dead ? 'dead' : 'failed', r.status, r.error?.slice(0, 500) ?? null, r.ms],
            );
            if (r.ok) stats.delivered++;
            if (dead) stats.dead++;
            if (r.ok || dead || signal.aborted) break;
            await sleep(backoffMs(attempt, s.backoffBaseMs, s.backoffMaxMs), undefined, { signal }).catch(() => undefined);
          }
          cursor = e.id;
          await progress(++done, total);
          if (signal.aborted) break;
        }
      }
      return stats;
    },

    /** Webhooks with events to deliver, due, and not leased by a running loop. */
    async due(): Promise<Array<{ id: string; tenant_id: string }>> {
      const { rows } = await db.adminQuery<{ id: string; tenant_id: string }>(
        `SELECT w.id, w.tenant_id FROM strata.webhooks w
          WHERE w.active AND w.next_attempt_at <= now() AND (w.lease_until IS NULL OR w.lease_until < now())
            AND EXISTS (SELECT 1 FROM strata.changes c WHERE c.tenant_id = w.tenant_id AND c.id > w.cursor
                          AND (cardinality(w.tables) = 0 OR c.table_name = ANY (w.tables)) AND c.op = ANY (w.ops))`,
      );
      return rows;
    },
  };
}

export type WebhookDeliveryService = ReturnType<typeof createWebhookDelivery>;
