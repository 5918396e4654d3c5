/**
 * strata/testing, the kit itself: clones of the migrated template, factories for every table of the
 * demo schema and of a fixture schema (composite keys, self-references, CHECKs, enums, lengths,
 * unique columns), traits/overrides/associations, seeded replay, tenant sessions under RLS,
 * snapshots that restore exactly, row assertions, and the sweep of a crashed run's databases.
 */
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createFactoryRuntime,
  createTestDatabase as createKitDatabase,
  drainTestDatabasePool,
  factory,
  fillTestDatabasePool,
  settlePools,
  FactoryError,
  RowAssertionError,
  sweepTestDatabases,
  withTestDatabase,
  type TestDatabase,
} from '../src/testing/index.js';
import { CLONE_PREFIX, createTestDatabase, KIT_OPTIONS, withServer } from './helpers/databases.js';

const exists = (name: string) =>
  withServer(async (c) => (await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).rowCount === 1);
/** Every database whose name starts with `prefix_`, sorted. */
const databasesOf = (prefix: string) =>
  withServer(async (c) => (await c.query<{ datname: string }>("SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1", [`${prefix}_`])).rows.map((r) => r.datname));

const FIXTURE = `
CREATE TYPE public.priority AS ENUM ('low', 'normal', 'high', 'urgent');
CREATE TABLE public.kit_accounts (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  email varchar(40) NOT NULL UNIQUE,
  handle varchar(8) NOT NULL UNIQUE,
  plan text NOT NULL CHECK (plan IN ('free', 'pro', 'enterprise')),
  seats integer NOT NULL CHECK (seats BETWEEN 1 AND 50),
  balance numeric(10,2) NOT NULL CHECK (balance >= 0 AND balance <= 99999),
  level smallint NOT NULL CHECK (level = ANY (ARRAY[1, 2, 3])),
  tags text[] NOT NULL,
  settings jsonb NOT NULL,
  active boolean NOT NULL,
  born date NOT NULL,
  code char(6) NOT NULL CHECK (length(code) <= 6)
);
CREATE TABLE public.kit_orders (
  account_id uuid NOT NULL REFERENCES public.kit_accounts (id),
  order_no integer NOT NULL CHECK (order_no > 0),
  priority public.priority NOT NULL,
  placed_at timestamptz NOT NULL,
  note text CHECK (note IS NULL OR length(note) > 3 OR note ~ '^x'),
  PRIMARY KEY (account_id, order_no)
);
CREATE TABLE public.kit_order_lines (
  account_id uuid NOT NULL,
  order_no integer NOT NULL,
  line_no smallint NOT NULL CHECK (line_no >= 1 AND line_no < 1000),
  quantity integer NOT NULL CHECK (quantity > 0),
  sku varchar(12) NOT NULL,
  PRIMARY KEY (account_id, order_no, line_no),
  FOREIGN KEY (account_id, order_no) REFERENCES public.kit_orders (account_id, order_no) ON DELETE CASCADE
);
CREATE TABLE public.kit_categories (
  id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name varchar(30) NOT NULL UNIQUE,
  parent_id integer REFERENCES public.kit_categories (id),
  depth integer NOT NULL CHECK (depth >= 0 AND depth <= 5)
);
CREATE TABLE public.kit_loops (
  id integer PRIMARY KEY,
  next_id integer NOT NULL REFERENCES public.kit_loops (id)
);`;

