/**
 * The copy behind a sandbox (job `sandbox-create`):
 *
 * 1. `CREATE DATABASE strata_sbx_<hex>` on the same server;
 * 2. the served database's schema, exactly (`pg_dump --schema-only` | `pg_restore`): tables, RLS
 *    policies, grants to strata_tenant, triggers, functions, search columns and views made through
 *    the API, not only what the migrations say;
 * 3. the platform rows a sandbox needs to be served and migrated (migration bookkeeping, the
 *    tenant's own record, capture, compliance and search declarations; no keys, webhooks or API keys);
 * 4. the tenant's rows of every tenant table, read in ONE read-only repeatable-read tenant session
 *    (so row-level security decides what is read, and the copy is one consistent instant) and
 *    streamed with `COPY ... TO STDOUT` into `COPY ... FROM STDIN` of one transaction on the
 *    sandbox, user triggers off (no change events, no recomputed columns), parents first;
 * 5. sequences moved past the copied keys, and the record marked ready.
 *
 * Bounded: the tenant's rows are counted first (SANDBOX_MAX_ROWS); progress is reported per table.
 * Any failure, a cancellation or a DELETE meanwhile drops the database.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import type { Logger } from 'pino';
import type { Database } from '../../db/database.js';
import type { SessionContext } from '../../db/session.js';
import { AppError } from '../../errors.js';
import { findPgTools, libpqEnv, run, urlForDatabase, withClient } from '../backups/index.js';
import type { ComplianceOps } from '../compliance/index.js';
import type { SchemaRegistry } from '../data/index.js';
import { tenantTables } from '../testing/index.js';
import { dropSandboxDatabase, quoteIdent } from './sandboxes.js';

export interface CopyProgress {
  progress(done: number, total: number | null): Promise<void>;
  signal: AbortSignal;
  log: Pick<Logger, 'info' | 'warn'>;
}

export interface CopyOutcome {
  sandbox_id: string;
  status: 'ready' | 'deleted';
  tables: number;
  rows: number;
  ms: number;
  /** Anonymized copies: the columns replaced by fakes (`table.column`). */
  faked_columns?: string[];
}

/** Platform tables copied whole (declarations), and the tenant-keyed one copied for the tenant only. */
const PLATFORM_TABLES = ['strata.schema_migrations', 'strata.captured_tables', 'strata.compliance_columns', 'strata.search_indexes', 'strata.cache_tables'];

interface Record_ {
  id: string;
  tenant_id: string;
  database: string;
  anonymized: boolean;
  live: boolean;
}

async function recordOf(db: Database, id: string): Promise<Record_ | undefined> {
  const { rows } = await db.adminQuery<Record_>('SELECT id, tenant_id, database, anonymized, expires_at > now() AS live FROM strata.sandboxes WHERE id = $1', [id]);
  return rows[0];
}

/** The compliance anonymizer's copy (src/services/compliance/anonymize.ts), for `anonymize: true`. */
export type SandboxAnonymizer = Pick<ComplianceOps['anonymizer'], 'run'>;

class Gone extends Error {}

