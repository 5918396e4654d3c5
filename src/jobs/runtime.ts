/**
 * The worker runtime: one BullMQ Worker per queue, each dispatching on the job name to a thin
 * processor in src/jobs/processors/. Used by src/worker.ts and, when RUN_WORKERS is on, by the API
 * process itself.
 *
 * Workers own their Redis connections (`maxRetriesPerRequest: null`, as BullMQ requires) and resume
 * by themselves when Redis returns: the reconnect backoff is capped at REDIS_RECONNECT_MAX_MS and
 * BullMQ's retry delay after a failed fetch (`runRetryDelay`, 15 s by default) is the same, so jobs
 * resume within about that long after Redis answers again. On every reconnect `onReconnect` runs
 * (the processes pass schedule registration: a Redis that came back empty gets its schedules back).
 *
 * A job whose worker dies keeps its lock for at most JOB_LOCK_DURATION_MS; the stalled check (every
 * JOB_STALLED_INTERVAL_MS) then moves it back to wait and another worker runs it: taken over within
 * lock + interval (15 s by default). `maxStalledCount` equals the default `attempts`, so a job whose
 * worker dies twice still runs a third time instead of failing as "stalled more than allowable limit".
 */
import { DelayedError, Worker, UnrecoverableError, type Job, type WorkerOptions } from 'bullmq';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Database } from '../db/database.js';
import { createKysely } from '../db/kysely.js';
import { createApiKeyService } from '../services/identity/index.js';
import { CANCELLED_REASON, DEFAULT_JOB_OPTIONS, QUEUE_NAMES, cancelKey, type JobData, type JobName, type QueueName } from './queues.js';
import type { Processor, ProcessorServices } from './processor.js';
import { bullmqConnection, redisBoundsOf, redisOptions } from '../redis.js';
import { expireApiKeys } from './processors/expire-api-keys.js';
import { sleepJob } from './processors/sleep.js';
import { backupJob, backupVerifyJob, restoreJob } from './processors/backups.js';
import { createBackupServices } from '../services/backups/index.js';
import { refreshView } from './processors/refresh-view.js';
import { exportJob } from './processors/export.js';
import { createExportService } from '../services/exports/index.js';
import { createRegistryService } from '../services/data/index.js';
import { deliverWebhook, replayWebhook } from './processors/webhooks.js';
import { maintainChanges } from './processors/maintain-changes.js';
import { sweepTemporariesJob } from './processors/sweep-temporaries.js';
import { createChangeFeed, type ChangeFeed } from '../services/changes/index.js';
import { createWebhookDelivery } from '../services/changes/index.js';
import { startWebhookDispatcher, type WebhookDispatcher } from './webhook-dispatcher.js';
import { searchIndexCreate, searchIndexDrop } from './processors/search-index.js';
import { createLimits, type JobSlot } from '../services/limits/index.js';

/** Jobs that are a long-lived loop rather than a unit of work: not counted against LIMIT_JOBS. */
const UNLIMITED_JOBS: ReadonlySet<JobName> = new Set(['deliver-webhook']);
/** How long a job over its tenant's limit waits (delayed) before it is tried again, plus jitter. */
const LIMIT_DELAY_MS = 1_000;
import { clusterRebalance, tenantIsolate, tenantMove } from './processors/cluster.js';
import { createClusterService } from '../services/cluster/index.js';
import { complianceAnonymize, complianceConvert, complianceRotate, complianceScan } from './processors/compliance.js';
import { createComplianceOps, createTenantKeys, parseMasterKeys } from '../services/compliance/index.js';
import { sandboxCreate } from './processors/sandboxes.js';
import { createPartitionService } from '../services/partitions/index.js';
import { maintainPartitions } from './processors/maintain-partitions.js';

export type { Processor, ProcessorContext, ProcessorServices } from './processor.js';

