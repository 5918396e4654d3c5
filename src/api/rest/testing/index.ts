/**
 * Testing mode (TESTING_MODE=true): set up and reset a tenant's state over HTTP for end-to-end
 * suites. Off, every route answers 404 TESTING_MODE_DISABLED. Everything runs in the caller's tenant
 * session, so row-level security keeps it to that tenant's rows.
 */
import type { FastifyInstance } from 'fastify';
import { Type, type Static } from '@sinclair/typebox';
import { AppError } from '../../../errors.js';
import { ErrorBody, errorResponses } from '../../schemas/common.js';

const tags = ['testing'];
const TableParam = Type.Object({ table: Type.String({ minLength: 1, maxLength: 63 }) });
const FactoryBody = Type.Object(
  {
    count: Type.Integer({ minimum: 1, maximum: 1000, default: 1, description: 'Rows to create (1-1000)' }),
    overrides: Type.Record(Type.String({ maxLength: 63 }), Type.Unknown(), { default: {}, maxProperties: 200, description: 'Column values every row takes' }),
  },
  { additionalProperties: false },
);
const SnapshotName = Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'Letters, digits, _ and -, at most 64' });
const SnapshotBody = Type.Object({ name: SnapshotName }, { additionalProperties: false });
const Snapshot = Type.Object({
  name: Type.String(),
  tables: Type.Record(Type.String(), Type.Integer(), { description: 'Rows per table' }),
  rows: Type.Integer(),
  created_at: Type.String({ format: 'date-time' }),
});
const Deleted = Type.Record(Type.String(), Type.Integer(), { description: 'Rows deleted per table' });
const responses = { ...errorResponses, 409: ErrorBody, 413: ErrorBody };

export default async function testingRoutes(app: FastifyInstance) {
  app.addHook('onRequest', async () => {
    if (!app.services.testing.enabled) {
      throw new AppError(404, 'TESTING_MODE_DISABLED', 'testing mode is off: the /v1/testing endpoints exist only when TESTING_MODE=true (never in production)');
    }
  });

  app.post(
    '/factories/:table',
    {
      config: { capability: 'write' },
      schema: { tags, summary: 'Create rows of a table with its factory (parents on demand)', params: TableParam, body: FactoryBody, response: { 201: Type.Object({ data: Type.Array(Type.Record(Type.String(), Type.Unknown())) }), ...responses } },
    },
    async (request, reply) => {
      const { table } = request.params as Static<typeof TableParam>;
      const { count, overrides } = request.body as Static<typeof FactoryBody>;
      const data = await app.services.testing.createRows(request.ctx, table, count, overrides);
      return reply.code(201).send({ data });
    },
  );

  app.post(
    '/snapshots',
    { config: { capability: 'admin' }, schema: { tags, summary: "Save the caller's tenant's rows under a name", body: SnapshotBody, response: { 201: Type.Object({ data: Snapshot }), ...responses } } },
    async (request, reply) => {
      const { name } = request.body as Static<typeof SnapshotBody>;
      return reply.code(201).send({ data: await app.services.testing.takeSnapshot(request.ctx, name) });
    },
  );

  app.post(
    '/snapshots/:name/restore',
    {
      config: { capability: 'admin' },
      schema: { tags, summary: "Replace the caller's tenant's rows with a snapshot", params: Type.Object({ name: SnapshotName }), response: { 200: Type.Object({ data: Type.Intersect([Snapshot, Type.Object({ deleted: Deleted })]) }), ...responses } },
    },
    async (request) => ({ data: await app.services.testing.restoreSnapshot(request.ctx, (request.params as { name: string }).name) }),
  );

  app.delete(
    '/data',
    { config: { capability: 'admin' }, schema: { tags, summary: "Delete every row of the caller's tenant", response: { 200: Type.Object({ deleted: Deleted }), ...responses } } },
    async (request) => ({ deleted: await app.services.testing.wipe(request.ctx) }),
  );
}
