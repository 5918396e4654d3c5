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
import { Queue, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import type { RequestContext } from '../domain.js';
import { AppError, conflict, notFound, unavailable } from '../errors.js';
import { redisOptions } from '../redis.js';
import {
  FINAL_STATES,
  JOB_QUEUES,
  DEFAULT_JOB_OPTIONS,
  QUEUE_NAMES,
  cancelKey,
  queueOfJobId,
  type JobEnvelope,
  type JobProgress,
  type JobState,
  type JobView,
  type JobsLogger,
  type JobsService,
  type QueueName,
} from '../services/jobs/index.js';

/** The job contract lives with the services that enqueue jobs; re-exported for the jobs layer. */
export * from '../services/jobs/index.js';

const CANCEL_TTL_S = 7 * 86_400;
/** Longest a queue operation may take before the caller gets 503. */
const OP_TIMEOUT_MS = 2_000;
interface CancelRecord {
  at: number;
  by: string;
  tenantId: string | null;
  /** Kept when the job was removed before it ran: its last view, state cancelled. */
  view?: JobView;
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
