/**
 * The database layer: pools keyed by shard, tenant sessions, and the admin connection used for the
 * platform's own tables and migrations. Services receive a Database and never hold a client outside
 * a callback.
 */
import { createHmac } from 'node:crypto';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type pg from 'pg';
import type { Config } from '../config.js';
import { unavailable } from '../errors.js';
import { createDbMetrics, type DbMetrics } from './metrics.js';
import { StrataPool, type PoolOptions } from './pool.js';
import { detectClusterMode, type ClusterMode } from './cluster-mode.js';
import {
  runInTransaction,
  runSingleStatement,
  type QueryObserver,
  type SandboxTarget,
  type SessionContext,
  type SessionDeps,
  type Tx,
  type TxOptions,
} from './session.js';

export const DEFAULT_SHARD = 'default';
/** Sandboxes one process keeps pools open to at once (least recently used closed first). */
const MAX_SANDBOX_SHARDS = 32;

/** The pools of a shard a tenant session may take a connection from. */
export type PoolKind = 'app' | 'stream';

/**
 * Asked before a tenant session takes a connection (per-tenant caps, src/services/limits): `enter`
 * answers true when admitted at once, or a promise that resolves once admitted or rejects (429);
 * every admission is followed by exactly one `leave`.
 */
export interface TenantGate {
  enter(pool: string, kind: PoolKind, tenantId: string): true | Promise<void>;
  /** `heldMs`: how long the session held its slot (the gate's measure of how heavy the tenant's work is). */
  leave(pool: string, kind: PoolKind, tenantId: string, heldMs: number): void;
}

/**
 * `run` holding a gate slot already taken: the slot is given back when it settles, with how long it
 * was held. (then(ok, fail), not finally(): finally costs two more promises per session.)
 */
function held<T>(gate: TenantGate, name: string, kind: PoolKind, tenantId: string, run: () => Promise<T>): Promise<T> {
  const started = performance.now();
  return run().then(
    (value) => {
      gate.leave(name, kind, tenantId, performance.now() - started);
      return value;
    },
    (err: unknown) => {
      gate.leave(name, kind, tenantId, performance.now() - started);
      throw err;
    },
  );
}

export interface Shard {
  readonly id: string;
  /** Tenant sessions: pipelined, as the non-owner application role. */
  readonly app: StrataPool;
  /** Tenant sessions that stream (cursors, COPY): not pipelined, small. */
  readonly stream: StrataPool;
}

export interface DatabaseOptions {
  config: Config;
  /** Owner/admin connection string (migrations, platform tables). */
  adminUrl: string;
  /** Connection string of the application role; derived from adminUrl when absent. */
  appUrl: string;
  log: Logger;
  registry: Registry;
}

export class Database {
  readonly metrics: DbMetrics;
  readonly admin: StrataPool;
  private readonly shards = new Map<string, Shard>();
  /** Pools of the tenant sandboxes requests were served against, by database name (opened on first use). */
  private readonly sandboxShards = new Map<string, Shard>();
  private readonly deps: SessionDeps;
  private gate: TenantGate | undefined;
  private mode: ClusterMode = { cluster: false, citusVersion: null, workers: 0 };

  constructor(private readonly opts: DatabaseOptions) {
    const { config, log } = opts;
    this.metrics = createDbMetrics(opts.registry);
    this.deps = {
      log,
      metrics: this.metrics,
      defaults: {
        retries: config.DB_TX_MAX_RETRIES,
        statementTimeoutMs: config.DB_STATEMENT_TIMEOUT_MS,
        lockTimeoutMs: config.DB_LOCK_TIMEOUT_MS,
        slowQueryMs: config.SLOW_QUERY_MS,
      },
    };
    const base = poolOptions(config);
    // Tenant sessions: at most this many parallel workers per query, so a tenant's connection cap
    // also caps the database CPUs its queries can take (fair shares, docs/limits.md).
    const tenantServerOptions = `-c max_parallel_workers_per_gather=${config.DB_TENANT_MAX_PARALLEL_WORKERS}`;
    // A server that stops answering (stopped, partitioned) would hold a statement already sent for
    // ever: every statement of the tenant-session pool is bounded by the statement timeout, so past
    // it and DB_CLIENT_GRACE_MS the client gives up and drops the connection (503 DB_UNRESPONSIVE).
    const appReadTimeoutMs = config.DB_STATEMENT_TIMEOUT_MS > 0 && config.DB_CLIENT_GRACE_MS > 0 ? config.DB_STATEMENT_TIMEOUT_MS + config.DB_CLIENT_GRACE_MS : undefined;
    this.admin = new StrataPool(
      { ...base, name: 'admin', connectionString: opts.adminUrl, max: Math.max(2, Math.ceil(config.DB_POOL_MAX / 4)), min: 0 },
      log,
      this.metrics,
    );
    this.shards.set(DEFAULT_SHARD, {
      id: DEFAULT_SHARD,
      app: new StrataPool(
        { ...base, name: `${DEFAULT_SHARD}/app`, connectionString: opts.appUrl, pipeline: true, serverOptions: tenantServerOptions, readTimeoutMs: appReadTimeoutMs },
        log,
        this.metrics,
      ),
      stream: new StrataPool(
        {
          ...base,
          name: `${DEFAULT_SHARD}/stream`,
          connectionString: opts.appUrl,
          serverOptions: tenantServerOptions,
          max: Math.max(2, Math.ceil(config.DB_POOL_MAX / 2)),
          min: 0,
          // A stream (export, cursor) holds its connection as long as its statement may run: only a
          // lease past the longest allowed export plus the threshold is a leak.
          leakThresholdMs: base.leakThresholdMs > 0 ? base.leakThresholdMs + config.EXPORT_MAX_TIMEOUT_MS : 0,
        },
        log,
        this.metrics,
      ),
    });
  }

