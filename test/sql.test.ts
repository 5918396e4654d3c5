import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';
import { createSqlService, runAsAnalyst } from '../src/services/data/index.js';
import { guardStatement, isDeniedFunction } from '../src/services/data/index.js';

interface SqlBody {
  data: Record<string, unknown>[];
  fields: { name: string; type: string }[];
  row_count: number;
  truncated: boolean;
}

describe('POST /v1/sql', () => {
  let t: TestApp;
  let analyst: Record<string, string>;
  let counts: Record<string, number>;
  let fingerprint: () => Promise<string>;
  const acme = { tenantId: 'acme', actor: 'test', role: 'analyst' as const, requestId: 'sql-test' };

  const run = async (sql: string, extra: Record<string, unknown> = {}, headers = analyst) =>
    t.app.inject({ method: 'POST', url: '/v1/sql', headers, payload: { sql, ...extra } });

  beforeAll(async () => {
    t = await createTestApp({ seed: true });
    analyst = await t.auth('analyst', 'acme');
    const { rows } = await t.db.adminQuery<{ tenant_id: string; n: number }>('SELECT tenant_id, count(*)::int AS n FROM pipelines GROUP BY 1');
    counts = Object.fromEntries(rows.map((r) => [r.tenant_id, r.n]));
    // Everything an attack could have written or changed, as one string.
    fingerprint = async () => {
      const { rows: r } = await t.db.adminQuery<{ f: string }>(
        `SELECT concat_ws('|', (SELECT count(*) FROM pipelines), (SELECT string_agg(tenant_id || ':' || name || ':' || status, ',' ORDER BY id) FROM pipelines),
                          (SELECT count(*) FROM pipeline_runs), (SELECT count(*) FROM run_steps), (SELECT count(*) FROM run_logs),
                          (SELECT count(*) FROM strata.api_keys), (SELECT count(*) FROM strata.tenants),
                          (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace)) AS f`,
      );
      return r[0]!.f;
    };
  });
  afterAll(() => t.close());

  describe('answers queries', () => {
    it('runs a statement with parameters and describes the fields', async () => {
      const res = await run('SELECT id, name, status FROM pipelines WHERE status = $1 AND id > $2 ORDER BY id', { params: ['active', 0] });
      expect(res.statusCode).toBe(200);
      const body = res.json<SqlBody>();
      expect(body.fields).toEqual([
        { name: 'id', type: 'bigint' },
        { name: 'name', type: 'character varying' },
        { name: 'status', type: 'text' },
      ]);
      expect(body.row_count).toBeGreaterThan(0);
      expect(body.row_count).toBe(body.data.length);
      expect(body.truncated).toBe(false);
      for (const row of body.data) expect(row['status']).toBe('active');
    });

    it('serves aggregates, window functions and recursive CTEs', async () => {
      const agg = await run(
        `SELECT status, count(*)::int AS n, rank() OVER (ORDER BY count(*) DESC, status) AS rnk
           FROM pipeline_runs GROUP BY status ORDER BY rnk`,
      );
      expect(agg.statusCode).toBe(200);
      const rows = agg.json<SqlBody>().data;
      expect(rows.reduce((n, r) => n + (r['n'] as number), 0)).toBe(counts['acme']! * 10);
      expect(rows[0]!['rnk']).toBe('1');

      const tree = await run(
        `WITH RECURSIVE tree AS (
           SELECT id, parent_step_id, 1 AS depth FROM run_steps WHERE parent_step_id IS NULL
           UNION ALL
           SELECT s.id, s.parent_step_id, t.depth + 1 FROM run_steps s JOIN tree t ON s.parent_step_id = t.id)
         SELECT depth, count(*)::int AS n FROM tree GROUP BY depth ORDER BY depth`,
      );
      expect(tree.statusCode).toBe(200);
      expect(tree.json<SqlBody>().data.map((r) => r['depth'])).toEqual([1, 2]);

      const values = await run('VALUES (1, $1::text), (2, $2)', { params: ['a', 'b'] });
      expect(values.json<SqlBody>().data).toEqual([
        { column1: 1, column2: 'a' },
        { column1: 2, column2: 'b' },
      ]);
      const table = await run('TABLE pipelines');
      expect(table.json<SqlBody>().row_count).toBe(counts['acme']);
    });

    it('sees only the caller tenant rows, whatever the SQL asks for', async () => {
      const all = await run('SELECT * FROM pipelines');
      expect(all.statusCode).toBe(200);
      const body = all.json<SqlBody>();
      expect(body.row_count).toBe(counts['acme']);
      expect(new Set(body.data.map((r) => r['tenant_id']))).toEqual(new Set(['acme']));

      const grouped = await run('SELECT tenant_id, count(*)::int AS n FROM run_logs GROUP BY 1');
      expect(grouped.json<SqlBody>().data).toEqual([{ tenant_id: 'acme', n: expect.any(Number) }]);

      const explicit = await run("SELECT count(*)::int AS n FROM pipelines WHERE tenant_id = 'globex'");
      expect(explicit.json<SqlBody>().data).toEqual([{ n: 0 }]);
      const globex = await run('SELECT count(*)::int AS n FROM pipelines', {}, await t.auth('analyst', 'globex'));
      expect(globex.json<SqlBody>().data).toEqual([{ n: counts['globex'] }]);
    });

    it('caps the result and says it was truncated', async () => {
      const res = await run('SELECT g FROM generate_series(1, 10005) g ORDER BY g');
      expect(res.statusCode).toBe(200);
      const body = res.json<SqlBody>();
      expect(body.row_count).toBe(10_000);
      expect(body.truncated).toBe(true);
      expect(body.data[9_999]).toEqual({ g: 10_000 });
    });

    it('says the row cap cut it (truncated_by rows), and keeps the order of the rows', async () => {
      const body = (await run('SELECT g FROM generate_series(1, 10005) g ORDER BY g DESC')).json<SqlBody & { truncated_by?: string }>();
      expect(body.truncated_by).toBe('rows');
      expect(body.data.slice(0, 3)).toEqual([{ g: 10_005 }, { g: 10_004 }, { g: 10_003 }]);
      const whole = (await run('SELECT 1 AS one WHERE false')).json<SqlBody & { truncated_by?: string }>();
      expect(whole).toMatchObject({ data: [], row_count: 0, truncated: false });
      expect(whole.truncated_by).toBeUndefined();
      const nulls = (await run('SELECT NULL::int AS a')).json<SqlBody>();
      expect(nulls).toMatchObject({ data: [{ a: null }], row_count: 1, truncated: false });
    });

    it('cuts a result at SQL_MAX_RESULT_BYTES inside PostgreSQL: a huge value never reaches the service', async () => {
      const small = await createTestApp({ seed: false, env: { SQL_MAX_RESULT_BYTES: '4096' } });
      try {
        const headers = await small.auth('analyst', 'acme');
        const send = async (sql: string) =>
          (await small.app.inject({ method: 'POST', url: '/v1/sql', headers, payload: { sql } })).json<SqlBody & { truncated_by?: string }>();
        // 100 rows of ~1 KB: only the first few fit, in order
        const some = await send("SELECT g, repeat('y', 1000) AS pad FROM generate_series(1, 100) g ORDER BY g");
        expect(some.truncated).toBe(true);
        expect(some.truncated_by).toBe('bytes');
        expect(some.row_count).toBeGreaterThan(0);
        expect(some.row_count).toBeLessThan(5);
        expect(some.data.map((r) => r['g'])).toEqual(Array.from({ length: some.row_count }, (_, i) => i + 1));
        expect(some.fields.map((f) => f.name)).toEqual(['g', 'pad']);
        // one row of 50 MB: nothing of it is sent, and the answer says why
        const started = process.memoryUsage().rss;
        const huge = await send("SELECT repeat('x', 50000000) AS big");
        expect(huge).toMatchObject({ data: [], row_count: 0, truncated: true, truncated_by: 'bytes' });
        expect(huge.fields).toEqual([{ name: 'big', type: 'text' }]);
        expect(process.memoryUsage().rss - started).toBeLessThan(40_000_000);
      } finally {
        await small.close();
      }
    });

    it('keeps trailing semicolons and comments harmless', async () => {
      const res = await run('SELECT 1 AS one; -- trailing comment');
      expect(res.statusCode).toBe(200);
      expect(res.json<SqlBody>().data).toEqual([{ one: 1 }]);
      const dollar = await run("SELECT $$ ; DELETE FROM pipelines; $$ AS txt, 'it''s' AS q -- )");
      expect(dollar.json<SqlBody>().data).toEqual([{ txt: ' ; DELETE FROM pipelines; ', q: "it's" }]);
    });

    it('renders bytea as hex text and jsonb as JSON', async () => {
      const res = await run("SELECT '\\xdeadbeef'::bytea AS b, '{\"a\":[1,2]}'::jsonb AS j");
      expect(res.json<SqlBody>().data).toEqual([{ b: '\\xdeadbeef', j: { a: [1, 2] } }]);
    });
  });

  describe('refuses attacks with a 4xx, writes nothing and leaks nothing', () => {
    const attacks: Array<[string, string, number, string]> = [
      ['set_config to another tenant', "SELECT set_config('strata.tenant_id', 'globex', true), (SELECT count(*) FROM pipelines)", 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['set_config in a subquery', "SELECT * FROM pipelines WHERE (SELECT set_config('strata.tenant_id', 'globex', true)) IS NOT NULL", 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['qualified set_config', "SELECT pg_catalog.set_config('strata.tenant_id', 'globex', true)", 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['quoted set_config', `SELECT "set_config"('strata.tenant_id', 'globex', true)`, 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['set_config in FROM', "SELECT * FROM set_config('strata.tenant_id', 'globex', true)", 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['statement_timeout off', "SELECT set_config('statement_timeout', '0', true)", 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['SET ROLE', 'SET ROLE postgres', 400, 'SQL_NOT_READ_ONLY'],
      ['RESET ROLE', 'RESET ROLE', 400, 'SQL_NOT_READ_ONLY'],
      ['SET the tenant', "SET strata.tenant_id = 'globex'", 400, 'SQL_NOT_READ_ONLY'],
      ['SET LOCAL the tenant', "SET LOCAL strata.tenant_id TO 'globex'", 400, 'SQL_NOT_READ_ONLY'],
      ['two statements', 'SELECT 1; DELETE FROM pipelines', 400, 'SQL_MULTIPLE_STATEMENTS'],
      ['a semicolon hidden in a comment', 'SELECT 1 /* ; */ ; DELETE FROM pipelines', 400, 'SQL_MULTIPLE_STATEMENTS'],
      ['a line comment', 'SELECT 1 -- ;\n; DELETE FROM pipelines', 400, 'SQL_MULTIPLE_STATEMENTS'],
      ['a dollar-quote trick', 'SELECT $x$ $$ $x$; DELETE FROM pipelines', 400, 'SQL_MULTIPLE_STATEMENTS'],
      ['a string trick', "SELECT 'a'';'; DELETE FROM pipelines", 400, 'SQL_MULTIPLE_STATEMENTS'],
      ['a data-modifying CTE', 'WITH x AS (DELETE FROM pipelines RETURNING *) SELECT * FROM x', 400, 'SQL_NOT_READ_ONLY'],
      ['an updating CTE', "WITH x AS (UPDATE pipelines SET name = 'p' RETURNING 1) SELECT 1", 400, 'SQL_NOT_READ_ONLY'],
      ['a nested inserting CTE', 'SELECT * FROM (WITH y AS (INSERT INTO pipelines (name) VALUES ($1) RETURNING id) SELECT id FROM y) z', 400, 'SQL_NOT_READ_ONLY'],
      ['DELETE', 'DELETE FROM pipelines', 400, 'SQL_NOT_READ_ONLY'],
      ['pg_settings', "UPDATE pg_settings SET setting = 'globex' WHERE name = 'strata.tenant_id'", 400, 'SQL_NOT_READ_ONLY'],
      ['platform schema', 'SELECT * FROM strata.api_keys', 403, 'SQL_FORBIDDEN_SCHEMA'],
      ['platform schema in a join', 'SELECT p.id FROM pipelines p JOIN strata.tenants t ON t.id = p.tenant_id', 403, 'SQL_FORBIDDEN_SCHEMA'],
      ['a server file', "SELECT pg_read_file('/etc/passwd')", 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['a large object import', "SELECT lo_import('/etc/passwd')", 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['dblink', "SELECT * FROM dblink('dbname=postgres', 'SELECT 1') AS t(x int)", 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['SQL run from text', "SELECT query_to_xml('SELECT * FROM pipelines', true, true, '')", 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['an advisory lock', 'SELECT pg_advisory_lock(42)', 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['terminating a backend', 'SELECT pg_terminate_backend(pg_backend_pid())', 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['a sequence', "SELECT nextval('pipelines_id_seq')", 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['a transaction id', 'SELECT txid_current()', 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['NOTIFY through a function', "SELECT pg_notify('c', 'x')", 403, 'SQL_FORBIDDEN_FUNCTION'],
      ['COPY', 'COPY pipelines TO STDOUT', 400, 'SQL_NOT_READ_ONLY'],
      ['COPY a query', "COPY (SELECT 1) TO '/tmp/x'", 400, 'SQL_NOT_READ_ONLY'],
      ['a DO block', "DO $$ BEGIN PERFORM set_config('strata.tenant_id', 'globex', true); END $$", 400, 'SQL_NOT_READ_ONLY'],
      ['CALL', 'CALL some_procedure()', 400, 'SQL_NOT_READ_ONLY'],
      ['FOR UPDATE', 'SELECT * FROM pipelines FOR UPDATE', 400, 'SQL_NOT_READ_ONLY'],
      ['FOR SHARE in a subquery', 'SELECT * FROM (SELECT id FROM pipelines FOR SHARE) s', 400, 'SQL_NOT_READ_ONLY'],
      ['FOR UPDATE on a set operation', 'SELECT 1 UNION SELECT 2 FOR UPDATE', 400, 'SQL_NOT_READ_ONLY'],
      ['SELECT INTO', 'SELECT * INTO stolen FROM pipelines', 400, 'SQL_NOT_READ_ONLY'],
      ['LISTEN', 'LISTEN c', 400, 'SQL_NOT_READ_ONLY'],
      ['NOTIFY', 'NOTIFY c', 400, 'SQL_NOT_READ_ONLY'],
      ['PREPARE', 'PREPARE p AS DELETE FROM pipelines', 400, 'SQL_NOT_READ_ONLY'],
      ['EXECUTE', 'EXECUTE p', 400, 'SQL_NOT_READ_ONLY'],
      ['EXPLAIN ANALYZE of a write', 'EXPLAIN ANALYZE DELETE FROM pipelines', 400, 'SQL_NOT_READ_ONLY'],
      ['BEGIN', 'BEGIN', 400, 'SQL_NOT_READ_ONLY'],
      ['LOCK', 'LOCK pipelines', 400, 'SQL_NOT_READ_ONLY'],
      ['a syntax error', 'SELEC 1', 400, 'SQL_SYNTAX_ERROR'],
      ['an unterminated comment', 'SELECT 1 /* ; DELETE FROM pipelines', 400, 'SQL_SYNTAX_ERROR'],
      ['an unterminated dollar quote', 'SELECT $$; DELETE FROM pipelines', 400, 'SQL_SYNTAX_ERROR'],
      ['nothing but a comment', '-- SELECT 1', 400, 'SQL_EMPTY'],
    ];

    it.each(attacks)('refuses %s (%s) with %i %s', async (_what, sql, status, code) => {
      const before = await fingerprint();
      const res = await run(sql);
      expect(res.statusCode, res.body).toBe(status);
      expect(res.json().error.code).toBe(code);
      expect(res.body).not.toContain('globex');
      expect(await fingerprint()).toBe(before);
      expect(t.db.borrowedCount()).toBe(0);
    });

    it('names the forbidden function and the syntax error position', async () => {
      const fn = await run("SELECT pg_read_file('/etc/passwd'), nextval('x')");
      expect(fn.json().error.details).toEqual({ functions: ['nextval', 'pg_read_file'] });
      const syntax = await run('SELECT 1 FROM WHERE');
      expect(syntax.json().error).toMatchObject({ code: 'SQL_SYNTAX_ERROR', message: 'syntax error at or near "WHERE"', details: { position: 15 } });
    });

    it('leaves no advisory lock, setting or role on the pooled connection', async () => {
      await run('SELECT pg_advisory_lock(7)');
      await run("SELECT set_config('strata.tenant_id', 'globex', false)");
      const pool = t.db.shardFor('acme').app;
      const leases = await Promise.all([pool.acquire(), pool.acquire()]);
      try {
        for (const { client } of leases) {
          const { rows } = await client.query<{ locks: number; tenant: string | null; who: string }>(
            "SELECT (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks, current_setting('strata.tenant_id', true) AS tenant, current_user AS who",
          );
          expect(rows[0]!.locks).toBe(0);
          expect(rows[0]!.tenant ?? '').toBe('');
          expect(rows[0]!.who).not.toBe('strata_analyst');
        }
      } finally {
        for (const l of leases) l.release();
      }
    });
  });

  describe('maps database errors to 4xx', () => {
    it.each([
      ['an unknown column', 'SELECT nope FROM pipelines', '42703'],
      ['an unknown table', 'SELECT * FROM nope', '42P01'],
      ['an unknown function', 'SELECT nope(1)', '42883'],
      ['a division by zero', 'SELECT 1 / 0', '22012'],
      ['a bad cast', "SELECT 'x'::int", '22P02'],
      ['a subquery returning two rows', 'SELECT (SELECT id FROM pipelines)', '21000'],
    ])('%s -> 400 SQL_ERROR with PostgreSQL message', async (_what, sql, sqlstate) => {
      const res = await run(sql);
      expect(res.statusCode).toBe(400);
      expect(res.json().error).toMatchObject({ code: 'SQL_ERROR', details: { sqlstate } });
      expect(res.json().error.message).not.toBe('');
    });

    it('reports the position of an error in the caller SQL, not in the wrapper', async () => {
      const res = await run('SELECT id,\n  nope FROM pipelines');
      expect(res.json().error).toMatchObject({ code: 'SQL_ERROR', message: 'column "nope" does not exist', details: { position: 14 } });
    });

    it('refuses a parameter count that does not match the statement', async () => {
      const few = await run('SELECT $1::int + $2::int AS s', { params: [1] });
      expect(few.statusCode).toBe(400);
      expect(few.json().error).toMatchObject({ code: 'SQL_PARAMS_MISMATCH', details: { expected: 2, given: 1 } });
      const many = await run('SELECT 1', { params: [1] });
      expect(many.json().error.code).toBe('SQL_PARAMS_MISMATCH');
    });

    it('refuses a duplicate column name instead of losing a column', async () => {
      const res = await run('SELECT 1 AS a, 2 AS a');
      expect(res.statusCode).toBe(400);
      expect(res.json().error.code).toBe('SQL_DUPLICATE_COLUMN');
    });

    it('answers 403 when PostgreSQL denies a privilege', async () => {
      const res = await run('SELECT rolpassword FROM pg_authid');
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe('SQL_PERMISSION_DENIED');
    });

    it('cancels at timeout_ms with 504 STATEMENT_TIMEOUT', async () => {
      const started = Date.now();
      const res = await run('SELECT pg_sleep(5)', { timeout_ms: 100 });
      expect(res.statusCode).toBe(504);
      expect(res.json().error.code).toBe('STATEMENT_TIMEOUT');
      expect(Date.now() - started).toBeLessThan(3000);
    });
  });

  describe('validates the request', () => {
    it('refuses reader and writer with 403 ROLE_FORBIDDEN', async () => {
      for (const role of ['reader', 'writer'] as const) {
        const res = await run('SELECT 1', {}, await t.auth(role, 'acme'));
        expect(res.statusCode).toBe(403);
        expect(res.json().error.code).toBe('ROLE_FORBIDDEN');
      }
    });

    it('refuses an anonymous call with 401', async () => {
      const res = await t.app.inject({ method: 'POST', url: '/v1/sql', payload: { sql: 'SELECT 1' } });
      expect(res.statusCode).toBe(401);
    });

    it('refuses malformed JSON, a missing sql, unknown fields, too many params and a timeout above the ceiling', async () => {
      const bad = await t.app.inject({ method: 'POST', url: '/v1/sql', headers: { ...analyst, 'content-type': 'application/json' }, payload: '{"sql": "SELECT 1"' });
      expect(bad.statusCode).toBe(400);
      expect(bad.json().error.code).toBe('MALFORMED_JSON');
      for (const payload of [{}, { sql: '' }, { sql: 'SELECT 1', tenant_id: 'globex' }, { sql: 'SELECT 1', params: Array(101).fill(1) }, { sql: 'SELECT 1', timeout_ms: t.config.DB_STATEMENT_TIMEOUT_MS + 1 }]) {
        const res = await t.app.inject({ method: 'POST', url: '/v1/sql', headers: analyst, payload });
        expect(res.statusCode, JSON.stringify(payload)).toBe(400);
        expect(res.json().error.code).toBe('VALIDATION_FAILED');
      }
    });
  });

  describe('the database holds without the guard', () => {
    const direct = (sql: string, values: unknown[] = []) => runAsAnalyst(t.db, acme, sql, values, { statementTimeoutMs: 5000 });

    it('refuses set_config to strata_analyst with permission denied (42501)', async () => {
      await expect(direct("SELECT set_config('strata.tenant_id', 'globex', true)")).rejects.toMatchObject({ code: '42501' });
      await expect(direct("SELECT set_config('statement_timeout', '0', true)")).rejects.toMatchObject({ code: '42501' });
      await expect(direct("SELECT set_config('role', 'strata_tenant', true)")).rejects.toMatchObject({ code: '42501' });
      // pg_settings is UPDATE-able by PUBLIC through a rule that calls set_config: refused all the
      // same (by the read-only transaction, and by the set_config privilege behind it).
      await expect(direct("UPDATE pg_settings SET setting = 'globex' WHERE name = 'strata.tenant_id'")).rejects.toMatchObject({
        code: expect.stringMatching(/^(42501|25006)$/),
      });
    });

    it('refuses the platform schema, writes and more than one statement', async () => {
      await expect(direct('SELECT * FROM strata.api_keys')).rejects.toMatchObject({ code: '42501' });
      await expect(direct("INSERT INTO pipelines (name) VALUES ('x')")).rejects.toMatchObject({ code: '25006' });
      await expect(direct('WITH x AS (DELETE FROM pipelines RETURNING 1) SELECT count(*) FROM x')).rejects.toMatchObject({ code: '25006' });
      await expect(direct("SELECT nextval('pipelines_id_seq')")).rejects.toMatchObject({ code: expect.stringMatching(/^(42501|25006)$/) });
      // With parameters (the extended protocol, as the service always sends), PostgreSQL itself refuses two commands.
      await expect(direct('SELECT $1::int; DELETE FROM pipelines', [1])).rejects.toMatchObject({ code: '42601' });
      expect(await t.db.adminQuery('SELECT 1 FROM pipelines')).toMatchObject({ rowCount: counts['acme']! + counts['globex']! });
    });

    it('runs as strata_analyst, still under row-level security, owning nothing and blind to other sessions', async () => {
      await t.db.adminQuery('ANALYZE pipelines'); // pg_stats would show its values to a role RLS did not bind
      const { rows } = await direct(
        `SELECT current_user AS who, (SELECT count(*)::int FROM pipelines) AS n,
                (SELECT count(DISTINCT tenant_id)::int FROM run_logs) AS tenants,
                has_schema_privilege('strata', 'USAGE') AS strata,
                (SELECT count(*)::int FROM pg_class WHERE relowner = current_user::regrole) AS owns,
                (SELECT count(*)::int FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query NOT LIKE '<insufficient privilege>') AS visible_queries,
                (SELECT count(*)::int FROM pg_stats WHERE schemaname = 'public') AS stats`,
      );
      expect(rows[0]).toEqual({ who: 'strata_analyst', n: counts['acme'], tenants: 1, strata: false, owns: 0, visible_queries: 0, stats: 0 });
    });

    it('has no privilege beyond SELECT on the tenant tables', async () => {
      const { rows } = await t.db.adminQuery<{ priv: string }>(
        `SELECT c.relname || ':' || p.privilege_type AS priv
           FROM pg_class c, LATERAL aclexplode(c.relacl) p
          WHERE p.grantee = 'strata_analyst'::regrole ORDER BY 1`,
      );
      expect(rows.map((r) => r.priv)).toEqual(['documents:SELECT', 'pipeline_runs:SELECT', 'pipelines:SELECT', 'run_logs:SELECT', 'run_steps:SELECT']);
      const { rows: role } = await t.db.adminQuery('SELECT rolsuper, rolbypassrls, rolcanlogin, rolinherit FROM pg_roles WHERE rolname = $1', ['strata_analyst']);
      expect(role[0]).toEqual({ rolsuper: false, rolbypassrls: false, rolcanlogin: false, rolinherit: false });
    });
  });

  describe('the sandbox check', () => {
    it('refuses raw SQL with 503 SQL_SANDBOX_UNAVAILABLE while strata_analyst may call set_config', async () => {
      const fn = 'pg_catalog.set_config(text, text, boolean)';
      await t.db.adminQuery(`GRANT EXECUTE ON FUNCTION ${fn} TO strata_analyst`); // this test database only
      try {
        const service = createSqlService({ db: t.db, config: t.config });
        await expect(service.query(acme, { sql: 'SELECT 1' })).rejects.toMatchObject({ statusCode: 503, code: 'SQL_SANDBOX_UNAVAILABLE' });
      } finally {
        await t.db.adminQuery(`REVOKE EXECUTE ON FUNCTION ${fn} FROM strata_analyst`);
      }
      const service = createSqlService({ db: t.db, config: t.config });
      await expect(service.query(acme, { sql: 'SELECT 1 AS one' })).resolves.toMatchObject({ data: [{ one: 1 }] });
    });
  });

  describe('the guard on its own', () => {
    it('keeps the statement text exact, multi-byte characters included', async () => {
      // libpg-query counts UTF-8 bytes; the offset is in characters, for error positions
      const g = await guardStatement("/* é */ SELECT 'ünï' AS x ;  ");
      expect(g.text).toBe("SELECT 'ünï' AS x ");
      expect(g.offset).toBe(8);
      expect(g.paramCount).toBe(0);
      expect((await guardStatement('SELECT $3::int, $1')).paramCount).toBe(3);
    });

    it('denies function families and allows ordinary ones', () => {
      for (const f of ['set_config', 'SET_CONFIG', 'pg_ls_dir', 'lo_export', 'dblink_exec', 'pg_try_advisory_xact_lock', 'table_to_xml', 'setval', 'ts_stat'])
        expect(isDeniedFunction(f), f).toBe(true);
      for (const f of ['current_setting', 'count', 'now', 'pg_sleep', 'jsonb_agg', 'lower', 'generate_series'])
        expect(isDeniedFunction(f), f).toBe(false);
    });
  });
});
