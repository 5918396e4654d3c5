/**
 * Live queries: `subscription { live { <any query selection> } }` over the /graphql WebSocket. The
 * selection under `live` is a query (validated against the Query type, with the operation's
 * variables and fragments); it is compiled once into the one statement a query gets (compile.ts),
 * run at once, and run again whenever a change event of the caller's tenant touches a table it
 * reads (debounced), pushing a new answer only when the JSON PostgreSQL built differs from the last
 * one pushed.
 *
 * Change events come from the change feed (captured tables): one follower per tenant and process
 * reads the tenant's events once and wakes that tenant's live queries whose tables they touch, so
 * 100 open live queries cost one change-log read per wake-up, not 100. A live query reading a table
 * that is not captured is refused (TABLE_NOT_CAPTURED): nothing would ever wake it.
 *
 * Bounds: at most GRAPHQL_LIVE_MAX_PER_TENANT open live queries per tenant and process (more are
 * refused, 429 LIVE_QUERY_LIMIT); re-runs of one tenant run at most RERUNS_PER_TENANT at a time, on
 * the tenant's own connection share; every answer is bounded in bytes like a query's (past it the
 * live query ends with RESPONSE_TOO_LARGE). The credential is checked before every push and re-read
 * every STREAM_AUTH_RECHECK_MS, as for `changes`: once it no longer holds, the last message is an
 * error naming why (`CREDENTIAL_REVOKED: ...`), then the subscription completes.
 */
import type { FastifyBaseLogger } from 'fastify';
import {
  Kind,
  OperationTypeNode,
  TypeInfo,
  visit,
  visitWithTypeInfo,
  type DocumentNode,
  type FragmentDefinitionNode,
  type GraphQLObjectType,
  type GraphQLResolveInfo,
  type GraphQLSchema,
  type OperationDefinitionNode,
} from 'graphql/index.js';
import type { Database } from '../../db/database.js';
import type { SessionContext } from '../../db/session.js';
import type { ChangeService } from '../../services/changes/index.js';
import type { CredentialEnd, CredentialWatch } from '../../services/identity/index.js';
import { AppError, badRequest } from '../../errors.js';
import { checkLimits } from './cost.js';
import { Unsupported, compileOperation, type FieldPlan } from './compile.js';
import { costView, type CompiledQueries, type Statement } from './compiled.js';
import type { Guard } from '../../services/compliance/index.js';

/** Re-runs of one tenant's live queries at once (the rest wait their turn). */
const RERUNS_PER_TENANT = 2;
/**
 * Statements of one caller run together in one pipelined transaction when they wait for a slot at
 * the same time (after a change wakes many live queries): one round trip for up to this many.
 */
const BATCH_MAX = 64;

export interface LiveOptions {
  maxPerTenant: number;
  debounceMs: number;
  recheckMs: number;
  /** The caller's compliance guard (undefined when nothing is declared). */
  guard?: (ctx: SessionContext) => Promise<Guard | undefined>;
}

/** What a live query's iterator yields: the `data` of a new answer, or the error that ends it. */
export type LiveEvent = { data: unknown } | { error: AppError };

/** The live query of a `live` field: its statement and the tables it reads. */
export interface LivePlan {
  statement: Statement;
  tables: Set<string>;
}

/**
 * Compile the selection of a `live` field as a query operation; 400 when it has no one-statement
 * form. With a compliance guard, filters, orders and aggregates on declared columns are refused as
 * for a query, and a selection of declared columns is refused (LIVE_QUERY_UNSUPPORTED): a push
 * carries the statement's JSON as it is, and a live query does not reveal per role.
 */
