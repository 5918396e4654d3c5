/**
 * Backups and restores (SPEC 8), platform_admin only: take a backup (job), list, read, delete,
 * verify (job); restore a backup or an instant into a new database or in place (job). Jobs are
 * followed at GET /v1/jobs/{id}.
 */
import type { FastifyInstance } from 'fastify';
import { Type, type Static } from '@sinclair/typebox';
import { errorResponses, ErrorBody } from '../../schemas/common.js';
import { conflict } from '../../../errors.js';

const config = { capability: 'platform' as const };
const responses = { ...errorResponses, 409: ErrorBody };
const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()]);

const Verification = Type.Object({
  job_id: Nullable(Type.String()),
  started_at: Type.String({ format: 'date-time' }),
  finished_at: Type.String({ format: 'date-time' }),
  ok: Type.Boolean(),
  checksum_ok: Nullable(Type.Boolean()),
  restore_ok: Nullable(Type.Boolean()),
  row_counts_ok: Nullable(Type.Boolean()),
  mismatches: Type.Array(Type.Object({ table: Type.String(), expected: Nullable(Type.Integer()), actual: Nullable(Type.Integer()) })),
  reason: Nullable(Type.String({ description: 'Why the verification failed' })),
  scratch_database: Nullable(Type.String()),
  duration_ms: Type.Integer(),
});

export const BackupManifest = Type.Object({
  id: Type.String(),
  kind: Type.Union([Type.Literal('full'), Type.Literal('incremental')]),
  status: Type.Union([Type.Literal('running'), Type.Literal('completed'), Type.Literal('failed')], {
    description: 'A running backup whose job stopped refreshing it is shown as failed',
  }),
  database: Type.String(),
  server_version: Nullable(Type.String()),
  server_version_num: Nullable(Type.Integer()),
  started_at: Type.String({ format: 'date-time' }),
  finished_at: Nullable(Type.String({ format: 'date-time' })),
  updated_at: Type.String({ format: 'date-time' }),
  snapshot_at: Nullable(Type.String({ format: 'date-time', description: 'The instant the backup is consistent at' })),
  file: Nullable(Type.String()),
  format: Type.String(),
  sha256: Nullable(Type.String()),
  size: Nullable(Type.Integer()),
  schemas: Nullable(Type.Array(Type.String())),
  change_snapshot: Nullable(Type.String({ description: 'pg_current_snapshot() of the backup transaction' })),
  change_position: Nullable(Type.String({ description: 'Highest change id visible to the backup' })),
  row_counts: Type.Record(Type.String(), Type.Integer()),
  base_backup_id: Nullable(Type.String()),
  base_change_snapshot: Nullable(Type.String()),
  change_count: Nullable(Type.Integer()),
  safety: Type.Boolean(),
  trigger: Type.String(),
  job_id: Nullable(Type.String()),
  error: Nullable(Type.String()),
  tool: Nullable(Type.String()),
  verified: Type.Boolean({ description: 'Whether the latest verification passed' }),
  verifications: Type.Array(Verification),
});

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 100 }) });
const CreateBody = Type.Object({ kind: Type.Union([Type.Literal('full'), Type.Literal('incremental')]) }, { additionalProperties: false });
const RestoreBody = Type.Object(
  {
    backup_id: Type.Optional(Type.String({ minLength: 1, maxLength: 100 })),
    until: Type.Optional(Type.String({ format: 'date-time', description: 'Restore the state at this instant (ISO 8601)' })),
    target: Type.Union([Type.Literal('new_database'), Type.Literal('in_place')]),
    database: Type.Optional(Type.String({ minLength: 1, maxLength: 63, description: 'new_database only; default `<source>_restored_<timestamp>`' })),
  },
  { additionalProperties: false },
);
const Accepted = Type.Object({ job_id: Type.String() });

const view = <M extends { verifications: Array<{ ok: boolean }> }>(m: M) => ({ ...m, verified: m.verifications[m.verifications.length - 1]?.ok === true });

export default async function backupRoutes(app: FastifyInstance) {
  const tags = ['backups'];
  const svc = () => app.services.backups;
  app.post(
    '/',
    {
      config,
      schema: {
        tags,
        description: 'Take a backup now (job on queue `backups`; follow it at /v1/jobs/{id}). Retention runs after it.',
        body: CreateBody,
        response: { 202: Accepted, ...responses },
      },
    },
    async (request, reply) => {
      const { kind } = request.body as Static<typeof CreateBody>;
      await svc().checkCreate(kind);
      return reply.code(202).send(await app.jobs.enqueue(request.ctx, 'backup', { kind, trigger: 'api' }));
    },
  );
  app.get(
    '/',
    { config, schema: { tags, response: { 200: Type.Object({ data: Type.Array(BackupManifest) }), ...responses } } },
    async () => ({ data: (await svc().list()).map(view) }),
  );
  app.get(
    '/:id',
    { config, schema: { tags, params: IdParams, response: { 200: Type.Object({ data: BackupManifest }), ...responses } } },
    async (request) => ({ data: view(await svc().get((request.params as Static<typeof IdParams>).id)) }),
  );
  app.delete(
    '/:id',
    {
      config,
      schema: { tags, description: 'Delete a backup (409 LAST_VERIFIED_BACKUP for the last verified full backup).', params: IdParams, response: { 204: Type.Null(), ...responses } },
    },
    async (request, reply) => {
      await svc().remove((request.params as Static<typeof IdParams>).id);
      return reply.code(204).send();
    },
  );
  app.post(
    '/:id/verify',
    {
      config,
      schema: {
        tags,
        description: 'Verify a backup (job): checksum, a real pg_restore into a scratch database (dropped after), row counts against the manifest.',
        params: IdParams,
        response: { 202: Accepted, ...responses },
      },
    },
    async (request, reply) => {
      const m = await svc().get((request.params as Static<typeof IdParams>).id);
      if (m.status !== 'completed') {
        throw conflict('BACKUP_NOT_COMPLETED', `backup ${m.id} is ${m.status}; only completed backups can be verified`);
      }
      return reply.code(202).send(await app.jobs.enqueue(request.ctx, 'backup-verify', { backup_id: m.id }));
    },
  );
}

export async function restoreRoutes(app: FastifyInstance) {
  app.post(
    '/',
    {
      config,
      schema: {
        tags: ['backups'],
        description:
          'Restore (job): a backup (`backup_id`) or the state at an instant (`until`: the last full backup before it, then the change log replayed up to it), into a new database (409 DATABASE_EXISTS if the name is taken) or in place (writes answer 503 MAINTENANCE_IN_PROGRESS meanwhile; a safety backup is taken first). The job result names the database restored into.',
        body: RestoreBody,
        response: { 202: Accepted, ...responses },
      },
    },
    async (request, reply) => {
      const body = request.body as Static<typeof RestoreBody>;
      await app.services.restores.plan(body); // 400/409 now, before anything is enqueued
      return reply.code(202).send(await app.jobs.enqueue(request.ctx, 'restore', body));
    },
  );
}
