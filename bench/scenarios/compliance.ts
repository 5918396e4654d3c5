/**
 * Compliance (issue 15), side by side in one run on one Strata server from dist/:
 *  - single-row read: GET /v1/tables/customers/rows/{id} (email and phone encrypted, the reader
 *    sees them partially masked: two AES-GCM decryptions and two masks per row) vs the same row of
 *    bench_customers_plain (same columns, nothing declared); target >= 0.8x;
 *  - single-row insert: POST of one row (two encryptions and a blind index) vs the plain table;
 *  - masked list page: 50 rows (100 decryptions) vs the plain table's 50 rows;
 *  - blind-index equality (?email=eq.x through customers_email_bidx_idx) vs a plain indexed lookup
 *    (?email=eq.x on bench_customers_plain's index on email).
 * Set-up (untimed): the declarations, BENCH_COMPLIANCE_ROWS rows of tenant 1 written through the
 * API (so they are encrypted with the tenant's key) and the same plaintext in the plain table. The
 * declarations, the rows and the plain table are removed at the end, so the other scenarios run
 * without declared columns. The audit flush (batched) happens off the measured path. The per-tenant
 * limits are off (LIMITS_ENABLED=false): every request is tenant 1's, and its rate limit would answer 429s.
 * Besides req/s, each pair reports the CPU per request of the server process and of its PostgreSQL
 * backends (user + system time over the run / requests served): it holds on a loaded machine where
 * req/s does not.
 */
import { createHash } from 'node:crypto';
import { SignJWT } from 'jose';
import pg from 'pg';
import { backendPidsOf, cannon, cpuTicks, DURATION, log, median, ROUNDS, startAndCheck, stop, strataTarget, variant, WARMUP, type Target } from '../lib.js';
import type { BenchContext, BenchScenario } from './types.js';

const PORT = Number(process.env['BENCH_COMPLIANCE_PORT'] ?? 3320);
const CONNECTIONS = Number(process.env['BENCH_COMPLIANCE_CONNECTIONS'] ?? 16);
const ROWS = Number(process.env['BENCH_COMPLIANCE_ROWS'] ?? 2000);
// fixed, so the tenant keys wrapped by an earlier run still unwrap
const MASTER = `bench:${createHash('sha256').update('strata-bench-master-key').digest('base64')}`;
const emailOf = (i: number) => `person.${i}@example.com`;

async function sql(ctx: BenchContext, fn: (c: pg.Client) => Promise<void>): Promise<void> {
  const c = new pg.Client({ connectionString: ctx.dbUrl });
  await c.connect();
  try {
    await fn(c);
  } finally {
    await c.end();
  }
}

