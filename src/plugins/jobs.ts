/**
 * The job system in the API: decorates `app.jobs` (a JobsService, created by the caller so server,
 * workers and tests share one; or created here from REDIS_URL and closed with the app), registers
 * the job routes, and serves bull-board at /admin/queues for platform admins only.
 */
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import { isAppError } from '../errors.js';
import { createJobs, type JobsService } from '../jobs/queues.js';
import jobRoutes, { maintenanceRoutes } from '../api/rest/jobs/index.js';

declare module 'fastify' {
  interface FastifyInstance {
    jobs: JobsService;
  }
}

export interface JobsPluginOptions {
  jobs?: JobsService;
  /** Serve bull-board at /admin/queues (default true). */
  board?: boolean;
}

const BOARD_PATH = '/admin/queues';

/** bull-board in its own scope: every request (page, assets, API) must come from a platform_admin. */
async function boardPlugin(app: FastifyInstance, opts: { jobs: JobsService }) {
  app.addHook('onRoute', (route) => {
    route.schema = { ...route.schema, hide: true };
  });
  app.addHook('onRequest', async (request, reply) => {
    // Answer here rather than throw: bull-board's own error handler would turn a 401 into a 500.
    try {
      const principal = await app.auth.authenticate(request.headers);
      if (principal.role === 'platform_admin') return;
      return await reply.code(403).send({ error: { code: 'ROLE_FORBIDDEN', message: 'bull-board is for platform_admin only' } });
    } catch (err) {
      if (!isAppError(err) || err.statusCode >= 500) throw err;
      return await reply.code(err.statusCode).send({ error: { code: err.code, message: err.message } });
    }
  });
  const serverAdapter = new FastifyAdapter();
  serverAdapter.setBasePath(BOARD_PATH);
  createBullBoard({
    queues: Object.values(opts.jobs.queues).map((q) => new BullMQAdapter(q)),
    // @bull-board/fastify pins a patch version of @bull-board/api of its own: same shape, other declaration.
    serverAdapter: serverAdapter as unknown as Parameters<typeof createBullBoard>[0]['serverAdapter'],
  });
  await app.register(serverAdapter.registerPlugin());
}

export default fp(
  async function jobsPlugin(app: FastifyInstance, opts: JobsPluginOptions) {
    let jobs = opts.jobs;
    if (!jobs) {
      const owned = createJobs({ redisUrl: app.config.REDIS_URL, log: app.log });
      app.addHook('onClose', () => owned.close());
      jobs = owned;
    }
    app.decorate('jobs', jobs);
    await app.register(jobRoutes, { prefix: '/v1/jobs' });
    await app.register(maintenanceRoutes, { prefix: '/v1/admin/maintenance' });
    if (opts.board !== false) await app.register(boardPlugin, { jobs, prefix: BOARD_PATH });
  },
  { name: 'strata-jobs', dependencies: ['strata-auth'] },
);
