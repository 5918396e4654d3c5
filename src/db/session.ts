/**
 * Tenant sessions and transactions.
 *
 * Every unit of tenant work is a transaction on a pooled connection that first sets the tenant,
 * actor and timeouts with `set_config(..., true)` (transaction-local), under a role that neither owns
 * the tables nor bypasses RLS. On a pipelined pool, BEGIN, the settings and the first statement go out
 * together, so isolation costs no extra round trip. Nested calls become savepoints; serialization
 * failures and deadlocks are retried with jittered backoff.
 */
import pg from 'pg';
import type { Logger } from 'pino';
import type { RequestContext } from '../domain.js';
import type { DbMetrics } from './metrics.js';
import type { StrataPool } from './pool.js';
import { isConnectionError, isReadTimeout, isRetryable } from './errors.js';
import { sqlstateOf } from './pool.js';
import { singleTrip, type SetupStatement } from './single-trip.js';
import { clientGone } from '../errors.js';
import { UnreadableResultError } from './guarded-socket.js';
import { badRequest } from '../errors.js';

/**
 * The most bind parameters one statement may carry: the protocol's Bind message counts them in 16
 * bits, so node-postgres would send a wrong count past it and PostgreSQL answer with a protocol
 * error. Checked before sending: 400 TOO_MANY_PARAMETERS.
 */
export const MAX_BIND_PARAMETERS = 65_535;

const tooManyParameters = (n: number) =>
  badRequest(
    'TOO_MANY_PARAMETERS',
    `the request needs ${n} values in one statement; PostgreSQL takes at most ${MAX_BIND_PARAMETERS} (send fewer rows or values per request)`,
    { parameters: n, max: MAX_BIND_PARAMETERS },
  );

function checkParameterCount(values: readonly unknown[] | undefined): void {
  if (values !== undefined && values.length > MAX_BIND_PARAMETERS) throw tooManyParameters(values.length);
}

export type Isolation = 'read committed' | 'repeatable read' | 'serializable';

export interface TxOptions {
  isolation?: Isolation;
  readOnly?: boolean;
  /** Retries after 40001/40P01 (default DB_TX_MAX_RETRIES). */
  retries?: number;
  statementTimeoutMs?: number;
  lockTimeoutMs?: number;
  /**
   * Untrusted SQL ran in this transaction (the analyst paths): before the connection goes back to
   * the pool, `pg_advisory_unlock_all()` drops any session-level advisory lock it may have left
   * (sent right behind COMMIT, so no extra round trip on a pipelined connection). A connection that
   * cannot be cleaned is closed, not reused.
   */
  releaseClean?: boolean;
  /**
   * PostgREST's request settings (`request.jwt.claims`, `request.method`, `request.path`,
   * `request.headers`), set with the tenant settings in the same statement, for functions and
   * policies written for PostgREST.
   */
  request?: RequestSettings;
}

/** Values of PostgREST's `request.*` settings (JSON text for claims and headers). */
export interface RequestSettings {
  claims: string;
  method: string;
  path: string;
  headers: string;
  /** `Prefer: timezone=...`: the session's TimeZone for this request (a name PostgreSQL knows); absent keeps the default. */
  timezone?: string;
}

/** Drops the session-level advisory locks of a connection (strata_tenant may EXECUTE it: migration 0009). */
export const RELEASE_CLEAN_SQL = 'SELECT FROM pg_catalog.pg_advisory_unlock_all()';
/** The longest a connection's clean-up may take before the connection is closed instead. */
const CLEAN_TIMEOUT_MS = 1_000;

/** Per-request accounting for Server-Timing and N+1 detection. */
export interface QueryStats {
  count: number;
  ms: number;
  /** The route pattern of the request (slow-query log, N+1 reports). */
  route?: string;
  /** The first statement's text; then executions per statement text (N+1 detection). */
  first?: string;
  shapes?: Map<string, number>;
  /** Slow-query log writes of this request: awaited before the response goes out. */
  pending?: Promise<unknown>[];
}

