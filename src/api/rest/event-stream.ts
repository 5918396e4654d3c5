/**
 * One Server-Sent Events response: headers, an opening comment, heartbeats, one frame per event,
 * an `error` event when the source fails, and cleanup when the client goes away. Validate the
 * request before calling it: errors found here can no longer be JSON responses.
 *
 * A stream outlives the check of its credential at the request: with `watch`, the credential is
 * checked before every event (a token's expiry) and re-read every `recheckMs` (an API key's
 * revocation, the tenant's suspension). When it no longer holds, the last frame is
 * `event: error` with `{ "code": "TOKEN_EXPIRED" | "CREDENTIAL_REVOKED" | "CREDENTIAL_EXPIRED" |
 * "TENANT_SUSPENDED" | "TENANT_UNKNOWN", "message" }`, and nothing is delivered after it.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { CredentialEnd, CredentialWatch } from '../../services/identity/index.js';

export interface EventStreamOptions<T> {
  /** The opening comment (`: <comment>`). */
  comment: string;
  heartbeatMs: number;
  /** Names the stream in the log line of a failure. */
  label: string;
  /** The events; stop when `signal` aborts (the client went away or the stream ends). */
  events: (signal: AbortSignal) => AsyncIterable<T>;
  /** One complete SSE frame (`id:`, `event:`, `data:` lines and the blank line). */
  frame: (event: T) => string;
  /** Aborted when the stream ends; pass one to end it from outside (server shutdown). */
  abort?: AbortController;
  /** The caller's credential, re-checked while the stream is open (app.auth.watch). */
  watch?: CredentialWatch;
  /** Interval of watch.refresh() (STREAM_AUTH_RECHECK_MS). */
  recheckMs?: number;
}

const endFrame = (end: CredentialEnd) => `event: error\ndata: ${JSON.stringify({ code: end.code, message: end.message })}\n\n`;

export async function sendEventStream<T>(request: FastifyRequest, reply: FastifyReply, o: EventStreamOptions<T>): Promise<void> {
  const abort = o.abort ?? new AbortController();
  reply.hijack();
  const res = reply.raw;
  res.on('close', () => abort.abort()); // the client went away (or the stream ended)
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
    'x-request-id': request.id,
  });
  res.write(`: ${o.comment}\n\n`);
  let ended = false;
  const heartbeat = setInterval(() => ended || res.write(': heartbeat\n\n'), o.heartbeatMs);
  /** Ends the stream for a credential that no longer holds: one last frame, then nothing. */
  const endFor = (end: CredentialEnd) => {
    if (ended) return;
    ended = true;
    request.log.info({ tenant: request.ctx?.tenantId, code: end.code }, `${o.label} ended: credential no longer valid`);
    if (!res.destroyed) res.write(endFrame(end));
    abort.abort();
  };
  const watch = o.watch;
  const recheck = watch
    ? setInterval(() => {
        void watch.refresh().then((end) => end && endFor(end));
      }, o.recheckMs ?? 10_000)
    : undefined;
  try {
    for await (const event of o.events(abort.signal)) {
      if (res.destroyed || ended) break;
      const end = watch?.current();
      if (end) {
        endFor(end);
        break;
      }
      res.write(o.frame(event));
    }
  } catch (err) {
    if (!abort.signal.aborted) {
      request.log.warn({ err, tenant: request.ctx?.tenantId }, `${o.label} ended by an error`);
      const code = (err as { code?: unknown }).code;
      if (!res.destroyed) res.write(`event: error\ndata: ${JSON.stringify({ code: typeof code === 'string' ? code : 'INTERNAL' })}\n\n`);
    }
  } finally {
    clearInterval(heartbeat);
    if (recheck) clearInterval(recheck);
    abort.abort();
    res.end();
  }
}
