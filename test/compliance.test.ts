/**
 * Compliance foundation (SPEC 12): the master key ring, envelope encryption of fields bound to tenant,
 * table and column, blind indexes, masking rules, PII detection, tenants' wrapped keys in the
 * database, and the declarations API (bad input answers 4xx with a code and writes nothing).
 */
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  applyMask,
  blindIndex,
  categoryByValue,
  createTenantKeys,
  decryptField,
  encryptField,
  ibanValid,
  judgeColumn,
  keyVersionOf,
  luhnValid,
  parseMasterKeys,
} from '../src/services/compliance/index.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';

const key = () => randomBytes(32).toString('base64');
const RING = `k2:${key()},k1:${key()}`;

describe('master key ring', () => {
  it('wraps with the first key, unwraps with the key a wrapped key names, and binds the context', () => {
    const ring = parseMasterKeys(RING)!;
    expect(ring.activeId).toBe('k2');
    const dek = randomBytes(32);
    const w = ring.wrap(dek, 'acme:data:1');
    expect(w.masterKeyId).toBe('k2');
    expect(ring.unwrap(w, 'acme:data:1').equals(dek)).toBe(true);
    expect(() => ring.unwrap(w, 'globex:data:1')).toThrow();
    // after a rotation the old key still unwraps what it wrapped
    const k1Only = parseMasterKeys(RING.split(',')[1])!;
    const old = k1Only.wrap(dek, 'acme:data:1');
    expect(ring.unwrap(old, 'acme:data:1').equals(dek)).toBe(true);
    expect(() => parseMasterKeys(`k1:${key()}`)!.unwrap(w, 'acme:data:1')).toThrow(/k2 is not in ENCRYPTION_MASTER_KEYS/);
  });

  it('refuses malformed rings with a message naming the entry', () => {
    expect(parseMasterKeys('')).toBeNull();
    expect(parseMasterKeys(undefined)).toBeNull();
    expect(() => parseMasterKeys('nocolon')).toThrow(/not id:base64key/);
    expect(() => parseMasterKeys(`k1:${randomBytes(16).toString('base64')}`)).toThrow(/16 bytes; AES-256 needs 32/);
    expect(() => parseMasterKeys(`k1:${key()},k1:${key()}`)).toThrow(/appears twice/);
  });
});

describe('field encryption', () => {
  const dek = randomBytes(32);
  const ctx = { tenantId: 'acme', table: 'customers', column: 'email' };

  it('round-trips, names its key version, and never repeats a ciphertext', () => {
    const a = encryptField('jane@example.com', dek, 3, ctx);
    const b = encryptField('jane@example.com', dek, 3, ctx);
    expect(a).not.toBe(b);
    expect(a).not.toContain('jane');
    expect(keyVersionOf(a)).toBe(3);
    expect(decryptField(a, () => dek, ctx)).toBe('jane@example.com');
  });

  it('fails to decrypt in another tenant, another column, with another key, or tampered', () => {
    const c = encryptField('4111 1111 1111 1111', dek, 1, ctx);
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        return (err as { code?: string; statusCode?: number }).code;
      }
      return 'decrypted';
    };
    expect(code(() => decryptField(c, () => dek, { ...ctx, tenantId: 'globex' }))).toBe('CIPHERTEXT_INVALID');
    expect(code(() => decryptField(c, () => dek, { ...ctx, column: 'phone' }))).toBe('CIPHERTEXT_INVALID');
    expect(code(() => decryptField(c, () => randomBytes(32), ctx))).toBe('CIPHERTEXT_INVALID');
    const tampered = c.slice(0, -3) + (c.endsWith('A') ? 'BBB' : 'AAA');
    expect(code(() => decryptField(tampered, () => dek, ctx))).toBe('CIPHERTEXT_INVALID');
    expect(code(() => decryptField('sx1.x.y.z', () => dek, ctx))).toBe('CIPHERTEXT_INVALID');
  });

  it('gives equal blind indexes for equal values of one tenant key and column only', () => {
    const k = randomBytes(32);
    const t = { table: 'customers', column: 'email' };
    expect(blindIndex('Jane@Example.com ', k, t)).toBe(blindIndex('jane@example.com', k, t));
    expect(blindIndex('jane@example.com', k, t)).not.toBe(blindIndex('john@example.com', k, t));
    expect(blindIndex('jane@example.com', randomBytes(32), t)).not.toBe(blindIndex('jane@example.com', k, t));
    expect(blindIndex('jane@example.com', k, { ...t, column: 'backup_email' })).not.toBe(blindIndex('jane@example.com', k, t));
  });
});

