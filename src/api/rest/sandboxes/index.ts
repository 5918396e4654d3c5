/**
 * Tenant sandboxes: POST /v1/admin/sandboxes { tenant, name, anonymize?, ttl_s? } (202, a job on
 * queue `sandboxes`), GET (list), GET/DELETE /v1/admin/sandboxes/{id}. Tenant admins for their own
 * tenant, platform_admin for any. Serving a sandbox: src/plugins/sandbox.ts.
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { ErrorBody, errorResponses } from '../../schemas/common.js';
import type { CreateSandboxInput } from '../../../services/sandboxes/index.js';

const tags = ['sandboxes'];
const config = { capability: 'admin' as const };
const TenantId = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$', description: 'Tenant id' });
const Name = Type.String({ pattern: '^[a-z0-9][a-z0-9_-]{0,62}$', description: 'Sandbox name, as X-Strata-Sandbox and the `sandbox` claim carry it' });
const Id = Type.Object({ id: Type.String({ format: 'uuid' }) });
const Nullable = <T extends ReturnType<typeof Type.String>>(t: T) => Type.Union([t, Type.Null()]);
const Sandbox = Type.Object({
  id: Type.String({ format: 'uuid' }),
  tenant: Type.String(),
  name: Type.String(),
  status: Type.Union(['creating', 'ready', 'failed', 'expired'].map((s) => Type.Literal(s))),
  anonymized: Type.Boolean(),
  job_id: Nullable(Type.String()),
  error: Nullable(Type.String()),
  tables: Type.Union([Type.Integer(), Type.Null()]),
  rows: Type.Union([Type.Integer(), Type.Null()]),
  created_by: Type.String(),
  created_at: Type.String({ format: 'date-time' }),
  ready_at: Nullable(Type.String({ format: 'date-time' })),
  expires_at: Type.String({ format: 'date-time' }),
});
const CreateBody = Type.Object(
  {
    tenant: TenantId,
    name: Name,
    anonymize: Type.Optional(Type.Boolean({ description: 'Copy through the compliance anonymizer: every declared (pii or encrypted) column, and every column a foreign key ties to one, holds a deterministic fake keeping format, uniqueness and foreign keys' })),
    ttl_s: Type.Optional(Type.Integer({ minimum: 60, maximum: 2_592_000, description: 'Seconds until the sandbox expires (default SANDBOX_TTL_S)' })),
  },
  { additionalProperties: false },
);

export default async function sandboxRoutes(app: FastifyInstance) {
  app.post(
    '/',
    { config, schema: { tags, body: CreateBody, response: { 202: Type.Object({ data: Sandbox, job_id: Type.String() }), 409: ErrorBody, 501: ErrorBody, ...errorResponses } } },
    async (request, reply) => {
      const { sandbox, job_id } = await app.services.sandboxes.create(request.ctx, request.body as CreateSandboxInput, app.jobs);
      return reply.code(202).send({ data: sandbox, job_id });
    },
  );
  app.get(
    '/',
    { config, schema: { tags, querystring: Type.Object({ tenant: Type.Optional(TenantId) }, { additionalProperties: false }), response: { 200: Type.Object({ data: Type.Array(Sandbox) }), ...errorResponses } } },
    async (request) => ({ data: await app.services.sandboxes.list(request.ctx, (request.query as { tenant?: string }).tenant) }),
  );
  app.get('/:id', { config, schema: { tags, params: Id, response: { 200: Type.Object({ data: Sandbox }), ...errorResponses } } }, async (request) => ({
    data: await app.services.sandboxes.get(request.ctx, (request.params as { id: string }).id),
  }));
  app.delete('/:id', { config, schema: { tags, params: Id, response: { 200: Type.Object({ data: Sandbox }), ...errorResponses } } }, async (request) => ({
    data: await app.services.sandboxes.delete(request.ctx, (request.params as { id: string }).id, app.jobs),
  }));
}
