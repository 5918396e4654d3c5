/**
 * Anonymized copies (POST /v1/admin/compliance/anonymize, a job on the `compliance` queue): a new
 * database on the same server holding every table of schema public (one tenant's rows, or every
 * tenant's) where each declared column (pii or encrypted) is replaced by a deterministic fake
 * (fakes.ts). The copy is built the way pg_restore builds one, which is also its proof:
 * 1. `pg_dump --schema-only` of the source; `pg_restore --section=pre-data` into the new database
 *    (tables, types, functions; no constraints, indexes or triggers yet);
 * 2. the rows, read in ONE repeatable-read snapshot of the source, faked, and inserted;
 * 3. `pg_restore --section=post-data`: primary keys, unique constraints, foreign keys, indexes,
 *    triggers and policies are created over the faked rows, so a fake that broke a foreign key or a
 *    unique constraint fails the job (and the half-made copy is dropped) instead of being delivered.
 * Foreign keys survive because the fake depends on the value, not the column: the same original gives
 * the same fake everywhere in one copy, and a column a foreign key ties to a declared column (either
 * way) is faked with it. Of schema strata only the tenants (the copied ones), the migrations
 * bookkeeping and the declarations are copied (declared encrypted columns now hold fake plaintext,
 * so they are marked not encrypted in the copy); keys, API keys, the change log, webhooks and the
 * rest stay empty: they hold originals.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import QueryStream from 'pg-query-stream';
import type { Database } from '../../db/database.js';
import type { RequestContext } from '../../domain.js';
import { badRequest, conflict, notFound } from '../../errors.js';
import { DATABASE_NAME, databaseExists, dropDatabase, findPgTools, libpqEnv, quoteIdent, run, urlForDatabase, withClient } from '../backups/index.js';
import type { SchemaRegistry, TableInfo } from '../data/index.js';
import type { JobsService } from '../jobs/index.js';
import { blindIndexColumn } from './declarations.js';
import { decryptField, isCiphertext } from './envelope.js';
import { createFaker, type FakeColumn } from './fakes.js';
import type { TenantKeys } from './keys.js';
import type { PiiCategory } from './masking.js';
import { baseTableNames, parentsFirst, q } from './tables.js';

export interface AnonymizeInput {
  target_database?: string;
  tenant?: string;
  seed?: string;
}

/** How a caller shapes a copy (tenant sandboxes: src/services/sandboxes/copy.ts). */
export interface AnonymizeRunOptions {
  /** Copy only the tables with a tenant_id (a tenant sandbox); default: every table of schema public. */
  tenantTablesOnly?: boolean;
  /** Called with the row count to copy, before any row is read; throwing stops the copy (a size bound). */
  beforeCopy?: (total: number) => void | Promise<void>;
}

export interface AnonymizeResult {
  target_database: string;
  tenant: string | null;
  tables: Record<string, number>;
  rows: number;
  faked_columns: string[];
  distinct_values_faked: number;
}

const BATCH = 1000;
const STRATA_COPIED = ['schema_migrations', 'tenants', 'compliance_columns', 'compliance_subjects'];

/** Which columns get fakes: the declared ones, and every column a foreign key ties to one of them. */
export function fakedColumns(tables: Map<string, TableInfo>, declared: Array<{ table: string; column: string; pii: PiiCategory | null }>): Map<string, FakeColumn> {
  const out = new Map<string, FakeColumn>();
  const add = (table: string, column: string, category: PiiCategory | null) => {
    const col = tables.get(table)?.columnMap.get(column);
    if (!col || column === 'tenant_id' || out.has(`${table}.${column}`)) return false;
    out.set(`${table}.${column}`, { category, maxLength: col.maxLength });
    return true;
  };
  for (const d of declared) add(d.table, d.column, d.pii);
  for (let changed = true; changed; ) {
    changed = false;
    for (const t of tables.values()) {
      for (const fk of t.foreignKeys) {
        fk.columns.forEach((col, i) => {
          const ref = fk.refColumns[i]!;
          const child = out.get(`${t.name}.${col}`);
          const parent = out.get(`${fk.table}.${ref}`);
          if (parent && !child) changed = add(t.name, col, parent.category) || changed;
          if (child && !parent) changed = add(fk.table, ref, child.category) || changed;
        });
      }
    }
  }
  return out;
}

