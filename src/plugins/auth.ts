/**
 * Authentication and authorization. A route declares `config: { capability }`; the hook verifies the
 * credential, checks the role, and sets `request.ctx` (tenant, actor, role, request id) and the
 * request logger's bindings. Routes without a capability are public.
 */
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { CAN, type Capability } from '../domain.js';
import { forbidden } from '../errors.js';
import type { Authenticator } from '../services/auth.js';
import type { SessionContext } from '../db/session.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    capability?: Capability;
  }
  interface FastifyRequest {
    ctx: SessionContext;
  }
  interface FastifyInstance {
    auth: Authenticator;
  }
}

export default fp(
  async function authPlugin(app: FastifyInstance, opts: { authenticator: Authenticator }) {
    app.decorate('auth', opts.authenticator);
    app.decorateRequest('ctx', null as unknown as SessionContext);
    app.addHook('onRequest', async (request) => {
      const capability = request.routeOptions.config.capability;
      if (!capability) return;
      const principal = await opts.authenticator.authenticate(request.headers);
      const allowed = CAN[capability] as readonly string[];
      request.ctx = { ...principal, requestId: request.id, stats: request.queryStats };
      // request.log is already this request's child logger: add bindings rather than another child
      (request.log as unknown as Logger).setBindings({ tenant: principal.tenantId, actor: principal.actor, role: principal.role });
      if (!allowed.includes(principal.role)) {
        throw forbidden('ROLE_FORBIDDEN', `role ${principal.role} may not do this (needs one of ${allowed.join(', ')})`);
      }
    });
  },
  { name: 'strata-auth' },
);
