/** The backup capability's services, built once per process (API, worker, CLI) from the Database. */
import pino from 'pino';
import type { Database } from '../../db/database.js';
import { createBackupService, type BackupService, type BackupServiceDeps } from './backups.js';
import { createRestoreService, type RestoreService } from './restore.js';

export interface BackupServices {
  backups: BackupService;
  restores: RestoreService;
}

export function createBackupServices(db: Database, log?: BackupServiceDeps['log']): BackupServices {
  const backups = createBackupService({ config: db.config, adminUrl: db.adminUrl, log: log ?? pino({ level: 'silent' }) });
  return { backups, restores: createRestoreService({ backups, redisUrl: db.config.REDIS_URL, changeRetentionDays: db.config.CHANGES_RETENTION_DAYS, cachePrefix: db.config.CACHE_PREFIX }) };
}

export type { BackupService, RestoreService };
export * from './backups.js';
export * from './maintenance.js';
export * from './manifest.js';
export * from './pg-tools.js';
export * from './pg.js';
export * from './restore.js';
