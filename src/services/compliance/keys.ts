/**
 * Tenants' keys: a data key per version (values name the version that encrypted them) and one
 * blind-index key, created on first use, stored wrapped by the active master key in
 * strata.tenant_keys, unwrapped into process memory on use and kept for KEY_CACHE_MS.
 */
import type { Database } from '../../db/database.js';
import { AppError } from '../../errors.js';
import { newDataKey } from './envelope.js';
import type { MasterKeys } from './keyring.js';

const KEY_CACHE_MS = 5 * 60_000;
type Kind = 'data' | 'index';

export interface TenantKeys {
  /** The current data key of a tenant (created with version 1 on first use). */
  current(tenantId: string): Promise<{ version: number; key: Buffer }>;
  /** A data key by version; 422 KEY_NOT_FOUND when it no longer exists (crypto-shredded). */
  version(tenantId: string, version: number): Promise<Buffer>;
  /** The tenant's blind-index key. */
  index(tenantId: string): Promise<Buffer>;
  /**
   * A key this process holds unexpired (no I/O, no promise), else undefined (then current(),
   * version() or index()): `latest` is the current data key or the index key.
   */
  cached?(tenantId: string, kind: 'data' | 'index', version: number | 'latest'): { key: Buffer; version: number } | undefined;
  /** Drop cached plaintext keys (after a rotation or erasure). */
  forget(tenantId?: string): void;
}

export const encryptionDisabled = () =>
  new AppError(501, 'ENCRYPTION_NOT_CONFIGURED', 'encrypted columns need ENCRYPTION_MASTER_KEYS (a key ring of id:base64 32-byte keys)');

export function createTenantKeys(deps: { db: Database; keys: MasterKeys | null }): TenantKeys {
  const cache = new Map<string, { key: Buffer; version: number; until: number }>();
  const ring = () => {
    if (!deps.keys) throw encryptionDisabled();
    return deps.keys;
  };
  const ctxOf = (tenantId: string, kind: Kind, version: number) => `${tenantId}:${kind}:${version}`;

  async function load(tenantId: string, kind: Kind, version: number | 'latest'): Promise<{ key: Buffer; version: number } | null> {
    const cacheKey = `${tenantId}\0${kind}\0${version}`;
    const hit = cache.get(cacheKey);
    if (hit && hit.until > Date.now()) return hit;
    const { rows } = await deps.db.adminQuery<{ version: number; master_key_id: string; wrapped: Buffer }>(
      version === 'latest'
        ? `SELECT version, master_key_id, wrapped FROM strata.tenant_keys WHERE tenant_id = $1 AND kind = $2 AND retired_at IS NULL ORDER BY version DESC LIMIT 1`
        : `SELECT version, master_key_id, wrapped FROM strata.tenant_keys WHERE tenant_id = $1 AND kind = $2 AND version = $3`,
      version === 'latest' ? [tenantId, kind] : [tenantId, kind, version],
    );
    const row = rows[0];
    if (!row) return null;
    const key = ring().unwrap({ masterKeyId: row.master_key_id, wrapped: row.wrapped }, ctxOf(tenantId, kind, row.version));
    const entry = { key, version: row.version, until: Date.now() + KEY_CACHE_MS };
    cache.set(cacheKey, entry);
    return entry;
  }

  async function ensure(tenantId: string, kind: Kind): Promise<{ key: Buffer; version: number }> {
    const found = await load(tenantId, kind, 'latest');
    if (found) return found;
    const w = ring().wrap(newDataKey(), ctxOf(tenantId, kind, 1));
    // Two processes may race to create version 1: the first insert wins, both then read it.
    await deps.db.adminQuery(
      `INSERT INTO strata.tenant_keys (tenant_id, kind, version, master_key_id, wrapped) VALUES ($1, $2, 1, $3, $4) ON CONFLICT DO NOTHING`,
      [tenantId, kind, w.masterKeyId, w.wrapped],
    );
    const made = await load(tenantId, kind, 'latest');
    if (!made) throw new AppError(500, 'KEY_CREATE_FAILED', `could not create the ${kind} key of tenant ${tenantId}`);
    return made;
  }

  return {
    current: (tenantId) => ensure(tenantId, 'data'),
    async version(tenantId, version) {
      const k = await load(tenantId, 'data', version);
      if (!k) throw new AppError(422, 'KEY_NOT_FOUND', `data key version ${version} of tenant ${tenantId} does not exist (erased or never created)`);
      return k.key;
    },
    index: async (tenantId) => (await ensure(tenantId, 'index')).key,
    cached(tenantId, kind, version) {
      const hit = cache.get(`${tenantId}\0${kind}\0${version}`);
      return hit && hit.until > Date.now() ? hit : undefined;
    },
    forget(tenantId) {
      if (!tenantId) return cache.clear();
      for (const k of cache.keys()) if (k.startsWith(`${tenantId}\0`)) cache.delete(k);
    },
  };
}
