/** Scheduled maintenance: revoke every API key past its expiry (SPEC 1: keys are revocable). */
import type { ProcessorContext } from '../processor.js';

export async function expireApiKeys(ctx: ProcessorContext<'expire-api-keys'>): Promise<{ revoked: number }> {
  await ctx.progress(0, 1);
  const revoked = await ctx.services.apiKeys.revokeExpired();
  await ctx.progress(1, 1);
  if (revoked > 0) ctx.log.info({ revoked }, 'expired API keys revoked');
  return { revoked };
}
