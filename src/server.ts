/**
 * The only file that listens. Boots the runtime, builds the app, starts in-process workers on the
 * embedded default, and shuts down gracefully on SIGTERM/SIGINT (requests, jobs, then the pools).
 */
import { ConfigError, loadConfig } from './config.js';
import { startTelemetry } from './telemetry.js';

async function main(): Promise<void> {
  const config = loadConfig();
  const telemetry = await startTelemetry(config);
  // Loaded after telemetry starts, so the pg, ioredis and http instrumentations can patch them.
  const [{ build, createLogger }, { createRuntime }, { createJobs }, { startWorkers }, { registerSchedules }, { installLastResort }] = await Promise.all([
    import('./app.js'),
    import('./runtime.js'),
    import('./jobs/queues.js'),
    import('./jobs/runtime.js'),
    import('./jobs/schedules.js'),
    import('./last-resort.js'),
  ]);
  const log = await createLogger(config);
  const runtime = await createRuntime(config, log);
  const jobs = createJobs({ redisUrl: config.REDIS_URL, log });
  const app = await build({
    jobs,
    config,
    db: runtime.db,
    redis: runtime.redis.client,
    migrator: runtime.migrator,
    registry: runtime.registry,
    jwtSecret: runtime.jwtSecret,
    loggerInstance: log,
  });
  const closeHooks: Array<() => Promise<void>> = [];
  if (config.runWorkers) {
    // Embedded default (or RUN_WORKERS=true): the API process also runs the jobs.
    const workers = startWorkers({
      redisUrl: config.REDIS_URL,
      log,
      db: runtime.db,
      concurrency: config.WORKER_CONCURRENCY,
      // a Redis that comes back empty (restarted, failed over) gets its schedules again
      onReconnect: () => registerSchedules(jobs, config, log),
    });
    await registerSchedules(jobs, config, log);
    closeHooks.push(() => workers.close({ timeoutMs: 20_000 }));
    log.info({ concurrency: config.WORKER_CONCURRENCY }, 'in-process job workers running');
  }
  closeHooks.push(() => jobs.close());
  let closing = false;
  const shutdown = async (signal: string, exitCode = 0) => {
    if (closing) return;
    closing = true;
    log.info({ signal }, 'shutting down: draining requests, jobs and the pool');
    const force = setTimeout(() => process.exit(1), 30_000);
    force.unref();
    try {
      await app.close();
      for (const hook of closeHooks) await hook();
      await runtime.stop();
      await telemetry?.shutdown();
    } finally {
      process.exit(exitCode);
    }
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  // What nothing caught: rejections are logged and served on, exceptions drain and exit (src/last-resort.ts).
  installLastResort({ log, registry: app.metricsRegistry, drainAndExit: (reason, code) => void shutdown(reason, code) });
  await app.listen({ port: config.PORT, host: config.HOST });
  log.info({ port: config.PORT, embedded: config.embedded }, `Strata listening on http://${config.HOST}:${config.PORT} (docs at /docs)`);
}

main().catch((err: unknown) => {
  if (err instanceof ConfigError || (err instanceof Error && err.name === 'BootError')) {
    process.stderr.write(`strata: ${err.message}\n`);
  } else {
    process.stderr.write(`strata: failed to start: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  }
  process.exit(1);
});
