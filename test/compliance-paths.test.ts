/**
 * Compliance enforcement on every read and write path (issue 15): one table-driven test over the
 * paths and roles (each role sees what its rule says), plaintext never stored (read as the owner:
 * ciphertext), a ciphertext copied to another tenant's row does not decrypt, cross-tenant attempts
 * fail, blind-index equality filters, refused filters/order/aggregates (coded 400, nothing written),
 * the access audit, and no planted plaintext in the captured logs.
 */
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import type { AddressInfo } from 'node:net';
import WebSocket from 'ws';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';
import type { Role } from '../src/domain.js';

const key = () => randomBytes(32).toString('base64');
const RING = `k1:${key()}`;

const EMAIL = 'jane.planted@example.com';
const PHONE = '+44 20 7946 0958';
const NOTES = 'planted-secret-note-7Q';
const LIMIT = 4321;

/** What each role's rule gives for the planted row. */
const EXPECTED: Record<Exclude<Role, 'platform_admin'>, { email: unknown; phone: unknown; notes: unknown; credit_limit: unknown }> = {
  admin: { email: EMAIL, phone: PHONE, notes: NOTES, credit_limit: LIMIT },
  writer: { email: 'j***@example.com', phone: '********0958', notes: 'p***', credit_limit: '4000-4999' },
  reader: { email: 'j***@example.com', phone: '********0958', notes: null, credit_limit: '4000-4999' },
  analyst: { email: expect.stringMatching(/^hash:[0-9a-f]{16}$/), phone: null, notes: null, credit_limit: null },
};
const ROLES = Object.keys(EXPECTED) as Array<keyof typeof EXPECTED>;

const lines: string[] = [];
const logStream = new Writable({
  write(chunk, _enc, cb) {
    lines.push(String(chunk));
    cb();
  },
});

let t: TestApp;
let h: Record<string, Record<string, string>>;
let pipelineId: number;
let customerId: number;

const declare = (column: string, body: unknown) =>
  t.app.inject({ method: 'PUT', url: `/v1/admin/compliance/columns/customers/${column}`, headers: h['platform']!, payload: body as object });

beforeAll(async () => {
  t = await createTestApp({ env: { ENCRYPTION_MASTER_KEYS: RING }, logStream, logLevel: 'info' });
  h = { platform: await t.auth('platform_admin', null) };
  for (const r of ROLES) h[r] = await t.auth(r, 'acme');
  h['globex'] = await t.auth('admin', 'globex');
  for (const [col, body] of [
    ['email', { encrypted: true, searchable: true, pii: 'email', masks: { reader: 'partial', writer: 'partial', analyst: 'hash' }, plaintext_roles: ['admin'] }],
    ['phone', { encrypted: true, pii: 'phone', masks: { reader: 'partial', writer: 'partial' }, plaintext_roles: ['admin'] }],
    ['notes', { pii: 'free_text', masks: { writer: 'partial' }, plaintext_roles: ['admin'] }],
    ['credit_limit', { pii: 'other', masks: { reader: 'range:1000', writer: 'range:1000' }, plaintext_roles: ['admin'] }],
  ] as const) {
    const res = await declare(col, body);
    expect(res.statusCode, res.body).toBe(200);
  }
  const p = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: h['writer']!, payload: { name: 'crm' } });
  pipelineId = p.json().data.id;
  const c = await t.app.inject({
    method: 'POST',
    url: '/v1/tables/customers/rows',
    headers: h['writer']!,
    payload: { name: 'Jane', pipeline_id: pipelineId, email: EMAIL, phone: PHONE, notes: NOTES, credit_limit: LIMIT },
  });
  expect(c.statusCode, c.body).toBe(201);
  // the writer's own answer is masked by the writer's rule
  expect(c.json().data).toMatchObject(EXPECTED.writer);
  customerId = c.json().data.id;
});
afterEach(async () => expectNoCheckedOutClients(t.db));
afterAll(async () => t?.close());

const pick = (row: Record<string, unknown>) => ({ email: row['email'], phone: row['phone'], notes: row['notes'], credit_limit: row['credit_limit'] });

