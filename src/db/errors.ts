/**
 * PostgreSQL SQLSTATEs the service acts on, in one place, and their mapping to HTTP answers.
 * Never match on message strings: the SQLSTATE is the contract.
 */
import { AppError, conflict, forbidden, gatewayTimeout, unavailable, badRequest, responseTooLarge } from '../errors.js';
import { isOversizedResult } from './guarded-socket.js';

export const SQLSTATE = {
  UNIQUE_VIOLATION: '23505',
  FOREIGN_KEY_VIOLATION: '23503',
  NOT_NULL_VIOLATION: '23502',
  CHECK_VIOLATION: '23514',
  EXCLUSION_VIOLATION: '23P01',
  STRING_TOO_LONG: '22001',
  INVALID_TEXT_REPRESENTATION: '22P02',
  NUMERIC_OUT_OF_RANGE: '22003',
  INVALID_DATETIME: '22007',
  DATETIME_OVERFLOW: '22008',
  CHARACTER_NOT_IN_REPERTOIRE: '22021',
  INVALID_ESCAPE_SEQUENCE: '22025',
  SYNTAX_ERROR: '42601',
  INVALID_REGULAR_EXPRESSION: '2201B',
  CANNOT_COERCE: '42846',
  INVALID_PARAMETER_VALUE: '22023',
  UNDEFINED_OBJECT: '42704',
  UNTRANSLATABLE_CHARACTER: '22P05',
  SERIALIZATION_FAILURE: '40001',
  DEADLOCK_DETECTED: '40P01',
  QUERY_CANCELED: '57014',
  LOCK_NOT_AVAILABLE: '55P03',
  INSUFFICIENT_PRIVILEGE: '42501',
  READ_ONLY_TRANSACTION: '25006',
  IN_FAILED_TRANSACTION: '25P02',
  ADMIN_SHUTDOWN: '57P01',
  CRASH_SHUTDOWN: '57P02',
  CANNOT_CONNECT_NOW: '57P03',
  TOO_MANY_CONNECTIONS: '53300',
  /** "out of memory: Cannot enlarge string buffer": one value past PostgreSQL's 1 GB limit. */
  PROGRAM_LIMIT_EXCEEDED: '54000',
  /** strata.answer_within (0017): the rows a write returns would pass the answer's byte bound; the write rolled back. */
  ANSWER_TOO_LARGE: 'ST413',
} as const;

const CONNECTION_SQLSTATES = new Set<string>([
  SQLSTATE.ADMIN_SHUTDOWN,
  SQLSTATE.CRASH_SHUTDOWN,
  SQLSTATE.CANNOT_CONNECT_NOW,
  SQLSTATE.TOO_MANY_CONNECTIONS,
]);
const CONNECTION_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH']);

interface PgErrorLike {
  code?: string;
  /** The PostgreSQL source file that raised it (the `F` field of the error message). */
  file?: string;
  constraint?: string;
  column?: string;
  table?: string;
  detail?: string;
}

/** True for errors meaning the connection (not the statement) is gone. */
/**
 * node-postgres' client-side read timeout (`query_timeout`, DB_CLIENT_GRACE_MS past the statement
 * timeout) fired: the server did not answer at all (stopped, partitioned). The connection is dropped.
 */
export function isReadTimeout(err: unknown): boolean {
  return err instanceof Error && err.message === 'Query read timeout';
}

export function isConnectionError(err: unknown): boolean {
  if (!err || typeof err !== 'object') return false;
  const code = (err as PgErrorLike).code;
  if (code && (CONNECTION_SQLSTATES.has(code) || CONNECTION_ERRNOS.has(code))) return true;
  const msg = err instanceof Error ? err.message : '';
  // node-postgres raises these without a code when the socket closes under it
  return /Connection terminated|Client has encountered a connection error|not queryable|Query read timeout/.test(msg);
}

export function isRetryable(err: unknown): boolean {
  const code = (err as PgErrorLike | null)?.code;
  return code === SQLSTATE.SERIALIZATION_FAILURE || code === SQLSTATE.DEADLOCK_DETECTED;
}

