/**
 * Backup tests' helpers: a test app with its own backup directory and real BullMQ workers on the
 * app's queue prefix, waiting for jobs, and reading a whole database (every table, every row) to
 * compare two databases exactly.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { Redis } from 'ioredis';
import { expect } from 'vitest';
import { startWorkers, type WorkerRuntime } from '../../src/jobs/runtime.js';
import type { JobView } from '../../src/jobs/queues.js';
import { listTables, quoteIdent, urlForDatabase } from '../../src/services/backups/index.js';
import { createTestApp, type TestApp, type TestAppOptions } from './app.js';
import { REDIS_URL, SERVER_URL, withServer } from './databases.js';

export interface BackupTestEnv {
  t: TestApp;
  dir: string;
  workers: WorkerRuntime;
  /** Databases a test created (restores): dropped by close(). */
  created: Set<string>;
  headers(): Promise<Record<string, string>>;
  waitJob(id: string, timeoutMs?: number): Promise<JobView>;
  close(): Promise<void>;
}

export async function createBackupTestEnv(opts: TestAppOptions = {}): Promise<BackupTestEnv> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'strata-backups-'));
  // A cache prefix of its own: an in-place restore retires every cached read under it.
  const t = await createTestApp({ seed: true, ...opts, env: { BACKUP_DIR: dir, CACHE_PREFIX: `test-cache-${path.basename(dir)}`, ...opts.env } }).catch(async (err: unknown) => {
    await rm(dir, { recursive: true, force: true });
    throw err;
  });
  const workers = startWorkers({ redisUrl: REDIS_URL, prefix: t.jobs.prefix, log: pino({ level: 'silent' }), db: t.db, concurrency: 2, queues: ['backups'] });
  const created = new Set<string>();
  const headers = () => t.auth('platform_admin', null);
  async function waitJob(id: string, timeoutMs = 90_000): Promise<JobView> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const res = await t.app.inject({ url: `/v1/jobs/${id}`, headers: await headers() });
      expect(res.statusCode).toBe(200);
      const v = res.json().data as JobView;
      if (v.state === 'completed' || v.state === 'failed' || v.state === 'cancelled') return v;
      if (Date.now() > deadline) throw new Error(`job ${id} still ${v.state}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return {
    t,
    dir,
    workers,
    created,
    headers,
    waitJob,
    async close() {
      await workers.close({ timeoutMs: 10_000 });
      for (const q of Object.values(t.jobs.queues)) await q.obliterate({ force: true }).catch(() => undefined);
      const r = new Redis(REDIS_URL);
      const keys = [...(await r.keys(`${t.jobs.prefix}:*`)), ...(await r.keys(`${t.config.CACHE_PREFIX}:*`))];
      if (keys.length) await r.del(...keys);
      await r.quit();
      await t.close();
      for (const name of created) await withServer((c) => c.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`));
      // Scratch databases of verifications are dropped by the service; nothing may be left behind.
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Every row of every table (schemas public and strata), as sorted JSON text per table. */
export async function readDatabase(database: string, opts: { exclude?: string[] } = {}): Promise<Record<string, string[]>> {
  const c = new pg.Client({ connectionString: urlForDatabase(SERVER_URL, database) });
  await c.connect();
  try {
    const out: Record<string, string[]> = {};
    for (const t of await listTables(c, ['public', 'strata'])) {
      const key = `${t.schema}.${t.name}`;
      if (opts.exclude?.includes(key)) continue;
      const { rows } = await c.query<{ r: string }>(`SELECT to_jsonb(x)::text AS r FROM ${quoteIdent(t.schema)}.${quoteIdent(t.name)} x ORDER BY 1`);
      out[key] = rows.map((r) => r.r);
    }
    return out;
  } finally {
    await c.end();
  }
}

export async function databaseExists(name: string): Promise<boolean> {
  return withServer(async (c) => (await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).rowCount === 1);
}

/** Run SQL on a database as the superuser (test set-up and changes). */
export async function sqlOn(database: string, text: string, values?: unknown[]): Promise<pg.QueryResult> {
  const c = new pg.Client({ connectionString: urlForDatabase(SERVER_URL, database) });
  await c.connect();
  try {
    return await c.query(text, values);
  } finally {
    await c.end();
  }
}
