/**
 * The typed job map and the JobsService: enqueue a job for the caller's tenant, read it, follow it
 * (polled events) and cancel it. Job ids are `<queue>-<uuid>`, so an id alone names its queue.
 *
 * The API side uses one fail-fast Redis connection (no offline queue): while Redis is down every
 * call answers 503 JOBS_UNAVAILABLE at once instead of hanging, and nothing is enqueued later behind
 * the caller's back. Workers use their own connections (src/jobs/runtime.ts).
 *
 * Cancellation: a waiting or delayed job is removed and remembered as cancelled; an active job gets
 * a flag (Redis key) that the runtime polls and turns into the processor's AbortSignal.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue, type Job, type JobsOptions } from 'bullmq';
import { Redis } from 'ioredis';
import type { BaseLogger } from 'pino';
import type { RequestContext } from '../domain.js';
import { AppError, conflict, notFound, unavailable } from '../errors.js';
import { redisOptions } from '../redis.js';
import type { ExportJobInput } from './processors/export.js';

/** Input of each job. Later capabilities (exports, backups) add their jobs here and in JOB_QUEUES. */
export interface JobInputs {
  /** Revoke every API key past its expiry (scheduled; platform). */
  'expire-api-keys': Record<never, never>;
  /** Test and template job: sleeps `ms` in `steps`, reporting progress, honouring cancellation. */
  sleep: { ms: number; steps: number };
  /** Take a backup (SPEC 8), then apply the retention policy. */
  backup: { kind: 'full' | 'incremental'; trigger?: string };
  /** Verify a backup: checksum, real restore into a scratch database, row counts. */
  'backup-verify': { backup_id: string };
  /** Restore a backup or an instant into a new database or in place. */
  restore: { backup_id?: string; until?: string; target: 'new_database' | 'in_place'; database?: string };
  /** Refresh a materialized view (platform; src/services/view-refresh.ts). */
  'refresh-view': { view: string; reason: 'manual' | 'created' | 'cron' | 'writes' };
  /** Write a table query or analyst SQL to a file in the export store (POST /v1/exports). */
  export: ExportJobInput;
  /** The ordered delivery loop of one webhook (job id `webhooks-<webhook id>`). */
  'deliver-webhook': { webhookId: string };
  /** Re-deliver a webhook's events in (after, until]. */
  'replay-webhook': { webhookId: string; after: string; until?: string };
  /** Create change-log partitions ahead, drop those past retention (scheduled; platform). */
  'maintain-changes': Record<never, never>;
  /** Build the search index recorded for `table` in strata.search_indexes (SPEC 10). */
  'search-index-create': { table: string };
  /** Drop the search index of `table` and its definition. */
  'search-index-drop': { table: string };
}
export type JobName = keyof JobInputs;

/** The queue each job runs on. */
export const JOB_QUEUES = {
  'expire-api-keys': 'maintenance',
  sleep: 'noop',
  backup: 'backups',
  'backup-verify': 'backups',
  restore: 'backups',
  'refresh-view': 'views',
  export: 'exports',
  'deliver-webhook': 'webhooks',
  'replay-webhook': 'webhooks',
  'maintain-changes': 'maintenance',
  'search-index-create': 'search',
  'search-index-drop': 'search',
} as const satisfies Record<JobName, string>;
export type QueueName = (typeof JOB_QUEUES)[JobName];
export const QUEUE_NAMES: readonly QueueName[] = [...new Set(Object.values(JOB_QUEUES))];

/** Who asked for the job: carried in every job's data, set from the request context only. */
export interface JobEnvelope {
  tenantId: string | null;
  actor: string;
  requestId: string;
}
export type JobData<N extends JobName = JobName> = JobInputs[N] & JobEnvelope;

export type JobState = 'waiting' | 'delayed' | 'active' | 'completed' | 'failed' | 'cancelling' | 'cancelled' | 'unknown';
export const FINAL_STATES: ReadonlySet<JobState> = new Set(['completed', 'failed', 'cancelled']);

