/**
 * Executes migration steps on the lock-holding client: each step in its own transaction
 * (BEGIN; SQL; bookkeeping; COMMIT), statement by statement without a transaction when the
 * migration is `transactional: false`, or all inside one rolled-back transaction for a dry run.
 */
import type pg from 'pg';
import { recordDown, recordUp } from './bookkeeping.js';
import type { Migration } from './loader.js';
import { splitSql } from './split-sql.js';
import { MigrationError, type MigrationLogger, type PlanStep } from './types.js';

export interface Step extends PlanStep {
  migration: Migration;
}

export const toPlanStep = (s: Step): PlanStep => ({ id: s.id, direction: s.direction, sql: s.sql });

export function makeStep(m: Migration, direction: 'up' | 'down'): Step {
  return { id: m.id, direction, sql: direction === 'up' ? m.upSql : m.downSql, migration: m };
}

const fileOf = (s: Step): string => (s.direction === 'up' ? s.migration.upFile : s.migration.downFile);

/** "file:line" from the error position (offset into `script`, which starts at `firstLine`). */
function locate(file: string, err: unknown, script: string | null, firstLine = 1): string {
  const pos = Number((err as { position?: string }).position);
  if (script === null || !Number.isFinite(pos) || pos < 1) return file;
  return `${file}:${firstLine + script.slice(0, pos - 1).split('\n').length - 1}`;
}

function failure(step: Step, where: string, err: unknown, note: string): MigrationError {
  const e = err as { message?: string; code?: string };
  const state = typeof e.code === 'string' ? ` (SQLSTATE ${e.code})` : '';
  return new MigrationError(
    'MIGRATION_FAILED',
    `${where}: migration ${step.id} ${step.direction} failed: ${e.message ?? String(err)}${state}; ${note}`,
    fileOf(step),
    { cause: err },
  );
}

/** Runs the body of a step (no transaction control, no bookkeeping). */
async function runBody(client: pg.ClientBase, step: Step, splitStatements: boolean, inTransaction = false): Promise<void> {
  const m = step.migration;
  if (m.kind === 'module' && m.loadModule) {
    const mod = await m.loadModule();
    try {
      await (step.direction === 'up' ? mod.up(client) : mod.down(client));
    } catch (err) {
      throw failure(
        step,
        fileOf(step),
        err,
        m.transactional ? 'rolled back' : 'not transactional: check what ran',
      );
    }
    return;
  }
  if (!splitStatements) {
    try {
      await client.query(step.sql);
    } catch (err) {
      throw failure(step, locate(fileOf(step), err, step.sql), err, 'rolled back');
    }
    return;
  }
  const statements = splitSql(step.sql);
  for (const [i, st] of statements.entries()) {
    try {
      await client.query(st.sql);
    } catch (err) {
      const done = inTransaction
        ? 'rolled back'
        : i === 0
          ? 'nothing ran'
          : `statements 1-${i} of ${statements.length} already ran (not transactional)`;
      throw failure(step, locate(fileOf(step), err, st.sql, st.line), err, done);
    }
  }
}

/**
 * On a Citus coordinator a transactional migration is still one transaction, but sent statement by
 * statement: Citus forwards DDL on distributed tables to the workers with the client's query string,
 * and a multi-statement string fails there ("cannot insert multiple commands into a prepared
 * statement").
 */
async function onCitus(client: pg.ClientBase): Promise<boolean> {
  const { rows } = await client.query<{ on: boolean }>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') AS on");
  return rows[0]?.on === true;
}

/** Applies one step for real; returns its duration in ms. */
export async function applyStep(client: pg.ClientBase, step: Step): Promise<number> {
  const t0 = performance.now();
  const book = async () => {
    if (step.direction === 'up')
      await recordUp(client, step.id, step.migration.checksum, performance.now() - t0);
    else await recordDown(client, step.id);
  };
  if (!step.migration.transactional) {
    await runBody(client, step, true);
    await book();
    return performance.now() - t0;
  }
  await client.query('BEGIN');
  try {
    const citus = await onCitus(client);
    // DDL on distributed tables and extension commands in one transaction: Citus needs one
    // connection per worker for all of it (sequential mode), or it refuses the extension command
    if (citus) await client.query("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'");
    await runBody(client, step, citus, true);
    await book();
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    if (err instanceof MigrationError) throw err;
    throw failure(step, fileOf(step), err, 'rolled back');
  }
  return performance.now() - t0;
}

/**
 * Dry run, inside a transaction the caller opened and will roll back: executes every
 * transactional step in order, proving they run while changing nothing. A non-transactional step
 * cannot run inside it, so it and every later step are only listed (their preconditions would be
 * missing).
 */
export async function dryRunSteps(
  client: pg.ClientBase,
  steps: Step[],
  log?: MigrationLogger,
): Promise<void> {
  let executing = true;
  for (const step of steps) {
    if (executing && !step.migration.transactional) {
      executing = false;
      log?.warn(
        { migration: step.id, direction: step.direction, dryRun: true },
        `dry run: ${step.id} is not transactional; it and later steps are listed, not executed`,
      );
    }
    if (!executing) continue;
    const t0 = performance.now();
    await runBody(client, step, false);
    if (step.direction === 'up') await recordUp(client, step.id, step.migration.checksum, 0);
    else await recordDown(client, step.id);
    const durationMs = Math.round(performance.now() - t0);
    log?.info(
      { migration: step.id, direction: step.direction, durationMs, dryRun: true },
      `dry run: ${step.id} ${step.direction} ok in ${durationMs} ms (rolled back)`,
    );
  }
}
