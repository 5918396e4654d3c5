/**
 * The one error handler: 4xx as `{ error: { code, message, details } }`; 5xx as a generic message,
 * with the real error logged under the request id. Database errors map through src/db/errors.ts.
 */
import fp from 'fastify-plugin';
import type { FastifyError, FastifyInstance } from 'fastify';
import { AppError } from '../errors.js';
import { toAppError } from '../db/errors.js';

interface ValidationIssue {
  instancePath?: string;
  message?: string;
  params?: Record<string, unknown>;
}

/** Fastify's own 4xx errors (bad JSON, too large, wrong media type, schema validation) get stable codes. */
function fromFastify(err: FastifyError): AppError | undefined {
  if (err.validation) {
    const issue = (err.validation as ValidationIssue[])[0];
    const where = err.validationContext ?? 'request';
    const prop =
      (issue?.params?.['missingProperty'] as string | undefined) ??
      (issue?.params?.['additionalProperty'] as string | undefined) ??
      issue?.instancePath?.replace(/^\//, '').replace(/\//g, '.');
    const field = prop ? `${where}.${prop}` : where;
    return new AppError(400, 'VALIDATION_FAILED', `${field} ${issue?.message ?? 'is invalid'}`, {
      field,
      issues: err.validation,
    });
  }
  switch (err.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new AppError(400, 'MALFORMED_JSON', 'the request body is not valid JSON');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new AppError(413, 'BODY_TOO_LARGE', 'the request body is larger than BODY_LIMIT_BYTES allows');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new AppError(415, 'UNSUPPORTED_MEDIA_TYPE', 'the request content type is not supported (use application/json)');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new AppError(400, 'BAD_CONTENT_LENGTH', 'the Content-Length header does not match the body');
    default:
      if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
        return new AppError(err.statusCode, err.code ?? 'BAD_REQUEST', err.message);
      }
      return undefined;
  }
}

export default fp(
  async function errorsPlugin(app: FastifyInstance) {
    app.setErrorHandler((error: FastifyError, request, reply) => {
      const known = error instanceof AppError ? error : (fromFastify(error) ?? toAppError(error));
      if (known && known.statusCode < 500) {
        request.log.info({ code: known.code, status: known.statusCode }, known.message);
      } else {
        request.log.error({ err: error }, 'request failed');
      }
      if (known) {
        if (known.headers) void reply.headers(known.headers);
        const body: { code: string; message: string; details?: unknown } = { code: known.code, message: known.message };
        if (known.details !== undefined) body.details = known.details;
        return reply.code(known.statusCode).send({ error: body });
      }
      return reply.code(500).send({
        error: { code: 'INTERNAL', message: `internal error; quote request id ${request.id} when reporting it` },
      });
    });
    // Shutdown drain: requests that still arrive (pipelined, or on a busy keep-alive connection)
    // answer 503 SHUTTING_DOWN with Connection: close, before any hook or handler runs. The body is a
    // string: routes' response schemas (e.g. /readyz's) must not reshape it.
    let draining = false;
    app.addHook('preClose', (done) => {
      draining = true;
      done();
    });
    app.addHook('onRequest', (request, reply, done) => {
      if (!draining) return done();
      request.log.info({ code: 'SHUTTING_DOWN', status: 503 }, 'request refused: shutting down');
      void reply
        .code(503)
        .header('connection', 'close')
        .header('retry-after', '1')
        .type('application/json; charset=utf-8')
        .send(JSON.stringify({ error: { code: 'SHUTTING_DOWN', message: 'the server is shutting down; retry on another instance' } }));
    });
    app.setNotFoundHandler((request, reply) =>
      reply.code(404).send({ error: { code: 'ROUTE_NOT_FOUND', message: `no route ${request.method} ${request.url.split('?')[0]}` } }),
    );
  },
  { name: 'strata-errors' },
);
