/**
 * Which optional PostgreSQL extensions a server offers, and why not when it does not: a test suite
 * decides from this which behaviour to test (the full path, or the documented 501 answer), and says
 * what it skipped. Read-only: nothing is created.
 */
import pg from 'pg';

export const OPTIONAL_EXTENSIONS = ['pg_stat_statements', 'hypopg', 'vector', 'citus', 'pg_partman'] as const;
export type OptionalExtension = (typeof OPTIONAL_EXTENSIONS)[number];

export type ExtensionPresence = { available: true } | { available: false; reason: string };
export type ExtensionReport = Record<OptionalExtension, ExtensionPresence>;

/** Extensions that only work when loaded at server start. */
const PRELOADED: ReadonlySet<string> = new Set(['pg_stat_statements', 'citus']);

/** Probes `serverUrl` for each optional extension: packaged, and preloaded where that is needed. */
export async function probeExtensions(serverUrl: string): Promise<ExtensionReport> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    const { rows } = await client.query<{ name: string; packaged: boolean; preloaded: boolean }>(
      `SELECT e.name,
              EXISTS (SELECT 1 FROM pg_available_extensions a WHERE a.name = e.name) AS packaged,
              e.name = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ',')) AS preloaded
         FROM unnest($1::text[]) AS e(name)`,
      [OPTIONAL_EXTENSIONS],
    );
    const report = {} as ExtensionReport;
    for (const r of rows) {
      const name = r.name as OptionalExtension;
      if (!r.packaged) report[name] = { available: false, reason: `${name} is not installed on the server` };
      else if (PRELOADED.has(name) && !r.preloaded)
        report[name] = { available: false, reason: `${name} is not in shared_preload_libraries` };
      else report[name] = { available: true };
    }
    return report;
  } finally {
    await client.end();
  }
}

/** One line per extension, for a test run's header: `hypopg: absent (not installed) -> ...`. */
export function describeExtensions(report: ExtensionReport, consequences: Partial<Record<OptionalExtension, string>> = {}): string[] {
  return OPTIONAL_EXTENSIONS.map((name) => {
    const p = report[name];
    if (p.available) return `${name}: present`;
    const then = consequences[name];
    return `${name}: absent (${p.reason})${then ? `; ${then}` : ''}`;
  });
}