/** Translate a database error into the HTTP-facing AppError; undefined when it is a genuine 500. */
export function toAppError(err: unknown): AppError | undefined {
  if (err instanceof AppError) return err;
  if (isOversizedResult(err)) {
    return responseTooLarge('the answer is too large to send; select fewer columns or rows (see docs/limits.md)');
  }
  if (isReadTimeout(err)) {
    return unavailable('DB_UNRESPONSIVE', 'the database did not answer within the statement timeout and its grace (DB_CLIENT_GRACE_MS); the connection was dropped', 5, err);
  }
  if (isConnectionError(err)) {
    return unavailable('DB_UNAVAILABLE', 'the database connection was lost; retry shortly', 1, err);
  }
  const e = (err ?? {}) as PgErrorLike;
  switch (e.code) {
    case SQLSTATE.UNIQUE_VIOLATION:
      return conflict('UNIQUE_VIOLATION', `a row with the same key already exists${e.constraint ? ` (${e.constraint})` : ''}`, {
        constraint: e.constraint,
      });
    case SQLSTATE.FOREIGN_KEY_VIOLATION:
      return conflict('FOREIGN_KEY_VIOLATION', `a referenced row does not exist or is still referenced${e.constraint ? ` (${e.constraint})` : ''}`, {
        constraint: e.constraint,
      });
    case SQLSTATE.NOT_NULL_VIOLATION:
      return badRequest('NOT_NULL_VIOLATION', `column ${e.column ?? '?'} must not be null`, { column: e.column });
    case SQLSTATE.CHECK_VIOLATION:
      return badRequest('CHECK_VIOLATION', `a value breaks the check ${e.constraint ?? ''}`.trim(), { constraint: e.constraint });
    case SQLSTATE.STRING_TOO_LONG:
      return badRequest('VALUE_TOO_LONG', 'a value is longer than its column allows');
    case SQLSTATE.INVALID_TEXT_REPRESENTATION:
    case SQLSTATE.NUMERIC_OUT_OF_RANGE:
    case SQLSTATE.INVALID_DATETIME:
    case SQLSTATE.DATETIME_OVERFLOW:
      return badRequest('INVALID_VALUE', 'a value has the wrong type or is out of range');
    case SQLSTATE.INVALID_REGULAR_EXPRESSION:
      return badRequest('INVALID_REGEX', 'a match/imatch pattern is not a valid regular expression');
    case SQLSTATE.INVALID_PARAMETER_VALUE:
    case SQLSTATE.CANNOT_COERCE:
      // a cast the request asked for (`col::int` on a jsonb column: 42846 when planned, 22023 when run)
      return badRequest('INVALID_CAST', 'a cast or value in the request cannot be converted to the type asked for');
    case SQLSTATE.INVALID_ESCAPE_SEQUENCE:
      return badRequest('INVALID_VALUE', 'a LIKE pattern ends with an escape character (\\); escape it as \\\\');
    case SQLSTATE.SYNTAX_ERROR:
      // the text search parsers raise 42601 for a malformed query string given to fts; a syntax
      // error anywhere else comes from SQL the service built and stays a 500
      if (e.file === 'tsquery.c' || e.file === 'tsvector_parser.c')
        return badRequest('INVALID_FTS_QUERY', 'the full-text query is malformed (use plfts or wfts for plain words)');
      return undefined;
    case SQLSTATE.UNDEFINED_OBJECT:
      // a name the request gave (a text search configuration, `fts(nope)`) that the database lacks
      return badRequest('UNKNOWN_NAME', 'a name in the request does not exist in the database (such as a text search configuration)');
    case SQLSTATE.CHARACTER_NOT_IN_REPERTOIRE:
    case SQLSTATE.UNTRANSLATABLE_CHARACTER:
      return badRequest('INVALID_TEXT', 'a value holds a character PostgreSQL cannot store in text (such as NUL, \\u0000)');
    case SQLSTATE.SERIALIZATION_FAILURE:
    case SQLSTATE.DEADLOCK_DETECTED:
      return conflict('TRANSACTION_CONFLICT', 'the transaction kept conflicting with concurrent ones; retry budget exhausted');
    case SQLSTATE.QUERY_CANCELED:
      return gatewayTimeout('STATEMENT_TIMEOUT', 'the query ran past its statement timeout and was cancelled', err);
    case SQLSTATE.LOCK_NOT_AVAILABLE:
      return conflict('LOCK_TIMEOUT', 'a row or table lock could not be obtained in time');
    case SQLSTATE.INSUFFICIENT_PRIVILEGE:
      // RLS WITH CHECK failures and privilege errors: the database refused, we say so.
      return forbidden('FORBIDDEN_BY_DATABASE', 'the database refused this operation for your tenant or role');
    case SQLSTATE.PROGRAM_LIMIT_EXCEEDED:
      return responseTooLarge('a value of the answer is larger than PostgreSQL can build (1 GB); select fewer columns or rows');
    case SQLSTATE.ANSWER_TOO_LARGE:
      // the services answer this with their own setting named; this is the fallback
      return responseTooLarge('the rows this write returns would be larger than one answer may be; nothing was written: ask for return=minimal or fewer columns', {
        max_bytes: Number(e.detail) || undefined,
      });
    case SQLSTATE.READ_ONLY_TRANSACTION:
      return forbidden('READ_ONLY', 'this operation may not write');
    default:
      return undefined;
  }
}
