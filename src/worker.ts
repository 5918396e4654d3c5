/**
 * The worker process (`node dist/worker.js`): the same code as the API, running the BullMQ workers
 * for every queue and registering the repeatable jobs. SIGTERM/SIGINT stop taking jobs and wait for
 * the active ones; a job still running when the grace period ends is left to BullMQ's stalled check,
 * which hands it to another worker.
 */
import type { FastifyBaseLogger } from 'fastify';
import { ConfigError, loadConfig, type Config } from './config.js';
import type { Runtime } from './runtime.js';
import { startTelemetry } from './telemetry.js';

/** Leaves room under a 30 s orchestrator grace period (Docker, Kubernetes) for closing the pools. */
const JOB_GRACE_MS = 25_000;

async function main(): Promise<void> {
  const config = loadConfig();
  if (config.embedded) {
    // Two processes cannot share the embedded PostgreSQL; the API runs the workers itself then.
    throw new ConfigError('DATABASE_URL', 'is required by the worker process (on the embedded default the API runs the workers itself)');
  }
  const telemetry = await startTelemetry(config);
  // Loaded after telemetry starts, so the pg and ioredis instrumentations can patch them.
  const [{ createLogger }, { createRuntime }, { createJobs }, { startWorkers }, { registerSchedules }, { installLastResort }] = await Promise.all([
    import('./logger.js'),
    import('./runtime.js'),
    import('./jobs/queues.js'),
    import('./jobs/runtime.js'),
    import('./jobs/schedules.js'),
    import('./last-resort.js'),
  ]);
  const log = (await createLogger(config)).child({ process: 'worker' });
  const runtime = await createRuntime(config, log, { role: 'worker' });
  // jobs' slow statements go to the same slow-query log as the API's (a shared Redis stream)
  const { createInsightObserver } = await import('./services/query-insight/index.js');
  runtime.db.observe(createInsightObserver({ db: runtime.db, redis: runtime.redis.client, config, log, registry: runtime.registry }).observer);
  const jobs = createJobs({ redisUrl: config.REDIS_URL, log });
  const workers = startWorkers({
    redisUrl: config.REDIS_URL,
    log,
    db: runtime.db,
    concurrency: config.WORKER_CONCURRENCY,
    // a Redis that comes back empty (restarted, failed over) gets its schedules again
    onReconnect: () => registerSchedules(jobs, config, log),
  });
  await registerSchedules(jobs, config, log);
  const health = config.WORKER_HEALTH_PORT > 0 ? await serveHealth(config, runtime, log) : undefined;

  let closing = false;
  const shutdown = async (signal: string, failed = false) => {
    if (closing) return;
    closing = true;
    log.info({ signal }, 'shutting down: waiting for active jobs');
    const force = setTimeout(() => process.exit(1), JOB_GRACE_MS + 5_000);
    force.unref();
    let code = failed ? 1 : 0;
    try {
      await health?.close();
      await workers.close({ timeoutMs: JOB_GRACE_MS });
      await jobs.close();
      await runtime.stop();
      await telemetry?.shutdown();
    } catch (err) {
      log.error({ err }, 'error while shutting down');
      code = 1;
    } finally {
      process.exit(code);
    }
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  // What nothing caught: rejections are logged and served on, exceptions drain and exit (src/last-resort.ts).
  installLastResort({ log, registry: runtime.registry, drainAndExit: (reason) => void shutdown(reason, true) });
  log.info({ concurrency: config.WORKER_CONCURRENCY }, 'Strata worker running');
}

/** /healthz, /readyz and /metrics for the worker process (every process has them). */
async function serveHealth(config: Config, runtime: Runtime, log: FastifyBaseLogger) {
  const { default: Fastify } = await import('fastify');
  const app = Fastify({ loggerInstance: log });
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    // bounded like the API's /readyz: a hung dependency answers 503 within READYZ_TIMEOUT_MS
    const within = <T>(p: Promise<T>) =>
      Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('timeout')), config.READYZ_TIMEOUT_MS).unref())]);
    const [database, redis] = await Promise.all([
      within(runtime.db.adminQuery('SELECT 1')).then(() => true, () => false),
      within(runtime.redis.client.ping()).then((p) => p === 'PONG', () => false),
    ]);
    return reply.code(database && redis ? 200 : 503).send({ status: database && redis ? 'ready' : 'not_ready', checks: { database: { ok: database }, redis: { ok: redis } } });
  });
  app.get('/metrics', async (_req, reply) => reply.type(runtime.registry.contentType).send(await runtime.registry.metrics()));
  await app.listen({ port: config.WORKER_HEALTH_PORT, host: config.HOST });
  return app;
}

main().catch((err: unknown) => {
  if (err instanceof ConfigError || (err instanceof Error && err.name === 'BootError')) {
    process.stderr.write(`strata worker: ${err.message}\n`);
  } else {
    process.stderr.write(`strata worker: failed to start: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  }
  process.exit(1);
});
