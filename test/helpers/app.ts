/**
 * Build a real Strata app on a fresh cloned database and the real Redis, for HTTP tests through
 * app.inject. Tokens are signed with the test secret.
 */
import { SignJWT } from 'jose';
import pino from 'pino';
import type { FastifyInstance } from 'fastify';
import { Registry } from 'prom-client';
import { build } from '../../src/app.js';
import { loggerOptions } from '../../src/logger.js';
import { loadConfig, type Config } from '../../src/config.js';
import { Database } from '../../src/db/database.js';
import { createMigrator, defaultMigrationsDir, type Migrator } from '../../src/db/migrations/index.js';
import { seedDemo } from '../../src/db/seed.js';
import { connectRedis, redisBoundsOf, type RedisHandle } from '../../src/redis.js';
import { createJobs, type JobsService } from '../../src/jobs/queues.js';
import { randomUUID } from 'node:crypto';
import type { Role } from '../../src/domain.js';
import { createTestDatabase, REDIS_URL, type TestDatabase } from './databases.js';
import { TEST_APP_PASSWORD, TEST_APP_ROLE, TEST_JWT_SECRET } from './constants.js';

export interface TestApp {
  app: FastifyInstance;
  db: Database;
  config: Config;
  database: Pick<TestDatabase, 'name' | 'url' | 'drop'>;
  redis: RedisHandle;
  migrator: Migrator;
  registry: Registry;
  /** The app's JobsService, on a BullMQ prefix of its own. */
  jobs: JobsService;
  /** A signed token (HS256, test secret). Pass `tenant: null` for a tenantless platform_admin. */
  token(role: Role, tenant?: string | null, opts?: { sub?: string; expiresIn?: string | number; secret?: string }): Promise<string>;
  /** Headers with a Bearer token. */
  auth(role: Role, tenant?: string | null): Promise<Record<string, string>>;
  close(): Promise<void>;
}

export interface TestAppOptions {
  env?: Record<string, string>;
  /** Register tenants acme and globex (default true). */
  tenants?: boolean;
  /** Seed the demo dataset (default false). */
  seed?: boolean;
  logLevel?: string;
  /** Share a JobsService (e.g. with workers started by the test); otherwise one is made and closed. */
  jobs?: JobsService;
  /** Where the app's pino logger writes (to read its log lines in a test). */
  logStream?: pino.DestinationStream;
  /** Run on this (already migrated) database instead of a clone of the template (the Citus suite). */
  database?: Pick<TestDatabase, 'name' | 'url' | 'drop'>;
}

export async function createTestApp(opts: TestAppOptions = {}): Promise<TestApp> {
  const database = opts.database ?? (await createTestDatabase());
  const env = {
    DATABASE_URL: database.url,
    APP_DATABASE_URL: withUser(database.url),
    REDIS_URL,
    JWT_SECRET: TEST_JWT_SECRET,
    LOG_LEVEL: opts.logLevel ?? 'silent',
    DB_POOL_MAX: '5',
    DB_POOL_MIN: '0',
    DB_HEALTHCHECK_INTERVAL_MS: '0',
    NODE_ENV: 'test',
    // per-tenant request counters live in the shared Redis: each app counts on its own keys
    RATE_LIMIT_PREFIX: `test-rl-${randomUUID()}`,
    ...opts.env,
  };
  const config = loadConfig(env);
  const log = opts.logStream ? pino(loggerOptions(config), opts.logStream) : pino(loggerOptions(config));
  const registry = new Registry();
  const db = new Database({ config, adminUrl: database.url, appUrl: env.APP_DATABASE_URL, log, registry });
  const migrator = createMigrator({ pool: db.admin.pg, dir: defaultMigrationsDir(), log });
  await db.start();
  const redis = await connectRedis(config.REDIS_URL, log, redisBoundsOf(config));
  if (opts.tenants !== false) {
    await db.adminQuery("INSERT INTO strata.tenants (id, name) VALUES ('acme', 'Acme'), ('globex', 'Globex') ON CONFLICT DO NOTHING");
  }
  if (opts.seed) await seedDemo(db, log);
  const jobs = opts.jobs ?? createJobs({ redisUrl: config.REDIS_URL, prefix: `test-${randomUUID()}`, log });
  const app = await build({ config, db, redis: redis.client, migrator, registry, jobs, jwtSecret: TEST_JWT_SECRET, loggerInstance: log });
  await app.ready();

  const token: TestApp['token'] = async (role, tenant = 'acme', o = {}) => {
    const claims: Record<string, string> = { role };
    if (tenant !== null) claims['tenant_id'] = tenant;
    return new SignJWT(claims)
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(o.sub ?? `user-${role}@${tenant ?? 'platform'}`)
      .setIssuedAt()
      .setExpirationTime(o.expiresIn ?? '10m')
      .sign(new TextEncoder().encode(o.secret ?? TEST_JWT_SECRET));
  };
  return {
    app,
    db,
    config,
    database,
    redis,
    migrator,
    registry,
    jobs,
    token,
    auth: async (role, tenant) => ({ authorization: `Bearer ${await token(role, tenant)}` }),
    async close() {
      await app.close();
      if (!opts.jobs) await jobs.close();
      await redis.close();
      await db.close(2000);
      await database.drop();
    },
  };
}

function withUser(databaseUrl: string): string {
  const u = new URL(databaseUrl);
  u.username = TEST_APP_ROLE;
  u.password = TEST_APP_PASSWORD;
  return u.toString();
}
