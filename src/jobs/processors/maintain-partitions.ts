/** Scheduled: time partitions made ahead and dropped past retention (src/services/partitions). */
import type { ProcessorContext } from '../processor.js';

export function maintainPartitions(ctx: ProcessorContext<'maintain-partitions'>) {
  return ctx.services.partitions.maintain(async (info) => {
    await ctx.job.updateProgress(info);
  });
}
