/**
 * Vitest global setup: build the migrated template database once for the whole run, and find out
 * which optional PostgreSQL extensions the server has (tests of extension-backed features test the
 * full path where present, the documented refusal where absent; the run says which, and why).
 */
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { describeExtensions, probeExtensions, type ExtensionReport } from '../../src/testing/extensions.js';
import pino from 'pino';
import { createMigrator, defaultMigrationsDir } from '../../src/db/migrations/index.js';
import { ensureAppRole } from '../../src/db/database.js';
import { SERVER_URL, TEMPLATE_PREFIX, templateName, urlFor, withServer } from './databases.js';
import { TEST_APP_ROLE, TEST_APP_PASSWORD } from './constants.js';

declare module 'vitest' {
  export interface ProvidedContext {
    extensions: ExtensionReport;
  }
}

/** What the suite does instead when an extension is absent (printed before and after the run). */
const CONSEQUENCES = {
  pg_stat_statements: 'GET /v1/admin/queries/top is tested for its 501 PG_STAT_STATEMENTS_UNAVAILABLE answer instead of its listing',
  hypopg: 'GET /v1/admin/index-advice is tested for its 501 HYPOPG_UNAVAILABLE answer instead of its advice',
  vector: 'no test depends on it (vector search runs exact scans without it)',
  citus: 'no test depends on it',
} as const;

export default async function setup(project: TestProject): Promise<() => void> {
  const extensions = await probeExtensions(SERVER_URL);
  project.provide('extensions', extensions);
  const summary = describeExtensions(extensions, CONSEQUENCES);
  const absent = summary.filter((l) => l.includes(': absent'));
  const print = (when: string) =>
    process.stdout.write(
      `\n[strata tests] optional PostgreSQL extensions (${when}): ${absent.length ? `${absent.length} absent (tests of what needs them run the fallback path instead)` : 'all present, every path runs'}\n` +
        summary.map((l) => `  - ${l}\n`).join(''),
    );
  print('before the run');
  await buildTemplate();
  return () => print('the run above');
}

async function buildTemplate(): Promise<void> {
  const template = templateName();
  const exists = await withServer(async (c) => (await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [template])).rowCount === 1);
  if (exists) return;
  await withServer(async (c) => {
    // Old templates from earlier migration sets are dropped so they do not pile up.
    const { rows } = await c.query<{ datname: string }>('SELECT datname FROM pg_database WHERE starts_with(datname, $1)', [`${TEMPLATE_PREFIX}_`]);
    for (const r of rows) {
      await c.query(`ALTER DATABASE ${r.datname} IS_TEMPLATE false`).catch(() => undefined);
      await c.query(`DROP DATABASE IF EXISTS ${r.datname} WITH (FORCE)`).catch(() => undefined);
    }
    await c.query(`CREATE DATABASE ${template}_building`);
  });
  const pool = new pg.Pool({ connectionString: urlFor(`${template}_building`, SERVER_URL), max: 2 });
  try {
    const migrator = createMigrator({ pool, dir: defaultMigrationsDir(), log: pino({ level: 'silent' }) });
    await migrator.up();
    const client = await pool.connect();
    try {
      await ensureAppRole(client, TEST_APP_ROLE, TEST_APP_PASSWORD);
    } finally {
      client.release();
    }
  } finally {
    await pool.end();
  }
  // Renamed only when complete, so a crashed setup never leaves a half-migrated template.
  await withServer(async (c) => {
    await c.query(`ALTER DATABASE ${template}_building RENAME TO ${template}`).catch(async (err: { code?: string }) => {
      if (err.code !== '42P04') throw err; // another run finished first
      await c.query(`DROP DATABASE ${template}_building WITH (FORCE)`);
    });
  });
}
