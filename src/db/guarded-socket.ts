/**
 * The socket of every pooled database connection. node-postgres parses the protocol inside the
 * socket's 'data' handler, so an exception there (pg-protocol's `ERR_STRING_TOO_LONG` when one
 * value is longer than V8's largest string, about 512 MB) is thrown out of an event emitter with
 * nothing to catch it: the whole process would end. Here such an exception destroys this one socket
 * with the error instead; node-postgres then fails the queries of this connection with it, the pool
 * drops the connection, and the request answers 413 RESPONSE_TOO_LARGE (src/db/errors.ts).
 *
 * The response bounds (src/services/data/response-bounds.ts) keep such answers from being built at
 * all; this is the floor under them. TLS connections parse on the TLS socket node-postgres makes
 * itself, which this does not wrap: there the process-wide last-resort handler (src/last-resort.ts)
 * drains and restarts the process.
 */
import net from 'node:net';

/** The code of the error a guarded socket is destroyed with. */
export const UNREADABLE_RESULT = 'STRATA_UNREADABLE_RESULT';

export class UnreadableResultError extends Error {
  readonly code = UNREADABLE_RESULT;
  constructor(cause: unknown) {
    super(`a database answer could not be read: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    this.name = 'UnreadableResultError';
  }
}

/** True when the unreadable answer was too long for a JavaScript string. */
export function isOversizedResult(err: unknown): boolean {
  if (!(err instanceof UnreadableResultError)) return false;
  const cause = err.cause as { code?: unknown } | undefined;
  return cause?.code === 'ERR_STRING_TOO_LONG' || cause instanceof RangeError;
}

export class GuardedSocket extends net.Socket {
  override emit(event: string | symbol, ...args: unknown[]): boolean {
    if (event !== 'data') return super.emit(event, ...args);
    try {
      return super.emit(event, ...args);
    } catch (err) {
      this.destroy(new UnreadableResultError(err));
      return false;
    }
  }
}

/** The `stream` option of pg.Client / pg.Pool. */
export const guardedStream = (): net.Socket => new GuardedSocket();
