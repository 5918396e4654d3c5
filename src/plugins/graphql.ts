/**
 * GraphQL at /graphql (mercurius, JIT after the first run) over a schema generated from the schema
 * registry and rebuilt when it changes; GraphiQL at /graphiql (public page, no data without a
 * token). /graphql requires authentication (route capability `read`); mutations need a writer
 * role, run in ONE transaction per request and roll back entirely on any error. Depth, `first`
 * and cost limits are checked before execution; every error carries `extensions.code`.
 */
import fp from 'fastify-plugin';
import mercurius from 'mercurius';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
// graphql's CommonJS entry, explicitly: it is the instance mercurius and graphql-jit require. A bare
// 'graphql' import may resolve to index.mjs under bundlers and vitest: a second "realm" whose types
// graphql-js refuses. Every module of src/api/graphql imports it the same way.
import { GraphQLBoolean, GraphQLObjectType, GraphQLSchema, OperationTypeNode, getOperationAST } from 'graphql/index.js';
import { AppError, badRequest } from '../errors.js';
import { GraphqlRequest } from '../api/graphql/context.js';
import { checkLimits } from '../api/graphql/cost.js';
import { formatErrors } from '../api/graphql/errors.js';
import { buildGraphqlSchema } from '../api/graphql/schema.js';
import { viewFields } from '../api/graphql/views.js';
import { normalizeLiterals } from '../api/graphql/normalize.js';
import { changesSubscriptionOptions, liveResolution } from '../api/graphql/changes.js';
import { LiveQueries } from '../api/graphql/live.js';
import { CompiledQueries, costView } from '../api/graphql/compiled.js';
import { graphiqlRoutes } from '../api/graphql/graphiql.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** The one-statement query compiler and its plan cache (GraphQL). */
    graphqlCompiler: CompiledQueries;
    /** Live queries (subscription { live { ... } }): their per-tenant change followers. */
    graphqlLive: LiveQueries;
  }
}

declare module 'mercurius' {
  interface MercuriusContext {
    strata: GraphqlRequest;
  }
}

/** Mercurius' own depth check is a backstop that lets introspection (15 levels for GraphiQL) through; data depth is 10. */
const INTROSPECTION_SAFE_DEPTH = 16;

const placeholder = new GraphQLSchema({
  query: new GraphQLObjectType({ name: 'Query', fields: { _empty: { type: GraphQLBoolean } } }),
});

function operationName(request: FastifyRequest): string | undefined {
  const source = (request.method === 'GET' ? request.query : request.body) as { operationName?: unknown } | null | undefined;
  return typeof source?.operationName === 'string' ? source.operationName : undefined;
}

