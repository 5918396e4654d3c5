/**
 * Issue 13: what change capture's platform functions reveal to, and allow, a tenant (migration
 * 0017_tenant_horizon).
 *
 * - strata.maintain_change_partitions / ensure_change_partition (SECURITY DEFINER: they create and
 *   drop partitions of every tenant's change log) are no longer executable by PUBLIC: a tenant
 *   session and an analyst cannot call them; the owner (the maintenance job) still can.
 * - strata.change_horizon() no longer reads the whole cluster's locks for everyone: a tenant's open
 *   write transaction does not hold back another tenant's change feed (it did: the feed of every
 *   tenant stalled until it ended, which told the others it was open), an advisory lock of the
 *   capture namespace in another database of the cluster holds back nothing here, and a tenant's
 *   own open writer still holds back its own feed (no event is skipped).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';
import { TEST_APP_PASSWORD, TEST_APP_ROLE } from './helpers/constants.js';
import { SERVER_URL } from './helpers/databases.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';

type Json = Record<string, unknown>;
interface Event {
  id: string;
  tenant_id: string;
  after: Json | null;
}

describe('change capture: what one tenant sees of, and can do to, the others', () => {
  let t: TestApp;
  const headers: Record<string, Record<string, string>> = {};
  beforeAll(async () => {
    t = await createTestApp({ env: { CHANGES_POLL_MS: '200', CHANGES_HEARTBEAT_MS: '200' } });
    headers['acme'] = await t.auth('writer', 'acme');
    headers['globex'] = await t.auth('writer', 'globex');
  });
  afterAll(() => t.close());
  afterEach(() => expectNoCheckedOutClients(t.db));

  const client = async (url: string, user?: { name: string; password: string }) => {
    const u = new URL(url);
    if (user) {
      u.username = user.name;
      u.password = user.password;
    }
    const c = new pg.Client({ connectionString: u.toString() });
    await c.connect();
    return c;
  };
  /** A raw connection as the application role (a tenant session without the service around it). */
  const appClient = () => client(t.database.url, { name: TEST_APP_ROLE, password: TEST_APP_PASSWORD });

  const events = async (tenant: string, after = '0'): Promise<Event[]> => {
    const out: Event[] = [];
    for (;;) {
      const res = await t.app.inject({ method: 'GET', url: `/v1/changes?after=${after}&limit=500`, headers: headers[tenant]! });
      expect(res.statusCode, res.body).toBe(200);
      const body = res.json<{ data: Event[]; next_cursor: string | null }>();
      out.push(...body.data);
      if (!body.next_cursor) return out;
      after = body.next_cursor;
    }
  };
  const names = (evs: Event[]) => evs.map((e) => e.after?.['name']);
  const insert = async (tenant: string, name: string) => {
    const res = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: headers[tenant]!, payload: { name } });
    expect(res.statusCode, res.body).toBe(201);
  };
  const lastId = async () =>
    (await t.db.adminQuery<{ id: string }>('SELECT coalesce(max(id), 0)::text AS id FROM strata.changes')).rows[0]!.id;

  describe('partition maintenance functions', () => {
    const CALLS = ['SELECT * FROM strata.maintain_change_partitions(1, 1)', "SELECT strata.ensure_change_partition('2001-01-01')"];

    it('a tenant session cannot call them (42501), and nothing is created or dropped', async () => {
      const parts = async () => (await t.db.adminQuery<{ n: number }>("SELECT count(*)::int AS n FROM pg_inherits WHERE inhparent = 'strata.changes'::regclass")).rows[0]!.n;
      const before = await parts();
      const c = await appClient();
      try {
        await c.query("SELECT set_config('strata.tenant_id', 'acme', false)");
        for (const sql of CALLS) await expect(c.query(sql), sql).rejects.toMatchObject({ code: '42501' });
        for (const role of ['strata_tenant', 'strata_analyst']) {
          await c.query('BEGIN');
          try {
            await c.query(`SET LOCAL ROLE ${role}`);
            for (const sql of CALLS) {
              await c.query('SAVEPOINT s');
              await expect(c.query(sql), `${role}: ${sql}`).rejects.toMatchObject({ code: '42501' });
              await c.query('ROLLBACK TO SAVEPOINT s');
            }
          } finally {
            await c.query('ROLLBACK');
          }
        }
      } finally {
        await c.end();
      }
      expect(await parts()).toBe(before);
    });

    it('no role but the owner may execute them; the maintenance job (owner) still runs them', async () => {
      const { rows } = await t.db.adminQuery<{ fn: string; role: string }>(
        `SELECT p.oid::regprocedure::text AS fn, r.rolname AS role
           FROM pg_proc p CROSS JOIN pg_roles r
          WHERE p.oid IN ('strata.maintain_change_partitions(int, int)'::regprocedure, 'strata.ensure_change_partition(date)'::regprocedure)
            AND r.oid <> p.proowner AND NOT r.rolsuper AND has_function_privilege(r.oid, p.oid, 'EXECUTE')`,
      );
      expect(rows).toEqual([]);
      const ran = await t.db.adminQuery<{ created: number; dropped: number }>('SELECT * FROM strata.maintain_change_partitions(8, 0)');
      expect(ran.rows[0]).toMatchObject({ dropped: 0 });
    });
  });

  describe('the visibility horizon', () => {
    it("another tenant's open write transaction does not hold back this tenant's feed", async () => {
      const start = await lastId();
      const a = await appClient();
      try {
        await a.query('BEGIN');
        await a.query("SELECT set_config('strata.tenant_id', 'acme', true)");
        await a.query("INSERT INTO pipelines (name) VALUES ('h-acme-open')"); // its capture lock is below every later id
        await insert('globex', 'h-globex-1');
        await insert('globex', 'h-globex-2');
        // before 0017 globex saw nothing until acme's transaction ended
        expect(names(await events('globex', start))).toEqual(['h-globex-1', 'h-globex-2']);
        // acme's own feed stays behind its open writer: nothing past it is exposed, so nothing is skipped
        await insert('acme', 'h-acme-2');
        expect(names(await events('acme', start))).toEqual([]);
        await a.query('COMMIT');
      } finally {
        await a.end();
      }
      expect(names(await events('acme', start))).toEqual(['h-acme-open', 'h-acme-2']);
    });

    it('a transaction writing events of two tenants holds back both until it ends', async () => {
      const start = await lastId();
      const a = await appClient();
      try {
        await a.query('BEGIN');
        await a.query("SELECT set_config('strata.tenant_id', 'acme', true)");
        await a.query("INSERT INTO pipelines (name) VALUES ('h2-acme')");
        await a.query("SELECT set_config('strata.tenant_id', 'globex', true)");
        await a.query("INSERT INTO pipelines (name) VALUES ('h2-globex')");
        await insert('globex', 'h2-globex-later');
        await insert('acme', 'h2-acme-later');
        expect(names(await events('globex', start))).toEqual([]);
        expect(names(await events('acme', start))).toEqual([]);
        await a.query('COMMIT');
      } finally {
        await a.end();
      }
      expect(names(await events('acme', start))).toEqual(['h2-acme', 'h2-acme-later']);
      expect(names(await events('globex', start))).toEqual(['h2-globex', 'h2-globex-later']);
    });

    it('a lock of the capture namespace held in another database of the cluster holds back nothing here', async () => {
      const start = await lastId();
      const other = await client(SERVER_URL);
      try {
        await other.query('BEGIN');
        // key 0 of the capture namespace: before 0017 every horizon of every database fell to 0
        await other.query('SELECT pg_advisory_xact_lock_shared((17220 << 16), 0)');
        await insert('globex', 'h3-globex');
        expect(names(await events('globex', start))).toEqual(['h3-globex']);
        const h = await t.db.adminQuery<{ h: string }>('SELECT strata.change_horizon()::text AS h');
        expect(BigInt(h.rows[0]!.h)).toBeGreaterThanOrEqual(BigInt(await lastId()));
      } finally {
        await other.query('ROLLBACK').catch(() => undefined);
        await other.end();
      }
    });

    it('never lets a reader skip an event while writers of both tenants interleave', async () => {
      const start = await lastId();
      const writers = await Promise.all(Array.from({ length: 4 }, () => appClient()));
      const seen: Record<string, string[]> = { acme: [], globex: [] };
      let stop = false;
      const follow = async (tenant: string) => {
        let after = start;
        for (let idle = 0; ; ) {
          const evs = await events(tenant, after);
          seen[tenant]!.push(...evs.map((e) => e.id));
          if (evs.length) after = evs[evs.length - 1]!.id;
          else if (stop && ++idle > 1) return;
          else await sleep(2);
        }
      };
      const followers = [follow('acme'), follow('globex')];
      await Promise.all(
        writers.map(async (c, w) => {
          for (let i = 0; i < 10; i++) {
            await c.query('BEGIN');
            const tenants = i % 3 === 2 ? ['acme', 'globex'] : [w % 2 ? 'acme' : 'globex'];
            for (const tenant of tenants) {
              await c.query("SELECT set_config('strata.tenant_id', $1, true)", [tenant]);
              await c.query('INSERT INTO pipelines (name) VALUES ($1)', [`h4-${w}-${i}`]);
              await sleep(Math.floor(Math.random() * 4));
            }
            if (i % 4 === 3) await c.query('ROLLBACK');
            else await c.query('COMMIT');
          }
        }),
      );
      stop = true;
      await Promise.all(followers);
      await Promise.all(writers.map((c) => c.end()));
      for (const tenant of ['acme', 'globex']) {
        const committed = (
          await t.db.adminQuery<{ id: string }>('SELECT id::text AS id FROM strata.changes WHERE tenant_id = $1 AND id > $2::bigint ORDER BY id', [tenant, start])
        ).rows.map((r) => r.id);
        expect(committed.length).toBeGreaterThan(0);
        expect(seen[tenant], tenant).toEqual(committed);
      }
    });
  });
});
