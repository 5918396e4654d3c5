/**
 * Issue 13, item 5: the analyst sandbox is closed in PostgreSQL itself (migration 0009). Every
 * function taken from PUBLIC is called as strata_analyst through each spelling PostgreSQL accepts
 * (call, field selection, operator and cast where one exists): the database refuses it without the
 * guard, and the guard refuses it before it is sent. Nothing an analyst runs leaves a lock, a large
 * object or a notification behind.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';
import { runAsAnalyst } from '../src/services/data/index.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';

interface Revoked {
  fn: string;
  name: string;
  args: string[];
  variadic: boolean;
}

/** A constant of each argument type (never NULL: a strict function of a NULL constant is folded away). */
const LITERALS: Record<string, string> = {
  bigint: '4242::bigint',
  integer: '4242',
  text: "'select 1'",
  oid: '4242::oid',
  bytea: "'\\x00'::bytea",
  boolean: 'false',
  regclass: "'pipelines'::regclass",
  refcursor: "'c'::refcursor",
  name: "'public'::name",
  tsquery: "'a'::tsquery",
  real: '0.5::real',
  'double precision': '0.5::float8',
  pg_lsn: "'0/0'::pg_lsn",
  'text[]': "'{}'::text[]",
  regnamespace: "'public'::regnamespace",
};
const literal = (type: string) => LITERALS[type] ?? `NULL::${type}`;