  get config(): Config {
    return this.opts.config;
  }

  /** The owner/admin connection string (backups run pg_dump/pg_restore with it). */
  get adminUrl(): string {
    return this.opts.adminUrl;
  }

  /** Attach (or detach) the slow-query log and N+1 detection for every tenant statement. */
  observe(observer: QueryObserver | undefined): void {
    this.deps.observer = observer;
  }

  /** Attach (or detach) the per-tenant connection caps. */
  setTenantGate(gate: TenantGate | undefined): void {
    this.gate = gate;
  }

  /** Run one tenant session under the gate: the tenant's slot is held from before the borrow until the end. */
  private gated<T>(pool: StrataPool, kind: PoolKind, tenantId: string | null, run: () => Promise<T>): Promise<T> {
    const gate = this.gate;
    if (gate === undefined || tenantId === null) return run();
    const name = pool.options.name;
    const admitted = gate.enter(name, kind, tenantId);
    if (admitted === true) return held(gate, name, kind, tenantId, run);
    return admitted.then(() => held(gate, name, kind, tenantId, run));
  }

  /** Cluster mode (a Citus coordinator with workers), detected at start(). */
  get cluster(): boolean {
    return this.mode.cluster;
  }

  get clusterMode(): ClusterMode {
    return this.mode;
  }

  /**
   * Prewarm pools and verify the application role cannot bypass row-level security. Detects
   * cluster mode first: on a Citus coordinator, tenant sessions must reach the workers with their
   * tenant (SET LOCAL propagation), which is checked here too.
   */
  async start(): Promise<void> {
    this.mode = await this.admin.with((c) => detectClusterMode(c));
    this.deps.cluster = this.mode.cluster;
    if (this.mode.cluster) {
      // a worker committing asynchronously could lose acknowledged writes at a shard move's cutover
      // (see SessionDeps.clusterSyncCommit): tenant transactions then flush their commits there
      const { rows } = await this.admin.with((c) =>
        // a worker that does not answer counts as asynchronous: the extra SET LOCAL is cheap, a lost write is not
        c.query<{ off: boolean | null }>("SELECT bool_or(NOT success OR result = 'off') AS off FROM run_command_on_workers('SHOW synchronous_commit')"),
      );
      this.deps.clusterSyncCommit = rows[0]?.off === true;
      if (this.deps.clusterSyncCommit) this.deps.log.warn('cluster mode: a worker runs with synchronous_commit = off; tenant transactions set it to local there, so that an online shard move cannot miss an acknowledged write');
    }
    for (const shard of this.shards.values()) {
      await shard.app.start();
      await shard.stream.start();
      const { rows } = await shard.app.with((c) =>
        c.query<{ rolsuper: boolean; rolbypassrls: boolean; current_user: string }>(
          'SELECT rolsuper, rolbypassrls, current_user FROM pg_roles WHERE rolname = current_user',
        ),
      );
      const r = rows[0];
      if (!r || r.rolsuper || r.rolbypassrls) {
        throw new Error(
          `the application role ${r?.current_user ?? '?'} on shard ${shard.id} is a superuser or has BYPASSRLS; tenant isolation would not hold (set APP_DATABASE_URL to a plain role)`,
        );
      }
      if (this.mode.cluster) {
        const { rows: set } = await shard.app.with((c) => c.query<{ v: string }>("SELECT current_setting('citus.propagate_set_commands') AS v"));
        if (set[0]?.v !== 'local') {
          throw new Error(
            "cluster mode: citus.propagate_set_commands is not 'local' for tenant sessions, so the workers would not see the tenant (run the migrations, whose cluster step sets it on the database)",
          );
        }
      }
    }
    await this.admin.start();
  }