/** Run the copy of sandbox `id`. Returns `deleted` when the sandbox was deleted or expired meanwhile. */
export async function copySandbox(
  deps: { db: Database; schema: SchemaRegistry; maxRows: number; statementTimeoutMs: number; pgBinDir?: string | undefined; anonymizer?: SandboxAnonymizer | undefined },
  id: string,
  p: CopyProgress,
): Promise<CopyOutcome> {
  const { db } = deps;
  const started = performance.now();
  const rec = await recordOf(db, id);
  if (!rec?.live) return { sandbox_id: id, status: 'deleted', tables: 0, rows: 0, ms: 0 };
  const check = async () => {
    if (p.signal.aborted) throw new AppError(409, 'CANCELLED', 'the sandbox copy was cancelled');
    if (!(await recordOf(db, id))?.live) throw new Gone();
  };
  const sandboxUrl = urlForDatabase(db.adminUrl, rec.database);
  const tooLarge = (total: number) => {
    if (total > deps.maxRows) {
      throw new AppError(413, 'SANDBOX_TOO_LARGE', `tenant ${rec.tenant_id} has ${total} rows in its tables, more than SANDBOX_MAX_ROWS (${deps.maxRows})`);
    }
  };
  try {
    // a retried attempt starts from nothing
    await dropSandboxDatabase(db, rec.database);
    if (rec.anonymized) return await anonymizedCopy(deps, rec, p, check, tooLarge, started);
    await db.adminQuery(`CREATE DATABASE ${quoteIdent(rec.database)}`);
    await check();
    await copySchema(db, sandboxUrl, deps.pgBinDir, p.signal);
    await check();
    const tables = tenantTables(await deps.schema.tables());
    const ctx: SessionContext = { tenantId: rec.tenant_id, actor: `system:sandbox:${id}`, role: 'admin', requestId: `sandbox:${id}` };
    const columns = await columnsOf(db, tables.map((t) => t.qualified));
    let copied = 0;
    await withClient(sandboxUrl, async (target) => {
      await target.query('BEGIN');
      await copyPlatformRows(db, target, rec.tenant_id);
      await target.query('SELECT set_config($1, $2, true)', ['strata.tenant_id', rec.tenant_id]);
      await db.withTenantStream(
        ctx,
        async (tx) => {
          const counts = await countOf(tx.client, tables.map((t) => t.qualified));
          const total = [...counts.values()].reduce((a, b) => a + b, 0);
          tooLarge(total);
          await p.progress(0, total);
          for (const t of tables) {
            const cols = (columns.get(t.qualified) ?? []).map(quoteIdent).join(', ');
            if (!cols) continue;
            await target.query(`ALTER TABLE ${t.qualified} DISABLE TRIGGER USER`);
            const sink = target.query(copyFrom(`COPY ${t.qualified} (${cols}) FROM STDIN`));
            const source = tx.client.query(copyTo(`COPY (SELECT ${cols} FROM ${t.qualified}) TO STDOUT`));
            await pipeline(source, sink, { signal: p.signal });
            await target.query(`ALTER TABLE ${t.qualified} ENABLE TRIGGER USER`);
            copied += counts.get(t.qualified) ?? 0;
            await p.progress(copied, total);
          }
        },
        { isolation: 'repeatable read', readOnly: true, retries: 0, statementTimeoutMs: deps.statementTimeoutMs },
      );
      await advanceSequences(target, tables.map((t) => t.qualified));
      await check();
      await target.query('COMMIT');
    });
    const { rowCount } = await db.adminQuery(
      "UPDATE strata.sandboxes SET status = 'ready', ready_at = now(), tables = $2, rows = $3, error = NULL WHERE id = $1 AND expires_at > now()",
      [id, tables.length, copied],
    );
    if (!rowCount) throw new Gone();
    const ms = Math.round(performance.now() - started);
    p.log.info({ sandbox: id, tenant: rec.tenant_id, tables: tables.length, rows: copied, ms }, 'sandbox ready');
    return { sandbox_id: id, status: 'ready', tables: tables.length, rows: copied, ms };
  } catch (err) {
    await dropSandboxDatabase(db, rec.database).catch((e: unknown) => p.log.warn({ sandbox: id, err: e }, 'could not drop a half-made sandbox database'));
    if (err instanceof Gone) return { sandbox_id: id, status: 'deleted', tables: 0, rows: 0, ms: Math.round(performance.now() - started) };
    const message = err instanceof Error ? err.message : String(err);
    await db.adminQuery("UPDATE strata.sandboxes SET status = 'failed', error = $2 WHERE id = $1", [id, message.slice(0, 1000)]).catch(() => undefined);
    throw err;
  }
}

/**
 * `anonymize: true`: the compliance anonymizer builds the sandbox database (schema, the tenant's rows
 * of every tenant table with each declared column and every column a foreign key ties to one replaced
 * by a deterministic fake, then constraints, indexes, triggers and policies over the faked rows), and
 * the declarations a served sandbox needs are added. No original value of a declared column is read
 * into the sandbox, and an un-anonymized copy is never made instead.
 */
async function anonymizedCopy(
  deps: { db: Database; anonymizer?: SandboxAnonymizer | undefined },
  rec: Record_,
  p: CopyProgress,
  check: () => Promise<void>,
  tooLarge: (total: number) => void,
  started: number,
): Promise<CopyOutcome> {
  const { db } = deps;
  if (!deps.anonymizer) throw new AppError(501, 'ANONYMIZER_UNAVAILABLE', 'this worker has no compliance anonymizer');
  const result = await deps.anonymizer.run(
    { target_database: rec.database, tenant: rec.tenant_id, seed: randomBytes(16).toString('hex') },
    (done, total) => p.progress(done, total),
    p.signal,
    { tenantTablesOnly: true, beforeCopy: tooLarge },
  );
  await check();
  await withClient(urlForDatabase(db.adminUrl, rec.database), async (target) => {
    await target.query('BEGIN');
    // the anonymizer copies migrations, the tenant and the compliance declarations; a served sandbox also needs these
    for (const table of ['strata.captured_tables', 'strata.search_indexes', 'strata.cache_tables']) {
      const present = await db.adminQuery("SELECT 1 FROM pg_class WHERE oid = to_regclass($1) AND relkind IN ('r', 'p')", [table]);
      if (!present.rowCount) continue;
      const { rows } = await db.adminQuery<{ j: unknown }>(`SELECT coalesce(jsonb_agg(to_jsonb(x)), '[]') AS j FROM ${table} x`);
      await target.query(`INSERT INTO ${table} SELECT * FROM jsonb_populate_recordset(NULL::${table}, $1) ON CONFLICT DO NOTHING`, [JSON.stringify(rows[0]?.j ?? [])]);
    }
    await target.query('COMMIT');
  });
  const tables = Object.keys(result.tables).length;
  const { rowCount } = await db.adminQuery(
    "UPDATE strata.sandboxes SET status = 'ready', ready_at = now(), tables = $2, rows = $3, error = NULL WHERE id = $1 AND expires_at > now()",
    [rec.id, tables, result.rows],
  );
  if (!rowCount) throw new Gone();
  const ms = Math.round(performance.now() - started);
  p.log.info({ sandbox: rec.id, tenant: rec.tenant_id, tables, rows: result.rows, faked_columns: result.faked_columns.length, ms }, 'anonymized sandbox ready');
  return { sandbox_id: rec.id, status: 'ready', tables, rows: result.rows, ms, faked_columns: result.faked_columns };
}

