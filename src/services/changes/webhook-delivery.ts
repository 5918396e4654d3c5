/**
 * Webhook delivery (BullMQ workers, queue `webhooks`).
 *
 * One delivery loop per webhook: a `deliver-webhook` job (job id `webhooks-<webhook id>`, so at most
 * one is queued or running) takes a lease on the webhook row and reads the tenant's events past the
 * webhook's cursor, in id order, under the visibility horizon, in batches. Within a batch, events are
 * split into lanes by the webhook's `ordering`: `row` (default: table + primary key), `table`, or
 * `webhook` (one lane). A lane's events go one at a time in id order (so a row's events arrive in
 * commit order); lanes go in parallel (WEBHOOK_CONCURRENCY), so one failing row does not hold up the
 * others; an endpoint that is failing or never answered gets one lane at a time until it answers,
 * and a pass starts no new lane after WEBHOOK_BREAKER_THRESHOLD failures without a success. The
 * cursor moves past a batch only when every event of it was answered 2xx or dead-lettered:
 * at-least-once, the receiver de-duplicates by X-Strata-Event-Id. A failure is recorded and its
 * lane stops; the loop finishes the other lanes of the batch and ENDS, setting the webhook's
 * `next_attempt_at` (exponential backoff with jitter): no worker slot is held while a
 * backoff runs out. The dispatcher starts the loop again when it is due; the retried batch skips
 * the events already delivered or dead-lettered (from strata.webhook_deliveries), and each event
 * keeps its own attempt count; after WEBHOOK_MAX_ATTEMPTS it is dead-lettered (recorded `dead`) and
 * its lane moves on. A killed worker's lease lapses after WEBHOOK_LEASE_MS and BullMQ's stalled
 * check (or the dispatcher) runs the loop again, re-sending the unfinished batch.
 *
 * Fairness (no tenant can starve the others): a loop takes a lease only while its tenant holds fewer
 * than WEBHOOK_TENANT_SLOTS leases, and a failing or not yet proven endpoint (no success yet, or
 * failures > 0) only while fewer than WEBHOOK_TENANT_FAILING_SLOTS such leases are held: stuck
 * endpoints queue behind each other, not in front of the tenant's healthy webhooks.
 *
 * Circuit breaker per endpoint (webhook): after WEBHOOK_BREAKER_THRESHOLD consecutive failed
 * attempts it opens: the webhook is parked for WEBHOOK_BREAKER_COOLDOWN_MS (or the backoff, if
 * longer), then one event is sent as a probe (half-open); a success closes it and the loop goes on,
 * a failure parks it again.
 *
 * Signature: `X-Strata-Signature: sha256=<hex HMAC-SHA256(secret, "<X-Strata-Timestamp>.<body>")>`,
 * the timestamp in Unix seconds, so a captured request cannot be replayed later with a new timestamp.
 */
import { createEventMasking } from '../compliance/index.js';
import { createHmac, randomUUID } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
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
  /** Delivery loops of one tenant at once (all workers), and how many of those may serve failing or unproven endpoints. */
  tenantSlots: number;
  tenantFailingSlots: number;
  /** Circuit breaker: consecutive failed attempts that open it; how long it stays open before one probe. */
  breakerThreshold: number;
  breakerCooldownMs: number;
}

export type WebhookOrdering = 'row' | 'table' | 'webhook';
/** Where a webhook replay stands between its runs (job data, JSON). */
export interface ReplayProgress {
  /** The range's end, fixed at the first run (the horizon then, when the request gave none). */
  until: string;
  /** Events finished (delivered or dead-lettered) are those with id <= cursor. */
  cursor: string;
  /** Attempts already made for the next event after `cursor`. */
  attempts: number;
  done: number;
  total: number;
  delivered: number;
  dead: number;
}

/** One run of a replay: finished (`waitMs` absent), or stopped to wait `waitMs` before the next attempt. */
export interface ReplayStep {
  progress: ReplayProgress;
  waitMs?: number;
}
type LoopStats = { delivered: number; failed: number; dead: number };
interface BatchOutcome {
  leaseLost: boolean;
  failedAttempts: number;
  maxFailedAttempt: number;
  /** Failed attempts since the last success of this pass (all of them when none succeeded). */
  consecutive: number;
  anySuccess: boolean;
}

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
  failures: number;
  /** Has answered 2xx at least once. */
  proven: boolean;
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

