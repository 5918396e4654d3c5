/**
 * Tenant placement on a Citus cluster (SPEC 11), platform_admin only: the overview, and the long
 * operations as jobs on the `cluster` queue (follow them at /v1/jobs/{id}, progress over SSE).
 * On a single server every route answers 409 NOT_A_CLUSTER.
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { errorResponses } from '../../schemas/common.js';

const tags = ['cluster'];
const NodeRef = Type.Object(
  { host: Type.String({ minLength: 1, maxLength: 253, pattern: '^[A-Za-z0-9.:_-]+$' }), port: Type.Integer({ minimum: 1, maximum: 65535 }) },
  { additionalProperties: false },
);
const TenantParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 63, pattern: '^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$' }) });
const Placement = Type.Object({ tenant: Type.String(), shard_id: Type.Integer(), node: Type.Object({ host: Type.String(), port: Type.Integer() }), shared_with: Type.Integer() });
const Overview = Type.Object({
  mode: Type.Literal('cluster'),
  citus_version: Type.Union([Type.String(), Type.Null()]),
  nodes: Type.Array(
    Type.Object({
      id: Type.Integer(),
      host: Type.String(),
      port: Type.Integer(),
      role: Type.Union([Type.Literal('coordinator'), Type.Literal('worker')]),
      active: Type.Boolean(),
      shards: Type.Integer(),
      bytes: Type.Integer(),
      tenants: Type.Integer(),
    }),
  ),
  distributed_tables: Type.Array(Type.Object({ table: Type.String(), shards: Type.Integer(), bytes: Type.Integer() })),
  reference_tables: Type.Array(Type.String()),
  tenants: Type.Array(Placement),
});
const Accepted = Type.Object({ job_id: Type.String() });

export default async function clusterRoutes(app: FastifyInstance) {
  const platform = { capability: 'platform' as const };
  app.get('/cluster', { config: platform, schema: { tags, response: { 200: Type.Object({ data: Overview }), ...errorResponses } } }, async () => ({
    data: await app.services.cluster.overview(),
  }));

  app.get('/tenants/:id/placement', { config: platform, schema: { tags, params: TenantParams, response: { 200: Type.Object({ data: Placement }), ...errorResponses } } }, async (request) => ({
    data: await app.services.cluster.placement((request.params as { id: string }).id),
  }));

  app.post(
    '/tenants/:id/isolate',
    { config: platform, schema: { tags, params: TenantParams, response: { 202: Accepted, ...errorResponses } } },
    async (request, reply) => {
      const tenant = (request.params as { id: string }).id;
      await app.services.cluster.checkTenant(tenant);
      return reply.code(202).send(await app.jobs.enqueue(request.ctx, 'tenant-isolate', { tenant }));
    },
  );

  app.post(
    '/tenants/:id/move',
    {
      config: platform,
      schema: { tags, params: TenantParams, body: Type.Object({ node: NodeRef }, { additionalProperties: false }), response: { 202: Accepted, ...errorResponses } },
    },
    async (request, reply) => {
      const tenant = (request.params as { id: string }).id;
      const { node } = request.body as { node: { host: string; port: number } };
      await app.services.cluster.checkMove(tenant, node);
      return reply.code(202).send(await app.jobs.enqueue(request.ctx, 'tenant-move', { tenant, node }));
    },
  );

  app.post('/cluster/rebalance', { config: platform, schema: { tags, response: { 202: Accepted, ...errorResponses } } }, async (request, reply) => {
    await app.services.cluster.overview(); // 409 NOT_A_CLUSTER before anything is queued
    return reply.code(202).send(await app.jobs.enqueue(request.ctx, 'cluster-rebalance', {}));
  });

  app.post(
    '/cluster/nodes',
    {
      config: platform,
      schema: {
        tags,
        body: NodeRef,
        response: { 201: Type.Object({ data: Type.Object({ id: Type.Integer(), host: Type.String(), port: Type.Integer(), role: Type.String() }) }), ...errorResponses },
      },
    },
    async (request, reply) => {
      const { host, port } = request.body as { host: string; port: number };
      const node = await app.services.cluster.addNode(host, port);
      return reply.code(201).send({ data: { id: node.id, host: node.host, port: node.port, role: node.role } });
    },
  );
}
