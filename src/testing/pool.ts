/**
 * A pool of clones made ahead of time (IntegreSQL's method): `createTestDatabase()` takes a ready
 * clone of the current template by renaming it (`ALTER DATABASE ... RENAME`, atomic: of two
 * processes racing for one clone, one gets it and the other takes the next), then refills the pool
 * in the background. A test pays a catalog update instead of a copy of the template.
 *
 * Pool databases are named `<prefix>_pool_<template key>_<birth ms, base36>_<random>`: the key ties a
 * clone to the template it was made from (a clone of another migration set is never handed out), the
 * birth time lets a sweep drop old ones. Nobody connects to a pool database, so a rename never waits.
 * One refiller per server, prefix and template at a time (a session advisory lock); a process that
 * ends while refilling leaves either a complete pool database or none (CREATE DATABASE is atomic).
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { quoteIdent, serverPool } from './server.js';

export type PoolStrategy = 'FILE_COPY' | 'WAL_LOG';

/** Default number of ready clones kept per server, prefix and template (STRATA_TEST_POOL, else 2). */
export function defaultPoolSize(): number {
  const v = process.env['STRATA_TEST_POOL'];
  if (v === undefined || v === '') return 2;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 32) throw new TypeError(`STRATA_TEST_POOL must be an integer 0-32, got ${JSON.stringify(v)}`);
  return n;
}

/** The 12-hex key of a template name (`<templatePrefix>_<key>`). */
export function keyOfTemplate(template: string): string {
  const m = /_([0-9a-f]{12})$/.exec(template);
  if (!m) throw new TypeError(`template ${JSON.stringify(template)} has no key`);
  return m[1]!;
}

const poolPrefix = (prefix: string, template: string) => `${prefix}_pool_${keyOfTemplate(template)}_`;
const POOL_NAME = /^pool_([0-9a-f]{12})_([0-9a-z]{6,10})_[0-9a-f]{6}$/;

/** The template key and birth time of a pool database name of `prefix`, or null. */
export function parsePoolName(prefix: string, name: string): { key: string; bornAt: number } | null {
  if (!name.startsWith(`${prefix}_`)) return null;
  const m = POOL_NAME.exec(name.slice(prefix.length + 1));
  return m ? { key: m[1]!, bornAt: parseInt(m[2]!, 36) } : null;
}

/**
 * Take a ready clone of `template` and give it the name `name`. False when the pool is empty (or
 * every candidate was taken by another process meanwhile).
 */
export async function claimPooled(serverUrl: string, prefix: string, template: string, name: string): Promise<boolean> {
  const server = serverPool(serverUrl);
  const { rows } = await server.query<{ datname: string }>(
    'SELECT datname FROM pg_database WHERE starts_with(datname, $1) AND NOT datistemplate ORDER BY datname LIMIT 8',
    [poolPrefix(prefix, template)],
  );
  for (const { datname } of rows) {
    try {
      await server.query(`ALTER DATABASE ${quoteIdent(datname)} RENAME TO ${quoteIdent(name)}`);
      return true;
    } catch (err) {
      // 3D000: another process renamed it first; 55006: someone is connected to it
      const code = (err as { code?: string }).code;
      if (code !== '3D000' && code !== '55006') throw err;
    }
  }
  return false;
}

interface Filler {
  running: Promise<void> | null;
  again: boolean;
}
const fillers = new Map<string, Filler>();

/**
 * Bring the pool of `template` up to `size` ready clones; resolves when done (or when another
 * process holds the refill lock: it fills the pool). One fill per process and pool at a time; a
 * call during a fill makes it check once more at its end.
 */
export function fillPool(serverUrl: string, prefix: string, template: string, size: number, strategy: PoolStrategy): Promise<void> {
  if (size <= 0) return Promise.resolve();
  const key = `${serverUrl}\0${prefix}\0${template}`;
  let f = fillers.get(key);
  if (!f) fillers.set(key, (f = { running: null, again: false }));
  const filler = f;
  if (filler.running) {
    filler.again = true;
    return filler.running;
  }
  const loop = async () => {
    do {
      filler.again = false;
      await fillOnce(serverUrl, prefix, template, size, strategy);
    } while (filler.again);
  };
  filler.running = loop().finally(() => {
    filler.running = null;
  });
  return filler.running;
}

async function fillOnce(serverUrl: string, prefix: string, template: string, size: number, strategy: PoolStrategy): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  client.on('error', () => undefined);
  await client.connect();
  try {
    const lock = `strata.testing.pool:${prefix}:${template}`;
    const { rows } = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock(hashtext($1)) AS ok', [lock]);
    if (!rows[0]?.ok) return; // another process is filling this pool
    try {
      await dropOrphanPools(client, prefix);
      for (;;) {
        const { rows: have } = await client.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM pg_database WHERE starts_with(datname, $1) AND NOT datistemplate',
          [poolPrefix(prefix, template)],
        );
        if ((have[0]?.n ?? 0) >= size) return;
        const name = `${poolPrefix(prefix, template)}${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
        await client.query(`CREATE DATABASE ${quoteIdent(name)} TEMPLATE ${quoteIdent(template)} STRATEGY ${strategy}`);
      }
    } finally {
      await client.query('SELECT pg_advisory_unlock(hashtext($1))', [lock]).catch(() => undefined);
    }
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Pool databases of `prefix` whose template no longer exists (an older migration set): never handed out. */
async function dropOrphanPools(client: pg.ClientBase, prefix: string): Promise<void> {
  const { rows } = await client.query<{ datname: string }>(
    `SELECT p.datname FROM pg_database p
      WHERE starts_with(p.datname, $1)
        AND NOT EXISTS (SELECT 1 FROM pg_database t WHERE t.datistemplate AND t.datname LIKE '%\\_' || substr(p.datname, length($1) + 1, 12))`,
    [`${prefix}_pool_`],
  );
  for (const r of rows) {
    if (!parsePoolName(prefix, r.datname)) continue;
    await client.query(`DROP DATABASE IF EXISTS ${quoteIdent(r.datname)} WITH (FORCE)`).catch(() => undefined);
  }
}

/** Wait for this process's pending refills (of every pool). */
export async function settlePools(): Promise<void> {
  for (const f of [...fillers.values()]) await f.running?.catch(() => undefined);
}

/**
 * Drop every pool database of `prefix` (all templates), e.g. at the end of a test run; waits for
 * this process's refills first. Returns the names dropped.
 */
export async function drainPool(serverUrl: string, prefix: string): Promise<string[]> {
  await settlePools();
  const server = serverPool(serverUrl);
  const { rows } = await server.query<{ datname: string }>('SELECT datname FROM pg_database WHERE starts_with(datname, $1) AND NOT datistemplate', [
    `${prefix}_pool_`,
  ]);
  const dropped: string[] = [];
  for (const r of rows) {
    if (!parsePoolName(prefix, r.datname)) continue;
    try {
      await server.query(`DROP DATABASE IF EXISTS ${quoteIdent(r.datname)} WITH (FORCE)`);
      dropped.push(r.datname);
    } catch {
      // taken by a rename at this instant (it is a test database now, its taker drops it)
    }
  }
  return dropped;
}
