/**
 * PostgREST's error shape, `{ code, message, details, hint }`, flat. Database errors carry
 * PostgreSQL's own SQLSTATE and text with PostgREST's SQLSTATE-to-HTTP mapping; Strata's own
 * refusals are given the PGRSTxxx code (or SQLSTATE) PostgREST answers for the same mistake.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { AppError } from '../../errors.js';
import { isConnectionError } from '../../db/errors.js';

export interface PgrstBody {
  code: string;
  message: string;
  details: unknown;
  hint: string | null;
}

export class PgrstError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: unknown = null,
    readonly hint: string | null = null,
  ) {
    super(message);
  }
}

/** PostgREST's SQLSTATE -> HTTP table, with Strata's retry and timeout answers (see docs/postgrest.md). */
export function statusForSqlstate(code: string): number {
  if (code === '23503' || code === '23505') return 409;
  if (code === '25006') return 405;
  if (code === '42883' || code === '42P01') return 404;
  if (code === '42501') return 403;
  if (code === 'P0001') return 400;
  // Strata: retried serialization failures and lock timeouts are conflicts, a timeout is a 504
  if (code === '40001' || code === '40P01' || code === '55P03') return 409;
  if (code === '57014') return 504;
  if (code === '42P17') return 500;
  const c2 = code.slice(0, 2);
  if (c2 === '08' || c2 === '53') return 503;
  if (c2 === '0L' || c2 === '0P' || c2 === '28') return 403;
  if (c2 === '54') return 413;
  if (['09', '25', '2D', '38', '39', '3B', '40', '55', '57', '58', 'F0', 'HV', 'P0', 'XX'].includes(c2)) return 500;
  return 400;
}

const STRATA_TO_PGRST: Record<string, [number, string]> = {
  TABLE_NOT_FOUND: [404, 'PGRST205'],
  UNKNOWN_COLUMN: [400, '42703'],
  UNKNOWN_RELATIONSHIP: [400, 'PGRST200'],
  AMBIGUOUS_RELATIONSHIP: [300, 'PGRST201'],
  UNKNOWN_EMBED: [400, 'PGRST108'],
  RELATED_ORDER_NOT_TO_ONE: [400, 'PGRST118'],
  FUNCTION_NOT_FOUND: [404, 'PGRST202'],
  AMBIGUOUS_FUNCTION: [300, 'PGRST203'],
  SECURITY_DEFINER_REFUSED: [403, '42501'],
  VIEW_NOT_SECURITY_INVOKER: [403, '42501'],
  MAX_AFFECTED_EXCEEDED: [400, 'PGRST124'],
  KEYS_MISMATCH: [400, 'PGRST102'],
  UNFILTERED_MASS_WRITE: [400, '21000'],
  INVALID_FILTER_VALUE: [400, '22P02'],
  INVALID_VALUE: [400, '22P02'],
  INVALID_ARGUMENT: [400, '22P02'],
  MISSING_REQUIRED_COLUMN: [400, '23502'],
  NOT_NULL_VIOLATION: [400, '23502'],
  VALUE_TOO_LONG: [400, '22001'],
  INVALID_ENUM_VALUE: [400, '23514'],
  CHECK_VIOLATION: [400, '23514'],
  READ_ONLY_COLUMN: [400, '428C9'],
  NO_UNIQUE_KEY: [400, '42P10'],
  ON_CONFLICT_WITHOUT_RESOLUTION: [400, 'PGRST100'],
  INVALID_FTS_QUERY: [400, '42601'],
  UNKNOWN_NAME: [400, '42704'],
  INVALID_TEXT: [400, '22P05'],
  UNIQUE_VIOLATION: [409, '23505'],
  FOREIGN_KEY_VIOLATION: [409, '23503'],
  FORBIDDEN_BY_DATABASE: [403, '42501'],
  ROLE_FORBIDDEN: [403, '42501'],
  READ_ONLY: [405, '25006'],
  STATEMENT_TIMEOUT: [504, '57014'],
  TRANSACTION_CONFLICT: [409, '40001'],
  LOCK_TIMEOUT: [409, '55P03'],
  DB_UNAVAILABLE: [503, 'PGRST001'],
  TOKEN_EXPIRED: [401, 'PGRST303'],
  TOKEN_INVALID: [401, 'PGRST301'],
  AUTH_MALFORMED: [401, 'PGRST301'],
  API_KEY_INVALID: [401, 'PGRST301'],
  API_KEY_REVOKED: [401, 'PGRST301'],
  API_KEY_EXPIRED: [401, 'PGRST301'],
  AUTH_REQUIRED: [401, 'PGRST302'],
  TENANT_UNKNOWN: [403, '42501'],
  TENANT_SUSPENDED: [403, '42501'],
  MAINTENANCE_IN_PROGRESS: [503, 'PGRST001'],
  BODY_TOO_LARGE: [413, 'PGRST413'],
  TOO_MANY_ROWS: [413, 'PGRST413'],
  // an answer past ROWS_MAX_RESPONSE_BYTES (PostgREST has no such bound, so no code): Strata's own
  // code on both faces, kept apart from PGRST413 (the request body was too large)
  RESPONSE_TOO_LARGE: [413, 'RESPONSE_TOO_LARGE'],
};

