/**
 * The migration runner against a real PostgreSQL: every test gets its own scratch database
 * (dropped WITH (FORCE) after), and runs on fixture folders or on the real migrations/.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFile, cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  createMigrator,
  defaultMigrationsDir,
  MIGRATION_LOCK_KEY,
  MigrationError,
  type MigratorOptions,
} from '../src/db/migrations/index.js';
import { splitSql } from '../src/db/migrations/split-sql.js';

const ADMIN_URL = process.env['TEST_ADMIN_DATABASE_URL'] ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const FIXTURES = join(ROOT, 'test/fixtures/migrations');
const fixture = (name: string) => join(FIXTURES, name);

let dbName: string;
let pool: pg.Pool;
const extraPools: pg.Pool[] = [];
const tmpDirs: string[] = [];

async function admin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: ADMIN_URL });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

function dbUrl(): string {
  const u = new URL(ADMIN_URL);
  u.pathname = `/${dbName}`;
  return u.toString();
}

/** pool.end() resolves before its sockets close, so DROP ... WITH (FORCE) may kill one: harmless here. */
function scratchPool(): pg.Pool {
  const p = new pg.Pool({ connectionString: dbUrl(), max: 4 });
  p.on('error', () => undefined);
  return p;
}

function newPool(): pg.Pool {
  const p = scratchPool();
  extraPools.push(p);
  return p;
}

const migrator = (dir: string, opts: Partial<MigratorOptions> = {}) => createMigrator({ pool, dir, ...opts });

async function tmpCopy(name: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-mig-'));
  tmpDirs.push(dir);
  await cp(fixture(name), dir, { recursive: true });
  return dir;
}

const q = async <R extends pg.QueryResultRow>(sql: string, params: unknown[] = []) =>
  (await pool.query<R>(sql, params)).rows;
const exists = async (rel: string) =>
  (await q<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [rel]))[0]?.t != null;
const bookkeeping = async () =>
  (await exists('strata.schema_migrations'))
    ? (await q<{ id: string }>('SELECT id FROM strata.schema_migrations ORDER BY id')).map((r) => r.id)
    : [];

/** Resolves to the MigrationError a promise rejects with (fails the test if it resolves). */
async function rejection(p: Promise<unknown>): Promise<MigrationError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(MigrationError);
  return e as MigrationError;
}

beforeEach(async () => {
  dbName = `mig_${randomBytes(6).toString('hex')}`;
  await admin((c) => c.query(`CREATE DATABASE ${dbName}`));
  pool = scratchPool();
});