/** Every read path, each giving the planted customer row as the role sees it. */
const PATHS: Array<[string, (role: string) => Promise<Record<string, unknown>>]> = [
  ['GET /v1 rows (list)', async (role) => (await get(`/v1/tables/customers/rows?id=eq.${customerId}`, role)).data[0]],
  ['GET /v1 rows/{pk}', async (role) => (await get(`/v1/tables/customers/rows/${customerId}`, role)).data],
  ['GET /v1 rows with select aliases and casts', async (role) => {
    const r = (await get(`/v1/tables/customers/rows/${customerId}?select=e:email,phone::text,notes,credit_limit`, role)).data;
    return { email: r.e, phone: r.phone, notes: r.notes, credit_limit: r.credit_limit };
  }],
  ['GET /v1 embed (to-many)', async (role) => (await get(`/v1/tables/pipelines/rows/${pipelineId}?select=id,customers(*)`, role)).data.customers[0]],
  ['GET /rest/v1 (PostgREST face)', async (role) => (await get(`/rest/v1/customers?id=eq.${customerId}`, role))[0]],
  ['GET /rest/v1 embed', async (role) => (await get(`/rest/v1/pipelines?id=eq.${pipelineId}&select=id,customers(*)`, role))[0].customers[0]],
  ['GET /rest/v1 spread', async (role) => (await get(`/rest/v1/customers?id=eq.${customerId}&select=id,...pipelines(name),email,phone,notes,credit_limit`, role))[0]],
  ['GraphQL list', async (role) => (await gql(`{ customers(where: { id: { _eq: ${customerId} } }) { nodes { email phone notes credit_limit } } }`, role)).customers.nodes[0]],
  ['GraphQL by pk', async (role) => (await gql(`{ customers_by_pk(id: ${customerId}) { email phone notes credit_limit } }`, role)).customers_by_pk],
  ['GraphQL relationship', async (role) => (await gql(`{ pipelines_by_pk(id: ${pipelineId}) { customers { email phone notes credit_limit } } }`, role)).pipelines_by_pk.customers[0]],
];

/** GraphQL types credit_limit as Int: a range mask (a string) answers null there. */
const expected = (path: string, role: keyof typeof EXPECTED) =>
  path.startsWith('GraphQL') && role !== 'admin' ? { ...EXPECTED[role], credit_limit: null } : EXPECTED[role];

async function gql(query: string, role: string) {
  const res = await t.app.inject({ method: 'POST', url: '/graphql', headers: h[role]!, payload: { query } });
  expect(res.statusCode, res.body).toBe(200);
  expect(res.json().errors, res.body).toBeUndefined();
  return res.json().data;
}

async function get(url: string, role: string) {
  const res = await t.app.inject({ url, headers: h[role]! });
  expect(res.statusCode, `${url} as ${role}: ${res.body}`).toBe(200);
  return res.json();
}

describe('each role sees what its rule says, on every read path', () => {
  const cases = PATHS.flatMap(([path, read]) => ROLES.map((role) => [path, role, read] as const));
  it.each(cases)('%s as %s', async (path, role, read) => {
    const served = t.app.graphqlCompiler.served;
    const row = await read(role);
    expect(pick(row)).toEqual(expected(path, role));
    expect(row).not.toHaveProperty('email_bidx');
    // GraphQL reads of declared tables are answered by the one-statement compiler, revealed per role in node
    if (path.startsWith('GraphQL')) expect(t.app.graphqlCompiler.served).toBe(served + 1);
  });

  it('compiled and resolver answers agree for every role, aliases and connections included', async () => {
    const query = `{ c: customers(where: { id: { _eq: ${customerId} } }) { edges { node { mail: email phone } } nodes { notes credit_limit } } p: pipelines_by_pk(id: ${pipelineId}) { customers(first: 5) { email notes } } }`;
    for (const role of ROLES) {
      const compiled = await t.app.inject({ method: 'POST', url: '/graphql', headers: h[role]!, payload: { query } });
      t.app.graphqlCompiler.enabled = false;
      try {
        const resolved = await t.app.inject({ method: 'POST', url: '/graphql', headers: h[role]!, payload: { query } });
        expect(compiled.json(), role).toEqual(resolved.json());
      } finally {
        t.app.graphqlCompiler.enabled = true;
      }
      expect(compiled.json().data.c.edges[0].node.mail, role).toEqual(EXPECTED[role].email);
    }
  });
});