/** Progress as processors report it: `{ done, total, percent }` by convention, or a number. */
export type JobProgress = number | Record<string, unknown>;

export interface JobView {
  id: string;
  name: string;
  queue: string;
  state: JobState;
  progress: JobProgress;
  result: unknown;
  error: string | null;
  attempts: number;
  created_at: string;
  finished_at: string | null;
}

export type JobEvent =
  | { type: 'state'; state: JobState }
  | { type: 'progress'; progress: JobProgress }
  | { type: 'done' | 'failed' | 'cancelled'; job: JobView };

/** Retries with backoff (a killed worker's job is re-run as stalled); finished jobs kept a week. */
export const DEFAULT_JOB_OPTIONS: JobsOptions = {
  attempts: 3,
  backoff: { type: 'exponential', delay: 1000 },
  removeOnComplete: { age: 7 * 86_400, count: 10_000 },
  removeOnFail: { age: 7 * 86_400, count: 10_000 },
};
const CANCEL_TTL_S = 7 * 86_400;
/** Longest a queue operation may take before the caller gets 503. */
const OP_TIMEOUT_MS = 2_000;
/** The reason a cancelled job fails with (it is then shown as `cancelled`). */
export const CANCELLED_REASON = 'cancelled';

const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const JOB_ID = new RegExp(`^(${QUEUE_NAMES.map(escape).join('|')})-${UUID}$`);

/** The queue a job id belongs to, or undefined when the id is not one of ours. */
export function queueOfJobId(id: string): QueueName | undefined {
  return JOB_ID.exec(id)?.[1] as QueueName | undefined;
}

/** The Redis key flagging a job as cancelled (shared by the API and the workers). */
export const cancelKey = (prefix: string, jobId: string) => `${prefix}:strata-cancel:${jobId}`;

interface CancelRecord {
  at: number;
  by: string;
  tenantId: string | null;
  /** Kept when the job was removed before it ran: its last view, state cancelled. */
  view?: JobView;
}

/** The logging the job system needs (pino and Fastify's logger both fit). */
export type JobsLogger = Pick<BaseLogger, 'debug' | 'info' | 'warn' | 'error'>;

export interface JobsService {
  readonly prefix: string;
  /** The queues, for bull-board, schedules and tests. */
  readonly queues: Readonly<Record<QueueName, Queue>>;
  /** Enqueue a job owned by the caller's tenant. 503 JOBS_UNAVAILABLE when Redis is down. */
  enqueue<N extends JobName>(ctx: RequestContext, name: N, data: JobInputs[N], opts?: Pick<JobsOptions, 'delay' | 'priority'>): Promise<{ job_id: string }>;
  /** A job of the caller's tenant (any tenant for platform_admin); otherwise 404 JOB_NOT_FOUND. */
  get(ctx: RequestContext, id: string): Promise<JobView>;
  /** Cancel a job: removed when not started, flagged (state `cancelling`) when running. */
  cancel(ctx: RequestContext, id: string): Promise<JobView>;
  /** Progress and state changes, polled, ending after the final `done|failed|cancelled` event. */
  events(ctx: RequestContext, id: string, opts?: { signal?: AbortSignal; intervalMs?: number }): AsyncGenerator<JobEvent>;
  isCancelled(jobId: string): Promise<boolean>;
  close(): Promise<void>;
}

const jobNotFound = (id: string) => notFound('JOB_NOT_FOUND', `job ${id} does not exist`);
const jobsUnavailable = (cause?: unknown) =>
  unavailable('JOBS_UNAVAILABLE', 'the job queue (Redis) is unavailable; retry shortly', 2, cause);
const iso = (ms: number | undefined) => (ms ? new Date(ms).toISOString() : null);

function stateOf(bull: string, cancel: CancelRecord | null): JobState {
  const s: JobState =
    bull === 'prioritized' || bull === 'waiting-children' || bull === 'wait' ? 'waiting'
    : (['waiting', 'delayed', 'active', 'completed', 'failed'] as const).find((x) => x === bull) ?? 'unknown';
  if (!cancel) return s;
  if (s === 'failed') return 'cancelled';
  return s === 'completed' ? s : 'cancelling';
}