describe('masking rules', () => {
  it('masks each category as declared', () => {
    expect(applyMask('jane.doe@example.com', 'partial', 'email')).toBe('j***@example.com');
    expect(applyMask('4111 1111 1111 1234', 'partial', 'card')).toBe('************1234');
    expect(applyMask('+44 20 7946 0958', 'partial', 'phone')).toBe('********0958');
    expect(applyMask('Jane', 'partial', 'name')).toBe('J***');
    expect(applyMask('10.1.2.3', 'partial', 'ip_address')).toBe('10.1.2.*');
    expect(applyMask('jane', 'hash', null)).toBe(applyMask('jane', 'hash', null));
    expect(applyMask('jane', 'hash', null)).toMatch(/^hash:[0-9a-f]{16}$/);
    expect(applyMask('jane', 'null', null)).toBeNull();
    expect(applyMask('1987-06-15', 'month', 'date_of_birth')).toBe('1987-06-01');
    expect(applyMask('1987-06-15T10:00:00Z', 'year', 'date_of_birth')).toBe('1987-01-01');
    expect(applyMask(37, 'range:10', null)).toBe('30-39');
    expect(applyMask('jane', 'full', null)).toBe('jane');
    expect(applyMask(null, 'partial', 'email')).toBeNull();
  });
});

describe('PII detection', () => {
  it('checks card numbers with Luhn and IBANs with mod 97', () => {
    expect(luhnValid('4111111111111111')).toBe(true);
    expect(luhnValid('4111111111111112')).toBe(false);
    expect(ibanValid('GB82 WEST 1234 5698 7654 32')).toBe(true);
    expect(ibanValid('GB82 WEST 1234 5698 7654 33')).toBe(false);
    expect(categoryByValue('jane@example.com')).toBe('email');
    expect(categoryByValue('4111-1111-1111-1111')).toBe('card');
    expect(categoryByValue('1234567812345678')).toBeNull(); // 16 digits failing Luhn: not a card
    expect(categoryByValue('nightly build')).toBeNull();
  });

  it('judges a column from its name and sampled values', () => {
    expect(judgeColumn('contact', ['a@x.io', 'b@y.org', null, 'c@z.net'])).toMatchObject({ category: 'email', by: ['value'] });
    expect(judgeColumn('email', ['a@x.io', 'b@y.org'])).toMatchObject({ category: 'email', confidence: 1, by: ['name', 'value'] });
    expect(judgeColumn('phone', [])).toMatchObject({ category: 'phone', confidence: 0.5, by: ['name'] });
    expect(judgeColumn('status', ['active', 'paused'])).toBeNull();
  });
});

