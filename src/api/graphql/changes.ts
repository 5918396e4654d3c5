/**
 * GraphQL subscription `changes(table:, op:, after:)`: the caller tenant's change events, in id order,
 * over the /graphql WebSocket (mercurius subscriptions; graphql-transport-ws or graphql-ws). The
 * upgrade request is authenticated like every request (Authorization header); the subscription
 * follows the same horizon-safe feed as GET /v1/changes/stream, and `after` resumes from an id.
 * The credential is checked before every event and re-read every STREAM_AUTH_RECHECK_MS: once it no
 * longer holds, the subscription's last message is an error whose message starts with the reason's
 * code (`CREDENTIAL_REVOKED: ...`, with `extensions.code`), then it completes.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { GraphQLID, GraphQLList, GraphQLNonNull, GraphQLObjectType, GraphQLString } from 'graphql/index.js';
import type { RequestContext } from '../../domain.js';
import { parseCursor, type ChangeEvent, type ChangeService } from '../../services/changes/index.js';
import type { CredentialEnd, CredentialWatch } from '../../services/identity/index.js';
import { AppError } from '../../errors.js';
import { JSONScalar } from './scalars.js';
import { planLive, type LiveEvent, type LiveQueries } from './live.js';

interface SubscriptionContext {
  cdc?: { changes: ChangeService; ctx: RequestContext; watch?: CredentialWatch; recheckMs?: number; live?: LiveQueries; results?: Map<unknown, unknown> };
  /** mercurius' id of the subscription (the resolver's context only). */
  id?: unknown;
}

/**
 * The data of a live query's latest answer, by subscription: the `live` field resolves to null (so
 * graphql-js runs no resolver below it) and the answer PostgreSQL built is put in its place just
 * before the message is sent (liveResolution, mercurius' onSubscriptionResolution hook).
 */
export function liveResolution(execution: { data?: Record<string, unknown> | null }, context: SubscriptionContext, id: unknown): void {
  const results = context.cdc?.results;
  if (!results?.has(id)) return;
  const data = results.get(id);
  results.delete(id);
  if (execution.data && 'live' in execution.data) execution.data['live'] = data;
}

/** The subscription's last value: resolving the field to an Error makes it the message's error. */
function endValue(end: CredentialEnd): { changes: ChangeEvent } {
  const status = end.code.startsWith('TENANT_') ? 403 : 401;
  return { changes: new AppError(status, end.code, `${end.code}: ${end.message}`) as unknown as ChangeEvent };
}

const ChangeEventType = new GraphQLObjectType({
  name: 'ChangeEvent',
  fields: {
    id: { type: new GraphQLNonNull(GraphQLID) },
    txid: { type: new GraphQLNonNull(GraphQLString) },
    tenant_id: { type: new GraphQLNonNull(GraphQLString) },
    table: { type: new GraphQLNonNull(GraphQLString) },
    op: { type: new GraphQLNonNull(GraphQLString) },
    pk: { type: new GraphQLNonNull(JSONScalar) },
    before: { type: JSONScalar },
    after: { type: JSONScalar },
    actor: { type: GraphQLString },
    at: { type: new GraphQLNonNull(GraphQLString) },
  },
});

/** An async iterator over `follow()` whose return() stops it at once, even while it waits. */
function followIterator(
  changes: ChangeService,
  ctx: RequestContext,
  after: string,
  filter: { tables?: string[]; ops?: string[] },
  watch?: CredentialWatch,
  recheckMs = 10_000,
): AsyncIterableIterator<{ changes: ChangeEvent }> {
  const abort = new AbortController();
  const gen = changes.follow(ctx, after, filter, abort.signal);
  let ended: CredentialEnd | undefined;
  let finished = false;
  const recheck = watch
    ? setInterval(() => {
        void watch.refresh().then((end) => {
          if (end && !ended) {
            ended = end;
            abort.abort(); // wakes a pending next(), which then delivers the end
          }
        });
      }, recheckMs)
    : undefined;
  const stop = () => {
    finished = true;
    if (recheck) clearInterval(recheck);
    abort.abort();
  };
  /** The reason to end, checked before anything is delivered. */
  const endNow = () => ended ?? watch?.current();
  const it: AsyncIterableIterator<{ changes: ChangeEvent }> = {
    async next() {
      if (finished) return { done: true, value: undefined };
      let end = endNow();
      if (!end) {
        let r: IteratorResult<ChangeEvent>;
        try {
          r = await gen.next();
        } catch (err) {
          end = endNow();
          if (!end) {
            stop();
            throw err;
          }
          r = { done: true, value: undefined };
        }
        end ??= endNow();
        if (!end) {
          if (r.done) {
            stop();
            return { done: true, value: undefined };
          }
          return { done: false, value: { changes: r.value } };
        }
      }
      stop();
      return { done: false, value: endValue(end) };
    },
    async return() {
      stop();
      await gen.return(undefined);
      return { done: true, value: undefined };
    },
    [Symbol.asyncIterator]() {
      return it;
    },
  };
  return it;
}

