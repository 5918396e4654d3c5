/** `POST /v1/transactions`: an atomic batch of row operations with savepoints and retries. */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { ErrorBody, errorResponses } from '../../schemas/common.js';
import type { Operation } from '../../../services/data/index.js';
import type { Isolation } from '../../../db/session.js';

const Name = Type.String({ minLength: 1, maxLength: 63 });
const Operation = Type.Object(
  {
    op: Type.Union([Type.Literal('insert'), Type.Literal('upsert'), Type.Literal('update'), Type.Literal('delete')]),
    table: Name,
    rows: Type.Optional(Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Array(Type.Record(Type.String(), Type.Unknown()))])),
    set: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
    pk: Type.Optional(Type.Union([Type.String({ maxLength: 256 }), Type.Integer()])),
    filters: Type.Optional(Type.Record(Type.String(), Type.String(), { description: 'column: op.value, as in the rows API' })),
    on_conflict: Type.Optional(Type.String({ maxLength: 500 })),
    select: Type.Optional(Type.String({ maxLength: 2000 })),
    savepoint: Type.Optional(Type.String({ pattern: '^[a-z_][a-z0-9_]{0,40}$' })),
    on_error: Type.Optional(Type.Union([Type.Literal('rollback_to_savepoint'), Type.Literal('fail')])),
  },
  { additionalProperties: false },
);
const Result = Type.Object({
  index: Type.Integer(),
  op: Type.String(),
  table: Type.String(),
  status: Type.Union([Type.Literal('ok'), Type.Literal('rolled_back')]),
  count: Type.Integer(),
  data: Type.Optional(Type.Unknown()),
  error: Type.Optional(Type.Object({ code: Type.String(), message: Type.String(), details: Type.Optional(Type.Unknown()) })),
});

export default async function transactionRoutes(app: FastifyInstance) {
  app.post(
    '/',
    {
      config: { capability: 'write' },
      schema: {
        tags: ['transactions'],
        body: Type.Object(
          {
            isolation: Type.Optional(Type.Union([Type.Literal('read committed'), Type.Literal('repeatable read'), Type.Literal('serializable')])),
            operations: Type.Array(Operation, { minItems: 1, maxItems: 100 }),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({ data: Type.Object({ attempts: Type.Integer(), results: Type.Array(Result) }) }),
          ...errorResponses,
          409: ErrorBody,
          413: ErrorBody,
        },
      },
    },
    async (request) => {
      const body = request.body as { operations: Operation[]; isolation?: Isolation };
      return { data: await app.services.transactions.run(request.ctx, body) };
    },
  );
}