async function setUp(ctx: BenchContext): Promise<void> {
  await sql(ctx, async (c) => {
    await c.query(`DELETE FROM strata.compliance_columns WHERE table_name = 'customers'`);
    await c.query(`DELETE FROM public.customers WHERE tenant_id = '1'`);
    await c.query(`DROP TABLE IF EXISTS public.bench_customers_plain`);
    await c.query(`CREATE TABLE public.bench_customers_plain (LIKE public.customers INCLUDING DEFAULTS INCLUDING IDENTITY, PRIMARY KEY (id))`);
    // the same indexes as customers (its (tenant_id, id) key serves the list page), email indexed instead of email_bidx
    await c.query(`CREATE UNIQUE INDEX ON public.bench_customers_plain (tenant_id, id)`);
    await c.query(`CREATE INDEX ON public.bench_customers_plain (tenant_id, email)`);
    await c.query(`ALTER TABLE public.bench_customers_plain ENABLE ROW LEVEL SECURITY`);
    await c.query(`ALTER TABLE public.bench_customers_plain FORCE ROW LEVEL SECURITY`);
    await c.query(`CREATE POLICY tenant_isolation ON public.bench_customers_plain USING (tenant_id = NULLIF(current_setting('strata.tenant_id', true), '')) WITH CHECK (tenant_id = NULLIF(current_setting('strata.tenant_id', true), ''))`);
    await c.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON public.bench_customers_plain TO strata_tenant`);
    // captured like customers, so the insert pair compares encryption, not change capture
    await c.query(`SELECT strata.enable_capture('public.bench_customers_plain')`);
    await c.query(`GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO strata_tenant`);
    await c.query(
      `INSERT INTO strata.compliance_columns (table_name, column_name, encrypted, searchable, pii, masks, plaintext_roles, declared_by) VALUES
        ('customers', 'email', true, true, 'email', '{"reader":"partial","writer":"partial"}', '{admin}', 'bench'),
        ('customers', 'phone', true, false, 'phone', '{"reader":"partial","writer":"partial"}', '{admin}', 'bench')`,
    );
    await c.query(
      `INSERT INTO public.bench_customers_plain (id, tenant_id, name, email, phone, notes)
       SELECT g, '1', 'Person ' || g, 'person.' || g || '@example.com', '+44 20 7946 ' || lpad(g::text, 4, '0'), 'note ' || g FROM generate_series(1, $1::int) g`,
      [ROWS],
    );
    await c.query(`SELECT setval(pg_get_serial_sequence('public.bench_customers_plain', 'id'), $1::int)`, [ROWS]);
  });
}

/** Planner statistics of both tables once their rows are in (so neither side runs on a plan guessed without them). */
async function analyze(ctx: BenchContext): Promise<void> {
  await sql(ctx, async (c) => {
    await c.query(`ANALYZE public.customers`);
    await c.query(`ANALYZE public.bench_customers_plain`);
  });
}

async function tearDown(ctx: BenchContext): Promise<void> {
  await sql(ctx, async (c) => {
    await c.query(`DELETE FROM strata.compliance_columns WHERE table_name = 'customers'`);
    await c.query(`DELETE FROM public.customers WHERE tenant_id = '1'`);
    await c.query(`DROP TABLE IF EXISTS public.bench_customers_plain`);
  });
}

const scenario: BenchScenario = {
  name: 'compliance',
  async run(ctx: BenchContext) {
    await setUp(ctx);
    const key = new TextEncoder().encode(ctx.secret);
    const writer = `Bearer ${await new SignJWT({ tenant_id: '1', role: 'writer' }).setProtectedHeader({ alg: 'HS256' }).setSubject('bench-writer').setExpirationTime('2h').sign(key)}`;
    const reader = ctx.tokens[1]!;
    const admin = `Bearer ${await new SignJWT({ tenant_id: '1', role: 'admin' }).setProtectedHeader({ alg: 'HS256' }).setSubject('bench-admin').setExpirationTime('2h').sign(key)}`;
    const base = strataTarget('STRATA-compliance', PORT, ctx.dbUrl, ctx.appUrl, ctx.tokens, { DB_POOL_MAX: '16', DB_POOL_MIN: '16', ENCRYPTION_MASTER_KEYS: MASTER, LIMITS_ENABLED: 'false' });
    const before = await backendPidsOf(ctx.dbUrl);
    const child = await startAndCheck(variant(base, 'STRATA-compliance', 'health', () => ({ method: 'GET', path: '/healthz', headers: {} }), () => true));
    const ids: number[] = [];
    const results: Record<string, number[]> = {};
    const cpu: Record<string, { node: number[]; pg: number[] }> = {};
    try {
      // the encrypted rows, through the API (100 per request; a 503 while the pool fills is retried)
      for (let from = 1; from <= ROWS; from += 100) {
        const batch = Array.from({ length: Math.min(100, ROWS - from + 1) }, (_, k) => ({ name: `Person ${from + k}`, email: emailOf(from + k), phone: `+44 20 7946 ${String(from + k).padStart(4, '0')}`, notes: `note ${from + k}` }));
        let res: Response | undefined;
        for (let attempt = 0; attempt < 20; attempt++) {
          res = await fetch(`http://127.0.0.1:${PORT}/v1/tables/customers/rows`, { method: 'POST', headers: { authorization: writer, 'content-type': 'application/json' }, body: JSON.stringify(batch) });
          if (res.status !== 503) break;
          await res.text();
          await new Promise((r) => setTimeout(r, 500));
        }
        if (!res) throw new Error('compliance: no answer');
        if (res.status !== 201) throw new Error(`compliance: seeding customers answered ${res.status}: ${await res.text()}`);
        for (const r of ((await res.json()) as { data: Array<{ id: number }> }).data) ids.push(r.id);
      }
      await analyze(ctx);
      const pick = (i: number) => i % ROWS; // 0-based position
      const read = (table: string, idOf: (i: number) => number, as = reader, tag = ''): Target =>
        variant(base, `read${tag}-${table}`, `GET /v1/tables/${table}/rows/{id}`, (i) => ({ method: 'GET', path: `/v1/tables/${table}/rows/${idOf(pick(i))}`, headers: { authorization: as } }), (_i, body) => body.includes('"email":"p***@example.com"') || body.includes('"email":"person.'));
      const insert = (table: string): Target =>
        variant(base, `insert-${table}`, `POST /v1/tables/${table}/rows`, (i) => ({ method: 'POST', path: `/v1/tables/${table}/rows`, headers: { authorization: writer, 'content-type': 'application/json' }, body: JSON.stringify({ name: `New ${i}`, email: `new.${i}@example.com`, phone: '+1 555 0100' }) }), (_i, body) => body.includes('"id"'));
      const list = (table: string): Target =>
        variant(base, `list-${table}`, `GET /v1/tables/${table}/rows?limit=50`, () => ({ method: 'GET', path: `/v1/tables/${table}/rows?limit=50&select=id,name,email,phone`, headers: { authorization: reader } }), (_i, body) => (JSON.parse(body) as { data: unknown[] }).data.length === 50);
      const byEmail = (table: string): Target =>
        variant(base, `eq-${table}`, `GET /v1/tables/${table}/rows?email=eq.x`, (i) => ({ method: 'GET', path: `/v1/tables/${table}/rows?select=id&email=eq.${emailOf(pick(i) + 1)}`, headers: { authorization: reader } }), (_i, body) => (JSON.parse(body) as { data: unknown[] }).data.length === 1);
      const pairs: Array<[string, Target, Target]> = [
        ['single-row read (reader: decrypt + mask)', read('customers', (p) => ids[p]!), read('bench_customers_plain', (p) => p + 1)],
        ['single-row read (admin: decrypt + plaintext + audit)', read('customers', (p) => ids[p]!, admin, '-admin'), read('bench_customers_plain', (p) => p + 1, admin, '-admin')],
        ['single-row insert', insert('customers'), insert('bench_customers_plain')],
        ['list page (50 rows)', list('customers'), list('bench_customers_plain')],
        ['equality lookup', byEmail('customers'), byEmail('bench_customers_plain')],
      ];
      for (const [, a, b] of pairs) {
        await cannon(a, WARMUP, CONNECTIONS);
        await cannon(b, WARMUP, CONNECTIONS);
      }
      // the server's pool is full now (DB_POOL_MIN=16): its backends are the ones that appeared
      const pgPids = [...(await backendPidsOf(ctx.dbUrl))].filter((p) => !before.has(p));
      for (let round = 1; round <= ROUNDS; round++) {
        for (const [, a, b] of pairs) {
          for (const t of [a, b]) {
            const n0 = cpuTicks([child.pid!]);
            const g0 = cpuTicks(pgPids);
            const m = await cannon(t, DURATION, CONNECTIONS);
            const nodeUs = Math.round(((cpuTicks([child.pid!]) - n0) * 10_000) / Math.max(1, m.total));
            const pgUs = Math.round(((cpuTicks(pgPids) - g0) * 10_000) / Math.max(1, m.total));
            if (m.non2xx || m.errors) log(`compliance: ${t.name}: ${m.non2xx} non-2xx, ${m.errors} errors (${JSON.stringify(m.statuses)})`);
            (results[t.name] ??= []).push(m.rps);
            const c = (cpu[t.name] ??= { node: [], pg: [] });
            c.node.push(nodeUs);
            c.pg.push(pgUs);
            log(`compliance: round ${round} ${t.name}: ${m.rps} req/s, p50 ${m.p50} ms, cpu/req node=${nodeUs}us pg=${pgUs}us`);
          }
        }
      }
      const md = [
        `## Compliance: declared (encrypted, masked) vs plain (${CONNECTIONS} connections, ${ROUNDS} rounds of ${DURATION} s, medians)`,
        '',
        '| request | declared req/s | plain req/s | ratio | declared node CPU us/req | plain node CPU us/req | declared PostgreSQL CPU us/req | plain PostgreSQL CPU us/req |',
        '|---|---:|---:|---:|---:|---:|---:|---:|',
      ];
      const json: Record<string, unknown> = {};
      for (const [label, a, b] of pairs) {
        const x = median(results[a.name]!);
        const y = median(results[b.name]!);
        const ratio = y ? +(x / y).toFixed(2) : 0;
        const us = (name: string, k: 'node' | 'pg') => median(cpu[name]![k]);
        md.push(`| ${label} | ${x} | ${y} | ${ratio}x | ${us(a.name, 'node')} | ${us(b.name, 'node')} | ${us(a.name, 'pg')} | ${us(b.name, 'pg')} |`);
        json[label] = { declared: results[a.name], plain: results[b.name], ratio, cpu: { declared: cpu[a.name], plain: cpu[b.name] } };
      }
      md.push('', 'CPU per request: user + system time of the server process (node) and of its pool\'s PostgreSQL backends over each run, divided by the requests served; it holds on a loaded machine where req/s does not.');
      md.push('', 'declared: customers with email (searchable) and phone encrypted, read by a reader (partial masks); plain: the same columns, nothing declared. Target for single-row read and insert: >= 0.8x.');
      return { md, json };
    } finally {
      await stop(child);
      await tearDown(ctx);
    }
  },
};

export default scenario;
