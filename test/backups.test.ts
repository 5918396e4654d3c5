/**
 * Backups end to end against the real PostgreSQL, Redis, pg_dump and pg_restore: a full backup and
 * its manifest, a round trip (backup, change data, restore into a new database, compare every row of
 * every table with the state at backup time), verification (pass, and a corrupted file failing with
 * a clear reason), deletion rules, retention, stale running backups, in-place restore behind
 * maintenance mode, roles, and bad inputs (4xx with a code, nothing written).
 */
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../src/services/backups/index.js';
import { enterMaintenance, leaveMaintenance, maintenanceKey } from '../src/services/backups/index.js';
import { BACKUP_SCHEDULER, registerBackupSchedule } from '../src/jobs/backup-schedule.js';
import pino from 'pino';
import { createBackupTestEnv, databaseExists, readDatabase, sqlOn, type BackupTestEnv } from './helpers/backups.js';
import { REDIS_URL, withServer } from './helpers/databases.js';

describe('backups', () => {
  let env: BackupTestEnv;
  let source: string;
  const inject = async (method: 'GET' | 'POST' | 'DELETE', url: string, payload?: unknown) =>
    env.t.app.inject({ method, url, headers: await env.headers(), ...(payload !== undefined ? { payload: payload as object } : {}) });
  const backupNow = async (): Promise<BackupManifest> => {
    const res = await inject('POST', '/v1/admin/backups', { kind: 'full' });
    expect(res.statusCode).toBe(202);
    const job = await env.waitJob(res.json().job_id);
    expect(job.state, job.error ?? '').toBe('completed');
    const id = (job.result as { backup_id: string }).backup_id;
    return (await inject('GET', `/v1/admin/backups/${id}`)).json().data;
  };
  const storedIds = async () => (await readdir(env.dir)).filter((n) => !n.startsWith('.')).sort();
  const jobCount = async () => {
    const counts = await env.t.jobs.queues.backups.getJobCounts();
    return Object.values(counts).reduce((a, b) => a + b, 0);
  };
  const databasesLike = (prefix: string) =>
    withServer(async (c) => (await c.query<{ datname: string }>('SELECT datname FROM pg_database WHERE datname LIKE $1', [`${prefix}%`])).rows.map((r) => r.datname));

  beforeAll(async () => {
    env = await createBackupTestEnv({ env: { BACKUP_KEEP_FULL: '100', BACKUP_KEEP_DAYS: '30' } });
    source = env.t.database.name;
  });
  afterAll(async () => {
    await env?.close();
  });

  it('refuses every backup and restore route to roles other than platform_admin (403) and to anonymous callers (401)', async () => {
    const calls: Array<[string, string, unknown?]> = [
      ['POST', '/v1/admin/backups', { kind: 'full' }],
      ['GET', '/v1/admin/backups'],
      ['GET', '/v1/admin/backups/full-20260101t000000z-abcdef'],
      ['DELETE', '/v1/admin/backups/full-20260101t000000z-abcdef'],
      ['POST', '/v1/admin/backups/full-20260101t000000z-abcdef/verify'],
      ['POST', '/v1/admin/restores', { backup_id: 'full-20260101t000000z-abcdef', target: 'new_database' }],
    ];
    for (const role of ['reader', 'writer', 'analyst', 'admin'] as const) {
      for (const [method, url, payload] of calls) {
        const res = await env.t.app.inject({ method: method as 'GET', url, headers: await env.t.auth(role, 'acme'), ...(payload ? { payload: payload } : {}) });
        expect(res.statusCode, `${role} ${method} ${url}`).toBe(403);
        expect(res.json().error.code).toBe('ROLE_FORBIDDEN');
      }
    }
    const anon = await env.t.app.inject({ method: 'POST', url: '/v1/admin/backups', payload: { kind: 'full' } });
    expect(anon.statusCode).toBe(401);
    expect(await storedIds()).toEqual([]);
    expect(await jobCount()).toBe(0);
  });

  it('rejects bad backup requests with 400/404/409 and a code, writing nothing and enqueueing nothing', async () => {
    const cases: Array<[string, string, unknown, number, string]> = [
      ['POST', '/v1/admin/backups', { kind: 'weekly' }, 400, 'VALIDATION_FAILED'],
      ['POST', '/v1/admin/backups', {}, 400, 'VALIDATION_FAILED'],
      ['POST', '/v1/admin/backups', { kind: 'full', extra: 1 }, 400, 'VALIDATION_FAILED'],
      ['GET', '/v1/admin/backups/full-20260101t000000z-abcdef', undefined, 404, 'BACKUP_NOT_FOUND'],
      ['GET', '/v1/admin/backups/..%2F..%2Fetc', undefined, 404, 'BACKUP_NOT_FOUND'],
      ['DELETE', '/v1/admin/backups/full-20260101t000000z-abcdef', undefined, 404, 'BACKUP_NOT_FOUND'],
      ['POST', '/v1/admin/backups/full-20260101t000000z-abcdef/verify', undefined, 404, 'BACKUP_NOT_FOUND'],
    ];
    for (const [method, url, payload, status, code] of cases) {
      const res = await inject(method as 'GET', url, payload);
      expect(res.statusCode, `${method} ${url} ${JSON.stringify(payload)}`).toBe(status);
      expect(res.json().error.code).toBe(code);
    }
    // Incremental before any full backup: refused before anything is enqueued.
    const incr = await inject('POST', '/v1/admin/backups', { kind: 'incremental' });
    expect(incr.statusCode).toBe(409);
    expect(['NO_FULL_BACKUP', 'CHANGE_LOG_MISSING']).toContain(incr.json().error.code);
    expect(await storedIds()).toEqual([]);
    expect(await jobCount()).toBe(0);
  });

  let first: BackupManifest;
  let atBackup: Record<string, string[]>;

  it('takes a full backup: pg_dump custom format from a snapshot, with a complete manifest', async () => {
    atBackup = await readDatabase(source);
    first = await backupNow();
    expect(first).toMatchObject({ kind: 'full', status: 'completed', database: source, format: 'pg_dump-custom', file: 'dump.pgcustom', verified: false, safety: false, trigger: 'api' });
    expect(first.server_version_num).toBeGreaterThanOrEqual(150000);
    expect(first.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(first.change_snapshot).toMatch(/^\d+:\d+:/);
    const bytes = await readFile(path.join(env.dir, first.id, 'dump.pgcustom'));
    expect(bytes.length).toBe(first.size);
    expect(bytes.subarray(0, 5).toString()).toBe('PGDMP'); // custom format
    // Row counts of every table, equal to what is in the database at backup time.
    for (const [table, rows] of Object.entries(atBackup)) expect(first.row_counts[table], table).toBe(rows.length);
    expect(first.row_counts['public.run_logs']).toBeGreaterThan(1000);
    // No temporary files remain visible.
    expect((await readdir(path.join(env.dir, first.id))).sort()).toEqual(['dump.pgcustom', 'manifest.json']);
    const list = (await inject('GET', '/v1/admin/backups')).json().data as BackupManifest[];
    expect(list.map((b) => b.id)).toEqual([first.id]);
  });

  it('round trip: after the data changes, a restore into a new database equals the state at backup time, every table, every row', async () => {
    // Change data through the API (as tenants) and directly.
    const acme = await env.t.auth('writer', 'acme');
    const created = await env.t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: acme, payload: { name: 'after-backup' } });
    expect(created.statusCode).toBe(201);
    await sqlOn(source, "UPDATE public.pipeline_runs SET status = 'cancelled' WHERE id % 3 = 0");
    await sqlOn(source, 'DELETE FROM public.run_logs WHERE id % 5 = 0');
    expect(await readDatabase(source)).not.toEqual(atBackup);

    const target = `${source}_rt`;
    env.created.add(target);
    const res = await inject('POST', '/v1/admin/restores', { backup_id: first.id, target: 'new_database', database: target });
    expect(res.statusCode).toBe(202);
    const job = await env.waitJob(res.json().job_id);
    expect(job.state, job.error ?? '').toBe('completed');
    expect(job.result).toMatchObject({ database: target, target: 'new_database', backup_id: first.id, replayed: 0 });
    expect(await readDatabase(target)).toEqual(atBackup);
  });

  it('refuses a restore into an existing database without in_place (409), and other bad restore requests (400), creating nothing', async () => {
    const before = await databasesLike(source);
    const jobsBefore = await jobCount();
    const cases: Array<[unknown, number, string]> = [
      [{ backup_id: first.id, target: 'new_database', database: source }, 409, 'DATABASE_EXISTS'],
      [{ backup_id: first.id, target: 'new_database', database: 'postgres' }, 409, 'DATABASE_EXISTS'],
      [{ backup_id: first.id, target: 'new_database', database: 'Bad-Name; DROP' }, 400, 'INVALID_DATABASE_NAME'],
      [{ backup_id: first.id, target: 'somewhere' }, 400, 'VALIDATION_FAILED'],
      [{ backup_id: first.id }, 400, 'VALIDATION_FAILED'],
      [{ target: 'new_database' }, 400, 'RESTORE_SOURCE_REQUIRED'],
      [{ backup_id: first.id, until: new Date().toISOString(), target: 'new_database' }, 400, 'RESTORE_SOURCE_AMBIGUOUS'],
      [{ until: 'yesterday', target: 'new_database' }, 400, 'VALIDATION_FAILED'],
      [{ until: new Date(Date.now() + 3_600_000).toISOString(), target: 'new_database' }, 400, 'UNTIL_IN_FUTURE'],
      [{ until: '2001-01-01T00:00:00Z', target: 'new_database' }, 400, 'UNTIL_OUT_OF_RANGE'],
      [{ backup_id: first.id, target: 'in_place', database: 'elsewhere' }, 400, 'DATABASE_NOT_ALLOWED'],
      [{ backup_id: 'full-20260101t000000z-abcdef', target: 'new_database' }, 404, 'BACKUP_NOT_FOUND'],
    ];
    for (const [payload, status, code] of cases) {
      const res = await inject('POST', '/v1/admin/restores', payload);
      expect(res.statusCode, JSON.stringify(payload)).toBe(status);
      expect(res.json().error.code, JSON.stringify(payload)).toBe(code);
    }
    expect(await databasesLike(source)).toEqual(before);
    expect(await jobCount()).toBe(jobsBefore);
  });

  it('verifies a backup by a real restore into a scratch database, records it, and drops the scratch database', async () => {
    const res = await inject('POST', `/v1/admin/backups/${first.id}/verify`);
    expect(res.statusCode).toBe(202);
    const job = await env.waitJob(res.json().job_id);
    expect(job.state, job.error ?? '').toBe('completed');
    const m = (await inject('GET', `/v1/admin/backups/${first.id}`)).json().data as BackupManifest & { verified: boolean };
    expect(m.verified).toBe(true);
    expect(m.verifications).toHaveLength(1);
    expect(m.verifications[0]).toMatchObject({ ok: true, checksum_ok: true, restore_ok: true, row_counts_ok: true, mismatches: [], reason: null });
    const scratch = m.verifications[0]?.scratch_database ?? '';
    expect(scratch).toMatch(/^strata_verify_/);
    expect(await databaseExists(scratch)).toBe(false);
  });

  it('fails verification of a corrupted file with a clear reason, recorded in the history, and drops nothing it did not create', async () => {
    const second = await backupNow();
    const file = path.join(env.dir, second.id, 'dump.pgcustom');
    const bytes = await readFile(file);
    const mid = Math.floor(bytes.length / 2);
    bytes[mid] = (bytes[mid] ?? 0) ^ 0xff;
    await writeFile(file, bytes);
    const res = await inject('POST', `/v1/admin/backups/${second.id}/verify`);
    const job = await env.waitJob(res.json().job_id);
    expect(job.state).toBe('failed');
    expect(job.error).toMatch(/checksum mismatch/);
    const m = (await inject('GET', `/v1/admin/backups/${second.id}`)).json().data as BackupManifest & { verified: boolean };
    expect(m.verified).toBe(false);
    expect(m.verifications.at(-1)).toMatchObject({ ok: false, checksum_ok: false, restore_ok: null });
    expect(m.verifications.at(-1)?.reason).toContain(second.sha256 ?? 'x');
    // Deletable: it is not verified.
    expect((await inject('DELETE', `/v1/admin/backups/${second.id}`)).statusCode).toBe(204);
    expect(await storedIds()).not.toContain(second.id);
  });

  it('fails verification when the dump restores but its row counts differ from the manifest, naming the tables', async () => {
    const third = await backupNow();
    const manifestFile = path.join(env.dir, third.id, 'manifest.json');
    const m = JSON.parse(await readFile(manifestFile, 'utf8')) as BackupManifest;
    m.row_counts['public.pipelines'] = (m.row_counts['public.pipelines'] ?? 0) + 1;
    await writeFile(manifestFile, JSON.stringify(m));
    const job = await env.waitJob((await inject('POST', `/v1/admin/backups/${third.id}/verify`)).json().job_id);
    expect(job.state).toBe('failed');
    expect(job.error).toMatch(/row counts differ .*public\.pipelines/);
    const after = (await inject('GET', `/v1/admin/backups/${third.id}`)).json().data as BackupManifest;
    expect(after.verifications.at(-1)).toMatchObject({ ok: false, checksum_ok: true, restore_ok: true, row_counts_ok: false });
    expect(after.verifications.at(-1)?.mismatches).toEqual([{ table: 'public.pipelines', expected: m.row_counts['public.pipelines'], actual: (m.row_counts['public.pipelines'] ?? 0) - 1 }]);
    expect(await databasesLike('strata_verify_')).toEqual([]);
    expect((await inject('DELETE', `/v1/admin/backups/${third.id}`)).statusCode).toBe(204);
  });

  it('refuses to delete the last verified full backup (409) and allows it once another full backup is verified', async () => {
    const refused = await inject('DELETE', `/v1/admin/backups/${first.id}`);
    expect(refused.statusCode).toBe(409);
    expect(refused.json().error.code).toBe('LAST_VERIFIED_BACKUP');
    expect(await storedIds()).toContain(first.id);
    const next = await backupNow();
    const v = await env.waitJob((await inject('POST', `/v1/admin/backups/${next.id}/verify`)).json().job_id);
    expect(v.state).toBe('completed');
    expect((await inject('DELETE', `/v1/admin/backups/${first.id}`)).statusCode).toBe(204);
    expect(await storedIds()).toEqual([next.id]);
    first = next;
  });

  it('shows a running backup whose job stopped refreshing it as failed (a crash never leaves a backup marked good)', async () => {
    const id = 'full-20200101t000000z-dead00';
    const stale: Partial<BackupManifest> = {
      ...first,
      id,
      status: 'running',
      started_at: '2020-01-01T00:00:00.000Z',
      updated_at: '2020-01-01T00:00:05.000Z',
      finished_at: null,
      verifications: [],
    };
    await (await import('node:fs/promises')).mkdir(path.join(env.dir, id));
    await writeFile(path.join(env.dir, id, 'manifest.json'), JSON.stringify(stale));
    const m = (await inject('GET', `/v1/admin/backups/${id}`)).json().data as BackupManifest;
    expect(m.status).toBe('failed');
    expect(m.error).toMatch(/interrupted/);
    // It cannot be restored or verified.
    const r = await inject('POST', '/v1/admin/restores', { backup_id: id, target: 'new_database', database: `${source}_never` });
    expect(r.statusCode).toBe(409);
    expect(r.json().error.code).toBe('BACKUP_NOT_COMPLETED');
    expect(await databaseExists(`${source}_never`)).toBe(false);
    expect((await inject('DELETE', `/v1/admin/backups/${id}`)).statusCode).toBe(204);
  });

  it('retention keeps the newest BACKUP_KEEP_FULL full backups and the last verified one, and prunes the rest once older than BACKUP_KEEP_DAYS', async () => {
    const b1 = await backupNow();
    const b2 = await backupNow();
    const b3 = await backupNow();
    const svc = env.t.app.services.backups;
    // Everything is younger than the day limit: nothing goes.
    expect(await svc.prune({ keepFull: 1, keepDays: 30 })).toEqual([]);
    // Seen from 40 days on, with keepFull 2: the two newest (b2, b3) stay, and `first` (the last verified).
    const pruned = await svc.prune({ keepFull: 2, keepDays: 30, now: new Date(Date.now() + 40 * 86_400_000) });
    expect(pruned).toEqual([b1.id]);
    expect(await storedIds()).toEqual([first.id, b2.id, b3.id].sort());
  });

  it('a backup stopped in the middle of pg_dump (cancelled job, dead worker) is recorded failed, never completed, and leaves no partial file', async () => {
    const stop = new AbortController();
    const svc = env.t.app.services.backups;
    const before = await storedIds();
    await expect(
      svc.create('full', {
        signal: stop.signal,
        progress: ({ phase, done }) => {
          if (phase === 'dump' && done >= 1) stop.abort(); // pg_dump is writing table data now
        },
      }),
    ).rejects.toThrow();
    const added = (await storedIds()).filter((id) => !before.includes(id));
    expect(added).toHaveLength(1);
    const id = added[0] ?? '';
    const m = (await inject('GET', `/v1/admin/backups/${id}`)).json().data as BackupManifest;
    expect(m.status).toBe('failed');
    expect(m.error).toBeTruthy();
    expect(await readdir(path.join(env.dir, id))).toEqual(['manifest.json']);
    expect((await readdir(path.join(env.dir, '.tmp'))).filter((f) => f.endsWith('.part'))).toEqual([]);
    const restore = await inject('POST', '/v1/admin/restores', { backup_id: id, target: 'new_database', database: `${source}_never2` });
    expect(restore.json().error.code).toBe('BACKUP_NOT_COMPLETED');
    expect((await inject('DELETE', `/v1/admin/backups/${id}`)).statusCode).toBe(204);
  });

  it('restores in place behind maintenance mode: writes get 503 MAINTENANCE_IN_PROGRESS meanwhile, a safety backup is kept, and the service serves the restored data after', async () => {
    const state = await readDatabase(source);
    const base = await backupNow();
    await sqlOn(source, "UPDATE public.pipelines SET description = 'changed after the backup'");
    const acme = await env.t.auth('writer', 'acme');
    const res = await inject('POST', '/v1/admin/restores', { backup_id: base.id, target: 'in_place' });
    expect(res.statusCode).toBe(202);
    // Once the flag is up, a write is refused with the maintenance code; reads are not refused for it.
    const redis = new Redis(REDIS_URL);
    try {
      for (let i = 0; !(await redis.exists(maintenanceKey(source))); i++) {
        if (i > 500) throw new Error('maintenance flag never appeared');
        await new Promise((r) => setTimeout(r, 20));
      }
      await new Promise((r) => setTimeout(r, 300)); // past the API's flag cache
      const write = await env.t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: acme, payload: { name: 'during-restore' } });
      expect(write.statusCode).toBe(503);
      expect(write.json().error.code).toBe('MAINTENANCE_IN_PROGRESS');
      expect(write.headers['retry-after']).toBeDefined();
    } finally {
      await redis.quit();
    }
    const job = await env.waitJob(res.json().job_id, 120_000);
    expect(job.state, job.error ?? '').toBe('completed');
    // Every cached read from before is retired (the result cache's epoch moved).
    const epochRedis = new Redis(REDIS_URL);
    expect(Number(await epochRedis.get(`${env.t.config.CACHE_PREFIX}:epoch`))).toBeGreaterThanOrEqual(1);
    await epochRedis.quit();
    const result = job.result as { database: string; safety_backup_id: string };
    expect(result.database).toBe(source);
    const safety = (await inject('GET', `/v1/admin/backups/${result.safety_backup_id}`)).json().data as BackupManifest;
    expect(safety).toMatchObject({ status: 'completed', safety: true, trigger: 'pre-restore' });
    expect(await readDatabase(source)).toEqual(state);
    // Writes work again, through the pools, on the restored database.
    let write = await env.t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: acme, payload: { name: 'after-restore' } });
    for (let i = 0; write.statusCode === 503 && i < 50; i++) {
      await new Promise((r) => setTimeout(r, 100)); // pooled connections to the old database are replaced
      write = await env.t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: acme, payload: { name: 'after-restore' } });
    }
    expect(write.statusCode).toBe(201);
    expect(await databasesLike(`${source.slice(0, 40)}_pre_restore_`)).toEqual([]);
    expect(await databasesLike(`${source.slice(0, 40)}_restoring_`)).toEqual([]);
  });
  it('registers the BACKUP_CRON schedule as a BullMQ job scheduler on queue backups, and removes it when unset', async () => {
    const log = pino({ level: 'silent' });
    const queue = env.t.jobs.queues.backups;
    await registerBackupSchedule(env.t.jobs, { BACKUP_CRON: '0 3 * * *' }, log);
    const scheduler = await queue.getJobScheduler(BACKUP_SCHEDULER);
    expect(scheduler).toMatchObject({ key: BACKUP_SCHEDULER, pattern: '0 3 * * *', name: 'backup' });
    await registerBackupSchedule(env.t.jobs, {}, log);
    expect(await queue.getJobScheduler(BACKUP_SCHEDULER)).toBeFalsy();
  });

  it('in maintenance mode refuses writes (REST and GraphQL mutations) with 503 MAINTENANCE_IN_PROGRESS but serves reads and the backup routes', async () => {
    const redis = new Redis(REDIS_URL);
    const acme = await env.t.auth('writer', 'acme');
    const before = await readDatabase(source);
    try {
      await enterMaintenance(redis, source, { reason: 'test', job_id: null, since: new Date().toISOString() });
      await new Promise((r) => setTimeout(r, 300)); // past the API's flag cache
      const write = await env.t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: acme, payload: { name: 'no' } });
      expect(write.statusCode).toBe(503);
      expect(write.json().error.code).toBe('MAINTENANCE_IN_PROGRESS');
      const patch = await env.t.app.inject({ method: 'PATCH', url: '/v1/tables/pipelines/rows?id=eq.1', headers: acme, payload: { name: 'no' } });
      expect(patch.statusCode).toBe(503);
      const mutation = await env.t.app.inject({ method: 'POST', url: '/graphql', headers: acme, payload: { query: 'mutation { insert_pipelines_one(object: { name: "no" }) { id } }' } });
      expect(mutation.statusCode).toBe(503);
      expect(mutation.json().errors[0].extensions.code).toBe('MAINTENANCE_IN_PROGRESS'); // GraphQL's error shape
      const query = await env.t.app.inject({ method: 'POST', url: '/graphql', headers: acme, payload: { query: '{ pipelines(first: 1) { nodes { id } } }' } });
      expect(query.statusCode).toBe(200);
      expect((await env.t.app.inject({ url: '/v1/tables/pipelines/rows?limit=1', headers: acme })).statusCode).toBe(200);
      expect((await inject('GET', '/v1/admin/backups')).statusCode).toBe(200);
      expect(await readDatabase(source)).toEqual(before);
    } finally {
      await leaveMaintenance(redis, source);
      await redis.quit();
    }
    await new Promise((r) => setTimeout(r, 300));
    const after = await env.t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: acme, payload: { name: 'after-maintenance' } });
    expect(after.statusCode).toBe(201);
  });
});
