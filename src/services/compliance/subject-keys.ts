/**
 * Per-subject data keys (crypto-shredding). A value that must become unreadable when its data subject
 * is erased is encrypted under a key of that subject instead of the tenant's: AES-256-GCM with the
 * tenant, subject, table and column as additional authenticated data, stored as
 * `sxs1.<iv>.<ciphertext+tag>`. The key lives wrapped by the master key ring in strata.subject_keys;
 * erasing the subject deletes that row, and from then on every copy of the ciphertext (live rows,
 * change log, exports, backups) is noise: there is no key left to decrypt it with. Subject keys are
 * never cached in process memory, so a shredded key is gone at once from every process.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import type { Database } from '../../db/database.js';
import { AppError } from '../../errors.js';
import type { FieldContext } from './envelope.js';
import type { MasterKeys } from './keyring.js';
import { encryptionDisabled } from './keys.js';

export const SUBJECT_CIPHERTEXT_PREFIX = 'sxs1.';

const wrapContext = (tenantId: string, subjectId: string) => `${tenantId}:subject:${subjectId}`;
const aad = (c: FieldContext, subjectId: string) => Buffer.from(`strata-subject-field:${c.tenantId}:${subjectId}:${c.table}:${c.column}`);

export interface SubjectKeys {
  /** Encrypts under the subject's key (created on first use). */
  encrypt(subjectId: string, plaintext: string, ctx: FieldContext): Promise<string>;
  /** 422 KEY_NOT_FOUND once the subject was erased; 422 CIPHERTEXT_INVALID for a foreign value. */
  decrypt(subjectId: string, value: string, ctx: FieldContext): Promise<string>;
  /** Whether the subject has a key. */
  has(tenantId: string, subjectId: string): Promise<boolean>;
}

export function createSubjectKeys(deps: { db: Database; keys: MasterKeys | null }): SubjectKeys {
  const ring = () => {
    if (!deps.keys) throw encryptionDisabled();
    return deps.keys;
  };
  async function load(tenantId: string, subjectId: string): Promise<Buffer | null> {
    const { rows } = await deps.db.adminQuery<{ master_key_id: string; wrapped: Buffer }>(
      `SELECT master_key_id, wrapped FROM strata.subject_keys WHERE tenant_id = $1 AND subject_id = $2`,
      [tenantId, subjectId],
    );
    const row = rows[0];
    return row ? ring().unwrap({ masterKeyId: row.master_key_id, wrapped: row.wrapped }, wrapContext(tenantId, subjectId)) : null;
  }
  const gone = (ctx: FieldContext) =>
    new AppError(422, 'KEY_NOT_FOUND', `the subject key of a value of ${ctx.table}.${ctx.column} does not exist (the subject was erased, or never had one)`);

  return {
    async encrypt(subjectId, plaintext, ctx) {
      let key = await load(ctx.tenantId, subjectId);
      if (!key) {
        const w = ring().wrap(randomBytes(32), wrapContext(ctx.tenantId, subjectId));
        await deps.db.adminQuery(
          `INSERT INTO strata.subject_keys (tenant_id, subject_id, master_key_id, wrapped) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`,
          [ctx.tenantId, subjectId, w.masterKeyId, w.wrapped],
        );
        key = await load(ctx.tenantId, subjectId);
        if (!key) throw gone(ctx);
      }
      const iv = randomBytes(12);
      const c = createCipheriv('aes-256-gcm', key, iv);
      c.setAAD(aad(ctx, subjectId));
      const ct = Buffer.concat([c.update(plaintext, 'utf8'), c.final(), c.getAuthTag()]);
      return `${SUBJECT_CIPHERTEXT_PREFIX}${iv.toString('base64url')}.${ct.toString('base64url')}`;
    },
    async decrypt(subjectId, value, ctx) {
      const key = await load(ctx.tenantId, subjectId);
      if (!key) throw gone(ctx);
      const parts = value.split('.');
      const invalid = (cause?: unknown) => new AppError(422, 'CIPHERTEXT_INVALID', `a value of ${ctx.table}.${ctx.column} does not decrypt with this subject's key`, undefined, { cause });
      if (parts.length !== 3 || `${parts[0]}.` !== SUBJECT_CIPHERTEXT_PREFIX) throw invalid();
      try {
        const iv = Buffer.from(parts[1]!, 'base64url');
        const body = Buffer.from(parts[2]!, 'base64url');
        const d = createDecipheriv('aes-256-gcm', key, iv);
        d.setAAD(aad(ctx, subjectId));
        d.setAuthTag(body.subarray(body.length - 16));
        return Buffer.concat([d.update(body.subarray(0, body.length - 16)), d.final()]).toString('utf8');
      } catch (err) {
        throw invalid(err);
      }
    },
    async has(tenantId, subjectId) {
      const { rowCount } = await deps.db.adminQuery(`SELECT 1 FROM strata.subject_keys WHERE tenant_id = $1 AND subject_id = $2`, [tenantId, subjectId]);
      return (rowCount ?? 0) > 0;
    },
  };
}
