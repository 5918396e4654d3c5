/**
 * Cleanup that survives crashes: every test database's name carries its creator's pid, host and
 * birth time (server.ts), so leftovers of a killed run are found by name alone and dropped: those
 * whose creator on this host is gone, and any older than `maxAgeMs` (other hosts, reused pids).
 */
import { parsePoolName } from './pool.js';
import { HOST_TAG, checkPrefix, defaultServerUrl, parseCloneName, pidAlive, quoteIdent, serverPool } from './server.js';

export interface SweepOptions {
  serverUrl?: string;
  /** Name prefix of the test databases to consider (default `strata_test`). */
  prefix?: string;
  /** Databases older than this are dropped whoever made them (default 1 hour). */
  maxAgeMs?: number;
}

export interface SweptDatabase {
  name: string;
  reason: 'creator exited' | 'too old' | 'pool clone too old';
}

export const DEFAULT_CLONE_PREFIX = 'strata_test';
export const DEFAULT_MAX_AGE_MS = 60 * 60 * 1000;

/** Drop stale test databases of a prefix; returns what was dropped and why. */
export async function sweepTestDatabases(opts: SweepOptions = {}): Promise<SweptDatabase[]> {
  const serverUrl = opts.serverUrl ?? defaultServerUrl();
  const prefix = checkPrefix(opts.prefix ?? DEFAULT_CLONE_PREFIX, 'prefix');
  const maxAgeMs = opts.maxAgeMs ?? DEFAULT_MAX_AGE_MS;
  const server = serverPool(serverUrl);
  const { rows } = await server.query<{ datname: string }>(
    'SELECT datname FROM pg_database WHERE starts_with(datname, $1) AND NOT datistemplate',
    [`${prefix}_`],
  );
  const now = Date.now();
  const stale: SweptDatabase[] = [];
  for (const { datname } of rows) {
    const pooled = parsePoolName(prefix, datname);
    if (pooled) {
      // a ready clone nobody took (pool.ts): shared by every process, so only age makes it stale
      if (now - pooled.bornAt > maxAgeMs) stale.push({ name: datname, reason: 'pool clone too old' });
      continue;
    }
    const parsed = parseCloneName(prefix, datname);
    if (!parsed) continue; // not one of ours, whatever its name says
    if (parsed.host === HOST_TAG && parsed.pid !== process.pid && !pidAlive(parsed.pid)) {
      stale.push({ name: datname, reason: 'creator exited' });
    } else if (now - parsed.bornAt > maxAgeMs) {
      stale.push({ name: datname, reason: 'too old' });
    }
  }
  const dropped: SweptDatabase[] = [];
  for (const s of stale) {
    try {
      await server.query(`DROP DATABASE IF EXISTS ${quoteIdent(s.name)} WITH (FORCE)`);
      dropped.push(s);
    } catch {
      // another sweeper got there first, or it is in use as a template at this instant: next sweep
    }
  }
  return dropped;
}

const swept = new Map<string, Promise<unknown>>();

/** One sweep per server and prefix per process, before the first clone. */
export function sweepOnce(opts: Required<Pick<SweepOptions, 'serverUrl' | 'prefix'>> & SweepOptions): Promise<unknown> {
  const key = `${opts.serverUrl}\0${opts.prefix}`;
  let p = swept.get(key);
  if (!p) {
    p = sweepTestDatabases(opts).catch(() => []);
    swept.set(key, p);
  }
  return p;
}
