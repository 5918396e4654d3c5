/**
 * The DDL of search indexes, run by the `search` queue's jobs on the admin connection, outside any
 * transaction (CREATE INDEX CONCURRENTLY may not run inside one).
 *
 * Build, for a 'trigger' definition (the run-time path), never holding a lock that blocks writes
 * for long:
 *  1. ADD COLUMN search_tsv tsvector (nullable, no default: a catalog change, no table rewrite), with
 *     a short lock_timeout so a busy table makes the step retry rather than queue every writer;
 *  2. a BEFORE INSERT OR UPDATE OF <columns> trigger computing it for new and changed rows;
 *  3. backfill of the existing rows in primary-key batches, each its own short transaction (progress
 *     is reported per batch; cancellation stops between batches);
 *  4. CREATE INDEX CONCURRENTLY: GIN on (tenant_id, search_tsv), GIN trigram per column, and an HNSW
 *     index on the vector column when pgvector is installed.
 * The alternative, a STORED generated column, rewrites the whole table under ACCESS EXCLUSIVE (no
 * reads or writes for the duration), which is why only migrations use it (0005 for the demo tables).
 * Every step is idempotent, so a retried job (BullMQ attempts) picks up where the last one stopped;
 * an INVALID index left by a failed concurrent build is dropped and built again.
 */
import pg from 'pg';
import type { Logger } from 'pino';
import type { Database } from '../../db/database.js';
import { readDefinition, setStatus, type SearchIndexDef } from './definitions.js';

const q = pg.escapeIdentifier;
const lit = pg.escapeLiteral;
export const BACKFILL_BATCH = 5_000;

export interface DdlProgress {
  signal: AbortSignal;
  log: Logger;
  progress(done: number, total: number | null): Promise<void>;
}

/** Index and object names for a table (kept under PostgreSQL's 63-byte identifier limit). */
export function objectNames(def: Pick<SearchIndexDef, 'table' | 'columns' | 'vector'>) {
  const cut = (s: string) => s.slice(0, 63);
  return {
    tsvIndex: cut(`${def.table}_search_tsv_idx`),
    trgmIndexes: def.columns.map((c) => cut(`${def.table}_${c.name}_trgm_idx`)),
    hnswIndex: def.vector ? cut(`${def.table}_${def.vector.column}_hnsw_idx`) : null,
    trigger: 'search_tsv_maintain',
    fn: cut(`search_tsv_${def.table}`),
  };
}

/** `setweight(to_tsvector(cfg, coalesce(<prefix>col, '')), 'A') || ...` for the definition's columns. */
export function tsvExpression(def: Pick<SearchIndexDef, 'columns' | 'language'>, prefix = ''): string {
  return def.columns
    .map((c) => `setweight(to_tsvector(${lit(def.language)}::regconfig, coalesce(${prefix}${q(c.name)}::text, '')), ${lit(c.weight)})`)
    .join(' || ');
}

/** Whether pgvector is installed in this database. */
export async function hasPgvector(db: Database): Promise<boolean> {
  const { rowCount } = await db.adminQuery("SELECT 1 FROM pg_extension WHERE extname = 'vector'");
  return (rowCount ?? 0) > 0;
}

async function createIndexConcurrently(c: pg.PoolClient, name: string, ddl: string): Promise<void> {
  const { rows } = await c.query<{ valid: boolean }>(
    "SELECT i.indisvalid AS valid FROM pg_class ic JOIN pg_index i ON i.indexrelid = ic.oid WHERE ic.relname = $1 AND ic.relnamespace = 'public'::regnamespace",
    [name],
  );
  if (rows[0]?.valid) return;
  if (rows[0]) await c.query(`DROP INDEX CONCURRENTLY IF EXISTS public.${q(name)}`);
  await c.query(ddl);
}

