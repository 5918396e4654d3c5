/**
 * A database per test (pgtestdb / IntegreSQL style): a clone of the migrated template made with
 * CREATE DATABASE ... TEMPLATE, dropped after. Named snapshots are templates of the current state;
 * a restore replaces the database with a clone of one.
 *
 *   await withTestDatabase(async (db) => {
 *     const acme = db.tenant('acme');
 *     await factory('pipelines').createList(acme, 3);
 *     await db.snapshot('three');
 *     ...
 *     await db.restore('three');
 *   });
 */
import pg from 'pg';
import { createFactoryRuntime, type FactoryContext, type FactoryRuntime } from './factory.js';
import { expectRows, type RowExpectation } from './expect-rows.js';
import type { QueryFn } from './schema.js';
import { checkPrefix, cloneName, defaultServerUrl, quoteIdent, serverPool, urlFor } from './server.js';
import { TenantSession, type TenantSessionOptions } from './session.js';
import { captureState, diffStates, type DbState, type StateDiff } from './state.js';
import { DEFAULT_CLONE_PREFIX, sweepOnce } from './sweep.js';
import { claimPooled, defaultPoolSize, drainPool, fillPool } from './pool.js';
import { ensureTemplate, type TemplateOptions } from './template.js';

export type CloneStrategy = 'FILE_COPY' | 'WAL_LOG';

export interface TestDatabaseOptions extends Partial<TemplateOptions> {
  /** Test database names start with this (default `strata_test`); the sweep goes by it. */
  prefix?: string;
  /**
   * How CREATE DATABASE copies the template (PostgreSQL 15+). WAL_LOG (default) copies block by
   * block through the WAL; FILE_COPY copies the files but forces two checkpoints, which cost more
   * than the copy of a small template on a server with other work (measured: docs/testing.md).
   */
  strategy?: CloneStrategy;
  /** Drop leftovers of crashed runs older than this before the first clone (default 1 hour). */
  maxAgeMs?: number;
  /**
   * Ready clones kept ahead (IntegreSQL's method, pool.ts): a test takes one by a rename and the
   * pool refills in the background. Default STRATA_TEST_POOL, else 2; 0 clones on demand only.
   */
  pool?: number;
  /** Faker seed of this database's factories (default STRATA_TEST_SEED, else fixed). */
  seed?: number;
  /** Schemas whose tables factories and states cover (default `public`). */
  schemas?: string[];
}

const SNAPSHOT_NAME = /^[A-Za-z0-9_-]{1,40}$/;

/** A cloned database, its owner connection, tenant sessions, factories context and snapshots. */
export class TestDatabase implements FactoryContext {
  readonly url: string;
  readonly runtime: FactoryRuntime;
  readonly query: QueryFn;
  private ownerPool: pg.Pool | undefined;
  private readonly snapshots = new Map<string, string>();
  private snapshotCount = 0;
  private dropped = false;

  constructor(
    readonly name: string,
    readonly serverUrl: string,
    readonly template: string,
    readonly strategy: CloneStrategy,
    private readonly opts: TestDatabaseOptions,
    /** Taken from the pool of ready clones (true) or cloned on demand. */
    readonly pooled = false,
  ) {
    this.url = urlFor(name, serverUrl);
    this.query = (text, values) => this.pool().query(text, values as unknown[] | undefined);
    this.runtime = createFactoryRuntime({ query: this.query, seed: opts.seed, schemas: opts.schemas });
  }

  /** The owner pool of this database (opened on first use; closed by snapshot, restore and drop). */
  pool(): pg.Pool {
    if (this.dropped) throw new Error(`test database ${this.name} was dropped`);
    if (!this.ownerPool) {
      this.ownerPool = new pg.Pool({ connectionString: this.url, max: 4, idleTimeoutMillis: 2000, allowExitOnIdle: true });
      this.ownerPool.on('error', () => undefined);
    }
    return this.ownerPool;
  }

