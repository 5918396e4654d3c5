/** `GET /v1/tables/{table}/timeseries`: bucketed aggregates with gap filling (src/services/analytics/timeseries.ts). */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { errorResponses } from '../../schemas/common.js';

const Query = Type.Object(
  {
    time: Type.String({ description: 'Date or timestamp column to bucket on' }),
    bucket: Type.String({ description: '<n>s, <n>m, <n>h, <n>d, <n>w (date_bin, aligned on from), month, quarter or year (date_trunc, UTC)' }),
    agg: Type.Optional(Type.String({ description: 'Comma-separated: count, count:<col>, sum:<col>, avg:<col>, min:<col>, max:<col> (or avg(col)); default count' })),
    group: Type.Optional(Type.String({ description: 'Up to 3 comma-separated columns' })),
    fill: Type.Optional(Type.String({ description: 'zero, null or previous: gap filling; without it only non-empty buckets are returned' })),
    from: Type.Optional(Type.String({ description: 'ISO 8601, inclusive' })),
    to: Type.Optional(Type.String({ description: 'ISO 8601, exclusive' })),
  },
  { additionalProperties: true, description: 'Any other parameter is a rows-API filter (column=op.value, or=(...))' },
);
export const Series = Type.Object({
  data: Type.Array(Type.Record(Type.String(), Type.Unknown()), { description: '{ bucket, group?, <agg>... } per bucket (and group)' }),
  meta: Type.Object({
    bucket: Type.String(),
    from: Type.Union([Type.String(), Type.Null()]),
    to: Type.Union([Type.String(), Type.Null()]),
    fill: Type.Union([Type.String(), Type.Null()]),
    buckets: Type.Integer(),
  }),
});

export default async function timeseriesRoutes(app: FastifyInstance) {
  app.get(
    '/:table/timeseries',
    { config: { capability: 'read' }, schema: { tags: ['tables'], params: Type.Object({ table: Type.String({ minLength: 1, maxLength: 63 }) }), querystring: Query, response: { 200: Series, ...errorResponses } } },
    async (request) => {
      const table = (request.params as { table: string }).table;
      const q = request.query as Record<string, string>;
      // an aggregate, a bucket or a group of a declared column the role reads masked would reveal it
      const guard = await app.services.compliance.enforcement.guard(request.ctx);
      if (guard?.table(table)) {
        const names = [q['time'], ...(q['group'] ?? '').split(','), ...[...(q['agg'] ?? '').matchAll(/[:(]\s*([A-Za-z_][A-Za-z0-9_$]*)/g)].map((m) => m[1])];
        for (const n of names) if (n) guard.checkAggregate(table, n.trim(), 'a time series');
        for (const k of Object.keys(q)) if (!['time', 'bucket', 'agg', 'group', 'fill', 'from', 'to', 'or', 'and'].includes(k)) guard.checkFilter(table, k, 'eq');
      }
      return app.services.timeseries.table(request.ctx, table, q);
    },
  );
}
