/**
 * The compliance gaps of issue 15: materialized views may not read declared columns (both orders),
 * result-cache hits are audited and never cross roles or policies, declaring a column encrypted
 * converts the plaintext already stored (a job, under concurrent reads and writes, change log too),
 * un-declaring encryption is refused while ciphertext remains, and data-API writes of a column keyed
 * per subject use the subject's key, so erasure crypto-shreds them. Bad input: coded 4xx, nothing written.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import type pg from 'pg';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createJobs, type JobsService, type JobView } from '../src/jobs/queues.js';
import { startWorkers, type WorkerRuntime } from '../src/jobs/runtime.js';
import type { SessionContext } from '../src/db/session.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { REDIS_URL } from './helpers/databases.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';

const log = pino({ level: 'silent' });
const RING = `k1:${randomBytes(32).toString('base64')}`;
const ctxOf = (tenant: string): SessionContext => ({ requestId: 'test', tenantId: tenant, actor: 'test', role: 'admin' });

describe('compliance gaps', () => {
  const prefix = `test-${randomUUID()}`;
  const cachePrefix = `strata-test-cache-${randomUUID()}`;
  const backupDir = mkdtempSync(join(tmpdir(), 'strata-cgaps-'));
  let t: TestApp;
  let jobs: JobsService;
  let workers: WorkerRuntime;
  let h: Record<string, Record<string, string>>;
  let pipelineId: number;

  const q = <R extends pg.QueryResultRow = Record<string, unknown>>(text: string, values?: unknown[]) => t.db.adminQuery<R>(text, values);
  const asTenant = <R extends pg.QueryResultRow = Record<string, unknown>>(tenant: string, text: string, values?: unknown[]) =>
    t.db.withTenant(ctxOf(tenant), (tx) => tx.query<R>(text, values));
  const put = (url: string, body: unknown) => t.app.inject({ method: 'PUT', url, headers: h['platform']!, payload: body as object });
  const declarations = async () => JSON.stringify((await q(`SELECT * FROM strata.compliance_columns ORDER BY 1, 2`)).rows);
  const waitJob = (id: string, timeout = 60_000) =>
    vi.waitFor(
      async () => {
        const v: JobView = await jobs.get({ requestId: 'test', tenantId: null, actor: 'test', role: 'platform_admin' }, id);
        if (v.state === 'failed') throw Object.assign(new Error(`job ${id} failed: ${v.error}`), { final: true });
        if (v.state !== 'completed') throw new Error(`job ${id} is ${v.state}`);
        return v;
      },
      { timeout, interval: 100 },
    );

  beforeAll(async () => {
    jobs = createJobs({ redisUrl: REDIS_URL, prefix, log });
    t = await createTestApp({
      jobs,
      env: { ENCRYPTION_MASTER_KEYS: RING, BACKUP_DIR: backupDir, CACHE_ENABLED: 'true', CACHE_TABLES: 'customers', CACHE_PREFIX: cachePrefix },
    });
    h = { platform: await t.auth('platform_admin', null) };
    for (const r of ['admin', 'writer', 'reader', 'analyst'] as const) h[r] = await t.auth(r, 'acme');
    h['globex'] = await t.auth('admin', 'globex');
    workers = startWorkers({ redisUrl: REDIS_URL, prefix, log, db: t.db, queues: ['compliance'], cancelPollMs: 50 });
    const p = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: h['writer']!, payload: { name: 'crm' } });
    pipelineId = p.json().data.id;
  }, 90_000);
  afterEach(async () => expectNoCheckedOutClients(t.db));
  afterAll(async () => {
    await workers?.close({ timeoutMs: 5_000 });
    if (jobs) for (const queue of Object.values(jobs.queues)) await queue.obliterate({ force: true });
    const r = new Redis(REDIS_URL);
    for (const p of [prefix, cachePrefix]) {
      const keys = await r.keys(`${p}:*`);
      if (keys.length) await r.del(...keys);
    }
    await r.quit();
    await t?.close();
    rmSync(backupDir, { recursive: true, force: true });
  });

  describe('materialized views and declarations', () => {
    beforeAll(async () => {
      const res = await put('/v1/admin/compliance/columns/customers/email', { pii: 'email', masks: { reader: 'partial', writer: 'partial' }, plaintext_roles: ['admin'] });
      expect(res.statusCode, res.body).toBe(200);
    });
    const createView = (name: string, sql: string) => t.app.inject({ method: 'POST', url: '/v1/admin/views', headers: h['platform']!, payload: { name, sql } });
    const viewState = async (name: string) =>
      JSON.stringify([
        (await q(`SELECT count(*)::int n FROM strata.views WHERE name = $1`, [name])).rows,
        (await q(`SELECT to_regclass($1) IS NOT NULL AS m, to_regclass($2) IS NOT NULL AS v`, [`strata_matviews.${name}`, `strata_views.${name}`])).rows,
      ]);

    it.each([
      ['selects it', 'SELECT id, tenant_id, email FROM customers'],
      ['selects * over it', 'SELECT * FROM customers'],
      ['filters on it', "SELECT id, tenant_id FROM customers WHERE email LIKE 'j%'"],
      ['aggregates it', 'SELECT tenant_id, max(email) AS m FROM customers GROUP BY tenant_id'],
      ['joins on it', 'SELECT c.tenant_id, p.id FROM customers c JOIN pipelines p ON p.name = c.email'],
      ['reads its whole row', 'SELECT c.tenant_id, row_to_json(c)::text AS r FROM customers c'],
    ])('refuses a view that %s: 400 VIEW_DECLARED_COLUMN, nothing created', async (_what, sql) => {
      const name = `v_${randomBytes(4).toString('hex')}`;
      const before = await viewState(name);
      const res = await createView(name, sql);
      expect(res.statusCode, res.body).toBe(400);
      expect(res.json().error.code).toBe('VIEW_DECLARED_COLUMN');
      expect(res.json().error.message).toContain('customers.');
      expect(res.json().error.message).not.toContain('@');
      expect(await viewState(name)).toBe(before);
    });

    it('allows a view over undeclared columns; every role reads it without a declared column', async () => {
      await t.app.inject({ method: 'POST', url: '/v1/tables/customers/rows', headers: h['writer']!, payload: { name: 'ViewJane', email: 'view.jane@example.com', pipeline_id: pipelineId } });
      const res = await createView('cust_names', 'SELECT id, tenant_id, name FROM customers');
      expect(res.statusCode, res.body).toBe(201);
      await q(`REFRESH MATERIALIZED VIEW strata_matviews.cust_names`);
      for (const role of ['admin', 'writer', 'reader', 'analyst']) {
        const r = await t.app.inject({ url: '/v1/views/cust_names/rows', headers: h[role]! });
        expect(r.statusCode, r.body).toBe(200);
        expect(r.body).not.toContain('view.jane@example.com');
        expect(r.json().data.map((x: { name: string }) => x.name)).toContain('ViewJane');
        expect(Object.keys(r.json().data[0]).sort()).toEqual(['id', 'name', 'tenant_id']);
      }
      // another tenant sees none of acme's rows through it
      const g = await t.app.inject({ url: '/v1/views/cust_names/rows', headers: h['globex']! });
      expect(g.json().data).toEqual([]);
    });

    it('refuses declaring a column an existing view reads: 409 COLUMN_USED_BY_VIEW, nothing declared', async () => {
      const before = await declarations();
      const res = await put('/v1/admin/compliance/columns/customers/name', { pii: 'name', masks: { reader: 'partial' }, plaintext_roles: ['admin'] });
      expect(res.statusCode, res.body).toBe(409);
      expect(res.json().error).toMatchObject({ code: 'COLUMN_USED_BY_VIEW' });
      expect(res.json().error.message).toContain('cust_names');
      expect(await declarations()).toBe(before);
      // once the view is gone the declaration goes through (and is removed again for the next tests)
      expect((await t.app.inject({ method: 'DELETE', url: '/v1/admin/views/cust_names', headers: h['platform']! })).statusCode).toBe(204);
    });
  });

  describe('result cache and the access audit', () => {
    let id: number;
    beforeAll(async () => {
      const c = await t.app.inject({ method: 'POST', url: '/v1/tables/customers/rows', headers: h['writer']!, payload: { name: 'Cachy', email: 'cachy.planted@example.com' } });
      id = c.json().data.id;
    });
    const read = (role: string, requestId: string) =>
      t.app.inject({ url: `/v1/tables/customers/rows/${id}?select=id,email`, headers: { ...h[role]!, 'x-request-id': requestId } });
    const auditOf = async (requestId: string) => {
      await t.app.services.compliance.audit.flush();
      return (await q<{ actor: string; role: string; table_name: string; columns: string[]; row_count: number; path: string }>(
        `SELECT actor, role, table_name, columns, row_count, path FROM strata.compliance_audit WHERE request_id = $1`,
        [requestId],
      )).rows;
    };

    it('a hit that returns plaintext is audited like a fresh read', async () => {
      const r1 = `cache-a-${randomUUID()}`;
      const r2 = `cache-b-${randomUUID()}`;
      const first = await read('admin', r1);
      const second = await read('admin', r2);
      expect(first.json().data.email).toBe('cachy.planted@example.com');
      expect(second.json().data.email).toBe('cachy.planted@example.com');
      expect(second.headers['x-cache']).toBe('hit');
      const a1 = await auditOf(r1);
      const a2 = await auditOf(r2);
      expect(a1).toHaveLength(1);
      expect(a2).toEqual(a1);
      expect(a2[0]).toMatchObject({ role: 'admin', table_name: 'customers', columns: ['email'], row_count: 1, path: 'rows' });
      // a masked hit records nothing (as a masked fresh read)
      const r3 = `cache-c-${randomUUID()}`;
      await read('reader', `cache-warm-${randomUUID()}`);
      const hit = await read('reader', r3);
      expect(hit.headers['x-cache']).toBe('hit');
      expect(await auditOf(r3)).toEqual([]);
    });

    it("a reader never gets an admin's cached answer, nor one cached under another policy", async () => {
      await read('admin', `warm-${randomUUID()}`);
      const r = await read('reader', `r-${randomUUID()}`);
      expect(r.json().data.email).toBe('c***@example.com');
      // the policy changes: the reader's cached partial answer is not served under the new rule
      expect((await put('/v1/admin/compliance/columns/customers/email', { pii: 'email', masks: { reader: 'hash', writer: 'partial' }, plaintext_roles: ['admin'] })).statusCode).toBe(200);
      const after = await read('reader', `r-${randomUUID()}`);
      expect(after.headers['x-cache']).not.toBe('hit');
      expect(after.json().data.email).toMatch(/^hash:[0-9a-f]{16}$/);
      expect((await put('/v1/admin/compliance/columns/customers/email', { pii: 'email', masks: { reader: 'partial', writer: 'partial' }, plaintext_roles: ['admin'] })).statusCode).toBe(200);
    });
  });

  describe('declaring a column encrypted converts the rows written before', () => {
    const expected = new Map<string, string>();

    it('encrypts every plaintext value (table and change log) under concurrent reads and writes; nothing lost', async () => {
      for (const tenant of ['acme', 'globex']) {
        const { rows } = await asTenant<{ id: string; phone: string }>(
          tenant,
          `INSERT INTO public.customers (name, phone) SELECT 'Conv ' || g, '+1 555 ' || lpad(g::text, 4, '0') || ' ${tenant}' FROM generate_series(1, 700) g RETURNING id::text, phone`,
        );
        for (const r of rows) expected.set(r.id, r.phone);
      }
      // a plaintext that merely starts like a ciphertext is plaintext too
      const odd = (await asTenant<{ id: string }>('acme', `INSERT INTO public.customers (name, phone) VALUES ('Odd', 'sx1.not-a-ciphertext') RETURNING id::text`)).rows[0]!.id;
      expected.set(odd, 'sx1.not-a-ciphertext');
      const res = await put('/v1/admin/compliance/columns/customers/phone', { encrypted: true, pii: 'phone', masks: { reader: 'partial' }, plaintext_roles: ['admin'] });
      expect(res.statusCode, res.body).toBe(200);
      const conv = res.json().conversion;
      expect(conv).toMatchObject({ table: 'customers', column: 'phone', state: 'running' });
      expect(conv.job_id).toEqual(expect.any(String));
      // concurrently: writes through the API (new rows, updates) and reads that must always decrypt or mask
      const acmeIds = [...expected.keys()].slice(0, 40);
      let stop = false;
      const errors: string[] = [];
      const writer = (async () => {
        for (let i = 0; !stop && i < 200; i++) {
          const idToUpdate = acmeIds[i % acmeIds.length]!;
          const phone = `+44 20 7946 ${String(1000 + i)}`;
          const u = await t.app.inject({ method: 'PATCH', url: `/v1/tables/customers/rows/${idToUpdate}`, headers: h['admin']!, payload: { phone } });
          if (u.statusCode !== 200) errors.push(`update ${u.statusCode} ${u.body}`);
          else expected.set(idToUpdate, phone);
          const c = await t.app.inject({ method: 'POST', url: '/v1/tables/customers/rows', headers: h['admin']!, payload: { name: `New ${i}`, phone: `+1 777 000 ${1000 + i}` } });
          if (c.statusCode !== 201) errors.push(`insert ${c.statusCode} ${c.body}`);
          else expected.set(String(c.json().data.id), `+1 777 000 ${1000 + i}`);
        }
      })();
      const reader = (async () => {
        for (let i = 0; !stop && i < 500; i++) {
          const r = await t.app.inject({ url: '/v1/tables/customers/rows?select=id,phone&limit=200&order=id.desc', headers: h['reader']! });
          if (r.statusCode !== 200) errors.push(`read ${r.statusCode} ${r.body}`);
          else for (const row of r.json().data as Array<{ phone: string | null }>) if (row.phone !== null && !/^\*+\d{0,4}$/.test(row.phone)) errors.push(`unmasked ${row.phone}`);
        }
      })();
      await waitJob(conv.job_id, 120_000);
      stop = true;
      await Promise.all([writer, reader]);
      expect(errors).toEqual([]);
      const done = await t.app.inject({ url: `/v1/admin/compliance/conversions/${conv.id}`, headers: h['platform']! });
      expect(done.json().data).toMatchObject({ state: 'completed' });
      // the rows rewritten by the API before the job reached them were already ciphertext: not counted
      expect(done.json().data.done).toBeGreaterThan(1300);
      expect(done.json().data.done).toBeLessThanOrEqual(1401);
      // read as the owner: no plaintext left in the table or the change log
      const left = await q<{ n: number }>(`SELECT count(*)::int n FROM public.customers WHERE phone IS NOT NULL AND phone !~ '^sx1\\.[0-9]+\\.'`);
      expect(left.rows[0]!.n).toBe(0);
      const logLeft = await q<{ n: number }>(
        `SELECT count(*)::int n FROM strata.changes WHERE table_name = 'customers' AND ((before ->> 'phone') !~ '^sx1\\.[0-9]+\\.' OR (after ->> 'phone') !~ '^sx1\\.[0-9]+\\.')`,
      );
      expect(logLeft.rows[0]!.n).toBe(0);
      // nothing lost: every value reads back as last written, per tenant
      for (const [tenant, headers] of [['acme', h['admin']!], ['globex', h['globex']!]] as const) {
        const got = new Map<string, string>();
        let url = '/v1/tables/customers/rows?select=id,phone&limit=1000&phone=not.is.null';
        for (;;) {
          const r = await t.app.inject({ url, headers });
          expect(r.statusCode, r.body).toBe(200);
          for (const row of r.json().data as Array<{ id: number; phone: string }>) got.set(String(row.id), row.phone);
          const next = r.json().next_cursor;
          if (!next) break;
          url = `/v1/tables/customers/rows?select=id,phone&limit=1000&phone=not.is.null&cursor=${next}`;
        }
        const ownIds = (await asTenant<{ id: string }>(tenant, `SELECT id::text FROM customers WHERE phone IS NOT NULL`)).rows.map((r) => r.id);
        for (const i of ownIds) if (expected.has(i)) expect(got.get(i), `row ${i}`).toBe(expected.get(i));
        expect(ownIds.filter((i) => expected.has(i)).length).toBeGreaterThanOrEqual(700);
      }
    }, 180_000);

    it('refuses un-declaring encryption while ciphertext remains: 409 COLUMN_HOLDS_CIPHERTEXT, nothing changed', async () => {
      const before = await declarations();
      const a = await t.app.inject({ method: 'DELETE', url: '/v1/admin/compliance/columns/customers/phone', headers: h['platform']! });
      expect(a.statusCode, a.body).toBe(409);
      expect(a.json().error.code).toBe('COLUMN_HOLDS_CIPHERTEXT');
      const b = await put('/v1/admin/compliance/columns/customers/phone', { encrypted: false, pii: 'phone', plaintext_roles: ['admin'] });
      expect(b.statusCode, b.body).toBe(409);
      expect(b.json().error.code).toBe('COLUMN_HOLDS_CIPHERTEXT');
      expect(await declarations()).toBe(before);
      // a declaration already fully encrypted starts no conversion
      const again = await put('/v1/admin/compliance/columns/customers/phone', { encrypted: true, pii: 'phone', masks: { reader: 'partial' }, plaintext_roles: ['admin'] });
      expect(again.statusCode).toBe(200);
      expect(again.json().conversion).toBeNull();
    });

    it('resumes from the saved position after a stop, and fills the blind index of a searchable column', async () => {
      // 1,200 plaintext emails of acme (written before the declaration); the declaration is made in SQL so
      // no worker picks the conversion up: the test runs it by hand, stopping it after its first batch
      await asTenant('acme', `UPDATE customers SET email = NULL`);
      await asTenant('acme', `INSERT INTO customers (name, email) SELECT 'Resume ' || g, 'resume' || g || '@example.com' FROM generate_series(1, 1200) g`);
      await q(`UPDATE strata.compliance_columns SET encrypted = true, searchable = true WHERE table_name = 'customers' AND column_name = 'email'`);
      await t.app.services.compliance.enforcement.refresh();
      const id = randomUUID();
      await q(`INSERT INTO strata.compliance_conversions (id, table_name, column_name, requested_by) VALUES ($1, 'customers', 'email', 'test')`, [id]);
      const conversion = t.app.services.complianceOps.conversion;
      const stop = new AbortController();
      await expect(conversion.run(id, async (done) => { if (done > 0) stop.abort(); }, stop.signal)).rejects.toThrow('cancelled');
      const mid = await conversion.get(id);
      expect(mid).toMatchObject({ state: 'running', done: 500, position: { phase: 'table' } });
      const half = await q<{ enc: number; plain: number }>(`SELECT count(*) FILTER (WHERE email LIKE 'sx1.%')::int enc, count(*) FILTER (WHERE email NOT LIKE 'sx1.%')::int plain FROM customers WHERE name LIKE 'Resume %'`);
      expect(half.rows[0]).toEqual({ enc: 500, plain: 700 });
      // reads meanwhile: both forms, one answer
      const mixed = await t.app.inject({ url: '/v1/tables/customers/rows?select=email&name=like.Resume*&limit=1000', headers: h['admin']! });
      expect(mixed.statusCode, mixed.body).toBe(200);
      expect(new Set(mixed.json().data.map((r: { email: string }) => r.email)).size).toBe(1000);
      const out = await conversion.run(id, async () => undefined);
      expect(out.conversion).toMatchObject({ state: 'completed', done: 1200 });
      const after = await q<{ n: number }>(`SELECT count(*)::int n FROM customers WHERE email IS NOT NULL AND (email !~ '^sx1\\.' OR email_bidx IS NULL)`);
      expect(after.rows[0]!.n).toBe(0);
      // the blind index works for rows converted in either run
      for (const n of [3, 1100]) {
        const r = await t.app.inject({ url: `/v1/tables/customers/rows?email=eq.resume${n}@example.com&select=name`, headers: h['reader']! });
        expect(r.json().data, r.body).toEqual([{ name: `Resume ${n}` }]);
      }
    }, 60_000);

    it('a conversion of another id is 404 CONVERSION_NOT_FOUND', async () => {
      const r = await t.app.inject({ url: `/v1/admin/compliance/conversions/${randomUUID()}`, headers: h['platform']! });
      expect(r.statusCode).toBe(404);
      expect(r.json().error.code).toBe('CONVERSION_NOT_FOUND');
      const tenantAdmin = await t.app.inject({ url: `/v1/admin/compliance/conversions/${randomUUID()}`, headers: h['admin']! });
      expect(tenantAdmin.statusCode).toBe(403);
    });
  });

  describe('data-API writes under per-subject keys', () => {
    beforeAll(async () => {
      expect((await put('/v1/admin/compliance/subjects/customers', { columns: ['name'], action: 'delete' })).statusCode).toBe(200);
    });

    it('refuses bad subject-key declarations with a coded 400 and declares nothing', async () => {
      const before = await declarations();
      const cases: Array<[string, unknown, string]> = [
        ['notes', { subject_column: 'name', pii: 'free_text' }, 'SUBJECT_KEY_NEEDS_ENCRYPTED'],
        ['notes', { encrypted: true, subject_column: 'nope' }, 'UNKNOWN_COLUMN'],
        ['notes', { encrypted: true, subject_column: 'pipeline_id' }, 'SUBJECT_COLUMN_NOT_DECLARED'],
        ['notes', { encrypted: true, subject_column: 'notes' }, 'INVALID_SUBJECT_COLUMN'],
        ['notes', { encrypted: true, subject_column: 'bad name!' }, 'VALIDATION_FAILED'],
      ];
      for (const [col, body, code] of cases) {
        const r = await put(`/v1/admin/compliance/columns/customers/${col}`, body);
        expect(r.statusCode, JSON.stringify(body)).toBe(400);
        expect(r.json().error.code, JSON.stringify(body)).toBe(code);
      }
      expect(await declarations()).toBe(before);
    });

    it('writes through /v1, /rest/v1 and GraphQL encrypt under the subject key; erasure shreds it with an exact report', async () => {
      const d = await put('/v1/admin/compliance/columns/customers/notes', { encrypted: true, subject_column: 'name', pii: 'free_text', masks: { reader: 'partial' }, plaintext_roles: ['admin'] });
      expect(d.statusCode, d.body).toBe(200);
      expect(d.json().data.subject_column).toBe('name');
      const subjects = { v1: `subj-v1-${randomUUID()}`, rest: `subj-rest-${randomUUID()}`, gql: `subj-gql-${randomUUID()}` };
      const note = (k: string) => `planted note of ${k}`;
      const v1 = await t.app.inject({ method: 'POST', url: '/v1/tables/customers/rows', headers: h['writer']!, payload: { name: subjects.v1, notes: note('v1') } });
      expect(v1.statusCode, v1.body).toBe(201);
      const rest = await t.app.inject({ method: 'POST', url: '/rest/v1/customers', headers: { ...h['writer']!, prefer: 'return=representation' }, payload: { name: subjects.rest, notes: note('rest') } });
      expect(rest.statusCode, rest.body).toBe(201);
      const gql = await t.app.inject({ method: 'POST', url: '/graphql', headers: h['writer']!, payload: { query: `mutation { insert_customers_one(object: { name: "${subjects.gql}", notes: "${note('gql')}" }) { id notes } }` } });
      expect(gql.statusCode, gql.body).toBe(200);
      expect(gql.json().errors, gql.body).toBeUndefined();
      // an update through each API re-encrypts under the subject's key too
      const upd = await t.app.inject({ method: 'PATCH', url: `/rest/v1/customers?name=eq.${subjects.rest}`, headers: h['writer']!, payload: { name: subjects.rest, notes: note('rest2') } });
      expect(upd.statusCode, upd.body).toBeLessThan(300);
      const stored = await asTenant<{ name: string; notes: string }>('acme', `SELECT name, notes FROM customers WHERE name = ANY($1)`, [Object.values(subjects)]);
      expect(stored.rows).toHaveLength(3);
      for (const r of stored.rows) {
        expect(r.notes).toMatch(/^sxs1\.[0-9a-f]{32}\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{22,}$/);
        expect(r.notes).not.toContain('planted');
      }
      // each key belongs to its subject
      const refs = await q<{ subject_id: string; key_ref: string }>(`SELECT subject_id, key_ref FROM strata.subject_keys WHERE tenant_id = 'acme' AND subject_id = ANY($1)`, [Object.values(subjects)]);
      expect(refs.rows).toHaveLength(3);
      for (const r of stored.rows) expect(r.notes.split('.')[1]).toBe(refs.rows.find((k) => k.subject_id === r.name)!.key_ref);
      // reads: admin plaintext on every API, reader masked
      const admin = await t.app.inject({ url: `/v1/tables/customers/rows?name=eq.${subjects.v1}&select=notes`, headers: h['admin']! });
      expect(admin.json().data[0].notes).toBe(note('v1'));
      const restRead = await t.app.inject({ url: `/rest/v1/customers?name=eq.${subjects.rest}&select=notes`, headers: h['admin']! });
      expect(restRead.json()[0].notes).toBe(note('rest2'));
      const gqlRead = await t.app.inject({ method: 'POST', url: '/graphql', headers: h['admin']!, payload: { query: `{ customers(where: { name: { _eq: "${subjects.gql}" } }) { nodes { notes } } }` } });
      expect(gqlRead.json().data.customers.nodes[0].notes).toBe(note('gql'));
      const masked = await t.app.inject({ url: `/v1/tables/customers/rows?name=eq.${subjects.v1}&select=notes`, headers: h['reader']! });
      expect(masked.json().data[0].notes).toBe('p***');
      // another tenant cannot read acme's subject keys: a ciphertext copied into a globex row reads as null
      const copied = stored.rows[0]!.notes;
      await asTenant('globex', `INSERT INTO customers (name, notes) VALUES ('copy', $1)`, [copied]);
      const g = await t.app.inject({ url: '/v1/tables/customers/rows?name=eq.copy&select=notes', headers: h['globex']! });
      expect(g.json().data[0].notes).toBeNull();
      // erase each subject: exact report, and the captured ciphertext no longer decrypts
      const fields = t.app.services.complianceOps.subjectFields;
      for (const r of stored.rows) {
        expect(await fields.decrypt('acme', r.notes, 'customers', 'notes')).toContain('planted note');
        const e = await t.app.inject({ method: 'DELETE', url: `/v1/subjects/${encodeURIComponent(r.name)}`, headers: h['admin']! });
        expect(e.statusCode, e.body).toBe(200);
        const report = e.json().data;
        expect(report.crypto_shredded).toBe(true);
        expect(report.tables).toEqual([expect.objectContaining({ table: 'customers', action: 'delete', deleted: 1, anonymized: 0 })]);
        expect(report.totals).toMatchObject({ rows: 1, deleted: 1, anonymized: 0 });
        await expect(fields.decrypt('acme', r.notes, 'customers', 'notes')).rejects.toMatchObject({ statusCode: 422, code: 'KEY_NOT_FOUND' });
      }
      expect((await asTenant('acme', `SELECT 1 FROM customers WHERE name = ANY($1)`, [Object.values(subjects)])).rowCount).toBe(0);
      expect((await q(`SELECT 1 FROM strata.subject_keys WHERE tenant_id = 'acme' AND subject_id = ANY($1)`, [Object.values(subjects)])).rowCount).toBe(0);
    });

    it('a write of a subject-keyed column without its subject column is 400 SUBJECT_COLUMN_REQUIRED and writes nothing', async () => {
      const c = await t.app.inject({ method: 'POST', url: '/v1/tables/customers/rows', headers: h['writer']!, payload: { name: 'Keep', notes: 'first' } });
      const id = c.json().data.id;
      const before = (await asTenant<{ notes: string }>('acme', `SELECT notes FROM customers WHERE id = $1`, [id])).rows[0]!.notes;
      const changes = (await q<{ n: number }>(`SELECT count(*)::int n FROM strata.changes WHERE table_name = 'customers'`)).rows[0]!.n;
      for (const req of [
        { method: 'PATCH' as const, url: `/v1/tables/customers/rows/${id}`, payload: { notes: 'second' } },
        { method: 'PATCH' as const, url: `/rest/v1/customers?id=eq.${id}`, payload: { notes: 'second' } },
      ]) {
        const r = await t.app.inject({ ...req, headers: h['writer']! });
        expect(r.statusCode, r.body).toBe(400);
        // /v1 answers the code; the PostgREST face answers PGRST100 with the same message
        if (req.url.startsWith('/v1')) expect(r.json().error.code).toBe('SUBJECT_COLUMN_REQUIRED');
        else expect(r.json()).toMatchObject({ code: 'PGRST100' });
        expect(JSON.stringify(r.json())).toContain('must also give name');
      }
      const g = await t.app.inject({ method: 'POST', url: '/graphql', headers: h['writer']!, payload: { query: `mutation { update_customers_by_pk(pk_columns: { id: ${id} }, _set: { notes: "second" }) { id } }` } });
      expect(JSON.stringify(g.json().errors ?? [])).toContain('SUBJECT_COLUMN_REQUIRED');
      expect((await asTenant<{ notes: string }>('acme', `SELECT notes FROM customers WHERE id = $1`, [id])).rows[0]!.notes).toBe(before);
      expect((await q<{ n: number }>(`SELECT count(*)::int n FROM strata.changes WHERE table_name = 'customers'`)).rows[0]!.n).toBe(changes);
    });
  });
});
