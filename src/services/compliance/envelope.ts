/**
 * Field encryption with a tenant's data key: AES-256-GCM (node:crypto), a fresh 96-bit IV per value.
 * The stored text is `sx1.<key version>.<iv>.<ciphertext+tag>` (base64url parts), so a value names
 * the data key version that decrypts it and rotation can proceed row by row with no window where a
 * row cannot be read. The additional authenticated data binds the tenant, table and column: a
 * ciphertext copied into another tenant's row (or another column) fails to decrypt.
 *
 * Blind index: HMAC-SHA256 of the normalised plaintext under the tenant's index key, truncated to
 * 16 bytes, for equality filters on `searchable` columns. It reveals equality within one tenant and
 * column, nothing across tenants.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { AppError } from '../../errors.js';

export const CIPHERTEXT_PREFIX = 'sx1.';

export interface FieldContext {
  tenantId: string;
  table: string;
  column: string;
}

const aad = (c: FieldContext) => Buffer.from(`strata-field:${c.tenantId}:${c.table}:${c.column}`);

/**
 * The exact shape encryptField writes: a value merely starting with `sx1.` (a plaintext stored before
 * its column was declared encrypted) is not ciphertext, so it reads as plaintext until the conversion
 * job encrypts it, never as a 422.
 */
const SHAPE = /^sx1\.[1-9][0-9]*\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{22,}$/;

export function isCiphertext(value: unknown): value is string {
  return typeof value === 'string' && value.startsWith(CIPHERTEXT_PREFIX) && SHAPE.test(value);
}

/** The data key version a ciphertext names, or null when it is not one of ours. */
export function keyVersionOf(value: string): number | null {
  if (!isCiphertext(value)) return null;
  const v = Number(value.split('.')[1]);
  return Number.isInteger(v) && v > 0 ? v : null;
}

export function encryptField(plaintext: string, key: Buffer, version: number, ctx: FieldContext): string {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(aad(ctx));
  const ct = Buffer.concat([c.update(plaintext, 'utf8'), c.final(), c.getAuthTag()]);
  return `${CIPHERTEXT_PREFIX}${version}.${iv.toString('base64url')}.${ct.toString('base64url')}`;
}

/** Decrypts with `keyFor(version)`; a wrong tenant, column, key or a tampered value answers 422 CIPHERTEXT_INVALID. */
export function decryptField(value: string, keyFor: (version: number) => Buffer, ctx: FieldContext): string {
  const parts = value.split('.');
  const version = keyVersionOf(value);
  if (parts.length !== 4 || version === null) throw invalid(ctx);
  try {
    const iv = Buffer.from(parts[2]!, 'base64url');
    const body = Buffer.from(parts[3]!, 'base64url');
    if (iv.length !== 12 || body.length < 16) throw invalid(ctx);
    const d = createDecipheriv('aes-256-gcm', keyFor(version), iv);
    d.setAAD(aad(ctx));
    d.setAuthTag(body.subarray(body.length - 16));
    return Buffer.concat([d.update(body.subarray(0, body.length - 16)), d.final()]).toString('utf8');
  } catch (err) {
    if (err instanceof AppError) throw err;
    throw invalid(ctx, err);
  }
}

const invalid = (ctx: FieldContext, cause?: unknown) =>
  new AppError(422, 'CIPHERTEXT_INVALID', `a value of ${ctx.table}.${ctx.column} does not decrypt for this tenant (moved from another row, tampered with, or its key is gone)`, undefined, { cause });

/** Equality token of a plaintext: trimmed and lower-cased for `pii` categories that compare that way. */
export function blindIndex(plaintext: string, indexKey: Buffer, ctx: Omit<FieldContext, 'tenantId'>, normalise = true): string {
  const v = normalise ? plaintext.trim().toLowerCase() : plaintext;
  return createHmac('sha256', indexKey).update(`${ctx.table}:${ctx.column}:`).update(v, 'utf8').digest().subarray(0, 16).toString('base64url');
}

/** A new random 256-bit data key. */
export const newDataKey = () => randomBytes(32);
