/**
 * Backups (SPEC 8): full backups (`pg_dump -Fc` from an exported snapshot), incremental backups (the
 * change-log range since the previous backup), listing, deletion, verification by a real restore,
 * and retention. Used by the REST routes (reads, validation), the BullMQ processors (the work) and
 * the CLI. The catalog is the manifests in the store (see manifest.ts).
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import type pg from 'pg';
import QueryStream from 'pg-query-stream';
import type { Logger } from 'pino';
import type { Config } from '../../config.js';
import { badRequest, conflict, notFound } from '../../errors.js';
import { createBackupStore, type BackupStore } from './store.js';
import { BACKUP_ID, effective, isVerified, newBackupId, type BackupKind, type BackupManifest, type Verification } from './manifest.js';
import { findPgTools, libpqEnv, run, type PgTools } from './pg-tools.js';
import { countRows, databaseOf, dropDatabase, listTables, quoteIdent, urlForDatabase, withClient } from './pg.js';
import { randomBytes } from 'node:crypto';

export interface ProgressUpdate {
  phase: string;
  done: number;
  total: number | null;
}
export type ProgressFn = (p: ProgressUpdate) => Promise<void> | void;

export interface OperationOptions {
  jobId?: string | null;
  signal?: AbortSignal;
  progress?: ProgressFn;
  trigger?: string;
}

export interface BackupServiceDeps {
  config: Config;
  /** Admin (owner/superuser) URL of the database backed up. */
  adminUrl: string;
  log: Pick<Logger, 'info' | 'warn' | 'error' | 'debug'>;
  store?: BackupStore;
}

/** One change event, as read from strata.changes (the CDC contract) or an incremental file. */
export interface ChangeEvent {
  id: string;
  txid: string;
  tenant_id: string | null;
  table_name: string;
  op: 'insert' | 'update' | 'delete';
  pk: Record<string, unknown>;
  before: Record<string, unknown> | null;
  after: Record<string, unknown> | null;
  actor: string | null;
  at: string;
}

// `at` as ISO 8601 text with microseconds (a JS Date would keep milliseconds only).
export const CHANGE_COLUMNS = "id::text AS id, txid::text AS txid, tenant_id, table_name, op, pk, before, after, actor, to_jsonb(at) #>> '{}' AS at";

/** An ISO 8601 timestamp as microseconds since the epoch (Date keeps only milliseconds). */
export function isoMicros(iso: string): number {
  const m = /\.(\d+)/.exec(iso);
  const frac = m?.[1] ?? '';
  const ms = Date.parse(m ? iso.replace(m[0], '') : iso);
  return ms * 1000 + Number((frac + '000000').slice(0, 6));
}

const DUMP_FILE = 'dump.pgcustom';
const CHANGES_FILE = 'changes.ndjson.gz';
const HEARTBEAT_MS = 10_000;

export const backupNotFound = (id: string) => notFound('BACKUP_NOT_FOUND', `backup ${id} does not exist`);