const RETURNING = `id, tenant_id, url, tables, ops, ordering, secret, cursor::text AS cursor, attempt, failures, last_success_at IS NOT NULL AS proven,
  greatest(0, ceil(extract(epoch FROM next_attempt_at - now()) * 1000))::int AS wait_ms`;

export function createWebhookDelivery(deps: { db: Database; log: Logger; feed: ChangeFeed; settings: DeliverySettings }) {
  const { db, log, feed, settings: s } = deps;
  // Declared columns: a webhook body carries ciphertext of encrypted columns and, for the other
  // declared columns, the value as the `reader` role sees it (the receiver is outside any role).
  const masking = createEventMasking({ db });

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
    const body = JSON.stringify({ ...(await masking.maskEvent(e, 'reader')), webhook_id: w.id });
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
   * order. A failed attempt is recorded and stops its lane (no waiting here: the loop ends and the
   * webhook is retried when due). `done` holds the events delivered or dead-lettered by earlier
   * passes (skipped) and the attempts made so far per event. With `probe`, one event only.
   */
  async function deliverBatch(
    w: LeasedWebhook,
    token: string,
    events: ChangeEvent[],
    agent: http.Agent,
    signal: AbortSignal,
    stats: LoopStats,
    succeeded: Array<{ e: ChangeEvent; r: SendResult; attempt: number }>,
    prior: Map<string, { attempts: number; done: boolean }>,
    probe: boolean,
  ): Promise<BatchOutcome> {
    const lanes = new Map<string, ChangeEvent[]>();
    for (const e of events) {
      if (prior.get(e.id)?.done) continue;
      const k = laneOf(w, e);
      const lane = lanes.get(k);
      if (lane) lane.push(e);
      else lanes.set(k, [e]);
    }
    const out: BatchOutcome = { leaseLost: false, failedAttempts: 0, maxFailedAttempt: 0, consecutive: 0, anySuccess: false };
    const queue = [...lanes.values()];
    if (probe) {
      // half-open breaker: one event is the probe
      queue.splice(1);
      if (queue[0]) queue[0] = queue[0].slice(0, 1);
    }
    let onSuccess: (() => void) | undefined;
    const runLane = async (lane: ChangeEvent[]) => {
      for (const e of lane) {
        if (out.leaseLost || signal.aborted) return;
        const attempt = (prior.get(e.id)?.attempts ?? 0) + 1;
        const r = await send(w, e, attempt, false, agent);
        const status = r.ok ? 'succeeded' : attempt >= s.maxAttempts ? 'dead' : 'failed';
        if (r.ok) {
          out.anySuccess = true;
          out.consecutive = 0;
          onSuccess?.();
        } else {
          out.consecutive++;
        }
        // successes are recorded with the batch's cursor move (one statement); failures at once
        if (status === 'succeeded') succeeded.push({ e, r, attempt });
        else if (!(await record(w, token, e, r, attempt, status))) {
          out.leaseLost = true;
          return;
        }
        if (status !== 'succeeded') stats[status]++;
        if (status === 'failed') {
          out.failedAttempts++;
          out.maxFailedAttempt = Math.max(out.maxFailedAttempt, attempt);
          return; // this lane waits for the retry; its later events must not overtake this one
        }
      }
    };
    // The circuit opens within the batch: past `breakerThreshold` failed attempts with no success,
    // no further lane is started (a black hole would otherwise cost one timeout per lane).
    const tripped = () => !out.anySuccess && out.consecutive >= s.breakerThreshold;
    const runner = async () => {
      for (let lane = tripped() ? undefined : queue.shift(); lane; lane = tripped() ? undefined : queue.shift()) await runLane(lane);
    };
    // An endpoint that is failing or has never answered gets one lane at a time until it answers
    // 2xx: its timeouts then come one by one, not as a burst of parallel failures (each a recorded
    // attempt on the shared admin pool, and a held socket each).
    const width = Math.min(s.concurrency, queue.length);
    const runners: Array<Promise<void>> = [];
    const widen = () => {
      while (runners.length < width) runners.push(runner());
    };
    if (w.proven && w.failures === 0) widen();
    else {
      runners.push(runner());
      onSuccess = widen;
    }
    for (let n = 0; n !== runners.length; ) {
      n = runners.length;
      await Promise.all(runners);
    }
    return out;
  }

  /** Attempts so far per event of a batch, and whether each is finished (delivered or dead). */
  async function priorAttempts(w: LeasedWebhook, events: ChangeEvent[]): Promise<Map<string, { attempts: number; done: boolean }>> {
    const { rows } = await db.adminQuery<{ change_id: string; attempts: number; done: boolean }>(
      `SELECT change_id::text AS change_id, max(attempt)::int AS attempts, bool_or(status IN ('succeeded', 'dead')) AS done
         FROM strata.webhook_deliveries WHERE webhook_id = $1 AND change_id = ANY ($2::bigint[]) AND NOT replay GROUP BY change_id`,
      [w.id, events.map((e) => e.id)],
    );
    return new Map(rows.map((r) => [r.change_id, { attempts: r.attempts, done: r.done }]));
  }

  /**
   * Take the webhook's lease, within its tenant's slot allowance (serialised per tenant by an
   * advisory lock, so concurrent claims cannot exceed it). Undefined: not due, taken, or no slot.
   */
  async function claim(webhookId: string, token: string): Promise<LeasedWebhook | undefined> {
    return db.admin.with(async (c) => {
      await c.query('BEGIN');
      try {
        const t = await c.query<{ tenant_id: string }>('SELECT tenant_id FROM strata.webhooks WHERE id = $1', [webhookId]);
        const tenant = t.rows[0]?.tenant_id;
        if (!tenant) {
          await c.query('COMMIT');
          return undefined;
        }
        await c.query("SELECT pg_advisory_xact_lock(hashtext('strata.webhook-slots'), hashtext($1))", [tenant]);
        const { rows } = await c.query<LeasedWebhook>(
          `UPDATE strata.webhooks w SET lease_owner = $2, lease_until = now() + make_interval(secs => $3::double precision / 1000)
            WHERE w.id = $1 AND w.active AND w.next_attempt_at <= now() AND (w.lease_until IS NULL OR w.lease_until < now() OR w.lease_owner = $2)
              AND (SELECT count(*) FROM strata.webhooks l WHERE l.tenant_id = $4 AND l.lease_until > now() AND l.id <> $1) < $5
              AND ((w.last_success_at IS NOT NULL AND w.failures = 0)
                   OR (SELECT count(*) FROM strata.webhooks l WHERE l.tenant_id = $4 AND l.lease_until > now() AND l.id <> $1
                         AND (l.last_success_at IS NULL OR l.failures > 0)) < $6)
            RETURNING ${RETURNING}`,
          [webhookId, token, s.leaseMs, tenant, s.tenantSlots, s.tenantFailingSlots],
        );
        await c.query('COMMIT');
        return rows[0];
      } catch (err) {
        await c.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
    });
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
      let w = await claim(webhookId, token);
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
          // a webhook that was retrying: skip what earlier passes finished, continue attempt counts
          const prior = w.attempt > 0 || w.failures > 0 ? await priorAttempts(w, events) : new Map<string, { attempts: number; done: boolean }>();
          const probe = w.failures >= s.breakerThreshold;
          const out = await deliverBatch(w, token, events, agentFor, signal, stats, succeeded, prior, probe);
          const failed = out.failedAttempts > 0;
          const complete = !out.leaseLost && !failed && !signal.aborted && !probe;
          const failures = failed ? (out.anySuccess ? out.consecutive : w.failures + out.consecutive) : out.anySuccess ? 0 : w.failures;
          const delayMs = !failed
            ? 0
            : failures >= s.breakerThreshold
              ? Math.max(s.breakerCooldownMs, backoffMs(out.maxFailedAttempt, s.backoffBaseMs, s.backoffMaxMs))
              : backoffMs(out.maxFailedAttempt, s.backoffBaseMs, s.backoffMaxMs);
          if (failed && failures >= s.breakerThreshold && w.failures < s.breakerThreshold) {
            log.warn({ webhook: w.id, tenant: w.tenant_id, failures, cooldownMs: delayMs }, 'webhook circuit opened: endpoint parked, then probed');
          }
          // Record the successes and, when the whole batch is done, move the cursor past it: one
          // statement. After a failure: the retry time (backoff, or the breaker's cooldown).
          const moved = await db.adminQuery<LeasedWebhook>(
            `WITH w AS (
               UPDATE strata.webhooks SET cursor = CASE WHEN $5 THEN $3::bigint ELSE cursor END,
                      attempt = CASE WHEN $10 THEN greatest(attempt, 1) WHEN $5 THEN 0 ELSE attempt END,
                      failures = $11,
                      last_success_at = CASE WHEN $12 THEN now() ELSE last_success_at END,
                      next_attempt_at = now() + make_interval(secs => $13::double precision / 1000),
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
              failed,
              failures,
              out.anySuccess,
              delayMs,
            ],
          );
          stats.delivered += succeeded.length;
          // a probe that succeeded closes the breaker: the loop goes on with the whole batch
          if (!complete && !(probe && !failed && !out.leaseLost && !signal.aborted)) return stats;
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

    /**
     * Re-deliver the events in (after, until] of one webhook (of `tenantId`), in id order, each
     * retried as usual. One call is one run of the replay job: it goes on while events succeed (or
     * are dead-lettered) and STOPS at a failed attempt, returning the backoff to wait (`waitMs`) and
     * where it stands; the caller waits it out without holding a worker (job back to delayed) and
     * calls again with that `progress`. The first call (no `from.progress`) fixes `until` and counts
     * the events.
     */
    async replay(
      webhookId: string,
      tenantId: string,
      from: { after: string; until?: string; progress?: ReplayProgress },
      signal: AbortSignal,
      report: (done: number, total: number) => Promise<void>,
    ): Promise<ReplayStep> {
      const found = await db.adminQuery<LeasedWebhook>(`SELECT ${RETURNING} FROM strata.webhooks WHERE id = $1 AND tenant_id = $2`, [webhookId, tenantId]);
      const w = found.rows[0];
      let p: ReplayProgress;
      if (from.progress) p = from.progress;
      else {
        const until = from.until ?? (await db.adminQuery<{ h: string }>('SELECT strata.change_horizon($1)::text AS h', [tenantId])).rows[0]?.h ?? '0';
        const { rows } = w
          ? await db.adminQuery<{ n: string }>(
              `SELECT count(*)::text AS n FROM strata.changes WHERE tenant_id = $1 AND id > $2::bigint AND id <= $3::bigint
                  AND (cardinality($4::text[]) = 0 OR table_name = ANY ($4)) AND op = ANY ($5)`,
              [tenantId, from.after, until, w.tables, w.ops],
            )
          : { rows: [] };
        p = { until, cursor: from.after, attempts: 0, done: 0, total: Number(rows[0]?.n ?? 0), delivered: 0, dead: 0 };
        await report(0, p.total);
      }
      if (!w) return { progress: p }; // deleted meanwhile: nothing more to send
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      try {
        while (!signal.aborted) {
          const events = await nextEvents(w, p.cursor, 100, p.until);
          if (!events.length) break;
          for (const e of events) {
            if (signal.aborted) return { progress: p };
            const attempt: number = p.attempts + 1;
            const r = await send(w, e, attempt, true, w.url.startsWith('https:') ? undefined : agent);
            const dead: boolean = !r.ok && attempt >= s.maxAttempts;
            await db.adminQuery(
              `INSERT INTO strata.webhook_deliveries (webhook_id, tenant_id, change_id, attempt, status, http_status, error, duration_ms, replay)
               VALUES ($1, $2, $3::bigint, $4, $5, $6, $7, $8, true)`,
              [w.id, w.tenant_id, e.id, attempt, r.ok ? 'succeeded' : dead ? 'dead' : 'failed', r.status, r.error?.slice(0, 500) ?? null, r.ms],
            );
            if (!r.ok && !dead) {
              // the next attempt of this event is due after the backoff: give the worker back meanwhile
              p = { ...p, attempts: attempt };
              return { progress: p, waitMs: backoffMs(attempt, s.backoffBaseMs, s.backoffMaxMs) };
            }
            p = { ...p, cursor: e.id, attempts: 0, done: p.done + 1, delivered: p.delivered + (r.ok ? 1 : 0), dead: p.dead + (dead ? 1 : 0) };
            await report(p.done, p.total);
          }
        }
        return { progress: p };
      } finally {
        agent.destroy();
      }
    },

    /**
     * Webhooks with events to deliver, due, not leased by a running loop, and within their tenant's
     * slot allowance (healthy endpoints first): at most as many per tenant as could take a lease now.
     */
    async due(): Promise<Array<{ id: string; tenant_id: string }>> {
      const pending = `EXISTS (SELECT 1 FROM strata.changes c WHERE c.tenant_id = w.tenant_id AND c.id > w.cursor
                            AND (cardinality(w.tables) = 0 OR c.table_name = ANY (w.tables)) AND c.op = ANY (w.ops))`;
      const values: unknown[] = [s.tenantSlots, s.tenantFailingSlots];
      let hasEvents = pending;
      if (db.cluster) {
        // On a cluster the change log is distributed (migration 0018) and Citus does not correlate a
        // coordinator table with it: the idle, due webhooks first, then one statement per webhook
        // routed to its tenant's shard.
        const { rows: idle } = await db.adminQuery<{ id: string; tenant_id: string; cursor: string; tables: string[]; ops: string[] }>(
          `SELECT w.id, w.tenant_id, w.cursor::text AS cursor, w.tables, w.ops FROM strata.webhooks w
            WHERE w.active AND w.next_attempt_at <= now() AND (w.lease_until IS NULL OR w.lease_until < now())`,
        );
        const ids: string[] = [];
        for (const w of idle) {
          const { rows } = await db.adminQuery<{ e: boolean }>(
            `SELECT EXISTS (SELECT 1 FROM strata.changes c WHERE c.tenant_id = $1 AND c.id > $2::bigint
                              AND (cardinality($3::text[]) = 0 OR c.table_name = ANY ($3::text[])) AND c.op = ANY ($4::text[])) AS e`,
            [w.tenant_id, w.cursor, w.tables, w.ops],
          );
          if (rows[0]?.e) ids.push(w.id);
        }
        if (ids.length === 0) return [];
        values.push(ids);
        hasEvents = `w.id = ANY ($3::uuid[])`;
      }
      const { rows } = await db.adminQuery<{ id: string; tenant_id: string }>(
        `WITH cand AS (
           SELECT w.id, w.tenant_id, (w.last_success_at IS NULL OR w.failures > 0) AS failing, w.next_attempt_at
             FROM strata.webhooks w
            WHERE w.active AND w.next_attempt_at <= now() AND (w.lease_until IS NULL OR w.lease_until < now())
              AND ${hasEvents}),
         leased AS (
           SELECT tenant_id, count(*) AS n, count(*) FILTER (WHERE last_success_at IS NULL OR failures > 0) AS nf
             FROM strata.webhooks WHERE lease_until > now() GROUP BY tenant_id),
         ranked AS (
           SELECT c.id, c.tenant_id, c.failing, coalesce(l.n, 0) AS n, coalesce(l.nf, 0) AS nf,
                  row_number() OVER (PARTITION BY c.tenant_id ORDER BY c.failing, c.next_attempt_at) AS r,
                  row_number() OVER (PARTITION BY c.tenant_id, c.failing ORDER BY c.next_attempt_at) AS rf
             FROM cand c LEFT JOIN leased l USING (tenant_id))
         SELECT id, tenant_id FROM ranked WHERE n + r <= $1 AND (NOT failing OR nf + rf <= $2)`,
        values,
      );
      return rows;
    },
  };
}

export type WebhookDeliveryService = ReturnType<typeof createWebhookDelivery>;
