/**
 * Compares the migrations on disk with the bookkeeping rows: status per migration, and the
 * problems that make the runner refuse to run (checksum drift, applied-but-missing files, plus the
 * graph's structural problems).
 */
import { join } from 'node:path';
import type { AppliedRow } from './bookkeeping.js';
import { shortSum } from './checksum.js';
import type { Graph } from './graph.js';
import { MigrationError, type MigrationProblem, type MigrationStatus } from './types.js';

export interface State {
  graph: Graph;
  applied: Map<string, AppliedRow>;
  status: MigrationStatus[];
  problems: MigrationProblem[];
}

/** Builds status rows (apply order, then applied ids with no folder) and every problem. */
export function compare(dir: string, graph: Graph, appliedRows: AppliedRow[]): State {
  const applied = new Map(appliedRows.map((r) => [r.id, r]));
  const problems = [...graph.problems];
  const status: MigrationStatus[] = graph.ordered.map((m) => {
    const row = applied.get(m.id);
    const drift = row !== undefined && row.checksum !== m.checksum;
    if (drift) {
      const files = m.kind === 'sql' ? `${m.upFile}, ${m.downFile}` : m.upFile;
      problems.push({
        id: m.id,
        file: m.upFile,
        code: 'CHECKSUM_DRIFT',
        message:
          `${files}: migration ${m.id} was edited after it was applied ` +
          `(applied checksum ${shortSum(row.checksum)}, files now ${shortSum(m.checksum)}); ` +
          'restore the files and add a new migration instead',
      });
    }
    return {
      id: m.id,
      applied: row !== undefined,
      appliedAt: row?.appliedAt ?? null,
      checksum: m.checksum,
      drift,
      dependsOn: [...m.dependsOn],
    };
  });
  for (const row of appliedRows) {
    if (graph.byId.has(row.id)) continue;
    const path = join(dir, row.id);
    problems.push({
      id: row.id,
      file: path,
      code: 'MISSING_FILE',
      message: `${path}: migration ${row.id} is applied (at ${row.appliedAt.toISOString()}) but its folder is missing`,
    });
    status.push({
      id: row.id,
      applied: true,
      appliedAt: row.appliedAt,
      checksum: '',
      drift: false,
      dependsOn: [],
    });
  }
  return { graph, applied, status, problems };
}

/** Throws a MigrationError carrying every problem; its code and file are the first problem's. */
export function refuseOnProblems(problems: MigrationProblem[]): void {
  const first = problems[0];
  if (!first) return;
  const message =
    problems.length === 1
      ? first.message
      : `${problems.length} problems: ${problems.map((p) => p.message).join('; ')}`;
  throw new MigrationError(first.code, `refusing to migrate: ${message}`, first.file, { problems });
}
