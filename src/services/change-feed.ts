/**
 * The change feed: one dedicated PostgreSQL connection per process LISTENing on `strata_changes`
 * (the capture trigger notifies once per tenant and transaction, at commit), fanned out in process.
 *
 * A notification is only a wake-up: subscribers re-read the change log after their own cursor, under
 * the visibility horizon, so a lost or folded notification loses nothing. Every subscriber is woken
 * by every notification (an event of tenant A can be held back by a transaction of tenant B, whose
 * commit is what releases it), on reconnect, and every `pollMs` as a fallback (a transaction that
 * rolls back releases the horizon without notifying).
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

  const wakeAll = (tenant: string | null) => {
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
        poll = setInterval(() => wakeAll(null), opts.pollMs);
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
