/**
 * Backup jobs (queue `backups`): take a backup then apply retention, verify a backup, restore. Thin:
 * the work is in src/services/backups/*; progress is `{ phase, done, total, percent }`.
 */
import { UnrecoverableError } from 'bullmq';
import type { ProgressFn } from '../../services/backups/index.js';
import type { ProcessorContext } from '../processor.js';
import type { JobName } from '../queues.js';

function reporter(ctx: ProcessorContext<JobName>): ProgressFn {
  return async ({ phase, done, total }) => {
    const percent = total === null ? null : total <= 0 ? 100 : Math.min(100, Math.round((done / total) * 100));
    await ctx.job.updateProgress({ phase, done, total, percent }).catch(() => undefined);
  };
}

export async function backupJob(ctx: ProcessorContext<'backup'>) {
  const { kind, trigger } = ctx.job.data;
  const { backups } = ctx.services;
  const m = await backups.create(kind, { jobId: ctx.job.id ?? null, signal: ctx.signal, progress: reporter(ctx), trigger: trigger ?? 'api' });
  const pruned = await backups.prune().catch((err: unknown) => {
    ctx.log.warn({ err }, 'retention pruning failed');
    return [];
  });
  return { backup_id: m.id, kind: m.kind, size: m.size, sha256: m.sha256, change_position: m.change_position, pruned };
}

export async function backupVerifyJob(ctx: ProcessorContext<'backup-verify'>) {
  const v = await ctx.services.backups.verify(ctx.job.data.backup_id, { jobId: ctx.job.id ?? null, signal: ctx.signal, progress: reporter(ctx) });
  // Recorded in the manifest either way; a failed verification fails the job with its reason (no retry).
  if (!v.ok) throw new UnrecoverableError(`verification failed: ${v.reason ?? 'unknown reason'}`);
  return { backup_id: ctx.job.data.backup_id, ...v };
}

export async function restoreJob(ctx: ProcessorContext<'restore'>) {
  const { backup_id, until, target, database } = ctx.job.data;
  try {
    return await ctx.services.restores.restore(
      { target, ...(backup_id !== undefined ? { backup_id } : {}), ...(until !== undefined ? { until } : {}), ...(database !== undefined ? { database } : {}) },
      { jobId: ctx.job.id ?? null, signal: ctx.signal, progress: reporter(ctx) },
    );
  } catch (err) {
    if (ctx.signal.aborted) throw err; // cancelled: the runtime records it so
    // A restore is not retried blindly: the operator reads the reason and decides.
    throw new UnrecoverableError(err instanceof Error ? err.message : String(err));
  }
}
