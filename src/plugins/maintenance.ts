/**
 * Maintenance mode in the API: while an in-place restore runs (a flag in Redis, see
 * src/services/backups/maintenance.ts), write routes answer 503 MAINTENANCE_IN_PROGRESS with
 * Retry-After. Reads, job routes and the backup/restore routes stay open; GraphQL is blocked only for
 * mutations. When Redis cannot be read the flag is taken as absent (writes are not stopped by a Redis
 * outage; an in-place restore needs Redis to start at all).
 */
import fp from 'fastify-plugin';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { unavailable } from '../errors.js';
import { maintenanceReader } from '../services/backups/index.js';
import { databaseOf } from '../services/backups/index.js';

const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
// Reads sent as POST (raw SQL, search, exports) stay open; GraphQL is checked per operation below.
const OPEN_PREFIXES = ['/v1/admin/backups', '/v1/admin/restores', '/v1/jobs', '/v1/sql', '/v1/search', '/v1/exports', '/admin/queues', '/graphql'];

export default fp(
  async function maintenancePlugin(app: FastifyInstance) {
    const current = maintenanceReader(app.redis, databaseOf(app.db.adminUrl));
    const check = async (request: FastifyRequest) => {
      const state = await current().catch(() => null);
      if (!state) return;
      request.log.info({ since: state.since, job: state.job_id }, 'write refused: maintenance in progress');
      throw unavailable('MAINTENANCE_IN_PROGRESS', `the service is in maintenance (${state.reason}, since ${state.since}); writes are refused until it ends`, 30);
    };
    const guard = async (request: FastifyRequest) => {
      const url = request.url.split('?')[0] ?? '';
      if (url === '/graphql') {
        const query = (request.body as { query?: unknown } | undefined)?.query;
        if (typeof query === 'string' && /\bmutation\b/.test(query)) await check(request);
        return;
      }
      if (OPEN_PREFIXES.some((p) => url === p || url.startsWith(`${p}/`))) return;
      await check(request);
    };
    // callback style: reads pass without a promise
    app.addHook('preHandler', (request, _reply, done) => {
      if (!WRITE_METHODS.has(request.method)) return done();
      guard(request).then(() => done(), done);
    });
  },
  { name: 'strata-maintenance' },
);
