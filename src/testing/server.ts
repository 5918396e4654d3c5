/**
 * The PostgreSQL server test databases live on: its URL, one small pool per server for CREATE and
 * DROP DATABASE, and the names of test databases (which carry their creator and birth time, so a
 * sweep can tell a crashed run's leftovers from a live run's databases).
 */
import { createHash, randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import pg from 'pg';

/** TEST_DATABASE_URL, else the local cluster as the postgres superuser. */
export const defaultServerUrl = (): string =>
  process.env['TEST_DATABASE_URL'] ?? 'postgres://postgres@127.0.0.1:5432/postgres';

/** `server` with its database part replaced by `database`. */
export function urlFor(database: string, server = defaultServerUrl()): string {
  const u = new URL(server);
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

export const quoteIdent = (name: string): string => pg.escapeIdentifier(name);

const pools = new Map<string, pg.Pool>();

/** A pool on the server's maintenance database (the one its URL names); kept for the process. */
export function serverPool(serverUrl: string): pg.Pool {
  let pool = pools.get(serverUrl);
  if (!pool) {
    pool = new pg.Pool({ connectionString: serverUrl, max: 4, idleTimeoutMillis: 1000, allowExitOnIdle: true });
    // an idle connection killed by the server (restart, pg_terminate_backend) must not end the process
    pool.on('error', () => undefined);
    pools.set(serverUrl, pool);
  }
  return pool;
}

/** Close every server pool (end of a run; pools also let the process exit when idle). */
export async function closeServerPools(): Promise<void> {
  const all = [...pools.values()];
  pools.clear();
  await Promise.all(all.map((p) => p.end().catch(() => undefined)));
}

/** Four hex characters naming this machine: pids are only comparable on the same host. */
export const HOST_TAG = createHash('sha256').update(hostname()).digest('hex').slice(0, 4);

/** Names: `<prefix>_<birth ms, base36>_<pid, base36>_<host tag>_<random>`. */
export function cloneName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}_${process.pid.toString(36)}_${HOST_TAG}_${randomBytes(3).toString('hex')}`;
}

export interface ParsedName {
  bornAt: number;
  pid: number;
  host: string;
}

/** The birth time, pid and host tag of a name made by cloneName (with any suffix), or null. */
export function parseCloneName(prefix: string, name: string): ParsedName | null {
  if (!name.startsWith(`${prefix}_`)) return null;
  const m = /^([0-9a-z]{6,10})_([0-9a-z]{1,8})_([0-9a-f]{4})_[0-9a-f]{6}(?:_.*)?$/.exec(name.slice(prefix.length + 1));
  if (!m) return null;
  return { bornAt: parseInt(m[1]!, 36), pid: parseInt(m[2]!, 36), host: m[3]! };
}

/** Whether a process of this host is alive (EPERM: alive, someone else's). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Valid prefix for database names: lower-case, short enough to leave room for the suffix. */
export function checkPrefix(prefix: string, what: string): string {
  if (!/^[a-z_][a-z0-9_]{0,23}$/.test(prefix)) {
    throw new TypeError(`${what} ${JSON.stringify(prefix)} must match ^[a-z_][a-z0-9_]{0,23}$`);
  }
  return prefix;
}