interface PgErrorLike {
  code?: string;
  message?: string;
  detail?: string;
  hint?: string;
  severity?: string;
}

const isPgError = (e: unknown): e is PgErrorLike =>
  typeof e === 'object' && e !== null && typeof (e as PgErrorLike).code === 'string' && /^[0-9A-Z]{5}$/.test((e as PgErrorLike).code!) && typeof (e as PgErrorLike).severity === 'string';

/** The status and body PostgREST would answer for `err`; undefined for a genuine internal error. */
export function toPgrst(err: unknown, opts: { write?: boolean } = {}): { status: number; body: PgrstBody; headers?: Record<string, string> } | undefined {
  if (err instanceof PgrstError) return { status: err.status, body: { code: err.code, message: err.message, details: err.details, hint: err.hint } };
  if (err instanceof AppError) {
    const known = STRATA_TO_PGRST[err.code];
    const d = err.details as { details?: unknown; hint?: string; column?: string; table?: string } | undefined;
    const details = d?.details ?? (d && Object.keys(d).length ? d : null);
    const hint = d?.hint ?? null;
    // a deliberate 5xx answer (501 ENCRYPTION_NOT_CONFIGURED, 503 DB_UNRESPONSIVE...) keeps Strata's code, as on /v1
    let code = known?.[1] ?? (err.statusCode >= 400 && err.statusCode < 500 ? 'PGRST100' : err.code);
    let message = err.message;
    if (err.code === 'UNKNOWN_COLUMN' && opts.write && d?.column !== undefined) {
      code = 'PGRST204';
      message = `Could not find the '${d.column}' column of '${d.table ?? '?'}' in the schema cache`;
    }
    const status = known?.[0] ?? err.statusCode;
    const headers = { ...(err.headers ?? {}), ...(status === 401 ? { 'www-authenticate': 'Bearer' } : {}) };
    if (status === 500 && !known) return undefined;
    return { status, body: { code, message, details: err.code === 'UNKNOWN_RELATIONSHIP' || err.code === 'AMBIGUOUS_RELATIONSHIP' ? (d?.details ?? null) : details, hint }, headers };
  }
  if (isConnectionError(err)) return { status: 503, body: { code: 'PGRST001', message: 'Database client error. Retrying the connection.', details: null, hint: null } };
  if (isPgError(err)) {
    return { status: statusForSqlstate(err.code!), body: { code: err.code!, message: err.message ?? '', details: err.detail ?? null, hint: err.hint ?? null } };
  }
  const fe = err as FastifyError;
  if (fe && typeof fe.code === 'string' && fe.code.startsWith('FST_')) {
    if (fe.code === 'FST_ERR_CTP_INVALID_JSON_BODY') return { status: 400, body: { code: 'PGRST102', message: 'Empty or invalid json', details: null, hint: null } };
    if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return { status: 413, body: { code: 'PGRST413', message: 'the request body is larger than BODY_LIMIT_BYTES allows', details: null, hint: null } };
    if (fe.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return { status: 415, body: { code: 'PGRST107', message: `Content-Type not acceptable: ${fe.message}`, details: null, hint: null } };
    if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) return { status: fe.statusCode, body: { code: 'PGRST100', message: fe.message, details: null, hint: null } };
  }
  return undefined;
}

/** The face's error handler: PostgREST's shape for every 4xx, a generic 500 otherwise (logged). */
export function pgrstErrorHandler(err: FastifyError, request: FastifyRequest, reply: FastifyReply) {
  const out = toPgrst(err, { write: request.method === 'POST' || request.method === 'PATCH' });
  if (!out || out.status >= 500) request.log.error({ err }, 'request failed');
  else request.log.info({ code: out.body.code, status: out.status }, out.body.message);
  if (!out) {
    return reply.code(500).send({ code: 'PGRST000', message: `internal error; quote request id ${request.id} when reporting it`, details: null, hint: null });
  }
  if (out.headers) void reply.headers(out.headers);
  return reply.code(out.status).type('application/json; charset=utf-8').send(out.body);
}
