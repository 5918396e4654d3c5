/**
 * Compliance operations (SPEC 12). Who may call what, and why:
 * - subject declarations: PUT/DELETE platform_admin, GET tenant admins too (the tables, and so which
 *   columns identify a subject, are shared by every tenant, like the column declarations);
 * - scan: tenant admins (their tenant's rows, through RLS) and platform_admin (every tenant's);
 * - anonymize: platform_admin only (it creates a database on the server, a platform resource that no
 *   tenant credential can reach afterwards);
 * - key rotation: `data` by a tenant admin for its own tenant (its key, its rows) or platform_admin
 *   for any; `master` by platform_admin only (the key ring is platform configuration);
 * - report: tenant admins (their tenant) and platform_admin (all).
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { ErrorBody, errorResponses } from '../../schemas/common.js';
import { notFound } from '../../../errors.js';
import { JobView } from '../jobs/index.js';
import { SCAN_MAX_SAMPLE, SUBJECT_ACTIONS } from '../../../services/compliance/index.js';

const tags = ['compliance'];
const Ident = Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_$]{0,62}$' });
const Subject = Type.Object({
  table: Type.String(),
  columns: Type.Array(Type.String()),
  action: Type.Union(SUBJECT_ACTIONS.map((a) => Type.Literal(a))),
  declared_by: Type.String(),
  declared_at: Type.String({ format: 'date-time' }),
});
const SubjectBody = Type.Object(
  {
    columns: Type.Array(Ident, { minItems: 1, maxItems: 8, uniqueItems: true, description: 'columns identifying the subject: a row is the subject\'s when any equals its id' }),
    action: Type.Union(SUBJECT_ACTIONS.map((a) => Type.Literal(a)), { description: 'delete the rows, or anonymize them (subject and declared PII columns nulled or tombstoned)' }),
  },
  { additionalProperties: false },
);
const ScanBody = Type.Object(
  {
    tables: Type.Optional(Type.Array(Ident, { minItems: 1, maxItems: 500, uniqueItems: true })),
    sample_size: Type.Optional(Type.Integer({ minimum: 1, maximum: SCAN_MAX_SAMPLE, description: 'rows sampled per table (default 200)' })),
  },
  { additionalProperties: false },
);
const AnonymizeBody = Type.Object(
  {
    target_database: Type.Optional(Type.String({ minLength: 1, maxLength: 63, description: 'the new database (default strata_anon_<hex>); must not exist' })),
    tenant: Type.Optional(Type.String({ minLength: 1, maxLength: 63, description: 'copy only this tenant\'s rows' })),
    seed: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'faker seed: the same seed and data give the same copy' })),
  },
  { additionalProperties: false },
);
const RotateBody = Type.Object(
  {
    kind: Type.Union([Type.Literal('master'), Type.Literal('data')]),
    tenant: Type.Optional(Type.String({ minLength: 1, maxLength: 63 })),
  },
  { additionalProperties: false },
);
const Rotation = Type.Object({
  id: Type.String(),
  kind: Type.String(),
  tenant_id: Type.Union([Type.String(), Type.Null()]),
  target: Type.String(),
  state: Type.String(),
  position: Type.Unknown(),
  done: Type.Integer(),
  job_id: Type.Union([Type.String(), Type.Null()]),
  requested_by: Type.String(),
  started_at: Type.String({ format: 'date-time' }),
  finished_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});
const JobParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) });
const Accepted = Type.Object({ job_id: Type.String() });

export default async function complianceOpsRoutes(app: FastifyInstance) {
  const ops = () => app.services.complianceOps;
  const conflict = { 409: ErrorBody };

  app.get('/subjects', { config: { capability: 'admin' }, schema: { tags, response: { 200: Type.Object({ data: Type.Array(Subject) }), ...errorResponses } } }, async () => ({
    data: await ops().subjects.list(),
  }));
  app.get(
    '/subjects/:table',
    { config: { capability: 'admin' }, schema: { tags, params: Type.Object({ table: Ident }), response: { 200: Type.Object({ data: Subject }), ...errorResponses } } },
    async (request) => ({ data: await ops().subjects.get((request.params as { table: string }).table) }),
  );
  app.put(
    '/subjects/:table',
    { config: { capability: 'platform' }, schema: { tags, params: Type.Object({ table: Ident }), body: SubjectBody, response: { 200: Type.Object({ data: Subject }), ...errorResponses } } },
    async (request) => ({
      data: await ops().subjects.declare(request.ctx, (request.params as { table: string }).table, request.body as { columns: string[]; action: string }),
    }),
  );
  app.delete(
    '/subjects/:table',
    { config: { capability: 'platform' }, schema: { tags, params: Type.Object({ table: Ident }), response: { 204: Type.Null(), ...errorResponses } } },
    async (request, reply) => {
      await ops().subjects.remove((request.params as { table: string }).table);
      return reply.code(204).send();
    },
  );

  app.post('/scan', { config: { capability: 'admin' }, schema: { tags, body: ScanBody, response: { 202: Accepted, ...errorResponses } } }, async (request, reply) =>
    reply.code(202).send(await ops().scan.start(request.ctx, (request.body ?? {}) as { tables?: string[]; sample_size?: number }, app.jobs)),
  );
  app.get('/scan/:id', { config: { capability: 'admin' }, schema: { tags, params: JobParams, response: { 200: Type.Object({ data: JobView }), ...errorResponses } } }, async (request) => ({
    data: await ops().scan.get(request.ctx, (request.params as { id: string }).id, app.jobs),
  }));

  app.post(
    '/anonymize',
    { config: { capability: 'platform' }, schema: { tags, body: AnonymizeBody, response: { 202: Type.Object({ job_id: Type.String(), target_database: Type.String() }), ...conflict, ...errorResponses } } },
    async (request, reply) => reply.code(202).send(await ops().anonymizer.start(request.ctx, (request.body ?? {}) as { target_database?: string; tenant?: string; seed?: string }, app.jobs)),
  );

  app.post(
    '/keys/rotate',
    {
      config: { capability: 'admin' },
      schema: { tags, body: RotateBody, response: { 202: Type.Object({ data: Rotation, job_id: Type.String(), resumed: Type.Boolean() }), ...conflict, 501: ErrorBody, ...errorResponses } },
    },
    async (request, reply) => {
      const { rotation, job_id, resumed } = await ops().rotation.start(request.ctx, request.body as { kind: string; tenant?: string }, app.jobs);
      return reply.code(202).send({ data: rotation, job_id, resumed });
    },
  );
  app.get(
    '/keys/rotations/:id',
    { config: { capability: 'admin' }, schema: { tags, params: Type.Object({ id: Type.String({ format: 'uuid' }) }), response: { 200: Type.Object({ data: Rotation }), ...errorResponses } } },
    async (request) => {
      const r = await ops().rotation.get((request.params as { id: string }).id);
      // a tenant admin sees its own tenant's rotations only
      if (request.ctx.role !== 'platform_admin' && r.tenant_id !== request.ctx.tenantId) throw notFound('ROTATION_NOT_FOUND', `key rotation ${r.id} does not exist`);
      return { data: r };
    },
  );

  app.get('/report', { config: { capability: 'admin' }, schema: { tags, response: { 200: Type.Object({ data: Type.Object({}, { additionalProperties: true }) }), ...errorResponses } } }, async (request) => ({
    data: await ops().report.build(request.ctx),
  }));
}
