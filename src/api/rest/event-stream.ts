/**
 * One Server-Sent Events response: headers, an opening comment, heartbeats, one frame per event,
 * an `error` event when the source fails, and cleanup when the client goes away. Validate the
 * request before calling it: errors found here can no longer be JSON responses.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';

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
}

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
  const heartbeat = setInterval(() => res.write(': heartbeat\n\n'), o.heartbeatMs);
  try {
    for await (const event of o.events(abort.signal)) {
      if (res.destroyed) break;
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
    abort.abort();
    res.end();
  }
}
