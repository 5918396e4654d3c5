/**
 * Test databases: a template migrated once per run (global setup), cloned per test file with
 * CREATE DATABASE ... TEMPLATE (graphile-worker's and pgtestdb's approach), dropped after.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';

/** Server used by the tests: TEST_DATABASE_URL, else the local cluster. */
export const SERVER_URL = process.env['TEST_DATABASE_URL'] ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const REDIS_URL = process.env['TEST_REDIS_URL'] ?? 'redis://127.0.0.1:6379';

export function urlFor(database: string, server = SERVER_URL): string {
  const u = new URL(server);
  u.pathname = `/${database}`;
  return u.toString();
}

/** Hash of every migration file: the template is rebuilt when any of them changes. */
export function migrationsHash(dir = path.resolve('migrations')): string {
  const h = createHash('sha256');
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = path.join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else h.update(p).update(readFileSync(p));
    }
  };
  walk(dir);
  return h.digest('hex').slice(0, 12);
}

/** Template names start with this (TEST_TEMPLATE_PREFIX: lets runs sharing one server keep apart). */
export const TEMPLATE_PREFIX = process.env['TEST_TEMPLATE_PREFIX'] ?? 'strata_tpl';
export const templateName = () => `${TEMPLATE_PREFIX}_${migrationsHash()}`;

export async function withServer<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: SERVER_URL });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

export interface TestDatabase {
  readonly name: string;
  readonly url: string;
  drop(): Promise<void>;
}

/** A fresh database cloned from the migrated template. */
export async function createTestDatabase(prefix = 't'): Promise<TestDatabase> {
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  const template = templateName();
  await withServer(async (c) => {
    // The template may be briefly busy when many files clone at once; retry.
    for (let i = 0; ; i++) {
      try {
        await c.query(`CREATE DATABASE ${name} TEMPLATE ${template}`);
        return;
      } catch (err) {
        if ((err as { code?: string }).code !== '55006' || i > 50) throw err;
        await new Promise((r) => setTimeout(r, 50 + Math.random() * 100));
      }
    }
  });
  return {
    name,
    url: urlFor(name),
    drop: () => withServer((c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)).then(() => undefined),
  };
}
