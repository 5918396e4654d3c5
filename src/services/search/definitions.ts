/**
 * The registry of searchable tables (strata.search_indexes): which columns are indexed with which
 * weight, in which text search configuration, the optional vector column, and the build status.
 * Read through the admin connection (platform table); cached briefly for the search path.
 */
import type { Database } from '../../db/database.js';

export const WEIGHTS = ['A', 'B', 'C', 'D'] as const;
export type Weight = (typeof WEIGHTS)[number];
export type IndexStatus = 'building' | 'ready' | 'failed' | 'dropping';

export interface SearchIndexDef {
  table: string;
  columns: Array<{ name: string; weight: Weight }>;
  language: string;
  tsvColumn: string;
  /** 'generated' (stored generated column, made by a migration) or 'trigger' (made by the job). */
  maintenance: 'generated' | 'trigger';
  vector: { column: string; dimensions: number } | null;
  status: IndexStatus;
  jobId: string | null;
  error: string | null;
  createdBy: string;
  createdAt: string;
  updatedAt: string;
}

interface Row {
  table_name: string;
  columns: Array<{ name: string; weight: Weight }>;
  language: string;
  tsv_column: string;
  maintenance: 'generated' | 'trigger';
  vector_column: string | null;
  vector_dimensions: number | null;
  status: IndexStatus;
  job_id: string | null;
  error: string | null;
  created_by: string;
  created_at: Date;
  updated_at: Date;
}

const SELECT = `SELECT table_name, columns, language, tsv_column, maintenance, vector_column, vector_dimensions, status,
  job_id, error, created_by, created_at, updated_at FROM strata.search_indexes`;

function toDef(r: Row): SearchIndexDef {
  return {
    table: r.table_name,
    columns: r.columns,
    language: r.language,
    tsvColumn: r.tsv_column,
    maintenance: r.maintenance,
    vector: r.vector_column !== null && r.vector_dimensions !== null ? { column: r.vector_column, dimensions: r.vector_dimensions } : null,
    status: r.status,
    jobId: r.job_id,
    error: r.error,
    createdBy: r.created_by,
    createdAt: r.created_at.toISOString(),
    updatedAt: r.updated_at.toISOString(),
  };
}

/** All definitions, read now. */
export async function readDefinitions(db: Database): Promise<SearchIndexDef[]> {
  const { rows } = await db.adminQuery<Row>(`${SELECT} ORDER BY table_name`);
  return rows.map(toDef);
}

/** One definition, read now (undefined when the table has none). */
export async function readDefinition(db: Database, table: string): Promise<SearchIndexDef | undefined> {
  const { rows } = await db.adminQuery<Row>(`${SELECT} WHERE table_name = $1`, [table]);
  return rows[0] ? toDef(rows[0]) : undefined;
}

/** Set a definition's status (and error), as the job moves on. */
export async function setStatus(db: Database, table: string, status: IndexStatus, error: string | null = null): Promise<void> {
  await db.adminQuery('UPDATE strata.search_indexes SET status = $2, error = $3, updated_at = now() WHERE table_name = $1', [table, status, error]);
}

/**
 * Definitions cached for `ttlMs` (the search path reads them on every request). Admin reads and
 * this process's own changes refresh the cache at once; other processes' changes show within ttlMs.
 */
export function createDefinitionCache(db: Database, ttlMs = 2_000) {
  let cached: { at: number; map: Map<string, SearchIndexDef> } | undefined;
  let loading: Promise<Map<string, SearchIndexDef>> | undefined;
  const load = async () => {
    const map = new Map((await readDefinitions(db)).map((d) => [d.table, d]));
    cached = { at: Date.now(), map };
    return map;
  };
  return {
    async get(table: string): Promise<SearchIndexDef | undefined> {
      if (cached && Date.now() - cached.at < ttlMs) return cached.map.get(table);
      loading ??= load().finally(() => {
        loading = undefined;
      });
      return (await loading).get(table);
    },
    async all(): Promise<SearchIndexDef[]> {
      return [...(await load()).values()];
    },
    invalidate(): void {
      cached = undefined;
    },
  };
}
export type DefinitionCache = ReturnType<typeof createDefinitionCache>;