export function createAnonymizer(deps: { db: Database; schema: SchemaRegistry; keys: TenantKeys | null }) {
  const { db, schema } = deps;

  async function insertable(c: pg.ClientBase, qualified: string): Promise<string[]> {
    const { rows } = await c.query<{ name: string }>(
      `SELECT attname AS name FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum`,
      [qualified],
    );
    return rows.map((r) => r.name);
  }

  async function insertRows(target: pg.ClientBase, qualified: string, cols: string[], rows: unknown[]) {
    if (!rows.length) return;
    const list = cols.map(q).join(', ');
    await target.query(`INSERT INTO ${qualified} (${list}) OVERRIDING SYSTEM VALUE SELECT ${list} FROM jsonb_populate_recordset(NULL::${qualified}, $1::jsonb)`, [JSON.stringify(rows)]);
  }

  return {
    /** Validate (400/404/409 before anything is made) and enqueue the copy. */
    async start(ctx: RequestContext, input: AnonymizeInput, jobs: JobsService): Promise<{ job_id: string; target_database: string }> {
      const name = input.target_database ?? `strata_anon_${randomBytes(4).toString('hex')}`;
      if (!DATABASE_NAME.test(name)) throw badRequest('INVALID_DATABASE_NAME', `target_database "${name}" must be a lower-case identifier (a-z, 0-9, _; at most 63)`);
      if (input.seed !== undefined && (input.seed.length < 1 || input.seed.length > 128)) throw badRequest('INVALID_SEED', 'seed is 1 to 128 characters');
      const source = await db.adminQuery<{ db: string }>(`SELECT current_database() AS db`);
      if (source.rows[0]!.db === name) throw conflict('DATABASE_EXISTS', `target_database ${name} is the source database`);
      if (await db.admin.with((c) => databaseExists(c, name))) throw conflict('DATABASE_EXISTS', `database ${name} already exists: name a new one`);
      if (input.tenant !== undefined) {
        const { rowCount } = await db.adminQuery(`SELECT 1 FROM strata.tenants WHERE id = $1`, [input.tenant]);
        if (!rowCount) throw notFound('TENANT_NOT_FOUND', `tenant ${input.tenant} does not exist`);
      }
      const { job_id } = await jobs.enqueue(ctx, 'compliance-anonymize', { target_database: name, tenant: input.tenant ?? null, seed: input.seed ?? randomBytes(16).toString('hex') });
      return { job_id, target_database: name };
    },

    /** The job's work (see the file comment). The half-made copy is dropped on any failure. */
    async run(
      input: { target_database: string; tenant: string | null; seed: string },
      progress: (done: number, total: number | null) => Promise<void>,
      signal?: AbortSignal,
      opts: AnonymizeRunOptions = {},
    ): Promise<AnonymizeResult> {
      const adminUrl = db.adminUrl;
      const server = urlForDatabase(adminUrl, 'postgres');
      const { env, dbname } = libpqEnv(adminUrl);
      const version = await db.adminQuery<{ n: string }>(`SELECT current_setting('server_version_num') AS n`);
      const tools = await findPgTools(Number(version.rows[0]!.n), db.config.BACKUP_PG_BIN_DIR);
      const dir = await mkdtemp(path.join(tmpdir(), 'strata-anon-'));
      const dump = path.join(dir, 'schema.dump');
      let created = false;
      try {
        await run(tools.pg_dump, ['--schema-only', '--format=custom', '--no-password', `--file=${dump}`, dbname], { env, signal });
        await withClient(server, (c) => c.query(`CREATE DATABASE ${quoteIdent(input.target_database)} TEMPLATE template0`));
        created = true;
        await run(tools.pg_restore, ['--section=pre-data', '--exit-on-error', '--no-password', `--dbname=${input.target_database}`, dump], { env, signal });
        const result = await withClient(urlForDatabase(adminUrl, input.target_database), (target) =>
          withClient(adminUrl, (source) => copyRows(source, target, input, progress, signal, opts)),
        );
        await run(tools.pg_restore, ['--section=post-data', '--exit-on-error', '--no-password', `--dbname=${input.target_database}`, dump], { env, signal });
        return result;
      } catch (err) {
        if (created) await dropDatabase(adminUrl, input.target_database).catch(() => undefined);
        throw err;
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  };

  async function copyRows(
    source: pg.Client,
    target: pg.Client,
    input: { target_database: string; tenant: string | null; seed: string },
    progress: (done: number, total: number | null) => Promise<void>,
    signal?: AbortSignal,
    opts: AnonymizeRunOptions = {},
  ): Promise<AnonymizeResult> {
    await source.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const { rows: tenants } = await source.query<{ id: string }>(`SELECT id FROM strata.tenants WHERE $1::text IS NULL OR id = $1 ORDER BY id`, [input.tenant]);
    const { rows: declared } = await source.query<{ table_name: string; column_name: string; pii: PiiCategory | null; encrypted: boolean; searchable: boolean }>(
      `SELECT table_name, column_name, pii, encrypted, searchable FROM strata.compliance_columns WHERE pii IS NOT NULL OR encrypted`,
    );
    await schema.refresh();
    const all = await schema.tables();
    const base = await baseTableNames((text) => source.query<{ name: string }>(text));
    const tables = parentsFirst([...all.values()].filter((t) => base.has(t.name) && (!opts.tenantTablesOnly || t.hasTenantId)));
    const faked = fakedColumns(all, declared.map((d) => ({ table: d.table_name, column: d.column_name, pii: d.pii })));
    const encrypted = new Set(declared.filter((d) => d.encrypted).map((d) => `${d.table_name}.${d.column_name}`));
    const nulled = new Set(declared.filter((d) => d.searchable).map((d) => `${d.table_name}.${blindIndexColumn(d.column_name)}`));
    const faker = createFaker(input.seed);

    // the row count to copy, in the same snapshot
    let total = 0;
    const scopes = (t: TableInfo) => (t.hasTenantId ? tenants.map((x) => x.id) : [null]);
    for (const t of tables) {
      for (const tenant of scopes(t)) {
        const where = tenant === null ? '' : 'WHERE tenant_id = $1';
        const { rows } = await source.query<{ n: string }>(`SELECT count(*) AS n FROM ${t.qualified} ${where}`, tenant === null ? [] : [tenant]);
        total += Number(rows[0]!.n);
      }
    }
    await opts.beforeCopy?.(total);
    let done = 0;
    await progress(0, total);
    const counts: Record<string, number> = {};
    const keyCache = new Map<string, Map<number, Buffer>>();
    const decrypt = async (tenant: string | null, table: string, column: string, value: unknown): Promise<unknown> => {
      if (!deps.keys || tenant === null || !isCiphertext(value)) return value;
      let ring = keyCache.get(tenant);
      if (!ring) {
        ring = new Map();
        const { rows } = await source.query<{ version: number }>(`SELECT version FROM strata.tenant_keys WHERE tenant_id = $1 AND kind = 'data'`, [tenant]);
        for (const r of rows) ring.set(r.version, await deps.keys.version(tenant, r.version).catch(() => Buffer.alloc(32)));
        keyCache.set(tenant, ring);
      }
      try {
        return decryptField(value, (v) => ring.get(v) ?? Buffer.alloc(32), { tenantId: tenant, table, column });
      } catch {
        return value; // undecryptable: the ciphertext itself is faked
      }
    };

    for (const t of tables) {
      const cols = await insertable(target, t.qualified);
      counts[t.name] = 0;
      for (const tenant of scopes(t)) {
        if (tenant !== null) await source.query(`SELECT set_config('strata.tenant_id', $1, true)`, [tenant]);
        const where = tenant === null ? '' : 'WHERE x.tenant_id = $1';
        const stream = source.query(new QueryStream(`SELECT to_jsonb(x) AS r FROM ${t.qualified} x ${where}`, tenant === null ? [] : [tenant], { batchSize: BATCH }));
        let batch: Array<Record<string, unknown>> = [];
        for await (const row of stream as AsyncIterable<{ r: Record<string, unknown> }>) {
          if (signal?.aborted) {
            stream.destroy();
            throw new Error('cancelled');
          }
          const r = row.r;
          for (const col of Object.keys(r)) {
            const key = `${t.name}.${col}`;
            if (nulled.has(key)) r[col] = null;
            const spec = faked.get(key);
            if (!spec) continue;
            const plain = encrypted.has(key) ? await decrypt(tenant, t.name, col, r[col]) : r[col];
            r[col] = faker.fake(spec, plain);
          }
          batch.push(r);
          if (batch.length >= BATCH) {
            await insertRows(target, t.qualified, cols, batch);
            done += batch.length;
            counts[t.name] = (counts[t.name] ?? 0) + batch.length;
            batch = [];
            await progress(done, total);
          }
        }
        await insertRows(target, t.qualified, cols, batch);
        done += batch.length;
        counts[t.name] = (counts[t.name] ?? 0) + batch.length;
        await progress(done, Math.max(done, total));
      }
    }

    // schema strata: only what names no data subject
    for (const name of STRATA_COPIED) {
      const qualified = `strata.${q(name)}`;
      const where = name === 'tenants' ? `WHERE $1::text IS NULL OR id = $1` : '';
      const { rows } = await source.query<{ r: Record<string, unknown> }>(`SELECT to_jsonb(x) AS r FROM ${qualified} x ${where}`, name === 'tenants' ? [input.tenant] : []);
      const out = rows.map(({ r }) => (name === 'compliance_columns' ? { ...r, encrypted: false, searchable: false } : r));
      await insertRows(target, qualified, await insertable(target, qualified), out);
    }
    await source.query('COMMIT');

    // identity and serial sequences continue after the copied rows
    const { rows: seqs } = await target.query<{ stmt: string }>(
      `SELECT format('SELECT setval(%L, coalesce((SELECT max(%I) FROM %s), 0) + 1, false)', s.oid::regclass, a.attname, t.oid::regclass) AS stmt
         FROM pg_class s
         JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
         JOIN pg_class t ON t.oid = d.refobjid
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
        WHERE s.relkind = 'S' AND t.relkind IN ('r', 'p')`,
    );
    for (const s of seqs) await target.query(s.stmt);
    return {
      target_database: input.target_database,
      tenant: input.tenant,
      tables: counts,
      rows: done,
      faked_columns: [...faked.keys()].sort(),
      distinct_values_faked: faker.size,
    };
  }
}

export type Anonymizer = ReturnType<typeof createAnonymizer>;