afterEach(async () => {
  // A migrator must give back every client it borrowed (the lock client included).
  for (const p of [pool, ...extraPools]) expect(p.totalCount - p.idleCount).toBe(0);
  await Promise.all([pool, ...extraPools.splice(0)].map((p) => p.end()));
  await admin((c) => c.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`));
  await Promise.all(tmpDirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

describe('the real migrations/', () => {
  it('up creates the platform and demo tables, down and redo remove and recreate them', async () => {
    const logged: object[] = [];
    const m = migrator(defaultMigrationsDir(), {
      log: { info: (o) => logged.push(o), warn: () => undefined },
    });
    const applied = await m.up();
    const ids = applied.map((s) => s.id);
    expect(ids.slice(0, 2)).toEqual(['0001_platform', '0002_demo_schema']);
    expect(await exists('strata.tenants')).toBe(true);
    expect(await exists('public.pipelines')).toBe(true);
    expect(await bookkeeping()).toEqual(ids);
    expect(await m.isCurrent()).toBe(true);
    expect(logged[0]).toMatchObject({
      migration: '0001_platform',
      direction: 'up',
      durationMs: expect.any(Number),
    });

    const last = ids.at(-1) as string;
    const redone = await m.redo();
    expect(redone.map((s) => [s.id, s.direction])).toEqual([
      [last, 'down'],
      [last, 'up'],
    ]);
    expect(await bookkeeping()).toEqual(ids);

    await m.down({ to: '0001_platform' });
    expect(await exists('public.pipelines')).toBe(false);
    expect(await exists('strata.tenants')).toBe(true);
    expect(await bookkeeping()).toEqual(['0001_platform']);
    expect(await m.isCurrent()).toBe(false);

    await m.up();
    expect(await exists('public.run_logs')).toBe(true);
    await m.down({ to: 'zero' });
    expect(await exists('public.pipelines')).toBe(false);
    expect(await exists('strata.tenants')).toBe(false);
    expect(await bookkeeping()).toEqual([]);
  });

  it('creates the bookkeeping table with the documented columns before anything else', async () => {
    await migrator(defaultMigrationsDir()).status();
    const cols = await q<{ column_name: string }>(
      `SELECT column_name FROM information_schema.columns
        WHERE table_schema = 'strata' AND table_name = 'schema_migrations' ORDER BY ordinal_position`,
    );
    expect(cols.map((c) => c.column_name)).toEqual([
      'id',
      'checksum',
      'applied_at',
      'duration_ms',
      'applied_by',
    ]);
  });
});

describe('status and plan', () => {
  it('status lists applied and pending migrations with checksums and implicit dependencies', async () => {
    const m = migrator(fixture('basic'));
    await m.up({ to: '0002_b' });
    const status = await m.status();
    expect(status.map((s) => [s.id, s.applied, s.drift, s.dependsOn])).toEqual([
      ['0001_a', true, false, []],
      ['0002_b', true, false, ['0001_a']],
      ['0003_c', false, false, ['0002_b']],
    ]);
    expect(status[0]?.appliedAt).toBeInstanceOf(Date);
    expect(status[2]?.appliedAt).toBeNull();
    expect(status[0]?.checksum).toMatch(/^[0-9a-f]{64}$/);
  });

  it('plan shows the SQL up or down would run, without running it', async () => {
    const m = migrator(fixture('basic'));
    const up = await m.plan();
    expect(up.map((s) => s.id)).toEqual(['0001_a', '0002_b', '0003_c']);
    expect(up[0]?.sql).toContain('CREATE TABLE public.fx_a');
    expect(await exists('public.fx_a')).toBe(false);
    await m.up();
    const down = await m.plan({ direction: 'down', to: '0001_a' });
    expect(down.map((s) => [s.id, s.direction])).toEqual([
      ['0003_c', 'down'],
      ['0002_b', 'down'],
    ]);
    expect(down[0]?.sql).toContain('DROP COLUMN note');
  });

  it('applies an explicit depends_on DAG in dependency order, not id order', async () => {
    const applied = await migrator(fixture('dag')).up();
    expect(applied.map((s) => s.id)).toEqual(['0001_base', '0002_left', '0003_right', '0000_merge']);
    expect(await exists('public.fx_both')).toBe(true);
    const down = await migrator(fixture('dag')).down();
    expect(down.map((s) => s.id)).toEqual(['0000_merge']);
  });

  it('down with an unknown target is refused naming the folder', async () => {
    const m = migrator(fixture('basic'));
    await m.up();
    const e = await rejection(m.down({ to: '0042_nope' }));
    expect(e.code).toBe('UNKNOWN_TARGET');
    expect(e.message).toContain(fixture('basic'));
    expect(await bookkeeping()).toEqual(['0001_a', '0002_b', '0003_c']);
  });
});

describe('refusals', () => {
  it('refuses up, down and redo when an applied migration was edited (checksum drift), naming the file', async () => {
    const dir = await tmpCopy('basic');
    const m = migrator(dir);
    await m.up();
    const edited = join(dir, '0002_b', 'up.sql');
    await appendFile(edited, '-- edited after it was applied\n');

    for (const run of [() => m.up(), () => m.down(), () => m.redo()]) {
      const e = await rejection(run());
      expect(e.code).toBe('CHECKSUM_DRIFT');
      expect(e.message).toContain(edited);
      expect(e.file).toBe(edited);
    }
    expect(await bookkeeping()).toEqual(['0001_a', '0002_b', '0003_c']);
    expect(await exists('public.fx_b')).toBe(true);
    const { ok, problems } = await m.verify();
    expect(ok).toBe(false);
    expect(problems).toEqual([
      expect.objectContaining({ id: '0002_b', code: 'CHECKSUM_DRIFT', file: edited }),
    ]);
    expect((await m.status()).find((s) => s.id === '0002_b')?.drift).toBe(true);
    expect(await m.isCurrent()).toBe(false);
  });

  it('does not count CRLF line endings as drift', async () => {
    const dir = await tmpCopy('basic');
    const m = migrator(dir);
    await m.up();
    const file = join(dir, '0001_a', 'up.sql');
    await writeFile(file, (await readFile(file, 'utf8')).replace(/\n/g, '\r\n'));
    expect(await m.verify()).toEqual({ ok: true, problems: [] });
  });

  it('refuses a migration whose depends_on names an unknown id, naming its meta.json', async () => {
    const m = migrator(fixture('missing-dep'));
    const e = await rejection(m.up());
    const meta = join(fixture('missing-dep'), '0002_b', 'meta.json');
    expect(e.code).toBe('MISSING_DEPENDENCY');
    expect(e.message).toContain(meta);
    expect(e.message).toContain('0009_nope');
    expect(await bookkeeping()).toEqual([]);
    expect(await exists('public.fx_a')).toBe(false);
    expect((await m.verify()).problems.map((p) => p.code)).toContain('MISSING_DEPENDENCY');
  });

  it('refuses two heads, naming both migrations files', async () => {
    const e = await rejection(migrator(fixture('two-heads')).up());
    expect(e.code).toBe('MULTIPLE_HEADS');
    expect(e.message).toContain(join(fixture('two-heads'), '0002_b', 'meta.json'));
    expect(e.message).toContain(join(fixture('two-heads'), '0003_c', 'meta.json'));
    expect(await bookkeeping()).toEqual([]);
  });

  it('refuses a dependency cycle', async () => {
    const e = await rejection(migrator(fixture('cycle')).up());
    expect(e.problems.map((p) => p.code)).toContain('CYCLE');
    expect(e.message).toContain(join(fixture('cycle'), '0001_a', 'meta.json'));
    expect(await exists('public.fx_a')).toBe(false);
  });

  it('reports an applied migration whose folder is gone (MISSING_FILE) and refuses to run', async () => {
    const dir = await tmpCopy('basic');
    const m = migrator(dir);
    await m.up();
    await rm(join(dir, '0003_c'), { recursive: true });
    const { problems } = await m.verify();
    expect(problems).toEqual([
      expect.objectContaining({ id: '0003_c', code: 'MISSING_FILE', file: join(dir, '0003_c') }),
    ]);
    const e = await rejection(m.down());
    expect(e.code).toBe('MISSING_FILE');
    expect(await bookkeeping()).toEqual(['0001_a', '0002_b', '0003_c']);
  });
});

describe('one runner at a time', () => {
  it('serialises two runners started at once: both resolve and each migration is applied exactly once', async () => {
    const a = createMigrator({ pool: newPool(), dir: fixture('slow') });
    const b = createMigrator({ pool: newPool(), dir: fixture('slow') });
    const [ra, rb] = await Promise.all([a.up(), b.up()]);
    expect([ra.length, rb.length].sort()).toEqual([0, 2]);
    expect(await bookkeeping()).toEqual(['0001_slow', '0002_after']);
  });

  it('gives up with LOCK_TIMEOUT while another session holds the runner lock', async () => {
    const holder = await pool.connect();
    try {
      await holder.query('SELECT pg_advisory_lock($1::bigint)', [MIGRATION_LOCK_KEY]);
      const t0 = Date.now();
      const e = await rejection(migrator(fixture('basic'), { lockTimeoutMs: 300 }).up());
      expect(e.code).toBe('LOCK_TIMEOUT');
      expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
      expect(await exists('public.fx_a')).toBe(false);
    } finally {
      holder.release();
    }
  });

  it('a lock dies with its holder connection, so a crashed runner never blocks the next', async () => {
    const crashed = new pg.Client({ connectionString: dbUrl() });
    await crashed.connect();
    await crashed.query('SELECT pg_advisory_lock($1::bigint)', [MIGRATION_LOCK_KEY]);
    await crashed.end();
    const applied = await migrator(fixture('basic'), { lockTimeoutMs: 2000 }).up();
    expect(applied).toHaveLength(3);
  });

  it('releases the lock after a failed run', async () => {
    await rejection(migrator(fixture('failing')).up());
    const locks = await q<{ n: number }>(`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory'
        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`);
    expect(locks[0]?.n).toBe(0);
  });
});

describe('execution', () => {
  it('dry run executes and rolls back: no table, no bookkeeping row, not even the bookkeeping table', async () => {
    const m = migrator(fixture('basic'));
    const steps = await m.up({ dryRun: true });
    expect(steps.map((s) => s.id)).toEqual(['0001_a', '0002_b', '0003_c']);
    expect(await exists('public.fx_a')).toBe(false);
    expect(await exists('strata.schema_migrations')).toBe(false);

    await m.up();
    const down = await m.down({ to: 'zero', dryRun: true });
    expect(down.map((s) => s.id)).toEqual(['0003_c', '0002_b', '0001_a']);
    expect(await exists('public.fx_a')).toBe(true);
    expect(await bookkeeping()).toEqual(['0001_a', '0002_b', '0003_c']);
  });

  it('dry run proves the steps execute: a failing step is reported naming its file', async () => {
    const e = await rejection(migrator(fixture('failing')).up({ dryRun: true }));
    expect(e.code).toBe('MIGRATION_FAILED');
    expect(e.message).toContain(join(fixture('failing'), '0002_broken', 'up.sql'));
    expect(await exists('public.fx_ok')).toBe(false);
    expect(await bookkeeping()).toEqual([]);
  });

  it('a failing migration rolls back its own changes, keeps earlier ones, and names the file and line', async () => {
    const e = await rejection(migrator(fixture('failing')).up());
    const file = join(fixture('failing'), '0002_broken', 'up.sql');
    expect(e.code).toBe('MIGRATION_FAILED');
    expect(e.file).toBe(file);
    expect(e.message).toContain(`${file}:3`);
    expect(e.message).toContain('fx_does_not_exist');
    expect((e.cause as { code?: string }).code).toBe('42P01');
    expect(await exists('public.fx_ok')).toBe(true);
    expect(await exists('public.fx_partial')).toBe(false);
    expect(await bookkeeping()).toEqual(['0001_ok']);
  });

  it('runs a non-transactional migration statement by statement (CREATE INDEX CONCURRENTLY)', async () => {
    const m = migrator(fixture('concurrent-index'));
    await m.up();
    const idx = await q<{ valid: boolean; comment: string }>(
      `SELECT i.indisvalid AS valid, obj_description('public.fx_events_kind_idx'::regclass, 'pg_class') AS comment
         FROM pg_index i WHERE i.indexrelid = 'public.fx_events_kind_idx'::regclass`,
    );
    expect(idx).toEqual([{ valid: true, comment: 'a;b' }]);
    expect(await bookkeeping()).toEqual(['0001_table', '0002_index']);
    await m.down();
    expect(await exists('public.fx_events_kind_idx')).toBe(false);
    expect(await bookkeeping()).toEqual(['0001_table']);
  });

  it('dry run lists a non-transactional migration without executing it', async () => {
    const warnings: object[] = [];
    const steps = await migrator(fixture('concurrent-index'), {
      log: { info: () => undefined, warn: (o) => warnings.push(o) },
    }).up({ dryRun: true });
    expect(steps.map((s) => s.id)).toEqual(['0001_table', '0002_index']);
    expect(warnings).toEqual([expect.objectContaining({ migration: '0002_index', dryRun: true })]);
    expect(await exists('public.fx_events')).toBe(false);
  });

  it('runs a TS module migration (data migration with a down)', async () => {
    const m = migrator(fixture('module'));
    const steps = await m.up();
    expect(steps[1]?.sql).toContain('migration.ts');
    expect(await q('SELECT id, name FROM public.fx_a ORDER BY id')).toEqual([
      { id: 1, name: 'one' },
      { id: 2, name: 'two' },
    ]);
    await m.down();
    expect(await q('SELECT id FROM public.fx_a')).toEqual([]);
    expect(await bookkeeping()).toEqual(['0001_a']);
  });
});

describe('splitSql', () => {
  it('splits on top-level semicolons only, keeping quotes, dollar quotes and comments intact', () => {
    const script = [
      "INSERT INTO t VALUES ('a;b', E'c\\';d');",
      '-- comment; not a statement',
      'DO $$ BEGIN PERFORM 1; END $$;',
      'CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $fn$ SELECT 1; $fn$;',
      '/* block; /* nested; */ */ SELECT "semi;colon" FROM x',
    ].join('\n');
    const st = splitSql(script);
    expect(st.map((s) => s.line)).toEqual([1, 2, 4, 5]);
    expect(st[1]?.sql).toContain('DO $$ BEGIN PERFORM 1; END $$');
    expect(st[2]?.sql).toContain('$fn$ SELECT 1; $fn$');
    expect(st[3]?.sql).toContain('"semi;colon"');
  });
});

describe('npm run migrate:check (scripts/check-reversible.ts)', () => {
  const run = (dir: string) =>
    promisify(execFile)(
      join(ROOT, 'node_modules/.bin/tsx'),
      [join(ROOT, 'scripts/check-reversible.ts'), '--dir', dir],
      {
        env: { ...process.env, DATABASE_URL: dbUrl() },
      },
    ).then(
      (r) => ({ code: 0, ...r }),
      (e: { code: number; stdout: string; stderr: string }) => e,
    );

  it('passes for reversible migrations and drops its scratch database', async () => {
    const r = await run(fixture('basic'));
    expect(r.stdout).toContain('all migrations are reversible');
    expect(r.code).toBe(0);
    const scratch = /scratch database (\S+)/.exec(r.stdout)?.[1];
    expect(scratch).toMatch(/^strata_revcheck_/);
    const left = await admin((c) => c.query('SELECT 1 FROM pg_database WHERE datname = $1', [scratch]));
    expect(left.rowCount).toBe(0);
  }, 30_000);

  it('fails naming the migration whose down leaves an object behind', async () => {
    const r = await run(fixture('irreversible'));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('0002_leaky: down does not undo up');
    expect(r.stderr).toContain('table public.fx_leak');
  }, 30_000);
});