export function planLive(info: GraphQLResolveInfo, guard?: Guard): LivePlan {
  const schema = info.schema;
  const field = info.fieldNodes[0];
  const query = schema.getQueryType();
  if (!field?.selectionSet || !query) throw badRequest('LIVE_QUERY_UNSUPPORTED', 'a live query needs a selection (subscription { live { ... } })');
  const operation: OperationDefinitionNode = {
    kind: Kind.OPERATION_DEFINITION,
    operation: OperationTypeNode.QUERY,
    name: info.operation.name,
    variableDefinitions: info.operation.variableDefinitions,
    directives: [],
    selectionSet: field.selectionSet,
  };
  const fragments: Record<string, FragmentDefinitionNode> = info.fragments;
  const document: DocumentNode = { kind: Kind.DOCUMENT, definitions: [operation, ...Object.values(fragments)] };
  checkLimits(schema, costView(document), info.operation.name?.value, info.variableValues);
  let statement: Statement;
  try {
    statement = compileOperation(schema, operation, fragments, info.variableValues, guard);
  } catch (err) {
    if (err instanceof Unsupported) {
      throw badRequest(
        'LIVE_QUERY_UNSUPPORTED',
        `a live query can select what compiles into one statement (table lists, connections, by-key rows, aggregates, their relationships); this one cannot (${err.message}): search, views, time series and introspection are not live`,
      );
    }
    throw err;
  }
  if (statement.reveals?.length) {
    const r = statement.reveals[0] as { table: string; column: string };
    throw badRequest('LIVE_QUERY_UNSUPPORTED', `a live query cannot select declared (compliance) columns such as ${r.table}.${r.column}: query them without live, where they are revealed per role`, {
      table: r.table,
      column: r.column,
    });
  }
  return { statement, tables: tablesRead(schema, document, query) };
}

/** The tables a query document reads, from the fields' plans (schema.ts sets them). */
function tablesRead(schema: GraphQLSchema, document: DocumentNode, _query: GraphQLObjectType): Set<string> {
  const tables = new Set<string>();
  const typeInfo = new TypeInfo(schema);
  visit(
    document,
    visitWithTypeInfo(typeInfo, {
      Field() {
        const plan = typeInfo.getFieldDef()?.extensions['strata'] as FieldPlan | undefined;
        if (!plan) return;
        if (plan.kind === 'byPk' || plan.kind === 'aggregate' || plan.kind === 'connection') tables.add(plan.model.table.name);
        else if (plan.kind === 'object' || plan.kind === 'children') tables.add(plan.remote.table.name);
      },
    }),
  );
  return tables;
}

/** A counting semaphore: `run` waits for a free slot. */
class Slots {
  private busy = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(private readonly size: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.busy >= this.size) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.busy++;
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.busy--;
    }
  }
}

interface Member {
  tables: Set<string>;
  touch(): void;
}

/** A statement run shared by the live queries that asked for the same one. */
interface SharedRun {
  /** hub.seq when it started (undefined while it waits for a slot). */
  started?: number;
  result: Promise<string | null>;
}

/** A run waiting for a slot: its caller (statements of one caller are batched) and statement. */
interface Queued {
  entry: SharedRun;
  caller: string;
  ctx: SessionContext;
  statement: Statement;
  resolve: (body: string | null) => void;
  reject: (err: unknown) => void;
}

/** Runs statements of one caller: several at once in one round trip. */
export type RunMany = (ctx: SessionContext, statements: readonly Statement[]) => Promise<Array<string | null>>;

/** One tenant's change follower and its live queries (in this process). */
class TenantHub {
  readonly members = new Set<Member>();
  readonly slots = new Slots(RERUNS_PER_TENANT);
  /** A counter ordering touches and run starts. */
  seq = 0;
  private readonly shared = new Map<string, SharedRun>();
  private readonly queue: Queued[] = [];
  private readonly abort = new AbortController();
  private started: () => void = () => undefined;
  /** Resolves once the follower has its starting point: changes committed after it wake the members. */
  readonly ready: Promise<void>;

  constructor(
    private readonly db: Database,
    private readonly changes: ChangeService,
    private readonly ctx: SessionContext,
    private readonly log: FastifyBaseLogger,
    private readonly runMany: RunMany,
  ) {
    this.ready = new Promise<void>((resolve) => (this.started = resolve));
    void this.loop();
  }

