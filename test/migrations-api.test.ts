import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readdirSync } from 'node:fs';
import { createTestApp, type TestApp } from './helpers/app.js';

const ALL = readdirSync('migrations').filter((d) => /^\d{4}_/.test(d)).sort();
const LAST = ALL[ALL.length - 1]!;

describe('migrations admin API', () => {
  let t: TestApp;
  let admin: Record<string, string>;
  beforeAll(async () => {
    t = await createTestApp();
    admin = await t.auth('platform_admin', null);
  });
  afterAll(() => t.close());

  const applied = async () => (await t.db.adminQuery<{ id: string }>('SELECT id FROM strata.schema_migrations ORDER BY id')).rows.map((r) => r.id);

  it('lists every migration with its status and checksum', async () => {
    const res = await t.app.inject({ url: '/v1/admin/migrations', headers: admin });
    expect(res.statusCode).toBe(200);
    const ids = res.json<{ data: Array<{ id: string; applied: boolean; drift: boolean; checksum: string }> }>().data;
    expect(ids.map((m) => m.id)).toEqual(ALL);
    expect(ids.every((m) => m.applied && !m.drift && /^[0-9a-f]{64}$/.test(m.checksum))).toBe(true);
  });

  it('verifies with no problems and plans nothing when current', async () => {
    expect((await t.app.inject({ url: '/v1/admin/migrations/verify', headers: admin })).json()).toEqual({ data: { ok: true, problems: [] } });
    expect((await t.app.inject({ url: '/v1/admin/migrations/plan', headers: admin })).json()).toEqual({ data: [] });
  });

  it('dry-runs a rollback without changing anything', async () => {
    const res = await t.app.inject({ method: 'POST', url: '/v1/admin/migrations/down', headers: admin, payload: { steps: 1, dry_run: true } });
    expect(res.statusCode).toBe(200);
    const body = res.json<{ data: { steps: Array<{ id: string; direction: string; sql: string }>; dry_run: boolean } }>().data;
    expect(body.dry_run).toBe(true);
    expect(body.steps.map((s) => [s.id, s.direction])).toEqual([[LAST, 'down']]);
    expect(body.steps[0]!.sql.length).toBeGreaterThan(10);
    expect(await applied()).toEqual(ALL);
    const tables = await t.app.inject({ url: '/v1/tables/pipelines/rows', headers: await t.auth('reader') });
    expect(tables.statusCode).toBe(200);
  });

  it('rolls back and re-applies, refreshing the schema registry each time', async () => {
    const reader = await t.auth('reader');
    const down = await t.app.inject({ method: 'POST', url: '/v1/admin/migrations/down', headers: admin, payload: { to: '0001_platform' } });
    expect(down.statusCode).toBe(200);
    expect(await applied()).toEqual(['0001_platform']);
    const gone = await t.app.inject({ url: '/v1/tables/pipelines/rows', headers: reader });
    expect(gone.statusCode).toBe(404);
    expect(gone.json().error.code).toBe('TABLE_NOT_FOUND');
    const plan = await t.app.inject({ url: '/v1/admin/migrations/plan', headers: admin });
    expect(plan.json().data.map((s: { id: string }) => s.id)).toEqual(ALL.slice(1));
    const up = await t.app.inject({ method: 'POST', url: '/v1/admin/migrations/up', headers: admin });
    expect(up.statusCode).toBe(200);
    expect(await applied()).toEqual(ALL);
    expect((await t.app.inject({ url: '/v1/tables/pipelines/rows', headers: reader })).statusCode).toBe(200);
  });

  it('redoes the last migration', async () => {
    const res = await t.app.inject({ method: 'POST', url: '/v1/admin/migrations/redo', headers: admin });
    expect(res.statusCode).toBe(200);
    expect(res.json().data.steps.map((s: { id: string; direction: string }) => `${s.direction}:${s.id}`)).toEqual([`down:${LAST}`, `up:${LAST}`]);
    expect(await applied()).toEqual(ALL);
  });

  it('refuses an unknown target with 400 UNKNOWN_TARGET and changes nothing', async () => {
    const res = await t.app.inject({ method: 'POST', url: '/v1/admin/migrations/down', headers: admin, payload: { to: '0099_nope' } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.code).toBe('UNKNOWN_TARGET');
    expect(await applied()).toEqual(ALL);
  });

  it.each<[Record<string, unknown>, string]>([
    [{ steps: 0 }, 'steps below 1'],
    [{ to: "x'; DROP TABLE pipelines; --" }, 'SQL in the target'],
    [{ force: true }, 'an unknown property'],
  ])('refuses %j (%s) with 400 VALIDATION_FAILED and changes nothing', async (payload, _why) => {
    const res = await t.app.inject({ method: 'POST', url: '/v1/admin/migrations/down', headers: admin, payload });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.code).toBe('VALIDATION_FAILED');
    expect(await applied()).toEqual(ALL);
  });

  it('is for platform_admin only', async () => {
    for (const role of ['admin', 'writer', 'reader', 'analyst'] as const) {
      const res = await t.app.inject({ method: 'POST', url: '/v1/admin/migrations/down', headers: await t.auth(role), payload: {} });
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe('ROLE_FORBIDDEN');
    }
    expect(await applied()).toEqual(ALL);
  });
});
