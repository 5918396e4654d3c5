/** Compliance jobs (SPEC 12): the PII scan, anonymized copies and key rotations; progress as they go. */
import type { ProcessorContext } from '../processor.js';

export function complianceScan(ctx: ProcessorContext<'compliance-scan'>) {
  const d = ctx.job.data;
  const requester = { requestId: d.requestId, tenantId: d.tenantId, actor: d.actor, role: d.tenantId ? ('admin' as const) : ('platform_admin' as const) };
  return ctx.services.complianceOps.scan.run({ id: ctx.job.id ?? '', ctx: requester, tables: d.tables, sampleSize: d.sample_size }, (done, total) => ctx.progress(done, total), ctx.signal);
}

export function complianceAnonymize(ctx: ProcessorContext<'compliance-anonymize'>) {
  const d = ctx.job.data;
  return ctx.services.complianceOps.anonymizer.run({ target_database: d.target_database, tenant: d.tenant, seed: d.seed }, (done, total) => ctx.progress(done, total), ctx.signal);
}

export function complianceRotate(ctx: ProcessorContext<'compliance-rotate'>) {
  return ctx.services.complianceOps.rotation.run(ctx.job.data.rotation_id, (done, total) => ctx.progress(done, total), ctx.signal);
}

export function complianceConvert(ctx: ProcessorContext<'compliance-convert'>) {
  return ctx.services.complianceOps.conversion.run(ctx.job.data.conversion_id, (done, total) => ctx.progress(done, total), ctx.signal);
}
