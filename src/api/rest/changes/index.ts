/**
 * The change log: GET /v1/changes (keyset pages), GET /v1/changes/stream (Server-Sent Events that
 * resume from Last-Event-ID), POST /v1/changes/{id}/undo.
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { ErrorBody, errorResponses } from '../../schemas/common.js';
import { parseCursor } from '../../../services/changes/index.js';
import { ChangePage, PageQuery } from './schemas.js';
import { sendEventStream } from '../event-stream.js';

const tags = ['changes'];
const Filters = {
  table: Type.Optional(Type.String({ description: 'Only these tables (comma-separated)' })),
  op: Type.Optional(Type.String({ description: 'Only these operations: insert, update, delete (comma-separated)' })),
};

export default async function changeRoutes(app: FastifyInstance) {
  const streams = new Set<AbortController>();
  // Open streams end cleanly before the server closes (they would otherwise hold it open).
  app.addHook('preClose', async () => {
    for (const s of streams) s.abort();
  });

  app.get(
    '/',
    {
      config: { capability: 'read' },
      schema: { tags, querystring: Type.Object({ ...PageQuery, ...Filters }, { additionalProperties: false }), response: { 200: ChangePage, ...errorResponses } },
    },
    async (request) => app.services.changes.list(request.ctx, request.query as { after?: string; table?: string; op?: string; limit?: number }),
  );

  app.get(
    '/stream',
    {
      config: { capability: 'read' },
      schema: {
        tags,
        description:
          'Server-Sent Events: one `change` message per event (`id:` is the change id), in id order, from `Last-Event-ID` (header) or `after`; a comment every CHANGES_HEARTBEAT_MS keeps the connection open. The credential is re-checked while the stream is open: once it no longer holds (token expired, API key revoked or expired, tenant suspended), a last `error` event `{ code, message }` ends the stream.',
        querystring: Type.Object({ after: PageQuery.after, ...Filters }, { additionalProperties: false }),
        produces: ['text/event-stream'],
        response: { 200: Type.String({ description: 'text/event-stream' }), ...errorResponses },
      },
    },
    async (request, reply) => {
      const q = request.query as { after?: string; table?: string; op?: string };
      const lastId = request.headers['last-event-id'];
      const after = parseCursor(typeof lastId === 'string' && lastId !== '' ? lastId : q.after, typeof lastId === 'string' && lastId !== '' ? 'Last-Event-ID' : 'after');
      const filter = { tables: q.table?.split(','), ops: q.op?.split(',') };
      await app.services.changes.checkFilter(filter); // 400 as JSON, before streaming
      const abort = new AbortController();
      streams.add(abort);
      try {
        await sendEventStream(request, reply, {
          comment: 'stream of change events',
          heartbeatMs: app.config.CHANGES_HEARTBEAT_MS,
          label: 'change stream',
          abort,
          watch: app.auth.watch(request.headers, request.ctx),
          recheckMs: app.config.STREAM_AUTH_RECHECK_MS,
          events: (signal) => app.services.changes.follow(request.ctx, after, filter, signal),
          frame: (e) => `id: ${e.id}\nevent: change\ndata: ${JSON.stringify(e)}\n\n`,
        });
      } finally {
        streams.delete(abort);
      }
    },
  );

  app.post(
    '/:id/undo',
    {
      config: { capability: 'write' },
      schema: {
        tags,
        description: 'Apply the inverse of a change when the row is still exactly as that change left it; otherwise 409 UNDO_CONFLICT with `details.expected` and `details.current`. The undo is itself captured.',
        params: Type.Object({ id: Type.String() }),
        response: {
          200: Type.Object({
            data: Type.Object({
              undone: Type.String(),
              table: Type.String({ description: 'The table the undo wrote' }),
              op: Type.String({ description: 'The inverse operation applied' }),
              change_id: Type.Union([Type.String(), Type.Null()], { description: 'The change event of the undo' }),
              row: Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()]),
            }),
          }),
          409: ErrorBody,
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const data = await app.services.changes.undo(request.ctx, (request.params as { id: string }).id);
      // Like every write path: cached reads of the table are retired, debounced view refreshes scheduled.
      await app.services.hooks.afterCommit(request.ctx, [data.table]);
      return { data };
    },
  );
}

/** GET /v1/tables/{table}/rows/{pk}/history: who changed one row, what and when. */
export async function rowHistoryRoutes(app: FastifyInstance) {
  app.get(
    '/:table/rows/:pk/history',
    {
      config: { capability: 'read' },
      schema: {
        tags: ['changes'],
        params: Type.Object({ table: Type.String(), pk: Type.String() }),
        querystring: Type.Object(PageQuery, { additionalProperties: false }),
        response: { 200: ChangePage, ...errorResponses },
      },
    },
    async (request) => {
      const { table, pk } = request.params as { table: string; pk: string };
      return app.services.changes.history(request.ctx, table, pk, request.query as { after?: string; limit?: number });
    },
  );
}