/**
 * Told about slow and repeated statements (src/services/query-insight/observer.ts). Called on the
 * hot path only past a threshold; both calls must return at once and never throw.
 */
export interface QueryObserver {
  /** A statement ran `times` times in one request (called once, when it first passes the threshold). */
  repeated(ctx: SessionContext, text: string, times: number): void;
  /** A statement took at least SLOW_QUERY_MS. */
  slow(ctx: SessionContext, text: string, ms: number, rows: number | null): void;
  /** Repeats of one statement per request above which `repeated` is called (0: off). */
  readonly repeatThreshold: number;
}

export type { SandboxTarget } from '../domain.js';

export interface SessionContext extends RequestContext {
  readonly stats?: QueryStats;
  /**
   * False once nobody waits for the result (the HTTP client closed its connection). Checked after a
   * connection is acquired, before the first statement is sent: work queued behind a stall is
   * dropped instead of committing for a caller that gave up (and may retry).
   */
  readonly alive?: () => boolean;
}

export interface QueryOptions {
  /** This is the transaction's last statement: COMMIT is sent right behind it (same round trip). */
  final?: boolean;
}

export interface Tx {
  readonly ctx: SessionContext;
  /** 1 for the first attempt; higher after automatic retries. */
  readonly attempt: number;
  /** The underlying client, for streaming (cursor/COPY) on non-pipelined pools only. */
  readonly client: pg.PoolClient;
  query<R extends pg.QueryResultRow = Record<string, unknown>>(
    text: string,
    values?: readonly unknown[],
    opts?: QueryOptions,
  ): Promise<pg.QueryResult<R>>;
  /** Run `fn` inside a savepoint: an exception rolls back to it and is rethrown. */
  savepoint<T>(fn: (tx: Tx) => Promise<T>, name?: string): Promise<T>;
}

export interface SessionDeps {
  log: Logger;
  metrics: DbMetrics;
  defaults: { retries: number; statementTimeoutMs: number; lockTimeoutMs: number; slowQueryMs: number };
  /** Slow-query log and N+1 detection, attached once the app has Redis (Database.observe). */
  observer?: QueryObserver;
  /**
   * Cluster mode (a Citus coordinator): the tenant is also set with `SET LOCAL` inside an explicit
   * transaction block, the only form Citus forwards to the workers (see single-trip.ts).
   */
  cluster?: boolean;
  /**
   * Cluster mode with a worker committing asynchronously (`synchronous_commit = off`): tenant
   * transactions also send `SET LOCAL synchronous_commit = local`, forwarded to the workers. An
   * online shard move ends with a catch-up up to the source's `pg_current_wal_lsn()`, the WAL
   * *written* so far: a commit acknowledged but still in the WAL buffers lies beyond it, is not
   * replicated before the cutover, and stays behind on the old placement (a lost write). A commit
   * flushed before it is acknowledged cannot be missed. Detected at boot (Database.start).
   */
  clusterSyncCommit?: boolean;
}

/** `SET LOCAL strata.tenant_id = '<tenant>'`: SET takes no parameters, so the value is a quoted literal. */
export function setLocalTenantSql(tenantId: string | null | undefined): string {
  return `SET LOCAL strata.tenant_id = ${pg.escapeLiteral(tenantId ?? '')}`;
}

/** Cluster mode: the `SET LOCAL`s of a tenant transaction, which Citus forwards to the workers. */
export function clusterSetLocals(deps: SessionDeps, tenantId: string | null | undefined): string[] {
  const sets = [setLocalTenantSql(tenantId)];
  if (deps.clusterSyncCommit) sets.push('SET LOCAL synchronous_commit = local');
  return sets;
}

/**
 * The tenant settings of one transaction. The values are of no use to us, so the statement returns
 * a row of no columns: the settings are made in a subquery, which PostgreSQL never flattens nor
 * prunes while its outputs call volatile functions (set_config is volatile), so every call runs.
 */
