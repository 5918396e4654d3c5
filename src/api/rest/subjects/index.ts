/**
 * Erasure of a data subject (SPEC 12): DELETE /v1/subjects/{id}, by the tenant admin of the tenant
 * holding the subject (the tenant is the data controller; RLS keeps the erasure inside it). Answers
 * the exact report: tables, rows deleted and anonymized, change-log entries anonymized, whether a
 * subject key was shredded, and the backups still holding the subject until they expire.
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { ErrorBody, errorResponses } from '../../schemas/common.js';

const Report = Type.Object({
  erasure_id: Type.String({ format: 'uuid' }),
  tenant: Type.String(),
  tables: Type.Array(
    Type.Object({
      table: Type.String(),
      action: Type.Union([Type.Literal('delete'), Type.Literal('anonymize'), Type.Literal('cascade')]),
      matched_by: Type.Array(Type.String()),
      deleted: Type.Integer(),
      anonymized: Type.Integer(),
    }),
  ),
  totals: Type.Object({ rows: Type.Integer(), deleted: Type.Integer(), anonymized: Type.Integer() }),
  change_log: Type.Object({ entries_anonymized: Type.Integer() }),
  crypto_shredded: Type.Boolean(),
  backups: Type.Array(Type.Object({ id: Type.String(), kind: Type.String(), taken_at: Type.String(), expires_after: Type.String() })),
  erased_at: Type.String({ format: 'date-time' }),
});

export default async function subjectRoutes(app: FastifyInstance) {
  app.delete(
    '/:id',
    {
      config: { capability: 'admin' },
      schema: {
        tags: ['compliance'],
        params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 256 }) }),
        response: { 200: Type.Object({ data: Report }), 409: ErrorBody, ...errorResponses },
      },
    },
    async (request) => ({ data: await app.services.complianceOps.erasure.erase(request.ctx, (request.params as { id: string }).id) }),
  );
}