describe('storage', () => {
  it('keeps ciphertext in the database (read as the owner), with the blind index beside it', async () => {
    const { rows } = await t.db.adminQuery<Record<string, string>>(`SELECT email, phone, notes, email_bidx FROM public.customers WHERE id = $1`, [customerId]);
    const row = rows[0]!;
    expect(row['email']).toMatch(/^sx1\.1\./);
    expect(row['phone']).toMatch(/^sx1\.1\./);
    expect(JSON.stringify(row)).not.toContain('planted@');
    expect(row['email_bidx']).toMatch(/^[A-Za-z0-9_-]{22}$/);
    // notes is masked, not encrypted: stored as written
    expect(row['notes']).toBe(NOTES);
  });

  it('does not decrypt a ciphertext copied into another tenant row (422 CIPHERTEXT_INVALID)', async () => {
    const g = await t.app.inject({ method: 'POST', url: '/v1/tables/customers/rows', headers: h['globex']!, payload: { name: 'Other', email: 'other@globex.test' } });
    expect(g.statusCode, g.body).toBe(201);
    const otherId = g.json().data.id;
    await t.db.adminQuery(`UPDATE public.customers SET email = (SELECT email FROM public.customers WHERE id = $1) WHERE id = $2`, [customerId, otherId]);
    const res = await t.app.inject({ url: `/v1/tables/customers/rows/${otherId}`, headers: h['globex']! });
    expect(res.statusCode).toBe(422);
    expect(res.json().error.code).toBe('CIPHERTEXT_INVALID');
    expect(res.body).not.toContain('planted');
  });

  it('keeps tenants apart: globex neither reads nor finds acme rows, even by blind index', async () => {
    const byPk = await t.app.inject({ url: `/v1/tables/customers/rows/${customerId}`, headers: h['globex']! });
    expect(byPk.statusCode).toBe(404);
    const byEmail = await t.app.inject({ url: `/v1/tables/customers/rows?email=eq.${EMAIL}`, headers: h['globex']! });
    expect(byEmail.json().data).toEqual([]);
    const patch = await t.app.inject({ method: 'PATCH', url: `/v1/tables/customers/rows/${customerId}`, headers: h['globex']!, payload: { email: 'x@y.z' } });
    expect(patch.statusCode).toBe(404);
    const audit = await t.app.inject({ url: '/v1/admin/compliance/audit', headers: h['globex']! });
    expect(audit.json().data.every((e: { tenant_id: string }) => e.tenant_id === 'globex')).toBe(true);
  });
});

