/**
 * The master key ring (ENCRYPTION_MASTER_KEYS): `id:base64key` entries, comma separated, each key
 * 32 bytes (AES-256). The first entry is the active key: new data keys are wrapped with it; the
 * others only unwrap data keys wrapped before a rotation, until the master-key rotation job has
 * re-wrapped them. A KMS provider would implement the same `MasterKeys` interface (wrap/unwrap by key
 * id) with the key never leaving the KMS.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { badRequest } from '../../errors.js';

export interface WrappedKey {
  /** The master key that wrapped it. */
  masterKeyId: string;
  /** iv (12) | tag (16) | ciphertext (32). */
  wrapped: Buffer;
}

export interface MasterKeys {
  readonly activeId: string;
  readonly ids: readonly string[];
  /** Wrap a data key under the active master key; `context` is bound as additional authenticated data. */
  wrap(dataKey: Buffer, context: string): WrappedKey;
  /** Unwrap with the master key it names; throws when the key id is unknown or the context differs. */
  unwrap(key: WrappedKey, context: string): Buffer;
}

const KEY_ID = /^[A-Za-z0-9_-]{1,32}$/;

/** Parses the ring; null when ENCRYPTION_MASTER_KEYS is empty (encryption then answers 501). */
export function parseMasterKeys(spec: string | undefined): MasterKeys | null {
  const entries = (spec ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  if (!entries.length) return null;
  const keys = new Map<string, Buffer>();
  for (const entry of entries) {
    const colon = entry.indexOf(':');
    const id = entry.slice(0, colon);
    const key = Buffer.from(entry.slice(colon + 1), 'base64');
    if (colon < 1 || !KEY_ID.test(id)) throw new Error(`ENCRYPTION_MASTER_KEYS: entry "${id || entry.slice(0, 8)}..." is not id:base64key`);
    if (key.length !== 32) throw new Error(`ENCRYPTION_MASTER_KEYS: key ${id} is ${key.length} bytes; AES-256 needs 32`);
    if (keys.has(id)) throw new Error(`ENCRYPTION_MASTER_KEYS: key id ${id} appears twice`);
    keys.set(id, key);
  }
  const activeId = entries[0]!.slice(0, entries[0]!.indexOf(':'));
  return {
    activeId,
    ids: [...keys.keys()],
    wrap(dataKey, context) {
      const iv = randomBytes(12);
      const c = createCipheriv('aes-256-gcm', keys.get(activeId)!, iv);
      c.setAAD(Buffer.from(`strata-dek:${context}`));
      const ct = Buffer.concat([c.update(dataKey), c.final()]);
      return { masterKeyId: activeId, wrapped: Buffer.concat([iv, c.getAuthTag(), ct]) };
    },
    unwrap({ masterKeyId, wrapped }, context) {
      const master = keys.get(masterKeyId);
      if (!master) throw badRequest('MASTER_KEY_UNKNOWN', `master key ${masterKeyId} is not in ENCRYPTION_MASTER_KEYS`);
      const d = createDecipheriv('aes-256-gcm', master, wrapped.subarray(0, 12));
      d.setAAD(Buffer.from(`strata-dek:${context}`));
      d.setAuthTag(wrapped.subarray(12, 28));
      return Buffer.concat([d.update(wrapped.subarray(28)), d.final()]);
    },
  };
}
