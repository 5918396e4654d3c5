/**
 * Search indexes (SPEC 10): create (a job on the `search` queue), list, read, drop. The indexed
 * tables are shared by every tenant (one table, rows split by RLS), and their DDL changes the table
 * for all of them, so creating and dropping is for platform_admin; tenant admins may read.
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { ErrorBody, errorResponses } from '../../schemas/common.js';
import { WEIGHTS } from '../../../services/search/index.js';

const tags = ['search'];
const Weight = Type.Union(WEIGHTS.map((w) => Type.Literal(w)));
const Column = Type.Object({ name: Type.String({ minLength: 1, maxLength: 63 }), weight: Weight }, { additionalProperties: false });
const Vector = Type.Object({ column: Type.String({ minLength: 1, maxLength: 63 }), dimensions: Type.Integer({ minimum: 1, maximum: 16000 }) }, { additionalProperties: false });
const IndexView = Type.Object({
  table: Type.String(),
  columns: Type.Array(Type.Object({ name: Type.String(), weight: Weight })),
  language: Type.String(),
  maintenance: Type.Union([Type.Literal('generated'), Type.Literal('trigger')]),
  vector: Type.Union([Type.Object({ column: Type.String(), dimensions: Type.Integer() }), Type.Null()]),
  status: Type.Union(['building', 'ready', 'failed', 'dropping'].map((s) => Type.Literal(s))),
  job_id: Type.Union([Type.String(), Type.Null()]),
  error: Type.Union([Type.String(), Type.Null()]),
  created_by: Type.String(),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
});
const CreateBody = Type.Object(
  {
    table: Type.String({ minLength: 1, maxLength: 63 }),
    columns: Type.Optional(Type.Array(Column, { minItems: 1, maxItems: 16 })),
    language: Type.Optional(Type.String({ minLength: 1, maxLength: 63, description: 'A text search configuration (pg_ts_config), default english' })),
    vector: Type.Optional(Vector),
  },
  { additionalProperties: false },
);
const TableParams = Type.Object({ table: Type.String({ minLength: 1, maxLength: 63 }) });

export default async function searchIndexRoutes(app: FastifyInstance) {
  app.post(
    '/',
    {
      config: { capability: 'platform' },
      schema: { tags, body: CreateBody, response: { 202: Type.Object({ data: IndexView, job_id: Type.String() }), 409: ErrorBody, ...errorResponses } },
    },
    async (request, reply) => {
      const { index, job_id } = await app.services.search.createIndex(request.ctx, request.body as Parameters<typeof app.services.search.createIndex>[1], app.jobs);
      return reply.code(202).send({ data: index, job_id });
    },
  );
  app.get('/', { config: { capability: 'admin' }, schema: { tags, response: { 200: Type.Object({ data: Type.Array(IndexView) }), ...errorResponses } } }, async () => ({
    data: await app.services.search.listIndexes(),
  }));
  app.get('/:table', { config: { capability: 'admin' }, schema: { tags, params: TableParams, response: { 200: Type.Object({ data: IndexView }), ...errorResponses } } }, async (request) => ({
    data: await app.services.search.getIndex((request.params as { table: string }).table),
  }));
  app.delete(
    '/:table',
    { config: { capability: 'platform' }, schema: { tags, params: TableParams, response: { 202: Type.Object({ job_id: Type.String() }), 409: ErrorBody, ...errorResponses } } },
    async (request, reply) => reply.code(202).send(await app.services.search.dropIndex(request.ctx, (request.params as { table: string }).table, app.jobs)),
  );
}