describe('strata/testing', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });

  describe('test databases', () => {
    it('clones the migrated template under a crash-proof name and drops it after', async () => {
      expect(db.template).toMatch(/_[0-9a-f]{12}$/);
      expect(db.name).toMatch(/_[0-9a-z]+_[0-9a-z]+_[0-9a-f]{4}_[0-9a-f]{6}$/);
      const { rows } = await db.query<{ n: string }>("SELECT count(*) AS n FROM strata.schema_migrations");
      expect(Number(rows[0]!.n)).toBeGreaterThan(0);
      const other = await createTestDatabase();
      expect(await exists(other.name)).toBe(true);
      await other.drop();
      expect(await exists(other.name)).toBe(false);
    });

    it('withTestDatabase drops its database even when the test throws', async () => {
      let name = '';
      await expect(
        withTestDatabase({ ...KIT_OPTIONS, prefix: CLONE_PREFIX }, async (t) => {
          name = t.name;
          await t.query('SELECT 1');
          throw new Error('the test failed');
        }),
      ).rejects.toThrow('the test failed');
      expect(name).not.toBe('');
      expect(await exists(name)).toBe(false);
    });

    it('leaves no database behind a run that was killed: the sweep drops it by name', async () => {
      const prefix = `kit_crash_${process.pid.toString(36)}`;
      const child = spawnSync(process.execPath, ['--import', 'tsx', 'test/fixtures/crashing-test-run.ts', prefix], { encoding: 'utf8', env: process.env, timeout: 60_000 });
      expect(child.signal).toBe('SIGKILL');
      const leftover = child.stdout.trim();
      expect(leftover.startsWith(`${prefix}_`)).toBe(true);
      expect(await exists(leftover)).toBe(true);
      const swept = await sweepTestDatabases({ serverUrl: KIT_OPTIONS.serverUrl, prefix });
      expect(swept).toEqual([{ name: leftover, reason: 'creator exited' }]);
      expect(await exists(leftover)).toBe(false);
      // the dead run's ready clones (a pool is shared, so only a drain or age removes them)
      await drainTestDatabasePool({ serverUrl: KIT_OPTIONS.serverUrl, prefix });
      expect(await databasesOf(prefix)).toEqual([]);
    });

    describe('the pool of ready clones', () => {
      const prefix = `kit_pool_${process.pid.toString(36)}`;
      const opts = { ...KIT_OPTIONS, prefix, pool: 2 };
      afterAll(async () => {
        await drainTestDatabasePool({ serverUrl: KIT_OPTIONS.serverUrl, prefix });
        for (const n of await databasesOf(prefix)) await withServer((c) => c.query(`DROP DATABASE IF EXISTS ${n} WITH (FORCE)`));
      });
      const pooled = async () => (await databasesOf(prefix)).filter((n) => n.startsWith(`${prefix}_pool_`));

      it('hands out a ready clone by renaming it, under a crash-proof name, and refills in the background', async () => {
        const template = await fillTestDatabasePool(opts);
        const ready = await pooled();
        expect(ready).toHaveLength(2);
        for (const n of ready) expect(n).toContain(template.slice(-12));
        const db = await createKitDatabase(opts);
        try {
          expect(db.pooled).toBe(true);
          expect(ready).not.toContain(db.name);
          expect(db.name).toMatch(/_[0-9a-z]+_[0-9a-z]+_[0-9a-f]{4}_[0-9a-f]{6}$/);
          // the oldest ready clone was taken: it is gone from the pool under its old name
          expect(await exists(ready[0]!)).toBe(false);
          const { rows } = await db.query<{ n: string }>('SELECT count(*) AS n FROM strata.schema_migrations');
          expect(Number(rows[0]!.n)).toBeGreaterThan(0);
          await settlePools();
          expect(await pooled()).toHaveLength(2);
        } finally {
          await db.drop();
        }
        expect(await exists(db.name)).toBe(false);
      });

      it('is parallel-safe: concurrent takers each get a database of their own, none is handed out twice', async () => {
        await fillTestDatabasePool(opts);
        const dbs = await Promise.all(Array.from({ length: 5 }, () => createKitDatabase(opts)));
        try {
          expect(new Set(dbs.map((d) => d.name)).size).toBe(5);
          // at most the pool's two came from the pool, the rest were cloned on demand
          expect(dbs.filter((d) => d.pooled).length).toBeLessThanOrEqual(2);
          expect(dbs.filter((d) => d.pooled).length).toBeGreaterThanOrEqual(1);
          for (const d of dbs) expect(await exists(d.name)).toBe(true);
        } finally {
          for (const d of dbs) await d.drop();
        }
        await settlePools();
        expect(await pooled()).toHaveLength(2);
      });

      it('never hands out a clone of another migration set, drops such clones when refilling, and a drain leaves nothing', async () => {
        const foreign = `${prefix}_pool_0123456789ab_${Date.now().toString(36)}_abcdef`;
        await withServer((c) => c.query(`CREATE DATABASE ${foreign}`));
        await drainTestDatabasePool({ serverUrl: KIT_OPTIONS.serverUrl, prefix });
        await withServer((c) => c.query(`CREATE DATABASE ${foreign}`));
        // the pool is empty for the current template: the foreign clone is not taken
        const db = await createKitDatabase(opts);
        try {
          expect(db.pooled).toBe(false);
          expect(await exists(foreign)).toBe(true);
          await settlePools();
          // the refill dropped the clone whose template does not exist
          expect(await exists(foreign)).toBe(false);
          expect(await pooled()).toHaveLength(2);
        } finally {
          await db.drop();
        }
        expect((await drainTestDatabasePool({ serverUrl: KIT_OPTIONS.serverUrl, prefix })).length).toBe(2);
        expect(await databasesOf(prefix)).toEqual([]);
      });

      it('sweeps ready clones older than maxAgeMs', async () => {
        const old = `${prefix}_pool_0123456789ab_${(Date.now() - 2 * 3600_000).toString(36)}_abcdef`;
        await withServer((c) => c.query(`CREATE DATABASE ${old}`));
        const swept = await sweepTestDatabases({ serverUrl: KIT_OPTIONS.serverUrl, prefix });
        expect(swept).toEqual([{ name: old, reason: 'pool clone too old' }]);
        expect(await exists(old)).toBe(false);
      });
    });

    it('sweeps by age too, and leaves live and foreign databases alone', async () => {
      const prefix = `kit_age_${process.pid.toString(36)}`;
      const old = `${prefix}_${(Date.now() - 2 * 3600_000).toString(36)}_${process.pid.toString(36)}_0000_abcdef`;
      const mine = await createTestDatabase().then(async (d) => {
        // a live database of this process under the same prefix
        const name = `${prefix}_${Date.now().toString(36)}_${process.pid.toString(36)}_0000_fedcba`;
        await withServer((c) => c.query(`CREATE DATABASE ${name} TEMPLATE ${d.name}`));
        await d.drop();
        return name;
      });
      const foreign = `${prefix}_not_a_clone`;
      await withServer(async (c) => {
        await c.query(`CREATE DATABASE ${old}`);
        await c.query(`CREATE DATABASE ${foreign}`);
      });
      try {
        const swept = await sweepTestDatabases({ serverUrl: KIT_OPTIONS.serverUrl, prefix });
        expect(swept).toEqual([{ name: old, reason: 'too old' }]);
        expect(await exists(mine)).toBe(true);
        expect(await exists(foreign)).toBe(true);
      } finally {
        await withServer(async (c) => {
          for (const n of [old, mine, foreign]) await c.query(`DROP DATABASE IF EXISTS ${n} WITH (FORCE)`);
        });
      }
    });
  });

  describe('factories on the demo schema', () => {
    it('makes insertable rows for every table, through a tenant session under RLS', async () => {
      const schema = await db.runtime.schema();
      const tables = [...schema.values()].filter((t) => t.kind === 'table').map((t) => t.name);
      expect(tables).toEqual(expect.arrayContaining(['pipelines', 'pipeline_runs', 'run_steps', 'run_logs', 'documents']));
      const acme = db.tenant('acme');
      for (const table of tables) {
        const rows = await factory(table).createList(acme, 5);
        expect(rows, table).toHaveLength(5);
        if (schema.get(table)!.hasTenantId) expect(rows.every((r) => r['tenant_id'] === 'acme'), table).toBe(true);
      }
      // parents were made on demand for the NOT NULL foreign keys, in the same tenant
      const steps = await acme.query<{ ok: boolean }>(
        'SELECT bool_and(r.id IS NOT NULL AND p.id IS NOT NULL) AS ok FROM run_steps s JOIN pipeline_runs r ON r.id = s.run_id JOIN pipelines p ON p.id = r.pipeline_id',
      );
      expect(steps.rows[0]!.ok).toBe(true);
      // another tenant sees none of it
      const globex = db.tenant('globex');
      for (const table of tables) await globex.expectRows(table).toBeEmpty();
    });

    it('applies traits, overrides and associations, fishery style', async () => {
      const acme = db.tenant('acme');
      const pipelines = factory('pipelines', { description: 'made by a factory' }).traits({
        archived: { status: 'archived' },
        named: { name: ({ seq }: { seq: number }) => `pipeline #${seq}` },
      });
      const p = await pipelines.trait('archived', 'named').create(acme, { description: 'override wins' });
      expect(p).toMatchObject({ status: 'archived', description: 'override wins' });
      expect(String(p['name'])).toMatch(/^pipeline #\d+$/);
      const runs = await factory('pipeline_runs').associations({ pipelines: p }).createList(acme, 3, { status: 'failed' });
      expect(runs.map((r) => r['pipeline_id'])).toEqual([p['id'], p['id'], p['id']]);
      await acme.expectRows('pipeline_runs', { pipeline_id: p['id'] }).toMatch([{ status: 'failed' }, { status: 'failed' }, { status: 'failed' }]);
      expect(() => pipelines.trait('nope')).toThrow(FactoryError);
      await expect(pipelines.create(acme, { colour: 'red' })).rejects.toMatchObject({ code: 'UNKNOWN_COLUMN' });
      await expect(factory('no_such_table').create(acme)).rejects.toMatchObject({ code: 'TABLE_NOT_FOUND' });
    });

    it('build() writes nothing, and the same seed replays the same rows', async () => {
      const acme = db.tenant('acme');
      const before = await acme.query<{ n: string }>('SELECT count(*) AS n FROM pipelines');
      const built = await factory('pipelines').buildList(acme, 3);
      expect(built).toHaveLength(3);
      expect(built.every((r) => typeof r['name'] === 'string' && String(r['name']).length <= 200)).toBe(true);
      const after = await acme.query<{ n: string }>('SELECT count(*) AS n FROM pipelines');
      expect(after.rows[0]!.n).toBe(before.rows[0]!.n);
      const replay = async (seed: number) => {
        const ctx = { query: db.query, runtime: createFactoryRuntime({ query: db.query, seed }) };
        return factory('run_logs').buildList(ctx, 3);
      };
      expect(await replay(7)).toEqual(await replay(7));
      expect(await replay(7)).not.toEqual(await replay(8));
    });

    it('a tenant session cannot write another tenant\'s rows through a factory', async () => {
      const acme = db.tenant('acme');
      await expect(factory('pipelines').create(acme, { tenant_id: 'globex' })).rejects.toMatchObject({ code: '42501' });
      await db.tenant('globex').expectRows('pipelines').toBeEmpty();
    });
  });

  describe('factories on a fixture schema', () => {
    let fx: TestDatabase;
    beforeAll(async () => {
      fx = await createTestDatabase();
      await fx.query(FIXTURE);
    });
    afterAll(async () => {
      await fx?.drop();
    });

    it('honours composite keys, self-references, CHECKs, enums, lengths and unique columns', async () => {
      const lines = await factory('kit_order_lines').createList(fx, 40);
      expect(lines).toHaveLength(40);
      const accounts = await factory('kit_accounts').createList(fx, 60);
      expect(new Set(accounts.map((a) => a['email'])).size).toBe(60);
      for (const a of accounts) {
        expect(['free', 'pro', 'enterprise']).toContain(a['plan']);
        expect(a['seats']).toBeGreaterThanOrEqual(1);
        expect(a['seats']).toBeLessThanOrEqual(50);
        expect([1, 2, 3]).toContain(a['level']);
        expect(String(a['handle']).length).toBeLessThanOrEqual(8);
        expect(String(a['email']).length).toBeLessThanOrEqual(40);
      }
      const orders = await factory('kit_orders').createList(fx, 30);
      expect(orders.every((o) => ['low', 'normal', 'high', 'urgent'].includes(String(o['priority'])))).toBe(true);
      const roots = await factory('kit_categories').createList(fx, 5);
      const children = await factory('kit_categories').associations({ parent_id: roots[0]! }).createList(fx, 5);
      expect(children.every((c) => c['parent_id'] === roots[0]!['id'])).toBe(true);
      expect(roots.every((c) => c['parent_id'] === null)).toBe(true);
      // an identity-always key given explicitly is written with OVERRIDING SYSTEM VALUE
      const fixed = await factory('kit_categories').create(fx, { id: 999_999 });
      expect(fixed['id']).toBe(999_999);
    });

    it('refuses a cycle of NOT NULL foreign keys with a code instead of recursing forever', async () => {
      await expect(factory('kit_loops').create(fx)).rejects.toMatchObject({ code: 'FACTORY_TOO_DEEP' });
      await fx.expectRows('kit_loops').toBeEmpty();
    });
  });

  describe('snapshots, diffs and row assertions', () => {
    it('restores a snapshot exactly: the diff of restored vs snapshot is empty', async () => {
      const t = await createTestDatabase();
      try {
        const acme = t.tenant('acme');
        const [p1, p2] = await factory('pipelines').createList(acme, 2);
        await factory('pipeline_runs').associations({ pipelines: p1! }).createList(acme, 3);
        await t.snapshot('seeded');
        await acme.query("UPDATE pipelines SET status = 'paused' WHERE id = $1", [p1!['id']]);
        await acme.query('DELETE FROM pipelines WHERE id = $1', [p2!['id']]);
        const [p3] = await factory('pipelines').createList(acme, 1);
        const diff = await t.diff('seeded');
        expect(diff.empty).toBe(false);
        expect(diff.tables['pipelines']!.added.map((r) => r['id'])).toEqual([Number(p3!['id'])]);
        expect(diff.tables['pipelines']!.removed.map((r) => r['id'])).toEqual([Number(p2!['id'])]);
        expect(diff.tables['pipelines']!.changed).toHaveLength(1);
        expect(diff.tables['pipelines']!.changed[0]!.after['status']).toBe('paused');
        await t.restore('seeded');
        expect((await t.diff('seeded')).empty).toBe(true);
        await t.expectRows('pipelines').toMatch([{ id: p1!['id'], status: p1!['status'] }, { id: p2!['id'] }]);
        await t.expectRows('pipeline_runs', { pipeline_id: p1!['id'] }).toHaveLength(3);
      } finally {
        await t.drop();
      }
      expect(await exists(t.name)).toBe(false);
    });

    it('expectRows throws a readable assertion error on a mismatch', async () => {
      const acme = db.tenant('acme');
      await factory('pipelines').create(acme, { name: 'needle' });
      await acme.expectRows('pipelines', { name: 'needle' }).toMatch([{ name: 'needle', status: 'active' }]);
      await expect(acme.expectRows('pipelines', { name: 'needle' }).toMatch([{ status: 'paused' }])).rejects.toThrow(RowAssertionError);
      await expect(acme.expectRows('pipelines', { name: 'needle' }).toHaveLength(2)).rejects.toThrow(/expected 2 rows in pipelines/);
    });
  });
});