function toView(job: Job, bullState: string, cancel: CancelRecord | null): JobView {
  const state = stateOf(bullState, cancel);
  const progress = job.progress as JobProgress;
  return {
    id: job.id ?? '',
    name: job.name,
    queue: job.queueName,
    state,
    progress: typeof progress === 'number' || (typeof progress === 'object' && progress !== null) ? progress : 0,
    result: state === 'completed' ? ((job.returnvalue as unknown) ?? null) : null,
    error: state === 'failed' ? (job.failedReason ?? null) : null,
    attempts: job.attemptsMade,
    created_at: new Date(job.timestamp).toISOString(),
    finished_at: iso(job.finishedOn),
  };
}

/** Create the API side of the job system: queues on one fail-fast connection. */
export function createJobs(opts: { redisUrl: string; prefix?: string; log: JobsLogger }): JobsService {
  const prefix = opts.prefix ?? 'strata';
  const { log } = opts;
  // Not lazy: a Queue created over a lazy client that fails its first connect stays broken.
  const redis = new Redis(opts.redisUrl, redisOptions({ lazyConnect: false }));
  let lastErrorLog = 0;
  redis.on('error', (err) => {
    if (Date.now() - lastErrorLog < 10_000) return;
    lastErrorLog = Date.now();
    log.warn({ err: { message: err.message } }, 'jobs: redis connection error');
  });
  // Just after creation the connection may still be opening: calls wait for it until this deadline.
  const connectGraceUntil = Date.now() + OP_TIMEOUT_MS;
  const readyWithin = (ms: number) =>
    new Promise<boolean>((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        redis.off('ready', onReady);
        resolve(ok);
      };
      const onReady = () => done(true);
      const timer = setTimeout(() => done(false), ms);
      redis.on('ready', onReady);
    });
  const queues = Object.fromEntries(
    QUEUE_NAMES.map((name) => {
      const q = new Queue(name, { connection: redis, prefix, defaultJobOptions: DEFAULT_JOB_OPTIONS });
      q.on('error', () => undefined); // reported once above, by the connection
      return [name, q];
    }),
  ) as Record<QueueName, Queue>;

  /** Run a queue operation only while Redis is connected, bounded in time; failures are 503. */
  async function guard<T>(fn: () => Promise<T>): Promise<T> {
    if (redis.status !== 'ready') {
      // During an outage, fail at once; only a service just created waits for its first connection.
      const wait = connectGraceUntil - Date.now();
      if (wait <= 0 || !(await readyWithin(wait))) throw jobsUnavailable();
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        fn(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`queue operation timed out after ${OP_TIMEOUT_MS} ms`)), OP_TIMEOUT_MS);
        }),
      ]);
    } catch (err) {
      if (err instanceof AppError) throw err;
      log.warn({ err }, 'jobs: queue operation failed');
      throw jobsUnavailable(err);
    } finally {
      clearTimeout(timer);
    }
  }

  const visible = (ctx: RequestContext, tenantId: string | null) =>
    ctx.role === 'platform_admin' || (ctx.tenantId !== null && ctx.tenantId === tenantId);

  async function readCancel(id: string): Promise<CancelRecord | null> {
    const raw = await redis.get(cancelKey(prefix, id));
    return raw === null ? null : (JSON.parse(raw) as CancelRecord);
  }
  const writeCancel = (id: string, record: CancelRecord) =>
    redis.set(cancelKey(prefix, id), JSON.stringify(record), 'EX', CANCEL_TTL_S);

  /**
   * The job, its state and its cancellation record, or a 404 when the caller may not see it. The
   * state is read before the job's data: a job seen completed then has its final data (result).
   */
  async function load(ctx: RequestContext, id: string): Promise<{ job: Job | undefined; state: string; cancel: CancelRecord | null }> {
    const queue = queueOfJobId(id);
    if (!queue) throw jobNotFound(id);
    let state: string = await queues[queue].getJobState(id);
    const [job, cancel] = await Promise.all([queues[queue].getJob(id), readCancel(id)]);
    const owner = job ? (job.data as JobEnvelope).tenantId : cancel?.view ? cancel.tenantId : undefined;
    if (owner === undefined || !visible(ctx, owner)) throw jobNotFound(id);
    // It finished between the two reads: read the state again (now final).
    if (job?.finishedOn && state !== 'completed' && state !== 'failed') state = await queues[queue].getJobState(id);
    return { job, state, cancel };
  }

  async function view(ctx: RequestContext, id: string): Promise<JobView> {
    const { job, state, cancel } = await load(ctx, id);
    if (!job) return cancel?.view ?? Promise.reject(jobNotFound(id));
    return toView(job, state, cancel);
  }

  return {
    prefix,
    queues,
    async enqueue(ctx, name, data, jobOpts) {
      const queue = JOB_QUEUES[name];
      const jobId = `${queue}-${randomUUID()}`;
      const payload = { ...data, tenantId: ctx.tenantId, actor: ctx.actor, requestId: ctx.requestId };
      await guard(() => queues[queue].add(name, payload, { ...jobOpts, jobId }));
      log.info({ job: jobId, name, tenant: ctx.tenantId, actor: ctx.actor }, 'job enqueued');
      return { job_id: jobId };
    },
    get: (ctx, id) => guard(() => view(ctx, id)),
    cancel: (ctx, id) =>
      guard(async () => {
        const { job, state, cancel } = await load(ctx, id);
        if (!job) return cancel?.view ?? Promise.reject(jobNotFound(id));
        if (cancel || state === 'completed' || state === 'failed') {
          const current = toView(job, state, cancel);
          if (current.state === 'completed' || current.state === 'failed') {
            throw conflict('JOB_FINISHED', `job ${id} has already ${current.state === 'completed' ? 'completed' : 'failed'}`);
          }
          return current;
        }
        // Flag first: a worker that picks the job up meanwhile sees the flag before running it.
        const record: CancelRecord = { at: Date.now(), by: ctx.actor, tenantId: (job.data as JobEnvelope).tenantId };
        await writeCancel(id, record);
        if (state !== 'active') {
          try {
            await job.remove();
            const removed: JobView = { ...toView(job, 'failed', record), state: 'cancelled', error: null, finished_at: new Date().toISOString() };
            await writeCancel(id, { ...record, view: removed });
            log.info({ job: id, actor: ctx.actor }, 'job cancelled before it ran');
            return removed;
          } catch (err) {
            // Locked: a worker took it after all; the flag stops it.
            log.debug({ err, job: id }, 'job became active while cancelling');
          }
        }
        log.info({ job: id, actor: ctx.actor }, 'job cancellation requested');
        return toView(job, await job.getState(), record);
      }),
    async *events(ctx, id, eventOpts = {}) {
      const { signal, intervalMs = 250 } = eventOpts;
      let lastState: JobState | undefined;
      let lastProgress: string | undefined;
      while (!signal?.aborted) {
        const v = await guard(() => view(ctx, id));
        const progress = JSON.stringify(v.progress);
        if (progress !== lastProgress && (lastProgress !== undefined || v.progress !== 0)) yield { type: 'progress', progress: v.progress };
        lastProgress = progress;
        if (v.state !== lastState) yield { type: 'state', state: v.state };
        lastState = v.state;
        if (FINAL_STATES.has(v.state)) {
          yield { type: v.state === 'completed' ? 'done' : v.state === 'failed' ? 'failed' : 'cancelled', job: v };
          return;
        }
        try {
          await sleep(intervalMs, undefined, { signal });
        } catch {
          return; // aborted: the client went away
        }
      }
    },
    async isCancelled(jobId) {
      return (await redis.exists(cancelKey(prefix, jobId))) === 1;
    },
    async close() {
      await Promise.all(Object.values(queues).map((q) => q.close().catch(() => undefined)));
      await redis.quit().catch(() => redis.disconnect());
    },
  };
}
