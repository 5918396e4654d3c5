/**
 * Materialized views. Admin (platform_admin: a view spans every tenant): create, list with
 * staleness and last refresh, refresh as a job, drop. Reads (any tenant role): rows with the
 * rows-API syntax and time series, through the tenant filter.
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { ErrorBody, errorResponses } from '../../schemas/common.js';
import type { ViewInput } from '../../../services/analytics/index.js';

const tags = ['views'];
const Name = Type.Object({ name: Type.String({ minLength: 1, maxLength: 63 }) });
const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()]);
const View = Type.Object({
  name: Type.String(),
  sql: Type.String(),
  refresh: Type.Object({ cron: Nullable(Type.String()), after_writes_to: Type.Array(Type.String()), debounce: Type.Integer({ description: 'milliseconds' }) }),
  unique_key: Nullable(Type.Array(Type.String())),
  populated: Type.Boolean(),
  refresh_mode: Type.Union([Type.Literal('concurrently'), Type.Literal('plain')], { description: 'How the next refresh runs' }),
  created_by: Type.String(),
  created_at: Type.String({ format: 'date-time' }),
  last_refreshed_at: Nullable(Type.String({ format: 'date-time' })),
  last_refresh_ms: Nullable(Type.Integer()),
  last_refresh_mode: Nullable(Type.String()),
  last_job_id: Nullable(Type.String()),
  last_error: Nullable(Type.String()),
  last_write_at: Nullable(Type.String({ format: 'date-time' })),
  refresh_count: Type.Integer(),
  staleness_s: Nullable(Type.Number({ description: 'Seconds since the data was taken' })),
  stale: Type.Boolean({ description: 'Never refreshed, or a watched table was written since the last refresh began' }),
});
const CreateBody = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 63, description: 'lowercase identifier' }),
    sql: Type.String({ minLength: 1, maxLength: 100_000, description: 'One read-only SELECT that returns a tenant_id column' }),
    refresh: Type.Optional(
      Type.Object(
        {
          cron: Type.Optional(Type.String({ description: 'cron pattern (BullMQ job scheduler)' })),
          after_writes_to: Type.Optional(Type.Array(Type.String(), { maxItems: 50, description: 'Refresh after writes to these tables' })),
          debounce: Type.Optional(Type.Integer({ minimum: 0, maximum: 86_400_000, description: 'ms to wait after the first write of a burst' })),
        },
        { additionalProperties: false },
      ),
    ),
    unique_key: Type.Optional(Type.Array(Type.String(), { minItems: 1, maxItems: 16, description: 'Columns of a unique index: refreshes run CONCURRENTLY' })),
  },
  { additionalProperties: false },
);
const Accepted = Type.Object({ job_id: Type.String() });
const ReadQuery = Type.Object({}, { additionalProperties: true, description: 'select, order, limit, cursor, count and filters as in /v1/tables/{table}/rows' });
const Page = Type.Object({ data: Type.Array(Type.Record(Type.String(), Type.Unknown())), next_cursor: Nullable(Type.String()), total: Type.Optional(Type.Integer()) });

export default async function viewAdminRoutes(app: FastifyInstance) {
  const platform = { capability: 'platform' as const };
  app.post(
    '/',
    { config: platform, schema: { tags, body: CreateBody, response: { 201: Type.Object({ data: View, job_id: Nullable(Type.String({ description: 'The first refresh; null when the queue was unavailable' })) }), 409: ErrorBody, ...errorResponses } } },
    async (request, reply) => {
      const r = await app.services.views.create(request.ctx, request.body as ViewInput);
      return reply.code(201).send({ data: r.view, job_id: r.job_id });
    },
  );
  app.get('/', { config: platform, schema: { tags, response: { 200: Type.Object({ data: Type.Array(View) }), ...errorResponses } } }, async () => ({
    data: await app.services.views.list(),
  }));
  app.get('/:name', { config: platform, schema: { tags, params: Name, response: { 200: Type.Object({ data: View }), ...errorResponses } } }, async (request) => ({
    data: await app.services.views.get((request.params as { name: string }).name),
  }));
  app.post('/:name/refresh', { config: platform, schema: { tags, params: Name, response: { 202: Accepted, ...errorResponses } } }, async (request, reply) => {
    return reply.code(202).send(await app.services.views.refresh(request.ctx, (request.params as { name: string }).name));
  });
  app.delete('/:name', { config: platform, schema: { tags, params: Name, response: { 204: Type.Null(), ...errorResponses } } }, async (request, reply) => {
    await app.services.views.remove((request.params as { name: string }).name);
    return reply.code(204).send();
  });
}

export async function viewReadRoutes(app: FastifyInstance) {
  const read = { capability: 'read' as const };
  app.get('/:name/rows', { config: read, schema: { tags, params: Name, querystring: ReadQuery, response: { 200: Page, 409: ErrorBody, ...errorResponses } } }, async (request, reply) => {
    const body = await app.services.views.rows(request.ctx, (request.params as { name: string }).name, request.query as Record<string, string>);
    return reply.type('application/json; charset=utf-8').send(body);
  });
  app.get(
    '/:name/timeseries',
    { config: read, schema: { tags, params: Name, querystring: ReadQuery, response: { 200: Type.Unknown({ description: 'As /v1/tables/{table}/timeseries' }), 409: ErrorBody, ...errorResponses } } },
    async (request) => app.services.views.timeseries(request.ctx, (request.params as { name: string }).name, request.query as Record<string, string>),
  );
}