export default fp(
  async function graphqlPlugin(app: FastifyInstance) {
    const registry = app.services.schema;
    const maxBytes = app.config.GRAPHQL_MAX_RESPONSE_BYTES || app.config.RESPONSE_MAX_BYTES;
    const requests = new WeakMap<FastifyRequest, GraphqlRequest>();
    let builtVersion = -1;
    const compiled = new CompiledQueries(app.db, app.config.GRAPHQL_PLAN_CACHE_MAX, app.config.GRAPHQL_MAX_RESPONSE_BYTES || app.config.RESPONSE_MAX_BYTES);
    compiled.enabled = app.config.GRAPHQL_COMPILER;
    app.decorate('graphqlCompiler', compiled);
    const live = new LiveQueries(app.db, app.services.changes, compiled, { maxPerTenant: app.config.GRAPHQL_LIVE_MAX_PER_TENANT, debounceMs: app.config.GRAPHQL_LIVE_DEBOUNCE_MS, recheckMs: app.config.STREAM_AUTH_RECHECK_MS, guard: (ctx) => app.services.compliance.enforcement.guard(ctx) }, app.log);
    app.decorate('graphqlLive', live);

    /**
     * A query operation answered by one compiled statement: true when the reply is sent. Anything
     * the compiler does not serve (see compiled.ts) returns false and goes on to mercurius.
     */
    async function serveCompiled(request: FastifyRequest, reply: FastifyReply, source: Record<string, unknown>): Promise<boolean> {
      const ctx = request.ctx;
      if (!compiled.enabled || !ctx) return false;
      // with declared columns, the compiled answer's declared values are revealed per role in node
      // (compiled.ts revealAnswer) and filters, orders and aggregates on them checked as the resolvers do
      const policy = app.services.compliance.enforcement.policy();
      const guard = (policy instanceof Promise ? await policy : policy).tables.size > 0 ? await app.services.compliance.enforcement.guard(ctx) : undefined;
      let variables = source['variables'];
      if (typeof variables === 'string' && request.method === 'GET') {
        try {
          variables = JSON.parse(variables);
        } catch {
          return false;
        }
      }
      if (variables !== undefined && variables !== null && (typeof variables !== 'object' || Array.isArray(variables))) return false;
      const opName = source['operationName'];
      if (opName !== undefined && opName !== null && typeof opName !== 'string') return false;
      const outcome = await compiled.run(
        app.graphql.schema,
        builtVersion,
        ctx,
        source['query'] as string,
        opName ?? undefined,
        (variables ?? undefined) as Record<string, unknown> | undefined,
        request.log,
        guard,
      );
      if (outcome.kind === 'fallback') return false;
      if (outcome.kind === 'failed') {
        const { status, errors } = formatErrors([outcome.error], request.log);
        void reply.code(status).send({ data: null, errors });
        return true;
      }
      void reply.code(200).header('content-type', 'application/json; charset=utf-8').send(outcome.body);
      return true;
    }

    /** Build the schema on first use (no database at boot) and again after every registry change. */
    async function ensureSchema(): Promise<void> {
      const tables = await registry.tables();
      if (builtVersion === registry.version) return;
      const version = registry.version;
      app.graphql.replaceSchema(buildGraphqlSchema(tables, app.log, viewFields(app.services)));
      compiled.clear();
      builtVersion = version;
    }
    const unsubscribe = registry.onChange(() => {
      ensureSchema().catch((err: unknown) => app.log.error({ err }, 'GraphQL schema rebuild failed'));
    });
    app.addHook('onClose', async () => {
      unsubscribe();
      live.close();
    });

    // GraphQL has its own introspection; keep its routes out of the REST OpenAPI document.
    app.addHook('onRoute', (route) => {
      if (route.url === '/graphql' || route.url.startsWith('/graphiql')) route.schema = { ...route.schema, hide: true };
    });

    async function finish(request: FastifyRequest): Promise<void> {
      const state = requests.get(request);
      if (state?.mutationStarted) {
        await state.endMutation(false);
        request.log.warn('GraphQL mutation transaction rolled back after a request failure');
      }
    }

    await app.register(mercurius, {
      schema: placeholder,
      path: '/graphql',
      graphiql: false, // served by graphiql.ts from bundled packages (no CDN)
      jit: 1,
      queryDepth: INTROSPECTION_SAFE_DEPTH,
      subscription: changesSubscriptionOptions(app),
      context: (request: FastifyRequest) => {
        const state = new GraphqlRequest(app.db, request.ctx ?? null, request.log, operationName(request), maxBytes);
        requests.set(request, state);
        return { strata: state };
      },
      errorFormatter: (execution, context) => {
        const log = context.reply?.log ?? app.log;
        const { status, errors } = formatErrors(execution.errors, log);
        if (context.strata) context.strata.errorStatus ??= status;
        const data = execution.data ?? null;
        return { statusCode: data ? 200 : status, response: { data, errors } };
      },
      errorHandler: async (error: Error, request: FastifyRequest, reply: FastifyReply) => {
        await finish(request);
        if (error instanceof AppError && error.statusCode === 401) {
          return reply.code(401).send({ error: { code: error.code, message: error.message } });
        }
        const { status, errors } = formatErrors([error], request.log);
        return reply.code(status).send({ data: null, errors });
      },
      additionalRouteOptions: {
        config: { capability: 'read' },
        preHandler: async (request: FastifyRequest, reply: FastifyReply) => {
          // a subscription's WebSocket upgrade: the query comes over the socket, the schema must be built
          if ((request as { ws?: boolean }).ws) return ensureSchema();
          const source = (request.method === 'GET' ? request.query : request.body) as { query?: unknown } | null | undefined;
          if (typeof source?.query !== 'string' || !source.query.trim()) {
            throw badRequest('GRAPHQL_BAD_REQUEST', 'the request has no GraphQL query (send { "query": "..." })');
          }
          await ensureSchema();
          if (await serveCompiled(request, reply, source)) return reply;
          const vars = (source as { variables?: unknown }).variables;
          const plainVars = vars === undefined || vars === null || (typeof vars === 'object' && !Array.isArray(vars));
          if (request.method === 'POST' && plainVars) {
            const body = source as { query: string; variables?: Record<string, unknown> | null };
            const normalized = normalizeLiterals(app.graphql.schema, body.query, body.variables ?? undefined);
            if (normalized) {
              body.query = normalized.query;
              body.variables = normalized.variables;
            }
          }
        },
        onResponse: async (request: FastifyRequest) => finish(request),
      },
    });

    await graphiqlRoutes(app);

    app.graphql.addHook('preExecution', async (schema, document, context, variables) => {
      // app.graphql() called without our context (no route, no caller): there is no tenant to run as
      const state = (context.strata as GraphqlRequest | undefined) ?? new GraphqlRequest(app.db, null, app.log, undefined);
      context.strata = state;
      const op = getOperationAST(document, state.operationName);
      if (op?.operation === OperationTypeNode.MUTATION) {
        state.isMutation = true;
        state.assertCanWrite();
      }
      // Over HTTP a subscription has no stream to deliver to (graphql-js would fail with a 500).
      if (op?.operation === OperationTypeNode.SUBSCRIPTION) {
        throw badRequest('SUBSCRIPTION_NEEDS_WEBSOCKET', 'subscriptions are served over a WebSocket at /graphql (graphql-ws); send queries and mutations over HTTP');
      }
      checkLimits(schema, costView(document), state.operationName, variables as Record<string, unknown> | undefined);
      const session = state.session_;
      if (session) state.guard = await app.services.compliance.enforcement.guard(session);
    });

    app.graphql.addHook('onSubscriptionResolution', async (execution, context, id) => {
      liveResolution(execution as { data?: Record<string, unknown> | null }, context as Parameters<typeof liveResolution>[1], id);
    });

    app.graphql.addHook('onResolution', async (execution, context) => {
      const state = context.strata;
      state?.guard?.flushAudit('graphql');
      if (!state?.isMutation) return;
      const ok = !execution.errors?.length;
      const commitError = await state.endMutation(ok);
      if (ok && commitError === undefined) {
        await app.services.hooks.afterCommit(state.ctx, state.written);
        return;
      }
      // all or nothing: a failed mutation request reports its errors and no data
      execution.data = null;
      if (commitError !== undefined) {
        const f = formatErrors([commitError], context.reply.log);
        (execution as { errors?: unknown[] }).errors = [...(execution.errors ?? []), ...f.errors];
        state.errorStatus ??= f.status;
      }
      void context.reply.code(state.errorStatus ?? 400);
    });
  },
  { name: 'strata-graphql', dependencies: ['strata-auth'] },
);
