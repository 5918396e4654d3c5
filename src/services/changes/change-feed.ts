/**
 * The change feed: one dedicated PostgreSQL connection per process, fanned out in process. It wakes
 * subscribers when the change-id sequence moves (polled every `pollMs` on that connection: one tiny
 * query per process, whatever the number of subscribers) and on NOTIFY `strata_changes` from tables
 * captured with `notify` (LISTEN on the same connection).
 *
 * Why poll the sequence rather than NOTIFY by default: a transaction that has notified takes a
 * cluster-wide lock at commit and holds it until its commit is flushed, so every capturing writer
 * would commit one at a time (measured: capture on/off throughput 0.24x with NOTIFY per transaction).
 *
 * A wake-up is only a hint: subscribers re-read the change log after their own cursor, under the
 * visibility horizon, so nothing is lost to a missed or folded wake-up. Every subscriber is woken
 * (an event of tenant A can be held back by a transaction of tenant B), on reconnect, and at least
 * once a second (a rolled-back transaction releases the horizon without moving the sequence).
 */
import pg from 'pg';
import type { Logger } from 'pino';

export const CHANGES_CHANNEL = 'strata_changes';

/** Called with the notifying tenant, or null for a reconnect or a poll tick. */
export type Wake = (tenantId: string | null) => void;

export interface ChangeFeed {
  /** Register a wake-up callback; the LISTEN connection opens with the first subscriber. */
  subscribe(wake: Wake): () => void;
  readonly subscribers: number;
  close(): Promise<void>;
}

export interface ChangeFeedOptions {
  connectionString: string;
  log: Pick<Logger, 'warn' | 'info' | 'debug'>;
  pollMs: number;
}

export function createChangeFeed(opts: ChangeFeedOptions): ChangeFeed {
  const wakes = new Set<Wake>();
  let client: pg.Client | undefined;
  let connecting: Promise<void> | undefined;
  let closed = false;
  let retryMs = 250;
  let retryTimer: NodeJS.Timeout | undefined;
  let poll: NodeJS.Timeout | undefined;
  let lastSeen: string | undefined;
  let lastWake = 0;
  let polling = false;

  /** One poll: wake everyone when the sequence moved, or when a second passed without a wake-up. */
  function tick() {
    if (wakes.size === 0) return; // nobody to wake: no queries
    const c = client;
    if (!c || polling) {
      if (Date.now() - lastWake >= 1_000) wakeAll(null);
      return;
    }
    polling = true;
    c.query<{ v: string }>("SELECT last_value::text || ':' || is_called::text AS v FROM strata.changes_id_seq")
      .then(({ rows }) => {
        const v = rows[0]?.v;
        if (v !== lastSeen || Date.now() - lastWake >= 1_000) {
          lastSeen = v;
          wakeAll(null);
        }
      })
      .catch(() => undefined) // the connection's error handler reconnects
      .finally(() => {
        polling = false;
      });
  }

  const wakeAll = (tenant: string | null) => {
    lastWake = Date.now();
    for (const w of [...wakes]) {
      try {
        w(tenant);
      } catch (err) {
        opts.log.warn({ err }, 'change feed subscriber failed on wake-up');
      }
    }
  };

  function connect(): Promise<void> {
    if (closed || client || connecting) return connecting ?? Promise.resolve();
    const c = new pg.Client({ connectionString: opts.connectionString, application_name: 'strata:change-feed' });
    c.on('notification', (msg) => wakeAll(msg.payload ?? null));
    c.on('error', (err) => {
      opts.log.warn({ err: { message: err.message } }, 'change feed connection lost; reconnecting');
      drop(c);
    });
    c.on('end', () => drop(c));
    connecting = c
      .connect()
      .then(() => c.query(`LISTEN ${CHANGES_CHANNEL}`))
      .then(() => {
        if (closed) return void c.end().catch(() => undefined);
        client = c;
        retryMs = 250;
        wakeAll(null); // anything committed while we were not listening
      })
      .catch((err: unknown) => {
        opts.log.warn({ err: { message: err instanceof Error ? err.message : String(err) } }, 'change feed could not LISTEN; retrying');
        void c.end().catch(() => undefined);
        scheduleReconnect();
      })
      .finally(() => {
        connecting = undefined;
      });
    return connecting;
  }

  function drop(c: pg.Client) {
    if (client === c) client = undefined;
    void c.end().catch(() => undefined);
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (closed || retryTimer || wakes.size === 0) return;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      void connect();
    }, retryMs);
    retryTimer.unref();
    retryMs = Math.min(retryMs * 2, 5_000);
  }

  return {
    subscribe(wake) {
      wakes.add(wake);
      if (!poll) {
        poll = setInterval(tick, opts.pollMs);
        poll.unref();
      }
      void connect();
      return () => {
        wakes.delete(wake);
      };
    },
    get subscribers() {
      return wakes.size;
    },
    async close() {
      closed = true;
      clearInterval(poll);
      clearTimeout(retryTimer);
      wakes.clear();
      await connecting;
      const c = client;
      client = undefined;
      await c?.end().catch(() => undefined);
    },
  };
}

/**
 * A wake-up latch for one consumer: `wait()` resolves at the next wake (or at once when one came
 * since the last wait), or when the signal aborts.
 */
export function createLatch(signal?: AbortSignal) {
  let pending = true; // read once at start
  let release: (() => void) | undefined;
  const onAbort = () => release?.();
  signal?.addEventListener('abort', onAbort, { once: true });
  return {
    wake() {
      pending = true;
      release?.();
    },
    async wait(timeoutMs?: number): Promise<void> {
      if (pending || signal?.aborted) {
        pending = false;
        return;
      }
      await new Promise<void>((resolve) => {
        const timer = timeoutMs === undefined ? undefined : setTimeout(() => release?.(), timeoutMs);
        release = () => {
          clearTimeout(timer);
          release = undefined;
          resolve();
        };
      });
      pending = false;
    },
    dispose() {
      signal?.removeEventListener('abort', onAbort);
      release?.();
    },
  };
}
