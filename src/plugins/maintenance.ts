/**
 * Maintenance mode in the API: while an in-place restore runs (a flag in Redis, see
 * src/services/backups/maintenance.ts), write routes answer 503 MAINTENANCE_IN_PROGRESS with
 * Retry-After. Reads, job routes and the backup/restore routes stay open; GraphQL is blocked only for
 * mutations.
 *
 * Bounded: the flag is read with a wait of at most MAINTENANCE_CHECK_TIMEOUT_MS. When Redis cannot
 * answer in that time the last known value is used while younger than MAINTENANCE_STALE_MS, else the
 * flag is taken as absent (fail open: a hung or lost Redis must not hold or stop writes; an in-place
 * restore needs Redis to start at all). See docs/reliability.md.
 *
 * After the wait, a write whose client has gone away is dropped (499 CLIENT_CLOSED_REQUEST) before
 * any statement is sent; the database layer checks again after it waits for a connection.
 */
import fp from 'fastify-plugin';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { clientGone, unavailable } from '../errors.js';
import { maintenanceReader } from '../services/backups/index.js';
import { databaseOf } from '../services/backups/index.js';

const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
// Reads sent as POST (raw SQL, search, exports) stay open; GraphQL is checked per operation below.
const OPEN_PREFIXES = ['/v1/admin/backups', '/v1/admin/restores', '/v1/jobs', '/v1/sql', '/v1/search', '/v1/exports', '/admin/queues', '/graphql'];

/** The client of `request` has closed its connection: nobody waits for the answer. */
export const clientIsGone = (request: FastifyRequest) => request.raw.socket?.destroyed === true;

function clientGoneCheck(request: FastifyRequest): void {
  if (!clientIsGone(request)) return;
  request.log.info('write dropped: the client closed the connection before it was executed');
  throw clientGone();
}

export default fp(
  async function maintenancePlugin(app: FastifyInstance) {
    const current = maintenanceReader(app.redis, databaseOf(app.db.adminUrl), {
      timeoutMs: app.config.MAINTENANCE_CHECK_TIMEOUT_MS,
      staleMs: app.config.MAINTENANCE_STALE_MS,
    });
    const check = async (request: FastifyRequest) => {
      const state = await current();
      if (!state) return clientGoneCheck(request);
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