describe('tenant keys and declarations (real PostgreSQL)', () => {
  let t: TestApp;
  let platform: Record<string, string>;
  const URL = (table: string, column: string) => `/v1/admin/compliance/columns/${table}/${column}`;
  const declarations = async () => (await t.db.adminQuery('SELECT * FROM strata.compliance_columns ORDER BY 1, 2')).rows;

  beforeAll(async () => {
    t = await createTestApp({ env: { ENCRYPTION_MASTER_KEYS: RING } });
    platform = await t.auth('platform_admin', null);
  });
  afterEach(async () => expectNoCheckedOutClients(t.db));
  afterAll(async () => t?.close());

  it('creates a tenant data key once, stores it wrapped, and unwraps the same key in another process', async () => {
    const keys = createTenantKeys({ db: t.db, keys: parseMasterKeys(RING) });
    const [a, b] = await Promise.all([keys.current('acme'), keys.current('acme')]);
    expect(a.version).toBe(1);
    expect(a.key.equals(b.key)).toBe(true);
    const { rows } = await t.db.adminQuery<{ wrapped: Buffer; master_key_id: string }>(`SELECT wrapped, master_key_id FROM strata.tenant_keys WHERE tenant_id = 'acme' AND kind = 'data'`);
    expect(rows).toHaveLength(1);
    expect(rows[0]!.master_key_id).toBe('k2');
    expect(rows[0]!.wrapped.includes(a.key)).toBe(false);
    const other = createTenantKeys({ db: t.db, keys: parseMasterKeys(RING) });
    expect((await other.version('acme', 1)).equals(a.key)).toBe(true);
    expect((await other.current('globex')).key.equals(a.key)).toBe(false);
    await expect(other.version('acme', 9)).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    // without a ring, keys cannot be used at all
    await expect(createTenantKeys({ db: t.db, keys: null }).current('acme')).rejects.toMatchObject({ code: 'ENCRYPTION_NOT_CONFIGURED', statusCode: 501 });
  });

  it('declares, reads, lists and removes a column policy', async () => {
    const put = await t.app.inject({
      method: 'PUT',
      url: URL('pipelines', 'description'),
      headers: platform,
      payload: { encrypted: true, pii: 'free_text', masks: { reader: 'partial', analyst: 'hash' }, plaintext_roles: ['admin'] },
    });
    expect(put.statusCode, put.body).toBe(200);
    expect(put.json().data).toMatchObject({ table: 'pipelines', column: 'description', encrypted: true, searchable: false, pii: 'free_text', masks: { reader: 'partial', analyst: 'hash' }, plaintext_roles: ['admin'] });
    const admin = await t.auth('admin', 'acme');
    const list = await t.app.inject({ url: '/v1/admin/compliance/columns?table=pipelines', headers: admin });
    expect(list.statusCode).toBe(200);
    expect(list.json().data.map((p: { column: string }) => p.column)).toEqual(['description']);
    const one = await t.app.inject({ url: URL('pipelines', 'description'), headers: admin });
    expect(one.json().data.encrypted).toBe(true);
    const del = await t.app.inject({ method: 'DELETE', url: URL('pipelines', 'description'), headers: platform });
    expect(del.statusCode).toBe(204);
    expect(await declarations()).toEqual([]);
  });

  it.each([
    ['an unknown table', 'nope', 'email', {}, 404, 'TABLE_NOT_FOUND'],
    ['an unknown column', 'pipelines', 'nope', {}, 400, 'UNKNOWN_COLUMN'],
    ['an unknown PII category', 'pipelines', 'description', { pii: 'shoe_size' }, 400, 'INVALID_PII_CATEGORY'],
    ['a mask for an unknown role', 'pipelines', 'description', { masks: { boss: 'null' } }, 400, 'INVALID_ROLE'],
    ['an unknown masking rule', 'pipelines', 'description', { masks: { reader: 'scramble' } }, 400, 'INVALID_MASK_RULE'],
    ['an unknown plaintext role', 'pipelines', 'description', { plaintext_roles: ['boss'] }, 400, 'INVALID_ROLE'],
    ['searchable without encrypted', 'pipelines', 'description', { searchable: true }, 400, 'SEARCHABLE_NEEDS_ENCRYPTED'],
    ['an encrypted non-text column', 'pipelines', 'created_at', { encrypted: true }, 400, 'ENCRYPTED_COLUMN_TYPE'],
    ['an encrypted primary key', 'pipelines', 'id', { encrypted: true }, 400, 'ENCRYPTED_COLUMN_TYPE'],
    ['searchable without its blind index column', 'pipelines', 'description', { encrypted: true, searchable: true }, 400, 'BLIND_INDEX_COLUMN_MISSING'],
    ['an unknown body field', 'pipelines', 'description', { secret: true }, 400, 'VALIDATION_FAILED'],
    ['a hostile identifier', 'pipelines', 'x;drop', {}, 400, 'VALIDATION_FAILED'],
  ])('refuses %s (%s.%s) and writes nothing', async (_what, table, column, body, status, code) => {
    const before = await declarations();
    const res = await t.app.inject({ method: 'PUT', url: URL(table, column), headers: platform, payload: body });
    expect(res.statusCode, res.body).toBe(status);
    expect(res.json().error.code).toBe(code);
    expect(await declarations()).toEqual(before);
  });

  it('lets only platform_admin declare; tenant roles get 403 and nothing is written', async () => {
    for (const role of ['admin', 'writer', 'reader', 'analyst'] as const) {
      const res = await t.app.inject({ method: 'PUT', url: URL('pipelines', 'description'), headers: await t.auth(role, 'acme'), payload: { pii: 'free_text' } });
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe('ROLE_FORBIDDEN');
    }
    const reader = await t.app.inject({ url: '/v1/admin/compliance/columns', headers: await t.auth('reader', 'acme') });
    expect(reader.statusCode).toBe(403);
    expect(await declarations()).toEqual([]);
  });

  it('keeps tenant keys out of reach of tenant sessions', async () => {
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/sql',
      headers: await t.auth('analyst', 'acme'),
      payload: { sql: 'select * from strata.tenant_keys' },
    });
    expect(res.statusCode).toBeGreaterThanOrEqual(400);
    expect(res.statusCode).toBeLessThan(500);
    expect(res.body).not.toContain('wrapped');
  });
});
