/**
 * The worker runtime: one BullMQ Worker per queue, each dispatching on the job name to a thin
 * processor in src/jobs/processors/. Used by src/worker.ts and, when RUN_WORKERS is on, by the API
 * process itself.
 *
 * Workers own their Redis connections (`maxRetriesPerRequest: null`, as BullMQ requires) and resume
 * by themselves when Redis returns. A job whose worker dies stays active until BullMQ's stalled
 * check moves it back to wait, and another worker runs it again (up to `attempts`).
 */
import { Worker, UnrecoverableError, type Job, type WorkerOptions } from 'bullmq';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Database } from '../db/database.js';
import { createKysely } from '../db/kysely.js';
import { createApiKeyService, type ApiKeyService } from '../services/identity/index.js';
import { CANCELLED_REASON, QUEUE_NAMES, cancelKey, type JobData, type JobName, type QueueName } from './queues.js';
import { redisOptions } from '../redis.js';
import { expireApiKeys } from './processors/expire-api-keys.js';
import { sleepJob } from './processors/sleep.js';
import { backupJob, backupVerifyJob, restoreJob } from './processors/backups.js';
import { createBackupServices, type BackupServices } from '../services/backups/index.js';
import { refreshView } from './processors/refresh-view.js';
import { exportJob } from './processors/export.js';
import { createExportService, type ExportService } from '../services/exports/index.js';
import { createRegistryService } from '../services/data/index.js';
import { deliverWebhook, replayWebhook } from './processors/webhooks.js';
import { maintainChanges } from './processors/maintain-changes.js';
import { createChangeFeed, type ChangeFeed } from '../services/changes/index.js';
import { createWebhookDelivery, type WebhookDeliveryService } from '../services/changes/index.js';
import { startWebhookDispatcher, type WebhookDispatcher } from './webhook-dispatcher.js';
import { searchIndexCreate, searchIndexDrop } from './processors/search-index.js';
import { clusterRebalance, tenantIsolate, tenantMove } from './processors/cluster.js';
import { createClusterService, type ClusterService } from '../services/cluster/index.js';

/** What processors may call: the same services the routes use. Later capabilities add theirs. */
export interface ProcessorServices extends BackupServices {
  apiKeys: ApiKeyService;
  exports: ExportService;
  webhookDelivery: WebhookDeliveryService;
  cluster: ClusterService;
}

export interface ProcessorContext<N extends JobName = JobName> {
  job: Job<JobData<N>, unknown, N>;
  /** Aborted when the job is cancelled (DELETE /v1/jobs/{id}); stop work and return or throw. */
  signal: AbortSignal;
  log: Logger;
  db: Database;
  services: ProcessorServices;
  /** Report progress as `{ done, total, percent }` (total null when unknown). */
  progress(done: number, total: number | null): Promise<void>;
  /** Whether cancellation was requested (the signal follows it within a poll interval). */
  isCancelled(): Promise<boolean>;
  /** The worker's lock token of the job (for job.moveToDelayed). */
  token: string | undefined;
}

export type Processor<N extends JobName> = (ctx: ProcessorContext<N>) => Promise<unknown>;

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
  'search-index-create': searchIndexCreate,
  'search-index-drop': searchIndexDrop,
  'tenant-move': tenantMove,
  'tenant-isolate': tenantIsolate,
  'cluster-rebalance': clusterRebalance,
};

export function createProcessorServices(db: Database, log: Logger, feed: ChangeFeed): ProcessorServices {
  const c = db.config;
  return {
    apiKeys: createApiKeyService({ kysely: createKysely(db.admin) }),
    cluster: createClusterService({ db }),
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
    ? startWebhookDispatcher({ redisUrl: opts.redisUrl, prefix, feed, delivery: services.webhookDelivery, log })
    : undefined;
  // Fail-fast connection for cancellation flags: a poll during an outage is just skipped.
  const flags = new Redis(opts.redisUrl, redisOptions({ lazyConnect: false }));
  flags.on('error', () => undefined);
  const isCancelled = async (id: string) => (await flags.exists(cancelKey(prefix, id))) === 1;
  const active = new Map<string, Worker>();
  const cancelled = new Set<string>();

  async function run(worker: Worker, job: Job<JobData>, token: string | undefined, signal: AbortSignal | undefined): Promise<unknown> {
    const id = job.id ?? '';
    const name = job.name as JobName;
    const processor = PROCESSORS[name] as Processor<JobName> | undefined;
    if (!processor) throw new UnrecoverableError(`no processor for job ${job.name}`);
    const jobLog = log.child({ job: id, name, tenant: job.data.tenantId, actor: job.data.actor, requestId: job.data.requestId });
    active.set(id, worker);
    try {
      if (await isCancelled(id).catch(() => false)) throw new UnrecoverableError(CANCELLED_REASON);
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
    }
  }

  const workers = queueNames.map((queue) => {
    const worker: Worker = new Worker(queue, (job: Job<JobData>, token?: string, signal?: AbortSignal) => run(worker, job, token, signal), {
      connection: { url: opts.redisUrl, maxRetriesPerRequest: null },
      prefix,
      concurrency: opts.concurrency ?? 4,
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
