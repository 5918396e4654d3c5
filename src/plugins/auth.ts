/**
 * Authentication and authorization. A route declares `config: { capability }`; the hook verifies the
 * credential, checks the role, and sets `request.ctx` (tenant, actor, role, request id) and the
 * request logger's bindings. Routes without a capability are public.
 */
import fp from 'fastify-plugin';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { attachPrincipal } from '../logger.js';
import { CAN, type Capability } from '../domain.js';
import { forbidden } from '../errors.js';
import type { Authenticator, Principal } from '../services/identity/index.js';
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
    const admit = (request: FastifyRequest, capability: Capability, principal: Principal) => {
      request.ctx = { ...principal, requestId: request.id, stats: request.queryStats, alive: () => !(request.raw.socket?.destroyed === true) };
      // request.log is already this request's child logger: its lines now carry tenant, actor, role
      attachPrincipal(request.log, principal);
      const allowed = CAN[capability] as readonly string[];
      if (!allowed.includes(principal.role)) {
        throw forbidden('ROLE_FORBIDDEN', `role ${principal.role} may not do this (needs one of ${allowed.join(', ')})`);
      }
    };
    // callback style: a credential seen before is admitted without a promise or a microtask
    app.addHook('onRequest', (request, _reply, done) => {
      const capability = request.routeOptions.config.capability;
      if (!capability) return done();
      const finish = (principal: Principal) => {
        try {
          admit(request, capability, principal);
        } catch (err) {
          return done(err as Error);
        }
        done();
      };
      const known = opts.authenticator.cached(request.headers);
      if (known) return finish(known);
      opts.authenticator.authenticate(request.headers).then(finish, done);
    });
  },
  { name: 'strata-auth' },
);