  /** The shard holding a tenant's data (one shard for now; the shard map adds routing here). */
  shardFor(_tenantId: string | null): Shard {
    const shard = this.shards.get(DEFAULT_SHARD);
    if (!shard) throw unavailable('NO_SHARD', 'no database shard is configured');
    return shard;
  }

  /** The shard a session context runs on: its sandbox's database when it names one, else its tenant's shard. */
  shardOf(ctx: SessionContext): Shard {
    return ctx.sandbox === undefined ? this.shardFor(ctx.tenantId) : this.sandboxShard(ctx.sandbox);
  }

  /**
   * Small pools on a sandbox's database, as the application role (so RLS applies there as here),
   * opened on first use and kept until closeSandbox().
   */
  private sandboxShard(target: SandboxTarget): Shard {
    const found = this.sandboxShards.get(target.database);
    if (found) {
      // most recently used last: the bound below closes the pools unused the longest
      this.sandboxShards.delete(target.database);
      this.sandboxShards.set(target.database, found);
      return found;
    }
    const config = this.opts.config;
    const base = poolOptions(config);
    const url = new URL(this.opts.appUrl);
    url.pathname = `/${target.database}`;
    const connectionString = url.toString();
    const max = config.SANDBOX_POOL_MAX;
    const id = `sandbox:${target.id}`;
    const shard: Shard = {
      id,
      app: new StrataPool({ ...base, name: `${id}/app`, connectionString, pipeline: true, max, min: 0 }, this.opts.log, this.metrics),
      stream: new StrataPool({ ...base, name: `${id}/stream`, connectionString, max: Math.max(1, Math.ceil(max / 2)), min: 0 }, this.opts.log, this.metrics),
    };
    this.sandboxShards.set(target.database, shard);
    // bounded: a sandbox dropped by another process never tells this one, so its pools are only
    // closed here when unused for longest (their connections were already ended by the drop)
    if (this.sandboxShards.size > MAX_SANDBOX_SHARDS) {
      const oldest = this.sandboxShards.keys().next().value as string;
      void this.closeSandbox(oldest).catch((err: unknown) => this.opts.log.warn({ err, database: oldest }, 'could not close the pools of a sandbox'));
    }
    return shard;
  }

  /** Close this process's pools on a sandbox's database (before it is dropped, or once it is gone). */
  async closeSandbox(database: string): Promise<void> {
    const shard = this.sandboxShards.get(database);
    if (!shard) return;
    this.sandboxShards.delete(database);
    await Promise.all([shard.app.drain(2_000), shard.stream.drain(2_000)]);
    this.metrics.unregisterPool(shard.app);
    this.metrics.unregisterPool(shard.stream);
  }

  allShards(): Shard[] {
    return [...this.shards.values()];
  }

  /**
   * Run `fn` in a transaction of the caller's tenant (RLS applies to every statement). Passed an
   * open transaction instead of a context, it runs as a savepoint of it. 40001/40P01 are retried
   * with jittered backoff at the outermost level.
   */
  withTenant<T>(ctx: SessionContext | Tx, fn: (tx: Tx) => Promise<T>, opts?: TxOptions): Promise<T> {
    // a savepoint of an open transaction already holds its connection (and its slot)
    if ('ctx' in ctx) return runInTransaction(this.shardOf(ctx.ctx).app, this.deps, ctx, fn, opts);
    const pool = this.shardOf(ctx).app;
    return this.gated(pool, 'app', ctx.tenantId, () => runInTransaction(pool, this.deps, ctx, fn, opts));
  }

  /** Alias of withTenant, under the name the spec uses. */
  withTransaction<T>(ctx: SessionContext | Tx, fn: (tx: Tx) => Promise<T>, opts?: TxOptions): Promise<T> {
    return this.withTenant(ctx, fn, opts);
  }

