/**
 * Reads a migrations folder: one sub-folder per migration, named by its id, holding either
 * `up.sql` + `down.sql` or a `migration.ts|js` module, plus an optional `meta.json`
 * `{ "depends_on": [...], "transactional": true|false }`.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type pg from 'pg';
import { moduleChecksum, sqlChecksum } from './checksum.js';
import { MigrationError } from './types.js';

export interface MigrationModule {
  up(client: pg.ClientBase): Promise<unknown>;
  down(client: pg.ClientBase): Promise<unknown>;
}

export interface Migration {
  id: string;
  /** The migration's folder. */
  path: string;
  kind: 'sql' | 'module';
  /** The file named in messages for each direction (up.sql / down.sql, or the module). */
  upFile: string;
  downFile: string;
  /** SQL text per direction; for a module, a comment naming the module function. */
  upSql: string;
  downSql: string;
  checksum: string;
  /** Explicit `depends_on`, or null when absent (then: the previous id). */
  declaredDeps: string[] | null;
  /** Resolved by the graph: declared deps, or the previous id. */
  dependsOn: string[];
  transactional: boolean;
  metaFile: string | null;
  loadModule?: () => Promise<MigrationModule>;
}

const MODULE_NAMES = ['migration.ts', 'migration.js', 'migration.mjs'];

async function readIfExists(file: string): Promise<string | null> {
  try {
    return await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

function parseMeta(text: string, file: string): { dependsOn: string[] | null; transactional: boolean } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw new MigrationError('INVALID_MIGRATION', `${file}: not valid JSON`, file, { cause });
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new MigrationError('INVALID_MIGRATION', `${file}: expected a JSON object`, file);
  }
  const meta = raw as Record<string, unknown>;
  const deps = meta['depends_on'];
  if (deps !== undefined && !(Array.isArray(deps) && deps.every((d) => typeof d === 'string'))) {
    throw new MigrationError('INVALID_MIGRATION', `${file}: "depends_on" must be an array of ids`, file);
  }
  const tx = meta['transactional'];
  if (tx !== undefined && typeof tx !== 'boolean') {
    throw new MigrationError('INVALID_MIGRATION', `${file}: "transactional" must be true or false`, file);
  }
  return { dependsOn: deps === undefined ? null : [...deps], transactional: tx ?? true };
}

async function loadOne(dir: string, id: string): Promise<Migration> {
  const path = join(dir, id);
  const metaFile = join(path, 'meta.json');
  const metaText = await readIfExists(metaFile);
  const meta = metaText === null ? { dependsOn: null, transactional: true } : parseMeta(metaText, metaFile);
  const base = {
    id,
    path,
    declaredDeps: meta.dependsOn,
    dependsOn: [],
    transactional: meta.transactional,
    metaFile: metaText === null ? null : metaFile,
  };

  const upFile = join(path, 'up.sql');
  const downFile = join(path, 'down.sql');
  const [up, down] = await Promise.all([readIfExists(upFile), readIfExists(downFile)]);
  let moduleFile: string | null = null;
  let moduleSource: string | null = null;
  for (const name of MODULE_NAMES) {
    moduleSource = await readIfExists(join(path, name));
    if (moduleSource !== null) {
      moduleFile = join(path, name);
      break;
    }
  }

  if (moduleFile !== null && moduleSource !== null) {
    if (up !== null || down !== null) {
      throw new MigrationError(
        'INVALID_MIGRATION',
        `${path}: has both ${moduleFile} and SQL files; keep one`,
        path,
      );
    }
    const file = moduleFile;
    return {
      ...base,
      kind: 'module',
      upFile: file,
      downFile: file,
      upSql: `-- module ${file}: up(client)`,
      downSql: `-- module ${file}: down(client)`,
      checksum: moduleChecksum(moduleSource),
      loadModule: async () => {
        const mod = (await import(pathToFileURL(file).href)) as Partial<MigrationModule>;
        if (typeof mod.up !== 'function' || typeof mod.down !== 'function') {
          throw new MigrationError(
            'INVALID_MIGRATION',
            `${file}: must export up(client) and down(client)`,
            file,
          );
        }
        return mod as MigrationModule;
      },
    };
  }
  if (up === null)
    throw new MigrationError(
      'INVALID_MIGRATION',
      `${upFile}: missing (every migration needs up.sql and down.sql)`,
      upFile,
    );
  if (down === null)
    throw new MigrationError(
      'INVALID_MIGRATION',
      `${downFile}: missing (every migration needs a down)`,
      downFile,
    );
  return {
    ...base,
    kind: 'sql',
    upFile,
    downFile,
    upSql: up,
    downSql: down,
    checksum: sqlChecksum(up, down),
  };
}

/** Loads every migration under `dir`, sorted by id. Hidden entries and plain files are ignored. */
export async function loadMigrations(dir: string): Promise<Migration[]> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (cause) {
    throw new MigrationError('INVALID_MIGRATION', `${dir}: cannot read the migrations folder`, dir, {
      cause,
    });
  }
  const ids: string[] = [];
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const isDir = e.isDirectory() || (e.isSymbolicLink() && (await stat(join(dir, e.name))).isDirectory());
    if (isDir) ids.push(e.name);
  }
  ids.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return Promise.all(ids.map((id) => loadOne(dir, id)));
}
