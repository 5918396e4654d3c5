/**
 * Public types of the migration runner (SPEC section 7) and its one error class.
 *
 * Glossary
 * - migration: a folder `<dir>/<id>/` with `up.sql` + `down.sql` (or a `migration.ts|js` module
 *   exporting `up(client)` / `down(client)`), and an optional `meta.json`.
 * - head: a migration nothing depends on; a well-formed set has exactly one.
 * - drift: an applied migration whose files no longer hash to the checksum stored when applied.
 */
import type pg from 'pg';

export interface MigrationStatus {
  id: string;
  applied: boolean;
  appliedAt: Date | null;
  /** Checksum of the files on disk ('' when the files are missing). */
  checksum: string;
  drift: boolean;
  dependsOn: string[];
}

export interface PlanStep {
  id: string;
  direction: 'up' | 'down';
  /** The SQL that would run (for a module migration, a comment naming the module and function). */
  sql: string;
}

export type MigrationProblemCode =
  'CHECKSUM_DRIFT' | 'MISSING_DEPENDENCY' | 'MULTIPLE_HEADS' | 'MISSING_FILE' | 'CYCLE';

export interface MigrationProblem {
  id: string;
  file: string;
  code: MigrationProblemCode;
  message: string;
}

export interface MigrationLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export interface MigratorOptions {
  pool: pg.Pool;
  /** Folder holding one sub-folder per migration. */
  dir: string;
  /** How long to keep retrying the runner lock before LOCK_TIMEOUT (default 10000). */
  lockTimeoutMs?: number;
  log?: MigrationLogger;
}

export interface Migrator {
  status(): Promise<MigrationStatus[]>;
  plan(opts?: { to?: string; direction?: 'up' | 'down' }): Promise<PlanStep[]>;
  /** Applies pending migrations (up to and including `to`); returns what it applied (or would). */
  up(opts?: { to?: string; dryRun?: boolean }): Promise<PlanStep[]>;
  /** Default one step; `to` rolls back until `to` is the last applied ('0' or 'zero' = everything). */
  down(opts?: { to?: string; steps?: number; dryRun?: boolean }): Promise<PlanStep[]>;
  /** Down one step then up that same migration. */
  redo(): Promise<PlanStep[]>;
  verify(): Promise<{ ok: boolean; problems: MigrationProblem[] }>;
  /** All migrations applied and no problem (drift, missing file...): used by /readyz. */
  isCurrent(): Promise<boolean>;
}

export type MigrationErrorCode =
  MigrationProblemCode | 'LOCK_TIMEOUT' | 'MIGRATION_FAILED' | 'INVALID_MIGRATION' | 'UNKNOWN_TARGET';

/** Every refusal or failure of the runner; `message` names the file involved. */
export class MigrationError extends Error {
  override readonly name = 'MigrationError';
  constructor(
    readonly code: MigrationErrorCode,
    message: string,
    readonly file?: string,
    options?: { cause?: unknown; problems?: MigrationProblem[] },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.problems = options?.problems ?? [];
  }
  /** All problems found when the refusal came from validation (the first one is `code`). */
  readonly problems: MigrationProblem[];
}