  /** A session of `tenantId`: every statement under row-level security, as Strata runs them. */
  tenant(tenantId: string, opts?: TenantSessionOptions): TenantSession {
    return new TenantSession(() => this.pool(), this.runtime, tenantId, opts);
  }

  /** Row assertions as the owner (all tenants' rows); `tenant(id).expectRows` for one tenant's. */
  expectRows(table: string, where?: Record<string, unknown>): RowExpectation {
    return expectRows(this.query, table, where);
  }

  /** Every row of the covered schemas, for diff(). */
  state(): Promise<DbState> {
    return captureState(this.query, this.opts.schemas);
  }

  /** Save the current state under `name` (a template of this database); replaces one of that name. */
  async snapshot(name: string): Promise<void> {
    if (!SNAPSHOT_NAME.test(name)) throw new TypeError(`snapshot name ${JSON.stringify(name)} must match ${SNAPSHOT_NAME}`);
    const target = `${this.name}_s${++this.snapshotCount}`;
    await this.closePool();
    const server = serverPool(this.serverUrl);
    await exclusively(server, this.name, () =>
      server.query(`CREATE DATABASE ${quoteIdent(target)} TEMPLATE ${quoteIdent(this.name)} STRATEGY ${this.strategy}`),
    );
    const old = this.snapshots.get(name);
    this.snapshots.set(name, target);
    if (old) await dropDatabase(this.serverUrl, old);
  }

  /** Replace this database with the snapshot `name` (connections to it are closed). */
  async restore(name: string): Promise<void> {
    const source = this.snapshots.get(name);
    if (!source) throw new TypeError(`no snapshot named ${JSON.stringify(name)} (taken: ${[...this.snapshots.keys()].join(', ') || 'none'})`);
    await this.closePool();
    const server = serverPool(this.serverUrl);
    await server.query(`DROP DATABASE IF EXISTS ${quoteIdent(this.name)} WITH (FORCE)`);
    await retryBusy(() => server.query(`CREATE DATABASE ${quoteIdent(this.name)} TEMPLATE ${quoteIdent(source)} STRATEGY ${this.strategy}`));
    this.runtime.refresh();
  }

  /** The rows added, removed and changed from `a` to `b`: snapshot names, states, or the current state (default b). */
  async diff(a: string | DbState, b?: string | DbState): Promise<StateDiff> {
    return diffStates(await this.resolveState(a), await this.resolveState(b));
  }

  private async resolveState(s: string | DbState | undefined): Promise<DbState> {
    if (s === undefined) return this.state();
    if (typeof s !== 'string') return s;
    const db = this.snapshots.get(s);
    if (!db) throw new TypeError(`no snapshot named ${JSON.stringify(s)}`);
    const client = new pg.Client({ connectionString: urlFor(db, this.serverUrl) });
    await client.connect();
    try {
      return await captureState((text, values) => client.query(text, values), this.opts.schemas);
    } finally {
      await client.end();
    }
  }

  /** Close this handle's connections (the database stays). */
  async closePool(): Promise<void> {
    const p = this.ownerPool;
    this.ownerPool = undefined;
    await p?.end();
  }

  /** Drop the database and its snapshots. */
  async drop(): Promise<void> {
    if (this.dropped) return;
    await this.closePool();
    this.dropped = true;
    for (const s of this.snapshots.values()) await dropDatabase(this.serverUrl, s);
    await dropDatabase(this.serverUrl, this.name);
  }
}

/** A new database cloned from the migrated template (built first when the migrations changed). */
export async function createTestDatabase(opts: TestDatabaseOptions = {}): Promise<TestDatabase> {
  const serverUrl = opts.serverUrl ?? defaultServerUrl();
  const prefix = checkPrefix(opts.prefix ?? DEFAULT_CLONE_PREFIX, 'prefix');
  const strategy = opts.strategy ?? 'WAL_LOG';
  const poolSize = opts.pool ?? defaultPoolSize();
  await sweepOnce({ serverUrl, prefix, maxAgeMs: opts.maxAgeMs });
  const template = await ensureTemplate({ ...opts, serverUrl });
  const name = cloneName(prefix);
  const pooled = poolSize > 0 && (await claimPooled(serverUrl, prefix, template, name));
  if (!pooled) await cloneDatabase(serverUrl, template, name, strategy);
  // refill in the background: the next test of this process (or of another one) finds a clone ready
  if (poolSize > 0) void fillPool(serverUrl, prefix, template, poolSize, strategy).catch(() => undefined);
  return new TestDatabase(name, serverUrl, template, strategy, { ...opts, serverUrl }, pooled);
}

