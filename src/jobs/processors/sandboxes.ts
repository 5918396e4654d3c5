/** Copy a tenant's rows into its sandbox (src/services/sandboxes/copy.ts); a failure is final, not retried. */
import { UnrecoverableError } from 'bullmq';
import { createRegistryService } from '../../services/data/index.js';
import { copySandbox } from '../../services/sandboxes/index.js';
import type { ProcessorContext } from '../processor.js';

export async function sandboxCreate(ctx: ProcessorContext<'sandbox-create'>) {
  const c = ctx.db.config;
  try {
    return await copySandbox(
      { db: ctx.db, schema: createRegistryService({ db: ctx.db }), maxRows: c.SANDBOX_MAX_ROWS, statementTimeoutMs: c.EXPORT_MAX_TIMEOUT_MS, pgBinDir: c.BACKUP_PG_BIN_DIR, anonymizer: ctx.services.complianceOps.anonymizer },
      ctx.job.data.sandbox_id,
      { progress: (done, total) => ctx.progress(done, total), signal: ctx.signal, log: ctx.log },
    );
  } catch (err) {
    // the record says why and the database is gone: a second attempt would copy the same rows into the same refusal
    throw new UnrecoverableError(err instanceof Error ? err.message : String(err));
  }
}
