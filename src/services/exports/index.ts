/**
 * Exports: every row of a table query (rows API syntax) or of an analyst's SQL, as CSV or NDJSON,
 * streamed to an HTTP client (GET /v1/tables/{table}/export, POST /v1/sql/export) or written to a
 * file in the export store by a job (POST /v1/exports). One COPY per export (see copy.ts); plans are
 * validated before anything runs, so bad input is a 4xx and nothing is written.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { Config } from '../../config.js';
import type { Role } from '../../domain.js';
import type { Database } from '../../db/database.js';
import type { SessionContext, Tx } from '../../db/session.js';
import { AppError, badRequest, conflict, notFound } from '../../errors.js';
import type { SchemaRegistry } from '../data/index.js';
import { Params, checkEmbedPaths, rowJsonSql, type ColumnGuard } from '../data/index.js';
import { parseRowsQuery } from '../data/index.js';
import { wrapWithLimit } from '../data/index.js';
import { ANALYST_ROLE, createUnsafeRelations, guardWithParams, toSqlError } from '../data/index.js';
import { CHUNK_BYTES, runCopy, type CopyResult } from './copy.js';
import { rowCounter } from './row-counter.js';
import { checkFormat, exportFilename, inlineBuilderParams, inlineStatementParams, tableSelect, type ExportFormat, type ExportPlan } from './plan.js';

export { CONTENT_TYPES, EXPORT_FORMATS, type ExportFormat, type ExportPlan } from './plan.js';
export { rowCounter } from './row-counter.js';

export type QueryString = Record<string, string | string[] | undefined>;

export interface SqlExportInput {
  sql: string;
  params?: unknown[];
  format: string;
  timeout_ms?: number;
}

/** What an export job records as its result. */
export interface ExportFileResult {
  file: string;
  format: ExportFormat;
  rows: number;
  bytes: number;
}

export interface ExportServiceDeps {
  db: Database;
  schema: SchemaRegistry;
  config: Pick<Config, 'EXPORT_TIMEOUT_MS' | 'EXPORT_MAX_TIMEOUT_MS' | 'exportDir'> & Partial<Pick<Config, 'DB_STATEMENT_TIMEOUT_MS' | 'COUNT_ESTIMATE_CAP'>>;
  log: Pick<Logger, 'info' | 'warn'>;
  /**
   * A tenant's streamed-export slot (src/services/limits): returns its release, or throws 429
   * TENANT_CONCURRENCY_LIMIT when the tenant already runs its limit. Absent: no limit.
   */
  exportSlot?: (tenantId: string | null) => () => void;
}

/** Thrown by writeFile when the export was stopped (job cancelled): the partial file is kept. */
export class ExportAborted extends Error {
  constructor(
    readonly partialFile: string,
    readonly rows: number,
    options?: { cause?: unknown },
  ) {
    super('export stopped before the end', options);
    this.name = 'ExportAborted';
  }
}

