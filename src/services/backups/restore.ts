/**
 * Restores (SPEC 8): a backup, or the state at an instant (`until`: the last full backup taken at or
 * before it, then its incremental backups, then the source's live change log, each event applied
 * when `NOT pg_visible_in_snapshot(txid, <covered snapshot>) AND at <= until`), into a new database or
 * in place.
 *
 * In place = restore into a fresh database beside the live one, then swap names: the live database
 * is untouched until the swap, so a restore that fails leaves it as it was. For the whole duration
 * the service is in maintenance mode (writes answer 503 MAINTENANCE_IN_PROGRESS), and a safety full
 * backup is taken first. The swap closes connections to the old database (ALLOW_CONNECTIONS false,
 * pg_terminate_backend); pooled connections reconnect by name, to the restored database.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { setTimeout as sleep } from 'node:timers/promises';
import QueryStream from 'pg-query-stream';
import type pg from 'pg';
import { badRequest, conflict } from '../../errors.js';
import { CHANGE_COLUMNS, isoMicros, type BackupService, type ChangeEvent, type OperationOptions } from './backups.js';
import type { BackupManifest } from './manifest.js';
import { DATABASE_NAME, databaseExists, dropDatabase, quoteIdent, urlForDatabase, withClient } from './pg.js';
import { createApplier, type ReplayStats } from './replay.js';
import { MAINTENANCE_CACHE_MS, enterMaintenance, leaveMaintenance, refreshMaintenance } from './maintenance.js';

export type RestoreTarget = 'new_database' | 'in_place';

export interface RestoreRequest {
  backup_id?: string;
  until?: string;
  target: RestoreTarget;
  database?: string;
}

export interface RestorePlan {
  base: BackupManifest;
  incrementals: BackupManifest[];
  /** Replay the source's live change log after the last covered snapshot. */
  live: boolean;
  until: string | null;
  target: RestoreTarget;
  database: string;
}

export interface RestoreResult {
  database: string;
  target: RestoreTarget;
  backup_id: string;
  incremental_ids: string[];
  until: string | null;
  replayed: number;
  replayed_tables: string[];
  last_change_id: string | null;
  safety_backup_id: string | null;
  duration_ms: number;
}

