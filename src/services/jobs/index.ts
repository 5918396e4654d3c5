/**
 * The job contract: the typed job map (each job's input and queue), job views and events, and the
 * JobsService interface through which services enqueue and follow jobs. Services depend on this
 * contract only; the BullMQ implementation (src/jobs/queues.ts) and the workers (src/jobs/) depend
 * on services, never the reverse.
 */
import type { JobsOptions, Queue } from 'bullmq';
import type { BaseLogger } from 'pino';
import type { RequestContext } from '../../domain.js';
import type { ReplayProgress } from '../changes/index.js';
import type { ExportJobInput } from '../exports/index.js';

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
  /** Refresh a materialized view (platform; src/services/analytics/view-refresh.ts). */
  'refresh-view': { view: string; reason: 'manual' | 'created' | 'cron' | 'writes' };
  /** Write a table query or analyst SQL to a file in the export store (POST /v1/exports). */
  export: ExportJobInput;
  /** The ordered delivery loop of one webhook (job id `webhooks-<webhook id>`). */
  'deliver-webhook': { webhookId: string };
  /**
   * Re-deliver a webhook's events in (after, until]. `resume` is written by the job itself when it
   * goes back to delayed to wait out a retry's backoff (it holds no worker slot meanwhile).
   */
  'replay-webhook': { webhookId: string; after: string; until?: string; resume?: ReplayProgress };
  /** Create change-log partitions ahead, drop those past retention (scheduled; platform). */
  'maintain-changes': Record<never, never>;
  /** Remove orphaned export/backup temporaries, expired Idempotency-Key records and expired tenant sandboxes (scheduled; platform). */
  'sweep-temporaries': Record<never, never>;
  /** Build the search index recorded for `table` in strata.search_indexes (SPEC 10). */
  'search-index-create': { table: string };
  /** Drop the search index of `table` and its definition. */
  'search-index-drop': { table: string };
  /** Cluster mode: move a tenant's shard group to another worker online (SPEC 11). */
  'tenant-move': { tenant: string; node: { host: string; port: number } };
  /** Cluster mode: give a tenant a shard of its own. */
  'tenant-isolate': { tenant: string };
  /** Cluster mode: rebalance shards over the workers (citus_rebalance_start). */
  'cluster-rebalance': Record<never, never>;
  /** Sample every table (or `tables`) for PII; findings proposed, never applied (SPEC 12). */
  'compliance-scan': { tables: string[] | null; sample_size: number };
  /** Build an anonymized copy of the database (or one tenant) in `target_database`. */
  'compliance-anonymize': { target_database: string; tenant: string | null; seed: string };
  /** Run or resume key rotation `rotation_id` (strata.key_rotations). */
  'compliance-rotate': { rotation_id: string };
  /** Run or resume conversion `conversion_id`: encrypt the plaintext values of a newly encrypted column. */
  'compliance-convert': { conversion_id: string };
  /** Copy one tenant's rows into the sandbox recorded in strata.sandboxes (POST /v1/admin/sandboxes). */
  'sandbox-create': { sandbox_id: string };
  /** Time partitions made ahead and dropped past retention, every partition set (scheduled; platform). */
  'maintain-partitions': Record<never, never>;
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
  'sweep-temporaries': 'maintenance',
  'search-index-create': 'search',
  'search-index-drop': 'search',
  'tenant-move': 'cluster',
  'tenant-isolate': 'cluster',
  'cluster-rebalance': 'cluster',
  'compliance-scan': 'compliance',
  'compliance-anonymize': 'compliance',
  'compliance-rotate': 'compliance',
  'compliance-convert': 'compliance',
  'sandbox-create': 'sandboxes',
  'maintain-partitions': 'maintenance',
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
