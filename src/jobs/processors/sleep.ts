/**
 * A job that does nothing but wait, in steps, reporting progress after each one. Tests use it, and
 * it is the template for real processors: report progress as you go, stop when `signal` aborts.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { ProcessorContext } from '../processor.js';

export async function sleepJob(ctx: ProcessorContext<'sleep'>): Promise<{ slept: number }> {
  const { ms, steps } = ctx.job.data;
  const total = Math.max(1, Math.floor(steps));
  const each = Math.max(0, ms) / total;
  await ctx.progress(0, total);
  for (let done = 1; done <= total; done++) {
    // Rejects with an AbortError on cancellation; the runtime records the job as cancelled.
    await sleep(each, undefined, { signal: ctx.signal });
    await ctx.progress(done, total);
  }
  return { slept: Math.max(0, ms) };
}