/** The served database's schema into the sandbox: pg_dump --schema-only, restored as is (owners, grants, policies). */
async function copySchema(db: Database, sandboxUrl: string, pgBinDir: string | undefined, signal: AbortSignal): Promise<void> {
  const { rows } = await db.adminQuery<{ v: number }>("SELECT current_setting('server_version_num')::int AS v");
  const tools = await findPgTools(rows[0]?.v ?? 150000, pgBinDir);
  const dir = await mkdtemp(path.join(tmpdir(), 'strata-sandbox-'));
  try {
    const file = path.join(dir, 'schema.dump');
    const source = libpqEnv(db.adminUrl);
    await run(tools.pg_dump, ['--schema-only', '--format=custom', `--file=${file}`, source.dbname], { env: source.env, signal });
    const target = libpqEnv(sandboxUrl);
    await run(tools.pg_restore, ['--exit-on-error', '--single-transaction', `--dbname=${target.dbname}`, file], { env: target.env, signal });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Declarations and bookkeeping (whole), and the tenant's own strata.tenants row, read from the served database. */
async function copyPlatformRows(db: Database, target: pg.ClientBase, tenantId: string): Promise<void> {
  const present = await db.adminQuery<{ t: string }>("SELECT t FROM unnest($1::text[]) AS t JOIN pg_class c ON c.oid = to_regclass(t) WHERE c.relkind IN ('r', 'p')", [PLATFORM_TABLES]);
  const sources: Array<[string, string, unknown[]]> = [['strata.tenants', 'SELECT * FROM strata.tenants WHERE id = $1', [tenantId]]];
  for (const { t } of present.rows) sources.push([t, `SELECT * FROM ${t}`, []]);
  for (const [table, select, values] of sources) {
    const { rows } = await db.adminQuery<{ j: unknown }>(`SELECT coalesce(jsonb_agg(to_jsonb(x)), '[]') AS j FROM (${select}) x`, values);
    await target.query(`INSERT INTO ${table} SELECT * FROM jsonb_populate_recordset(NULL::${table}, $1)`, [JSON.stringify(rows[0]?.j ?? [])]);
  }
}

/** Columns a COPY can write, per table (generated columns are computed by the sandbox). */
async function columnsOf(db: Database, tables: string[]): Promise<Map<string, string[]>> {
  const { rows } = await db.adminQuery<{ t: string; cols: string[] }>(
    `SELECT t, array_agg(a.attname::text ORDER BY a.attnum) AS cols
       FROM unnest($1::text[]) AS t JOIN pg_attribute a ON a.attrelid = t::regclass
      WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
      GROUP BY t`,
    [tables],
  );
  return new Map(rows.map((r) => [r.t, r.cols]));
}

/** The tenant's rows per table, in its session (RLS decides what is counted). */
async function countOf(c: pg.ClientBase, tables: string[]): Promise<Map<string, number>> {
  if (!tables.length) return new Map();
  const { rows } = await c.query<Record<string, string>>(`SELECT ${tables.map((t, i) => `(SELECT count(*) FROM ${t}) AS c${i}`).join(', ')}`);
  const r = rows[0] ?? {};
  return new Map(tables.map((t, i) => [t, Number(r[`c${i}`] ?? 0)]));
}

/** Sequences owned by the copied tables' columns continue after the largest copied value. */
async function advanceSequences(c: pg.ClientBase, tables: string[]): Promise<void> {
  const { rows } = await c.query<{ seq: string; tbl: string; col: string }>(
    `SELECT s.oid::regclass::text AS seq, d.refobjid::regclass::text AS tbl, a.attname AS col
       FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
       JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
      WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
        AND d.refobjid = ANY (SELECT unnest($1::text[])::regclass)`,
    [tables],
  );
  for (const r of rows) {
    await c.query(`SELECT setval($1::regclass, m, true) FROM (SELECT max(${quoteIdent(r.col)})::bigint AS m FROM ${r.tbl}) x WHERE m IS NOT NULL`, [r.seq]);
  }
}
