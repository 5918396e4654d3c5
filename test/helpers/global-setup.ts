/**
 * Vitest global setup: build the migrated template database once for the whole run, and find out
 * which optional PostgreSQL extensions the server has (tests of extension-backed features test the
 * full path where present, the documented refusal where absent; the run says which, and why).
 */
import type { TestProject } from 'vitest/node';
import { describeExtensions, probeExtensions, type ExtensionReport } from '../../src/testing/extensions.js';
import { drainTestDatabasePool, fillTestDatabasePool, sweepTestDatabases } from '../../src/testing/index.js';
import { CLONE_PREFIX, KIT_OPTIONS, SERVER_URL, ensureSuiteTemplate } from './databases.js';

declare module 'vitest' {
  export interface ProvidedContext {
    extensions: ExtensionReport;
  }
}

/** What the suite does instead when an extension is absent (printed before and after the run). */
const CONSEQUENCES = {
  pg_stat_statements: 'GET /v1/admin/queries/top is tested for its 501 PG_STAT_STATEMENTS_UNAVAILABLE answer instead of its listing',
  hypopg: 'GET /v1/admin/index-advice is tested for its 501 HYPOPG_UNAVAILABLE answer instead of its advice',
  vector: 'no test depends on it (vector search runs exact scans without it)',
  citus: 'no test depends on it',
  pg_partman: 'POST /v1/admin/partitions is tested for its 501 PARTITIONING_UNAVAILABLE answer instead of time partitioning',
} as const;

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const extensions = await probeExtensions(SERVER_URL);
  project.provide('extensions', extensions);
  const summary = describeExtensions(extensions, CONSEQUENCES);
  const absent = summary.filter((l) => l.includes(': absent'));
  const print = (when: string) =>
    process.stdout.write(
      `\n[strata tests] optional PostgreSQL extensions (${when}): ${absent.length ? `${absent.length} absent (tests of what needs them run the fallback path instead)` : 'all present, every path runs'}\n` +
        summary.map((l) => `  - ${l}\n`).join(''),
    );
  print('before the run');
  await buildTemplate();
  return async () => {
    // the pool's ready clones go with the run: nothing is left on the server but the template
    const drained = await drainTestDatabasePool({ serverUrl: SERVER_URL, prefix: CLONE_PREFIX });
    if (drained.length) process.stdout.write(`[strata tests] dropped ${drained.length} unused pooled test databases\n`);
    print('the run above');
  };
}

async function buildTemplate(): Promise<void> {
  await ensureSuiteTemplate();
  const swept = await sweepTestDatabases({ serverUrl: SERVER_URL, prefix: CLONE_PREFIX });
  if (swept.length) process.stdout.write(`[strata tests] dropped ${swept.length} test databases left by crashed runs\n`);
  // ready clones before the first test file asks (each file takes one by a rename; the pool refills)
  await fillTestDatabasePool({ ...KIT_OPTIONS, prefix: CLONE_PREFIX });
}