/**
 * Fill the pool of ready clones now and wait until it is full (a global setup does this before the
 * tests start, so the first ones get a clone at once). Returns the template's name.
 */
export async function fillTestDatabasePool(opts: TestDatabaseOptions = {}): Promise<string> {
  const serverUrl = opts.serverUrl ?? defaultServerUrl();
  const prefix = checkPrefix(opts.prefix ?? DEFAULT_CLONE_PREFIX, 'prefix');
  const template = await ensureTemplate({ ...opts, serverUrl });
  await fillPool(serverUrl, prefix, template, opts.pool ?? defaultPoolSize(), opts.strategy ?? 'WAL_LOG');
  return template;
}

/** Drop the pool's ready clones of a prefix (every template), e.g. at the end of a run. */
export function drainTestDatabasePool(opts: Pick<TestDatabaseOptions, 'serverUrl' | 'prefix'> = {}): Promise<string[]> {
  return drainPool(opts.serverUrl ?? defaultServerUrl(), checkPrefix(opts.prefix ?? DEFAULT_CLONE_PREFIX, 'prefix'));
}

/** Run `fn` with a fresh test database, dropped afterwards whatever happens. */
export async function withTestDatabase<T>(fn: (db: TestDatabase) => Promise<T>, opts?: TestDatabaseOptions): Promise<T>;
export async function withTestDatabase<T>(opts: TestDatabaseOptions, fn: (db: TestDatabase) => Promise<T>): Promise<T>;
export async function withTestDatabase<T>(
  a: TestDatabaseOptions | ((db: TestDatabase) => Promise<T>),
  b?: TestDatabaseOptions | ((db: TestDatabase) => Promise<T>),
): Promise<T> {
  const [fn, opts] = typeof a === 'function' ? [a, b as TestDatabaseOptions | undefined] : [b as (db: TestDatabase) => Promise<T>, a];
  const db = await createTestDatabase(opts);
  try {
    return await fn(db);
  } finally {
    await db.drop();
  }
}

/** CREATE DATABASE name TEMPLATE template STRATEGY ... (retried while the template is busy). */
export async function cloneDatabase(serverUrl: string, template: string, name: string, strategy: CloneStrategy = 'WAL_LOG'): Promise<void> {
  const server = serverPool(serverUrl);
  await retryBusy(() => server.query(`CREATE DATABASE ${quoteIdent(name)} TEMPLATE ${quoteIdent(template)} STRATEGY ${strategy}`));
}

export async function dropDatabase(serverUrl: string, name: string): Promise<void> {
  await serverPool(serverUrl).query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`);
}

/** 55006: the template has other sessions right now (another clone, a closing connection). */
async function retryBusy<T>(fn: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await fn();
    } catch (err) {
      if ((err as { code?: string }).code !== '55006' || i >= 100) throw err;
      await new Promise((r) => setTimeout(r, 10 + Math.random() * 40));
    }
  }
}

/** Run `fn` while nobody can connect to `database` (its sessions are ended first). */
async function exclusively<T>(server: pg.Pool, database: string, fn: () => Promise<T>): Promise<T> {
  await server.query(`ALTER DATABASE ${quoteIdent(database)} ALLOW_CONNECTIONS false`);
  try {
    return await retryBusy(async () => {
      await server.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [database]);
      return fn();
    });
  } finally {
    await server.query(`ALTER DATABASE ${quoteIdent(database)} ALLOW_CONNECTIONS true`);
  }
}
