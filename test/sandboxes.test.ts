/**
 * Tenant sandboxes: POST /v1/admin/sandboxes copies one tenant's rows into a database of its own
 * (a job with progress, run by a real BullMQ worker), requests naming the sandbox (X-Strata-Sandbox
 * or a `sandbox` token claim) are served from it, and DELETE or expiry (the sweep) drops it. The
 * isolation tests try to reach another tenant's rows and the real data through a sandbox; every bad
 * input is a 4xx that writes nothing (no record, no database, no real row).
 */
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { SignJWT } from 'jose';
import pg from 'pg';
import WebSocket from 'ws';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createJobs, type JobsService, type JobView } from '../src/jobs/queues.js';
import { startWorkers, type WorkerRuntime } from '../src/jobs/runtime.js';
import { copySandbox, createSandboxService, databaseFor } from '../src/services/sandboxes/index.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { TEST_JWT_SECRET } from './helpers/constants.js';
import { REDIS_URL, urlFor } from './helpers/databases.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';

const log = pino({ level: 'silent' });
type Headers = Record<string, string>;

async function waitFor<T>(fn: () => Promise<T | undefined>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('tenant sandboxes', () => {
  const prefix = `test-${randomUUID()}`;
  let t: TestApp;
  let jobs: JobsService;
  let workers: WorkerRuntime;
  const h: Record<string, Headers> = {};
  let acmeBox: { id: string; job_id: string };

  const inject = (method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, headers: Headers, payload?: unknown) =>
    t.app.inject({ method, url, headers, ...(payload === undefined ? {} : { payload: payload as object }) });
  const finished = async (id: string): Promise<JobView> =>
    waitFor(async () => {
      const v = (await inject('GET', `/v1/jobs/${id}`, h['platform']!)).json().data as JobView;
      return ['completed', 'failed', 'cancelled'].includes(v.state) ? v : undefined;
    });
  const sandboxDatabases = async () =>
    (await t.db.adminQuery<{ datname: string }>("SELECT datname FROM pg_database WHERE datname LIKE 'strata\\_sbx\\_%' ORDER BY 1")).rows.map((r) => r.datname);
  const records = async () => (await t.db.adminQuery<{ id: string; tenant_id: string; name: string }>('SELECT id, tenant_id, name FROM strata.sandboxes ORDER BY created_at')).rows;
  /** Rows per tenant and table in the real database. */
  const realCounts = async () =>
    (
      await t.db.adminQuery<{ k: string; n: number }>(
        `SELECT tenant_id || ':' || t AS k, n FROM (
           SELECT tenant_id, 'pipelines' AS t, count(*)::int AS n FROM pipelines GROUP BY 1
           UNION ALL SELECT tenant_id, 'pipeline_runs', count(*)::int FROM pipeline_runs GROUP BY 1
           UNION ALL SELECT tenant_id, 'run_steps', count(*)::int FROM run_steps GROUP BY 1
           UNION ALL SELECT tenant_id, 'run_logs', count(*)::int FROM run_logs GROUP BY 1) x ORDER BY 1`,
      )
    ).rows;
  /** Run `fn` on a sandbox's database as the owner (no RLS for a superuser: it sees every row there). */
  const onSandbox = async <T>(id: string, fn: (c: pg.Client) => Promise<T>): Promise<T> => {
    const c = new pg.Client({ connectionString: urlFor(databaseFor(id), t.database.url) });
    await c.connect();
    try {
      return await fn(c);
    } finally {
      await c.end();
    }
  };
  const sandboxToken = (role: string, tenant: string, sandbox: unknown) =>
    new SignJWT({ role, tenant_id: tenant, sandbox: sandbox as string })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(`tester@${tenant}`)
      .setIssuedAt()
      .setExpirationTime('10m')
      .sign(new TextEncoder().encode(TEST_JWT_SECRET));
  const create = async (headers: Headers, body: Record<string, unknown>) => {
    const res = await inject('POST', '/v1/admin/sandboxes', headers, body);
    expect(res.statusCode, res.body).toBe(202);
    const out = res.json<{ data: { id: string; status: string; tenant: string; name: string }; job_id: string }>();
    expect(out.data.status).toBe('creating');
    const job = await finished(out.job_id);
    expect(job.state, JSON.stringify(job)).toBe('completed');
    return { id: out.data.id, job_id: out.job_id, job };
  };

  beforeAll(async () => {
    jobs = createJobs({ redisUrl: REDIS_URL, prefix, log });
    t = await createTestApp({ seed: true, jobs, env: { SANDBOX_MAX_PER_TENANT: '2' } });
    workers = startWorkers({ redisUrl: REDIS_URL, prefix, log, db: t.db, queues: ['sandboxes'], cancelPollMs: 50 });
    for (const [k, role, tenant] of [
      ['acme', 'admin', 'acme'],
      ['acmeWriter', 'writer', 'acme'],
      ['acmeReader', 'reader', 'acme'],
      ['acmeAnalyst', 'analyst', 'acme'],
      ['globex', 'admin', 'globex'],
      ['platform', 'platform_admin', null],
    ] as const) {
      h[k] = await t.auth(role, tenant);
    }
    acmeBox = await create(h['acme']!, { tenant: 'acme', name: 'trial' });
  });
  afterAll(async () => {
    await workers?.close({ timeoutMs: 5_000 });
    if (t) {
      // never leave a sandbox database behind, whatever the tests did
      const { rows } = await t.db.adminQuery<{ database: string }>('SELECT database FROM strata.sandboxes');
      for (const r of rows) await t.db.closeSandbox(r.database);
      for (const r of rows) await t.db.adminQuery(`DROP DATABASE IF EXISTS "${r.database}" WITH (FORCE)`);
      await t.close();
    }
    if (jobs) {
      for (const q of Object.values(jobs.queues)) await q.obliterate({ force: true });
      await jobs.close();
    }
  });

  it('copies exactly the tenant rows of every tenant table, as a job reporting progress', async () => {
    const job = acmeBox && (await finished(acmeBox.job_id));
    const real = (await realCounts()).filter((r) => r.k.startsWith('acme:'));
    const total = real.reduce((a, r) => a + r.n, 0);
    expect(total).toBeGreaterThan(100);
    expect(job.progress).toMatchObject({ percent: 100 });
    const copied = await onSandbox(acmeBox.id, async (c) =>
      (
        await c.query<{ k: string; n: number }>(
          `SELECT tenant_id || ':' || t AS k, n FROM (
             SELECT tenant_id, 'pipelines' AS t, count(*)::int AS n FROM pipelines GROUP BY 1
             UNION ALL SELECT tenant_id, 'pipeline_runs', count(*)::int FROM pipeline_runs GROUP BY 1
             UNION ALL SELECT tenant_id, 'run_steps', count(*)::int FROM run_steps GROUP BY 1
             UNION ALL SELECT tenant_id, 'run_logs', count(*)::int FROM run_logs GROUP BY 1) x ORDER BY 1`,
        )
      ).rows,
    );
    // no globex row reached the sandbox, every acme row did
    expect(copied).toEqual(real);
    const view = (await inject('GET', `/v1/admin/sandboxes/${acmeBox.id}`, h['acme']!)).json().data;
    expect(view).toMatchObject({ tenant: 'acme', name: 'trial', status: 'ready', anonymized: false, rows: total });
    // the copy is the same rows, value for value
    const sample = (await t.db.adminQuery("SELECT to_jsonb(p) AS j FROM pipelines p WHERE tenant_id = 'acme' ORDER BY id LIMIT 20")).rows;
    const inBox = await onSandbox(acmeBox.id, async (c) => (await c.query('SELECT to_jsonb(p) AS j FROM pipelines p ORDER BY id LIMIT 20')).rows);
    expect(inBox).toEqual(sample);
    // the copy knows which migrations it has (so `strata migrate` can be tried on it), and no other tenant's record
    const applied = (await t.db.adminQuery<{ id: string }>('SELECT id FROM strata.schema_migrations ORDER BY id')).rows;
    expect(await onSandbox(acmeBox.id, async (c) => (await c.query<{ id: string }>('SELECT id FROM strata.schema_migrations ORDER BY id')).rows)).toEqual(applied);
    expect(await onSandbox(acmeBox.id, async (c) => (await c.query<{ id: string }>('SELECT id FROM strata.tenants')).rows)).toEqual([{ id: 'acme' }]);
    // no change events were produced by the copy
    expect(await onSandbox(acmeBox.id, async (c) => (await c.query<{ n: number }>('SELECT count(*)::int AS n FROM strata.changes')).rows[0]!.n)).toBe(0);
  });

  it('serves reads and writes from the sandbox when X-Strata-Sandbox names it; the real rows do not change', async () => {
    const before = await realCounts();
    const sbx = { ...h['acmeWriter']!, 'x-strata-sandbox': 'trial' };
    const created = await inject('POST', '/v1/tables/pipelines/rows', sbx, { name: 'only in the sandbox' });
    expect(created.statusCode, created.body).toBe(201);
    expect(created.headers['x-strata-sandbox']).toBe('trial');
    const id = created.json().data.id as number;
    // the new key continues after the copied ones (sequences moved)
    const maxReal = (await t.db.adminQuery<{ m: number }>("SELECT max(id)::int AS m FROM pipelines WHERE tenant_id = 'acme'")).rows[0]!.m;
    expect(id).toBeGreaterThan(maxReal);
    const inBox = await inject('GET', `/v1/tables/pipelines/rows?name=eq.only in the sandbox`, sbx);
    expect(inBox.json().data).toHaveLength(1);
    const real = await inject('GET', `/v1/tables/pipelines/rows?name=eq.only in the sandbox`, h['acmeWriter']!);
    expect(real.json().data).toHaveLength(0);
    // a bulk change on the sandbox, thrown away with it
    const wiped = await inject('DELETE', '/v1/tables/run_logs/rows?id=gte.0', sbx);
    expect(wiped.statusCode, wiped.body).toBeLessThan(300);
    expect((await inject('GET', '/v1/tables/run_logs/rows?limit=5', sbx)).json().data).toHaveLength(0);
    expect((await inject('GET', '/v1/tables/run_logs/rows?limit=5', h['acmeWriter']!)).json().data.length).toBeGreaterThan(0);
    // transactions, analyst SQL, GraphQL and /rest/v1 are served from the sandbox too
    const tx = await inject('POST', '/v1/transactions', sbx, { operations: [{ op: 'insert', table: 'pipelines', rows: { name: 'tx in the sandbox' } }] });
    expect(tx.statusCode, tx.body).toBe(200);
    const sql = await inject('POST', '/v1/sql', { ...h['acmeAnalyst']!, 'x-strata-sandbox': 'trial' }, { sql: "select count(*)::int as n from pipelines where name like '% in the sandbox'" });
    expect(sql.statusCode, sql.body).toBe(200);
    expect(JSON.stringify(sql.json())).toContain('"n":2');
    const gql = await inject('POST', '/graphql', sbx, { query: '{ run_logs(first: 1) { nodes { id } } }' });
    expect(gql.statusCode, gql.body).toBe(200);
    expect(gql.json().data.run_logs.nodes).toEqual([]);
    const rest = await inject('GET', '/rest/v1/pipelines?select=id&name=eq.tx%20in%20the%20sandbox', sbx);
    expect(rest.statusCode, rest.body).toBe(200);
    expect(rest.json()).toHaveLength(1);
    expect(await realCounts()).toEqual(before);
    await expectNoCheckedOutClients(t.db);
  });

  it('a sandbox cannot reach another tenant: not by header, not by a foreign tenant_id, not through the copy', async () => {
    const before = await realCounts();
    // globex naming acme's sandbox finds nothing
    const g = await inject('GET', '/v1/tables/pipelines/rows', { ...h['globex']!, 'x-strata-sandbox': 'trial' });
    expect([g.statusCode, g.json().error.code]).toEqual([404, 'SANDBOX_NOT_FOUND']);
    expect((await inject('GET', `/v1/admin/sandboxes/${acmeBox.id}`, h['globex']!)).statusCode).toBe(404);
    expect((await inject('DELETE', `/v1/admin/sandboxes/${acmeBox.id}`, h['globex']!)).statusCode).toBe(404);
    expect((await inject('GET', '/v1/admin/sandboxes', h['globex']!)).json().data).toEqual([]);
    // inside the sandbox, RLS still holds: a row for globex is refused by PostgreSQL
    const forged = await inject('POST', '/v1/tables/pipelines/rows', { ...h['acmeWriter']!, 'x-strata-sandbox': 'trial' }, { name: 'forged', tenant_id: 'globex' });
    expect(forged.statusCode).toBeGreaterThanOrEqual(400);
    expect(forged.statusCode).toBeLessThan(500);
    expect(await onSandbox(acmeBox.id, async (c) => (await c.query<{ n: number }>("SELECT count(*)::int AS n FROM pipelines WHERE tenant_id <> 'acme'")).rows[0]!.n)).toBe(0);
    // analyst SQL in the sandbox sees only acme rows even when it asks for others
    const sql = await inject('POST', '/v1/sql', { ...h['acmeAnalyst']!, 'x-strata-sandbox': 'trial' }, { sql: "select count(*)::int as n from pipelines where tenant_id = 'globex'" });
    expect(JSON.stringify(sql.json())).toContain('"n":0');
    // globex's own sandbox holds globex's rows only
    const gbox = await create(h['globex']!, { tenant: 'globex', name: 'trial' });
    const tenants = await onSandbox(gbox.id, async (c) => (await c.query<{ t: string }>('SELECT DISTINCT tenant_id AS t FROM pipelines')).rows.map((r) => r.t));
    expect(tenants).toEqual(['globex']);
    const gRows = await inject('GET', '/v1/tables/pipelines/rows?name=eq.only in the sandbox', { ...h['globex']!, 'x-strata-sandbox': 'trial' });
    expect(gRows.json().data).toEqual([]);
    expect(await realCounts()).toEqual(before);
    await inject('DELETE', `/v1/admin/sandboxes/${gbox.id}`, h['globex']!);
  });

  it('a token with a sandbox claim reaches that sandbox only, never the real data', async () => {
    const before = await realCounts();
    const claim = { authorization: `Bearer ${await sandboxToken('writer', 'acme', 'trial')}` };
    const w = await inject('POST', '/v1/tables/pipelines/rows', claim, { name: 'written with a sandbox token' });
    expect(w.statusCode, w.body).toBe(201);
    expect((await inject('GET', '/v1/tables/pipelines/rows?name=eq.written with a sandbox token', { ...h['acmeWriter']!, 'x-strata-sandbox': 'trial' })).json().data).toHaveLength(1);
    // a header naming another sandbox, or a route not served on a sandbox: refused, nothing done
    const other = await inject('GET', '/v1/tables/pipelines/rows', { ...claim, 'x-strata-sandbox': 'other' });
    expect([other.statusCode, other.json().error.code]).toEqual([403, 'SANDBOX_MISMATCH']);
    const claimAdmin = { authorization: `Bearer ${await sandboxToken('admin', 'acme', 'trial')}` };
    for (const [method, url, payload] of [
      ['GET', '/v1/changes', undefined],
      ['POST', '/v1/exports', { table: 'pipelines', format: 'csv' }],
      ['POST', '/v1/webhooks', { url: 'https://example.com/hook', tables: ['pipelines'] }],
      ['GET', '/v1/tables/pipelines/rows/1/history', undefined],
    ] as const) {
      const res = await inject(method, url, claimAdmin, payload);
      expect({ url, status: res.statusCode, code: res.json().error?.code }).toEqual({ url, status: 400, code: 'SANDBOX_NOT_SUPPORTED' });
    }
    const admin = await inject('POST', '/v1/admin/sandboxes', claimAdmin, { tenant: 'acme', name: 'nested' });
    expect([admin.statusCode, admin.json().error.code]).toEqual([400, 'SANDBOX_NOT_SUPPORTED']);
    // a malformed claim is not a credential
    const bad = await inject('GET', '/v1/tables/pipelines/rows', { authorization: `Bearer ${await sandboxToken('writer', 'acme', 'Not A Name')}` });
    expect([bad.statusCode, bad.json().error.code]).toEqual([401, 'TOKEN_INVALID']);
    const unknown = await inject('GET', '/v1/tables/pipelines/rows', { authorization: `Bearer ${await sandboxToken('writer', 'acme', 'nosuch')}` });
    expect([unknown.statusCode, unknown.json().error.code]).toEqual([404, 'SANDBOX_NOT_FOUND']);
    expect(await realCounts()).toEqual(before);
  });

  it('refuses every bad request with a 4xx naming the problem, writing nothing', async () => {
    const realBefore = await realCounts();
    const recBefore = await records();
    const dbsBefore = await sandboxDatabases();
    const cases: Array<[Headers, string, string, unknown, number, string]> = [
      [h['acme']!, 'POST', '/v1/admin/sandboxes', { tenant: 'acme', name: 'Bad Name' }, 400, 'VALIDATION_FAILED'],
      [h['acme']!, 'POST', '/v1/admin/sandboxes', { tenant: 'acme' }, 400, 'VALIDATION_FAILED'],
      [h['acme']!, 'POST', '/v1/admin/sandboxes', { tenant: 'acme', name: 'x', extra: 1 }, 400, 'VALIDATION_FAILED'],
      [h['acme']!, 'POST', '/v1/admin/sandboxes', { tenant: 'acme', name: 'x', ttl_s: 5 }, 400, 'VALIDATION_FAILED'],
      [h['acme']!, 'POST', '/v1/admin/sandboxes', { tenant: 'acme', name: 'x', anonymize: 'yes' }, 400, 'VALIDATION_FAILED'],
      [h['acme']!, 'POST', '/v1/admin/sandboxes', { tenant: "acme'; drop table pipelines; --", name: 'x' }, 400, 'VALIDATION_FAILED'],
      [h['acme']!, 'POST', '/v1/admin/sandboxes', { tenant: 'globex', name: 'x' }, 403, 'TENANT_MISMATCH'],
      [h['acmeWriter']!, 'POST', '/v1/admin/sandboxes', { tenant: 'acme', name: 'x' }, 403, 'ROLE_FORBIDDEN'],
      [h['platform']!, 'POST', '/v1/admin/sandboxes', { tenant: 'nosuch', name: 'x' }, 404, 'TENANT_NOT_FOUND'],
      [h['acme']!, 'POST', '/v1/admin/sandboxes', { tenant: 'acme', name: 'trial' }, 409, 'SANDBOX_EXISTS'],
      [h['acme']!, 'DELETE', '/v1/admin/sandboxes/not-a-uuid', undefined, 400, 'VALIDATION_FAILED'],
      [h['acme']!, 'DELETE', `/v1/admin/sandboxes/${randomUUID()}`, undefined, 404, 'SANDBOX_NOT_FOUND'],
      [h['acmeReader']!, 'DELETE', `/v1/admin/sandboxes/${acmeBox.id}`, undefined, 403, 'ROLE_FORBIDDEN'],
      [{ ...h['acmeWriter']!, 'x-strata-sandbox': 'Bad Name!' }, 'POST', '/v1/tables/pipelines/rows', { name: 'x' }, 400, 'BAD_SANDBOX_NAME'],
      [{ ...h['acmeWriter']!, 'x-strata-sandbox': 'nosuch' }, 'POST', '/v1/tables/pipelines/rows', { name: 'x' }, 404, 'SANDBOX_NOT_FOUND'],
      [{ ...h['platform']!, 'x-strata-sandbox': 'trial' }, 'GET', '/v1/tables/pipelines/rows', undefined, 400, 'TENANT_REQUIRED'],
    ];
    for (const [headers, method, url, payload, status, code] of cases) {
      const res = await inject(method as 'POST', url, headers, payload);
      expect({ url, payload, status: res.statusCode, code: res.json().error?.code }).toEqual({ url, payload, status, code });
      expect(res.json().error.message.length).toBeGreaterThan(5);
    }
    // the per-tenant bound: acme has one; a second is fine, a third is refused before anything is made
    const second = await create(h['acme']!, { tenant: 'acme', name: 'second' });
    const third = await inject('POST', '/v1/admin/sandboxes', h['acme']!, { tenant: 'acme', name: 'third' });
    expect([third.statusCode, third.json().error.code]).toEqual([409, 'SANDBOX_LIMIT_REACHED']);
    expect((await inject('DELETE', `/v1/admin/sandboxes/${second.id}`, h['acme']!)).statusCode).toBe(200);
    expect(await records()).toEqual(recBefore);
    expect(await sandboxDatabases()).toEqual(dbsBefore);
    expect(await realCounts()).toEqual(realBefore);
  });

  it('expires: refused at once with 410 after its expiry, then dropped by the sweep', async () => {
    const box = await create(h['platform']!, { tenant: 'acme', name: 'short', ttl_s: 60 });
    expect((await inject('GET', '/v1/tables/pipelines/rows?limit=1', { ...h['acmeReader']!, 'x-strata-sandbox': 'short' })).statusCode).toBe(200);
    await t.db.adminQuery("UPDATE strata.sandboxes SET expires_at = now() - interval '1 second' WHERE id = $1", [box.id]);
    const res = await inject('GET', '/v1/tables/pipelines/rows?limit=1', { ...h['acmeReader']!, 'x-strata-sandbox': 'short' });
    expect([res.statusCode, res.json().error.code]).toEqual([410, 'SANDBOX_EXPIRED']);
    expect((await inject('GET', `/v1/admin/sandboxes/${box.id}`, h['acme']!)).json().data.status).toBe('expired');
    expect(await sandboxDatabases()).toContain(databaseFor(box.id));
    const swept = await createSandboxService({ db: t.db, log, ttlS: 60, maxPerTenant: 2 }).sweep();
    expect(swept).toBe(1);
    expect(await sandboxDatabases()).not.toContain(databaseFor(box.id));
    expect((await records()).map((r) => r.id)).not.toContain(box.id);
  });

  it('a tenant larger than SANDBOX_MAX_ROWS fails the copy with SANDBOX_TOO_LARGE and leaves no database', async () => {
    const id = randomUUID();
    await t.db.adminQuery("INSERT INTO strata.sandboxes (id, tenant_id, name, database, created_by, expires_at) VALUES ($1, 'acme', 'big', $2, 'test', now() + interval '1 hour')", [
      id,
      databaseFor(id),
    ]);
    const ac = new AbortController();
    await expect(
      copySandbox({ db: t.db, schema: t.app.services.schema, maxRows: 10, statementTimeoutMs: 60_000 }, id, { progress: async () => undefined, signal: ac.signal, log }),
    ).rejects.toMatchObject({ code: 'SANDBOX_TOO_LARGE' });
    const rec = (await t.db.adminQuery<{ status: string; error: string }>('SELECT status, error FROM strata.sandboxes WHERE id = $1', [id])).rows[0];
    expect(rec?.status).toBe('failed');
    expect(rec?.error).toMatch(/SANDBOX_MAX_ROWS/);
    expect(await sandboxDatabases()).not.toContain(databaseFor(id));
    const res = await inject('GET', '/v1/tables/pipelines/rows', { ...h['acmeReader']!, 'x-strata-sandbox': 'big' });
    expect([res.statusCode, res.json().error.code]).toEqual([409, 'SANDBOX_NOT_READY']);
    await t.db.adminQuery('DELETE FROM strata.sandboxes WHERE id = $1', [id]);
  });

  it('holds the per-tenant bound under concurrent creations, and a DELETE while copying leaves nothing behind', async () => {
    const before = await realCounts();
    const answers = await Promise.all(['c1', 'c2', 'c3'].map((name) => inject('POST', '/v1/admin/sandboxes', h['globex']!, { tenant: 'globex', name })));
    const statuses = answers.map((a) => a.statusCode).sort();
    expect(statuses).toEqual([202, 202, 409]);
    expect(answers.find((a) => a.statusCode === 409)!.json().error.code).toBe('SANDBOX_LIMIT_REACHED');
    const made = answers.filter((a) => a.statusCode === 202).map((a) => a.json<{ data: { id: string }; job_id: string }>());
    // deleted at once, while their copies are queued or running
    for (const m of made) expect((await inject('DELETE', `/v1/admin/sandboxes/${m.data.id}`, h['globex']!)).statusCode).toBe(200);
    for (const m of made) await finished(m.job_id);
    await waitFor(async () => {
      const left = (await sandboxDatabases()).filter((d) => made.some((m) => d === databaseFor(m.data.id)));
      return left.length === 0 ? true : undefined;
    }, 30_000);
    expect((await records()).filter((r) => r.tenant_id === 'globex')).toEqual([]);
    expect(await realCounts()).toEqual(before);
  });

  it('anonymize: true copies the rows through the compliance anonymizer: no original of a declared column, same counts, foreign keys valid', async () => {
    const declared: Array<[string, string, string]> = [
      ['pipelines', 'name', 'name'],
      ['pipelines', 'description', 'other'],
      ['run_steps', 'name', 'other'],
      ['run_logs', 'message', 'other'],
    ];
    const put = (table: string, column: string, body: unknown) =>
      inject('PUT' as 'POST', `/v1/admin/compliance/columns/${table}/${column}`, h['platform']!, body);
    for (const [table, column, pii] of declared) {
      const r = await put(table, column, { pii });
      expect(r.statusCode, r.body).toBe(200);
    }
    let boxId: string | undefined;
    try {
      const before = await realCounts();
      const box = await create(h['globex']!, { tenant: 'globex', name: 'anon', anonymize: true });
      boxId = box.id;
      expect(box.job.progress).toMatchObject({ percent: 100 });
      expect((box.job.result as { faked_columns: string[] }).faked_columns).toEqual(expect.arrayContaining(declared.map(([t, c]) => `${t}.${c}`)));
      const view = (await inject('GET', `/v1/admin/sandboxes/${box.id}`, h['globex']!)).json().data;
      const real = (await realCounts()).filter((r) => r.k.startsWith('globex:'));
      expect(view).toMatchObject({ status: 'ready', anonymized: true, rows: real.reduce((a, r) => a + r.n, 0) });
      // the same rows per table (no acme row), and the real data untouched
      const copied = await onSandbox(box.id, async (c) =>
        (
          await c.query<{ k: string; n: number }>(
            `SELECT tenant_id || ':' || t AS k, n FROM (
               SELECT tenant_id, 'pipelines' AS t, count(*)::int AS n FROM pipelines GROUP BY 1
               UNION ALL SELECT tenant_id, 'pipeline_runs', count(*)::int FROM pipeline_runs GROUP BY 1
               UNION ALL SELECT tenant_id, 'run_steps', count(*)::int FROM run_steps GROUP BY 1
               UNION ALL SELECT tenant_id, 'run_logs', count(*)::int FROM run_logs GROUP BY 1) x ORDER BY 1`,
          )
        ).rows,
      );
      expect(copied).toEqual(real);
      expect(await realCounts()).toEqual(before);
      // no original value of a declared column is in the sandbox (of any tenant)
      for (const [table, column] of declared) {
        const originals = new Set((await t.db.adminQuery<{ v: string }>(`SELECT "${column}" AS v FROM ${table} WHERE "${column}" IS NOT NULL`)).rows.map((r) => r.v));
        const inBox = await onSandbox(box.id, async (c) => (await c.query<{ v: string }>(`SELECT "${column}" AS v FROM ${table} WHERE "${column}" IS NOT NULL`)).rows.map((r) => r.v));
        expect(inBox.length, `${table}.${column}`).toBeGreaterThan(0);
        expect(inBox.filter((v) => originals.has(v)), `${table}.${column}`).toEqual([]);
      }
      // every key and foreign key of the real schema exists in the sandbox, validated over the faked rows
      const constraints = `SELECT conrelid::regclass::text AS rel, conname, contype, convalidated FROM pg_constraint
                            WHERE connamespace = 'public'::regnamespace AND contype IN ('p', 'u', 'f') ORDER BY 1, 2`;
      const inBox = await onSandbox(box.id, async (c) => (await c.query(constraints)).rows);
      expect(inBox).toEqual((await t.db.adminQuery(constraints)).rows);
      expect(inBox.every((c) => c['convalidated'] === true)).toBe(true);
      expect(
        await onSandbox(box.id, async (c) =>
          (await c.query<{ n: number }>('SELECT count(*)::int AS n FROM run_steps s WHERE NOT EXISTS (SELECT 1 FROM pipeline_runs r WHERE r.tenant_id = s.tenant_id AND r.id = s.run_id)')).rows[0]!.n,
        ),
      ).toBe(0);
      // served like any sandbox, under row-level security: globex reads its faked rows, nothing else
      const served = await inject('GET', '/v1/tables/pipelines/rows?limit=1000', { ...(await t.auth('reader', 'globex')), 'x-strata-sandbox': 'anon' });
      expect(served.statusCode, served.body).toBe(200);
      const rows = served.json<{ data: Array<{ tenant_id: string; name: string }> }>().data;
      expect(rows.length).toBe(real.find((r) => r.k === 'globex:pipelines')!.n);
      expect(rows.every((r) => r.tenant_id === 'globex')).toBe(true);
      const realNames = new Set((await t.db.adminQuery<{ name: string }>("SELECT name FROM pipelines WHERE tenant_id = 'globex'")).rows.map((r) => r.name));
      expect(rows.filter((r) => realNames.has(r.name))).toEqual([]);
      // written through the sandbox: its sequences continue after the copied keys
      const w = await inject('POST', '/v1/tables/pipelines/rows', { ...(await t.auth('writer', 'globex')), 'x-strata-sandbox': 'anon' }, { name: 'new in the anonymized sandbox' });
      expect(w.statusCode, w.body).toBe(201);
      // and another tenant never reaches it
      const other = await inject('GET', '/v1/tables/pipelines/rows', { ...h['acmeReader']!, 'x-strata-sandbox': 'anon' });
      expect([other.statusCode, other.json().error.code]).toEqual([404, 'SANDBOX_NOT_FOUND']);
    } finally {
      if (boxId) await inject('DELETE', `/v1/admin/sandboxes/${boxId}`, h['globex']!);
      for (const [table, column] of declared) await inject('DELETE', `/v1/admin/compliance/columns/${table}/${column}`, h['platform']!);
    }
  });

  it('refuses GraphQL subscriptions and live queries on a sandbox (the WebSocket upgrade) with 400 SANDBOX_NOT_SUPPORTED', async () => {
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    const port = (t.app.server.address() as AddressInfo).port;
    const upgrade = (headers: Headers) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/graphql`, 'graphql-transport-ws', { headers });
        ws.on('unexpected-response', (_req, res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        ws.on('open', () => {
          ws.close();
          resolve({ status: 101, body: '' });
        });
        ws.on('error', (err) => {
          if (!String(err).includes('Unexpected server response')) reject(err);
        });
      });
    const byHeader = await upgrade({ ...h['acmeReader']!, 'x-strata-sandbox': 'trial' });
    expect(byHeader.status).toBe(400);
    expect(byHeader.body).toContain('SANDBOX_NOT_SUPPORTED');
    const byClaim = await upgrade({ authorization: `Bearer ${await sandboxToken('reader', 'acme', 'trial')}` });
    expect(byClaim.status).toBe(400);
    expect(byClaim.body).toContain('SANDBOX_NOT_SUPPORTED');
    // the same credential without a sandbox still subscribes to the real data
    expect((await upgrade(h['acmeReader']!)).status).toBe(101);
  });

  it('DELETE drops the database; the name then serves nothing', async () => {
    const res = await inject('DELETE', `/v1/admin/sandboxes/${acmeBox.id}`, h['acme']!);
    expect(res.statusCode, res.body).toBe(200);
    expect(await sandboxDatabases()).not.toContain(databaseFor(acmeBox.id));
    const after = await inject('GET', '/v1/tables/pipelines/rows', { ...h['acmeReader']!, 'x-strata-sandbox': 'trial' });
    expect([after.statusCode, after.json().error.code]).toEqual([404, 'SANDBOX_NOT_FOUND']);
    expect((await inject('GET', '/v1/tables/pipelines/rows?limit=1', h['acmeReader']!)).statusCode).toBe(200);
    await expectNoCheckedOutClients(t.db);
  });
});
