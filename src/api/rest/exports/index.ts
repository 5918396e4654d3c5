/**
 * Exports: streamed (GET /v1/tables/{table}/export, POST /v1/sql/export) and as jobs
 * (POST /v1/exports, then GET /v1/jobs/{id}, its /events, and GET /v1/exports/{id}/file).
 * Registered without a prefix: the paths live under three resources.
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import { Type } from '@sinclair/typebox';
import { CAN } from '../../../domain.js';
import { badRequest, forbidden } from '../../../errors.js';
import { ErrorBody, errorResponses } from '../../schemas/common.js';
import { CONTENT_TYPES, createExportService, type ExportPlan, type QueryString, type SqlExportInput } from '../../../services/exports/index.js';
import { MAX_PARAMS } from '../../../services/data/index.js';

const tags = ['exports'];
const Format = Type.String({ description: 'csv (header row, RFC 4180 quoting; NULL is an empty unquoted field, an empty string is "") or ndjson (one JSON object per line)' });
const TimeoutMs = Type.Integer({ minimum: 1, description: 'statement_timeout of the export (default EXPORT_TIMEOUT_MS, at most EXPORT_MAX_TIMEOUT_MS)' });
const Params = Type.Array(Type.Unknown(), { maxItems: MAX_PARAMS, description: 'Values of $1, $2...' });
const streamed = {
  200: Type.String({ description: 'The rows, streamed (text/csv or application/x-ndjson) with Content-Disposition: attachment' }),
  ...errorResponses,
  504: ErrorBody,
};
const ExportJobBody = Type.Object(
  {
    table: Type.Optional(Type.String({ minLength: 1, maxLength: 63, description: 'Export this table (give table or sql)' })),
    sql: Type.Optional(Type.String({ minLength: 1, maxLength: 100_000, description: 'Export this read-only statement (analyst, admin)' })),
    params: Type.Optional(Params),
    format: Format,
    filters: Type.Optional(
      Type.Record(Type.String(), Type.Union([Type.String(), Type.Array(Type.String())]), {
        description: 'Rows API parameters of a table export: select, order, limit and column=op.value filters',
      }),
    ),
    timeout_ms: Type.Optional(TimeoutMs),
  },
  { additionalProperties: false },
);

/** Aborted when the client goes away before the response has finished (before the first row too). */
function clientGone(reply: FastifyReply): AbortSignal {
  const abort = new AbortController();
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) abort.abort();
  });
  return abort.signal;
}

function sendPlan(reply: FastifyReply, plan: ExportPlan) {
  return reply
    .header('content-type', CONTENT_TYPES[plan.format])
    .header('content-disposition', `attachment; filename="${plan.filename}"`)
    .header('cache-control', 'no-store');
}

