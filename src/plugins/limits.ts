/**
 * Fair shares per tenant (src/services/limits): the per-tenant request rate (keyed by the
 * authenticated tenant, counters shared across API processes via Redis, fail open), and the
 * per-tenant connection caps attached to the database layer.
 *
 * The rate check is one synchronous hook on each route (no promise, no microtask, nothing allocated
 * once the tenant's limits are cached): it runs as a route-level onRequest hook, after every
 * instance-level one, so after whichever authentication the route has (the /v1 hook, or /rest/v1's
 * own in its scope) has set the tenant. Counted responses carry x-ratelimit-limit, -remaining and
 * -reset; past the limit the answer is 429 RATE_LIMITED with Retry-After.
 */
import fp from 'fastify-plugin';
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction, onRequestHookHandler } from 'fastify';
import type { Redis } from 'ioredis';
import { RATE_WINDOW_MS, rateLimited, type LimitsService, type TenantLimits } from '../services/limits/index.js';

declare module 'fastify' {
  interface FastifyInstance {
    limits: LimitsService;
  }
}

const asArray = <T>(h: T | T[] | undefined): T[] => (h === undefined ? [] : Array.isArray(h) ? h : [h]);

export default fp(
  async function limitsPlugin(app: FastifyInstance, opts: { limits: LimitsService; redis: Redis }) {
    const { limits } = opts;
    app.decorate('limits', limits);
    if (!limits.enabled) return;
    app.db.setTenantGate(limits.poolGate);
    app.addHook('onClose', async () => {
      app.db.setTenantGate(undefined);
      limits.close();
    });
    const windows = limits.rateWindows(opts.redis);
    /** Count the request against its tenant's rate; past it, 429 (headers as on every counted answer). */
    const count = (reply: FastifyReply, tenant: string, max: number, done: HookHandlerDoneFunction) => {
      const now = Date.now();
      const current = windows.hit(tenant, RATE_WINDOW_MS, now);
      const resetS = Math.ceil((RATE_WINDOW_MS - (now % RATE_WINDOW_MS)) / 1000);
      void reply.header('x-ratelimit-limit', max);
      if (current <= max) {
        void reply.header('x-ratelimit-remaining', max - current).header('x-ratelimit-reset', resetS);
        return done();
      }
      void reply.header('x-ratelimit-remaining', 0).header('x-ratelimit-reset', resetS);
      done(rateLimited(max, Math.max(1, resetS)));
    };
    // Requests counted against a tenant: authenticated ones naming a tenant (not a tenantless
    // platform_admin, not unauthenticated routes).
    const rateHook: onRequestHookHandler = (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) => {
      const tenant = (request.ctx as FastifyRequest['ctx'] | null)?.tenantId ?? null;
      if (tenant === null) return done();
      const l = limits.forTenant(tenant);
      if (!(l instanceof Promise)) return count(reply, tenant, l.requests_per_second, done);
      // the tenant's first request in this process: its limits are read once (never rejects)
      l.then((read: TenantLimits) => count(reply, tenant, read.requests_per_second, done), done);
    };
    // every route registered from here on (all of the API's) gets the check after its own
    // instance-level onRequest hooks
    app.addHook('onRoute', (route) => {
      route.onRequest = [...asArray(route.onRequest), rateHook];
    });
  },
  { name: 'strata-limits', dependencies: ['strata-auth'] },
);
