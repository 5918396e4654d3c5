/**
 * Compliance declarations (SPEC 12): GET /v1/admin/compliance/columns (tenant admins and
 * platform_admin read the policy), GET/PUT/DELETE /v1/admin/compliance/columns/{table}/{column}
 * (platform_admin declares: the tables, and so the policy, are shared by every tenant).
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { errorResponses } from '../../schemas/common.js';
import type { AuditFilter, AuditRow, DeclareInput } from '../../../services/compliance/index.js';

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
  subject_column: Type.Optional(Type.Union([Type.String(), Type.Null()])),
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
    subject_column: Type.Optional(
      Type.Union([Ident, Type.Null()], { description: 'encrypted columns only: encrypt each value under the key of the subject this column of the row names (a declared subject column of the table)' }),
    ),
  },
  { additionalProperties: false },
);
const Params = Type.Object({ table: Ident, column: Ident });
const Conversion = Type.Object({
  id: Type.String({ format: 'uuid' }),
  table: Type.String(),
  column: Type.String(),
  state: Type.String(),
  position: Type.Object({}, { additionalProperties: true }),
  done: Type.Integer(),
  job_id: Type.Union([Type.String(), Type.Null()]),
  requested_by: Type.String(),
  started_at: Type.String({ format: 'date-time' }),
  finished_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});
const tags = ['compliance'];

const AuditEntry = Type.Object({
  id: Type.String(),
  tenant_id: Type.String(),
  at: Type.String({ format: 'date-time' }),
  actor: Type.String(),
  role: Type.String(),
  api_key_id: Type.Union([Type.String(), Type.Null()]),
  table_name: Type.String(),
  columns: Type.Array(Type.String()),
  row_count: Type.Integer(),
  request_id: Type.Union([Type.String(), Type.Null()]),
  path: Type.Union([Type.String(), Type.Null()]),
});
const Short = Type.String({ minLength: 1, maxLength: 200 });
const AuditQuery = Type.Object(
  {
    tenant: Type.Optional(Type.String({ minLength: 1, maxLength: 63, description: 'platform_admin only: one tenant (default: every tenant)' })),
    actor: Type.Optional(Short),
    role: Type.Optional(Type.Union(['reader', 'writer', 'analyst', 'admin', 'platform_admin'].map((r) => Type.Literal(r)))),
    table: Type.Optional(Ident),
    api_key_id: Type.Optional(Short),
    request_id: Type.Optional(Short),
    since: Type.Optional(Type.String({ maxLength: 64, description: 'ISO 8601; entries at or after' })),
    until: Type.Optional(Type.String({ maxLength: 64, description: 'ISO 8601; entries before' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
    cursor: Type.Optional(Type.String({ maxLength: 200, description: 'next_cursor of the previous page' })),
  },
  { additionalProperties: false },
);

export default async function complianceRoutes(app: FastifyInstance) {
  const decl = () => app.services.compliance.declarations;
  app.get(
    '/audit',
    {
      config: { capability: 'admin' },
      schema: {
        tags,
        description: 'The access audit: reads that returned plaintext of a declared column, newest first (keyset paging by next_cursor). A tenant admin reads its tenant; platform_admin every tenant or one (?tenant=).',
        querystring: AuditQuery,
        response: { 200: Type.Object({ data: Type.Array(AuditEntry), next_cursor: Type.Union([Type.String(), Type.Null()]) }), ...errorResponses },
      },
    },
    async (request) => {
      const f = request.query as AuditFilter;
      const ctx = request.ctx;
      const audit = app.services.compliance.audit;
      if (ctx.role === 'platform_admin' && ctx.tenantId === null) {
        return audit.list(async (text, values) => (await app.db.adminQuery<AuditRow>(text, values)).rows, f);
      }
      // a tenant's own audit, through its tenant session: RLS decides, a ?tenant= naming another is empty
      return audit.list(async (text, values) => (await app.db.tenantQuery<AuditRow>(ctx, text, values, { readOnly: true })).rows, f);
    },
  );
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
    {
      config: { capability: 'platform' },
      schema: {
        tags,
        description:
          'Declare a column. Declaring it encrypted while it holds plaintext (rows written before) starts a conversion job that encrypts them (`conversion`, with its job_id; progress at GET /v1/admin/compliance/conversions/{id}). Un-declaring encryption of a column holding ciphertext is 409 COLUMN_HOLDS_CIPHERTEXT; a column read by a materialized view is 409 COLUMN_USED_BY_VIEW.',
        params: Params,
        body: Body,
        response: { 200: Type.Object({ data: Policy, conversion: Type.Optional(Type.Union([Conversion, Type.Null()])) }), ...errorResponses },
      },
    },
    async (request) => {
      const p = request.params as { table: string; column: string };
      const data = await decl().declare(request.ctx, p.table, p.column, request.body as DeclareInput);
      await app.services.compliance.enforcement.refresh();
      const conv = app.services.complianceOps.conversion;
      if (!data.encrypted || !(await conv.hasPlaintext(p.table, p.column))) return { data, conversion: null };
      // the declaration stands (new writes encrypt now); when the queue is down the conversion waits
      // (state running, job_id null) and the next PUT of the column resumes it
      const started = await conv.start(request.ctx, p.table, p.column, app.jobs).catch((err: unknown) => {
        request.log.warn({ err, table: p.table, column: p.column }, 'conversion of existing plaintext could not be enqueued; PUT the declaration again to resume it');
        return null;
      });
      return { data, conversion: started?.conversion ?? null };
    },
  );
  app.get(
    '/conversions/:id',
    { config: { capability: 'platform' }, schema: { tags, params: Type.Object({ id: Type.String({ format: 'uuid' }) }), response: { 200: Type.Object({ data: Conversion }), ...errorResponses } } },
    async (request) => ({ data: await app.services.complianceOps.conversion.get((request.params as { id: string }).id) }),
  );
  app.delete(
    '/columns/:table/:column',
    { config: { capability: 'platform' }, schema: { tags, params: Params, response: { 204: Type.Null(), ...errorResponses } } },
    async (request, reply) => {
      const p = request.params as { table: string; column: string };
      await decl().remove(p.table, p.column);
      await app.services.compliance.enforcement.refresh();
      return reply.code(204).send();
    },
  );
}
