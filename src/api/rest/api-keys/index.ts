/** API keys of the caller's tenant (admin): create (secret shown once), list, revoke. */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { ROLES, type Role } from '../../../domain.js';
import { errorResponses } from '../../schemas/common.js';

const Nullable = <T extends ReturnType<typeof Type.String>>(t: T) => Type.Union([t, Type.Null()]);
const ApiKey = Type.Object({
  id: Type.String({ format: 'uuid' }),
  tenant_id: Type.String(),
  name: Type.String(),
  role: Type.String(),
  created_by: Type.String(),
  created_at: Type.String({ format: 'date-time' }),
  expires_at: Nullable(Type.String({ format: 'date-time' })),
  revoked_at: Nullable(Type.String({ format: 'date-time' })),
  last_used_at: Nullable(Type.String({ format: 'date-time' })),
});
const config = { capability: 'admin' as const };
const tags = ['api-keys'];

export default async function apiKeyRoutes(app: FastifyInstance) {
  app.post(
    '/',
    {
      config,
      schema: {
        tags,
        body: Type.Object(
          {
            name: Type.String({ minLength: 1, maxLength: 200 }),
            role: Type.Union(ROLES.map((r) => Type.Literal(r))),
            expires_at: Type.Optional(Type.String({ format: 'date-time' })),
          },
          { additionalProperties: false },
        ),
        response: { 201: Type.Object({ data: Type.Composite([ApiKey, Type.Object({ key: Type.String({ description: 'The secret; shown only here' }) })]) }), ...errorResponses },
      },
    },
    async (request, reply) =>
      reply.code(201).send({ data: await app.services.apiKeys.create(request.ctx, request.body as { name: string; role: Role; expires_at?: string }) }),
  );
  app.get('/', { config, schema: { tags, response: { 200: Type.Object({ data: Type.Array(ApiKey) }), ...errorResponses } } }, async (request) => ({
    data: await app.services.apiKeys.list(request.ctx),
  }));
  app.delete(
    '/:id',
    { config, schema: { tags, params: Type.Object({ id: Type.String({ format: 'uuid' }) }), response: { 200: Type.Object({ data: ApiKey }), ...errorResponses } } },
    async (request) => ({ data: await app.services.apiKeys.revoke(request.ctx, (request.params as { id: string }).id) }),
  );
}