/** Build the search index of `table` as its definition says, then mark it ready. */
export async function buildSearchIndex(db: Database, table: string, p: DdlProgress): Promise<{ rows: number; indexes: string[] }> {
  const def = await readDefinition(db, table);
  if (!def) throw new Error(`no search index definition for ${table}`);
  const rel = `public.${q(def.table)}`;
  const names = objectNames(def);
  const vector = def.vector !== null && (await hasPgvector(db));
  try {
    return await db.admin.with(async (c) => {
      await c.query("SET statement_timeout = 0; SET lock_timeout = '5s'");
      const { rows: est } = await c.query<{ n: number }>('SELECT greatest(reltuples, 0)::bigint::int AS n FROM pg_class WHERE oid = $1::regclass', [rel]);
      const { rows: pkRows } = await c.query<{ pk: string }>(
        "SELECT a.attname AS pk FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = $1::regclass AND i.indisprimary",
        [rel],
      );
      const pk = pkRows[0]?.pk;
      if (!pk) throw new Error(`${table} has no primary key`);
      const indexSteps = (def.columns.length ? 1 + def.columns.length : 0) + (vector ? 1 : 0);
      // The row estimate (reltuples) may be stale: the total grows if the backfill finds more rows.
      const estimate = def.maintenance === 'trigger' && def.columns.length ? (est[0]?.n ?? 0) : 0;
      let backfilled = 0;
      let indexed = 0;
      const report = () => {
        const rows = Math.max(estimate, backfilled);
        return p.progress(Math.min(backfilled, rows) + indexed, rows + indexSteps);
      };
      const finishedRows = () => Math.max(estimate, backfilled);
      await report();
      const created: string[] = [];
      if (def.columns.length) {
        if (def.maintenance === 'trigger') {
          await c.query(`ALTER TABLE ${rel} ADD COLUMN IF NOT EXISTS ${q(def.tsvColumn)} tsvector`);
          await c.query(
            `CREATE OR REPLACE FUNCTION strata.${q(names.fn)}() RETURNS trigger LANGUAGE plpgsql AS $fn$
             BEGIN NEW.${q(def.tsvColumn)} := ${tsvExpression(def, 'NEW.')}; RETURN NEW; END $fn$`,
          );
          await c.query(`DROP TRIGGER IF EXISTS ${q(names.trigger)} ON ${rel}`);
          await c.query(
            `CREATE TRIGGER ${q(names.trigger)} BEFORE INSERT OR UPDATE OF ${def.columns.map((col) => q(col.name)).join(', ')} ON ${rel}
             FOR EACH ROW EXECUTE FUNCTION strata.${q(names.fn)}()`,
          );
          // Backfill in batches, each its own short transaction: writers wait at most one batch.
          let last: string | null = null;
          for (;;) {
            if (p.signal.aborted) throw new Error('cancelled');
            const res: pg.QueryResult<{ last: string | null; n: number }> = await c.query(
              `WITH b AS (SELECT ${q(pk)} AS k FROM ${rel} WHERE ${q(def.tsvColumn)} IS NULL ${last === null ? '' : `AND ${q(pk)} > $2`} ORDER BY ${q(pk)} LIMIT $1),
                    u AS (UPDATE ${rel} t SET ${q(def.tsvColumn)} = ${tsvExpression(def, 't.')} FROM b WHERE t.${q(pk)} = b.k RETURNING t.${q(pk)} AS k)
               SELECT max(k)::text AS last, count(*)::int AS n FROM u`,
              last === null ? [BACKFILL_BATCH] : [BACKFILL_BATCH, last],
            );
            const batch = res.rows[0];
            if (!batch || batch.n === 0 || batch.last === null) break;
            last = batch.last;
            backfilled += batch.n;
            await report();
          }
        }
        const tenant = (await c.query("SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'tenant_id' AND NOT attisdropped", [rel])).rowCount ? 'tenant_id, ' : '';
        await createIndexConcurrently(c, names.tsvIndex, `CREATE INDEX CONCURRENTLY ${q(names.tsvIndex)} ON ${rel} USING gin (${tenant}${q(def.tsvColumn)})`);
        created.push(names.tsvIndex);
        indexed++;
        await report();
        for (const [i, col] of def.columns.entries()) {
          if (p.signal.aborted) throw new Error('cancelled');
          const name = names.trgmIndexes[i]!;
          await createIndexConcurrently(c, name, `CREATE INDEX CONCURRENTLY ${q(name)} ON ${rel} USING gin (${tenant}${q(col.name)} gin_trgm_ops)`);
          created.push(name);
          indexed++;
          await report();
        }
      }
      if (vector && def.vector && names.hnswIndex) {
        const d = def.vector.dimensions;
        await createIndexConcurrently(
          c,
          names.hnswIndex,
          `CREATE INDEX CONCURRENTLY ${q(names.hnswIndex)} ON ${rel} USING hnsw ((${q(def.vector.column)}::vector(${d})) vector_cosine_ops)`,
        );
        created.push(names.hnswIndex);
        indexed++;
      }
      // the estimate may have been above the rows found: end at 100%
      await p.progress(finishedRows() + indexSteps, finishedRows() + indexSteps);
      await c.query('RESET statement_timeout; RESET lock_timeout');
      await setStatus(db, table, 'ready');
      const rows = def.maintenance === 'trigger' ? backfilled : 0;
      p.log.info({ table, indexes: created }, 'search index built');
      return { rows, indexes: created };
    });
  } catch (err) {
    await setStatus(db, table, 'failed', err instanceof Error ? err.message : String(err)).catch(() => undefined);
    throw err;
  }
}

/** Drop the search index of `table` (indexes concurrently, then trigger, column, definition). */
export async function dropSearchIndex(db: Database, table: string, p: DdlProgress): Promise<{ dropped: string[] }> {
  const def = await readDefinition(db, table);
  if (!def) return { dropped: [] };
  const names = objectNames(def);
  const rel = `public.${q(def.table)}`;
  const indexes = [names.tsvIndex, ...names.trgmIndexes, ...(names.hnswIndex ? [names.hnswIndex] : [])];
  const total = indexes.length + 1;
  await p.progress(0, total);
  const exists = (await db.adminQuery('SELECT to_regclass($1) IS NOT NULL AS e', [rel])).rows[0]?.['e'] === true;
  await db.admin.with(async (c) => {
    await c.query("SET statement_timeout = 0; SET lock_timeout = '5s'");
    let done = 0;
    for (const name of indexes) {
      await c.query(`DROP INDEX CONCURRENTLY IF EXISTS public.${q(name)}`);
      await p.progress(++done, total);
    }
    if (exists) {
      await c.query(`DROP TRIGGER IF EXISTS ${q(names.trigger)} ON ${rel}`);
      await c.query(`ALTER TABLE ${rel} DROP COLUMN IF EXISTS ${q(def.tsvColumn)}`);
    }
    await c.query(`DROP FUNCTION IF EXISTS strata.${q(names.fn)}()`);
    await c.query('DELETE FROM strata.search_indexes WHERE table_name = $1', [table]);
    await c.query('RESET statement_timeout; RESET lock_timeout');
    await p.progress(total, total);
  });
  p.log.info({ table, indexes }, 'search index dropped');
  return { dropped: indexes };
}