describe('the analyst sandbox in PostgreSQL (migration 0009)', () => {
  let t: TestApp;
  let analyst: Record<string, string>;
  let revoked: Revoked[];
  const acme = { tenantId: 'acme', actor: 'test', role: 'analyst' as const, requestId: 'sandbox-test' };
  const globex = { tenantId: 'globex', actor: 'test', role: 'analyst' as const, requestId: 'sandbox-test' };
  const direct = (sql: string, ctx = acme) => runAsAnalyst(t.db, ctx, sql, [], { statementTimeoutMs: 5000 });
  const sql = (text: string) => t.app.inject({ method: 'POST', url: '/v1/sql', headers: analyst, payload: { sql: text } });
  /** Advisory locks held by any backend of this database. */
  const advisoryLocks = async () =>
    (
      await t.db.adminQuery<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
      )
    ).rows[0]!.n;
  const largeObjects = async () => (await t.db.adminQuery<{ n: number }>('SELECT count(*)::int AS n FROM pg_largeobject_metadata')).rows[0]!.n;

  beforeAll(async () => {
    t = await createTestApp();
    analyst = await t.auth('analyst', 'acme');
    const { rows } = await t.db.adminQuery<Revoked>(
      `SELECT r.fn, p.proname::text AS name, p.provariadic <> 0 AS variadic,
              ARRAY(SELECT format_type(a, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(a, i) ORDER BY i) AS args
         FROM strata.sandbox_revoked r JOIN pg_proc p ON p.oid = to_regprocedure(r.fn) ORDER BY r.fn`,
    );
    revoked = rows;
  });
  afterAll(() => t.close());

  it('revokes the lock, large-object, notify, xid, SQL-text and session-state functions from PUBLIC', () => {
    const fns = revoked.map((r) => r.fn);
    for (const must of [
      'pg_advisory_lock(bigint)',
      'pg_advisory_lock(integer,integer)',
      'pg_try_advisory_lock(bigint)',
      'pg_advisory_xact_lock_shared(integer,integer)',
      'pg_advisory_unlock_all()',
      'lo_creat(integer)',
      'lo_create(oid)',
      'lo_from_bytea(oid,bytea)',
      'lo_open(oid,integer)',
      'lowrite(integer,bytea)',
      'loread(integer,integer)',
      'lo_put(oid,bigint,bytea)',
      'lo_get(oid)',
      'lo_unlink(oid)',
      'ts_stat(text)',
      'ts_stat(text,text)',
      'ts_rewrite(tsquery,text)',
      'query_to_xml(text,boolean,boolean,text)',
      'query_to_xml_and_xmlschema(text,boolean,boolean,text)',
      'table_to_xml(regclass,boolean,boolean,text)',
      'cursor_to_xml(refcursor,integer,boolean,boolean,text)',
      'database_to_xml(boolean,boolean,text)',
      'pg_notify(text,text)',
      'txid_current()',
      'pg_current_xact_id()',
      'pg_current_xact_id_if_assigned()',
      'pg_export_snapshot()',
      'setseed(double precision)',
      'public.set_limit(real)',
    ]) {
      expect(fns, must).toContain(must);
    }
  });

  it('refuses every revoked function called by strata_analyst, without the guard (42501)', async () => {
    expect(revoked.length).toBeGreaterThan(50);
    for (const r of revoked) {
      const args = r.args.map(literal);
      if (r.variadic) args.push(`VARIADIC ${args.pop() ?? ''}`);
      const call = `SELECT ${r.fn.includes('.') ? r.fn.slice(0, r.fn.indexOf('.') + 1) : 'pg_catalog.'}${r.name}(${args.join(', ')})`;
      await expect(direct(call), call).rejects.toMatchObject({ code: '42501' });
    }
  });

  it('refuses the field-selection spelling of every one-argument revoked function (42501)', async () => {
    const oneArg = revoked.filter((r) => r.args.length === 1);
    expect(oneArg.map((r) => r.name)).toEqual(expect.arrayContaining(['pg_advisory_lock', 'lo_creat', 'ts_stat', 'setseed']));
    for (const r of oneArg) {
      const field = `SELECT ((${literal(r.args[0]!)}).${r.name})`;
      await expect(direct(field), field).rejects.toMatchObject({ code: '42501' });
    }
    // the alias form of the same thing: a whole-row value passed to a one-argument function
    await expect(direct('SELECT x.pg_advisory_lock FROM (SELECT 4242::bigint) AS x(pg_advisory_lock_arg)')).rejects.toMatchObject({
      code: expect.stringMatching(/^(42501|42703|42883)$/),
    });
  });

  it('has no operator or cast that reaches a revoked function', async () => {
    const { rows } = await t.db.adminQuery<{ via: string }>(
      `SELECT 'operator ' || o.oid::regoperator::text AS via FROM pg_operator o JOIN strata.sandbox_revoked r ON o.oprcode = to_regprocedure(r.fn)
       UNION ALL
       SELECT 'cast ' || c.castsource::regtype || ' -> ' || c.casttarget::regtype FROM pg_cast c JOIN strata.sandbox_revoked r ON c.castfunc = to_regprocedure(r.fn)`,
    );
    // were there one, it would be called here like the functions above; PostgreSQL 15 defines none
    for (const { via } of rows) throw new Error(`untested spelling: ${via}`);
    expect(rows).toEqual([]);
  });

  it('refuses each spelling at the guard with 403 SQL_FORBIDDEN_FUNCTION, writing nothing', async () => {
    for (const text of [
      'SELECT ((4242::bigint).pg_advisory_lock)',
      'SELECT (4242::bigint).pg_catalog.pg_advisory_lock',
      'SELECT x.pg_advisory_lock FROM (SELECT 4242::bigint) AS x',
      'SELECT (t).pg_try_advisory_lock FROM (SELECT 1::bigint AS t) s',
      'SELECT pg_catalog.pg_advisory_lock(4242)',
      'SELECT (0::oid).lo_unlink',
      'SELECT (0::oid).lo_create',
      "SELECT ('select 1').ts_stat",
      "SELECT * FROM ts_stat('select 1')",
      "SELECT query_to_xml('select 1', true, true, '')",
      "SELECT pg_notify('strata_changes', 'globex')",
      'SELECT (0.5).setseed',
      'SELECT set_limit(0.9)',
      'SELECT txid_current_snapshot()',
    ]) {
      const res = await sql(text);
      expect(res.statusCode, text).toBe(403);
      expect(res.json().error.code, text).toBe('SQL_FORBIDDEN_FUNCTION');
    }
    expect(await advisoryLocks()).toBe(0);
    expect(await largeObjects()).toBe(0);
  });

  it('still reads columns whose names merely look like denied functions', async () => {
    const res = await sql('SELECT t.lo_priority, (t).http_status, t.pg_notify FROM (SELECT 1 AS lo_priority, 200 AS http_status, 3 AS pg_notify) t');
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().data).toEqual([{ lo_priority: 1, http_status: 200, pg_notify: 3 }]);
  });

  it('leaves no advisory lock, large object or notification behind', async () => {
    const listener = new pg.Client({ connectionString: t.database.url });
    await listener.connect();
    const heard: string[] = [];
    listener.on('notification', (n) => heard.push(`${n.channel}:${n.payload ?? ''}`));
    try {
      await listener.query('LISTEN strata_changes');
      const attempts = [
        'SELECT ((4242::bigint).pg_advisory_lock)',
        'SELECT pg_advisory_lock(4242)',
        'SELECT pg_advisory_lock_shared(17220 << 16, 1)',
        'SELECT lo_creat(-1)',
        "SELECT lo_from_bytea(0, 'x')",
        "SELECT pg_notify('strata_changes', 'globex')",
        "SELECT ts_stat('SELECT pg_advisory_lock(4242)::text::tsvector')",
      ];
      for (const text of attempts) {
        await expect(direct(text), text).rejects.toMatchObject({ code: '42501' });
        expect((await sql(text)).statusCode, text).toBe(403);
      }
      await listener.query('SELECT 1'); // a round trip: a notification sent before it has arrived
      expect(heard).toEqual([]);
      expect(await advisoryLocks()).toBe(0);
      expect(await largeObjects()).toBe(0);
      await expectNoCheckedOutClients(t.db);
    } finally {
      await listener.end();
    }
  });

  it("cannot read or write a large object, another tenant's or anyone's", async () => {
    const { rows } = await t.db.adminQuery<{ oid: number }>("SELECT lo_from_bytea(0, 'globex secret')::int8 AS oid");
    const oid = rows[0]!.oid;
    try {
      for (const ctx of [acme, globex]) {
        await expect(direct(`SELECT lo_get(${oid})`, ctx)).rejects.toMatchObject({ code: '42501' });
        await expect(direct(`SELECT lo_put(${oid}, 0, 'overwritten')`, ctx)).rejects.toMatchObject({ code: '42501' });
        await expect(direct(`SELECT lowrite(lo_open(${oid}, 131072), 'overwritten')`, ctx)).rejects.toMatchObject({ code: '42501' });
        await expect(direct(`SELECT lo_unlink(${oid})`, ctx)).rejects.toMatchObject({ code: '42501' });
      }
      const after = await t.db.adminQuery<{ data: string }>('SELECT convert_from(lo_get($1), $2) AS data', [oid, 'UTF8']);
      expect(after.rows[0]!.data).toBe('globex secret');
    } finally {
      await t.db.adminQuery('SELECT lo_unlink($1)', [oid]);
    }
  });

  it('returns analyst connections to the pool without session advisory locks, even when a lock could be taken', async () => {
    // this test database only: give strata_analyst a lock function back, as a misconfigured database would
    await t.db.adminQuery('GRANT EXECUTE ON FUNCTION pg_catalog.pg_advisory_lock(bigint) TO strata_analyst');
    try {
      for (let i = 0; i < 3; i++) {
        const { rows } = await direct('SELECT pg_advisory_lock(4242) IS NOT NULL AS locked');
        expect(rows[0]).toEqual({ locked: true });
        expect(await advisoryLocks()).toBe(0); // dropped before the connection went back to the pool
      }
      // and after a failing statement (the lock is taken before the error)
      await expect(direct('SELECT pg_advisory_lock(4242), 1 / 0')).rejects.toMatchObject({ code: '22012' });
      expect(await advisoryLocks()).toBe(0);
      await expectNoCheckedOutClients(t.db);
    } finally {
      await t.db.adminQuery('REVOKE EXECUTE ON FUNCTION pg_catalog.pg_advisory_lock(bigint) FROM strata_analyst');
    }
  });

  it('keeps the functions the platform itself calls working for its roles', async () => {
    // tenant sessions: their settings (set_config) and their transaction id (the change log)
    const { rows } = await t.db.withTenant(acme, (tx) =>
      tx.query<{ xid: string; tenant: string }>("SELECT pg_current_xact_id()::text AS xid, current_setting('strata.tenant_id') AS tenant"),
    );
    expect(rows[0]!.tenant).toBe('acme');
    expect(Number(rows[0]!.xid)).toBeGreaterThan(0);
    // the owner: the migration runner's lock and the change capture trigger's functions
    const owner = await t.db.adminQuery<{ ok: boolean }>('SELECT pg_try_advisory_lock(99) AND pg_advisory_unlock(99) AS ok');
    expect(owner.rows[0]!.ok).toBe(true);
    // raw SQL is served: the service's own sandbox check finds nothing callable it denies
    const res = await sql('SELECT 1 AS one');
    expect(res.statusCode).toBe(200);
  });

  it('is reversible: down gives EXECUTE back to PUBLIC, up takes it again', async () => {
    const canLock = async () =>
      (
        await t.db.adminQuery<{ ok: boolean }>(
          "SELECT has_function_privilege('strata_analyst', 'pg_catalog.pg_advisory_lock(bigint)', 'EXECUTE') AND has_function_privilege('strata_analyst', 'pg_catalog.lo_creat(integer)', 'EXECUTE') AS ok",
        )
      ).rows[0]!.ok;
    expect(await canLock()).toBe(false);
    await t.migrator.down({ to: '0008_compliance' });
    try {
      expect(await canLock()).toBe(true);
    } finally {
      await t.migrator.up();
    }
    expect(await canLock()).toBe(false);
  });
});
