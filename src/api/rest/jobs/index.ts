/**
 * Jobs: read one (GET /v1/jobs/{id}), follow it as Server-Sent Events (GET /v1/jobs/{id}/events),
 * cancel it (DELETE /v1/jobs/{id}); and the platform's manual maintenance triggers.
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { errorResponses, ErrorBody } from '../../schemas/common.js';
import type { JobEvent } from '../../../jobs/queues.js';
import { sendEventStream } from '../event-stream.js';

export const JobView = Type.Object({
  id: Type.String({ description: 'Job id: `<queue>-<uuid>`' }),
  name: Type.String(),
  queue: Type.String(),
  state: Type.Union(
    ['waiting', 'delayed', 'active', 'completed', 'failed', 'cancelling', 'cancelled', 'unknown'].map((s) => Type.Literal(s)),
  ),
  progress: Type.Unknown({ description: '`{ done, total, percent }` (total and percent null when unknown), or a number' }),
  result: Type.Unknown({ description: 'The result of a completed job, else null' }),
  error: Type.Union([Type.String(), Type.Null()], { description: 'Why a failed job failed' }),
  attempts: Type.Integer({ minimum: 0 }),
  created_at: Type.String({ format: 'date-time' }),
  finished_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});
const Params = Type.Object({ id: Type.String({ description: 'Job id: `<queue>-<uuid>`' }) });
const tags = ['jobs'];
const HEARTBEAT_MS = 15_000;

/** One SSE message. */
function frame(seq: number, event: JobEvent): string {
  const data = event.type === 'state' ? { state: event.state } : event.type === 'progress' ? { progress: event.progress } : event.job;
  return `id: ${seq}\nevent: ${event.type}\ndata: ${JSON.stringify(data)}\n\n`;
}

export default async function jobRoutes(app: FastifyInstance) {
  app.get(
    '/:id',
    { config: { capability: 'read' }, schema: { tags, params: Params, response: { 200: Type.Object({ data: JobView }), ...errorResponses } } },
    async (request) => ({ data: await app.jobs.get(request.ctx, (request.params as { id: string }).id) }),
  );

  app.get(
    '/:id/events',
    {
      config: { capability: 'read' },
      schema: {
        tags,
        description:
          'Server-Sent Events: `progress` and `state` as they change, then one final `done`, `failed` or `cancelled` carrying the job; a comment every 15 s keeps the connection open. Once the credential no longer holds (token expired, API key revoked or expired, tenant suspended), a last `error` event `{ code, message }` ends the stream.',
        params: Params,
        produces: ['text/event-stream'],
        response: { 200: Type.String({ description: 'text/event-stream' }), ...errorResponses },
      },
    },
    async (request, reply) => {
      const { id } = request.params as { id: string };
      await app.jobs.get(request.ctx, id); // 404 (or 503) as a normal JSON error, before streaming
      let seq = 0;
      await sendEventStream(request, reply, {
        comment: 'stream of job events',
        heartbeatMs: HEARTBEAT_MS,
        label: 'job event stream',
        watch: app.auth.watch(request.headers, request.ctx),
        recheckMs: app.config.STREAM_AUTH_RECHECK_MS,
        events: (signal) => app.jobs.events(request.ctx, id, { signal }),
        frame: (event) => frame(++seq, event),
      });
    },
  );

  app.delete(
    '/:id',
    {
      config: { capability: 'write' },
      schema: { tags, params: Params, response: { 202: Type.Object({ data: JobView }), 409: ErrorBody, ...errorResponses } },
    },
    async (request, reply) => reply.code(202).send({ data: await app.jobs.cancel(request.ctx, (request.params as { id: string }).id) }),
  );
}

/** Manual triggers of the platform's scheduled jobs (platform_admin). */
export async function maintenanceRoutes(app: FastifyInstance) {
  app.post(
    '/expire-api-keys',
    {
      config: { capability: 'platform' },
      schema: {
        tags,
        description: 'Run the API-key expiry sweep now (it also runs on API_KEY_SWEEP_CRON).',
        response: { 202: Type.Object({ job_id: Type.String() }), ...errorResponses },
      },
    },
    async (request, reply) => reply.code(202).send(await app.jobs.enqueue(request.ctx, 'expire-api-keys', {})),
  );
}