/** The Subscription root type: `changes`, and `live` (a query re-run on change, live.ts) over `query`. */
export function changesSubscriptionType(query: GraphQLObjectType): GraphQLObjectType {
  return new GraphQLObjectType<unknown, SubscriptionContext>({
    name: 'Subscription',
    fields: {
      live: {
        type: query,
        description:
          'A live query: the selection (any query over tables) is answered at once and again each time a change event touches a table it reads, only when the answer changed. Tables must be captured.',
        subscribe: async (_root, _args, context, info) => {
          const cdc = context.cdc;
          if (!cdc?.live) throw new Error('subscriptions need an authenticated WebSocket connection');
          try {
            const plan = planLive(info, await cdc.live.guard(cdc.ctx));
            await cdc.live.checkCaptured(plan.tables);
            return mapEvents(cdc.live.open(cdc.ctx, plan, cdc.watch));
          } catch (err) {
            throw coded(err);
          }
        },
        resolve: (event: unknown, _args, context) => {
          const e = (event as { live: LiveEvent }).live;
          if ('error' in e) throw e.error;
          context.cdc?.results?.set(context.id, e.data);
          return null;
        },
      },
      changes: {
        type: new GraphQLNonNull(ChangeEventType),
        description: 'Change events of captured tables, in id order, from `after` (default: from now).',
        args: { table: { type: new GraphQLList(new GraphQLNonNull(GraphQLString)) }, op: { type: new GraphQLList(new GraphQLNonNull(GraphQLString)) }, after: { type: GraphQLID } },
        subscribe: async (_root, args: { table?: string[]; op?: string[]; after?: string }, context) => {
          const cdc = context.cdc;
          if (!cdc) throw new Error('subscriptions need an authenticated WebSocket connection');
          const filter = { tables: args.table ?? undefined, ops: args.op ?? undefined };
          await cdc.changes.checkFilter(filter);
          const after = args.after !== undefined && args.after !== null ? parseCursor(args.after) : await latestId(cdc.changes, cdc.ctx);
          return followIterator(cdc.changes, cdc.ctx, after, filter, cdc.watch, cdc.recheckMs);
        },
      },
    },
  });
}

/**
 * A refusal at subscribe time as the WebSocket's `error` message carries it: mercurius sends only
 * the message and the error's `extensions`, so the code goes in both (`LIVE_QUERY_LIMIT: ...`).
 */
function coded(err: unknown): unknown {
  if (!(err instanceof AppError)) return err;
  return Object.assign(new Error(`${err.code}: ${err.message}`, { cause: err }), { extensions: { code: err.code, status: err.statusCode, ...(err.details === undefined ? {} : { details: err.details }) } });
}

/** A live query's events as subscription payloads (graphql-js runs the root field on `{ live }`). */
function mapEvents(it: AsyncIterableIterator<LiveEvent>): AsyncIterableIterator<{ live: LiveEvent }> {
  const out: AsyncIterableIterator<{ live: LiveEvent }> = {
    async next() {
      const r = await it.next();
      return r.done ? { done: true, value: undefined } : { done: false, value: { live: r.value } };
    },
    async return() {
      await it.return?.();
      return { done: true, value: undefined };
    },
    [Symbol.asyncIterator]() {
      return out;
    },
  };
  return out;
}

/** The newest id the tenant can see now: a subscription without `after` starts from there. */
async function latestId(changes: ChangeService, ctx: RequestContext): Promise<string> {
  let after = '0';
  for (;;) {
    const page = await changes.list(ctx, { after, limit: 1000 });
    const last = page.data.at(-1);
    if (last) after = last.id;
    if (!page.next_cursor) return after;
  }
}

/** mercurius `subscription` options: the connection's context carries the authenticated caller. */
export function changesSubscriptionOptions(app: FastifyInstance) {
  return {
    context: (_socket: unknown, request: FastifyRequest): SubscriptionContext => ({
      cdc: {
        changes: app.services.changes,
        ctx: request.ctx,
        watch: app.auth.watch(request.headers, request.ctx),
        recheckMs: app.config.STREAM_AUTH_RECHECK_MS,
        live: app.graphqlLive,
        results: new Map(),
      },
    }),
  };
}
