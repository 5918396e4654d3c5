/**
 * The PostgreSQL extensions query insight leans on (pg_stat_statements, hypopg): created on first
 * use through the admin connection (`CREATE EXTENSION IF NOT EXISTS`), so a database cloned from a
 * template without them still gets them. When the server lacks one (not installed, not preloaded,
 * or the admin role may not create it), the reason is returned, never guessed around.
 */
import type { StrataPool } from '../../db/pool.js';

export type ExtensionName = 'pg_stat_statements' | 'hypopg';

export type ExtensionState = { available: true } | { available: false; reason: string };

interface ErrorLike {
  message?: string;
}

/** Checks (and creates when missing) `name`; the answer is cached per process once positive. */
export function createExtensionProbe(admin: StrataPool) {
  const ready = new Set<ExtensionName>();
  return async function ensure(name: ExtensionName): Promise<ExtensionState> {
    if (ready.has(name)) return { available: true };
    return admin.with(async (c) => {
      const { rows } = await c.query<{ installed: boolean; packaged: boolean; preloaded: boolean }>(
        `SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = $1) AS installed,
                EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = $1) AS packaged,
                $1 = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ',')) AS preloaded`,
        [name],
      );
      const r = rows[0];
      if (!r?.packaged)
        return {
          available: false,
          reason: `the ${name} extension is not installed on the PostgreSQL server`,
        };
      if (name === 'pg_stat_statements' && !r.preloaded) {
        return { available: false, reason: 'pg_stat_statements is not in shared_preload_libraries' };
      }
      if (!r.installed) {
        try {
          await c.query(`CREATE EXTENSION IF NOT EXISTS ${name}`);
        } catch (err) {
          // another process created it at the same moment
          const code = (err as { code?: string }).code;
          if (code !== '23505' && code !== '42710')
            return {
              available: false,
              reason: `CREATE EXTENSION ${name} failed: ${(err as ErrorLike).message ?? String(err)}`,
            };
        }
      }
      ready.add(name);
      return { available: true };
    });
  };
}

export type ExtensionProbe = ReturnType<typeof createExtensionProbe>;
