/**
 * Redis connections. At boot Redis must answer; when nothing answers at REDIS_URL on a local
 * address and a `redis-server` binary is on PATH, it is started as a child process. After boot an
 * outage is tolerated: reads and writes keep working, enqueueing answers 503.
 */
import { spawn, type ChildProcess, execFileSync } from 'node:child_process';
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';
import type { Config } from './config.js';

export interface RedisHandle {
  /** Connection for commands (no offline queue: fails fast while Redis is down). */
  readonly client: Redis;
  readonly url: string;
  /** The redis-server child we started, if any. */
  readonly child: ChildProcess | undefined;
  close(): Promise<void>;
}

export class BootError extends Error {
  override readonly name = 'BootError';
}

/** Time bounds of a Redis connection (REDIS_COMMAND_TIMEOUT_MS, REDIS_CONNECT_TIMEOUT_MS, REDIS_RECONNECT_MAX_MS). */
export interface RedisBounds {
  commandTimeoutMs?: number;
  connectTimeoutMs?: number;
  reconnectMaxMs?: number;
}

export const DEFAULT_REDIS_BOUNDS: Required<RedisBounds> = { commandTimeoutMs: 1_000, connectTimeoutMs: 2_000, reconnectMaxMs: 500 };

/** The bounds configured in `config`. */
export const redisBoundsOf = (c: Pick<Config, 'REDIS_COMMAND_TIMEOUT_MS' | 'REDIS_CONNECT_TIMEOUT_MS' | 'REDIS_RECONNECT_MAX_MS'>): Required<RedisBounds> => ({
  commandTimeoutMs: c.REDIS_COMMAND_TIMEOUT_MS,
  connectTimeoutMs: c.REDIS_CONNECT_TIMEOUT_MS,
  reconnectMaxMs: c.REDIS_RECONNECT_MAX_MS,
});

/**
 * Reconnect backoff: 50 ms, 100 ms, ... capped at `maxMs` (never gives up). A short cap means a
 * connection is back within `maxMs` of Redis answering again (ioredis' default grows to 2 s,
 * BullMQ's to 20 s).
 */
export const reconnectStrategy = (maxMs: number) => (times: number) => Math.min(times * 50, maxMs);

/**
 * Options of a request-path connection: no offline queue (fails fast while disconnected), and every
 * command bounded by `commandTimeout`, so a hung Redis (TCP open, nothing answers) fails a command
 * after commandTimeoutMs instead of holding the request. Not for BullMQ workers: their blocking
 * commands must not time out (see bullmqConnection).
 */
export function redisOptions(extra: RedisOptions = {}, bounds: RedisBounds = {}): RedisOptions {
  const b = { ...DEFAULT_REDIS_BOUNDS, ...bounds };
  return {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: b.connectTimeoutMs,
    commandTimeout: b.commandTimeoutMs,
    retryStrategy: reconnectStrategy(b.reconnectMaxMs),
    lazyConnect: true,
    ...extra,
  };
}

/**
 * Options of a BullMQ worker/dispatcher connection: `maxRetriesPerRequest: null` (BullMQ requires
 * it), no commandTimeout (blocking commands wait by design), a connect timeout, a short capped
 * reconnect backoff, and TCP keep-alive so a silently dead peer is noticed.
 */
export function bullmqConnection(url: string, bounds: RedisBounds = {}): RedisOptions & { url: string } {
  const b = { ...DEFAULT_REDIS_BOUNDS, ...bounds };
  return { url, maxRetriesPerRequest: null, connectTimeout: b.connectTimeoutMs, retryStrategy: reconnectStrategy(b.reconnectMaxMs), keepAlive: 10_000 };
}

async function ping(url: string): Promise<boolean> {
  const probe = new Redis(url, { lazyConnect: true, connectTimeout: 1000, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  probe.on('error', () => undefined);
  try {
    await probe.connect();
    return (await probe.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    probe.disconnect();
  }
}

function onPath(bin: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Connect to Redis, starting a local redis-server child when allowed. Throws BootError with one clear line. */
export async function connectRedis(url: string, log: Logger, bounds: RedisBounds = {}): Promise<RedisHandle> {
  let child: ChildProcess | undefined;
  if (!(await ping(url))) {
    const u = new URL(url);
    const local = ['127.0.0.1', 'localhost', '::1', '[::1]'].includes(u.hostname);
    if (!local || !onPath('redis-server')) {
      throw new BootError(`Redis is not reachable at REDIS_URL=${u.protocol}//${u.host}; start Redis there or set REDIS_URL to a running Redis >= 7`);
    }
    const port = u.port || '6379';
    log.warn({ port }, 'no Redis answering; starting a local redis-server child process');
    child = spawn('redis-server', ['--port', port, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    const deadline = Date.now() + 5000;
    while (!(await ping(url))) {
      if (Date.now() > deadline || child.exitCode !== null) {
        throw new BootError(`could not start redis-server on port ${port}; set REDIS_URL to a running Redis >= 7`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const client = new Redis(url, redisOptions({}, bounds));
  client.on('error', (err) => log.warn({ err: { message: err.message } }, 'redis connection error'));
  await client.connect();
  return {
    client,
    url,
    child,
    async close() {
      await client.quit().catch(() => client.disconnect());
      child?.kill('SIGTERM');
    },
  };
}
