/**
 * The per-request machinery of the declared policy, kept cheap (docs/compliance.md, "What a declared
 * column costs a request"): column plans and compiled masks answer as applyMask does, reveal()
 * resolves tagged values in place (own keys, audit counts), the ciphertexts a request made are not
 * decrypted again but a moved one still fails, and IVs never repeat.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { RequestContext, Role } from '../src/domain.js';
import { applyMask, compileMask, decryptField, encryptField, Guard, type AuditLog, type ColumnPolicy, type MaskRule, type PiiCategory, type PolicySnapshot, type TenantKeys } from '../src/services/compliance/index.js';

const dek = randomBytes(32);
const indexKey = randomBytes(32);
/** The tenant key cache of one tenant with one data key version (the keys module itself is tested in compliance.test.ts). */
const keys: TenantKeys = {
  current: () => Promise.resolve({ version: 1, key: dek }),
  version: (_t, v) => (v === 1 ? Promise.resolve(dek) : Promise.reject(new Error(`no version ${v}`))),
  index: () => Promise.resolve(indexKey),
  forget: () => undefined,
};

const policy = (column: string, p: Partial<ColumnPolicy>): ColumnPolicy => ({
  table: 'customers', column, encrypted: false, searchable: false, pii: null, masks: {}, plaintext_roles: [], declared_by: 't', declared_at: '', ...p,
});
const snap: PolicySnapshot = {
  version: 1,
  searchable: true,
  tables: new Map([
    ['customers', new Map([
      ['email', policy('email', { encrypted: true, searchable: true, pii: 'email', masks: { reader: 'partial' }, plaintext_roles: ['admin'] })],
      ['phone', policy('phone', { encrypted: true, pii: 'phone', masks: { reader: 'partial' }, plaintext_roles: ['admin'] })],
      ['notes', policy('notes', { pii: 'free_text', masks: { reader: 'hash' }, plaintext_roles: ['admin'] })],
    ])],
  ]),
};

interface Recorded { table: string; columns: string[]; rows: number; path: string }
function guardOf(role: Role, tenantId = 'acme') {
  const entries: Recorded[] = [];
  const audit = { record: (_ctx: RequestContext, table: string, columns: string[], rows: number, path: string) => entries.push({ table, columns: [...columns].sort(), rows, path }) } as unknown as AuditLog;
  const g = new Guard(snap, { tenantId, role, actor: `user-${role}`, requestId: 'r1' }, keys, audit, indexKey);
  g.tagged = true;
  return { g, entries };
}
const ctxOf = (column: string, tenantId = 'acme') => ({ tenantId, table: 'customers', column });
/** A column value as the SQL builders tag it, inside JSON text. */
const tagged = (column: string, value: unknown) => JSON.stringify(`\u001fsx:customers.${column}:${JSON.stringify(value)}`);

describe('compiled masks', () => {
  it('answer as applyMask for every rule and category', () => {
    const rules: MaskRule[] = ['full', 'partial', 'hash', 'null', 'month', 'year', 'range:10'];
    const categories: Array<PiiCategory | null> = [null, 'email', 'phone', 'card', 'iban', 'national_id', 'name', 'ip_address', 'free_text'];
    const values: unknown[] = ['jane@example.com', '+44 20 7946 0001', '4111 1111 1111 1111', 'GB82WEST12345698765432', '12', '', 'x', '2026-12-07', 37, null, '@no-local', '192.168.1.20', 'a\u00e9\u4e2d9'];
    let checked = 0;
    for (const rule of rules) for (const category of categories) {
      const mask = compileMask(rule, category);
      for (const v of values) {
        expect(mask(v), `${rule} ${category} ${JSON.stringify(v)}`).toEqual(applyMask(v, rule, category));
        checked++;
      }
    }
    expect(checked).toBe(rules.length * categories.length * values.length);
  });
});

