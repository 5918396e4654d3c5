/**
 * Backups (SPEC 8), in the same run:
 * 1. Backup + verify of a ~1 GB database (strata_bench_backup: Strata's migrations and bulk rows,
 *    built once and reused) vs the raw `pg_dump -Fc` + `pg_restore` of the same database into a
 *    scratch database. Medians of BENCH_BACKUP_ROUNDS (default 2) each, interleaved; ratio (target
 *    at most 1.3x). Strata's side also takes the snapshot, counts every table in it, hashes the file,
 *    re-reads it for the checksum and counts every table of the restored copy.
 * 2. Point-in-time restore replay rate: a small database (strata_bench_pitr, rebuilt each run), a full
 *    backup, then N captured changes (inserts, updates, deletes), then a restore `until` now; the
 *    replay phase's duration gives rows/s, for each N in BENCH_PITR_CHANGES (default 20000,100000).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import pino from 'pino';
import { loadConfig } from '../../src/config.js';
import { createMigrator, defaultMigrationsDir } from '../../src/db/migrations/index.js';
import { createBackupService, type ProgressUpdate } from '../../src/services/backups/index.js';
import { findPgTools, libpqEnv } from '../../src/services/backups/index.js';
import { createRestoreService } from '../../src/services/backups/index.js';
import { median, SERVER_URL } from '../lib.js';
import type { BenchScenario } from './types.js';

const exec = promisify(execFile);
const BIG = 'strata_bench_backup';
const PITR = 'strata_bench_pitr';
const MARK = 'strata bench backup dataset v1';
const TARGET_BYTES = Number(process.env['BENCH_BACKUP_BYTES'] ?? 1_000_000_000);
const ROUNDS = Number(process.env['BENCH_BACKUP_ROUNDS'] ?? 2);
const PITR_CHANGES = (process.env['BENCH_PITR_CHANGES'] ?? '10000,50000,200000').split(',').map(Number);

const urlFor = (db: string) => {
  const u = new URL(SERVER_URL);
  u.pathname = `/${db}`;
  return u.toString();
};
async function onDb<T>(db: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: urlFor(db) });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}
const seconds = (ms: number) => Math.round(ms / 100) / 10;

async function migrate(db: string): Promise<void> {
  const pool = new pg.Pool({ connectionString: urlFor(db), max: 2 });
  try {
    await createMigrator({ pool, dir: defaultMigrationsDir(), log: pino({ level: 'silent' }) }).up();
  } finally {
    await pool.end();
  }
}

/** The ~1 GB database, built once (marked by a comment when complete) and reused. */
async function ensureBigDatabase(log: (m: string) => void): Promise<number> {
  const ready = await onDb('postgres', async (c) => {
    const r = await c.query<{ d: string | null }>("SELECT shobj_description(oid, 'pg_database') AS d FROM pg_database WHERE datname = $1", [BIG]);
    if (r.rows[0]?.d === MARK) return true;
    if (r.rowCount) await c.query(`DROP DATABASE ${BIG} WITH (FORCE)`);
    await c.query(`CREATE DATABASE ${BIG}`);
    return false;
  });
  if (!ready) {
    log(`backups: building ${BIG} (~${Math.round(TARGET_BYTES / 1e6)} MB)`);
    await migrate(BIG);
    await onDb(BIG, async (c) => {
      // Bulk rows without firing capture triggers (this is a data set, not history).
      await c.query('SET session_replication_role = replica');
      await c.query("INSERT INTO strata.tenants (id, name) VALUES ('bench-backup', 'Backup bench') ON CONFLICT DO NOTHING");
      await c.query("INSERT INTO public.pipelines (tenant_id, name, description) SELECT 'bench-backup', 'p' || g, 'pipeline ' || g FROM generate_series(1, 1000) g");
      await c.query(
        `INSERT INTO public.pipeline_runs (tenant_id, pipeline_id, status, params, started_at)
         SELECT 'bench-backup', 1 + g % 1000, 'succeeded', jsonb_build_object('n', g, 'region', 'eu'), now() - make_interval(secs => g) FROM generate_series(1, 100000) g`,
      );
      for (let batch = 0; ; batch++) {
        const size = Number((await c.query<{ s: string }>('SELECT pg_database_size(current_database()) AS s')).rows[0]?.s);
        if (size >= TARGET_BYTES) break;
        await c.query(
          `INSERT INTO public.run_logs (tenant_id, run_id, level, message, at)
           SELECT 'bench-backup', 1 + g % 100000, 'info', 'run ' || g || ' step ' || (g % 17) || ': ' || md5(g::text) || ' ' || repeat('log line ', 8), now()
             FROM generate_series($1::bigint * 500000 + 1, ($1::bigint + 1) * 500000) g`,
          [batch],
        );
      }
      await c.query('VACUUM ANALYZE');
    });
    await onDb('postgres', (c) => c.query(`COMMENT ON DATABASE ${BIG} IS '${MARK}'`));
  }
  return onDb(BIG, async (c) => Number((await c.query<{ s: string }>('SELECT pg_database_size(current_database()) AS s')).rows[0]?.s));
}

