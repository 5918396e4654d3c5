/**
 * Compliance declarations (SPEC 12): GET /v1/admin/compliance/columns (tenant admins and
 * platform_admin read the policy), GET/PUT/DELETE /v1/admin/compliance/columns/{table}/{column}
 * (platform_admin declares: the tables, and so the policy, are shared by every tenant).
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { errorResponses } from '../../schemas/common.js';
import type { DeclareInput } from '../../../services/compliance/index.js';

const Ident = Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_$]{0,62}$' });
const Rule = Type.String({ maxLength: 32, description: 'full, partial, hash, null, month, year or range:<width>' });
const Policy = Type.Object({
  table: Type.String(),
  column: Type.String(),
  encrypted: Type.Boolean(),
  searchable: Type.Boolean(),
  pii: Type.Union([Type.String(), Type.Null()]),
  masks: Type.Record(Type.String(), Type.String()),
  plaintext_roles: Type.Array(Type.String()),
  declared_by: Type.String(),
  declared_at: Type.String({ format: 'date-time' }),
});
const Body = Type.Object(
  {
    encrypted: Type.Optional(Type.Boolean()),
    searchable: Type.Optional(Type.Boolean({ description: 'equality filters through a blind index (column <name>_bidx)' })),
    pii: Type.Optional(Type.Union([Type.String({ maxLength: 32 }), Type.Null()])),
    masks: Type.Optional(Type.Record(Type.String({ maxLength: 32 }), Rule, { maxProperties: 8 })),
    plaintext_roles: Type.Optional(Type.Array(Type.String({ maxLength: 32 }), { maxItems: 8, uniqueItems: true })),
  },
  { additionalProperties: false },
);
const Params = Type.Object({ table: Ident, column: Ident });
const tags = ['compliance'];

export default async function complianceRoutes(app: FastifyInstance) {
  const decl = () => app.services.compliance.declarations;
  app.get(
    '/columns',
    {
      config: { capability: 'admin' },
      schema: { tags, querystring: Type.Object({ table: Type.Optional(Ident) }, { additionalProperties: false }), response: { 200: Type.Object({ data: Type.Array(Policy) }), ...errorResponses } },
    },
    async (request) => ({ data: await decl().list(request.query as { table?: string }) }),
  );
  app.get(
    '/columns/:table/:column',
    { config: { capability: 'admin' }, schema: { tags, params: Params, response: { 200: Type.Object({ data: Policy }), ...errorResponses } } },
    async (request) => {
      const p = request.params as { table: string; column: string };
      return { data: await decl().get(p.table, p.column) };
    },
  );
  app.put(
    '/columns/:table/:column',
    { config: { capability: 'platform' }, schema: { tags, params: Params, body: Body, response: { 200: Type.Object({ data: Policy }), ...errorResponses } } },
    async (request) => {
      const p = request.params as { table: string; column: string };
      return { data: await decl().declare(request.ctx, p.table, p.column, request.body as DeclareInput) };
    },
  );
  app.delete(
    '/columns/:table/:column',
    { config: { capability: 'platform' }, schema: { tags, params: Params, response: { 204: Type.Null(), ...errorResponses } } },
    async (request, reply) => {
      const p = request.params as { table: string; column: string };
      await decl().remove(p.table, p.column);
      return reply.code(204).send();
    },
  );
}
