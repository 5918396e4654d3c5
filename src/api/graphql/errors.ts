/**
 * GraphQL errors with a stable `extensions.code`, like the REST error body: AppError codes as they
 * are, database errors through toAppError (SQLSTATE -> code), parse and validation errors of
 * graphql-js and mercurius under GRAPHQL_PARSE_FAILED / GRAPHQL_VALIDATION_FAILED, and anything
 * else as INTERNAL with a generic message (the real error is logged with the request id).
 */
import { GraphQLError } from 'graphql/index.js';
import type { FastifyBaseLogger } from 'fastify';
import { AppError } from '../../errors.js';
import { toAppError } from '../../db/errors.js';

export interface FormattedError {
  message: string;
  locations?: ReadonlyArray<{ line: number; column: number }>;
  path?: ReadonlyArray<string | number>;
  extensions: { code: string; details?: unknown };
}

interface Classified {
  status: number;
  error: FormattedError;
}

const MERCURIUS_CODES: Record<string, { code: string; status: number }> = {
  MER_ERR_GQL_QUERY_DEPTH: { code: 'QUERY_TOO_DEEP', status: 400 },
  MER_ERR_METHOD_NOT_ALLOWED: { code: 'METHOD_NOT_ALLOWED', status: 405 },
  MER_ERR_GQL_PERSISTED_QUERY_NOT_FOUND: { code: 'GRAPHQL_BAD_REQUEST', status: 400 },
  MER_ERR_GQL_CSRF_PREVENTION: { code: 'CSRF_PREVENTED', status: 400 },
  FST_ERR_CTP_INVALID_JSON_BODY: { code: 'MALFORMED_JSON', status: 400 },
  FST_ERR_CTP_EMPTY_JSON_BODY: { code: 'MALFORMED_JSON', status: 400 },
  FST_ERR_CTP_BODY_TOO_LARGE: { code: 'BODY_TOO_LARGE', status: 413 },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { code: 'UNSUPPORTED_MEDIA_TYPE', status: 415 },
};

const codeOf = (e: unknown) => (e && typeof e === 'object' ? (e as { code?: unknown }).code : undefined);

function place(g: GraphQLError | undefined, error: FormattedError): FormattedError {
  if (g?.locations) error.locations = g.locations;
  if (g?.path) error.path = g.path;
  return error;
}

function fromApp(e: AppError, g: GraphQLError | undefined): Classified {
  const extensions: FormattedError['extensions'] = { code: e.code };
  if (e.details !== undefined) extensions.details = e.details;
  return { status: e.statusCode, error: place(g, { message: e.message, extensions }) };
}

/** One error (possibly a mercurius wrapper of several) as formatted errors with their status. */
export function classify(err: unknown, log: FastifyBaseLogger): Classified[] {
  const g = err instanceof GraphQLError ? err : undefined;
  const inner: unknown = g ? g.originalError : err;
  if (inner instanceof AppError) return [fromApp(inner, g)];
  const wrapped = (inner as { errors?: unknown } | undefined)?.errors;
  if (Array.isArray(wrapped) && codeOf(inner) !== undefined) {
    // mercurius MER_ERR_GQL_VALIDATION and friends carry the real errors in `.errors`
    const wrapperCode = String(codeOf(inner));
    return wrapped.flatMap((e: unknown) => {
      if (e instanceof GraphQLError || e instanceof AppError || MERCURIUS_CODES[String(codeOf(e))]) return classify(e, log);
      const known = MERCURIUS_CODES[wrapperCode] ?? { code: 'GRAPHQL_BAD_REQUEST', status: 400 };
      return [{ status: known.status, error: { message: e instanceof Error ? e.message : 'bad GraphQL request', extensions: { code: known.code } } }];
    });
  }
  const mapped = MERCURIUS_CODES[String(codeOf(inner))];
  if (mapped) return [{ status: mapped.status, error: place(g, { message: (inner as Error).message, extensions: { code: mapped.code } }) }];
  if (inner instanceof GraphQLError) return classify(inner, log);
  if (g && inner === undefined) {
    // produced by graphql-js itself: a syntax error has positions but no AST nodes
    const parse = !g.nodes?.length && (g.positions?.length ?? 0) > 0;
    return [{ status: 400, error: place(g, { message: g.message, extensions: { code: parse ? 'GRAPHQL_PARSE_FAILED' : 'GRAPHQL_VALIDATION_FAILED' } }) }];
  }
  const db = toAppError(inner);
  if (db) {
    if (db.statusCode >= 500) log.error({ err: inner }, 'graphql resolver failed');
    return [fromApp(db, g)];
  }
  const status = typeof (inner as { statusCode?: unknown })?.statusCode === 'number' ? (inner as { statusCode: number }).statusCode : 500;
  if (status >= 400 && status < 500 && codeOf(inner)) {
    return [{ status, error: place(g, { message: (inner as Error).message, extensions: { code: String(codeOf(inner)) } }) }];
  }
  log.error({ err: inner ?? err }, 'graphql request failed');
  return [{ status: 500, error: place(g, { message: 'internal error; quote the request id when reporting it', extensions: { code: 'INTERNAL' } }) }];
}

/** Format a list of errors; the status is the first error's (for responses without data). */
export function formatErrors(errors: readonly unknown[], log: FastifyBaseLogger): { status: number; errors: FormattedError[] } {
  const all = errors.flatMap((e) => classify(e, log));
  return { status: all[0]?.status ?? 500, errors: all.map((c) => c.error) };
}
