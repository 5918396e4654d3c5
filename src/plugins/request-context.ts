/**
 * Per request: `X-Request-Id` (taken from the caller when well-formed, else generated) on every
 * response, and `Server-Timing` on every response: `db` (database time and query count of the
 * tenant statements this request ran), `app` (the rest) and `total`.
 */
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';
import type { QueryStats } from '../db/session.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Query accounting of this request; the auth hook hands it to the tenant session context. */
    queryStats: QueryStats;
    /** performance.now() when the request arrived. */
    startedAt: number;
  }
}

/** The longest a response waits for its slow-query log entries to be stored. */
const SLOW_LOG_WAIT_MS = 250;

/** The Server-Timing value for `stats` after `totalMs` of wall time. */
export function serverTiming(stats: QueryStats, totalMs: number): string {
  const app = Math.max(0, totalMs - stats.ms);
  return `db;dur=${stats.ms.toFixed(1)};desc="${stats.count} queries", app;dur=${app.toFixed(1)}, total;dur=${totalMs.toFixed(1)}`;
}

export default fp(
  async function requestContextPlugin(app: FastifyInstance) {
    app.decorateRequest('queryStats', null as unknown as QueryStats);
    app.decorateRequest('startedAt', 0);
    // callback style: no promise per request on this path
    app.addHook('onRequest', (request, _reply, done) => {
      request.startedAt = performance.now();
      request.queryStats = { count: 0, ms: 0, route: request.routeOptions.url ?? 'unmatched' };
      done();
    });
    // callback style too: only a request with slow-query log writes in flight waits for anything
    app.addHook('onSend', (request, reply, payload, done) => {
      void reply.header('x-request-id', request.id);
      const stats = request.queryStats;
      if (!stats) return done(null, payload);
      const finish = () => {
        void reply.header('server-timing', serverTiming(stats, performance.now() - request.startedAt));
        done(null, payload);
      };
      if (!stats.pending) return finish();
      // slow-query log entries of this request are in the store before the caller hears back
      // (bounded: a Redis that hangs must not hold the response)
      void Promise.race([Promise.allSettled(stats.pending), new Promise((r) => setTimeout(r, SLOW_LOG_WAIT_MS).unref())]).then(finish);
    });
  },
  { name: 'strata-request-context' },
);