/** Every job name has a processor: the compiler checks the map is complete. */
export const PROCESSORS: { [N in JobName]: Processor<N> } = {
  'expire-api-keys': expireApiKeys,
  sleep: sleepJob,
  backup: backupJob,
  'backup-verify': backupVerifyJob,
  restore: restoreJob,
  'refresh-view': refreshView,
  export: exportJob,
  'deliver-webhook': deliverWebhook,
  'replay-webhook': replayWebhook,
  'maintain-changes': maintainChanges,
  'sweep-temporaries': sweepTemporariesJob,
  'search-index-create': searchIndexCreate,
  'search-index-drop': searchIndexDrop,
  'tenant-move': tenantMove,
  'tenant-isolate': tenantIsolate,
  'cluster-rebalance': clusterRebalance,
  'compliance-scan': complianceScan,
  'compliance-anonymize': complianceAnonymize,
  'compliance-rotate': complianceRotate,
  'compliance-convert': complianceConvert,
  'sandbox-create': sandboxCreate,
  'maintain-partitions': maintainPartitions,
};

export function createProcessorServices(db: Database, log: Logger, feed: ChangeFeed): ProcessorServices {
  const c = db.config;
  const masterKeys = parseMasterKeys(c.ENCRYPTION_MASTER_KEYS);
  const schema = createRegistryService({ db });
  return {
    complianceOps: createComplianceOps({ db, schema, keys: createTenantKeys({ db, keys: masterKeys }), masterKeys }),
    apiKeys: createApiKeyService({ kysely: createKysely(db.admin) }),
    cluster: createClusterService({ db }),
    partitions: createPartitionService({ db }),
    ...createBackupServices(db, log),
    exports: createExportService({ db, schema: createRegistryService({ db }), config: db.config, log }),
    webhookDelivery: createWebhookDelivery({
      db,
      log,
      feed,
      settings: {
        maxAttempts: c.WEBHOOK_MAX_ATTEMPTS,
        backoffBaseMs: c.WEBHOOK_BACKOFF_BASE_MS,
        backoffMaxMs: c.WEBHOOK_BACKOFF_MAX_MS,
        timeoutMs: c.WEBHOOK_TIMEOUT_MS,
        leaseMs: c.WEBHOOK_LEASE_MS,
        allowPrivate: c.WEBHOOK_ALLOW_PRIVATE,
        lingerMs: Math.min(2_000, c.WEBHOOK_LEASE_MS / 4),
        pollMs: c.CHANGES_POLL_MS,
        concurrency: c.WEBHOOK_CONCURRENCY,
        batchSize: c.WEBHOOK_BATCH_SIZE,
        tenantSlots: c.WEBHOOK_TENANT_SLOTS,
        tenantFailingSlots: Math.min(c.WEBHOOK_TENANT_FAILING_SLOTS, c.WEBHOOK_TENANT_SLOTS),
        breakerThreshold: c.WEBHOOK_BREAKER_THRESHOLD,
        breakerCooldownMs: c.WEBHOOK_BREAKER_COOLDOWN_MS,
      },
    }),
  };
}

export interface WorkerRuntimeOptions {
  redisUrl: string;
  /** BullMQ key prefix; the same as the JobsService's. */
  prefix?: string;
  log: Logger;
  db: Database;
  services?: ProcessorServices;
  /** Jobs processed at once per queue (WORKER_CONCURRENCY). */
  concurrency?: number;
  queues?: readonly QueueName[];
  /** Extra BullMQ worker options (tests shorten stalledInterval/lockDuration). */
  workerOptions?: Partial<Pick<WorkerOptions, 'stalledInterval' | 'lockDuration' | 'maxStalledCount' | 'drainDelay'>>;
  /** How often active jobs' cancellation flags are checked. */
  cancelPollMs?: number;
  /**
   * Run after every reconnect to Redis (not at the first connect): the processes register the
   * schedules again, so a Redis restarted empty gets them back. Retried until it succeeds.
   */
  onReconnect?: () => Promise<void>;
}

export interface WorkerRuntime {
  readonly workers: readonly Worker[];
  /** The webhook dispatcher, when queue `webhooks` is served. */
  readonly dispatcher: WebhookDispatcher | undefined;
  /** Stop taking jobs and wait for active ones (up to timeoutMs; then they are left to the stalled check). */
  close(opts?: { timeoutMs?: number }): Promise<void>;
}

