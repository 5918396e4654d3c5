/**
 * Materialized views (SPEC 11): defined by a platform admin as one read-only SELECT that keeps a
 * `tenant_id` column, stored in schema strata_matviews (no tenant access) and read by tenants only
 * through the security_barrier view strata_views.<name>, which keeps the session tenant's rows. So
 * the tenant filter is enforced by PostgreSQL, as row-level security is for tables.
 *
 * Refreshes are BullMQ jobs (queue `views`, job `refresh-view`): on demand, on a cron schedule
 * (a job scheduler per view), or after writes to named tables: the write hook adds a delayed job
 * with a jobId derived from the view's name, so a burst of writes within `debounce` ms yields one
 * refresh; a write landing while it runs makes it run once more.
 */
import { createHash } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import type { RequestContext } from '../../domain.js';
import type { Database } from '../../db/database.js';
import { badRequest, conflict, notFound } from '../../errors.js';
import { DEFAULT_JOB_OPTIONS, type JobData, type JobsService } from '../jobs/index.js';
import type { RowsService } from '../data/index.js';
import type { SchemaRegistry, TableInfo } from '../data/index.js';
import { guardStatement } from '../data/index.js';
import { checkViewLineage, type PolicySnapshot } from '../compliance/index.js';
import type { TimeseriesService } from './timeseries.js';
import { MATVIEW_SCHEMA, VIEW_SCHEMA } from './view-refresh.js';
import type { WriteListener } from './write-hooks.js';

const q = pg.escapeIdentifier;
const NAME = /^[a-z_][a-z0-9_]{0,62}$/;
const WATCH_RELOAD_MS = 5_000;
const OP_TIMEOUT_MS = 2_000;
type QueryString = Record<string, string | string[] | undefined>;

export interface ViewInput {
  name: string;
  sql: string;
  refresh?: { cron?: string; after_writes_to?: string[]; debounce?: number };
  /** Columns of a unique index on the view: enables REFRESH ... CONCURRENTLY. */
  unique_key?: string[];
}

interface ViewRow {
  name: string;
  sql: string;
  refresh_cron: string | null;
  after_writes_to: string[];
  debounce_ms: number;
  unique_key: string[] | null;
  created_by: string;
  created_at: Date;
  last_refreshed_at: Date | null;
  last_refresh_ms: number | null;
  last_refresh_mode: string | null;
  last_job_id: string | null;
  last_error: string | null;
  last_write_at: Date | null;
  refresh_count: number;
  populated: boolean | null;
  concurrent: boolean | null;
  staleness_s: number | null;
}

const SELECT_VIEWS = `
SELECT v.*, cl.relispopulated AS populated,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = cl.oid AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL) AS concurrent,
       extract(epoch FROM clock_timestamp() - v.last_refreshed_at)::float8 AS staleness_s
  FROM strata.views v LEFT JOIN pg_class cl ON cl.relname = v.name AND cl.relnamespace = '${MATVIEW_SCHEMA}'::regnamespace`;

const iso = (d: Date | null) => (d ? d.toISOString() : null);

function present(r: ViewRow) {
  return {
    name: r.name,
    sql: r.sql,
    refresh: { cron: r.refresh_cron, after_writes_to: r.after_writes_to, debounce: r.debounce_ms },
    unique_key: r.unique_key,
    populated: r.populated ?? false,
    refresh_mode: (r.concurrent && r.populated ? 'concurrently' : 'plain'),
    created_by: r.created_by,
    created_at: r.created_at.toISOString(),
    last_refreshed_at: iso(r.last_refreshed_at),
    last_refresh_ms: r.last_refresh_ms,
    last_refresh_mode: r.last_refresh_mode,
    last_job_id: r.last_job_id,
    last_error: r.last_error,
    last_write_at: iso(r.last_write_at),
    refresh_count: r.refresh_count,
    /** Seconds since the data was taken (null before the first refresh). */
    staleness_s: r.staleness_s === null ? null : Math.round(r.staleness_s * 1000) / 1000,
    /** Never refreshed, or a watched table was written after the last refresh began. */
    stale: r.last_refreshed_at === null || (r.last_write_at !== null && r.last_write_at > r.last_refreshed_at),
  };
}
export type ViewView = ReturnType<typeof present>;

