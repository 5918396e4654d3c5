/**
 * Webhooks of the caller's tenant (admin): POST (returns the signing secret once), GET, PATCH,
 * DELETE, GET /{id}/deliveries (every attempt), POST /{id}/replay { after, until } (a job).
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { errorResponses } from '../../schemas/common.js';
import type { WebhookInput } from '../../../services/changes/index.js';

const tags = ['webhooks'];
const config = { capability: 'admin' as const };
const Op = Type.Union([Type.Literal('insert'), Type.Literal('update'), Type.Literal('delete')]);
const Webhook = Type.Object({
  id: Type.String({ format: 'uuid' }),
  tenant_id: Type.String(),
  url: Type.String(),
  tables: Type.Array(Type.String(), { description: 'Captured tables delivered (empty: all)' }),
  ops: Type.Array(Type.String()),
  ordering: Type.String({ description: 'Delivery lanes: row (default), table or webhook; in id order within a lane' }),
  active: Type.Boolean(),
  cursor: Type.String({ description: 'Last change id acknowledged (or dead-lettered)' }),
  attempt: Type.Integer({ description: 'Failed attempts of the next event so far' }),
  next_attempt_at: Type.String({ format: 'date-time' }),
  created_by: Type.String(),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
});
const Delivery = Type.Object({
  id: Type.String(),
  change_id: Type.String(),
  attempt: Type.Integer(),
  status: Type.Union([Type.Literal('succeeded'), Type.Literal('failed'), Type.Literal('dead')]),
  http_status: Type.Union([Type.Integer(), Type.Null()]),
  error: Type.Union([Type.String(), Type.Null()]),
  duration_ms: Type.Integer(),
  replay: Type.Boolean(),
  at: Type.String({ format: 'date-time' }),
});
const Body = {
  url: Type.String({ minLength: 1, maxLength: 2048, description: 'http(s) URL; private addresses refused unless WEBHOOK_ALLOW_PRIVATE' }),
  tables: Type.Array(Type.String({ minLength: 1, maxLength: 63 }), { maxItems: 100, description: 'Captured tables (empty or absent: all)' }),
  ops: Type.Array(Op, { minItems: 1, maxItems: 3 }),
  ordering: Type.Union([Type.Literal('row'), Type.Literal('table'), Type.Literal('webhook')], {
    description: 'Events of one row (default), of one table, or all of the webhook are delivered one at a time in commit order; lanes go in parallel',
  }),
  active: Type.Boolean(),
};
const Params = Type.Object({ id: Type.String() });
const one = { 200: Type.Object({ data: Webhook }), ...errorResponses };

export default async function webhookRoutes(app: FastifyInstance) {
  app.post(
    '/',
    {
      config,
      schema: {
        tags,
        body: Type.Object(
          { url: Body.url, tables: Type.Optional(Body.tables), ops: Type.Optional(Body.ops), ordering: Type.Optional(Body.ordering), active: Type.Optional(Body.active) },
          { additionalProperties: false },
        ),
        response: { 201: Type.Object({ data: Type.Composite([Webhook, Type.Object({ secret: Type.String({ description: 'Signing secret; shown only here' }) })]) }), ...errorResponses },
      },
    },
    async (request, reply) => reply.code(201).send({ data: await app.services.webhooks.create(request.ctx, request.body as WebhookInput & { url: string }) }),
  );
  app.get('/', { config, schema: { tags, response: { 200: Type.Object({ data: Type.Array(Webhook) }), ...errorResponses } } }, async (request) => ({
    data: await app.services.webhooks.list(request.ctx),
  }));
  app.get('/:id', { config, schema: { tags, params: Params, response: one } }, async (request) => ({
    data: await app.services.webhooks.get(request.ctx, (request.params as { id: string }).id),
  }));
  app.patch(
    '/:id',
    {
      config,
      schema: {
        tags,
        params: Params,
        body: Type.Object(
          { url: Type.Optional(Body.url), tables: Type.Optional(Body.tables), ops: Type.Optional(Body.ops), ordering: Type.Optional(Body.ordering), active: Type.Optional(Body.active) },
          { additionalProperties: false },
        ),
        response: one,
      },
    },
    async (request) => ({ data: await app.services.webhooks.update(request.ctx, (request.params as { id: string }).id, request.body as WebhookInput) }),
  );
  app.delete('/:id', { config, schema: { tags, params: Params, response: one } }, async (request) => ({
    data: await app.services.webhooks.remove(request.ctx, (request.params as { id: string }).id),
  }));
  app.get(
    '/:id/deliveries',
    {
      config,
      schema: {
        tags,
        params: Params,
        querystring: Type.Object({ after: Type.Optional(Type.String()), limit: Type.Optional(Type.Integer({ minimum: 1 })) }, { additionalProperties: false }),
        response: { 200: Type.Object({ data: Type.Array(Delivery), next_cursor: Type.Union([Type.String(), Type.Null()]) }), ...errorResponses },
      },
    },
    async (request) => app.services.webhooks.deliveries(request.ctx, (request.params as { id: string }).id, request.query as { after?: string; limit?: number }),
  );
  app.post(
    '/:id/replay',
    {
      config,
      schema: {
        tags,
        description: 'Re-deliver the events with after < id <= until (until: the current horizon when absent), as a job; deliveries are marked `replay`.',
        params: Params,
        body: Type.Object({ after: Type.String(), until: Type.Optional(Type.String()) }, { additionalProperties: false }),
        response: { 202: Type.Object({ job_id: Type.String() }), ...errorResponses },
      },
    },
    async (request, reply) => {
      const id = (request.params as { id: string }).id;
      const range = await app.services.webhooks.checkReplay(request.ctx, id, request.body as { after: string; until?: string });
      return reply.code(202).send(await app.jobs.enqueue(request.ctx, 'replay-webhook', { webhookId: id, ...range }));
    },
  );
}
