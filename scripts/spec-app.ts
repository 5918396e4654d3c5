/** The app as the OpenAPI generator sees it: every route registered, nothing connected. */
import type { FastifyInstance } from 'fastify';
import { Redis } from 'ioredis';
import pino from 'pino';
import { Registry } from 'prom-client';
import { build } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { Database } from '../src/db/database.js';

export async function buildForSpec(): Promise<FastifyInstance> {
  const url = 'postgres://spec@127.0.0.1:1/spec';
  const config = loadConfig({ DATABASE_URL: url, JWT_SECRET: 'x'.repeat(32), LOG_LEVEL: 'silent', REDIS_URL: 'redis://127.0.0.1:1' });
  const log = pino({ level: 'silent' });
  const registry = new Registry();
  const db = new Database({ config, adminUrl: url, appUrl: url, log, registry });
  const redis = new Redis(config.REDIS_URL, { lazyConnect: true, enableOfflineQueue: false });
  return build({ config, db, redis, registry, loggerInstance: log });
}
