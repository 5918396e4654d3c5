/**
 * The scheduled full backup: a BullMQ job scheduler on BACKUP_CRON (retention runs after each
 * backup job). Without BACKUP_CRON the scheduler is removed, so unsetting the variable stops it.
 */
import type { Config } from '../config.js';
import { DEFAULT_JOB_OPTIONS, type JobData, type JobsLogger, type JobsService } from './queues.js';

export const BACKUP_SCHEDULER = 'scheduled-backup';

export async function registerBackupSchedule(jobs: JobsService, config: Pick<Config, 'BACKUP_CRON'>, log: JobsLogger): Promise<void> {
  const queue = jobs.queues.backups;
  if (!config.BACKUP_CRON) {
    await queue.removeJobScheduler(BACKUP_SCHEDULER);
    return;
  }
  const data: JobData<'backup'> = { kind: 'full', trigger: 'schedule', tenantId: null, actor: 'system:scheduler', requestId: `schedule:${BACKUP_SCHEDULER}` };
  try {
    await queue.upsertJobScheduler(
      BACKUP_SCHEDULER,
      { pattern: config.BACKUP_CRON },
      { name: 'backup', data, opts: { attempts: DEFAULT_JOB_OPTIONS.attempts, backoff: DEFAULT_JOB_OPTIONS.backoff, removeOnComplete: { count: 100 }, removeOnFail: { count: 500 } } },
    );
  } catch (err) {
    throw new Error(`could not register the backup schedule (BACKUP_CRON=${config.BACKUP_CRON})`, { cause: err });
  }
  log.info({ cron: config.BACKUP_CRON }, 'schedule registered: scheduled-backup');
}
