/**
 * Point-in-time recovery end to end: writes at known instants (through the API as two tenants, and
 * directly, with a rolled-back transaction among them), a full backup before them and an incremental
 * backup in the middle, then a restore to each instant compared exactly (every table, every row) with
 * the database as it was at that instant. The change log is the real capture of migration
 * 0004_change_capture; without it these tests are skipped, saying so.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../src/services/backups/index.js';
import { createRestoreService } from '../src/services/backups/index.js';
import { createBackupTestEnv, readDatabase, sqlOn, type BackupTestEnv } from './helpers/backups.js';

describe('point-in-time restore', () => {
  let env: BackupTestEnv;
  let source: string;
  let capture = false;
  const inject = async (method: 'GET' | 'POST', url: string, payload?: unknown) =>
    env.t.app.inject({ method, url, headers: await env.headers(), ...(payload !== undefined ? { payload: payload as object } : {}) });
  const runJob = async (url: string, payload: unknown) => {
    const res = await inject('POST', url, payload);
    expect(res.statusCode, res.body).toBe(202);
    const job = await env.waitJob(res.json().job_id, 120_000);
    expect(job.state, job.error ?? '').toBe('completed');
    return job.result as Record<string, unknown>;
  };
  /** The database's clock after the last commit: every later transaction starts after it. */
  const instant = async () => (await sqlOn(source, 'SELECT clock_timestamp() AS t')).rows[0].t.toISOString() as string;

  const instants: Array<{ at: string; state: Record<string, string[]>; label: string }> = [];
  let full: BackupManifest;

  beforeAll(async () => {
    env = await createBackupTestEnv();
    source = env.t.database.name;
    capture = (await sqlOn(source, "SELECT to_regclass('strata.changes') IS NOT NULL AS ok")).rows[0].ok as boolean;
  });
  afterAll(async () => {
    await env?.close();
  });

  it('records writes at known instants after a full backup (and an incremental backup between them)', async (ctx) => {
    if (!capture) ctx.skip('strata.changes is missing: point-in-time restore replays the change log of migration 0004_change_capture (feat/cdc), not merged here');
    const b = await runJob('/v1/admin/backups', { kind: 'full' });
    full = (await inject('GET', `/v1/admin/backups/${String(b['backup_id'])}`)).json().data;
    instants.push({ at: await instant(), state: await readDatabase(source), label: 'right after the backup' });

    const acme = await env.t.auth('writer', 'acme');
    const globex = await env.t.auth('writer', 'globex');
    // 1: inserts by two tenants through the API, one with a child row.
    const p = await env.t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: acme, payload: { name: 'pitr-1', description: 'first' } });
    expect(p.statusCode, p.body).toBe(201);
    const pid = p.json().data.id as number;
    expect((await env.t.app.inject({ method: 'POST', url: '/v1/tables/pipeline_runs/rows', headers: acme, payload: { pipeline_id: pid, params: { a: [1, 2, { b: null }] } } })).statusCode).toBe(201);
    expect((await env.t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: globex, payload: { name: 'pitr-globex' } })).statusCode).toBe(201);
    instants.push({ at: await instant(), state: await readDatabase(source), label: 'after inserts' });

    // 2: bulk updates and deletes (cascading), as a tenant session would (capture sees every row).
    await sqlOn(source, `BEGIN; SET LOCAL strata.tenant_id = 'acme'; SET LOCAL strata.actor = 'tester';
      UPDATE public.pipeline_runs SET status = 'failed', finished_at = now() WHERE tenant_id = 'acme' AND id % 4 = 0;
      DELETE FROM public.pipelines WHERE tenant_id = 'acme' AND id IN (SELECT id FROM public.pipelines WHERE tenant_id = 'acme' ORDER BY id LIMIT 2);
      COMMIT`);
    // A rolled-back transaction leaves nothing to replay.
    await sqlOn(source, "BEGIN; UPDATE public.pipelines SET name = 'never' WHERE tenant_id = 'globex'; ROLLBACK");
    instants.push({ at: await instant(), state: await readDatabase(source), label: 'after updates, cascading deletes and a rollback' });

    const inc = await runJob('/v1/admin/backups', { kind: 'incremental' });
    const incremental = (await inject('GET', `/v1/admin/backups/${String(inc['backup_id'])}`)).json().data as BackupManifest;
    expect(incremental).toMatchObject({ kind: 'incremental', status: 'completed', base_backup_id: full.id });
    expect(incremental.change_count).toBeGreaterThan(10);

    // 3: the same row updated several times in one transaction, and a row inserted then deleted.
    await sqlOn(source, `BEGIN; SET LOCAL strata.tenant_id = 'globex';
      UPDATE public.pipelines SET description = 'v1' WHERE name = 'pitr-globex';
      UPDATE public.pipelines SET description = 'v2', status = 'paused' WHERE name = 'pitr-globex';
      INSERT INTO public.pipelines (name) VALUES ('ephemeral');
      DELETE FROM public.pipelines WHERE name = 'ephemeral';
      COMMIT`);
    instants.push({ at: await instant(), state: await readDatabase(source), label: 'after repeated updates and an insert+delete' });
    // 4: more writes after the last instant (must not appear in any restore).
    await sqlOn(source, "UPDATE public.run_logs SET message = 'later' WHERE id % 7 = 0");
    expect(instants.map((i) => i.at)).toEqual([...instants.map((i) => i.at)].sort());
  });

  it('restores to each instant exactly: every table, every row, as it was then', async (ctx) => {
    if (!capture) ctx.skip('strata.changes is missing: point-in-time restore replays the change log of migration 0004_change_capture (feat/cdc), not merged here');
    let previousReplayed = -1;
    for (const [i, point] of instants.entries()) {
      const target = `${source}_pitr_${i}`;
      env.created.add(target);
      const result = await runJob('/v1/admin/restores', { until: point.at, target: 'new_database', database: target });
      expect(result['database']).toBe(target);
      expect(result['backup_id']).toBe(full.id);
      expect(result['replayed'] as number).toBeGreaterThanOrEqual(previousReplayed);
      previousReplayed = result['replayed'] as number;
      const restored = await readDatabase(target);
      expect(Object.keys(restored).sort(), point.label).toEqual(Object.keys(point.state).sort());
      for (const table of Object.keys(point.state)) expect(restored[table], `${point.label}: ${table}`).toEqual(point.state[table]);
    }
    expect(previousReplayed).toBeGreaterThan(0);
  });

  it('restores an incremental backup by id: its full backup plus its change range, nothing later', async (ctx) => {
    if (!capture) ctx.skip('strata.changes is missing: point-in-time restore replays the change log of migration 0004_change_capture (feat/cdc), not merged here');
    const list = (await inject('GET', '/v1/admin/backups')).json().data as BackupManifest[];
    const incremental = list.find((b) => b.kind === 'incremental');
    expect(incremental).toBeDefined();
    const target = `${source}_incr`;
    env.created.add(target);
    const result = await runJob('/v1/admin/restores', { backup_id: incremental?.id, target: 'new_database', database: target });
    expect(result['incremental_ids']).toEqual([incremental?.id]);
    // The incremental was taken between instants 2 and 3.
    expect(await readDatabase(target)).toEqual(instants[2]?.state);
  });

  it('refuses an instant whose replay would cross days the live change log has already dropped (409 CHANGE_LOG_TRUNCATED)', async (ctx) => {
    if (!capture) ctx.skip('strata.changes is missing: point-in-time restore replays the change log of migration 0004_change_capture (feat/cdc), not merged here');
    const restores = createRestoreService({ backups: env.t.app.services.backups, redisUrl: 'redis://127.0.0.1:6379', changeRetentionDays: 2 });
    const until = instants[instants.length - 1]?.at ?? '';
    // Seen from 5 days later, with 2 days of change log kept: the events after the last backup are gone.
    const later = new Date(Date.now() + 5 * 86_400_000);
    await expect(restores.plan({ until, target: 'new_database', database: `${source}_trunc` }, later)).rejects.toMatchObject({ statusCode: 409, code: 'CHANGE_LOG_TRUNCATED' });
    // Today it is fine.
    await expect(restores.plan({ until, target: 'new_database', database: `${source}_trunc` })).resolves.toMatchObject({ live: true });
  });

  it('verifies an incremental backup by reading all its events, and rejects an incremental restore request without a full backup chain (409)', async (ctx) => {
    if (!capture) ctx.skip('strata.changes is missing: point-in-time restore replays the change log of migration 0004_change_capture (feat/cdc), not merged here');
    const list = (await inject('GET', '/v1/admin/backups')).json().data as BackupManifest[];
    const incremental = list.find((b) => b.kind === 'incremental');
    const v = await inject('POST', `/v1/admin/backups/${incremental?.id}/verify`);
    const job = await env.waitJob(v.json().job_id);
    expect(job.state, job.error ?? '').toBe('completed');
    // Without its full backup, the chain is broken: refused before anything is created.
    expect((await inject('GET', `/v1/admin/backups/${full.id}`)).statusCode).toBe(200);
    await env.t.app.services.backups.store.removeBackup(full.id);
    const res = await inject('POST', '/v1/admin/restores', { backup_id: incremental?.id, target: 'new_database', database: `${source}_broken` });
    expect(res.statusCode).toBe(409);
    expect(res.json().error.code).toBe('BACKUP_CHAIN_BROKEN');
  });
});