const percentOf = (done: number, total: number | null) =>
  total === null ? null : total <= 0 ? 100 : Math.min(100, Math.round((done / total) * 100));

/** Start a worker for every queue (or `opts.queues`). */
export function startWorkers(opts: WorkerRuntimeOptions): WorkerRuntime {
  const prefix = opts.prefix ?? 'strata';
  const { log, db } = opts;
  const feed = createChangeFeed({ connectionString: db.admin.options.connectionString, log, pollMs: db.config.CHANGES_POLL_MS });
  const services = opts.services ?? createProcessorServices(db, log, feed);
  const queueNames = opts.queues ?? QUEUE_NAMES;
  const dispatcher = queueNames.includes('webhooks')
    ? startWebhookDispatcher({ redisUrl: opts.redisUrl, prefix, feed, delivery: services.webhookDelivery, log, bounds: redisBoundsOf(db.config) })
    : undefined;
  // Fail-fast connection for cancellation flags: a poll during an outage is just skipped.
  const bounds = redisBoundsOf(db.config);
  const flags = new Redis(opts.redisUrl, redisOptions({ lazyConnect: false }, bounds));
  flags.on('error', () => undefined);
  let everReady = false;
  let closing = false;
  flags.on('ready', () => {
    if (!everReady) {
      everReady = true;
      return;
    }
    log.info('redis connection back: workers resume');
    if (opts.onReconnect) void retryUntilDone(opts.onReconnect);
  });
  async function retryUntilDone(fn: () => Promise<void>): Promise<void> {
    for (let i = 0; i < 60 && !closing; i++) {
      try {
        await fn();
        return;
      } catch (err) {
        if (i === 0) log.warn({ err: { message: (err as Error).message } }, 'after a reconnect: registering the schedules failed; retrying');
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }
  const isCancelled = async (id: string) => (await flags.exists(cancelKey(prefix, id))) === 1;
  // Fair shares: at most LIMIT_JOBS (or the tenant's `jobs` limit) of one tenant's jobs run at once
  // across all workers; a job over it goes back to delayed, not failed.
  const limits = db.config.LIMITS_ENABLED ? createLimits({ db, config: db.config, log }) : undefined;
  const slots = limits?.jobSlots(flags, `${prefix}:limits`);
  async function takeSlot(job: Job<JobData>, token: string | undefined): Promise<JobSlot | undefined> {
    const tenantId = job.data.tenantId;
    if (!limits || !slots || tenantId === null || UNLIMITED_JOBS.has(job.name as JobName)) return undefined;
    const limit = (await limits.forTenant(tenantId)).jobs;
    let slot: JobSlot | undefined;
    try {
      slot = await slots.take(tenantId, job.id ?? '', limit);
    } catch (err) {
      log.warn({ err, job: job.id }, 'job slots unavailable (Redis); running the job without its tenant limit');
      return undefined;
    }
    if (slot) return slot;
    log.info({ job: job.id, tenant: tenantId, limit }, 'tenant at its job limit; job delayed');
    await job.moveToDelayed(Date.now() + LIMIT_DELAY_MS + Math.floor(Math.random() * 500), token);
    throw new DelayedError();
  }
  const active = new Map<string, Worker>();
  const cancelled = new Set<string>();

  async function run(worker: Worker, job: Job<JobData>, token: string | undefined, signal: AbortSignal | undefined): Promise<unknown> {
    const id = job.id ?? '';
    const name = job.name as JobName;
    const processor = PROCESSORS[name] as Processor<JobName> | undefined;
    if (!processor) throw new UnrecoverableError(`no processor for job ${job.name}`);
    const jobLog = log.child({ job: id, name, tenant: job.data.tenantId, actor: job.data.actor, requestId: job.data.requestId });
    active.set(id, worker);
    let slot: JobSlot | undefined;
    try {
      if (await isCancelled(id).catch(() => false)) throw new UnrecoverableError(CANCELLED_REASON);
      slot = await takeSlot(job, token);
      const result = await processor({
        job: job as Job<JobData, unknown, JobName>,
        signal: signal ?? new AbortController().signal,
        log: jobLog,
        db,
        services,
        progress: (done, total) => job.updateProgress({ done, total, percent: percentOf(done, total) }),
        isCancelled: () => isCancelled(id),
        token,
      });
      if (cancelled.has(id)) throw new UnrecoverableError(CANCELLED_REASON);
      return result;
    } catch (err) {
      if (cancelled.has(id) && !(err instanceof UnrecoverableError)) throw new UnrecoverableError(CANCELLED_REASON);
      throw err;
    } finally {
      active.delete(id);
      cancelled.delete(id);
      await slot?.release();
    }
  }

  const workers = queueNames.map((queue) => {
    const worker: Worker = new Worker(queue, (job: Job<JobData>, token?: string, signal?: AbortSignal) => run(worker, job, token, signal), {
      connection: bullmqConnection(opts.redisUrl, bounds),
      prefix,
      // delivery loops wait on the network, not the CPU: the webhooks queue gets more slots
      concurrency: queue === 'webhooks' ? Math.max(opts.concurrency ?? 4, db.config.WEBHOOK_WORKER_CONCURRENCY) : (opts.concurrency ?? 4),
      lockDuration: db.config.JOB_LOCK_DURATION_MS,
      stalledInterval: db.config.JOB_STALLED_INTERVAL_MS,
      maxStalledCount: DEFAULT_JOB_OPTIONS.attempts ?? 3,
      runRetryDelay: bounds.reconnectMaxMs,
      ...opts.workerOptions,
    });
    let lastErrorLog = 0;
    worker.on('error', (err) => {
      if (Date.now() - lastErrorLog < 10_000) return;
      lastErrorLog = Date.now();
      log.warn({ err: { message: err.message }, queue }, 'worker error (retrying)');
    });
    worker.on('failed', (job, err) => {
      if (err.message === CANCELLED_REASON && err instanceof UnrecoverableError) log.info({ job: job?.id, queue }, 'job cancelled');
      else log.warn({ job: job?.id, queue, err: { message: err.message }, attempts: job?.attemptsMade }, 'job failed');
    });
    worker.on('completed', (job) => log.info({ job: job.id, queue }, 'job completed'));
    return worker;
  });

  // Turn cancellation flags of active jobs into their AbortSignals.
  let polling = false;
  const poller = setInterval(() => {
    if (polling || active.size === 0 || flags.status !== 'ready') return;
    polling = true;
    const ids = [...active.keys()];
    flags
      .mget(ids.map((id) => cancelKey(prefix, id)))
      .then((values) =>
        ids.forEach((id, i) => {
          if (values[i] === null || values[i] === undefined || cancelled.has(id)) return;
          cancelled.add(id);
          active.get(id)?.cancelJob(id, CANCELLED_REASON);
        }),
      )
      .catch(() => undefined)
      .finally(() => {
        polling = false;
      });
  }, opts.cancelPollMs ?? 250);
  poller.unref();

  log.info({ queues: workers.map((w) => w.name), prefix }, 'workers started');
  return {
    workers,
    dispatcher,
    async close({ timeoutMs = 30_000 } = {}) {
      closing = true;
      clearInterval(poller);
      let timer: NodeJS.Timeout | undefined;
      const graceful = Promise.all(workers.map((w) => w.close())).then(() => true);
      const timedOut = new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), timeoutMs);
      });
      const done = await Promise.race([graceful, timedOut]);
      clearTimeout(timer);
      if (!done) {
        // Stop waiting; the jobs' locks lapse and the stalled check hands them to another worker.
        log.warn({ timeoutMs, active: active.size }, 'active jobs did not finish in time; leaving them to be retried as stalled');
        graceful.catch(() => undefined);
      }
      await dispatcher?.close();
      await feed.close();
      await flags.quit().catch(() => flags.disconnect());
    },
  };
}