/** Parameters of the rows syntax that make no sense for an export. */
const NOT_FOR_EXPORT = ['cursor', 'count'];
const RESERVED = new Set(['format', 'timeout_ms']);
export function createExportService(deps: ExportServiceDeps) {
  const { db, schema, config, log } = deps;
  const unsafeRelations = createUnsafeRelations(db);

  function timeoutOf(given: unknown): number {
    if (given === undefined || given === '') return Math.min(config.EXPORT_TIMEOUT_MS || config.EXPORT_MAX_TIMEOUT_MS, config.EXPORT_MAX_TIMEOUT_MS);
    const n = typeof given === 'number' ? given : typeof given === 'string' && /^\d{1,10}$/.test(given) ? Number(given) : NaN;
    if (!Number.isInteger(n) || n < 1 || n > config.EXPORT_MAX_TIMEOUT_MS) {
      throw badRequest('INVALID_TIMEOUT', `timeout_ms must be a whole number of milliseconds between 1 and ${config.EXPORT_MAX_TIMEOUT_MS}`, {
        max: config.EXPORT_MAX_TIMEOUT_MS,
      });
    }
    return n;
  }

  const countTimeoutMs = (config.DB_STATEMENT_TIMEOUT_MS ?? 0) > 0 ? (config.DB_STATEMENT_TIMEOUT_MS as number) : 15_000;
  const countCap = Math.max(1, Math.floor(config.COUNT_ESTIMATE_CAP ?? 10_000));

  /**
   * The estimated row count of a plan: the caller's rows counted exactly up to COUNT_ESTIMATE_CAP
   * (the planner's estimate is computed over every tenant's rows, so it would tell one tenant how
   * many rows the others hold). Runs the SELECT until the cap; analyst SQL is not counted (-1).
   */
  async function estimate(tx: Tx, plan: ExportPlan): Promise<number> {
    // Analyst SQL is not run a second time just to count it (that would double what an analyst can
    // make the database do): its size is unknown (-1) until the export ends.
    if (plan.analyst) return -1;
    const { rows } = await tx.query<{ n: string }>(`SELECT count(*)::bigint AS n FROM (SELECT FROM (${plan.select}) s LIMIT ${countCap}) c`);
    return Number(rows[0]?.n ?? 0);
  }

  const service = {
    /** Plan a table export from the rows API's query string (select, filters, order, limit). */
    async planTable(table: string, qs: QueryString, format: unknown, timeoutMs?: unknown, guard?: ColumnGuard): Promise<ExportPlan> {
      const fmt = checkFormat(format);
      const timeout = timeoutOf(timeoutMs);
      const t = await schema.table(table);
      const rest: QueryString = {};
      for (const [k, v] of Object.entries(qs)) {
        if (NOT_FOR_EXPORT.includes(k)) {
          throw badRequest('INVALID_EXPORT_PARAM', `${k} does not apply to an export (it returns every matching row)`, { param: k });
        }
        if (!RESERVED.has(k)) rest[k] = v;
      }
      const rq = parseRowsQuery(rest, { maxLimit: Number.MAX_SAFE_INTEGER });
      checkEmbedPaths(rq.select, rq.embeds);
      const params = new Params(guard);
      const tables = await schema.tables();
      const select = tableSelect(t, rq, fmt, params, () =>
        rowJsonSql(t, 't0', rq.select, { tables, params, embeds: rq.embeds, maxEmbedLimit: Number.MAX_SAFE_INTEGER, alias: 0 }),
      );
      return { format: fmt, select: inlineBuilderParams(select, params.values), analyst: false, timeoutMs: timeout, filename: exportFilename(t.name, fmt) };
    },

    /** Plan an analyst SQL export: the statement passes the same guard as POST /v1/sql. */
    async planSql(input: SqlExportInput): Promise<ExportPlan> {
      const fmt = checkFormat(input.format);
      const timeout = timeoutOf(input.timeout_ms);
      const params = input.params ?? [];
      const stmt = await guardWithParams(input.sql, params, unsafeRelations);
      // The guard proves `SELECT * FROM (<statement>) AS strata_sql LIMIT $n` is one query over that
      // one subquery; LIMIT NULL is no limit. NDJSON swaps only the target list.
      const wrapped = await wrapWithLimit(stmt, params.length + 1);
      const text = fmt === 'csv' ? wrapped.text : `SELECT to_json(strata_sql)::text FROM (\n${wrapped.text.slice(wrapped.prefixLength)}`;
      const select = await inlineStatementParams(text, [...params, null]);
      return { format: fmt, select, analyst: true, timeoutMs: timeout, filename: exportFilename('sql-export', fmt) };
    },

    /**
     * Check a plan against the database without running it (EXPLAIN in the tenant session): unknown
     * columns, type errors and permissions answer 4xx here. Returns the planner's row estimate.
     */
    async check(ctx: SessionContext, plan: ExportPlan): Promise<number> {
      try {
        return await db.withTenantStream(
          ctx,
          async (tx) => {
            if (plan.analyst) await tx.query(`SET LOCAL ROLE ${ANALYST_ROLE}`);
            // Errors of the statement (unknown column, permission) answer 4xx here, before anything runs.
            await tx.query(`EXPLAIN ${plan.select}`);
            // The count runs the statement: bounded by the request's own timeout. A count that does
            // not finish in it is reported as -1 (unknown), the job itself keeps the export's timeout.
            await tx.query(`SET LOCAL statement_timeout = ${Math.min(plan.timeoutMs, countTimeoutMs)}`);
            return tx.savepoint(async (s) => estimate(s, plan)).catch((err: unknown) => {
              if ((err as { code?: string }).code === '57014') return -1;
              throw err;
            });
          },
          { readOnly: true, statementTimeoutMs: plan.timeoutMs, releaseClean: plan.analyst === true },
        );
      } catch (err) {
        throw plan.analyst ? toSqlError(err, { prefixLength: Number.MAX_SAFE_INTEGER, offset: 0 }) : err;
      }
    },

    /**
     * Start streaming a plan. Resolves with the body once the first bytes are read (or the result
     * ended empty), so an error before then is a normal 4xx/5xx. An error after that destroys the
     * stream; the HTTP layer then aborts the connection (the client sees a truncated transfer).
     * `signal` (the client went away) stops the query at any point, before the first row included.
     */
    async stream(ctx: SessionContext, plan: ExportPlan, signal?: AbortSignal): Promise<Readable> {
      // held until the body is finished or destroyed, whichever way the export ends
      const release = deps.exportSlot?.(ctx.tenantId) ?? (() => undefined);
      const out = new PassThrough({ highWaterMark: CHUNK_BYTES });
      out.once('close', release);
      // The listener exists before anything can fail: a COPY that fails before the caller has the
      // stream (no connection, a bad plan) destroys `out` with the error, and an 'error' event with
      // no listener would end the process. The failure itself is reported through `done` below.
      out.on('error', () => undefined);
      const started = performance.now();
      let markStarted!: () => void;
      const firstByte = new Promise<void>((resolve) => (markStarted = resolve));
      const done = runCopy(db, ctx, plan, out, { onChunk: () => markStarted(), ...(signal ? { signal } : {}) });
      done.then(
        (r: CopyResult) =>
          log.info({ requestId: ctx.requestId, tenant: ctx.tenantId, format: plan.format, rows: r.rows, bytes: r.bytes, ms: Math.round(performance.now() - started) }, 'export streamed'),
        (err: unknown) => {
          log.warn({ requestId: ctx.requestId, tenant: ctx.tenantId, err }, 'export stopped');
          out.destroy(err instanceof Error ? err : new Error(String(err)));
        },
      );
      try {
        await Promise.race([firstByte, done]);
      } catch (err) {
        out.destroy();
        if (signal?.aborted) throw new AppError(499, 'CLIENT_CLOSED_REQUEST', 'the client closed the connection before the export started', undefined, { cause: err });
        throw plan.analyst ? toSqlError(err, { prefixLength: Number.MAX_SAFE_INTEGER, offset: 0 }) : err;
      }
      return out;
    },

    /**
     * Write a plan's rows to `<EXPORT_DIR>/<jobId>.<format>`: to a temporary name first, renamed when
     * complete, so a file under the final name is always whole. Stopped by `signal`, the partial file
     * is renamed `<jobId>.<format>.partial` and ExportAborted is thrown; a failure removes it.
     */
    async writeFile(
      ctx: SessionContext,
      plan: ExportPlan,
      o: { jobId: string; attempt: number; signal: AbortSignal; onProgress: (done: number, estimate: number, final: boolean) => Promise<void> },
    ): Promise<ExportFileResult> {
      await mkdir(config.exportDir, { recursive: true });
      const file = `${o.jobId}.${plan.format}`;
      const final = join(config.exportDir, file);
      const tmp = join(config.exportDir, `${file}.${o.attempt}-${process.pid}.tmp`);
      const counter = rowCounter(plan.format);
      let total = 0;
      let lastReport = 0;
      let reporting: Promise<void> = Promise.resolve();
      const report = () => {
        reporting = reporting.then(() => o.onProgress(counter.rows, total, false)).catch(() => undefined);
      };
      try {
        const r = await runCopy(db, ctx, plan, createWriteStream(tmp, { flags: 'w', highWaterMark: CHUNK_BYTES }), {
          signal: o.signal,
          before: async (tx) => {
            total = await estimate(tx, plan);
            report();
          },
          onChunk: (chunk) => {
            counter.push(chunk);
            if (Date.now() - lastReport >= 250) {
              lastReport = Date.now();
              report();
            }
          },
        });
        await reporting;
        await rename(tmp, final);
        await o.onProgress(r.rows, r.rows, true);
        return { file, format: plan.format, rows: r.rows, bytes: r.bytes };
      } catch (err) {
        await reporting;
        if (o.signal.aborted) {
          const partial = `${final}.partial`;
          await rename(tmp, partial).catch(() => undefined);
          throw new ExportAborted(`${file}.partial`, counter.rows, { cause: err });
        }
        await rm(tmp, { force: true });
        throw plan.analyst ? toSqlError(err, { prefixLength: Number.MAX_SAFE_INTEGER, offset: 0 }) : err;
      }
    },

    /** The finished file of an export job the caller may see (`job`: a JobView from JobsService.get). */
    async file(job: FinishedJob): Promise<{ stream: Readable; size: number; format: ExportFormat; filename: string }> {
      if (job.name !== 'export') throw notFound('EXPORT_NOT_FOUND', `job ${job.id} is not an export`);
      if (job.state !== 'completed') {
        throw conflict('EXPORT_NOT_READY', `export ${job.id} is ${job.state}; its file is available once it has completed`, { state: job.state });
      }
      const result = job.result as ExportFileResult | null;
      const format = checkFormat(result?.format);
      const path = join(config.exportDir, `${job.id}.${format}`);
      const st = await stat(path).catch(() => undefined);
      if (!st) throw notFound('EXPORT_FILE_GONE', `the file of export ${job.id} is no longer in the export store`);
      return { stream: createReadStream(path), size: st.size, format, filename: `${job.id}.${format}` };
    },
  };
  return service;
}

export type ExportService = ReturnType<typeof createExportService>;

/** What `file()` reads of a job's view (structural: the job contract depends on this capability, not the reverse). */
export interface FinishedJob {
  id: string;
  name: string;
  state: string;
  result: unknown;
}

/** Input of the export job (POST /v1/exports): what the worker plans again and writes. */
export interface ExportJobInput {
  format: ExportFormat;
  /** A table export: the table and its rows-API parameters (select, filters, order, limit). */
  table?: string;
  filters?: Record<string, string | string[]>;
  /** An analyst SQL export. */
  sql?: string;
  params?: unknown[];
  timeout_ms?: number;
  /** The requester's role (analyst SQL was allowed for it when enqueued). */
  role: Role;
}
export * from './plan.js';
