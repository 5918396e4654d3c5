/**
 * `Idempotency-Key` on writes (POST, PUT, PATCH, DELETE, including GraphQL mutations on /graphql),
 * after authentication and the maintenance check. See src/services/idempotency/ and
 * docs/reliability.md.
 *
 * - first use: the request runs; its answer (status, body, content-type/location/etag) is stored
 *   before it is sent, unless it is a 5xx or the write was dropped (499): then the key is released
 *   and a retry runs afresh;
 * - same key, same request: the stored answer, with `Idempotent-Replayed: true`;
 * - same key, other request: 422 IDEMPOTENCY_KEY_REUSED; still running: 409 IDEMPOTENCY_KEY_IN_USE.
 */
import fp from 'fastify-plugin';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { AppError, badRequest } from '../errors.js';
import { createIdempotencyStore, IDEMPOTENCY_KEY, requestFingerprint } from '../services/idempotency/index.js';

const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

const asArray = <T>(h: T | T[] | undefined): T[] => (h === undefined ? [] : Array.isArray(h) ? h : [h]);
const KEPT_HEADERS = ['content-type', 'location', 'etag', 'preference-applied'];

declare module 'fastify' {
  interface FastifyRequest {
    idempotency: { tenant: string; key: string } | null;
  }
}

export default fp(
  async function idempotencyPlugin(app: FastifyInstance) {
    const store = createIdempotencyStore({
      db: app.db,
      ttlS: app.config.IDEMPOTENCY_TTL_S,
      // a record left `running` by a process that died is taken over after the longest a write may run
      abandonAfterMs: Math.max(60_000, app.config.DB_STATEMENT_TIMEOUT_MS * 2),
    });
    app.decorateRequest('idempotency', null);

    const preHandler = async (request: FastifyRequest, reply: FastifyReply) => {
      if (!WRITE_METHODS.has(request.method)) return;
      const key = request.headers['idempotency-key'];
      if (key === undefined || !request.ctx) return;
      if (typeof key !== 'string' || !IDEMPOTENCY_KEY.test(key)) {
        throw badRequest('BAD_IDEMPOTENCY_KEY', 'Idempotency-Key must be 1 to 255 visible ASCII characters (e.g. a UUID)');
      }
      // a sandbox's keys are its own: the same key on the real tenant and on a sandbox are two requests
      const tenant = (request.ctx.tenantId ?? '') + (request.ctx.sandbox ? `@sandbox:${request.ctx.sandbox.id}` : '');
      const found = await store.begin(tenant, key, requestFingerprint(request.method, request.url, request.body));
      switch (found.kind) {
        case 'new':
          request.idempotency = { tenant, key };
          return;
        case 'mismatch':
          throw new AppError(422, 'IDEMPOTENCY_KEY_REUSED', `Idempotency-Key ${key} was used with a different request (method, path or body); use a new key`);
        case 'in_progress':
          throw new AppError(409, 'IDEMPOTENCY_KEY_IN_USE', `a request with Idempotency-Key ${key} is still running; retry when it has answered`, undefined, {
            headers: { 'retry-after': '1' },
          });
        case 'replay':
          request.log.info({ key, status: found.status }, 'idempotent replay of a stored answer');
          return reply.code(found.status).headers(found.headers).header('idempotent-replayed', 'true').send(found.body);
      }
    };

    const onSend = async (request: FastifyRequest, reply: FastifyReply, payload: unknown) => {
      const claim = request.idempotency;
      if (!claim) return payload;
      request.idempotency = null;
      const status = reply.statusCode;
      try {
        if (status >= 500 || status === 499 || (typeof payload !== 'string' && !Buffer.isBuffer(payload))) {
          await store.release(claim.tenant, claim.key);
        } else {
          const headers: Record<string, string> = {};
          for (const h of KEPT_HEADERS) {
            const v = reply.getHeader(h);
            if (v !== undefined) headers[h] = String(v);
          }
          await store.finish(claim.tenant, claim.key, status, headers, typeof payload === 'string' ? payload : payload.toString('utf8'));
        }
      } catch (err) {
        request.log.warn({ err, key: claim.key }, 'could not store the answer of an idempotent request');
      }
      return payload;
    };

    // Only routes that take writes carry the hooks: a read pays nothing for idempotency.
    app.addHook('onRoute', (route) => {
      const methods = Array.isArray(route.method) ? route.method : [route.method];
      if (!methods.some((m) => WRITE_METHODS.has(m))) return;
      route.preHandler = [preHandler, ...asArray(route.preHandler)];
      route.onSend = [...asArray(route.onSend), onSend];
    });
  },
  { name: 'strata-idempotency', dependencies: ['strata-maintenance'] },
);
