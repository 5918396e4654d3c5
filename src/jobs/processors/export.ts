/**
 * The export job: plans the export again from its input (the same checks as the API made before
 * enqueueing), then writes the file in the caller's tenant session, reporting rows done against the
 * planner's estimate. A retry (stalled worker) starts from scratch and overwrites. Cancelled, it
 * records the partial file in the job's progress and ends cancelled, never completed.
 */
import { ExportAborted, type ExportFileResult } from '../../services/exports/index.js';
import type { ProcessorContext } from '../processor.js';


export async function exportJob(ctx: ProcessorContext<'export'>): Promise<ExportFileResult> {
  const { job } = ctx;
  const data = job.data;
  const { exports } = ctx.services;
  const timeout = data.timeout_ms ?? ctx.db.config.EXPORT_MAX_TIMEOUT_MS;
  const plan =
    data.sql !== undefined
      ? await exports.planSql({ sql: data.sql, params: data.params, format: data.format, timeout_ms: timeout })
      : await exports.planTable(data.table ?? '', data.filters ?? {}, data.format, timeout);
  const session = { requestId: data.requestId, tenantId: data.tenantId, actor: data.actor, role: data.role };
  try {
    const result = await exports.writeFile(session, plan, {
      jobId: job.id ?? '',
      attempt: job.attemptsStarted,
      signal: ctx.signal,
      // Running: the planner's estimate as total, percent held below 100 (an estimate can be exceeded).
      // Done: the actual count as total, 100%.
      onProgress: (done, estimate, final) =>
        final
          ? ctx.progress(done, done)
          : job.updateProgress({ done, total: estimate, percent: estimate > 0 ? Math.min(99, Math.floor((done / estimate) * 100)) : null, estimated: true }),
    });
    ctx.log.info({ rows: result.rows, bytes: result.bytes, file: result.file }, 'export written');
    return result;
  } catch (err) {
    if (err instanceof ExportAborted) {
      const progress = job.progress as Record<string, unknown> | number;
      await job.updateProgress({ ...(typeof progress === 'object' ? progress : {}), done: err.rows, partial: true, partial_file: err.partialFile });
      ctx.log.info({ rows: err.rows, file: err.partialFile }, 'export stopped; partial file kept');
    }
    throw err;
  }
}
