/**
 * Tables and rows (first slice of the data API): the registry, a keyset-paged list and a read by
 * primary key. Every read runs in the caller's tenant session, so RLS decides what is visible.
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { errorResponses } from '../../schemas/common.js';
import { listRows, getRow, insertRow } from '../../../services/rows.js';

const config = { capability: 'read' as const };
const tags = ['tables'];
const TableParams = Type.Object({ table: Type.String({ minLength: 1, maxLength: 63 }) });

export default async function tableRoutes(app: FastifyInstance) {
  app.get(
    '/',
    {
      config,
      schema: {
        tags,
        response: {
          200: Type.Object({
            data: Type.Array(
              Type.Object({ name: Type.String(), primary_key: Type.Array(Type.String()), columns: Type.Array(Type.Object({ name: Type.String(), type: Type.String(), nullable: Type.Boolean() })) }),
            ),
          }),
          ...errorResponses,
        },
      },
    },
    async () => ({
      data: [...(await app.services.schema.tables()).values()].map((t) => ({ name: t.name, primary_key: t.primaryKey, columns: t.columns })),
    }),
  );
  app.get(
    '/:table/rows',
    {
      config,
      schema: {
        tags,
        params: TableParams,
        querystring: Type.Object({
          limit: Type.Integer({ minimum: 1, maximum: 1000, default: 50 }),
          cursor: Type.Optional(Type.String({ maxLength: 512 })),
        }),
        response: {
          200: Type.Object({ data: Type.Array(Type.Record(Type.String(), Type.Unknown())), next_cursor: Type.Union([Type.String(), Type.Null()]) }),
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const { table } = request.params as { table: string };
      const q = request.query as { limit: number; cursor?: string };
      return listRows(app.db, request.ctx, await app.services.schema.table(table), q);
    },
  );
  app.get(
    '/:table/rows/:pk',
    {
      config,
      schema: {
        tags,
        params: Type.Object({ table: Type.String({ minLength: 1, maxLength: 63 }), pk: Type.String({ minLength: 1, maxLength: 256 }) }),
        response: { 200: Type.Object({ data: Type.Record(Type.String(), Type.Unknown()) }), ...errorResponses },
      },
    },
    async (request) => {
      const { table, pk } = request.params as { table: string; pk: string };
      return { data: await getRow(app.db, request.ctx, await app.services.schema.table(table), pk) };
    },
  );
  app.post(
    '/:table/rows',
    {
      config: { capability: 'write' },
      schema: {
        tags,
        params: TableParams,
        body: Type.Record(Type.String(), Type.Unknown()),
        response: { 201: Type.Object({ data: Type.Record(Type.String(), Type.Unknown()) }), ...errorResponses },
      },
    },
    async (request, reply) => {
      const { table } = request.params as { table: string };
      const row = await insertRow(app.db, request.ctx, await app.services.schema.table(table), request.body as Record<string, unknown>);
      return reply.code(201).send({ data: row });
    },
  );
}