export function createRestoreService(deps: {
  backups: BackupService;
  redisUrl: string;
  changeRetentionDays?: number;
  /** CACHE_PREFIX of the result cache: its epoch is bumped after an in-place restore (every cached read retired). */
  cachePrefix?: string;
}) {
  const { backups } = deps;
  const source = backups.database;
  const server = urlForDatabase(backups.adminUrl, 'postgres');

  /** Validate a request and work out what to restore: 400/409 before anything is enqueued or written. */
  async function plan(req: RestoreRequest, now = new Date()): Promise<RestorePlan> {
    if (req.target !== 'new_database' && req.target !== 'in_place') {
      throw badRequest('INVALID_RESTORE_TARGET', `target must be new_database or in_place (got ${String(req.target)})`);
    }
    if (req.backup_id !== undefined && req.until !== undefined) throw badRequest('RESTORE_SOURCE_AMBIGUOUS', 'give either backup_id or until, not both');
    if (req.backup_id === undefined && req.until === undefined) throw badRequest('RESTORE_SOURCE_REQUIRED', 'give backup_id or until');
    let database: string;
    if (req.target === 'in_place') {
      if (req.database !== undefined && req.database !== source) {
        throw badRequest('DATABASE_NOT_ALLOWED', `an in-place restore replaces ${source}; database must be omitted (or ${source})`);
      }
      database = source;
    } else {
      database = req.database ?? `${source.slice(0, 40)}_restored_${now.toISOString().replace(/\D/g, '').slice(0, 14)}`;
      if (!DATABASE_NAME.test(database)) {
        throw badRequest('INVALID_DATABASE_NAME', `database must be a lower-case identifier of at most 63 characters ([a-z_][a-z0-9_]*), got ${JSON.stringify(database)}`);
      }
      const exists = await withClient(server, (c) => databaseExists(c, database));
      if (exists) throw conflict('DATABASE_EXISTS', `database ${database} already exists; choose another name, or restore with target in_place`);
    }
    const chain = await backups.completed();
    if (req.backup_id !== undefined) {
      const m = await backups.get(req.backup_id);
      if (m.status !== 'completed') throw conflict('BACKUP_NOT_COMPLETED', `backup ${m.id} is ${m.status}; only completed backups can be restored`);
      if (m.kind === 'full') return { base: m, incrementals: [], live: false, until: null, target: req.target, database };
      const links = incrementalChainTo(chain, m);
      return { base: links.base, incrementals: links.incrementals, live: false, until: null, target: req.target, database };
    }
    const until = new Date(req.until ?? '');
    if (Number.isNaN(until.getTime())) throw badRequest('INVALID_UNTIL', `until must be an ISO 8601 timestamp (got ${JSON.stringify(req.until)})`);
    if (until.getTime() > now.getTime()) throw badRequest('UNTIL_IN_FUTURE', `until ${until.toISOString()} is in the future`);
    const base = [...chain].reverse().find((b) => b.kind === 'full' && b.snapshot_at !== null && Date.parse(b.snapshot_at) <= until.getTime());
    if (!base) {
      const oldest = chain.find((b) => b.kind === 'full');
      throw badRequest(
        'UNTIL_OUT_OF_RANGE',
        oldest ? `until ${until.toISOString()} is before the oldest full backup (${oldest.snapshot_at})` : 'there is no completed full backup to restore from',
      );
    }
    if (!(await backups.hasChangeLog())) {
      throw conflict('CHANGE_LOG_MISSING', 'a point-in-time restore replays the change log (strata.changes, migration 0004_change_capture), which this database does not have; restore a backup_id instead');
    }
    const incrementals = followingIncrementals(chain, base).filter((i) => i.snapshot_at !== null && Date.parse(i.snapshot_at) <= until.getTime());
    // The live log drops whole days past CHANGES_RETENTION_DAYS: replaying across a dropped day would
    // silently miss its events.
    const covered = incrementals[incrementals.length - 1] ?? base;
    const retentionDays = deps.changeRetentionDays ?? 0;
    if (retentionDays > 0 && covered.snapshot_at && Date.parse(covered.snapshot_at) < now.getTime() - (retentionDays - 1) * 86_400_000) {
      throw conflict(
        'CHANGE_LOG_TRUNCATED',
        `the change log keeps ${retentionDays} days (CHANGES_RETENTION_DAYS) and the last backup before until (${covered.id}, ${covered.snapshot_at}) is older; restore a backup_id, or take incremental backups more often than the retention`,
      );
    }
    return { base, incrementals, live: true, until: until.toISOString(), target: req.target, database };
  }

  /** Incrementals that continue `base`, in order (each one's base is the previous link). */
  function followingIncrementals(chain: BackupManifest[], base: BackupManifest): BackupManifest[] {
    const links: BackupManifest[] = [];
    let tip = base.id;
    for (const b of chain) {
      if (b.kind === 'incremental' && b.base_backup_id === tip) {
        links.push(b);
        tip = b.id;
      }
    }
    return links;
  }

  function incrementalChainTo(chain: BackupManifest[], target: BackupManifest): { base: BackupManifest; incrementals: BackupManifest[] } {
    const byId = new Map(chain.map((b) => [b.id, b]));
    const incrementals: BackupManifest[] = [target];
    let cur = target;
    while (cur.kind === 'incremental') {
      const prev = cur.base_backup_id ? byId.get(cur.base_backup_id) : undefined;
      if (!prev) throw conflict('BACKUP_CHAIN_BROKEN', `incremental backup ${cur.id} continues ${cur.base_backup_id ?? '?'}, which is missing or not completed`);
      if (prev.kind === 'full') return { base: prev, incrementals: incrementals.reverse() };
      incrementals.push(prev);
      cur = prev;
    }
    throw conflict('BACKUP_CHAIN_BROKEN', `no full backup precedes ${target.id}`);
  }

  /** Events of the source's live change log not in `snapshot`, up to `until`, in id order. */
  async function* liveEvents(c: pg.Client, snapshot: string, until: string): AsyncGenerator<ChangeEvent> {
    const stream = c.query(
      new QueryStream(
        `SELECT ${CHANGE_COLUMNS} FROM strata.changes
          WHERE txid >= pg_snapshot_xmin($1::pg_snapshot) AND NOT pg_visible_in_snapshot(txid, $1::pg_snapshot) AND at <= $2::timestamptz
          ORDER BY id`,
        [snapshot, until],
        { batchSize: 2000 },
      ),
    );
    for await (const row of stream) yield row as ChangeEvent;
  }

  /** Restore the plan's base into `name`, then replay what follows it. */
  async function restoreInto(p: RestorePlan, name: string, opts: OperationOptions): Promise<ReplayStats> {
    const progress = opts.progress ?? (() => undefined);
    await backups.restoreDump(p.base, name, { ...opts, phase: 'restore' });
    try {
      return await withClient(urlForDatabase(backups.adminUrl, name), async (target) => {
        await target.query('BEGIN');
        await target.query('SET LOCAL session_replication_role = replica');
        const hasLog = (await target.query<{ t: string | null }>("SELECT to_regclass('strata.changes')::text AS t")).rows[0]?.t != null;
        const applier = createApplier(target, { copyToChangeLog: hasLog });
        const untilMicros = p.until ? isoMicros(p.until) : Infinity;
        let total: number | null = p.incrementals.reduce((n, i) => n + (i.change_count ?? 0), 0);
        let last = p.base.change_snapshot;
        const tick = async () => {
          if (applier.applied % 5000 === 0) await progress({ phase: 'replay', done: applier.applied, total });
        };
        await progress({ phase: 'replay', done: 0, total });
        for (const inc of p.incrementals) {
          for await (const e of backups.readIncremental(inc)) {
            opts.signal?.throwIfAborted();
            if (isoMicros(e.at) > untilMicros) continue;
            await applier.apply(e);
            await tick();
          }
          last = inc.change_snapshot;
        }
        if (p.live && p.until && last) {
          await withClient(backups.adminUrl, async (src) => {
            await src.query('BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY');
            const counted = await src.query<{ n: string }>(
              `SELECT count(*) AS n FROM strata.changes
                WHERE txid >= pg_snapshot_xmin($1::pg_snapshot) AND NOT pg_visible_in_snapshot(txid, $1::pg_snapshot) AND at <= $2::timestamptz`,
              [last, p.until],
            );
            total = (total ?? 0) + Number(counted.rows[0]?.n ?? 0);
            for await (const e of liveEvents(src, last ?? '', p.until ?? '')) {
              opts.signal?.throwIfAborted();
              await applier.apply(e);
              await tick();
            }
            await src.query('COMMIT');
          });
        }
        const stats = await applier.finish();
        await target.query('COMMIT');
        await progress({ phase: 'replay', done: stats.applied, total: stats.applied });
        return stats;
      });
    } catch (err) {
      await dropDatabase(backups.adminUrl, name).catch(() => undefined);
      throw err;
    }
  }

  /** Database-level ownership and privileges of the source, onto the restored database (pg_dump without --create has none). */
  async function copyDatabaseAcl(from: string, to: string): Promise<void> {
    await withClient(server, async (c) => {
      const { rows } = await c.query<{ owner: string; acl: string[] | null }>(
        'SELECT pg_get_userbyid(datdba) AS owner, datacl::text[] AS acl FROM pg_database WHERE datname = $1',
        [from],
      );
      const row = rows[0];
      if (!row) return;
      await c.query(`ALTER DATABASE ${quoteIdent(to)} OWNER TO ${quoteIdent(row.owner)}`);
      if (!row.acl) return;
      await c.query(`REVOKE ALL ON DATABASE ${quoteIdent(to)} FROM PUBLIC`);
      const grants = await c.query<{ grantee: string | null; privilege_type: string }>(
        `SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END AS grantee, a.privilege_type
           FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $1`,
        [from],
      );
      for (const g of grants.rows) {
        await c.query(`GRANT ${g.privilege_type} ON DATABASE ${quoteIdent(to)} TO ${g.grantee === null ? 'PUBLIC' : quoteIdent(g.grantee)}`);
      }
    });
  }

  /** Swap `fresh` in under the live database's name; the old one is dropped (a safety backup exists). */
  async function swap(fresh: string): Promise<void> {
    const old = `${source.slice(0, 40)}_pre_restore_${randomBytes(4).toString('hex')}`;
    await withClient(server, async (c) => {
      await c.query(`ALTER DATABASE ${quoteIdent(source)} WITH ALLOW_CONNECTIONS false`);
      try {
        for (let i = 0; ; i++) {
          await c.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [source]);
          try {
            await c.query(`ALTER DATABASE ${quoteIdent(source)} RENAME TO ${quoteIdent(old)}`);
            break;
          } catch (err) {
            // 55006: still in use (a backend not gone yet)
            if ((err as { code?: string }).code !== '55006' || i > 50) throw err;
            await sleep(100);
          }
        }
      } catch (err) {
        await c.query(`ALTER DATABASE ${quoteIdent(source)} WITH ALLOW_CONNECTIONS true`).catch(() => undefined);
        throw err;
      }
      try {
        await c.query(`ALTER DATABASE ${quoteIdent(fresh)} RENAME TO ${quoteIdent(source)}`);
      } catch (err) {
        // Put the live database back.
        await c.query(`ALTER DATABASE ${quoteIdent(old)} RENAME TO ${quoteIdent(source)}`).catch(() => undefined);
        await c.query(`ALTER DATABASE ${quoteIdent(source)} WITH ALLOW_CONNECTIONS true`).catch(() => undefined);
        throw err;
      }
      await c.query(`DROP DATABASE ${quoteIdent(old)} WITH (FORCE)`);
    });
  }

  /** Run a planned restore. Progress phases: safety-backup, restore, replay, swap. */
  async function restore(req: RestoreRequest, opts: OperationOptions = {}): Promise<RestoreResult> {
    const started = Date.now();
    const progress = opts.progress ?? (() => undefined);
    if (req.target === 'new_database') {
      const p = await plan(req);
      const stats = await restoreInto(p, p.database, opts);
      return result(p, stats, null, started);
    }
    const redis = new Redis(deps.redisUrl, { maxRetriesPerRequest: 3, lazyConnect: true });
    redis.on('error', () => undefined);
    await redis.connect();
    const keepAlive = setInterval(() => void refreshMaintenance(redis, source).catch(() => undefined), 30_000);
    keepAlive.unref();
    try {
      await enterMaintenance(redis, source, { reason: 'in-place restore', job_id: opts.jobId ?? null, since: new Date().toISOString() });
      // Let every API process see the flag (they cache it briefly) before the last writes are taken.
      await sleep(MAINTENANCE_CACHE_MS * 2 + 100);
      await progress({ phase: 'safety-backup', done: 0, total: 1 });
      const safety = await backups.create('full', { ...opts, trigger: 'pre-restore', progress: (x) => progress({ ...x, phase: 'safety-backup' }) });
      const p = await plan(req);
      const fresh = `${source.slice(0, 40)}_restoring_${randomBytes(4).toString('hex')}`;
      const stats = await restoreInto(p, fresh, opts);
      await progress({ phase: 'swap', done: 0, total: 1 });
      try {
        await copyDatabaseAcl(source, fresh);
        await swap(fresh);
      } catch (err) {
        await dropDatabase(backups.adminUrl, fresh).catch(() => undefined);
        throw err;
      }
      // The data changed under the result cache without passing its write hooks: retire every entry.
      if (deps.cachePrefix) await redis.incr(`${deps.cachePrefix}:epoch`);
      await progress({ phase: 'swap', done: 1, total: 1 });
      return result(p, stats, safety.id, started);
    } finally {
      clearInterval(keepAlive);
      await leaveMaintenance(redis, source).catch(() => undefined);
      await redis.quit().catch(() => redis.disconnect());
    }
  }

  function result(p: RestorePlan, stats: ReplayStats, safety: string | null, started: number): RestoreResult {
    return {
      database: p.database,
      target: p.target,
      backup_id: p.base.id,
      incremental_ids: p.incrementals.map((i) => i.id),
      until: p.until,
      replayed: stats.applied,
      replayed_tables: stats.tables,
      last_change_id: stats.last_id,
      safety_backup_id: safety,
      duration_ms: Date.now() - started,
    };
  }

  return { plan, restore };
}

export type RestoreService = ReturnType<typeof createRestoreService>;
