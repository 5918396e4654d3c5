/**
 * The dependency graph: resolves implicit dependencies (a migration without `depends_on` depends
 * on the previous id), orders migrations topologically (ties by id) and finds structural problems:
 * unknown dependencies, cycles and more than one head.
 */
import type { Migration } from './loader.js';
import type { MigrationProblem } from './types.js';

export interface Graph {
  /** Migrations in apply order (every dependency before its dependents; ties by id). */
  ordered: Migration[];
  byId: Map<string, Migration>;
  problems: MigrationProblem[];
}

/** The file to name for a migration's dependency declaration. */
const depFile = (m: Migration): string => m.metaFile ?? m.path;

/** Builds the graph; `migrations` must be sorted by id (as loadMigrations returns them). */
export function buildGraph(migrations: Migration[]): Graph {
  const byId = new Map(migrations.map((m) => [m.id, m]));
  const problems: MigrationProblem[] = [];

  migrations.forEach((m, i) => {
    const prev = migrations[i - 1];
    m.dependsOn = m.declaredDeps ?? (prev ? [prev.id] : []);
    for (const dep of m.dependsOn) {
      if (!byId.has(dep)) {
        problems.push({
          id: m.id,
          file: depFile(m),
          code: 'MISSING_DEPENDENCY',
          message: `${depFile(m)}: migration ${m.id} depends on unknown migration "${dep}"`,
        });
      }
    }
  });

  // Kahn's algorithm; among ready nodes the smallest id goes first, so the order is stable.
  const pending = new Map(migrations.map((m) => [m.id, m.dependsOn.filter((d) => byId.has(d)).length]));
  const dependents = new Map<string, string[]>(migrations.map((m) => [m.id, []]));
  for (const m of migrations) for (const d of m.dependsOn) dependents.get(d)?.push(m.id);
  const ready = migrations.filter((m) => pending.get(m.id) === 0).map((m) => m.id);
  const ordered: Migration[] = [];
  while (ready.length > 0) {
    ready.sort();
    const id = ready.shift() as string;
    ordered.push(byId.get(id) as Migration);
    for (const next of dependents.get(id) ?? []) {
      const left = (pending.get(next) ?? 0) - 1;
      pending.set(next, left);
      if (left === 0) ready.push(next);
    }
  }
  if (ordered.length < migrations.length) {
    const stuck = migrations.filter((m) => !ordered.includes(m));
    const names = stuck.map((m) => m.id).join(', ');
    for (const m of stuck) {
      problems.push({
        id: m.id,
        file: depFile(m),
        code: 'CYCLE',
        message: `${depFile(m)}: migration ${m.id} is part of a dependency cycle (${names})`,
      });
    }
    // Still return a total order so status() can list everything.
    ordered.push(...stuck);
  }

  const dependedOn = new Set(migrations.flatMap((m) => m.dependsOn));
  const heads = migrations.filter((m) => !dependedOn.has(m.id));
  if (heads.length > 1) {
    const list = heads.map((h) => `${h.id} (${depFile(h)})`).join(', ');
    for (const h of heads) {
      problems.push({
        id: h.id,
        file: depFile(h),
        code: 'MULTIPLE_HEADS',
        message: `${depFile(h)}: ${heads.length} heads, nothing depends on ${list}; add a depends_on to merge them`,
      });
    }
  }
  return { ordered, byId, problems };
}
