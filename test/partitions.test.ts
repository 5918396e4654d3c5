/**
 * Time partitioning on a single server (pg_partman): a range-partitioned table put under time
 * partitioning through POST /v1/admin/partitions, partitions made ahead, dropped past retention by
 * the maintenance job, row-level security through the parent, and every bad input refused with
 * nothing written. Where pg_partman is not installed the capability answers 501 (tested instead).
 * The Citus mode (create_time_partitions) is tested in test/citus.test.ts.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';
import { SERVER_URL } from './helpers/databases.js';
import type { SessionContext } from '../src/db/session.js';
import { EVENTS_DDL } from './helpers/partitioned-table.js';

type Json = Record<string, unknown>;

async function partmanAvailable(): Promise<boolean> {
  const c = new pg.Client({ connectionString: SERVER_URL });
  await c.connect();
  try {
    return ((await c.query("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_partman'")).rowCount ?? 0) > 0;
  } finally {
    await c.end();
  }
}
const partman = await partmanAvailable();
if (!partman) console.log('pg_partman is not installed (Debian: postgresql-15-partman): the partition tests check the 501 PARTITIONING_UNAVAILABLE answer instead');

const DAY = 86_400_000;

describe('time partitioning on a single server', () => {
  let t: TestApp;
  let platform: Record<string, string>;
  const post = (body: Json, headers = platform) => t.app.inject({ method: 'POST', url: '/v1/admin/partitions', headers, payload: body });
  /** Nothing of a refused request is left: no definition, no partman config, no partition. */
  const nothingWritten = async () => {
    const { rows } = await t.db.adminQuery<{ defs: number; parts: number; config: number }>(
      `SELECT (SELECT count(*)::int FROM strata.time_partitions) AS defs,
              (SELECT count(*)::int FROM pg_inherits WHERE inhparent = 'public.events_p'::regclass) AS parts,
              (SELECT CASE WHEN to_regclass('partman.part_config') IS NULL THEN 0 ELSE 1 END) AS config`,
    );
    expect(rows[0]!.defs).toBe(0);
    expect(rows[0]!.parts).toBe(0);
    if (rows[0]!.config) expect((await t.db.adminQuery('SELECT 1 FROM partman.part_config')).rowCount).toBe(0);
  };

  beforeAll(async () => {
    t = await createTestApp({});
    await t.db.adminQuery(EVENTS_DDL);
    platform = await t.auth('platform_admin', null);
  });
  afterAll(() => t?.close());

  it.skipIf(partman)('answers 501 PARTITIONING_UNAVAILABLE without pg_partman, and writes nothing', async () => {
    const r = await post({ table: 'events_p', column: 'at', interval: '1 day' });
    expect(r.statusCode).toBe(501);
    expect(r.json().error.code).toBe('PARTITIONING_UNAVAILABLE');
    await nothingWritten();
  });

  describe.runIf(partman)('with pg_partman', () => {
    it('refuses every bad input with its 4xx and code, and writes nothing', async () => {
      const cases: Array<[Json, number, string]> = [
        [{ table: 'nope', column: 'at', interval: '1 day' }, 400, 'UNKNOWN_TABLE'],
        [{ table: 'events_p', column: 'nope', interval: '1 day' }, 400, 'UNKNOWN_COLUMN'],
        [{ table: 'events_p', column: 'kind', interval: '1 day' }, 400, 'INVALID_PARTITION_COLUMN'],
        [{ table: 'pipelines', column: 'created_at', interval: '1 day' }, 409, 'TABLE_NOT_PARTITIONED'],
        [{ table: 'events_p', column: 'at', interval: '3 days' }, 400, 'INVALID_INTERVAL'],
        [{ table: 'events_p', column: 'at', interval: '1 day', retention: 'forever' }, 400, 'INVALID_RETENTION'],
        [{ table: 'events_p', column: 'at', interval: '1 day', start: 'yesterday-ish' }, 400, 'INVALID_START'],
        [{ table: 'events_p', column: 'at', interval: '1 day', premake: 0 }, 400, 'VALIDATION_FAILED'],
        [{ table: 'events_p; DROP TABLE pipelines', column: 'at', interval: '1 day' }, 400, 'VALIDATION_FAILED'],
      ];
      for (const [body, status, code] of cases) {
        const r = await post(body);
        expect(r.statusCode, JSON.stringify(body)).toBe(status);
        expect(r.json().error.code, JSON.stringify(body)).toBe(code);
        expect(r.json().error.message.length).toBeGreaterThan(10);
      }
      const tenantAdmin = await post({ table: 'events_p', column: 'at', interval: '1 day' }, await t.auth('admin', 'acme'));
      expect(tenantAdmin.statusCode).toBe(403);
      await nothingWritten();
    });

    it('makes partitions from start to premake intervals ahead, lists them, and refuses a second definition', async () => {
      const start = new Date(Date.now() - 10 * DAY).toISOString();
      const r = await post({ table: 'events_p', column: 'at', interval: '1 day', premake: 3, retention: '3 days', start });
      expect(r.statusCode, r.body).toBe(201);
      const set = r.json().data as { engine: string; partitions: Array<{ from: string | null; to: string | null; default: boolean }> };
      expect(set).toMatchObject({ table: 'events_p', column: 'at', engine: 'pg_partman', interval: '1 day', premake: 3, retention: '3 days' });
      const ranged = set.partitions.filter((p) => !p.default);
      expect(Date.parse(ranged[0]!.from!)).toBeLessThanOrEqual(Date.now() - 9 * DAY);
      expect(Date.parse(ranged[ranged.length - 1]!.to!)).toBeGreaterThanOrEqual(Date.now() + 3 * DAY);
      const listed = await t.app.inject({ url: '/v1/admin/partitions', headers: platform });
      expect(listed.statusCode).toBe(200);
      expect(listed.json().data.map((d: Json) => d['table'])).toEqual(['events_p']);
      const again = await post({ table: 'events_p', column: 'at', interval: '1 day' });
      expect(again.statusCode).toBe(409);
      expect(again.json().error.code).toBe('PARTITIONS_EXIST');
    });

    it('keeps row-level security through the parent; a tenant cannot reach a partition directly', async () => {
      const acme: SessionContext = { tenantId: 'acme', actor: 'test', role: 'writer', requestId: 'partitions' };
      const globex: SessionContext = { ...acme, tenantId: 'globex' };
      await t.db.withTenant(acme, (tx) => tx.query("INSERT INTO events_p (kind, at) VALUES ('now', now()), ('old', now() - interval '9 days')"));
      const seen = async (ctx: SessionContext) => (await t.db.withTenant(ctx, (tx) => tx.query<{ kind: string }>('SELECT kind FROM events_p ORDER BY kind'))).rows.map((r) => r.kind);
      expect(await seen(acme)).toEqual(['now', 'old']);
      expect(await seen(globex)).toEqual([]);
      const forged = await t.db.withTenant(globex, (tx) => tx.query("INSERT INTO events_p (tenant_id, kind) VALUES ('acme', 'forged')")).catch((e: { code?: string }) => e.code);
      expect(forged).toBe('42501');
      const { rows } = await t.db.adminQuery<{ name: string }>("SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'public.events_p'::regclass LIMIT 1");
      const direct = await t.db.withTenant(globex, (tx) => tx.query(`SELECT * FROM public.${pg.escapeIdentifier(rows[0]!.name)}`)).catch((e: { code?: string }) => e.code);
      expect(direct).toBe('42501');
    });

    it('the maintenance job drops partitions past retention (with their rows) and keeps premake ahead', async () => {
      const result = await t.app.services.partitions.maintain();
      expect(result).toEqual({ maintained: 1, failed: 0 });
      const [set] = (await t.app.inject({ url: '/v1/admin/partitions', headers: platform })).json().data as Array<{ maintained_at: string | null; last_error: string | null; partitions: Array<{ from: string | null; to: string | null; default: boolean }> }>;
      expect(set!.last_error).toBeNull();
      expect(set!.maintained_at).not.toBeNull();
      const ranged = set!.partitions.filter((p) => !p.default);
      expect(Date.parse(ranged[0]!.from!)).toBeGreaterThanOrEqual(Date.now() - 5 * DAY);
      expect(Date.parse(ranged[ranged.length - 1]!.to!)).toBeGreaterThanOrEqual(Date.now() + 3 * DAY);
      const { rows } = await t.db.adminQuery<{ kind: string }>("SELECT kind FROM events_p WHERE tenant_id = 'acme' ORDER BY kind");
      expect(rows.map((r) => r.kind)).toEqual(['now']);
    });
  });
});