/** The jobId of a view's debounced refresh: `views-<uuid>` derived from the name (the job id format of /v1/jobs). */
export function debounceJobId(name: string): string {
  const h = createHash('sha256').update(`strata-view-debounce:${name}`).digest('hex');
  return `views-${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}
/** BullMQ reads ':' in a scheduler key as a separator: keep it out. */
export const schedulerId = (name: string) => `view-${name}`;

const viewNotFound = (name: string) => notFound('VIEW_NOT_FOUND', `view ${JSON.stringify(name)} does not exist`);

function bounded<T>(p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`queue operation slower than ${OP_TIMEOUT_MS} ms`)), OP_TIMEOUT_MS);
    }),
  ]).finally(() => clearTimeout(timer));
}

export function createViewsService(deps: {
  db: Database;
  schema: SchemaRegistry;
  rows: RowsService;
  timeseries: TimeseriesService;
  jobs: () => JobsService;
  log: Pick<Logger, 'info' | 'warn'>;
  /** The declared policy: a view may not read a declared column (compliance lineage check). */
  compliance?: { policy(): PolicySnapshot | Promise<PolicySnapshot> };
}) {
  const { db, schema, log } = deps;
  // Column lists of the barrier views, re-read after WATCH_RELOAD_MS (another process may drop and recreate a view).
  const relations = new Map<string, { at: number; t: TableInfo }>();
  let watched: { at: number; views: Array<{ name: string; tables: string[]; debounce: number }> } | undefined;

  async function load(name: string): Promise<ViewRow> {
    const { rows } = await db.adminQuery<ViewRow>(`${SELECT_VIEWS} WHERE v.name = $1`, [name]);
    if (!rows[0]) throw viewNotFound(name);
    return rows[0];
  }

  /** The tenant-filtered relation of a view, described like a registry table for the rows-API builder. */
  async function relation(name: string): Promise<TableInfo> {
    const known = relations.get(name);
    if (known && Date.now() - known.at < WATCH_RELOAD_MS) return known.t;
    const row = await load(name);
    const { rows } = await db.adminQuery<{ name: string; type: string; udt: string; is_array: boolean }>(
      `SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
              CASE WHEN t.typelem <> 0 AND t.typlen = -1 THEN et.typname ELSE t.typname END AS udt, t.typelem <> 0 AND t.typlen = -1 AS is_array
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type et ON et.oid = t.typelem
        WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`,
      [`${q(VIEW_SCHEMA)}.${q(name)}`],
    );
    const columns = rows.map((c) => ({ name: c.name, type: c.type, udt: c.udt, isArray: c.is_array, nullable: true, hasDefault: false, generated: false, maxLength: null, enum: null }));
    // Keyset paging needs a total order: the unique key when there is one, else every orderable column.
    const key = row.unique_key ?? columns.filter((c) => !c.isArray && c.udt !== 'json').map((c) => c.name);
    const t: TableInfo = {
      schema: VIEW_SCHEMA,
      name,
      columns,
      columnMap: new Map(columns.map((c) => [c.name, c])),
      primaryKey: key,
      foreignKeys: [],
      referencedBy: [],
      indexes: [],
      checks: [],
      rls: { enabled: false, forced: false },
      hasTenantId: true,
      qualified: `${q(VIEW_SCHEMA)}.${q(name)}`,
      comment: null,
    };
    relations.set(name, { at: Date.now(), t });
    return t;
  }

  /** A read of an unpopulated view (refresh pending) is a 409, not a 500. */
  const populatedOr = async <T>(fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      if ((err as { code?: string }).code === '55000') {
        throw conflict('VIEW_NOT_POPULATED', 'the view has not been refreshed yet; try again once its first refresh job completes');
      }
      throw err;
    }
  };

  async function watchers() {
    if (!watched || Date.now() - watched.at > WATCH_RELOAD_MS) {
      const { rows } = await db.adminQuery<{ name: string; after_writes_to: string[]; debounce_ms: number }>(
        "SELECT name, after_writes_to, debounce_ms FROM strata.views WHERE after_writes_to <> '{}'",
      );
      watched = { at: Date.now(), views: rows.map((r) => ({ name: r.name, tables: r.after_writes_to, debounce: r.debounce_ms })) };
    }
    return watched.views;
  }

  function validate(input: ViewInput) {
    if (!NAME.test(input.name)) throw badRequest('INVALID_VIEW_NAME', `view name ${JSON.stringify(input.name)} must match ${NAME.source}`);
    const r = input.refresh ?? {};
    if (r.debounce !== undefined && (!Number.isInteger(r.debounce) || r.debounce < 0 || r.debounce > 86_400_000)) {
      throw badRequest('INVALID_DEBOUNCE', 'refresh.debounce must be a whole number of milliseconds between 0 and 86400000');
    }
    if (r.cron !== undefined && !/^\S+( \S+){4,5}$/.test(r.cron.trim())) {
      throw badRequest('INVALID_CRON', `refresh.cron ${JSON.stringify(r.cron)} is not a cron pattern (5 or 6 fields)`);
    }
  }

  const service = {
    relation,

    /** Create the view (empty), its barrier view and its schedule, then enqueue its first refresh. */
    async create(ctx: RequestContext, input: ViewInput): Promise<{ view: ViewView; job_id: string | null }> {
      validate(input);
      const stmt = await guardStatement(input.sql);
      if (stmt.paramCount > 0) throw badRequest('INVALID_VIEW_SQL', 'a view definition cannot take parameters ($1...)');
      const tables = await schema.tables();
      const watch = [...new Set(input.refresh?.after_writes_to ?? [])];
      for (const t of watch) {
        if (!tables.has(t)) throw badRequest('UNKNOWN_TABLE', `refresh.after_writes_to names ${JSON.stringify(t)}, which is not an exposed table`, { table: t });
      }
      const matview = `${q(MATVIEW_SCHEMA)}.${q(input.name)}`;
      const barrier = `${q(VIEW_SCHEMA)}.${q(input.name)}`;
      const cron = input.refresh?.cron?.trim();
      await db.admin.with(async (c) => {
        await c.query('BEGIN');
        try {
          const exists = await c.query('SELECT 1 FROM strata.views WHERE name = $1', [input.name]);
          if (exists.rowCount) throw conflict('VIEW_EXISTS', `view ${input.name} already exists`);
          await c.query(`CREATE MATERIALIZED VIEW ${matview} AS ${stmt.text} WITH NO DATA`).catch((err: { code?: string; message: string }) => {
            if (err.code === '42P07') throw conflict('VIEW_EXISTS', `a relation named ${input.name} already exists`);
            throw badRequest('INVALID_VIEW_SQL', `the view SQL does not run: ${err.message}`, { sqlstate: err.code });
          });
          const cols = await c.query<{ name: string }>(
            'SELECT attname AS name FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped',
            [`${MATVIEW_SCHEMA}.${input.name}`],
          );
          const names = new Set(cols.rows.map((r) => r.name));
          if (!names.has('tenant_id')) throw badRequest('VIEW_NEEDS_TENANT_ID', 'the view must have a tenant_id column: tenants read it through the tenant filter');
          if (deps.compliance) await checkViewLineage(c, input.name, stmt.text, await deps.compliance.policy());
          if (input.unique_key?.length) {
            for (const k of input.unique_key) {
              if (!names.has(k)) throw badRequest('UNKNOWN_COLUMN', `unique_key column ${JSON.stringify(k)} is not a column of the view`, { column: k });
            }
            await c.query(`CREATE UNIQUE INDEX ${q(`${input.name}_unique_key`)} ON ${matview} (${input.unique_key.map(q).join(', ')})`);
          }
          await c.query(
            `CREATE VIEW ${barrier} WITH (security_barrier) AS SELECT * FROM ${matview} WHERE tenant_id::text = NULLIF(current_setting('strata.tenant_id', true), '')`,
          );
          await c.query(`GRANT SELECT ON ${barrier} TO strata_tenant`);
          await c.query(
            'INSERT INTO strata.views (name, sql, refresh_cron, after_writes_to, debounce_ms, unique_key, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)',
            [input.name, stmt.text, cron ?? null, watch, input.refresh?.debounce ?? 1000, input.unique_key?.length ? input.unique_key : null, ctx.actor],
          );
          if (cron) {
            const data: JobData<'refresh-view'> = { view: input.name, reason: 'cron', tenantId: null, actor: 'system:scheduler', requestId: `schedule:${schedulerId(input.name)}` };
            await bounded(
              deps.jobs().queues.views.upsertJobScheduler(schedulerId(input.name), { pattern: cron }, {
                name: 'refresh-view',
                data,
                opts: { attempts: DEFAULT_JOB_OPTIONS.attempts, backoff: DEFAULT_JOB_OPTIONS.backoff, removeOnComplete: { count: 100 }, removeOnFail: { count: 500 } },
              }),
            ).catch((err: unknown) => {
              throw badRequest('INVALID_CRON', `refresh.cron ${JSON.stringify(cron)} was refused: ${(err as Error).message}`);
            });
          }
          await c.query('COMMIT');
        } catch (err) {
          await c.query('ROLLBACK').catch(() => undefined);
          throw err;
        }
      });
      watched = undefined;
      relations.delete(input.name);
      log.info({ view: input.name, actor: ctx.actor }, 'materialized view created');
      // The view exists now; when the queue is down its first refresh waits for a manual one (job_id null).
      const job_id = await deps
        .jobs()
        .enqueue(ctx, 'refresh-view', { view: input.name, reason: 'created' })
        .then((j) => j.job_id)
        .catch((err: unknown) => {
          log.warn({ err, view: input.name }, 'view created but its first refresh could not be enqueued; refresh it with POST /v1/admin/views/{name}/refresh');
          return null;
        });
      return { view: present(await load(input.name)), job_id };
    },

    async list(): Promise<ViewView[]> {
      const { rows } = await db.adminQuery<ViewRow>(`${SELECT_VIEWS} ORDER BY v.name`);
      return rows.map(present);
    },

    async get(name: string): Promise<ViewView> {
      return present(await load(name));
    },

    async remove(name: string): Promise<void> {
      await load(name);
      await db.admin.with(async (c) => {
        await c.query('BEGIN');
        try {
          await c.query(`DROP VIEW IF EXISTS ${q(VIEW_SCHEMA)}.${q(name)}`);
          await c.query(`DROP MATERIALIZED VIEW IF EXISTS ${q(MATVIEW_SCHEMA)}.${q(name)}`);
          await c.query('DELETE FROM strata.views WHERE name = $1', [name]);
          await c.query('COMMIT');
        } catch (err) {
          await c.query('ROLLBACK').catch(() => undefined);
          throw err;
        }
      });
      relations.delete(name);
      watched = undefined;
      const queue = deps.jobs().queues.views;
      await bounded(Promise.all([queue.removeJobScheduler(schedulerId(name)), queue.remove(debounceJobId(name))])).catch((err: unknown) =>
        log.warn({ err, view: name }, 'view dropped; its schedule or pending refresh could not be removed (a job for a dropped view does nothing)'),
      );
      log.info({ view: name }, 'materialized view dropped');
    },

    /** Enqueue a refresh now (202 with the job id). */
    async refresh(ctx: RequestContext, name: string): Promise<{ job_id: string }> {
      await load(name);
      return deps.jobs().enqueue(ctx, 'refresh-view', { view: name, reason: 'manual' });
    },

    /** Rows of the view for the caller's tenant, with the rows-API syntax. */
    async rows(ctx: RequestContext, name: string, qs: QueryString): Promise<string> {
      const t = await relation(name);
      return populatedOr(() => deps.rows.listTable(ctx, t, qs));
    },

    async timeseries(ctx: RequestContext, name: string, qs: QueryString) {
      const t = await relation(name);
      return populatedOr(() => deps.timeseries.relation(ctx, t, qs));
    },

    /** Write hook: mark watching views written and schedule their debounced refresh. */
    async afterWrites(_ctx: RequestContext, tables: ReadonlySet<string>): Promise<void> {
      const hit = (await watchers()).filter((v) => v.tables.some((t) => tables.has(t)));
      if (!hit.length) return;
      await db.adminQuery('UPDATE strata.views SET last_write_at = clock_timestamp() WHERE name = ANY($1)', [hit.map((v) => v.name)]);
      const queue = deps.jobs().queues.views;
      await Promise.all(
        hit.map(async (v) => {
          const data: JobData<'refresh-view'> = { view: v.name, reason: 'writes', tenantId: null, actor: 'system:views', requestId: `debounce:${v.name}` };
          try {
            // Same jobId while one is pending: the burst collapses into this one delayed job.
            await bounded(queue.add('refresh-view', data, { jobId: debounceJobId(v.name), delay: v.debounce, attempts: 3, backoff: DEFAULT_JOB_OPTIONS.backoff, removeOnComplete: true, removeOnFail: true }));
          } catch (err) {
            log.warn({ err: { message: (err as Error).message }, view: v.name }, 'could not schedule the refresh of a view after a write (queue unavailable); the view stays stale until its next refresh');
          }
        }),
      );
    },
  } satisfies WriteListener & Record<string, unknown>;
  return service;
}

export type ViewsService = ReturnType<typeof createViewsService>;
