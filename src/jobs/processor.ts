/**
 * What a job processor receives: the job, its cancellation signal, the database and the services
 * the routes use. Apart from the runtime (src/jobs/runtime.ts), which imports every processor, so
 * that processors do not import the runtime back.
 */
import type { Job } from 'bullmq';
import type { Logger } from 'pino';
import type { Database } from '../db/database.js';
import type { BackupServices } from '../services/backups/index.js';
import type { WebhookDeliveryService } from '../services/changes/index.js';
import type { ClusterService } from '../services/cluster/index.js';
import type { ComplianceOps } from '../services/compliance/index.js';
import type { PartitionService } from '../services/partitions/index.js';
import type { ExportService } from '../services/exports/index.js';
import type { ApiKeyService } from '../services/identity/index.js';
import type { JobData, JobName } from './queues.js';

/** What processors may call: the same services the routes use. Later capabilities add theirs. */
export interface ProcessorServices extends BackupServices {
  apiKeys: ApiKeyService;
  exports: ExportService;
  webhookDelivery: WebhookDeliveryService;
  cluster: ClusterService;
  complianceOps: ComplianceOps;
  partitions: PartitionService;
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