const SETUP_LIST =
  "set_config('strata.tenant_id', $1, true), set_config('strata.actor', $2, true), " +
  "set_config('strata.role', $3, true), set_config('statement_timeout', $4, true), set_config('lock_timeout', $5, true)";
const SETUP_SQL = `SELECT FROM (SELECT ${SETUP_LIST}) s`;
const REQUEST_LIST =
  "set_config('request.jwt.claims', $6, true), set_config('request.method', $7, true), " +
  "set_config('request.path', $8, true), set_config('request.headers', $9, true)";
/** `Prefer: timezone`: only the requests that ask for it pay for setting the TimeZone. */
const TIMEZONE_ITEM = "set_config('timezone', $10, true)";
const SETUP_REQUEST_SQL = `SELECT FROM (SELECT ${SETUP_LIST}, ${REQUEST_LIST}) s`;
const SETUP_REQUEST_TZ_SQL = `SELECT FROM (SELECT ${SETUP_LIST}, ${REQUEST_LIST}, ${TIMEZONE_ITEM}) s`;
const ISOLATIONS: Record<Isolation, string> = {
  'read committed': 'READ COMMITTED',
  'repeatable read': 'REPEATABLE READ',
  serializable: 'SERIALIZABLE',
};
const SAVEPOINT_NAME = /^[a-z_][a-z0-9_]{0,62}$/i;

class TxImpl implements Tx {
  private savepoints = 0;
  commitQueued: Promise<unknown> | undefined;
  /** RELEASE_CLEAN_SQL, queued behind COMMIT (releaseClean transactions only). */
  cleanQueued: Promise<unknown> | undefined;
  constructor(
    readonly ctx: SessionContext,
    readonly client: pg.PoolClient,
    readonly attempt: number,
    private readonly deps: SessionDeps,
    private readonly poolName: string,
    private readonly releaseClean = false,
  ) {}

  query<R extends pg.QueryResultRow>(text: string, values?: readonly unknown[], opts?: QueryOptions) {
    if (values !== undefined && values.length > MAX_BIND_PARAMETERS) return Promise.reject(tooManyParameters(values.length));
    const started = performance.now();
    const p = this.client.query<R>(text, values as unknown[] | undefined);
    if (opts?.final) {
      this.commitQueued = this.client.query('COMMIT');
      this.commitQueued.catch(() => undefined);
      if (this.releaseClean) {
        this.cleanQueued = this.client.query(RELEASE_CLEAN_SQL);
        this.cleanQueued.catch(() => undefined);
      }
    }
    return p.then(
      (res) => {
        this.account(text, started, res.rowCount);
        return res;
      },
      (err: unknown) => {
        this.account(text, started, null);
        this.deps.metrics.errors.inc({ pool: this.poolName, sqlstate: sqlstateOf(err) });
        throw err;
      },
    );
  }

  private account(text: string, started: number, rows: number | null) {
    account(this.deps, this.poolName, this.ctx, text, started, rows);
  }

  async savepoint<T>(fn: (tx: Tx) => Promise<T>, name?: string): Promise<T> {
    if (name !== undefined && !SAVEPOINT_NAME.test(name))
      throw new Error(`invalid savepoint name ${JSON.stringify(name)}`);
    const sp = name ? `sp_${name}` : `sp_${++this.savepoints}`;
    await this.client.query(`SAVEPOINT ${sp}`);
    try {
      const out = await fn(this);
      await this.client.query(`RELEASE SAVEPOINT ${sp}`);
      return out;
    } catch (err) {
      // The connection may be gone; then the outer transaction fails on its own.
      if (!isConnectionError(err)) await this.client.query(`ROLLBACK TO SAVEPOINT ${sp}`);
      throw err;
    }
  }
}

