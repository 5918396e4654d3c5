/**
 * Serving a request against a tenant sandbox: when the request names one (the X-Strata-Sandbox
 * header, or the `sandbox` claim of its token), the sandbox is looked up among the request's own
 * tenant's sandboxes and set on request.ctx, so every tenant session of the request runs on the
 * sandbox's database (src/db/database.ts shardOf). Runs at preValidation: after both
 * authentications (the /v1 hook and /rest/v1's own), before idempotency and the handlers.
 *
 * Refusals, before any work: a malformed name 400 BAD_SANDBOX_NAME; a header naming another sandbox
 * than the token's claim 403 SANDBOX_MISMATCH; a route that does not run on a sandbox 400
 * SANDBOX_NOT_SUPPORTED (so a sandbox credential never reaches the real data); no tenant 400
 * TENANT_REQUIRED; and from the lookup 404 SANDBOX_NOT_FOUND, 409 SANDBOX_NOT_READY, 410
 * SANDBOX_EXPIRED.
 */
import fp from 'fastify-plugin';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { SessionContext } from '../db/session.js';
import { AppError, badRequest, forbidden } from '../errors.js';
import { SANDBOX_HEADER, SANDBOX_NAME, sandboxRouteAllowed } from '../services/sandboxes/index.js';

export default fp(
  async function sandboxPlugin(app: FastifyInstance) {
    const serve = async (request: FastifyRequest, reply: FastifyReply, ctx: SessionContext, header: string | string[] | undefined) => {
      if (header !== undefined && (typeof header !== 'string' || !SANDBOX_NAME.test(header))) {
        throw badRequest('BAD_SANDBOX_NAME', 'X-Strata-Sandbox must be one sandbox name (^[a-z0-9][a-z0-9_-]{0,62}$)');
      }
      const claim = ctx.sandboxClaim;
      if (claim !== undefined && header !== undefined && header !== claim) {
        throw forbidden('SANDBOX_MISMATCH', `this credential is for sandbox ${claim}; X-Strata-Sandbox names ${header}`);
      }
      const name = (claim ?? header) as string;
      const url = request.routeOptions.url;
      // GraphQL subscriptions and live queries (the /graphql WebSocket) follow the served database's
      // change log through followers shared per tenant; a sandbox has none, so they are refused
      // rather than fed the real tenant's events
      if (request.headers.upgrade?.toLowerCase() === 'websocket' || (request as { ws?: boolean }).ws) {
        throw badRequest(
          'SANDBOX_NOT_SUPPORTED',
          'GraphQL subscriptions and live queries are not served on a sandbox (its change events are not followed); send queries and mutations over HTTP',
        );
      }
      if (!sandboxRouteAllowed(url)) {
        throw badRequest('SANDBOX_NOT_SUPPORTED', `${request.method} ${url ?? request.url} is not served on a sandbox (docs/testing.md#tenant-sandboxes lists what is)`);
      }
      if (ctx.tenantId === null) throw badRequest('TENANT_REQUIRED', 'a sandbox is served to a credential of its tenant (this one names no tenant)');
      if (app.db.cluster) throw new AppError(501, 'NOT_SUPPORTED_ON_CLUSTER', 'tenant sandboxes are not available on a Citus cluster');
      const sandbox = await app.services.sandboxes.resolve(ctx.tenantId, name);
      request.ctx = { ...ctx, sandbox };
      request.log = request.log.child({ sandbox: name });
      void reply.header(SANDBOX_HEADER, name);
    };
    // callback style: a request naming no sandbox (nearly all) passes without a promise
    app.addHook('preValidation', (request, reply, done) => {
      const ctx = request.ctx as SessionContext | null;
      const header = request.headers[SANDBOX_HEADER];
      if (!ctx || (header === undefined && ctx.sandboxClaim === undefined)) return done();
      serve(request, reply, ctx, header).then(() => done(), done);
    });
  },
  { name: 'strata-sandbox' },
);
