/**
 * Raw read-only SQL for analysts: one statement with parameters, in the caller's tenant session,
 * under the strata_analyst role (see src/services/data/sql.ts for the two walls around it).
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { ErrorBody, errorResponses } from '../../schemas/common.js';
import { createSqlService, MAX_PARAMS, maxTimeoutMs, type SqlQueryInput } from '../../../services/data/index.js';

/** The body; the timeout ceiling comes from the configuration (DB_STATEMENT_TIMEOUT_MS). */
const sqlBody = (maxTimeout: number) =>
  Type.Object(
    {
      sql: Type.String({ minLength: 1, maxLength: 100_000, description: 'One read-only statement (SELECT, VALUES, TABLE or WITH ... SELECT); $1, $2... for parameters' }),
      params: Type.Optional(Type.Array(Type.Unknown(), { maxItems: MAX_PARAMS, description: 'Values of $1, $2...' })),
      timeout_ms: Type.Optional(Type.Integer({ minimum: 1, maximum: maxTimeout, description: 'statement_timeout of this statement (default and maximum: DB_STATEMENT_TIMEOUT_MS)' })),
    },
    { additionalProperties: false },
  );

const SqlResult = Type.Object({
  data: Type.Array(Type.Record(Type.String(), Type.Unknown())),
  fields: Type.Array(Type.Object({ name: Type.String(), type: Type.String({ description: 'PostgreSQL type, as format_type() names it' }) })),
  row_count: Type.Integer(),
  truncated: Type.Boolean({ description: 'True when the result was cut: more rows than the row cap, or more bytes than SQL_MAX_RESULT_BYTES' }),
  truncated_by: Type.Optional(Type.Union([Type.Literal('rows'), Type.Literal('bytes')], { description: 'What cut it, when truncated' })),
});

export default async function sqlRoutes(app: FastifyInstance) {
  const sql = createSqlService({ db: app.db, config: app.config, log: app.log, checkSql: (text, ctx) => app.services.compliance.enforcement.checkSql(text, ctx.role) });
  app.post(
    '/',
    {
      config: { capability: 'sql' },
      schema: {
        tags: ['sql'],
        summary: 'Run one read-only SQL statement in your tenant',
        body: sqlBody(maxTimeoutMs(app.config)),
        response: { 200: SqlResult, ...errorResponses, 504: ErrorBody },
      },
    },
    async (request) => sql.query(request.ctx, request.body as SqlQueryInput),
  );
}
