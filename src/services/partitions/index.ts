/**
 * Time partitioning (SPEC 11) for large append-mostly tables, with the well-kept tool of each mode
 * rather than another partition manager:
 *
 * - single server: pg_partman (Debian `postgresql-15-partman`), native range partitioning,
 *   `create_parent` then `run_maintenance` (partitions made ahead, dropped past `retention`);
 * - Citus cluster: `create_time_partitions` / `drop_old_time_partitions` on the distributed
 *   partitioned table (every partition is distributed and colocated with the tenant's rows).
 *
 * Where neither is present the capability answers `501 PARTITIONING_UNAVAILABLE`.
 *
 * The table must already be declared `PARTITION BY RANGE (<column>)` (in a migration, with its
 * tenant_id, row-level security and grants on the parent, which every partition is read through).
 * Converting a filled plain table in place is refused with `409 TABLE_NOT_PARTITIONED`: it rewrites
 * every row and its keys, which belongs in a reviewed migration, not in an API call.
 *
 * Glossary: a *partition set* is a parent table with its partitions, recorded in
 * strata.time_partitions with its interval, how many partitions to keep ahead (premake) and how long
 * to keep old ones (retention).
 */
import pg from 'pg';
import type { Database } from '../../db/database.js';
import { AppError, badRequest, conflict } from '../../errors.js';

export type PartitionEngine = 'pg_partman' | 'citus';

export interface PartitionSetInput {
  table: string;
  column: string;
  interval: string;
  premake?: number;
  retention?: string | null;
  /** First partition's start (ISO date), for backfilled data; default: now. */
  start?: string;
}

export interface PartitionView {
  name: string;
  from: string | null;
  to: string | null;
  default: boolean;
}

export interface PartitionSetView {
  table: string;
  column: string;
  engine: PartitionEngine;
  interval: string;
  premake: number;
  retention: string | null;
  created_at: string;
  maintained_at: string | null;
  last_error: string | null;
  partitions: PartitionView[];
}

/** The intervals both engines handle the same way (calendar-aligned). */
export const PARTITION_INTERVALS = ['1 hour', '1 day', '1 week', '1 month'] as const;
const RETENTION = /^([1-9][0-9]{0,3}) (hour|day|week|month|year)s?$/;
const TIME_TYPES = new Set(['timestamptz', 'timestamp', 'date']);
const q = pg.escapeIdentifier;

const unavailable = () =>
  new AppError(
    501,
    'PARTITIONING_UNAVAILABLE',
    'time partitioning needs pg_partman on a single server (Debian: postgresql-15-partman) or a Citus cluster; neither is present here',
  );