/** Metrics, per-request stats (Server-Timing) and the slow-query log for one statement. */
function account(
  deps: SessionDeps,
  poolName: string,
  ctx: SessionContext,
  text: string,
  started: number,
  rows: number | null,
): void {
  const ms = performance.now() - started;
  deps.metrics.queryHistogram(poolName).observe(ms / 1000);
  const stats = ctx.stats;
  const observer = deps.observer;
  if (stats) {
    stats.count++;
    stats.ms += ms;
    // N+1: the statement text is the key (values are $n parameters); a one-statement request keeps
    // only a reference, the map is made at the second statement
    if (observer !== undefined && observer.repeatThreshold > 0) {
      if (stats.count === 1) stats.first = text;
      else {
        const shapes = (stats.shapes ??= new Map<string, number>([[stats.first ?? '', 1]]));
        const times = (shapes.get(text) ?? 0) + 1;
        shapes.set(text, times);
        if (times === observer.repeatThreshold + 1) observer.repeated(ctx, text, times);
      }
    }
  }
  if (deps.defaults.slowQueryMs > 0 && ms >= deps.defaults.slowQueryMs) {
    observer?.slow(ctx, text, ms, rows);
    deps.log.warn(
      {
        requestId: ctx.requestId,
        tenant: ctx.tenantId,
        actor: ctx.actor,
        route: stats?.route,
        durationMs: Math.round(ms),
        rows,
        sql: normalizeSql(text),
      },
      'slow query',
    );
  }
}

const SETUP_RW: SetupStatement = { name: 'strata_setup_rw', text: SETUP_SQL };
const SETUP_RO: SetupStatement = {
  name: 'strata_setup_ro',
  text: `SELECT FROM (SELECT ${SETUP_LIST}, set_config('transaction_read_only', 'on', true)) s`,
};
const SETUP_REQ_RW: SetupStatement = { name: 'strata_setup_req_rw', text: SETUP_REQUEST_SQL };
const SETUP_REQ_RO: SetupStatement = {
  name: 'strata_setup_req_ro',
  text: `SELECT FROM (SELECT ${SETUP_LIST}, ${REQUEST_LIST}, set_config('transaction_read_only', 'on', true)) s`,
};
const SETUP_REQ_TZ_RW: SetupStatement = { name: 'strata_setup_req_tz_rw', text: SETUP_REQUEST_TZ_SQL };
const SETUP_REQ_TZ_RO: SetupStatement = {
  name: 'strata_setup_req_tz_ro',
  text: `SELECT FROM (SELECT ${SETUP_LIST}, ${REQUEST_LIST}, ${TIMEZONE_ITEM}, set_config('transaction_read_only', 'on', true)) s`,
};

/** The single-trip setup statement for these options. */
function setupFor(opts: TxOptions): SetupStatement {
  const r = opts.request;
  if (r === undefined) return opts.readOnly ? SETUP_RO : SETUP_RW;
  if (r.timezone === undefined) return opts.readOnly ? SETUP_REQ_RO : SETUP_REQ_RW;
  return opts.readOnly ? SETUP_REQ_TZ_RO : SETUP_REQ_TZ_RW;
}

function setupValuesFor(deps: SessionDeps, ctx: SessionContext, opts: TxOptions): string[] {
  const values = [
    ctx.tenantId ?? '',
    ctx.actor,
    ctx.role,
    String(opts.statementTimeoutMs ?? deps.defaults.statementTimeoutMs),
    String(opts.lockTimeoutMs ?? deps.defaults.lockTimeoutMs),
  ];
  const r = opts.request;
  if (r) {
    values.push(r.claims, r.method, r.path, r.headers);
    if (r.timezone !== undefined) values.push(r.timezone);
  }
  return values;
}

/**
 * One statement as its own tenant transaction in a single round trip (see single-trip.ts): the
 * settings and the statement share one implicit transaction that ends at the Sync. Read committed
 * only (an isolation level must be chosen before the first statement); retried on 40001/40P01.
 */
