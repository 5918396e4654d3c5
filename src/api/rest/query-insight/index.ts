/**
 * Query insight (prefix /v1/admin): the slow-query log, pg_stat_statements' top statements,
 * EXPLAIN with a summary, and index advice (src/services/query-insight/*).
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { ErrorBody, errorResponses } from '../../schemas/common.js';
import { MAX_PARAMS } from '../../../services/data/index.js';
import type { ExplainInput } from '../../../services/query-insight/index.js';
import type { TopOrder } from '../../../services/query-insight/index.js';

const SlowQuery = Type.Object({
  id: Type.String({ description: 'Redis stream id (time-ordered)' }),
  at: Type.String({ format: 'date-time' }),
  sql: Type.String({ description: 'Normalised by PostgreSQL’s parser: every value is a $n placeholder' }),
  fingerprint: Type.Union([Type.String(), Type.Null()]),
  duration_ms: Type.Number(),
  rows: Type.Union([Type.Integer(), Type.Null()]),
  tenant: Type.Union([Type.String(), Type.Null()]),
  request_id: Type.String(),
  route: Type.Union([Type.String(), Type.Null()]),
  actor: Type.String(),
});

const TopQuery = Type.Object({
  queryid: Type.String(),
  query: Type.String(),
  calls: Type.Number(),
  total_ms: Type.Number(),
  mean_ms: Type.Number(),
  rows: Type.Number(),
  shared_blks_hit: Type.Number(),
  shared_blks_read: Type.Number(),
});

const ExplainBody = Type.Object(
  {
    sql: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 100_000,
        description: 'One read-only statement, as for POST /v1/sql',
      }),
    ),
    params: Type.Optional(
      Type.Array(Type.Unknown(), { maxItems: MAX_PARAMS, description: 'Values of $1, $2...' }),
    ),
    analyze: Type.Optional(
      Type.Boolean({
        description: 'EXPLAIN (ANALYZE, BUFFERS): runs the statement, in a transaction that is rolled back',
      }),
    ),
    table: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 63,
        description: 'Instead of sql: explain a rows-API read of this table',
      }),
    ),
    query: Type.Optional(
      Type.String({
        maxLength: 8000,
        description: 'The rows-API query string, e.g. status=eq.active&order=id.desc',
      }),
    ),
  },
  { additionalProperties: false },
);

const ExplainResult = Type.Object({
  sql: Type.String(),
  analyzed: Type.Boolean(),
  plan: Type.Unknown({ description: 'EXPLAIN (FORMAT JSON) output; for a tenant role without row counts, costs, widths or buffers (see redacted)' }),
  redacted: Type.Boolean({
    description:
      'true for tenant roles: planner statistics are computed over every tenant, so row estimates, costs, widths, actual and removed row counts and buffer counts are left out of the plan and the summary; platform_admin gets the full plan',
  }),
  summary: Type.Object({
    total_cost: Type.Union([Type.Number(), Type.Null()]),
    seq_scans_on_large_tables: Type.Array(
      Type.Object({
        relation: Type.String(),
        table_rows: Type.Union([Type.Number(), Type.Null()]),
        filter: Type.Union([Type.String(), Type.Null()]),
      }),
    ),
    costliest_node: Type.Union([Type.Object({
      node_type: Type.String(),
      relation: Type.Union([Type.String(), Type.Null()]),
      total_cost: Type.Number(),
      self_cost: Type.Number(),
    }), Type.Null()], { description: 'null when redacted' }),
    misestimates: Type.Union([
      Type.Array(
        Type.Object({
          node_type: Type.String(),
          relation: Type.Union([Type.String(), Type.Null()]),
          estimated_rows: Type.Number(),
          actual_rows: Type.Number(),
          factor: Type.Number(),
        }),
      ),
      Type.Null(),
    ]),
    planning_time_ms: Type.Union([Type.Number(), Type.Null()]),
    execution_time_ms: Type.Union([Type.Number(), Type.Null()]),
  }),
});

const Cost = Type.Union([Type.Number(), Type.Null()], { description: 'Planner cost; null when redacted' });
const IndexAdvice = Type.Object({
  hypopg: Type.Literal('available'),
  redacted: Type.Boolean({
    description:
      'true for tenant roles: planner costs are computed over every tenant, so cost_before/cost_after are null and suggestions are ordered by how often their queries ran; platform_admin gets the costs',
  }),
  queries_analyzed: Type.Integer(),
  suggestions: Type.Array(
    Type.Object({
      table: Type.String(),
      columns: Type.Array(Type.String()),
      statement: Type.String({ description: 'CREATE INDEX CONCURRENTLY ...' }),
      cost_before: Cost,
      cost_after: Cost,
      queries: Type.Array(
        Type.Object({
          sql: Type.String(),
          occurrences: Type.Integer(),
          cost_before: Cost,
          cost_after: Cost,
        }),
      ),
    }),
  ),
  skipped: Type.Array(Type.Object({ sql: Type.String(), reason: Type.String() })),
});

export default async function queryInsightRoutes(app: FastifyInstance) {
  const insight = app.services.insight;

  app.get(
    '/queries/slow',
    {
      config: { capability: 'admin' },
      schema: {
        tags: ['query insight'],
        summary: 'Slow queries (over SLOW_QUERY_MS): your tenant’s, or every tenant’s for a platform admin',
        querystring: Type.Object(
          {
            route: Type.Optional(
              Type.String({
                minLength: 1,
                maxLength: 500,
                description: 'Only queries of this route pattern, e.g. /v1/sql/',
              }),
            ),
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ data: Type.Array(SlowQuery) }), ...errorResponses },
      },
    },
    async (request) => {
      const q = request.query as { route?: string; limit?: number };
      return { data: await insight.slow(request.ctx, { route: q.route, limit: q.limit ?? 100 }) };
    },
  );

  app.get(
    '/queries/top',
    {
      config: { capability: 'platform' },
      schema: {
        tags: ['query insight'],
        summary: 'The costliest statements of this database, from pg_stat_statements',
        querystring: Type.Object(
          {
            order: Type.Optional(
              Type.Union([Type.Literal('total'), Type.Literal('mean'), Type.Literal('calls')], {
                default: 'total',
              }),
            ),
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 20 })),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ data: Type.Array(TopQuery) }), ...errorResponses, 501: ErrorBody },
      },
    },
    async (request) => {
      const q = request.query as { order?: TopOrder; limit?: number };
      return { data: await insight.top({ order: q.order ?? 'total', limit: q.limit ?? 20 }) };
    },
  );

  app.post(
    '/explain',
    {
      config: { capability: 'admin' },
      schema: {
        tags: ['query insight'],
        summary: 'EXPLAIN one read-only statement (or rows-API read) in your tenant; ANALYZE is rolled back',
        body: ExplainBody,
        response: { 200: ExplainResult, ...errorResponses, 504: ErrorBody },
      },
    },
    async (request) => insight.explain(request.ctx, request.body as ExplainInput),
  );

  app.get(
    '/index-advice',
    {
      config: { capability: 'admin' },
      schema: {
        tags: ['query insight'],
        summary:
          'Indexes that would at least halve the cost of logged slow queries (HypoPG hypothetical indexes)',
        response: { 200: IndexAdvice, ...errorResponses, 501: ErrorBody },
      },
    },
    async (request) => insight.indexAdvice(request.ctx),
  );
}
