/**
 * Test databases, through Strata's own testing kit (src/testing, exported as `strata/testing`), so
 * the kit is exercised on every run: a template migrated once per migration set (global setup),
 * cloned per test file with CREATE DATABASE ... TEMPLATE, dropped after; leftovers of crashed runs
 * are swept by name.
 */
import pg from 'pg';
import {
  createTestDatabase as createKitDatabase,
  ensureTemplate,
  type TemplateOptions,
  type TestDatabase as KitDatabase,
} from '../../src/testing/index.js';
import { urlFor as kitUrlFor } from '../../src/testing/server.js';
import { TEST_APP_PASSWORD, TEST_APP_ROLE } from './constants.js';

/** Server used by the tests: TEST_DATABASE_URL, else the local cluster. */
export const SERVER_URL = process.env['TEST_DATABASE_URL'] ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const REDIS_URL = process.env['TEST_REDIS_URL'] ?? 'redis://127.0.0.1:6379';

export function urlFor(database: string, server = SERVER_URL): string {
  return kitUrlFor(database, server);
}

/** Template names start with this (TEST_TEMPLATE_PREFIX: lets runs sharing one server keep apart). */
export const TEMPLATE_PREFIX = process.env['TEST_TEMPLATE_PREFIX'] ?? 'strata_tpl';
/** Clone names: the template prefix's own namespace, so runs sharing a server never sweep each other's. */
export const CLONE_PREFIX = `${TEMPLATE_PREFIX.replace(/^strata_tpl/, 'st')}_t`.slice(0, 24);

/** The kit options of this suite: Strata's migrations plus the test application role. */
export const KIT_OPTIONS: TemplateOptions = {
  serverUrl: SERVER_URL,
  templatePrefix: TEMPLATE_PREFIX,
  appRole: { name: TEST_APP_ROLE, password: TEST_APP_PASSWORD },
};

/** Build (when the migrations changed) and name the template. */
export const ensureSuiteTemplate = (): Promise<string> => ensureTemplate(KIT_OPTIONS);

export async function withServer<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: SERVER_URL });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

export type TestDatabase = KitDatabase;

/** A fresh database cloned from the migrated template. */
export function createTestDatabase(): Promise<TestDatabase> {
  return createKitDatabase({ ...KIT_OPTIONS, prefix: CLONE_PREFIX });
}
