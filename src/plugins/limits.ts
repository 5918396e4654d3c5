/**
 * Fair shares per tenant (src/services/limits): the per-tenant request rate through
 * @fastify/rate-limit (keyed by the authenticated tenant, counters shared across API processes via
 * Redis, fail open), and the per-tenant connection caps attached to the database layer. Registered
 * after the auth plugin and before the routes: the rate limit hook runs once the tenant is known.
 */
import fp from 'fastify-plugin';
import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { RATE_WINDOW_MS, rateLimited, type LimitsService } from '../services/limits/index.js';

declare module 'fastify' {
  interface FastifyInstance {
    limits: LimitsService;
  }
}

/** Requests counted against a tenant: authenticated ones naming a tenant (not a tenantless platform_admin). */
const tenantOf = (request: FastifyRequest): string | null => (request.ctx as FastifyRequest['ctx'] | null)?.tenantId ?? null;

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
    await app.register(rateLimit, {
      global: true,
      hook: 'onRequest',
      timeWindow: RATE_WINDOW_MS,
      store: limits.rateStore(opts.redis),
      allowList: (request) => tenantOf(request) === null,
      keyGenerator: (request) => tenantOf(request) ?? '',
      max: async (request) => (await limits.forTenant(tenantOf(request) ?? '')).requests_per_second,
      // the store never fails (it counts locally when Redis does); should it throw, let the request through
      skipOnError: true,
      errorResponseBuilder: (_request, ctx) => rateLimited(ctx.max, Math.max(1, Math.ceil(ctx.ttl / 1000))),
    });
  },
  { name: 'strata-limits', dependencies: ['strata-auth'] },
);