export default async function exportRoutes(app: FastifyInstance) {
  const exports = createExportService({ db: app.db, schema: app.services.schema, config: app.config, log: app.log, exportSlot: (tenantId) => app.limits.exportSlot(tenantId) });

  app.get(
    '/v1/tables/:table/export',
    {
      config: { capability: 'read' },
      schema: {
        tags,
        summary: 'Stream every matching row of a table as CSV or NDJSON',
        params: Type.Object({ table: Type.String({ minLength: 1, maxLength: 63 }) }),
        querystring: Type.Object(
          { format: Type.Optional(Format), timeout_ms: Type.Optional(Type.String({ description: TimeoutMs.description })), select: Type.Optional(Type.String()), order: Type.Optional(Type.String()), limit: Type.Optional(Type.String({ pattern: '^[0-9]+$' })) },
          { additionalProperties: true, description: 'The rows API syntax: select (embeds in ndjson only), order, limit, and column=op.value filters' },
        ),
        produces: ['text/csv', 'application/x-ndjson'],
        response: streamed,
      },
    },
    async (request, reply) => {
      const { table } = request.params as { table: string };
      const qs = request.query as QueryString;
      const guard = await app.services.compliance.enforcement.guard(request.ctx);
      const plan = await exports.planTable(table, qs, qs['format'] ?? 'csv', qs['timeout_ms'], guard?.forExport());
      const body = await exports.stream(request.ctx, plan, clientGone(reply));
      return sendPlan(reply, plan).send(body);
    },
  );

  app.post(
    '/v1/sql/export',
    {
      config: { capability: 'sql' },
      schema: {
        tags,
        summary: 'Stream the whole result of one read-only SQL statement as CSV or NDJSON',
        body: Type.Object(
          { sql: Type.String({ minLength: 1, maxLength: 100_000 }), params: Type.Optional(Params), format: Type.Optional(Format), timeout_ms: Type.Optional(TimeoutMs) },
          { additionalProperties: false },
        ),
        produces: ['text/csv', 'application/x-ndjson'],
        response: streamed,
      },
    },
    async (request, reply) => {
      const input = request.body as Partial<SqlExportInput> & { sql: string };
      await app.services.compliance.enforcement.checkSql(input.sql, request.ctx.role);
      const plan = await exports.planSql({ ...input, format: input.format ?? 'csv' });
      const body = await exports.stream(request.ctx, plan, clientGone(reply));
      return sendPlan(reply, plan).send(body);
    },
  );

  app.post(
    '/v1/exports',
    {
      config: { capability: 'read' },
      schema: {
        tags,
        summary: 'Start an export job writing a file; follow it at /v1/jobs/{id}',
        body: ExportJobBody,
        response: { 202: Type.Object({ job_id: Type.String(), estimated_rows: Type.Integer() }), ...errorResponses, 504: ErrorBody },
      },
    },
    async (request, reply) => {
      const body = request.body as {
        table?: string;
        sql?: string;
        params?: unknown[];
        format: string;
        filters?: Record<string, string | string[]>;
        timeout_ms?: number;
      };
      const { ctx } = request;
      if ((body.table === undefined) === (body.sql === undefined)) {
        throw badRequest('EXPORT_SOURCE_REQUIRED', 'give exactly one of table or sql');
      }
      if (body.sql !== undefined && !(CAN.sql as readonly string[]).includes(ctx.role)) {
        throw forbidden('ROLE_FORBIDDEN', `role ${ctx.role} may not export SQL (needs one of ${CAN.sql.join(', ')})`);
      }
      if (body.sql === undefined && (body.params !== undefined)) throw badRequest('INVALID_EXPORT_PARAM', 'params go with sql, not with table');
      if (body.sql !== undefined && body.filters !== undefined) throw badRequest('INVALID_EXPORT_PARAM', 'filters go with table, not with sql');
      if (body.sql !== undefined) await app.services.compliance.enforcement.checkSql(body.sql, ctx.role);
      const guard = body.sql === undefined ? await app.services.compliance.enforcement.guard(ctx) : undefined;
      const plan =
        body.sql !== undefined
          ? await exports.planSql({ sql: body.sql, params: body.params, format: body.format, timeout_ms: body.timeout_ms })
          : await exports.planTable(body.table ?? '', body.filters ?? {}, body.format, body.timeout_ms, guard?.forExport());
      // Nothing is enqueued for a statement the database refuses (unknown column, permissions...).
      const estimated = await exports.check(ctx, plan);
      const { job_id } = await app.jobs.enqueue(ctx, 'export', {
        format: plan.format,
        ...(body.sql !== undefined ? { sql: body.sql, params: body.params ?? [] } : { table: body.table, filters: body.filters ?? {} }),
        ...(body.timeout_ms !== undefined ? { timeout_ms: body.timeout_ms } : {}),
        role: ctx.role,
      });
      return reply.code(202).header('location', `/v1/jobs/${job_id}`).send({ job_id, estimated_rows: estimated });
    },
  );

  app.get(
    '/v1/exports/:id/file',
    {
      config: { capability: 'read' },
      schema: {
        tags,
        summary: 'Download the file of a completed export job',
        params: Type.Object({ id: Type.String({ description: 'Job id: `exports-<uuid>`' }) }),
        produces: ['text/csv', 'application/x-ndjson'],
        response: { 200: Type.String({ description: 'The file' }), ...errorResponses, 409: ErrorBody },
      },
    },
    async (request, reply) => {
      const job = await app.jobs.get(request.ctx, (request.params as { id: string }).id);
      const f = await exports.file(job);
      return reply
        .header('content-type', CONTENT_TYPES[f.format])
        .header('content-length', String(f.size))
        .header('content-disposition', `attachment; filename="${f.filename}"`)
        .send(f.stream);
    },
  );
}
