/** Scheduled: remove orphaned export and backup temporaries, and expired Idempotency-Key records. */
import path from 'node:path';
import type { ProcessorContext } from '../processor.js';
import { sweepTemporaries } from '../../services/maintenance-sweep/index.js';
import { createSandboxService } from '../../services/sandboxes/index.js';

export async function sweepTemporariesJob(ctx: ProcessorContext<'sweep-temporaries'>) {
  const c = ctx.db.config;
  const result = await sweepTemporaries({
    exportDir: c.exportDir,
    // the directory store's root; with S3 the local .tmp of uploads lives under the same path
    backupDir: path.resolve(c.BACKUP_DIR ?? path.join(c.DATA_DIR, 'backups')),
    minAgeMs: c.SWEEP_MIN_AGE_MS,
    db: ctx.db,
    log: ctx.log,
  });
  // expired tenant sandboxes: their databases are dropped (requests were already refused at expiry)
  const sandboxes = await createSandboxService({ db: ctx.db, log: ctx.log, ttlS: c.SANDBOX_TTL_S, maxPerTenant: c.SANDBOX_MAX_PER_TENANT }).sweep();
  if (result.exports || result.backups || result.manifests || sandboxes) ctx.log.info({ ...result, sandboxes }, 'orphaned temporaries and expired sandboxes swept');
  return { ...result, sandboxes };
}
