/**
 * Webhook delivery (BullMQ workers, queue `webhooks`).
 *
 * One ordered delivery loop per webhook: a `deliver-webhook` job (job id `webhooks-<webhook id>`, so
 * at most one is queued or running) takes a lease on the webhook row, reads the tenant's events past
 * the webhook's cursor under the visibility horizon, and POSTs them one at a time in id order (so a
 * row's events arrive in commit order, and a table's too). The cursor moves only after a 2xx was
 * recorded: at-least-once, the receiver de-duplicates by X-Strata-Event-Id. A failure is recorded and
 * retried with exponential backoff and full jitter; after WEBHOOK_MAX_ATTEMPTS the event is
 * dead-lettered (recorded `dead`) and the loop moves on. A killed worker's lease lapses after
 * WEBHOOK_LEASE_MS and BullMQ's stalled check (or the dispatcher) runs the loop again.
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
import type { Database } from '../db/database.js';
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
}

interface LeasedWebhook {
  id: string;
  tenant_id: string;
  url: string;
  tables: string[];
  ops: string[];
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

const RETURNING = `id, tenant_id, url, tables, ops, secret, cursor::text AS cursor, attempt,
  greatest(0, ceil(extract(epoch FROM next_attempt_at - now()) * 1000))::int AS wait_ms`;

export function createWebhookDelivery(deps: { db: Database; log: Logger; feed: ChangeFeed; settings: DeliverySettings }) {
  const { db, log, feed, settings: s } = deps;

  /** Run `fn` in a REPEATABLE READ READ ONLY transaction of the admin pool. */
  async function snapshot<T>(fn: (q: { query: Database['adminQuery'] }) => Promise<T>): Promise<T> {
    return db.admin.with(async (c) => {
      await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      try {
        const out = await fn({ query: (text, values) => c.query(text, values as unknown[] | undefined) as never });
        await c.query('COMMIT');
        return out;
      } catch (err) {
        await c.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
    });
  }

  async function nextEvents(w: LeasedWebhook, after: string, limit: number, until?: string): Promise<ChangeEvent[]> {
    for (;;) {
      const rows = await snapshot((tx) => readChanges(tx, w.tenant_id, after, { tables: w.tables, ops: w.ops }, limit, { until }));
      if (rows) return rows;
    }
  }

  /** POST one event. Never throws: the outcome is recorded by the caller. */
  async function send(w: Pick<LeasedWebhook, 'id' | 'url' | 'secret'>, e: ChangeEvent, attempt: number, replay: boolean): Promise<SendResult> {
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
      const req = client.request(url, { method: 'POST', headers, lookup: guardedLookup(s.allowPrivate), timeout: s.timeoutMs, agent: false }, (res) => {
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

  /** Record an attempt and move the webhook's state, only while we hold the lease. False: lease lost. */
  async function record(w: LeasedWebhook, token: string, e: ChangeEvent, r: SendResult, attempt: number): Promise<boolean> {
    const dead = !r.ok && attempt >= s.maxAttempts;
    const status = r.ok ? 'succeeded' : dead ? 'dead' : 'failed';
    const advance = r.ok || dead;
    const delay = advance ? 0 : backoffMs(attempt, s.backoffBaseMs, s.backoffMaxMs);
    const { rows } = await db.adminQuery(
      `WITH w AS (
         UPDATE strata.webhooks SET cursor = CASE WHEN $4 THEN $5::bigint ELSE cursor END, attempt = CASE WHEN $4 THEN 0 ELSE $6 END,
                next_attempt_at = now() + make_interval(secs => $7::double precision / 1000), lease_until = now() + make_interval(secs => $3::double precision / 1000)
          WHERE id = $1 AND lease_owner = $2 RETURNING id, tenant_id)
       INSERT INTO strata.webhook_deliveries (webhook_id, tenant_id, change_id, attempt, status, http_status, error, duration_ms)
       SELECT id, tenant_id, $5::bigint, $6, $8, $9, $10, $11 FROM w RETURNING 1`,
      [w.id, token, s.leaseMs, advance, e.id, attempt, delay, status, r.status, r.error?.slice(0, 500) ?? null, r.ms],
    );
    if (!rows.length) return false;
    w.cursor = advance ? e.id : w.cursor;
    w.attempt = advance ? 0 : attempt;
    w.wait_ms = delay;
    if (!r.ok) log.info({ webhook: w.id, tenant: w.tenant_id, change: e.id, attempt, status, error: r.error }, dead ? 'webhook event dead-lettered' : 'webhook delivery failed; will retry');
    return true;
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
     * The delivery loop of one webhook: returns when it is idle for `lingerMs`, when its next retry is
     * further away than that, when the lease is lost, or when `signal` aborts.
     */
    async runLoop(webhookId: string, signal: AbortSignal): Promise<{ delivered: number; failed: number; dead: number }> {
      const token = randomUUID();
      const stats = { delivered: 0, failed: 0, dead: 0 };
      const claimed = await db.adminQuery<LeasedWebhook>(
        `UPDATE strata.webhooks SET lease_owner = $2, lease_until = now() + make_interval(secs => $3::double precision / 1000)
          WHERE id = $1 AND active AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $2) RETURNING ${RETURNING}`,
        [webhookId, token, s.leaseMs],
      );
      let w = claimed.rows[0];
      if (!w) return stats;
      const latch = createLatch(signal);
      const unsubscribe = feed.subscribe(() => latch.wake());
      let idleSince = Date.now();
      try {
        while (!signal.aborted && w) {
          const events = await nextEvents(w, w.cursor, 100);
          if (!events.length) {
            const left = s.lingerMs - (Date.now() - idleSince);
            if (left <= 0) break;
            await latch.wait(Math.min(left, s.pollMs));
            w = await renew(webhookId, token);
            continue;
          }
          for (const e of events) {
            for (;;) {
              if (w.wait_ms > 0) {
                if (w.wait_ms > s.lingerMs) return stats; // the dispatcher resumes it when due
                await sleep(w.wait_ms, undefined, { signal }).catch(() => undefined);
                if (signal.aborted) return stats;
              }
              const attempt = w.attempt + 1;
              const r = await send(w, e, attempt, false);
              if (!(await record(w, token, e, r, attempt))) return stats;
              if (r.ok) stats.delivered++;
              else if (w.attempt === 0) stats.dead++;
              else stats.failed++;
              if (r.ok || w.attempt === 0) break;
            }
            if (signal.aborted) return stats;
          }
          idleSince = Date.now();
          w = await renew(webhookId, token);
        }
        return stats;
      } finally {
        unsubscribe();
        latch.dispose();
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
      const until = range.until ?? (await snapshot(async (tx) => (await tx.query<{ h: string }>('SELECT coalesce(strata.change_horizon(), 0)::text AS h')).rows[0]?.h ?? '0'));
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

export type WebhookDelivery = ReturnType<typeof createWebhookDelivery>;