describe('filters and order on declared columns', () => {
  it('finds a row by blind-index equality on /v1 and /rest/v1 (case-insensitive for emails)', async () => {
    const v1 = await get(`/v1/tables/customers/rows?email=eq.${EMAIL.toUpperCase()}&select=id`, 'reader');
    expect(v1.data).toEqual([{ id: customerId }]);
    const rest = await get(`/rest/v1/customers?email=eq.${EMAIL}&select=id`, 'reader');
    expect(rest).toEqual([{ id: customerId }]);
    const inList = await get(`/v1/tables/customers/rows?email=in.(nobody@x.y,${EMAIL})&select=id`, 'reader');
    expect(inList.data).toEqual([{ id: customerId }]);
    const none = await get(`/v1/tables/customers/rows?email=eq.nobody@example.com`, 'reader');
    expect(none.data).toEqual([]);
  });

  it.each([
    ['/v1 range on an encrypted column', '/v1/tables/customers/rows?email=gt.a', 'reader', 'ENCRYPTED_COLUMN_FILTER'],
    ['/v1 like on an encrypted column', '/v1/tables/customers/rows?email=like.*planted*', 'admin', 'ENCRYPTED_COLUMN_FILTER'],
    ['/v1 eq on an encrypted column without blind index', `/v1/tables/customers/rows?phone=eq.${encodeURIComponent(PHONE)}`, 'admin', 'ENCRYPTED_COLUMN_NOT_SEARCHABLE'],
    ['/v1 order by an encrypted column', '/v1/tables/customers/rows?order=email', 'admin', 'ENCRYPTED_COLUMN_ORDER'],
    ['/v1 filter on a column masked for the role', '/v1/tables/customers/rows?notes=like.planted*', 'reader', 'MASKED_COLUMN_FILTER'],
    ['/v1 order by a column masked for the role', '/v1/tables/customers/rows?order=credit_limit', 'reader', 'MASKED_COLUMN_FILTER'],
    ['/v1 filter on the blind index itself', '/v1/tables/customers/rows?email_bidx=eq.x', 'admin', 'BLIND_INDEX_FILTER'],
    ['/v1 embed filter on an encrypted column', `/v1/tables/pipelines/rows?select=id,customers(id)&customers.email=like.j*`, 'admin', 'ENCRYPTED_COLUMN_FILTER'],
    ['/v1 or= filter on an encrypted column', '/v1/tables/customers/rows?or=(email.like.j*,id.eq.1)', 'admin', 'ENCRYPTED_COLUMN_FILTER'],
    // the PostgREST face answers PGRST100 with the same message
    ['/rest/v1 like on an encrypted column', '/rest/v1/customers?email=like.*planted*', 'admin', 'is encrypted: only eq'],
    ['/rest/v1 order by an encrypted column', '/rest/v1/customers?order=email.desc', 'admin', 'is encrypted: it cannot be ordered by'],
  ])('refuses %s with 400 and a stable code', async (_what, url, role, code) => {
    const res = await t.app.inject({ url, headers: h[role]! });
    expect(res.statusCode, res.body).toBe(400);
    expect(JSON.stringify(res.json())).toContain(code);
    expect(res.body).not.toContain('planted-secret');
  });

  it('refuses a write of the blind index itself, and writes nothing', async () => {
    const before = (await t.db.adminQuery(`SELECT count(*)::int AS n FROM public.customers`)).rows[0];
    const res = await t.app.inject({ method: 'POST', url: '/v1/tables/customers/rows', headers: h['writer']!, payload: { name: 'X', email_bidx: 'forged' } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.code).toBe('BLIND_INDEX_READ_ONLY');
    expect((await t.db.adminQuery(`SELECT count(*)::int AS n FROM public.customers`)).rows[0]).toEqual(before);
  });
});

describe('writes on every write path encrypt', () => {
  it.each([
    ['PATCH /v1 rows/{pk}', async (email: string) => t.app.inject({ method: 'PATCH', url: `/v1/tables/customers/rows/${customerId}`, headers: h['writer']!, payload: { email } })],
    ['PATCH /v1 rows by blind-index filter', async (email: string) => t.app.inject({ method: 'PATCH', url: `/v1/tables/customers/rows?id=eq.${customerId}`, headers: h['writer']!, payload: { email } })],
    ['PATCH /rest/v1', async (email: string) => t.app.inject({ method: 'PATCH', url: `/rest/v1/customers?id=eq.${customerId}`, headers: h['writer']!, payload: { email } })],
    ['POST /v1/transactions', async (email: string) => t.app.inject({ method: 'POST', url: '/v1/transactions', headers: h['writer']!, payload: { operations: [{ op: 'update', table: 'customers', pk: String(customerId), set: { email } }] } })],
  ])('%s stores ciphertext and keeps the blind index current', async (_what, write) => {
    const next = `moved.${randomBytes(3).toString('hex')}@example.com`;
    const res = await write(next);
    expect(res.statusCode, res.body).toBeLessThan(300);
    expect(res.body).not.toContain(next);
    const { rows } = await t.db.adminQuery<{ email: string }>(`SELECT email FROM public.customers WHERE id = $1`, [customerId]);
    expect(rows[0]!.email).toMatch(/^sx1\./);
    const found = await get(`/v1/tables/customers/rows?email=eq.${next}&select=id,email`, 'admin');
    expect(found.data).toEqual([{ id: customerId, email: next }]);
    await t.app.inject({ method: 'PATCH', url: `/v1/tables/customers/rows/${customerId}`, headers: h['writer']!, payload: { email: EMAIL } });
  });
});

describe('GraphQL arguments and aggregates', () => {
  it.each([
    ['min of an encrypted column', `{ customers_aggregate { groups { min { email } } } }`, 'admin', 'MASKED_COLUMN_AGGREGATE'],
    ['max of a masked column', `{ customers_aggregate { groups { max { credit_limit } } } }`, 'reader', 'MASKED_COLUMN_AGGREGATE'],
    ['group by a masked column', `{ customers_aggregate(group_by: [credit_limit]) { groups { count } } }`, 'reader', 'MASKED_COLUMN_AGGREGATE'],
    ['a filter on an encrypted column', `{ customers(where: { email: { _eq: "${EMAIL}" } }) { nodes { id } } }`, 'admin', 'ENCRYPTED_COLUMN_FILTER'],
    ['a filter on a masked column', `{ customers(where: { notes: { _like: "planted%" } }) { nodes { id } } }`, 'reader', 'MASKED_COLUMN_FILTER'],
    ['an order by an encrypted column', `{ customers(order_by: [{ email: asc }]) { nodes { id } } }`, 'admin', 'ENCRYPTED_COLUMN_ORDER'],
  ])('refuses %s with a coded 400', async (_what, query, role, code) => {
    const res = await t.app.inject({ method: 'POST', url: '/graphql', headers: h[role]!, payload: { query } });
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().errors[0].extensions.code).toBe(code);
    expect(res.body).not.toContain('planted');
  });

  it('allows count and aggregates of undeclared columns', async () => {
    const data = await gql(`{ customers_aggregate { groups { count max { id } } } }`, 'reader');
    expect(data.customers_aggregate.groups[0].count).toBeGreaterThan(0);
  });

  it('encrypts GraphQL mutations and answers the writer masked', async () => {
    const res = await t.app.inject({
      method: 'POST',
      url: '/graphql',
      headers: h['writer']!,
      payload: { query: `mutation { insert_customers_one(object: { name: "G", email: "graph.planted@example.com" }) { id email } }` },
    });
    expect(res.statusCode, res.body).toBe(200);
    const row = res.json().data.insert_customers_one;
    expect(row.email).toBe('g***@example.com');
    const { rows } = await t.db.adminQuery<{ email: string }>(`SELECT email FROM public.customers WHERE id = $1`, [row.id]);
    expect(rows[0]!.email).toMatch(/^sx1\./);
    const found = await get(`/v1/tables/customers/rows?email=eq.graph.planted@example.com&select=id`, 'reader');
    expect(found.data).toEqual([{ id: Number(row.id) }]);
  });
});

