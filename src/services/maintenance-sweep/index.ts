/**
 * The sweeper of orphaned temporaries (scheduled job `sweep-temporaries`, SWEEP_CRON). A killed
 * export attempt leaves `<job>.<fmt>.<attempt>-<pid>.tmp` in EXPORT_DIR; a killed backup leaves
 * `*.part` (and `.tmp-*` manifest temporaries) in BACKUP_DIR/.tmp; a full disk can leave a zero-byte
 * `manifest.json`. Files untouched (mtime) for SWEEP_MIN_AGE_MS are removed: a running export or
 * backup writes its temporary continuously, so its mtime stays fresh. Expired Idempotency-Key
 * records go too.
 */
import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Database } from '../../db/database.js';

/** An export attempt's temporary: `<job>.<fmt>.<attempt>-<pid>.tmp`. */
export const EXPORT_TMP = /^.+\.[a-z]+\.\d+-\d+\.tmp$/;
/** A backup file being written (`<key>.<hex>.part`) or a manifest temporary (`.tmp-<ms>-<hex>`). */
export const BACKUP_TMP = /^(.+\.[0-9a-f]+\.part|\.tmp-\d+-[0-9a-f]+)$/;

export interface SweepResult {
  exports: number;
  backups: number;
  manifests: number;
  idempotency_keys: number;
}

async function entries(dir: string) {
  return readdir(dir, { withFileTypes: true }).catch((err: { code?: string }) => {
    if (err.code === 'ENOENT') return [];
    throw err;
  });
}

/** Remove files of `dir` whose name matches and whose mtime is older than `minAgeMs`. Returns how many. */
async function sweepDir(dir: string, match: RegExp, minAgeMs: number, log: Logger): Promise<number> {
  let n = 0;
  const cutoff = Date.now() - minAgeMs;
  for (const e of await entries(dir)) {
    if (!e.isFile() || !match.test(e.name)) continue;
    const p = path.join(dir, e.name);
    const st = await stat(p).catch(() => undefined);
    if (!st || st.mtimeMs > cutoff) continue;
    await rm(p, { force: true });
    log.info({ file: p, bytes: st.size }, 'orphaned temporary removed');
    n++;
  }
  return n;
}

/** Zero-byte manifests (`<backup dir>/<id>/manifest.json`) older than the bound. */
async function sweepEmptyManifests(backupDir: string, minAgeMs: number, log: Logger): Promise<number> {
  let n = 0;
  const cutoff = Date.now() - minAgeMs;
  for (const e of await entries(backupDir)) {
    if (!e.isDirectory() || e.name.startsWith('.')) continue;
    const p = path.join(backupDir, e.name, 'manifest.json');
    const st = await stat(p).catch(() => undefined);
    if (!st || st.size > 0 || st.mtimeMs > cutoff) continue;
    await rm(p, { force: true });
    log.warn({ file: p }, 'zero-byte backup manifest removed');
    n++;
  }
  return n;
}

export async function sweepTemporaries(opts: { exportDir: string; backupDir: string | undefined; minAgeMs: number; db?: Database; log: Logger }): Promise<SweepResult> {
  const exports = await sweepDir(opts.exportDir, EXPORT_TMP, opts.minAgeMs, opts.log);
  const backups = opts.backupDir ? await sweepDir(path.join(opts.backupDir, '.tmp'), BACKUP_TMP, opts.minAgeMs, opts.log) : 0;
  const manifests = opts.backupDir ? await sweepEmptyManifests(opts.backupDir, opts.minAgeMs, opts.log) : 0;
  const keys = opts.db ? ((await opts.db.adminQuery('DELETE FROM strata.idempotency_keys WHERE expires_at < now()')).rowCount ?? 0) : 0;
  return { exports, backups, manifests, idempotency_keys: keys };
}