function services(db: string, dir: string) {
  const config = loadConfig({ DATABASE_URL: urlFor(db), JWT_SECRET: 'bench-backups-bench-backups-bench-backups', BACKUP_DIR: dir, BACKUP_KEEP_FULL: '1000' });
  const backups = createBackupService({ config, adminUrl: urlFor(db), log: pino({ level: 'silent' }) });
  return { backups, restores: createRestoreService({ backups, redisUrl: config.REDIS_URL }) };
}

const scenario: BenchScenario = {
  name: 'backups',
  async run(ctx) {
    const md: string[] = [];
    const dir = await mkdtemp(path.join(os.tmpdir(), 'strata-bench-backups-'));
    try {
      const size = ROUNDS > 0 ? await ensureBigDatabase(ctx.log) : 0;
      const { backups } = services(BIG, dir);
      const version = await onDb('postgres', async (c) => Number((await c.query<{ v: string }>("SELECT current_setting('server_version_num') AS v")).rows[0]?.v));
      const tools = await findPgTools(version);
      const { env, dbname } = libpqEnv(urlFor(BIG));
      const ours: number[] = [];
      const raw: number[] = [];
      let lastSize = 0;
      for (let round = 0; round < ROUNDS; round++) {
        // Raw: pg_dump -Fc to a file, pg_restore into a new database, drop it.
        const file = path.join(dir, `raw-${round}.dump`);
        const scratch = `strata_bench_raw_${round}`;
        let t0 = Date.now();
        await exec(tools.pg_dump, ['--format=custom', `--file=${file}`, dbname], { env: { ...process.env, ...env } });
        await onDb('postgres', (c) => c.query(`DROP DATABASE IF EXISTS ${scratch} WITH (FORCE)`).then(() => c.query(`CREATE DATABASE ${scratch} TEMPLATE template0`)));
        await exec(tools.pg_restore, ['--exit-on-error', `--dbname=${scratch}`, file], { env: { ...process.env, ...env } });
        raw.push(Date.now() - t0);
        await onDb('postgres', (c) => c.query(`DROP DATABASE ${scratch} WITH (FORCE)`));
        await rm(file, { force: true });
        ctx.log(`backups: raw pg_dump + pg_restore round ${round + 1}: ${seconds(raw[raw.length - 1] ?? 0)} s`);
        // Strata: backup (snapshot, dump, counts, hash, manifest) + verify (checksum, restore, counts, drop).
        t0 = Date.now();
        const m = await backups.create('full', { trigger: 'bench' });
        const v = await backups.verify(m.id);
        ours.push(Date.now() - t0);
        if (!v.ok) throw new Error(`bench backup ${m.id} failed verification: ${v.reason ?? ''}`);
        lastSize = m.size ?? 0;
        await backups.store.removeBackup(m.id);
        ctx.log(`backups: Strata backup + verify round ${round + 1}: ${seconds(ours[ours.length - 1] ?? 0)} s`);
      }
      const ratio = ROUNDS > 0 ? median(ours) / median(raw) : null;
      if (ratio !== null) md.push(
        '### Backups: backup + verify vs raw pg_dump + pg_restore',
        '',
        `Database ${BIG}: ${Math.round(size / 1e6)} MB (pg_database_size), dump ${Math.round(lastSize / 1e6)} MB; ${ROUNDS} rounds each, interleaved; medians.`,
        '',
        '| | median s | ratio |',
        '|---|---:|---:|',
        `| raw \`pg_dump -Fc\` + \`pg_restore\` | ${seconds(median(raw))} | 1.00 |`,
        `| Strata backup + verify | ${seconds(median(ours))} | ${(ratio ?? 0).toFixed(2)} (target <= 1.3) |`,
        '',
      );

      // Point-in-time replay rate.
      const replay: Array<{ changes: number; replayed: number; seconds: number; rows_per_s: number }> = [];
      for (const n of PITR_CHANGES) {
        await onDb('postgres', async (c) => {
          await c.query(`DROP DATABASE IF EXISTS ${PITR} WITH (FORCE)`);
          await c.query(`CREATE DATABASE ${PITR}`);
        });
        await migrate(PITR);
        await onDb(PITR, (c) =>
          c.query(
            "INSERT INTO strata.tenants (id, name) VALUES ('bench-pitr', 'PITR bench'); INSERT INTO public.pipelines (tenant_id, name) SELECT 'bench-pitr', 'p' || g FROM generate_series(1, 100) g",
          ),
        );
        const svc = services(PITR, dir);
        const base = await svc.backups.create('full', { trigger: 'bench' });
        // n captured changes: 60% inserts, 30% updates, 10% deletes, in transactions of 1000 rows.
        await onDb(PITR, async (c) => {
          const ins = Math.round(n * 0.6);
          const upd = Math.round(n * 0.3);
          const del = n - ins - upd;
          for (let i = 0; i < ins; i += 1000) {
            await c.query(
              `INSERT INTO public.pipeline_runs (tenant_id, pipeline_id, params) SELECT 'bench-pitr', 1 + g % 100, jsonb_build_object('g', g) FROM generate_series($1::int, $2::int) g`,
              [i + 1, Math.min(ins, i + 1000)],
            );
          }
          const ids = (await c.query<{ id: string }>('SELECT id FROM public.pipeline_runs ORDER BY id')).rows.map((r) => r.id);
          for (let i = 0; i < upd; i += 1000) {
            await c.query("UPDATE public.pipeline_runs SET status = 'running', started_at = now() WHERE id = ANY($1::bigint[])", [ids.slice(i, Math.min(upd, i + 1000))]);
          }
          for (let i = 0; i < del; i += 1000) {
            await c.query('DELETE FROM public.pipeline_runs WHERE id = ANY($1::bigint[])', [ids.slice(ids.length - Math.min(del, i + 1000), ids.length - i)]);
          }
        });
        const until = new Date().toISOString();
        await new Promise((r) => setTimeout(r, 5));
        let replayStart = 0;
        let replayEnd = 0;
        const target = `${PITR}_restored`;
        await onDb('postgres', (c) => c.query(`DROP DATABASE IF EXISTS ${target} WITH (FORCE)`));
        const result = await svc.restores.restore(
          { until, target: 'new_database', database: target },
          {
            progress: (p: ProgressUpdate) => {
              if (p.phase === 'replay' && replayStart === 0) replayStart = Date.now();
              if (p.phase === 'replay') replayEnd = Date.now();
            },
          },
        );
        const secs = Math.max(0.001, (replayEnd - replayStart) / 1000);
        replay.push({ changes: n, replayed: result.replayed, seconds: Math.round(secs * 100) / 100, rows_per_s: Math.round(result.replayed / secs) });
        ctx.log(`backups: PITR replay of ${result.replayed} changes: ${secs.toFixed(2)} s (${Math.round(result.replayed / secs)} rows/s); base ${base.id}`);
        await onDb('postgres', async (c) => {
          await c.query(`DROP DATABASE IF EXISTS ${target} WITH (FORCE)`);
          await c.query(`DROP DATABASE IF EXISTS ${PITR} WITH (FORCE)`);
        });
      }
      md.push(
        '### Point-in-time restore: change-log replay rate',
        '',
        'Full backup of a small database, N captured changes (60% inserts, 30% updates, 10% deletes), restore `until` now; time of the replay phase only (set-based batches, one transaction, events also appended to the restored change log).',
        '',
        '| changes | replayed | replay s | rows/s |',
        '|---:|---:|---:|---:|',
        ...replay.map((r) => `| ${r.changes} | ${r.replayed} | ${r.seconds} | ${r.rows_per_s} |`),
        '',
      );
      return {
        md,
        json: { database_bytes: size, dump_bytes: lastSize, raw_ms: raw, strata_ms: ours, ratio, replay },
      };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
};

export default scenario;
