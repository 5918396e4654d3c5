/** Tenant registry, for platform_admin: POST/GET /v1/admin/tenants, GET/PATCH /v1/admin/tenants/{id}. */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { errorResponses } from '../../schemas/common.js';
import { LimitsPatch, LimitsView, OverridesView, type LimitsPatchInput } from '../../../services/limits/index.js';
import type { Tenant as TenantRecord } from '../../../services/identity/index.js';

const TenantId = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$', description: 'Tenant id' });
const Tenant = Type.Object({
  id: Type.String(),
  name: Type.String(),
  status: Type.Union([Type.Literal('active'), Type.Literal('suspended')]),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
  /** The limits in force: the tenant's own overrides, else the configured defaults (docs/limits.md). */
  limits: LimitsView,
  /** Only the limits set for this tenant (PATCH limits). */
  limit_overrides: OverridesView,
});
const Status = Type.Union([Type.Literal('active'), Type.Literal('suspended')]);
const Name = Type.String({ minLength: 1, maxLength: 200 });
const config = { capability: 'platform' as const };
const tags = ['tenants'];

export default async function tenantRoutes(app: FastifyInstance) {
  const present = (t: TenantRecord) => {
    const { limits, overrides } = app.limits.view(t.limits);
    return { ...t, limits, limit_overrides: overrides };
  };
  app.post(
    '/',
    {
      config,
      schema: {
        tags,
        body: Type.Object({ id: TenantId, name: Name }, { additionalProperties: false }),
        response: { 201: Type.Object({ data: Tenant }), 409: errorResponses[400], ...errorResponses },
      },
    },
    async (request, reply) => reply.code(201).send({ data: present(await app.services.tenants.create(request.body as { id: string; name: string })) }),
  );
  app.get('/', { config, schema: { tags, response: { 200: Type.Object({ data: Type.Array(Tenant) }), ...errorResponses } } }, async () => ({
    data: (await app.services.tenants.list()).map(present),
  }));
  app.get(
    '/:id',
    { config, schema: { tags, params: Type.Object({ id: TenantId }), response: { 200: Type.Object({ data: Tenant }), ...errorResponses } } },
    async (request) => ({ data: present(await app.services.tenants.get((request.params as { id: string }).id)) }),
  );
  app.patch(
    '/:id',
    {
      config,
      schema: {
        tags,
        params: Type.Object({ id: TenantId }),
        body: Type.Object({ status: Type.Optional(Status), name: Type.Optional(Name), limits: Type.Optional(LimitsPatch) }, { additionalProperties: false, minProperties: 1 }),
        response: { 200: Type.Object({ data: Tenant }), ...errorResponses },
      },
    },
    async (request) => {
      const body = request.body as { status?: 'active' | 'suspended'; name?: string; limits?: LimitsPatchInput };
      return { data: present(await app.services.tenants.update((request.params as { id: string }).id, body)) };
    },
  );
}