export function createBackupService(deps: BackupServiceDeps) {
  const { config, adminUrl, log } = deps;
  const store = deps.store ?? createBackupStore(config);
  const database = databaseOf(adminUrl);
  const schemas = config.BACKUP_SCHEMAS ? config.BACKUP_SCHEMAS.split(',') : null;
  const now = () => new Date().toISOString();

  async function tools(c: pg.ClientBase): Promise<PgTools> {
    const { rows } = await c.query<{ n: string }>("SELECT current_setting('server_version_num') AS n");
    return findPgTools(Number(rows[0]?.n), config.BACKUP_PG_BIN_DIR);
  }

  async function read(id: string): Promise<BackupManifest | undefined> {
    if (!BACKUP_ID.test(id)) return undefined;
    return store.getJson<BackupManifest>(`${id}/manifest.json`);
  }

  /** Every manifest, newest first, stale running ones shown failed. */
  async function list(): Promise<BackupManifest[]> {
    const ids = (await store.listIds()).filter((id) => BACKUP_ID.test(id));
    const all = await Promise.all(ids.map((id) => read(id)));
    return all
      .filter((m): m is BackupManifest => m !== undefined)
      .map((m) => effective(m))
      .sort((a, b) => (a.started_at < b.started_at ? 1 : a.started_at > b.started_at ? -1 : b.id.localeCompare(a.id)));
  }

  async function get(id: string): Promise<BackupManifest> {
    const m = await read(id);
    if (!m) throw backupNotFound(id);
    return effective(m);
  }

  /** Completed backups of this database, oldest first (the order a point-in-time restore walks). */
  async function completed(): Promise<BackupManifest[]> {
    return (await list()).filter((m) => m.status === 'completed' && m.database === database).reverse();
  }

  function blank(kind: BackupKind, opts: OperationOptions): BackupManifest {
    const started = now();
    return {
      id: newBackupId(kind),
      kind,
      status: 'running',
      database,
      server_version: null,
      server_version_num: null,
      started_at: started,
      finished_at: null,
      updated_at: started,
      snapshot_at: null,
      file: null,
      format: kind === 'full' ? 'pg_dump-custom' : 'ndjson-gzip',
      sha256: null,
      size: null,
      schemas: kind === 'full' ? schemas : null,
      change_snapshot: null,
      change_position: null,
      row_counts: {},
      base_backup_id: null,
      base_change_snapshot: null,
      change_count: null,
      safety: opts.trigger === 'pre-restore',
      trigger: opts.trigger ?? 'api',
      job_id: opts.jobId ?? null,
      error: null,
      tool: null,
      verifications: [],
    };
  }

  /**
   * Write the manifest `running`, do the work, write it `completed` (or `failed`, best effort).
   * A heartbeat keeps `updated_at` fresh so a live job is never shown as failed.
   */
  async function runBackup(m: BackupManifest, work: (m: BackupManifest) => Promise<void>): Promise<BackupManifest> {
    await store.putJson(`${m.id}/manifest.json`, m);
    let writing = Promise.resolve();
    const beat = setInterval(() => {
      writing = writing.then(() => store.putJson(`${m.id}/manifest.json`, { ...m, updated_at: now() }).catch(() => undefined));
    }, HEARTBEAT_MS);
    beat.unref();
    try {
      await work(m);
      clearInterval(beat);
      await writing;
      const done: BackupManifest = { ...m, status: 'completed', finished_at: now(), updated_at: now() };
      await store.putJson(`${m.id}/manifest.json`, done);
      log.info({ backup: m.id, kind: m.kind, size: m.size }, 'backup completed');
      return done;
    } catch (err) {
      clearInterval(beat);
      await writing;
      const reason = err instanceof Error ? err.message : String(err);
      await store.putJson(`${m.id}/manifest.json`, { ...m, status: 'failed', finished_at: now(), updated_at: now(), error: reason }).catch(() => undefined);
      log.warn({ backup: m.id, err }, 'backup failed');
      throw err;
    }
  }

  /** Stream into a temporary file, hashing as it goes (not yet in the store). */
  async function writeTemp(source: Readable, key: string): Promise<{ tmp: string; sha256: string; size: number }> {
    await mkdir(store.tmpDir, { recursive: true });
    const tmp = path.join(store.tmpDir, `${key.replace(/\//g, '_')}.${randomBytes(4).toString('hex')}.part`);
    const hash = createHash('sha256');
    let size = 0;
    const tap = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        size += chunk.length;
        cb(null, chunk);
      },
    });
    try {
      await pipeline(source, tap, createWriteStream(tmp));
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return { tmp, sha256: hash.digest('hex'), size };
  }

  /**
   * Write `produce`'s stream to a temporary file, and hand it to the store under `key` only once
   * `produce` has succeeded (a killed pg_dump also ends its stdout cleanly: its partial output must
   * never become the backup's file).
   */
  async function storeOutput(key: string, produce: (sink: (out: Readable) => Promise<void>) => Promise<void>): Promise<{ sha256: string; size: number }> {
    let file: { tmp: string; sha256: string; size: number } | undefined;
    try {
      await produce(async (out) => {
        file = await writeTemp(out, key);
      });
      if (!file) throw new Error('no output was produced');
      await store.putFile(key, file.tmp);
      return { sha256: file.sha256, size: file.size };
    } finally {
      if (file) await rm(file.tmp, { force: true });
    }
  }

  /** Full backup: pg_dump from a snapshot exported by a REPEATABLE READ transaction kept open meanwhile. */
  async function createFull(opts: OperationOptions = {}): Promise<BackupManifest> {
    const m = blank('full', opts);
    const progress = opts.progress ?? (() => undefined);
    return runBackup(m, () =>
      withClient(adminUrl, async (c) => {
        const pgt = await tools(c);
        await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY');
        const { rows } = await c.query<{ snap: string; cur: string; v: string; n: string; at: Date }>(
          "SELECT pg_export_snapshot() AS snap, pg_current_snapshot()::text AS cur, current_setting('server_version') AS v, current_setting('server_version_num') AS n, clock_timestamp() AS at",
        );
        const s = rows[0];
        if (!s) throw new Error('could not export a snapshot');
        const tables = await listTables(c, schemas);
        m.server_version = s.v;
        m.server_version_num = Number(s.n);
        m.snapshot_at = s.at.toISOString();
        m.change_snapshot = s.cur;
        m.change_position = await changePosition(c);
        m.tool = pgt.pg_dump;
        m.file = DUMP_FILE;
        const { env, dbname } = libpqEnv(adminUrl);
        const args = ['--format=custom', `--snapshot=${s.snap}`, '--verbose', '--no-password', ...(schemas ?? []).map((n) => `--schema=${n}`), dbname];
        let dumped = 0;
        const total = tables.length;
        await progress({ phase: 'dump', done: 0, total });
        // Counting in the snapshot runs alongside pg_dump, which reads the same snapshot.
        const counting = countRows(c, tables, opts.signal);
        counting.catch(() => undefined);
        const file = await storeOutput(`${m.id}/${DUMP_FILE}`, async (sink) => {
          await run(pgt.pg_dump, args, {
            env,
            signal: opts.signal,
            onStdout: sink,
            onStderrLine: (line) => {
              if (/dumping contents of table/.test(line)) {
                dumped++;
                void progress({ phase: 'dump', done: Math.min(dumped, total), total });
              }
            },
          });
          m.row_counts = await counting;
        });
        await c.query('COMMIT');
        m.sha256 = file.sha256;
        m.size = file.size;
        await progress({ phase: 'dump', done: total, total });
      }),
    );
  }

  async function changePosition(c: pg.ClientBase): Promise<string | null> {
    if (!(await hasChangeLog(c))) return null;
    const { rows } = await c.query<{ max: string | null }>('SELECT max(id)::text AS max FROM strata.changes');
    return rows[0]?.max ?? null;
  }

  async function hasChangeLog(c: pg.ClientBase): Promise<boolean> {
    const { rows } = await c.query<{ t: string | null }>("SELECT to_regclass('strata.changes')::text AS t");
    return rows[0]?.t !== null && rows[0]?.t !== undefined;
  }

  /** Why an incremental backup cannot be taken now (checked before enqueueing, and again in the job). */
  async function incrementalBase(): Promise<BackupManifest> {
    const hasLog = await withClient(adminUrl, hasChangeLog);
    if (!hasLog) {
      throw conflict('CHANGE_LOG_MISSING', 'incremental backups need the change log (strata.changes, migration 0004_change_capture); take a full backup');
    }
    const chain = await completed();
    const base = chain[chain.length - 1];
    if (!base || !chain.some((b) => b.kind === 'full')) throw conflict('NO_FULL_BACKUP', 'an incremental backup needs a completed full backup first');
    if (!base.change_snapshot) throw conflict('NO_FULL_BACKUP', `backup ${base.id} has no change snapshot to continue from`);
    return base;
  }

  /** Incremental backup: the change events committed after the previous backup's snapshot and visible now. */
  async function createIncremental(opts: OperationOptions = {}): Promise<BackupManifest> {
    const base = await incrementalBase();
    const m = blank('incremental', opts);
    m.base_backup_id = base.id;
    m.base_change_snapshot = base.change_snapshot;
    const progress = opts.progress ?? (() => undefined);
    return runBackup(m, () =>
      withClient(adminUrl, async (c) => {
        await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY');
        const { rows } = await c.query<{ cur: string; v: string; n: string; at: Date }>(
          "SELECT pg_current_snapshot()::text AS cur, current_setting('server_version') AS v, current_setting('server_version_num') AS n, clock_timestamp() AS at",
        );
        const s = rows[0];
        if (!s) throw new Error('could not read the snapshot');
        m.server_version = s.v;
        m.server_version_num = Number(s.n);
        m.snapshot_at = s.at.toISOString();
        m.change_snapshot = s.cur;
        m.change_position = await changePosition(c);
        m.file = CHANGES_FILE;
        await progress({ phase: 'changes', done: 0, total: null });
        let n = 0;
        const events = c.query(
          new QueryStream(
            `SELECT ${CHANGE_COLUMNS} FROM strata.changes
              WHERE txid >= pg_snapshot_xmin($1::pg_snapshot) AND NOT pg_visible_in_snapshot(txid, $1::pg_snapshot)
              ORDER BY id`,
            [base.change_snapshot],
            { batchSize: 1000 },
          ),
        );
        const lines = new Transform({
          writableObjectMode: true,
          transform(row: ChangeEvent, _enc, cb) {
            n++;
            if (n % 10_000 === 0) void progress({ phase: 'changes', done: n, total: null });
            cb(null, JSON.stringify(row) + '\n');
          },
        });
        const file = await storeOutput(`${m.id}/${CHANGES_FILE}`, (sink) => sink(events.pipe(lines).pipe(createGzip())));
        await c.query('COMMIT');
        m.change_count = n;
        m.sha256 = file.sha256;
        m.size = file.size;
        await progress({ phase: 'changes', done: n, total: n });
      }),
    );
  }

  /** sha256 of a stored file. */
  async function checksum(m: BackupManifest): Promise<string> {
    const hash = createHash('sha256');
    for await (const chunk of await store.read(`${m.id}/${m.file}`)) hash.update(chunk as Buffer);
    return hash.digest('hex');
  }

  /** A stored file as a local path (the store's own file when it is a directory), with cleanup. */
  async function localCopy(m: BackupManifest): Promise<{ path: string; cleanup: () => Promise<void> }> {
    if (store.kind === 'directory') return { path: path.join(store.location, m.id, m.file ?? ''), cleanup: async () => undefined };
    await mkdir(store.tmpDir, { recursive: true });
    const p = path.join(store.tmpDir, `${m.id}-${randomBytes(4).toString('hex')}.download`);
    await store.download(`${m.id}/${m.file}`, p);
    return { path: p, cleanup: () => rm(p, { force: true }) };
  }

  /**
   * Restore a full backup's dump into a new database `name` (created here; dropped again on failure).
   * Returns the row counts read from it.
   */
  async function restoreDump(m: BackupManifest, name: string, opts: OperationOptions & { phase?: string } = {}): Promise<Record<string, number>> {
    const progress = opts.progress ?? (() => undefined);
    const phase = opts.phase ?? 'restore';
    const server = urlForDatabase(adminUrl, 'postgres');
    const file = await localCopy(m);
    let created = false;
    try {
      const pgt = await withClient(server, async (c) => {
        const t = await tools(c);
        await c.query(`CREATE DATABASE ${quoteIdent(name)} TEMPLATE template0`);
        created = true;
        return t;
      });
      const { env } = libpqEnv(server);
      const total = Object.keys(m.row_counts).length;
      let restored = 0;
      await progress({ phase, done: 0, total });
      await run(pgt.pg_restore, ['--exit-on-error', '--verbose', '--no-password', `--dbname=${name}`, file.path], {
        env,
        signal: opts.signal,
        onStderrLine: (line) => {
          if (/processing data for table/.test(line)) {
            restored++;
            void progress({ phase, done: Math.min(restored, total), total });
          }
        },
      });
      await progress({ phase, done: total, total });
      return await withClient(urlForDatabase(adminUrl, name), async (c) => countRows(c, await listTables(c, m.schemas), opts.signal));
    } catch (err) {
      if (created) await dropDatabase(adminUrl, name).catch(() => undefined);
      throw err;
    } finally {
      await file.cleanup();
    }
  }

  /** Record a verification in the manifest (re-read first: other verifications may have landed). */
  async function recordVerification(id: string, v: Verification): Promise<void> {
    const m = await read(id);
    if (!m) return;
    await store.putJson(`${id}/manifest.json`, { ...m, verifications: [...m.verifications, v].slice(-50) });
  }

  /**
   * Verify a backup: checksum, then (full) a real pg_restore into a scratch database and a comparison
   * of every table's row count with the manifest, or (incremental) a full read of its events.
   * The scratch database is always dropped. The result is recorded in the manifest and returned.
   */
  async function verify(id: string, opts: OperationOptions = {}): Promise<Verification> {
    const m = await get(id);
    if (m.status !== 'completed') throw conflict('BACKUP_NOT_COMPLETED', `backup ${id} is ${m.status}; only completed backups can be verified`);
    const progress = opts.progress ?? (() => undefined);
    const startedAt = Date.now();
    const v: Verification = {
      job_id: opts.jobId ?? null,
      started_at: new Date(startedAt).toISOString(),
      finished_at: '',
      ok: false,
      checksum_ok: null,
      restore_ok: null,
      row_counts_ok: null,
      mismatches: [],
      reason: null,
      scratch_database: null,
      duration_ms: 0,
    };
    try {
      await progress({ phase: 'checksum', done: 0, total: 1 });
      const sum = await checksum(m).catch((err: Error) => {
        throw new Error(`the backup file cannot be read: ${err.message}`);
      });
      v.checksum_ok = sum === m.sha256;
      await progress({ phase: 'checksum', done: 1, total: 1 });
      if (!v.checksum_ok) {
        v.reason = `checksum mismatch: the manifest says sha256 ${m.sha256}, the file has ${sum} (the file is corrupted or was changed)`;
      } else if (m.kind === 'full') {
        const scratch = `strata_verify_${randomBytes(5).toString('hex')}`;
        v.scratch_database = scratch;
        try {
          const counts = await restoreDump(m, scratch, { ...opts, phase: 'restore' });
          v.restore_ok = true;
          const keys = new Set([...Object.keys(m.row_counts), ...Object.keys(counts)]);
          for (const k of [...keys].sort()) {
            if (m.row_counts[k] !== counts[k]) v.mismatches.push({ table: k, expected: m.row_counts[k] ?? null, actual: counts[k] ?? null });
          }
          v.row_counts_ok = v.mismatches.length === 0;
          if (!v.row_counts_ok) v.reason = `row counts differ from the manifest in ${v.mismatches.length} table(s): ${v.mismatches.map((x) => x.table).join(', ')}`;
        } catch (err) {
          v.restore_ok = false;
          v.reason = `restore into a scratch database failed: ${err instanceof Error ? err.message : String(err)}`;
        } finally {
          await dropDatabase(adminUrl, scratch).catch((err: unknown) => log.warn({ err, scratch }, 'could not drop the scratch database'));
        }
      } else {
        let n = 0;
        for await (const _ of readIncremental(m)) n++;
        v.restore_ok = true;
        v.row_counts_ok = n === m.change_count;
        if (!v.row_counts_ok) v.reason = `the file holds ${n} change events, the manifest says ${m.change_count}`;
      }
    } catch (err) {
      v.reason = err instanceof Error ? err.message : String(err);
    }
    v.ok = v.reason === null;
    v.finished_at = now();
    v.duration_ms = Date.now() - startedAt;
    await recordVerification(id, v);
    log.info({ backup: id, ok: v.ok, reason: v.reason }, 'backup verified');
    return v;
  }

  /** The events of an incremental backup, in the order they were written (change id). */
  async function* readIncremental(m: BackupManifest): AsyncGenerator<ChangeEvent> {
    const { createGunzip } = await import('node:zlib');
    const { createInterface } = await import('node:readline');
    const src = await store.read(`${m.id}/${m.file}`);
    const lines = createInterface({ input: src.pipe(createGunzip()), crlfDelay: Infinity });
    for await (const line of lines) if (line) yield JSON.parse(line) as ChangeEvent;
  }

  /** Delete a backup; refused (409) for the last verified full backup and for a running one. */
  async function remove(id: string): Promise<void> {
    const m = await get(id);
    if (m.status === 'running') throw conflict('BACKUP_RUNNING', `backup ${id} is still being taken`);
    if (m.kind === 'full' && isVerified(m)) {
      const others = (await list()).filter((b) => b.id !== id && b.kind === 'full' && b.status === 'completed' && isVerified(b) && b.database === m.database);
      if (others.length === 0) {
        throw conflict('LAST_VERIFIED_BACKUP', `backup ${id} is the last verified full backup; verify another full backup before deleting it`);
      }
    }
    await store.removeBackup(id);
    log.info({ backup: id }, 'backup deleted');
  }

  /**
   * Retention: keep the newest BACKUP_KEEP_FULL completed full backups and everything younger than
   * BACKUP_KEEP_DAYS days; never the last verified full backup; an incremental goes with the full
   * backup it follows; failed (and stale) entries go once older than the day limit.
   */
  async function prune(opts: { now?: Date; keepFull?: number; keepDays?: number } = {}): Promise<string[]> {
    const at = (opts.now ?? new Date()).getTime();
    const keepFull = opts.keepFull ?? config.BACKUP_KEEP_FULL;
    const cutoff = at - (opts.keepDays ?? config.BACKUP_KEEP_DAYS) * 86_400_000;
    const all = (await list()).filter((m) => m.database === database).reverse(); // oldest first
    const fulls = all.filter((m) => m.kind === 'full' && m.status === 'completed');
    const keptFulls = new Set(fulls.slice(-keepFull).map((m) => m.id));
    const lastVerified = [...fulls].reverse().find(isVerified);
    if (lastVerified) keptFulls.add(lastVerified.id);
    const young = (m: BackupManifest) => Date.parse(m.started_at) >= cutoff;
    const doomed: string[] = [];
    let currentFullKept = false;
    for (const m of all) {
      if (m.status === 'running') continue;
      if (m.kind === 'full' && m.status === 'completed') {
        currentFullKept = keptFulls.has(m.id) || young(m);
        if (!currentFullKept) doomed.push(m.id);
      } else if (m.status === 'failed') {
        if (!young(m)) doomed.push(m.id);
      } else if (!currentFullKept && !young(m)) {
        doomed.push(m.id); // an incremental whose full backup goes
      }
    }
    for (const id of doomed) await store.removeBackup(id);
    if (doomed.length) log.info({ pruned: doomed }, 'backups pruned by retention');
    return doomed;
  }

  /** Validate a request to create a backup before it is enqueued (400/409 here rather than a failed job). */
  async function checkCreate(kind: BackupKind): Promise<void> {
    if (kind === 'incremental') await incrementalBase();
    else if (kind !== 'full') throw badRequest('INVALID_BACKUP_KIND', `kind must be full or incremental (got ${String(kind)})`);
  }

  return {
    store,
    database,
    adminUrl,
    list,
    get,
    completed,
    checkCreate,
    create: (kind: BackupKind, opts?: OperationOptions) => (kind === 'full' ? createFull(opts) : createIncremental(opts)),
    verify,
    remove,
    prune,
    restoreDump,
    readIncremental,
    hasChangeLog: () => withClient(adminUrl, hasChangeLog),
  };
}

export type BackupService = ReturnType<typeof createBackupService>;
