/** Vitest global setup: build the migrated template database once for the whole run. */
import pg from 'pg';
import pino from 'pino';
import { createMigrator, defaultMigrationsDir } from '../../src/db/migrations/index.js';
import { ensureAppRole } from '../../src/db/database.js';
import { SERVER_URL, TEMPLATE_PREFIX, templateName, urlFor, withServer } from './databases.js';
import { TEST_APP_ROLE, TEST_APP_PASSWORD } from './constants.js';

export default async function setup(): Promise<void> {
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
