/** Tenant placement jobs on a Citus cluster (src/services/cluster): progress as the work goes. */
import type { ProcessorContext } from '../processor.js';

const reporter = (ctx: ProcessorContext) => async (info: Record<string, unknown>) => {
  await ctx.job.updateProgress(info);
};

export function tenantMove(ctx: ProcessorContext<'tenant-move'>) {
  return ctx.services.cluster.move(ctx.job.data.tenant, ctx.job.data.node, reporter(ctx));
}

export function tenantIsolate(ctx: ProcessorContext<'tenant-isolate'>) {
  return ctx.services.cluster.isolate(ctx.job.data.tenant, reporter(ctx));
}

export function clusterRebalance(ctx: ProcessorContext<'cluster-rebalance'>) {
  return ctx.services.cluster.rebalance(reporter(ctx), ctx.signal);
}
