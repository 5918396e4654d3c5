/**
 * Time partitioning (SPEC 11), platform_admin only: put a range-partitioned table under time
 * partitioning (pg_partman on a single server, Citus on a cluster) and list the partition sets.
 * The scheduled `maintain-partitions` job keeps partitions ahead and drops them past retention.
 */
import type { FastifyInstance } from 'fastify';
import { Type, type Static } from '@sinclair/typebox';
import { errorResponses } from '../../schemas/common.js';

const tags = ['partitions'];
const Ident = Type.String({ minLength: 1, maxLength: 63, pattern: '^[A-Za-z_][A-Za-z0-9_]*$' });
const CreateBody = Type.Object(
  {
    table: Ident,
    column: Ident,
    interval: Type.String({ minLength: 1, maxLength: 20, description: "one of '1 hour', '1 day', '1 week', '1 month'" }),
    premake: Type.Optional(Type.Integer({ minimum: 1, maximum: 366, description: 'partitions kept ahead of now (default 4)' })),
    retention: Type.Optional(Type.Union([Type.String({ minLength: 1, maxLength: 20 }), Type.Null()], { description: 'e.g. "30 days"; null keeps every partition' })),
    start: Type.Optional(Type.String({ minLength: 1, maxLength: 40, description: 'start of the first partition (ISO date), for backfills; default now' })),
  },
  { additionalProperties: false },
);
const Partition = Type.Object({ name: Type.String(), from: Type.Union([Type.String(), Type.Null()]), to: Type.Union([Type.String(), Type.Null()]), default: Type.Boolean() });
const PartitionSet = Type.Object({
  table: Type.String(),
  column: Type.String(),
  engine: Type.Union([Type.Literal('pg_partman'), Type.Literal('citus')]),
  interval: Type.String(),
  premake: Type.Integer(),
  retention: Type.Union([Type.String(), Type.Null()]),
  created_at: Type.String(),
  maintained_at: Type.Union([Type.String(), Type.Null()]),
  last_error: Type.Union([Type.String(), Type.Null()]),
  partitions: Type.Array(Partition),
});

export default async function partitionRoutes(app: FastifyInstance) {
  const platform = { capability: 'platform' as const };
  app.get('/', { config: platform, schema: { tags, response: { 200: Type.Object({ data: Type.Array(PartitionSet) }), ...errorResponses } } }, async () => ({
    data: await app.services.partitions.list(),
  }));

  app.post(
    '/',
    { config: platform, schema: { tags, body: CreateBody, response: { 201: Type.Object({ data: PartitionSet }), ...errorResponses } } },
    async (request, reply) => reply.code(201).send({ data: await app.services.partitions.create(request.body as Static<typeof CreateBody>) }),
  );
}
