/**
 * Backup manifests: the catalog of backups lives in the backup store, one `<id>/manifest.json` per
 * backup, not in the database (an in-place restore replaces the database; the catalog must survive it,
 * and a store copied elsewhere is self-describing).
 *
 * A manifest is written `running` when a job starts and rewritten (atomically) at the end as
 * `completed` or `failed`; a `running` manifest not refreshed for STALE_AFTER_MS belongs to a job
 * that died, and is shown as `failed`. Nothing is ever `completed` before its file is in place.
 */
import { randomBytes } from 'node:crypto';

export type BackupKind = 'full' | 'incremental';
export type BackupStatus = 'running' | 'completed' | 'failed';

export interface Verification {
  job_id: string | null;
  started_at: string;
  finished_at: string;
  ok: boolean;
  checksum_ok: boolean | null;
  restore_ok: boolean | null;
  row_counts_ok: boolean | null;
  /** Tables whose count differs: expected (manifest) vs actual (restored). */
  mismatches: Array<{ table: string; expected: number | null; actual: number | null }>;
  /** Why it failed, in one line. */
  reason: string | null;
  scratch_database: string | null;
  duration_ms: number;
}

export interface BackupManifest {
  id: string;
  kind: BackupKind;
  status: BackupStatus;
  /** The database backed up. */
  database: string;
  server_version: string | null;
  server_version_num: number | null;
  started_at: string;
  finished_at: string | null;
  /** Refreshed while the job runs; a stale `running` manifest is reported as failed. */
  updated_at: string;
  /** When the snapshot was taken: the instant the backup's data is consistent at. */
  snapshot_at: string | null;
  /** Object name of the data file inside the backup's folder. */
  file: string | null;
  format: 'pg_dump-custom' | 'ndjson-gzip';
  sha256: string | null;
  size: number | null;
  /** Schemas dumped (null: the whole database). */
  schemas: string[] | null;
  /** `pg_current_snapshot()` of the backup's transaction: what it contains of the change log. */
  change_snapshot: string | null;
  /** Highest change id visible in that snapshot (null: no change log, or empty). */
  change_position: string | null;
  /** Rows per table (`schema.table`) in the snapshot (full backups). */
  row_counts: Record<string, number>;
  /** Incremental: the backup it continues (its change_snapshot is the range's start). */
  base_backup_id: string | null;
  base_change_snapshot: string | null;
  /** Incremental: change events in the file. */
  change_count: number | null;
  /** Taken automatically before an in-place restore. */
  safety: boolean;
  /** Why it was taken: `api`, `schedule`, `cli`, `pre-restore`. */
  trigger: string;
  job_id: string | null;
  error: string | null;
  tool: string | null;
  verifications: Verification[];
}

/** A running manifest older than this has lost its job. */
export const STALE_AFTER_MS = 120_000;

export const BACKUP_ID = /^(full|incr)-\d{8}t\d{6}z-[0-9a-f]{6}$/;

/** `full-20261127t023500z-1a2b3c`: sortable by time, kind visible. */
export function newBackupId(kind: BackupKind, at = new Date()): string {
  const ts = at.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'z').toLowerCase();
  return `${kind === 'full' ? 'full' : 'incr'}-${ts}-${randomBytes(3).toString('hex')}`;
}

/** The manifest as shown: a stale running one is reported failed. */
export function effective(m: BackupManifest, now = Date.now()): BackupManifest {
  if (m.status === 'running' && now - Date.parse(m.updated_at) > STALE_AFTER_MS) {
    return { ...m, status: 'failed', error: m.error ?? `interrupted: no progress since ${m.updated_at} (its job stopped)` };
  }
  return m;
}

/** Whether the latest verification of a backup passed. */
export const isVerified = (m: BackupManifest) => m.verifications.length > 0 && m.verifications[m.verifications.length - 1]?.ok === true;