describe('change feed, row history, undo', () => {
  type Ev = { id: string; op: string; before: Record<string, unknown> | null; after: Record<string, unknown> | null };
  const events = async (url: string, role: string): Promise<Ev[]> => (await get(url, role)).data;

  it.each(['reader', 'writer', 'analyst', 'admin'] as const)('events carry ciphertext or the %s rule, never plaintext it may not see', async (role) => {
    for (const url of ['/v1/changes?table=customers&limit=100', `/v1/tables/customers/rows/${customerId}/history`]) {
      const list = await events(url, role);
      const insert = list.find((e) => e.op === 'insert' && e.after?.['id'] === customerId)!;
      expect(insert, url).toBeDefined();
      expect(insert.after!['email']).toMatch(/^sx1\./);
      expect(insert.after!['phone']).toMatch(/^sx1\./);
      expect(insert.after).not.toHaveProperty('email_bidx');
      const rule = EXPECTED[role];
      expect(insert.after!['notes']).toEqual(rule.notes === NOTES ? NOTES : rule.notes);
      expect(insert.after!['credit_limit']).toEqual(rule.credit_limit);
    }
  });

  it('undo answers the row as the role sees it, and restores the ciphertext', async () => {
    const before = (await t.db.adminQuery<{ email: string }>(`SELECT email FROM public.customers WHERE id = $1`, [customerId])).rows[0]!.email;
    const patch = await t.app.inject({ method: 'PATCH', url: `/v1/tables/customers/rows/${customerId}`, headers: h['writer']!, payload: { notes: 'changed' } });
    expect(patch.statusCode).toBe(200);
    const list = await events(`/v1/tables/customers/rows/${customerId}/history`, 'writer');
    const last = list[list.length - 1]!;
    const undo = await t.app.inject({ method: 'POST', url: `/v1/changes/${last.id}/undo`, headers: h['writer']! });
    expect(undo.statusCode, undo.body).toBe(200);
    expect(undo.json().data.row).toMatchObject(EXPECTED.writer);
    expect(undo.body).not.toContain(NOTES);
    const after = (await t.db.adminQuery<{ email: string; notes: string }>(`SELECT email, notes FROM public.customers WHERE id = $1`, [customerId])).rows[0]!;
    expect(after).toEqual({ email: before, notes: NOTES });
  });
});