export async function runSingleStatement<R extends pg.QueryResultRow>(
  pool: StrataPool,
  deps: SessionDeps,
  ctx: SessionContext,
  text: string,
  values: readonly unknown[] | undefined,
  opts: TxOptions = {},
): Promise<pg.QueryResult<R>> {
  checkParameterCount(values);
  const retries = opts.retries ?? deps.defaults.retries;
  const setupValues = setupValuesFor(deps, ctx, opts);
  const setup = setupFor(opts);
  const block = deps.cluster ? { set: clusterSetLocals(deps, ctx.tenantId) } : undefined;
  return withRetries(deps, ctx, retries, async (attempt) => {
    const lease = await pool.acquire();
    if (ctx.alive && !ctx.alive()) {
      lease.release();
      throw clientGone();
    }
    const started = performance.now();
    try {
      const res = await singleTrip<R>(
        lease.client,
        setup,
        setupValues,
        text,
        values,
        block,
      );
      account(deps, pool.options.name, ctx, text, started, res.rowCount);
      lease.release();
      return res;
    } catch (err) {
      account(deps, pool.options.name, ctx, text, started, null);
      deps.metrics.errors.inc({ pool: pool.options.name, sqlstate: sqlstateOf(err) });
      const lost = isConnectionError(err);
      // cluster mode: the failed statement left its explicit transaction block aborted
      if (block && !lost) await lease.client.query('ROLLBACK').catch(() => undefined);
      lease.release(lost || err instanceof UnreadableResultError ? true : undefined);
      // a prepared statement invalidated by a schema change is re-prepared once, transparently
      if (attempt === 1 && ['0A000', '26000'].includes(sqlstateOf(err))) return REPLAN;
      // a read whose connection died under it (a restarted or terminated backend) is simply run
      // again on another connection; a write is not, since whether it committed is unknown
      if (lost && opts.readOnly && attempt <= READ_RECONNECTS && !isReadTimeout(err)) {
        deps.log.debug({ requestId: ctx.requestId, tenant: ctx.tenantId, attempt, err }, 'read lost its connection; retrying on another');
        return REPLAN;
      }
      throw err;
    }
  });
}

const REPLAN = Symbol('replan');
/** A read-only statement whose connection is lost is retried this many times on other connections. */
const READ_RECONNECTS = 3;

/**
 * Run `attempt` until it succeeds; serialization failures and deadlocks are retried up to `retries`
 * times with full-jitter exponential backoff. An attempt may ask to be run again at once (REPLAN).
 */
