/**
 * Per request: `X-Request-Id` (taken from the caller when well-formed, else generated) on every
 * response, and `Server-Timing` with the database time and query count.
 */
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';

export default fp(
  async function requestContextPlugin(app: FastifyInstance) {
    app.addHook('onSend', async (request, reply, payload) => {
      void reply.header('x-request-id', request.id);
      const stats = request.ctx?.stats;
      if (stats) {
        void reply.header('server-timing', `db;dur=${stats.ms.toFixed(1)};desc="${stats.count} queries"`);
      }
      return payload;
    });
  },
  { name: 'strata-request-context' },
);
