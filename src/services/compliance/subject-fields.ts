/**
 * Data-API writes under per-subject keys (issue 15). A column declared `encrypted` with a
 * `subject_column` holds values encrypted under the key of the subject that column of the same row
 * names, so the subject's erasure (which deletes the key) crypto-shreds every copy of them: live rows,
 * the change log, exports, backups.
 *
 * Stored form: `sxs1.<key ref>.<iv>.<ciphertext+tag>` (base64url parts). The key ref is an opaque random
 * id of the subject's key (strata.subject_keys.key_ref, migration 0019), never the subject id, so a
 * reader finds the key of a value without knowing the row's subject, and the ciphertext does not carry
 * the identifier. The additional authenticated data is the tenant, subject, table and column, as for
 * the three-part `sxs1.<iv>.<ct>` values of subjectKeys.encrypt (which stays as it is).
 *
 * Keys are never cached (a shredded key is gone at once from every process): a read that carries
 * subject-keyed values costs one query for all the key refs it names; a write one query per subject
 * (plus an insert the first time). A value whose key was shredded reads as null.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import type { Database } from '../../db/database.js';
import { AppError, badRequest } from '../../errors.js';
import type { ColumnPolicy } from './declarations.js';
import type { PolicySnapshot } from './enforce.js';
import type { MasterKeys } from './keyring.js';
import { encryptionDisabled } from './keys.js';

const PREFIX = 'sxs1.';
const TAG = '\u001fsx:';
const wrapContext = (tenantId: string, subjectId: string) => `${tenantId}:subject:${subjectId}`;
const aad = (tenantId: string, subjectId: string, table: string, column: string) => Buffer.from(`strata-subject-field:${tenantId}:${subjectId}:${table}:${column}`);
const SHAPE = /^sxs1\.[0-9a-f]{32}\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{22,}$/;

/** A value written by the data APIs under a subject key (the four-part form naming its key). */
export function isSubjectFieldCiphertext(v: unknown): v is string {
  return typeof v === 'string' && v.startsWith(PREFIX) && SHAPE.test(v);
}

const keyRefOf = (v: string) => v.split('.')[1]!;

/** Whether any declared column is keyed per subject (memoised per policy snapshot). */
const keyedBySnapshot = new WeakMap<PolicySnapshot, boolean>();
export function hasSubjectKeyed(snap: PolicySnapshot): boolean {
  let v = keyedBySnapshot.get(snap);
  if (v === undefined) {
    v = [...snap.tables.values()].some((t) => [...t.values()].some((p) => !!p.subject_column));
    keyedBySnapshot.set(snap, v);
  }
  return v;
}

interface Loaded {
  subjectId: string;
  key: Buffer;
}

