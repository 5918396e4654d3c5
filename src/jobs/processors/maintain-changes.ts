/** Scheduled: create the change log's partitions ahead and drop those past CHANGES_RETENTION_DAYS. */
import type { ProcessorContext } from '../processor.js';

export async function maintainChanges(ctx: ProcessorContext<'maintain-changes'>): Promise<{ created: number; dropped: number }> {
  const { CHANGES_PARTITIONS_AHEAD, CHANGES_RETENTION_DAYS } = ctx.db.config;
  await ctx.progress(0, 1);
  const { rows } = await ctx.db.adminQuery<{ created: number; dropped: number }>('SELECT created, dropped FROM strata.maintain_change_partitions($1, $2)', [
    CHANGES_PARTITIONS_AHEAD,
    CHANGES_RETENTION_DAYS,
  ]);
  await ctx.progress(1, 1);
  const out = rows[0] ?? { created: 0, dropped: 0 };
  if (out.created || out.dropped) ctx.log.info(out, 'change log partitions maintained');
  return out;
}