  private async loop(): Promise<void> {
    const started = () => this.started();
    let after: string | undefined;
    while (!this.abort.signal.aborted) {
      try {
        after ??= await horizon(this.db, this.ctx);
        started();
        for await (const e of this.changes.follow(this.ctx, after, {}, this.abort.signal)) {
          after = e.id;
          for (const m of this.members) if (m.tables.has(e.table)) m.touch();
        }
      } catch (err) {
        if (this.abort.signal.aborted) break;
        this.log.warn({ err, tenant: this.ctx.tenantId }, 'live queries: the change follower failed; retrying in 1 s');
        started(); // members run their first answer meanwhile
        for (const m of this.members) m.touch(); // what was missed meanwhile is re-read
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  }

  /**
   * Run a statement for a live query that needs an answer seeing everything up to its `since`: an
   * identical statement (same text, values and caller) waiting for a slot, or started after
   * `since`, is joined instead of run again, so 100 viewers of one dashboard cost one statement.
   */
  run(key: string, since: number, caller: string, ctx: SessionContext, statement: Statement): Promise<string | null> {
    const current = this.shared.get(key);
    if (current && (current.started === undefined || current.started > since)) return current.result;
    const entry: SharedRun = { result: Promise.resolve(null) };
    entry.result = new Promise<string | null>((resolve, reject) => {
      this.queue.push({ entry, caller, ctx, statement, resolve, reject });
    }).finally(() => {
      if (this.shared.get(key) === entry) this.shared.delete(key);
    });
    this.shared.set(key, entry);
    void this.slots.run(() => this.drain());
    return entry.result;
  }

  /**
   * With a slot: the waiting runs of the first waiting caller (up to BATCH_MAX) in one round trip.
   * A batch that fails is run again one statement at a time, so one bad statement fails only its
   * own live queries. Nothing waiting (an earlier drain took it): nothing to do.
   */
  private async drain(): Promise<void> {
    const head = this.queue[0];
    if (!head) return;
    const batch: Queued[] = [];
    for (let i = 0; i < this.queue.length && batch.length < BATCH_MAX; ) {
      const q = this.queue[i] as Queued;
      if (q.caller === head.caller) {
        batch.push(q);
        this.queue.splice(i, 1);
      } else i++;
    }
    for (const q of batch) q.entry.started = ++this.seq;
    try {
      const bodies = await this.runMany(head.ctx, batch.map((q) => q.statement));
      for (const [i, q] of batch.entries()) {
        // past its share of the byte bound in a batch: alone, it has the whole bound
        const body = bodies[i] ?? (batch.length > 1 ? ((await this.runMany(q.ctx, [q.statement]))[0] ?? null) : null);
        q.resolve(body);
      }
    } catch (err) {
      if (batch.length === 1) {
        (batch[0] as Queued).reject(err);
        return;
      }
      for (const q of batch) {
        try {
          const [body] = await this.runMany(q.ctx, [q.statement]);
          q.resolve(body ?? null);
        } catch (e) {
          q.reject(e);
        }
      }
    }
  }

  stop(): void {
    this.abort.abort();
    this.started();
  }
}

/**
 * Where a tenant's follower starts: the change horizon (strata.change_horizon()). Every event at or
 * below it is settled (committed or rolled back), so it is in the first answers, which run after;
 * every event above it is read by the follower. One statement, whatever the length of the log.
 */
async function horizon(db: Database, ctx: SessionContext): Promise<string> {
  const { rows } = await db.tenantQuery<{ h: string }>(ctx, 'SELECT strata.change_horizon()::text AS h', [], { readOnly: true });
  return rows[0]?.h ?? '0';
}

export class LiveQueries {
  private readonly hubs = new Map<string, TenantHub>();

  constructor(
    private readonly db: Database,
    private readonly changes: ChangeService,
    private readonly compiled: CompiledQueries,
    private readonly opts: LiveOptions,
    private readonly log: FastifyBaseLogger,
  ) {}

  /** Open live queries of a tenant in this process. */
  count(tenantId: string): number {
    return this.hubs.get(tenantId)?.members.size ?? 0;
  }

  /** The caller's compliance guard (undefined when nothing is declared). */
  guard(ctx: SessionContext): Promise<Guard | undefined> {
    return this.opts.guard ? this.opts.guard(ctx) : Promise.resolve(undefined);
  }

  /** Refuse tables without change capture: nothing would wake the live query. */
  async checkCaptured(tables: Set<string>): Promise<void> {
    const captured = await this.changes.capturedTables();
    for (const t of tables) {
      if (!captured.has(t)) throw badRequest('TABLE_NOT_CAPTURED', `a live query is woken by change events; table ${JSON.stringify(t)} is not captured (capture it, or query it without live)`);
    }
  }

  /**
   * The iterator of one live query: the first answer at once, then a new one after each change
   * event touching its tables, when it differs. Ends with an error event (credential, size, failure).
   */
  open(ctx: SessionContext, plan: LivePlan, watch: CredentialWatch | undefined): AsyncIterableIterator<LiveEvent> {
    const tenantId = ctx.tenantId;
    if (tenantId === null) throw badRequest('TENANT_REQUIRED', 'a live query reads tenant data: authenticate as a tenant');
    let hub = this.hubs.get(tenantId);
    if ((hub?.members.size ?? 0) >= this.opts.maxPerTenant) {
      throw new AppError(429, 'LIVE_QUERY_LIMIT', `tenant ${tenantId} has ${this.opts.maxPerTenant} open live queries on this server (GRAPHQL_LIVE_MAX_PER_TENANT); close one first`, { max: this.opts.maxPerTenant });
    }
    if (!hub) {
      hub = new TenantHub(this.db, this.changes, ctx, this.log, (c, statements) => this.compiled.executeMany(c, statements));
      this.hubs.set(tenantId, hub);
    }
    const tenantHub = hub;

    let dirty = true; // the first answer
    let since = ++tenantHub.seq;
    const caller = `${ctx.role}\n${ctx.actor}`;
    const key = `${caller}\n${plan.statement.text}\n${JSON.stringify(plan.statement.values)}`;
    let finished = false;
    let ended: CredentialEnd | undefined;
    let last: string | undefined;
    let wake: (() => void) | undefined;
    let debounce: NodeJS.Timeout | undefined;
    const signal = () => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    const member: Member = {
      tables: plan.tables,
      touch: () => {
        since = ++tenantHub.seq;
        if (dirty || debounce) return;
        debounce = setTimeout(() => {
          debounce = undefined;
          dirty = true;
          signal();
        }, this.opts.debounceMs);
      },
    };
    tenantHub.members.add(member);
    const recheck = watch
      ? setInterval(() => {
          void watch.refresh().then((end) => {
            if (end && !ended) {
              ended = end;
              signal();
            }
          });
        }, this.opts.recheckMs)
      : undefined;
    const stop = () => {
      if (finished) return;
      finished = true;
      if (recheck) clearInterval(recheck);
      if (debounce) clearTimeout(debounce);
      tenantHub.members.delete(member);
      if (tenantHub.members.size === 0 && this.hubs.get(tenantId) === tenantHub) {
        this.hubs.delete(tenantId);
        tenantHub.stop();
      }
      signal();
    };
    const endNow = () => ended ?? watch?.current();
    const credentialError = (end: CredentialEnd) => new AppError(end.code.startsWith('TENANT_') ? 403 : 401, end.code, `${end.code}: ${end.message}`);

    const it: AsyncIterableIterator<LiveEvent> = {
      next: async () => {
        if (!last) await tenantHub.ready;
        for (;;) {
          if (finished) return { done: true, value: undefined };
          let end = endNow();
          if (end) {
            stop();
            return { done: false, value: { error: credentialError(end) } };
          }
          if (!dirty) {
            await new Promise<void>((resolve) => (wake = resolve));
            continue;
          }
          dirty = false;
          let body: string | null;
          try {
            body = finished ? last ?? null : await tenantHub.run(key, since, caller, ctx, plan.statement);
          } catch (err) {
            stop();
            if (err instanceof AppError) return { done: false, value: { error: err } };
            this.log.warn({ err, tenant: tenantId }, 'live query failed');
            return { done: false, value: { error: new AppError(500, 'LIVE_QUERY_FAILED', 'the live query failed; subscribe again') } };
          }
          if (finished) return { done: true, value: undefined };
          end = endNow();
          if (end) continue;
          if (body === null) {
            stop();
            return { done: false, value: { error: this.compiled.tooLarge() } };
          }
          if (body === last) continue; // unchanged: nothing to push
          last = body;
          return { done: false, value: { data: (JSON.parse(body) as { data: unknown }).data } };
        }
      },
      return: async () => {
        stop();
        return { done: true, value: undefined };
      },
      [Symbol.asyncIterator]() {
        return it;
      },
    };
    return it;
  }

  /** Stop every follower (app close). */
  close(): void {
    for (const hub of this.hubs.values()) hub.stop();
    this.hubs.clear();
  }
}
