/**
 * The migration runner (SPEC section 7): SQL or module migrations with up and down, an optional
 * depends_on, a checksum stored when applied, one runner at a time, each migration in its own
 * transaction unless marked non-transactional, and dry runs that execute and roll back.
 *
 *   const migrator = createMigrator({ pool, dir: defaultMigrationsDir(), log });
 *   await migrator.up();
 */
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { ensureBookkeeping, readApplied } from './bookkeeping.js';
import { applyStep, dryRunSteps, makeStep, toPlanStep, type Step } from './execute.js';
import { buildGraph } from './graph.js';
import { loadMigrations, type Migration } from './loader.js';
import { withMigrationLock } from './lock.js';
import {
  MigrationError,
  type MigrationStatus,
  type Migrator,
  type MigratorOptions,
  type PlanStep,
} from './types.js';
import { compare, refuseOnProblems, type State } from './validate.js';

export * from './types.js';
export { MIGRATION_LOCK_KEY } from './lock.js';

/** The repository's `migrations/` folder (same depth from src/ and dist/). */
export const defaultMigrationsDir = (): string =>
  fileURLToPath(new URL('../../../migrations', import.meta.url));

const ZERO = new Set(['0', 'zero']);

/** Creates a migrator for the migrations under `dir`, on the database of `pool`. */
export function createMigrator(opts: MigratorOptions): Migrator {
  const { pool, dir, log } = opts;
  const lockTimeoutMs = opts.lockTimeoutMs ?? 10_000;

  async function load(client: pg.ClientBase): Promise<State> {
    const graph = buildGraph(await loadMigrations(dir));
    return compare(dir, graph, await readApplied(client));
  }

  /** State for the read-only operations (no runner lock: they never block on a running migration). */
  async function readState(): Promise<State> {
    const client = await pool.connect();
    try {
      await ensureBookkeeping(client);
      return await load(client);
    } finally {
      client.release();
    }
  }

  function target(state: State, to: string): Migration {
    const m = state.graph.byId.get(to);
    if (!m) throw new MigrationError('UNKNOWN_TARGET', `${dir}: no migration "${to}"`, dir);
    return m;
  }

  function planUp(state: State, to?: string): Step[] {
    const limit = to === undefined ? Infinity : state.graph.ordered.indexOf(target(state, to));
    return state.graph.ordered
      .filter((m, i) => i <= limit && !state.applied.has(m.id))
      .map((m) => makeStep(m, 'up'));
  }

  /** Applied migrations, most recent first (ties: reverse apply order), so dependents go first. */
  function planDown(state: State, opts: { to?: string; steps?: number }): Step[] {
    const rank = new Map(state.graph.ordered.map((m, i) => [m.id, i]));
    const applied = state.graph.ordered
      .filter((m) => state.applied.has(m.id))
      .sort((a, b) => {
        const ta = state.applied.get(a.id)?.appliedAt.getTime() ?? 0;
        const tb = state.applied.get(b.id)?.appliedAt.getTime() ?? 0;
        return tb - ta || (rank.get(b.id) ?? 0) - (rank.get(a.id) ?? 0);
      });
    let count: number;
    if (opts.to !== undefined && ZERO.has(opts.to)) count = applied.length;
    else if (opts.to !== undefined) {
      const m = target(state, opts.to);
      count = applied.indexOf(m);
      if (count < 0)
        throw new MigrationError('UNKNOWN_TARGET', `${m.path}: migration ${m.id} is not applied`, m.path);
    } else count = Math.max(0, Math.floor(opts.steps ?? 1));
    return applied.slice(0, count).map((m) => makeStep(m, 'down'));
  }

  /** Takes the runner lock, validates, computes the steps and applies them (or dry-runs them). */
  function run(compute: (state: State) => Step[], dry = false): Promise<PlanStep[]> {
    return withMigrationLock(pool, lockTimeoutMs, dir, async (client) => {
      if (dry) {
        await client.query('BEGIN');
        try {
          await ensureBookkeeping(client, true);
          const state = await load(client);
          refuseOnProblems(state.problems);
          const steps = compute(state);
          await dryRunSteps(client, steps, log);
          return steps.map(toPlanStep);
        } finally {
          await client.query('ROLLBACK');
        }
      }
      await ensureBookkeeping(client);
      const state = await load(client);
      refuseOnProblems(state.problems);
      const steps = compute(state);
      for (const step of steps) {
        const durationMs = Math.round(await applyStep(client, step));
        log?.info(
          { migration: step.id, direction: step.direction, durationMs },
          `migration ${step.id} ${step.direction === 'up' ? 'applied' : 'rolled back'} in ${durationMs} ms`,
        );
      }
      return steps.map(toPlanStep);
    });
  }

  return {
    async status(): Promise<MigrationStatus[]> {
      return (await readState()).status;
    },

    async plan(opts = {}) {
      const state = await readState();
      refuseOnProblems(state.problems);
      const steps = opts.direction === 'down' ? planDown(state, { to: opts.to }) : planUp(state, opts.to);
      return steps.map(toPlanStep);
    },

    up(opts = {}) {
      return run((state) => planUp(state, opts.to), opts.dryRun);
    },

    down(opts = {}) {
      return run((state) => planDown(state, opts), opts.dryRun);
    },

    redo() {
      return run((state) => {
        const last = planDown(state, { steps: 1 })[0];
        return last ? [last, makeStep(last.migration, 'up')] : [];
      });
    },

    async verify() {
      const { problems } = await readState();
      return { ok: problems.length === 0, problems };
    },

    async isCurrent() {
      const state = await readState();
      return state.problems.length === 0 && state.status.every((s) => s.applied);
    },
  };
}
