/** Migrations for platform_admin: status, plan, up, down, redo, verify (same as `npm run migrate`). */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { errorResponses, ErrorBody } from '../../schemas/common.js';

const config = { capability: 'platform' as const };
const tags = ['migrations'];
const Step = Type.Object({ id: Type.String(), direction: Type.Union([Type.Literal('up'), Type.Literal('down')]), sql: Type.String() });
const Run = Type.Object({ data: Type.Object({ steps: Type.Array(Step), dry_run: Type.Boolean() }) });
const MigrationId = Type.String({ minLength: 1, maxLength: 200, pattern: '^[A-Za-z0-9_.-]+$' });
const responses = { ...errorResponses, 409: ErrorBody, 422: ErrorBody };

export default async function migrationRoutes(app: FastifyInstance) {
  const svc = () => app.services.migrations;
  // The POST bodies are optional: a bodiless POST means "no options".
  app.addHook('preValidation', async (request) => {
    if (request.method === 'POST' && request.body === undefined) request.body = {};
  });
  app.get(
    '/',
    {
      config,
      schema: {
        tags,
        response: {
          200: Type.Object({
            data: Type.Array(
              Type.Object({
                id: Type.String(),
                applied: Type.Boolean(),
                applied_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
                checksum: Type.String(),
                drift: Type.Boolean(),
                depends_on: Type.Array(Type.String()),
              }),
            ),
          }),
          ...responses,
        },
      },
    },
    async () => ({ data: await svc().status() }),
  );
  app.get(
    '/plan',
    {
      config,
      schema: {
        tags,
        querystring: Type.Object({ to: Type.Optional(MigrationId), direction: Type.Optional(Type.Union([Type.Literal('up'), Type.Literal('down')])) }, { additionalProperties: false }),
        response: { 200: Type.Object({ data: Type.Array(Step) }), ...responses },
      },
    },
    async (request) => ({ data: await svc().plan(request.query as { to?: string; direction?: 'up' | 'down' }) }),
  );
  app.post(
    '/up',
    {
      config,
      schema: {
        tags,
        body: Type.Object({ to: Type.Optional(MigrationId), dry_run: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
        response: { 200: Run, ...responses },
      },
    },
    async (request) => {
      const body = (request.body ?? {}) as { to?: string; dry_run?: boolean };
      return { data: await svc().up({ to: body.to, dryRun: body.dry_run }) };
    },
  );
  app.post(
    '/down',
    {
      config,
      schema: {
        tags,
        body: Type.Object(
          { to: Type.Optional(MigrationId), steps: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })), dry_run: Type.Optional(Type.Boolean()) },
          { additionalProperties: false },
        ),
        response: { 200: Run, ...responses },
      },
    },
    async (request) => {
      const body = (request.body ?? {}) as { to?: string; steps?: number; dry_run?: boolean };
      return { data: await svc().down({ to: body.to, steps: body.steps, dryRun: body.dry_run }) };
    },
  );
  app.post('/redo', { config, schema: { tags, response: { 200: Run, ...responses } } }, async () => ({ data: await svc().redo() }));
  app.get(
    '/verify',
    {
      config,
      schema: {
        tags,
        response: {
          200: Type.Object({
            data: Type.Object({
              ok: Type.Boolean(),
              problems: Type.Array(Type.Object({ id: Type.String(), file: Type.String(), code: Type.String(), message: Type.String() })),
            }),
          }),
          ...responses,
        },
      },
    },
    async () => ({ data: await svc().verify() }),
  );
}