describe('field encryption', () => {
  it('never repeats an IV and decrypts every value back, bound to its tenant and column', () => {
    const ivs = new Set<string>();
    for (let i = 0; i < 2000; i++) {
      const c = encryptField(`v${i}`, dek, 1, ctxOf('email'));
      ivs.add(c.split('.')[2]!);
      if (i % 97 === 0) expect(decryptField(c, () => dek, ctxOf('email'))).toBe(`v${i}`);
    }
    expect(ivs.size).toBe(2000);
    const c = encryptField('jane@example.com', dek, 1, ctxOf('email'));
    expect(() => decryptField(c, () => dek, ctxOf('phone'))).toThrow(expect.objectContaining({ code: 'CIPHERTEXT_INVALID', statusCode: 422 }));
    expect(() => decryptField(c, () => dek, ctxOf('email', 'globex'))).toThrow(expect.objectContaining({ code: 'CIPHERTEXT_INVALID' }));
    expect(() => decryptField(`${c}.x`, () => dek, ctxOf('email'))).toThrow(expect.objectContaining({ code: 'CIPHERTEXT_INVALID' }));
  });
});

describe('reveal', () => {
  const email = encryptField('jane@example.com', dek, 1, ctxOf('email'));
  const phone = encryptField('+44 20 7946 0001', dek, 1, ctxOf('phone'));
  const page = `{"data":[{"id":1,"email":${tagged('email', email)},"phone":${tagged('phone', phone)},"notes":${tagged('notes', 'call after 5')}},{"id":2,"email":${tagged('email', null)},"phone":null,"notes":${tagged('notes', 'x')}}],"next_cursor":null}`;

  it('masks per the role and records no audit entry for masked answers', async () => {
    const { g, entries } = guardOf('reader');
    const out = JSON.parse(await g.reveal(page, { path: 'rows' })) as { data: Array<Record<string, unknown>> };
    expect(out.data[0]).toEqual({ id: 1, email: 'j***@example.com', phone: '********0001', notes: applyMask('call after 5', 'hash') });
    expect(out.data[1]).toEqual({ id: 2, email: null, phone: null, notes: applyMask('x', 'hash') });
    expect(entries).toEqual([]);
  });

  it('gives a plaintext role the plaintext and audits the columns and rows it read', async () => {
    const { g, entries } = guardOf('admin');
    const out = JSON.parse(await g.reveal(page, { path: 'rows' })) as { data: Array<Record<string, unknown>> };
    expect(out.data[0]).toEqual({ id: 1, email: 'jane@example.com', phone: '+44 20 7946 0001', notes: 'call after 5' });
    expect(entries).toEqual([{ table: 'customers', columns: ['email', 'notes', 'phone'], rows: 2, path: 'rows' }]);
  });

  it('resolves a value under a __proto__ key as an own key, and an undeclared tagged column as null', async () => {
    const { g } = guardOf('reader');
    const text = `{"data":{"__proto__":${tagged('notes', 'secret text')},"gone":${JSON.stringify(`\u001fsx:customers.birth_date:"2000-01-01"`)}}}`;
    const out = await g.reveal(text, { path: 'rows' });
    expect(out).not.toContain('secret text');
    expect(JSON.parse(out)).toEqual({ data: JSON.parse(`{"__proto__":${JSON.stringify(applyMask('secret text', 'hash'))},"gone":null}`) });
  });

  it('does not decrypt again what the request encrypted, but a ciphertext moved to another column or tenant still fails', async () => {
    const { g } = guardOf('admin');
    const row = await g.protectRow('customers', { name: 'Jane', email: 'jane@example.com', phone: '+1 555 0100' });
    expect(row['email']).not.toBe('jane@example.com');
    expect(row['email_bidx']).toEqual(expect.any(String));
    const back = JSON.parse(await g.reveal(`{"data":{"email":${tagged('email', row['email'])},"phone":${tagged('phone', row['phone'])}}}`, { path: 'rows' })) as { data: Record<string, unknown> };
    expect(back.data).toEqual({ email: 'jane@example.com', phone: '+1 555 0100' });
    // the email's ciphertext returned as the phone: its AAD names another column
    await expect(g.reveal(`{"data":{"phone":${tagged('phone', row['email'])}}}`, { path: 'rows' })).rejects.toMatchObject({ code: 'CIPHERTEXT_INVALID' });
    // and read by another tenant's request (same key material here: only the AAD differs)
    const other = guardOf('admin', 'globex').g;
    await expect(other.reveal(`{"data":{"email":${tagged('email', row['email'])}}}`, { path: 'rows' })).rejects.toMatchObject({ code: 'CIPHERTEXT_INVALID' });
  });
});