describe('exports and analyst SQL', () => {
  it('streams encrypted columns as ciphertext and refuses columns the role reads masked', async () => {
    const ok = await t.app.inject({ url: `/v1/tables/customers/export?format=ndjson&select=id,email,phone&id=eq.${customerId}`, headers: h['reader']! });
    expect(ok.statusCode, ok.body).toBe(200);
    const row = JSON.parse(ok.body.trim().split('\n')[0]!);
    expect(row.email).toMatch(/^sx1\./);
    expect(ok.body).not.toContain('planted@');
    const csv = await t.app.inject({ url: `/v1/tables/customers/export?format=csv&select=id,email&id=eq.${customerId}`, headers: h['reader']! });
    expect(csv.statusCode).toBe(200);
    expect(csv.body).toContain('sx1.');
    expect(csv.body).not.toContain('email_bidx');
    for (const url of ['/v1/tables/customers/export?format=csv', '/v1/tables/customers/export?format=ndjson&select=id,notes']) {
      const res = await t.app.inject({ url, headers: h['reader']! });
      expect(res.statusCode, url).toBe(400);
      expect(res.json().error.code).toBe('EXPORT_MASKED_COLUMN');
    }
    const job = await t.app.inject({ method: 'POST', url: '/v1/exports', headers: h['reader']!, payload: { table: 'customers', format: 'csv' } });
    expect(job.statusCode).toBe(400);
    expect(job.json().error.code).toBe('EXPORT_MASKED_COLUMN');
    const admin = await t.app.inject({ url: `/v1/tables/customers/export?format=ndjson&id=eq.${customerId}`, headers: h['admin']! });
    expect(admin.statusCode).toBe(200);
    expect(JSON.parse(admin.body.trim()).notes).toBe(NOTES);
  });

  it.each([
    ['select notes from customers', 400, 'SQL_MASKED_COLUMN'],
    ['select * from customers', 400, 'SQL_MASKED_COLUMN'],
    ['select c from customers c', 400, 'SQL_MASKED_COLUMN'],
    ['select id from customers where credit_limit > 4000', 400, 'SQL_MASKED_COLUMN'],
    ['select max(x.credit_limit) from customers x', 400, 'SQL_MASKED_COLUMN'],
  ])('analyst SQL %s answers %s %s', async (sql, status, code) => {
    const res = await t.app.inject({ method: 'POST', url: '/v1/sql', headers: h['analyst']!, payload: { sql } });
    expect(res.statusCode, res.body).toBe(status);
    expect(res.json().error.code).toBe(code);
    const exp = await t.app.inject({ method: 'POST', url: '/v1/sql/export', headers: h['analyst']!, payload: { sql, format: 'csv' } });
    expect(exp.statusCode).toBe(status);
  });

  it('refuses a time series over a column the role reads masked', async () => {
    const res = await t.app.inject({ url: '/v1/tables/customers/timeseries?time=birth_date&bucket=1d&agg=avg:credit_limit', headers: h['reader']! });
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().error.code).toBe('MASKED_COLUMN_AGGREGATE');
  });

  it('lets the analyst read encrypted columns as ciphertext', async () => {
    const res = await t.app.inject({ method: 'POST', url: '/v1/sql', headers: h['analyst']!, payload: { sql: `select id, email, phone from customers where id = ${customerId}` } });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.body).toContain('sx1.');
    expect(res.body).not.toContain('planted@');
  });
});

describe('GraphQL live queries', () => {
  it('refuses a live query selecting declared columns (a push is not revealed per role), and filters on them as a query does', async () => {
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    const port = (t.app.server.address() as AddressInfo).port;
    const ws = new WebSocket(`ws://127.0.0.1:${port}/graphql`, 'graphql-transport-ws', { headers: h['reader']! });
    const messages: Array<{ id?: string; type: string; payload?: unknown }> = [];
    ws.on('message', (raw: Buffer) => messages.push(JSON.parse(raw.toString()) as { type: string }));
    await new Promise<void>((resolve, reject) => {
      ws.on('error', reject);
      ws.on('open', () => resolve());
    });
    try {
      ws.send(JSON.stringify({ type: 'connection_init', payload: {} }));
      const until = async (cond: () => boolean) => {
        for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
        expect(cond()).toBe(true);
      };
      await until(() => messages.some((m) => m.type === 'connection_ack'));
      const cases: Array<[string, string, string]> = [
        ['a', `subscription { live { customers_by_pk(id: ${customerId}) { id email } } }`, 'LIVE_QUERY_UNSUPPORTED'],
        ['b', `subscription { live { customers(where: { notes: { _like: "planted%" } }) { nodes { id } } } }`, 'MASKED_COLUMN_FILTER'],
      ];
      for (const [id, query, code] of cases) {
        ws.send(JSON.stringify({ id, type: 'subscribe', payload: { query } }));
        await until(() => messages.some((m) => m.id === id && m.type === 'error'));
        const err = messages.find((m) => m.id === id && m.type === 'error')!.payload as Array<{ extensions?: { code?: string } }>;
        expect(err[0]?.extensions?.code).toBe(code);
      }
      expect(JSON.stringify(messages)).not.toContain('planted');
    } finally {
      ws.close();
    }
  });
});

