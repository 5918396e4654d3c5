/**
 * Redis connections. At boot Redis must answer; when nothing answers at REDIS_URL on a local
 * address and a `redis-server` binary is on PATH, it is started as a child process. After boot an
 * outage is tolerated: reads and writes keep working, enqueueing answers 503.
 */
import { spawn, type ChildProcess, execFileSync } from 'node:child_process';
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';

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

export function redisOptions(extra: RedisOptions = {}): RedisOptions {
  return {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: 2000,
    retryStrategy: (times) => Math.min(times * 200, 2000),
    lazyConnect: true,
    ...extra,
  };
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
export async function connectRedis(url: string, log: Logger): Promise<RedisHandle> {
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
  const client = new Redis(url, redisOptions());
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