export function createPartitionService({ db }: { db: Database }) {
  const admin = <R extends Record<string, unknown>>(text: string, values?: unknown[]) => db.adminQuery<R>(text, values);

  /** The engine of this mode, or 501 when there is none. */
  async function engine(): Promise<PartitionEngine> {
    if (db.cluster) return 'citus';
    const { rowCount } = await admin("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_partman'");
    if (!rowCount) throw unavailable();
    return 'pg_partman';
  }

  async function partitionsOf(table: string): Promise<PartitionView[]> {
    const { rows } = await admin<{ name: string; bound: string }>(
      `SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = to_regclass($1) ORDER BY 1`,
      [`public.${q(table)}`],
    );
    return rows
      .map((r) => {
        const m = /FROM \('([^']*)'\) TO \('([^']*)'\)/.exec(r.bound);
        return { name: r.name, from: m?.[1] ?? null, to: m?.[2] ?? null, default: r.bound === 'DEFAULT' };
      })
      .sort((a, b) => (a.from ?? '').localeCompare(b.from ?? ''));
  }

  /** Checks done before anything is written: each bad input answers its own 4xx. */
  async function validate(input: PartitionSetInput): Promise<{ interval: string; premake: number; retention: string | null; start: string | null }> {
    const { rows } = await admin<{ kind: string; strategy: string | null; key: string[] | null; col_type: string | null }>(
      `SELECT c.relkind::text AS kind, pt.partstrat::text AS strategy,
              (SELECT array_agg(a.attname::text ORDER BY k.i) FROM unnest(pt.partattrs::int2[]) WITH ORDINALITY k(n, i)
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.n) AS key,
              (SELECT t.typname::text FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                WHERE a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped) AS col_type
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid
        WHERE n.nspname = 'public' AND c.relname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition`,
      [input.table, input.column],
    );
    const t = rows[0];
    if (!t) throw badRequest('UNKNOWN_TABLE', `table ${JSON.stringify(input.table)} does not exist`, { table: input.table });
    if (t.col_type === null) throw badRequest('UNKNOWN_COLUMN', `table ${input.table} has no column ${JSON.stringify(input.column)}`, { column: input.column });
    if (!TIME_TYPES.has(t.col_type)) {
      throw badRequest('INVALID_PARTITION_COLUMN', `column ${input.column} is ${t.col_type}: time partitioning needs timestamptz, timestamp or date`, { column: input.column });
    }
    if (t.kind !== 'p') {
      throw conflict(
        'TABLE_NOT_PARTITIONED',
        `table ${input.table} is not partitioned: declare it PARTITION BY RANGE (${input.column}) in a migration (its keys must include ${input.column}); Strata does not rewrite a filled table in place`,
        { table: input.table },
      );
    }
    if (t.strategy !== 'r' || t.key?.length !== 1 || t.key[0] !== input.column) {
      throw badRequest('PARTITION_KEY_MISMATCH', `table ${input.table} is partitioned by ${t.strategy === 'r' ? 'range' : 'list or hash'} (${(t.key ?? []).join(', ')}), not by range (${input.column})`, {
        table: input.table,
      });
    }
    if (!(PARTITION_INTERVALS as readonly string[]).includes(input.interval)) {
      throw badRequest('INVALID_INTERVAL', `interval must be one of ${PARTITION_INTERVALS.join(', ')}`, { interval: input.interval });
    }
    const retention = input.retention ?? null;
    if (retention !== null && !RETENTION.test(retention)) {
      throw badRequest('INVALID_RETENTION', 'retention must look like "30 days", "12 weeks", "6 months" or "1 year" (or be null: keep every partition)', { retention });
    }
    let start: string | null = null;
    if (input.start !== undefined) {
      const ms = Date.parse(input.start);
      if (!Number.isFinite(ms) || Math.abs(ms - Date.now()) > 5 * 366 * 86_400_000) {
        throw badRequest('INVALID_START', 'start must be an ISO date within five years of now', { start: input.start });
      }
      start = new Date(ms).toISOString();
    }
    const { rowCount } = await admin('SELECT 1 FROM strata.time_partitions WHERE table_name = $1', [input.table]);
    if (rowCount) throw conflict('PARTITIONS_EXIST', `table ${input.table} already has time partitions managed by Strata`, { table: input.table });
    return { interval: input.interval, premake: input.premake ?? 4, retention, start };
  }

  /** Make partitions ahead (premake) and drop those past retention, for one partition set. */
  async function maintainOne(table: string, eng: PartitionEngine, interval: string, premake: number, retention: string | null): Promise<void> {
    if (eng === 'pg_partman') {
      // pg_partman names tables 'schema.table' unquoted (it splits on the dot and looks them up)
      await admin('SELECT partman.run_maintenance($1, p_jobmon => false)', [`public.${table}`]);
      return;
    }
    const rel = `public.${q(table)}`;
    await admin('SELECT create_time_partitions($1::regclass, $2::interval, now() + $2::interval * $3)', [rel, interval, premake]);
    if (retention !== null) await admin('CALL drop_old_time_partitions($1::regclass, now() - $2::interval)', [rel, retention]);
  }

  async function view(table: string): Promise<PartitionSetView> {
    const { rows } = await admin<{
      table_name: string;
      column_name: string;
      engine: PartitionEngine;
      part_interval: string;
      premake: number;
      retention: string | null;
      created_at: Date;
      maintained_at: Date | null;
      last_error: string | null;
    }>(
      'SELECT table_name, column_name, engine, part_interval::text, premake, retention::text, created_at, maintained_at, last_error FROM strata.time_partitions WHERE table_name = $1',
      [table],
    );
    const r = rows[0]!;
    return {
      table: r.table_name,
      column: r.column_name,
      engine: r.engine,
      interval: r.part_interval,
      premake: r.premake,
      retention: r.retention,
      created_at: r.created_at.toISOString(),
      maintained_at: r.maintained_at?.toISOString() ?? null,
      last_error: r.last_error,
      partitions: await partitionsOf(r.table_name),
    };
  }

  return {
    engine,

    /**
     * Put a range-partitioned table under time partitioning: partitions from `start` (default now)
     * up to `premake` intervals ahead are made at once; the scheduled job keeps them ahead and
     * drops those older than `retention`.
     */
    async create(input: PartitionSetInput): Promise<PartitionSetView> {
      const eng = await engine();
      const v = await validate(input);
      const rel = `public.${q(input.table)}`;
      if (eng === 'pg_partman') {
        // pg_partman names tables 'schema.table' unquoted (it splits on the dot and looks them up)
        const parent = `public.${input.table}`;
        await db.admin.with(async (c) => {
          await c.query('BEGIN');
          try {
            await c.query('CREATE SCHEMA IF NOT EXISTS partman');
            await c.query('CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman');
            await c.query("SELECT partman.create_parent($1, $2, 'native', $3, p_premake => $4, p_start_partition => $5, p_jobmon => false)", [
              parent,
              input.column,
              v.interval,
              v.premake,
              v.start,
            ]);
            // keep making partitions ahead even while no rows arrive; drop (not detach) past retention
            await c.query('UPDATE partman.part_config SET infinite_time_partitions = true, retention = $2, retention_keep_table = false WHERE parent_table = $1', [
              parent,
              v.retention,
            ]);
            await c.query('INSERT INTO strata.time_partitions (table_name, column_name, engine, part_interval, premake, retention) VALUES ($1, $2, $3, $4, $5, $6)', [
              input.table,
              input.column,
              eng,
              v.interval,
              v.premake,
              v.retention,
            ]);
            await c.query('COMMIT');
          } catch (err) {
            await c.query('ROLLBACK');
            throw err;
          }
        });
      } else {
        await db.admin.with(async (c) => {
          await c.query('BEGIN');
          try {
            await c.query('SELECT create_time_partitions($1::regclass, $2::interval, now() + $2::interval * $3, coalesce($4::timestamptz, now()))', [rel, v.interval, v.premake, v.start]);
            await c.query('INSERT INTO strata.time_partitions (table_name, column_name, engine, part_interval, premake, retention) VALUES ($1, $2, $3, $4, $5, $6)', [
              input.table,
              input.column,
              eng,
              v.interval,
              v.premake,
              v.retention,
            ]);
            await c.query('COMMIT');
          } catch (err) {
            await c.query('ROLLBACK');
            throw err;
          }
        });
      }
      return view(input.table);
    },

    /** Every partition set with its partitions. */
    async list(): Promise<PartitionSetView[]> {
      const { rows } = await admin<{ table_name: string }>('SELECT table_name FROM strata.time_partitions ORDER BY table_name');
      const out: PartitionSetView[] = [];
      for (const r of rows) out.push(await view(r.table_name));
      return out;
    },

    /** The scheduled job: every partition set, one after another; a failure is recorded, not fatal. */
    async maintain(progress?: (info: Record<string, unknown>) => Promise<void> | void): Promise<{ maintained: number; failed: number }> {
      const { rows } = await admin<{ table_name: string; engine: PartitionEngine; part_interval: string; premake: number; retention: string | null }>(
        'SELECT table_name, engine, part_interval::text, premake, retention::text FROM strata.time_partitions ORDER BY table_name',
      );
      let failed = 0;
      for (const [i, r] of rows.entries()) {
        try {
          await maintainOne(r.table_name, r.engine, r.part_interval, r.premake, r.retention);
          await admin('UPDATE strata.time_partitions SET maintained_at = now(), last_error = NULL WHERE table_name = $1', [r.table_name]);
        } catch (err) {
          failed++;
          await admin('UPDATE strata.time_partitions SET last_error = $2 WHERE table_name = $1', [r.table_name, (err as Error).message.slice(0, 500)]);
        }
        await progress?.({ done: i + 1, total: rows.length });
      }
      return { maintained: rows.length - failed, failed };
    },
  };
}

export type PartitionService = ReturnType<typeof createPartitionService>;