describe('access audit', () => {
  it('records plaintext reads (not masked ones) with actor, role, columns, rows and request id; pages by cursor', async () => {
    const res = await t.app.inject({ url: `/v1/tables/customers/rows?id=eq.${customerId}`, headers: { ...h['admin']!, 'x-request-id': 'audit-probe-1' } });
    expect(res.statusCode).toBe(200);
    await t.app.inject({ url: `/v1/tables/customers/rows?id=eq.${customerId}`, headers: { ...h['reader']!, 'x-request-id': 'audit-probe-2' } });
    const page = await get('/v1/admin/compliance/audit?request_id=audit-probe-1', 'admin');
    expect(page.data).toHaveLength(1);
    expect(page.data[0]).toMatchObject({ tenant_id: 'acme', role: 'admin', table_name: 'customers', columns: ['credit_limit', 'email', 'notes', 'phone'], row_count: 1, request_id: 'audit-probe-1', api_key_id: null });
    const masked = await get('/v1/admin/compliance/audit?request_id=audit-probe-2', 'admin');
    expect(masked.data).toEqual([]);
    // the compiled GraphQL path records its plaintext reads too
    const served = t.app.graphqlCompiler.served;
    const g = await t.app.inject({ method: 'POST', url: '/graphql', headers: { ...h['admin']!, 'x-request-id': 'audit-probe-3' }, payload: { query: `{ customers_by_pk(id: ${customerId}) { email notes } }` } });
    expect(g.statusCode, g.body).toBe(200);
    expect(t.app.graphqlCompiler.served).toBe(served + 1);
    const viaGraphql = await get('/v1/admin/compliance/audit?request_id=audit-probe-3', 'admin');
    expect(viaGraphql.data).toHaveLength(1);
    expect(viaGraphql.data[0]).toMatchObject({ role: 'admin', table_name: 'customers', columns: ['email', 'notes'], row_count: 1 });
    const first = await get('/v1/admin/compliance/audit?limit=1', 'admin');
    expect(first.next_cursor).toEqual(expect.any(String));
    const second = await get(`/v1/admin/compliance/audit?limit=1&cursor=${first.next_cursor}`, 'admin');
    expect(Number(second.data[0].id)).toBeLessThan(Number(first.data[0].id));
    const all = await get('/v1/admin/compliance/audit?tenant=acme', 'platform');
    expect(all.data.length).toBeGreaterThan(0);
  });

  it.each([
    ['a bad cursor', '/v1/admin/compliance/audit?cursor=nope', 'admin', 400, 'INVALID_CURSOR'],
    ['a bad timestamp', '/v1/admin/compliance/audit?since=yesterday', 'admin', 400, 'INVALID_TIMESTAMP'],
    ['an unknown parameter', '/v1/admin/compliance/audit?secret=1', 'admin', 400, 'VALIDATION_FAILED'],
    ['a reader', '/v1/admin/compliance/audit', 'reader', 403, 'ROLE_FORBIDDEN'],
  ])('answers %s with a coded 4xx', async (_what, url, role, status, code) => {
    const res = await t.app.inject({ url, headers: h[role]! });
    expect(res.statusCode).toBe(status);
    expect(res.json().error.code).toBe(code);
  });
});

describe('logs', () => {
  it('never carry planted plaintext', async () => {
    // an error path with a sensitive value in the URL and body
    await t.app.inject({ method: 'POST', url: '/v1/tables/customers/rows', headers: h['writer']!, payload: { name: 'X', email: NOTES, nope: 1 } });
    await t.app.inject({ url: `/v1/tables/customers/rows?email=like.${NOTES}`, headers: h['reader']! });
    await t.app.inject({ url: '/v1/admin/compliance/audit', headers: h['admin']! });
    const all = lines.join('');
    expect(all.length).toBeGreaterThan(0);
    for (const secret of [EMAIL, PHONE, NOTES, 'jane.planted']) expect(all).not.toContain(secret);
  });
});
