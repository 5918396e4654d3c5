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
import { createCipheriv, createDecipheriv, createHmac, randomBytes, randomFillSync } from 'node:crypto';
import { AppError } from '../../errors.js';

export const CIPHERTEXT_PREFIX = 'sx1.';

export interface FieldContext {
  tenantId: string;
  table: string;
  column: string;
}

/** The additional authenticated data of a field: its tenant, table and column. */
export const fieldAad = (c: FieldContext) => Buffer.from(`strata-field:${c.tenantId}:${c.table}:${c.column}`);

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
  const dot = value.indexOf('.', CIPHERTEXT_PREFIX.length);
  const v = Number(dot < 0 ? value.slice(CIPHERTEXT_PREFIX.length) : value.slice(CIPHERTEXT_PREFIX.length, dot));
  return Number.isInteger(v) && v > 0 ? v : null;
}

/**
 * IVs are slices of a pool filled by the CSPRNG 256 at a time: each slice is handed out once (an IV
 * never repeats), and one randomFillSync call per 256 values instead of a randomBytes call per value.
 */
const IV_BYTES = 12;
let ivPool = Buffer.alloc(0);
let ivAt = 0;
function nextIv(): Buffer {
  if (ivAt + IV_BYTES > ivPool.length) {
    ivPool = randomFillSync(Buffer.allocUnsafe(IV_BYTES * 256));
    ivAt = 0;
  }
  const iv = ivPool.subarray(ivAt, ivAt + IV_BYTES);
  ivAt += IV_BYTES;
  return iv;
}

export function encryptField(plaintext: string, key: Buffer, version: number, ctx: FieldContext): string {
  return encryptWithAad(plaintext, key, version, fieldAad(ctx));
}

/** encryptField with the field's AAD already made (fieldAad): the guard makes it once per request and column. */
export function encryptWithAad(plaintext: string, key: Buffer, version: number, aad: Buffer): string {
  const iv = nextIv();
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(aad);
  const body = c.update(plaintext, 'utf8');
  const last = c.final(); // empty for GCM
  const tag = c.getAuthTag();
  const ct = Buffer.concat(last.length ? [body, last, tag] : [body, tag]);
  return `${CIPHERTEXT_PREFIX}${version}.${iv.toString('base64url')}.${ct.toString('base64url')}`;
}

/** Decrypts with `keyFor(version)`; a wrong tenant, column, key or a tampered value answers 422 CIPHERTEXT_INVALID. */
export function decryptField(value: string, keyFor: (version: number) => Buffer, ctx: FieldContext): string {
  const version = keyVersionOf(value);
  if (version === null) throw invalid(ctx);
  return decryptWithAad(value, keyFor(version), fieldAad(ctx), ctx);
}

/**
 * decryptField with the key of the version the value names and the field's AAD already at hand
 * (the guard resolves both once per request). `ctx` only names the field in the error.
 */
export function decryptWithAad(value: string, key: Buffer, aad: Buffer, ctx: Omit<FieldContext, 'tenantId'>): string {
  // sx1.<version>.<iv>.<ciphertext+tag>: exactly four parts
  const a = value.indexOf('.', CIPHERTEXT_PREFIX.length);
  const b = a < 0 ? -1 : value.indexOf('.', a + 1);
  if (b < 0 || value.indexOf('.', b + 1) >= 0) throw invalid(ctx);
  try {
    const iv = Buffer.from(value.slice(a + 1, b), 'base64url');
    const body = Buffer.from(value.slice(b + 1), 'base64url');
    if (iv.length !== IV_BYTES || body.length < 16) throw invalid(ctx);
    const d = createDecipheriv('aes-256-gcm', key, iv);
    d.setAAD(aad);
    d.setAuthTag(body.subarray(body.length - 16));
    const out = d.update(body.subarray(0, body.length - 16));
    const last = d.final(); // throws when the tag does not verify; empty for GCM
    return (last.length ? Buffer.concat([out, last]) : out).toString('utf8');
  } catch (err) {
    if (err instanceof AppError) throw err;
    throw invalid(ctx, err);
  }
}

const invalid = (ctx: Omit<FieldContext, 'tenantId'>, cause?: unknown) =>
  new AppError(422, 'CIPHERTEXT_INVALID', `a value of ${ctx.table}.${ctx.column} does not decrypt for this tenant (moved from another row, tampered with, or its key is gone)`, undefined, { cause });

/** Equality token of a plaintext: trimmed and lower-cased for `pii` categories that compare that way. */
export function blindIndex(plaintext: string, indexKey: Buffer, ctx: Omit<FieldContext, 'tenantId'>, normalise = true): string {
  const v = normalise ? plaintext.trim().toLowerCase() : plaintext;
  return createHmac('sha256', indexKey).update(`${ctx.table}:${ctx.column}:`).update(v, 'utf8').digest().subarray(0, 16).toString('base64url');
}

/** A new random 256-bit data key. */
export const newDataKey = () => randomBytes(32);
