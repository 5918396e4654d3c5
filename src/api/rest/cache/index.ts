/** Result cache opt-in per table (platform_admin): list, enable, disable. */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { errorResponses } from '../../schemas/common.js';

const tags = ['cache'];
const Table = Type.Object({ table: Type.String({ minLength: 1, maxLength: 63 }) });
const Entry = Type.Object({
  table: Type.String(),
  source: Type.Union([Type.Literal('config'), Type.Literal('admin')], { description: 'CACHE_TABLES or this API' }),
  enabled_by: Type.Union([Type.String(), Type.Null()]),
  enabled_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});

export default async function cacheRoutes(app: FastifyInstance) {
  const platform = { capability: 'platform' as const };
  app.get('/tables', { config: platform, schema: { tags, response: { 200: Type.Object({ data: Type.Array(Entry) }), ...errorResponses } } }, async () => ({
    data: await app.services.cache.listTables(),
  }));
  app.put('/tables/:table', { config: platform, schema: { tags, params: Table, response: { 204: Type.Null(), ...errorResponses } } }, async (request, reply) => {
    await app.services.cache.enable(request.ctx, (request.params as { table: string }).table);
    return reply.code(204).send();
  });
  app.delete('/tables/:table', { config: platform, schema: { tags, params: Table, response: { 204: Type.Null(), ...errorResponses } } }, async (request, reply) => {
    const removed = await app.services.cache.disable((request.params as { table: string }).table);
    if (!removed) return reply.code(404).send({ error: { code: 'NOT_OPTED_IN', message: 'the table is not opted in through this API' } });
    return reply.code(204).send();
  });
}
