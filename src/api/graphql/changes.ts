/**
 * GraphQL subscription `changes(table:, op:, after:)`: the caller tenant's change events, in id order,
 * over the /graphql WebSocket (mercurius subscriptions; graphql-transport-ws or graphql-ws). The
 * upgrade request is authenticated like every request (Authorization header); the subscription
 * follows the same horizon-safe feed as GET /v1/changes/stream, and `after` resumes from an id.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { GraphQLID, GraphQLList, GraphQLNonNull, GraphQLObjectType, GraphQLString } from 'graphql/index.js';
import type { RequestContext } from '../../domain.js';
import { parseCursor, type ChangeEvent, type ChangeService } from '../../services/changes/index.js';
import { JSONScalar } from './scalars.js';

interface SubscriptionContext {
  cdc?: { changes: ChangeService; ctx: RequestContext };
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
function followIterator(changes: ChangeService, ctx: RequestContext, after: string, filter: { tables?: string[]; ops?: string[] }): AsyncIterableIterator<{ changes: ChangeEvent }> {
  const abort = new AbortController();
  const gen = changes.follow(ctx, after, filter, abort.signal);
  const it: AsyncIterableIterator<{ changes: ChangeEvent }> = {
    async next() {
      const r = await gen.next();
      return r.done ? { done: true, value: undefined } : { done: false, value: { changes: r.value } };
    },
    async return() {
      abort.abort();
      await gen.return(undefined);
      return { done: true, value: undefined };
    },
    [Symbol.asyncIterator]() {
      return it;
    },
  };
  return it;
}

/** The Subscription root type. */
export function changesSubscriptionType(): GraphQLObjectType {
  return new GraphQLObjectType<unknown, SubscriptionContext>({
    name: 'Subscription',
    fields: {
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
          return followIterator(cdc.changes, cdc.ctx, after, filter);
        },
      },
    },
  });
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
    context: (_socket: unknown, request: FastifyRequest): SubscriptionContext => ({ cdc: { changes: app.services.changes, ctx: request.ctx } }),
  };
}
