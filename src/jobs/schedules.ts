/**
 * Repeatable jobs, registered with BullMQ job schedulers. `upsertJobScheduler` is idempotent, so
 * every worker process (and an API process running workers) calls this at boot and again after every
 * reconnect to Redis (startWorkers' onReconnect): a Redis that came back empty (restarted without
 * persistence, failed over to an empty replica) gets its schedules back within seconds.
 */
import type { Config } from '../config.js';
import { DEFAULT_JOB_OPTIONS, type JobData, type JobsLogger, type JobsService } from './queues.js';
import { registerBackupSchedule } from './backup-schedule.js';

export const API_KEY_SWEEP_SCHEDULER = 'expire-api-keys';
export const CHANGES_MAINTENANCE_SCHEDULER = 'maintain-changes';
export const SWEEP_SCHEDULER = 'sweep-temporaries';
export const PARTITIONS_SCHEDULER = 'maintain-partitions';

/** Register (or update) every schedule. Throws, naming the variable, when a cron pattern is rejected. */
export async function registerSchedules(
  jobs: JobsService,
  config: Pick<Config, 'API_KEY_SWEEP_CRON'> & Partial<Pick<Config, 'CHANGES_MAINTENANCE_CRON' | 'BACKUP_CRON' | 'SWEEP_CRON' | 'PARTITIONS_MAINTENANCE_CRON'>>,
  log: JobsLogger,
): Promise<void> {
  const data: JobData<'expire-api-keys'> = { tenantId: null, actor: 'system:scheduler', requestId: `schedule:${API_KEY_SWEEP_SCHEDULER}` };
  try {
    await jobs.queues.maintenance.upsertJobScheduler(
      API_KEY_SWEEP_SCHEDULER,
      { pattern: config.API_KEY_SWEEP_CRON },
      {
        name: 'expire-api-keys',
        data,
        opts: { attempts: DEFAULT_JOB_OPTIONS.attempts, backoff: DEFAULT_JOB_OPTIONS.backoff, removeOnComplete: { count: 100 }, removeOnFail: { count: 500 } },
      },
    );
  } catch (err) {
    throw new Error(`could not register the API-key expiry schedule (API_KEY_SWEEP_CRON=${config.API_KEY_SWEEP_CRON})`, { cause: err });
  }
  log.info({ cron: config.API_KEY_SWEEP_CRON }, 'schedule registered: expire-api-keys');
  await registerBackupSchedule(jobs, config, log);
  if (config.CHANGES_MAINTENANCE_CRON) {
    const cron = config.CHANGES_MAINTENANCE_CRON;
    const mdata: JobData<'maintain-changes'> = { tenantId: null, actor: 'system:scheduler', requestId: `schedule:${CHANGES_MAINTENANCE_SCHEDULER}` };
    try {
      await jobs.queues.maintenance.upsertJobScheduler(
        CHANGES_MAINTENANCE_SCHEDULER,
        { pattern: cron },
        { name: 'maintain-changes', data: mdata, opts: { attempts: 3, backoff: DEFAULT_JOB_OPTIONS.backoff, removeOnComplete: { count: 100 }, removeOnFail: { count: 500 } } },
      );
    } catch (err) {
      throw new Error(`could not register the change-log maintenance schedule (CHANGES_MAINTENANCE_CRON=${cron})`, { cause: err });
    }
    log.info({ cron }, 'schedule registered: maintain-changes');
  }
  if (config.SWEEP_CRON) {
    const cron = config.SWEEP_CRON;
    const sdata: JobData<'sweep-temporaries'> = { tenantId: null, actor: 'system:scheduler', requestId: `schedule:${SWEEP_SCHEDULER}` };
    try {
      await jobs.queues.maintenance.upsertJobScheduler(
        SWEEP_SCHEDULER,
        { pattern: cron },
        { name: 'sweep-temporaries', data: sdata, opts: { attempts: 3, backoff: DEFAULT_JOB_OPTIONS.backoff, removeOnComplete: { count: 100 }, removeOnFail: { count: 500 } } },
      );
    } catch (err) {
      throw new Error(`could not register the temporaries sweep schedule (SWEEP_CRON=${cron})`, { cause: err });
    }
    log.info({ cron }, 'schedule registered: sweep-temporaries');
  }
  if (config.PARTITIONS_MAINTENANCE_CRON) {
    const cron = config.PARTITIONS_MAINTENANCE_CRON;
    const pdata: JobData<'maintain-partitions'> = { tenantId: null, actor: 'system:scheduler', requestId: `schedule:${PARTITIONS_SCHEDULER}` };
    try {
      await jobs.queues.maintenance.upsertJobScheduler(
        PARTITIONS_SCHEDULER,
        { pattern: cron },
        { name: 'maintain-partitions', data: pdata, opts: { attempts: 3, backoff: DEFAULT_JOB_OPTIONS.backoff, removeOnComplete: { count: 100 }, removeOnFail: { count: 500 } } },
      );
    } catch (err) {
      throw new Error(`could not register the time-partition maintenance schedule (PARTITIONS_MAINTENANCE_CRON=${cron})`, { cause: err });
    }
    log.info({ cron }, 'schedule registered: maintain-partitions');
  }
}
