/**
 * Typed errors with a stable `code` and `statusCode`. The one error handler (src/plugins/errors.ts)
 * turns them into `{ error: { code, message, details } }`.
 */
export class AppError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
    options?: { cause?: unknown; headers?: Record<string, string> },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AppError';
    this.headers = options?.headers;
  }
  readonly headers: Record<string, string> | undefined;
}

export const badRequest = (code: string, message: string, details?: unknown) =>
  new AppError(400, code, message, details);
export const unauthorized = (code: string, message: string) => new AppError(401, code, message);
export const forbidden = (code: string, message: string, details?: unknown) =>
  new AppError(403, code, message, details);
export const notFound = (code: string, message: string) => new AppError(404, code, message);
export const conflict = (code: string, message: string, details?: unknown) =>
  new AppError(409, code, message, details);
export const preconditionFailed = (code: string, message: string, details?: unknown) =>
  new AppError(412, code, message, details);
export const unavailable = (code: string, message: string, retryAfterSeconds = 1, cause?: unknown) =>
  new AppError(503, code, message, undefined, { cause, headers: { 'retry-after': String(retryAfterSeconds) } });
export const gatewayTimeout = (code: string, message: string, cause?: unknown) =>
  new AppError(504, code, message, undefined, { cause });

/** 499 (nginx's "client closed request"): the caller left before the work started; nothing was done. */
export const clientGone = () =>
  new AppError(499, 'CLIENT_CLOSED_REQUEST', 'the client closed the connection before the request was executed; nothing was written');

/** 413 RESPONSE_TOO_LARGE: an answer past its byte bound (RESPONSE_MAX_BYTES and its per-API overrides). */
export const responseTooLarge = (message: string, details?: unknown) => new AppError(413, 'RESPONSE_TOO_LARGE', message, details);
export const isAppError = (e: unknown): e is AppError => e instanceof AppError;