async function withRetries<T>(
  deps: SessionDeps,
  ctx: SessionContext,
  retries: number,
  run: (attempt: number) => Promise<T | typeof REPLAN>,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      const out = await run(attempt);
      if (out !== REPLAN) return out;
    } catch (err) {
      if (!isRetryable(err) || attempt > retries) throw err;
      deps.metrics.retries.inc({ sqlstate: sqlstateOf(err) });
      const delay = Math.random() * Math.min(1000, 10 * 2 ** attempt);
      deps.log.debug(
        { requestId: ctx.requestId, tenant: ctx.tenantId, attempt, delay, sqlstate: sqlstateOf(err) },
        'retrying transaction',
      );
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

/** True when `x` is an open transaction (so a call given it nests as a savepoint). */
export function isTx(x: SessionContext | Tx): x is Tx {
  return x instanceof TxImpl;
}

/**
 * Run `fn` in a tenant transaction on `pool`. Given a transaction instead of a context, it becomes
 * a savepoint of that transaction (explicit nesting: no AsyncLocalStorage on the hot path).
 */
export async function runInTransaction<T>(
  pool: StrataPool,
  deps: SessionDeps,
  ctxOrTx: SessionContext | Tx,
  fn: (tx: Tx) => Promise<T>,
  opts: TxOptions = {},
): Promise<T> {
  if (isTx(ctxOrTx)) return ctxOrTx.savepoint(fn);
  const ctx = ctxOrTx;
  return withRetries(deps, ctx, opts.retries ?? deps.defaults.retries, (attempt) =>
    attemptOnce(pool, deps, ctx, fn, opts, attempt),
  );
}

async function attemptOnce<T>(
  pool: StrataPool,
  deps: SessionDeps,
  ctx: SessionContext,
  fn: (tx: Tx) => Promise<T>,
  opts: TxOptions,
  attempt: number,
): Promise<T> {
  const lease = await pool.acquire();
  if (ctx.alive && !ctx.alive()) {
    lease.release();
    throw clientGone();
  }
  const { client } = lease;
  const iso = ISOLATIONS[opts.isolation ?? 'read committed'];
  // BEGIN and the settings are queued without waiting: on a pipelined client they travel with the
  // first statement. If either fails, every later statement fails too (aborted transaction), and
  // the settings' own error is the one reported.
  // Cork the socket so BEGIN, the settings and every statement queued in this tick leave in one
  // write (node-postgres otherwise writes each query on its own).
  corkUntilNextTick(client);
  const setup = Promise.all([
    client.query(`BEGIN ISOLATION LEVEL ${iso}${opts.readOnly ? ' READ ONLY' : ''}`),
    ...(deps.cluster ? [client.query(clusterSetLocals(deps, ctx.tenantId).join('; '))] : []),
    client.query(
      opts.request === undefined
        ? { name: 'strata_session_setup', text: SETUP_SQL }
        : opts.request.timezone === undefined
          ? { name: 'strata_session_setup_req', text: SETUP_REQUEST_SQL }
          : { name: 'strata_session_setup_req_tz', text: SETUP_REQUEST_TZ_SQL },
      setupValuesFor(deps, ctx, opts),
    ),
  ]);
  setup.catch(() => undefined);
  const tx = new TxImpl(ctx, client, attempt, deps, pool.options.name, opts.releaseClean);
  /** True when the connection is clean to reuse (always, unless releaseClean asks for the check). */
  const cleaned = async (): Promise<boolean> => {
    if (!opts.releaseClean) return true;
    let timer: NodeJS.Timeout | undefined;
    try {
      // Bounded: after a cancelled COPY the queued clean-up may never be answered; the connection
      // is then closed rather than waited on (it would otherwise stay borrowed for good).
      await Promise.race([
        tx.cleanQueued ?? client.query(RELEASE_CLEAN_SQL),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('advisory-lock clean-up did not answer in 1 s')), CLEAN_TIMEOUT_MS))),
      ]);
      return true;
    } catch (err) {
      deps.log.warn({ requestId: ctx.requestId, tenant: ctx.tenantId, err }, 'could not drop advisory locks; connection closed');
      return false;
    } finally {
      clearTimeout(timer);
    }
  };
  try {
    const out = await fn(tx);
    await setup;
    if (tx.commitQueued) await tx.commitQueued;
    else await client.query('COMMIT');
    lease.release(!(await cleaned()));
    return out;
  } catch (err) {
    const setupErr = await setup.then(
      () => undefined,
      (e: unknown) => e,
    );
    const reported = setupErr ?? err;
    if (isConnectionError(reported) || isConnectionError(err) || err instanceof UnreadableResultError) {
      lease.release(true);
    } else {
      try {
        await client.query('ROLLBACK');
        lease.release(!(await cleaned()));
      } catch {
        lease.release(true);
      }
    }
    throw reported;
  }
}

interface Corkable {
  connection?: { stream?: { cork?: () => void; uncork?: () => void } };
}

function corkUntilNextTick(client: pg.PoolClient): void {
  const stream = (client as unknown as Corkable).connection?.stream;
  if (!stream?.cork || !stream.uncork) return;
  stream.cork();
  process.nextTick(() => stream.uncork?.());
}

/** SQL with literals replaced by `?`, for logs and grouping (never log values). */
export function normalizeSql(text: string): string {
  return text
    .replace(/'(?:[^']|'')*'/g, '?')
    .replace(/\b\d+(?:\.\d+)?\b/g, '?')
    .replace(/\s+/g, ' ')
    .trim()
    .slice(0, 2000);
}