export function createSubjectFields(deps: { db: Database; keys: MasterKeys | null }) {
  const ring = () => {
    if (!deps.keys) throw encryptionDisabled();
    return deps.keys;
  };

  async function keyOf(tenantId: string, subjectId: string): Promise<{ ref: string; key: Buffer }> {
    const read = () =>
      deps.db.adminQuery<{ key_ref: string; master_key_id: string; wrapped: Buffer }>(
        `SELECT key_ref, master_key_id, wrapped FROM strata.subject_keys WHERE tenant_id = $1 AND subject_id = $2`,
        [tenantId, subjectId],
      );
    let { rows } = await read();
    if (!rows[0]) {
      const w = ring().wrap(randomBytes(32), wrapContext(tenantId, subjectId));
      // two writers racing for a new subject: the first insert wins, both use it
      ({ rows } = await deps.db.adminQuery<{ key_ref: string; master_key_id: string; wrapped: Buffer }>(
        `WITH ins AS (INSERT INTO strata.subject_keys (tenant_id, subject_id, master_key_id, wrapped) VALUES ($1, $2, $3, $4)
                      ON CONFLICT DO NOTHING RETURNING key_ref, master_key_id, wrapped)
         SELECT * FROM ins UNION ALL SELECT key_ref, master_key_id, wrapped FROM strata.subject_keys WHERE tenant_id = $1 AND subject_id = $2 LIMIT 1`,
        [tenantId, subjectId, w.masterKeyId, w.wrapped],
      ));
    }
    if (!rows[0]) ({ rows } = await read()); // the racing insert committed after this statement's snapshot
    const row = rows[0];
    if (!row) throw new AppError(500, 'KEY_CREATE_FAILED', 'could not create a subject key');
    return { ref: row.key_ref, key: ring().unwrap({ masterKeyId: row.master_key_id, wrapped: row.wrapped }, wrapContext(tenantId, subjectId)) };
  }

  async function load(tenantId: string, refs: string[]): Promise<Map<string, Loaded>> {
    const out = new Map<string, Loaded>();
    if (!refs.length) return out;
    const { rows } = await deps.db.adminQuery<{ key_ref: string; subject_id: string; master_key_id: string; wrapped: Buffer }>(
      `SELECT key_ref, subject_id, master_key_id, wrapped FROM strata.subject_keys WHERE tenant_id = $1 AND key_ref = ANY($2::text[])`,
      [tenantId, refs],
    );
    for (const r of rows) out.set(r.key_ref, { subjectId: r.subject_id, key: ring().unwrap({ masterKeyId: r.master_key_id, wrapped: r.wrapped }, wrapContext(tenantId, r.subject_id)) });
    return out;
  }

  function open(value: string, k: Loaded, tenantId: string, table: string, column: string): string {
    const parts = value.split('.');
    try {
      const iv = Buffer.from(parts[2]!, 'base64url');
      const body = Buffer.from(parts[3]!, 'base64url');
      const d = createDecipheriv('aes-256-gcm', k.key, iv);
      d.setAAD(aad(tenantId, k.subjectId, table, column));
      d.setAuthTag(body.subarray(body.length - 16));
      return Buffer.concat([d.update(body.subarray(0, body.length - 16)), d.final()]).toString('utf8');
    } catch (err) {
      throw new AppError(422, 'CIPHERTEXT_INVALID', `a value of ${table}.${column} does not decrypt for this tenant (moved from another row, tampered with)`, undefined, { cause: err });
    }
  }

  const fields = {
    /** Encrypt under the subject's key (created on first use). */
    async encrypt(tenantId: string, subjectId: string, plaintext: string, table: string, column: string): Promise<string> {
      const { ref, key } = await keyOf(tenantId, subjectId);
      const iv = randomBytes(12);
      const c = createCipheriv('aes-256-gcm', key, iv);
      c.setAAD(aad(tenantId, subjectId, table, column));
      const ct = Buffer.concat([c.update(plaintext, 'utf8'), c.final(), c.getAuthTag()]);
      return `${PREFIX}${ref}.${iv.toString('base64url')}.${ct.toString('base64url')}`;
    },

    /** One stored value: the plaintext; 422 KEY_NOT_FOUND once the subject was erased. */
    async decrypt(tenantId: string, value: string, table: string, column: string): Promise<string> {
      if (!isSubjectFieldCiphertext(value)) throw new AppError(422, 'CIPHERTEXT_INVALID', `a value of ${table}.${column} is not a subject-keyed ciphertext`);
      const k = (await load(tenantId, [keyRefOf(value)])).get(keyRefOf(value));
      if (!k) throw new AppError(422, 'KEY_NOT_FOUND', `the subject key of a value of ${table}.${column} does not exist (the subject was erased)`);
      return open(value, k, tenantId, table, column);
    },

    /**
     * The value to store for `policy`'s column of `row` (a write): under the key of the subject the
     * row's subject column names; with that column null, under the tenant key (`fallback`); with it
     * absent from the row (an update that does not name it), 400 SUBJECT_COLUMN_REQUIRED.
     */
    async protect(tenantId: string, policy: ColumnPolicy, row: Record<string, unknown>, text: string, fallback: () => Promise<string>): Promise<string> {
      const sc = policy.subject_column!;
      if (!(sc in row)) {
        throw badRequest('SUBJECT_COLUMN_REQUIRED', `${policy.table}.${policy.column} is encrypted under the key of the subject named by ${sc}: a write of it must also give ${sc}`, { table: policy.table, column: policy.column, subject_column: sc });
      }
      const subject = row[sc];
      if (subject === null || subject === undefined) return fallback();
      return fields.encrypt(tenantId, subjectIdOf(subject), text, policy.table, policy.column);
    },

    /**
     * Tagged JSON (the guard's reveal input) with subject-keyed ciphertexts replaced by their
     * plaintext (still tagged, so the caller's rule applies next), in one key lookup; a value whose
     * key was shredded becomes a tagged null.
     */
    async resolve(doc: unknown, tenantId: string | null): Promise<unknown> {
      const refs = new Set<string>();
      visit(doc, (s) => {
        const t = parseTag(s);
        if (t && isSubjectFieldCiphertext(t.value)) refs.add(keyRefOf(t.value));
        return s;
      });
      if (!refs.size) return doc;
      const keys = tenantId ? await load(tenantId, [...refs]) : new Map<string, Loaded>();
      return visit(doc, (s) => {
        const t = parseTag(s);
        if (!t || !isSubjectFieldCiphertext(t.value)) return s;
        const k = keys.get(keyRefOf(t.value));
        const plain = k ? open(t.value, k, tenantId!, t.table, t.column) : null;
        return `${TAG}${t.table}.${t.column}:${JSON.stringify(plain)}`;
      });
    },
  };
  return fields;
}

export type SubjectFields = ReturnType<typeof createSubjectFields>;

/** A subject column's value as the subject id (its text, as the erasure compares it). */
export const subjectIdOf = (v: unknown): string => (typeof v === 'string' ? v : JSON.stringify(v));

function parseTag(s: string): { table: string; column: string; value: unknown } | undefined {
  if (!s.startsWith(TAG)) return undefined;
  const rest = s.slice(TAG.length);
  const dot = rest.indexOf('.');
  const colon = rest.indexOf(':', dot);
  if (dot < 1 || colon < 0) return undefined;
  const raw = rest.slice(colon + 1);
  if (!raw.startsWith('"sxs1.')) return undefined;
  try {
    return { table: rest.slice(0, dot), column: rest.slice(dot + 1, colon), value: JSON.parse(raw) as unknown };
  } catch {
    return undefined;
  }
}

function visit(v: unknown, fn: (s: string) => unknown): unknown {
  if (typeof v === 'string') return fn(v);
  if (Array.isArray(v)) return v.map((x) => visit(x, fn));
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = visit(x, fn);
    return out;
  }
  return v;
}
