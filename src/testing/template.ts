/**
 * The migrated template: built once per migration set and reused by every clone. Its name carries a
 * hash of the migrations' ids, checksums and metadata (plus any setup key), so editing a migration
 * builds a new template and the old ones of the same prefix are dropped. Parallel-safe: builders of
 * one server serialise on an advisory lock, and a template only gets its final name once complete.
 */
import { createHash } from 'node:crypto';
import pg from 'pg';
import pino from 'pino';
import { ensureAppRole } from '../db/database.js';
import { createMigrator, defaultMigrationsDir } from '../db/migrations/index.js';
import { loadMigrations } from '../db/migrations/loader.js';
import { quoteIdent, serverPool, urlFor } from './server.js';

export interface TemplateOptions {
  /** Server (any database on it; CREATE DATABASE runs there). Default: TEST_DATABASE_URL or local. */
  serverUrl: string;
  /** Migrations folder (Strata's layout). Default: Strata's own migrations. */
  migrationsDir?: string;
  /** Template names start with this (default TEST_TEMPLATE_PREFIX, else `strata_tpl`). */
  templatePrefix?: string;
  /** A login role for tenant sessions (non-owner, member of strata_tenant) to create with the template. */
  appRole?: { name: string; password: string };
  /** Extra work on the freshly migrated template (seed data, extensions). */
  setup?: (client: pg.ClientBase) => Promise<void>;
  /** Changes whenever `setup` does: part of the template's key. */
  setupKey?: string;
}

/** Bumped when the way templates are built changes. */
const BUILD_VERSION = '1';

/** Hash of the migration set (ids, checksums, dependencies, transactionality) and the options. */
export async function templateKey(opts: TemplateOptions): Promise<string> {
  const migrations = await loadMigrations(opts.migrationsDir ?? defaultMigrationsDir());
  const h = createHash('sha256').update(BUILD_VERSION);
  for (const m of [...migrations].sort((a, b) => a.id.localeCompare(b.id))) {
    h.update(`\n${m.id}:${m.checksum}:${JSON.stringify(m.declaredDeps)}:${m.transactional}`);
  }
  h.update(`\nrole:${opts.appRole?.name ?? ''}\nsetup:${opts.setupKey ?? ''}`);
  return h.digest('hex').slice(0, 12);
}

export function templatePrefixOf(opts: Pick<TemplateOptions, 'templatePrefix'>): string {
  const prefix = opts.templatePrefix ?? process.env['TEST_TEMPLATE_PREFIX'] ?? 'strata_tpl';
  if (!/^[a-z_][a-z0-9_]{0,39}$/.test(prefix)) {
    throw new TypeError(`template prefix ${JSON.stringify(prefix)} must match ^[a-z_][a-z0-9_]{0,39}$`);
  }
  return prefix;
}

const built = new Map<string, Promise<string>>();

/** The name of a ready template for these options, building it first when needed. */
export function ensureTemplate(opts: TemplateOptions): Promise<string> {
  const cacheKey = JSON.stringify([opts.serverUrl, opts.migrationsDir, opts.templatePrefix, opts.appRole?.name, opts.setupKey]);
  let p = built.get(cacheKey);
  if (!p) {
    p = build(opts);
    built.set(cacheKey, p);
    p.catch(() => built.delete(cacheKey));
  }
  return p;
}

async function build(opts: TemplateOptions): Promise<string> {
  const prefix = templatePrefixOf(opts);
  const name = `${prefix}_${await templateKey(opts)}`;
  const server = serverPool(opts.serverUrl);
  const exists = async (c: pg.ClientBase) => (await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).rowCount === 1;
  const lock = await server.connect();
  try {
    if (await exists(lock)) return name;
    // one builder per server and prefix at a time; the others wait and then find it built
    await lock.query("SELECT pg_advisory_lock(hashtext('strata.testing.template:' || $1))", [prefix]);
    try {
      if (await exists(lock)) return name;
      const { rows } = await lock.query<{ datname: string }>(
        "SELECT datname FROM pg_database WHERE datname ~ ('^' || $1 || '_[0-9a-f]{12}(_building)?$') AND datname <> $2",
        [prefix, name],
      );
      for (const r of rows) {
        // templates of older migration sets (and half-built ones of crashed runs)
        await lock.query(`ALTER DATABASE ${quoteIdent(r.datname)} IS_TEMPLATE false`).catch(() => undefined);
        await lock.query(`DROP DATABASE IF EXISTS ${quoteIdent(r.datname)} WITH (FORCE)`).catch(() => undefined);
      }
      const building = `${name}_building`;
      await lock.query(`CREATE DATABASE ${quoteIdent(building)}`);
      await migrate(building, opts);
      // renamed only when complete, so a crashed build never leaves a half-migrated template
      await lock.query(`ALTER DATABASE ${quoteIdent(building)} RENAME TO ${quoteIdent(name)}`);
      // no connections to a template: a stray one would make every clone wait (55006)
      await lock.query(`ALTER DATABASE ${quoteIdent(name)} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false`);
      return name;
    } finally {
      await lock.query("SELECT pg_advisory_unlock(hashtext('strata.testing.template:' || $1))", [prefix]).catch(() => undefined);
    }
  } finally {
    lock.release();
  }
}

async function migrate(database: string, opts: TemplateOptions): Promise<void> {
  const pool = new pg.Pool({ connectionString: urlFor(database, opts.serverUrl), max: 2 });
  pool.on('error', () => undefined);
  try {
    const migrator = createMigrator({ pool, dir: opts.migrationsDir ?? defaultMigrationsDir(), log: pino({ level: 'silent' }) });
    await migrator.up();
    const client = await pool.connect();
    try {
      if (opts.appRole) await ensureAppRole(client, opts.appRole.name, opts.appRole.password);
      await opts.setup?.(client);
    } finally {
      client.release();
    }
  } finally {
    await pool.end();
  }
}

/** Drop the templates of a prefix (all of them, or all but `keep`). */
export async function dropTemplates(serverUrl: string, templatePrefix: string, keep?: string): Promise<string[]> {
  const server = serverPool(serverUrl);
  const { rows } = await server.query<{ datname: string }>(
    "SELECT datname FROM pg_database WHERE datname ~ ('^' || $1 || '_[0-9a-f]{12}(_building)?$') AND datname IS DISTINCT FROM $2",
    [templatePrefix, keep ?? null],
  );
  for (const r of rows) {
    await server.query(`ALTER DATABASE ${quoteIdent(r.datname)} IS_TEMPLATE false`).catch(() => undefined);
    await server.query(`DROP DATABASE IF EXISTS ${quoteIdent(r.datname)} WITH (FORCE)`);
  }
  built.clear();
  return rows.map((r) => r.datname);
}
