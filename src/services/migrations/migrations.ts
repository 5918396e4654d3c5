/**
 * Migrations as an admin service (platform_admin): the runner's refusals become 4xx answers with
 * the runner's code, and the schema registry is refreshed after every change.
 */
import { AppError } from '../../errors.js';
import { MigrationError, type Migrator, type PlanStep } from '../../db/migrations/index.js';
import type { SchemaRegistry } from '../data/index.js';

const STATUS: Record<string, number> = {
  UNKNOWN_TARGET: 400,
  LOCK_TIMEOUT: 409,
  CHECKSUM_DRIFT: 409,
  MISSING_DEPENDENCY: 409,
  MULTIPLE_HEADS: 409,
  MISSING_FILE: 409,
  CYCLE: 409,
  INVALID_MIGRATION: 409,
  MIGRATION_FAILED: 422,
};

function translate(err: unknown): Error {
  if (err instanceof MigrationError) {
    return new AppError(STATUS[err.code] ?? 409, err.code, err.message, { file: err.file, problems: err.problems });
  }
  return err instanceof Error ? err : new Error(String(err));
}

const view = (s: PlanStep) => ({ id: s.id, direction: s.direction, sql: s.sql });

export function createMigrationService(deps: { migrator: Migrator | undefined; schema: SchemaRegistry }) {
  const migrator = (): Migrator => {
    if (!deps.migrator) throw new AppError(503, 'MIGRATIONS_UNAVAILABLE', 'this process has no migration runner');
    return deps.migrator;
  };
  const run = async (fn: (m: Migrator) => Promise<PlanStep[]>, dryRun: boolean) => {
    try {
      const steps = await fn(migrator());
      if (!dryRun && steps.length) await deps.schema.refresh();
      return { steps: steps.map(view), dry_run: dryRun };
    } catch (err) {
      throw translate(err);
    }
  };
  return {
    async status() {
      const rows = await migrator()
        .status()
        .catch((e: unknown) => {
          throw translate(e);
        });
      return rows.map((r) => ({
        id: r.id,
        applied: r.applied,
        applied_at: r.appliedAt ? r.appliedAt.toISOString() : null,
        checksum: r.checksum,
        drift: r.drift,
        depends_on: r.dependsOn,
      }));
    },
    async plan(opts: { to?: string; direction?: 'up' | 'down' }) {
      try {
        return (await migrator().plan(opts)).map(view);
      } catch (err) {
        throw translate(err);
      }
    },
    up: (opts: { to?: string; dryRun?: boolean }) => run((m) => m.up(opts), opts.dryRun ?? false),
    down: (opts: { to?: string; steps?: number; dryRun?: boolean }) => run((m) => m.down(opts), opts.dryRun ?? false),
    redo: () => run((m) => m.redo(), false),
    async verify() {
      return migrator().verify();
    },
  };
}
export type MigrationService = ReturnType<typeof createMigrationService>;