  /** A tenant transaction on a non-pipelined connection, for cursors and COPY streams. */
  withTenantStream<T>(ctx: SessionContext, fn: (tx: Tx) => Promise<T>, opts?: TxOptions): Promise<T> {
    const pool = this.shardOf(ctx).stream;
    return this.gated(pool, 'stream', ctx.tenantId, () => runInTransaction(pool, this.deps, ctx, fn, opts));
  }

  /**
   * One statement as its own tenant transaction, in one round trip: the settings and the statement
   * run in one implicit transaction (read committed). Other isolation levels take the BEGIN path.
   */
  tenantQuery<R extends pg.QueryResultRow = Record<string, unknown>>(
    ctx: SessionContext,
    text: string,
    values?: readonly unknown[],
    opts?: TxOptions,
  ): Promise<pg.QueryResult<R>> {
    if (opts?.isolation && opts.isolation !== 'read committed') {
      return this.withTenant(ctx, (tx) => tx.query<R>(text, values, { final: true }), opts);
    }
    const pool = this.shardOf(ctx).app;
    if (this.gate === undefined) return runSingleStatement<R>(pool, this.deps, ctx, text, values, opts);
    return this.gated(pool, 'app', ctx.tenantId, () => runSingleStatement<R>(pool, this.deps, ctx, text, values, opts));
  }

  /** Platform tables (schema `strata`) through the admin connection: never for tenant data. */
  adminQuery<R extends pg.QueryResultRow = Record<string, unknown>>(text: string, values?: readonly unknown[]) {
    return this.admin.with((c) => c.query<R>(text, values as unknown[] | undefined));
  }

  /** Pools of every shard and the admin pool. */
  pools(): StrataPool[] {
    return [this.admin, ...[...this.shards.values(), ...this.sandboxShards.values()].flatMap((s) => [s.app, s.stream])];
  }

  /** Clients borrowed and not yet returned, across all pools. */
  borrowedCount(): number {
    return this.pools().reduce((n, p) => n + p.borrowedCount, 0);
  }

  async close(timeoutMs?: number): Promise<void> {
    await Promise.all(this.pools().map((p) => p.drain(timeoutMs)));
  }
}

function poolOptions(config: Config): Omit<PoolOptions, 'name' | 'connectionString'> {
  return {
    max: config.DB_POOL_MAX,
    min: config.DB_POOL_MIN,
    acquireTimeoutMs: config.DB_ACQUIRE_TIMEOUT_MS,
    idleTimeoutMs: config.DB_IDLE_TIMEOUT_MS,
    maxLifetimeMs: config.DB_MAX_LIFETIME_MS,
    leakThresholdMs: config.DB_LEAK_THRESHOLD_MS,
    leakStackSample: config.DB_LEAK_STACK_SAMPLE,
    validateAfterIdleMs: config.DB_VALIDATE_AFTER_IDLE_MS,
    healthCheckIntervalMs: config.DB_HEALTHCHECK_INTERVAL_MS,
  };
}

/**
 * The application role's password when Strata manages the role: DB_APP_PASSWORD, else derived from
 * the admin URL (so every process sharing the configuration derives the same one; nothing stored).
 */
export function appRolePassword(config: Config, adminUrl: string): string {
  return config.DB_APP_PASSWORD ?? createHmac('sha256', adminUrl).update(`strata app role ${config.DB_APP_ROLE}`).digest('base64url');
}

/** The admin URL with the application role's credentials. */
export function deriveAppUrl(adminUrl: string, role: string, password: string): string {
  const u = new URL(adminUrl);
  u.username = role;
  u.password = password;
  return u.toString();
}

/**
 * Create or update the login role tenant sessions use: no superuser, no BYPASSRLS, owns nothing,
 * member of the `strata_tenant` group that migrations grant table privileges to.
 */
export async function ensureAppRole(admin: pg.ClientBase, role: string, password: string): Promise<void> {
  const ident = `"${role.replace(/"/g, '""')}"`;
  const pw = `'${password.replace(/'/g, "''")}'`;
  const { rowCount } = await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role]);
  try {
    if (!rowCount) await admin.query(`CREATE ROLE ${ident} LOGIN NOSUPERUSER NOBYPASSRLS INHERIT PASSWORD ${pw}`);
    else await admin.query(`ALTER ROLE ${ident} LOGIN NOSUPERUSER NOBYPASSRLS INHERIT PASSWORD ${pw}`);
  } catch (err) {
    // Two processes booting at once may race on CREATE ROLE; the loser finds the role made.
    if ((err as { code?: string }).code !== '23505' && (err as { code?: string }).code !== '42710') throw err;
  }
  await admin.query(`GRANT strata_tenant TO ${ident}`);
}
