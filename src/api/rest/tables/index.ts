/**
 * The data API over the schema registry (PostgREST-style): tables with their JSON Schema, and rows
 * with select/embedding, filters, order, keyset cursors, counts, validated writes, upserts,
 * optimistic concurrency. Every statement runs in the caller's tenant session (RLS applies).
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import { Type } from '@sinclair/typebox';
import { ErrorBody, errorResponses } from '../../schemas/common.js';
import { jsonSchemaFor, relationships, type TableInfo } from '../../../services/data/index.js';
import type { QueryString, ReturnPreference, WriteResult } from '../../../services/data/index.js';

const tags = ['tables'];
const TableName = Type.String({ minLength: 1, maxLength: 63 });
const TableParams = Type.Object({ table: TableName });
const RowParams = Type.Object({ table: TableName, pk: Type.String({ minLength: 1, maxLength: 256 }) });
const Row = Type.Record(Type.String(), Type.Unknown());
const Page = Type.Object({
  data: Type.Array(Row),
  next_cursor: Type.Union([Type.String(), Type.Null()]),
  total: Type.Optional(Type.Integer()),
});
const ReadQuery = Type.Object(
  {
    select: Type.Optional(Type.String({ description: 'Columns and embedded relationships, e.g. id,name,pipeline_runs(id,status)' })),
    order: Type.Optional(Type.String({ description: 'e.g. created_at.desc.nullslast,id' })),
    limit: Type.Optional(Type.String({ pattern: '^[0-9]+$' })),
    cursor: Type.Optional(Type.String({ description: 'next_cursor of the previous page' })),
    count: Type.Optional(Type.Union([Type.Literal('exact'), Type.Literal('estimated')])),
  },
  { additionalProperties: true, description: 'Any other parameter is a filter: column=op.value (eq, neq, gt, gte, lt, lte, like, ilike, in, is, cs, cd, ov, fts, plfts, phfts, wfts), or=(...), and=(...)' },
);
const WriteQuery = Type.Object(
  { select: Type.Optional(Type.String()), on_conflict: Type.Optional(Type.String()) },
  { additionalProperties: true },
);
const writeResponses = { ...errorResponses, 409: ErrorBody, 412: ErrorBody, 413: ErrorBody, 415: ErrorBody };
const TableView = Type.Object({
  name: Type.String(),
  primary_key: Type.Array(Type.String()),
  rls: Type.Object({ enabled: Type.Boolean(), forced: Type.Boolean() }),
  columns: Type.Array(
    Type.Object({ name: Type.String(), type: Type.String(), nullable: Type.Boolean(), has_default: Type.Boolean(), max_length: Type.Union([Type.Integer(), Type.Null()]), enum: Type.Union([Type.Array(Type.String()), Type.Null()]) }),
  ),
  foreign_keys: Type.Array(Type.Object({ name: Type.String(), columns: Type.Array(Type.String()), table: Type.String(), ref_columns: Type.Array(Type.String()) })),
  relationships: Type.Array(Type.Object({ name: Type.String(), kind: Type.String(), table: Type.String() })),
  indexes: Type.Array(Type.Object({ name: Type.String(), columns: Type.Array(Type.String()), unique: Type.Boolean() })),
  json_schema: Type.Unknown(),
});

function view(t: TableInfo) {
  return {
    name: t.name,
    primary_key: t.primaryKey,
    rls: t.rls,
    columns: t.columns.map((c) => ({ name: c.name, type: c.type, nullable: c.nullable, has_default: c.hasDefault, max_length: c.maxLength, enum: c.enum })),
    foreign_keys: t.foreignKeys.map((f) => ({ name: f.name, columns: f.columns, table: f.table, ref_columns: f.refColumns })),
    relationships: relationships(t).map((r) => ({ name: r.name, kind: r.kind, table: r.table })),
    indexes: t.indexes.map((i) => ({ name: i.name, columns: i.columns, unique: i.unique })),
    json_schema: jsonSchemaFor(t),
  };
}

/** `Prefer: return=minimal|representation, resolution=ignore-duplicates|merge-duplicates`. */
function prefer(header: string | string[] | undefined): { returning?: ReturnPreference; ignoreDuplicates: boolean } {
  const text = Array.isArray(header) ? header.join(',') : (header ?? '');
  const returning = /return=minimal/.test(text) ? 'minimal' : /return=representation/.test(text) ? 'representation' : undefined;
  return { returning, ignoreDuplicates: /resolution=ignore-duplicates/.test(text) };
}

const json = (reply: FastifyReply) => reply.type('application/json; charset=utf-8');

function sendWrite(reply: FastifyReply, r: WriteResult, created: boolean) {
  if (r.etag) void reply.header('etag', r.etag);
  if (r.body === undefined) return reply.code(created ? 201 : 204).header('preference-applied', 'return=minimal').send();
  return json(reply).code(created ? 201 : 200).send(r.body);
}

export default async function tableRoutes(app: FastifyInstance) {
  const rows = () => app.services.rows;
  const read = { capability: 'read' as const };
  const write = { capability: 'write' as const };

  app.get('/', { config: read, schema: { tags, response: { 200: Type.Object({ data: Type.Array(TableView) }), ...errorResponses } } }, async () => ({
    data: [...(await app.services.schema.tables()).values()].map(view),
  }));

  app.get('/:table', { config: read, schema: { tags, params: TableParams, response: { 200: Type.Object({ data: TableView }), ...errorResponses } } }, async (request) => ({
    data: view(await app.services.schema.table((request.params as { table: string }).table)),
  }));

  app.get(
    '/:table/rows',
    { config: read, schema: { tags, params: TableParams, querystring: ReadQuery, response: { 200: Page, ...errorResponses } } },
    async (request, reply) => {
      const { table } = request.params as { table: string };
      const qs = request.query as QueryString;
      const r = await app.services.cache.read(request.ctx, { route: 'list', table, qs }, () => rows().list(request.ctx, table, qs));
      return json(reply).header('x-cache', r.status).send(r.value);
    },
  );

  app.get(
    '/:table/rows/:pk',
    {
      config: read,
      schema: { tags, params: RowParams, querystring: Type.Object({ select: Type.Optional(Type.String()) }, { additionalProperties: true }), response: { 200: Type.Object({ data: Row }), ...errorResponses } },
    },
    async (request, reply) => {
      const { table, pk } = request.params as { table: string; pk: string };
      const qs = request.query as QueryString;
      const { value: r, status } = await app.services.cache.read(request.ctx, { route: 'get', table, pk, qs }, () => rows().get(request.ctx, table, pk, qs));
      return json(reply).header('etag', r.etag).header('x-cache', status).send(r.body);
    },
  );

  app.post(
    '/:table/rows',
    {
      config: write,
      schema: {
        tags,
        params: TableParams,
        querystring: WriteQuery,
        body: Type.Union([Row, Type.Array(Row)], { description: 'One row or an array of rows' }),
        response: { 201: Type.Object({ data: Type.Union([Row, Type.Array(Row)]) }), ...writeResponses },
      },
    },
    async (request, reply) => {
      const { table } = request.params as { table: string };
      const qs = request.query as { select?: string; on_conflict?: string };
      const p = prefer(request.headers.prefer);
      const r = await rows().insert(request.ctx, table, request.body, { onConflict: qs.on_conflict, ignoreDuplicates: p.ignoreDuplicates, returning: p.returning, select: qs.select });
      return sendWrite(reply, r, true);
    },
  );

  const patchSchema = (withPk: boolean) => ({
    tags,
    params: withPk ? RowParams : TableParams,
    querystring: WriteQuery,
    body: Row,
    response: { 200: Type.Object({ data: Type.Union([Row, Type.Array(Row)]) }), 204: Type.Null(), ...writeResponses },
  });
  const deleteSchema = (withPk: boolean) => ({
    tags,
    params: withPk ? RowParams : TableParams,
    querystring: WriteQuery,
    response: { 200: Type.Object({ data: Type.Union([Row, Type.Array(Row)]) }), 204: Type.Null(), ...writeResponses },
  });
  const ifMatch = (h: string | string[] | undefined) => (Array.isArray(h) ? h[0] : h);

  app.patch('/:table/rows/:pk', { config: write, schema: patchSchema(true) }, async (request, reply) => {
    const { table, pk } = request.params as { table: string; pk: string };
    const p = prefer(request.headers.prefer);
    const r = await rows().update(request.ctx, table, { pk, qs: request.query as QueryString }, request.body, { ifMatch: ifMatch(request.headers['if-match']), returning: p.returning });
    return sendWrite(reply, r, false);
  });
  app.patch('/:table/rows', { config: write, schema: patchSchema(false) }, async (request, reply) => {
    const { table } = request.params as { table: string };
    const p = prefer(request.headers.prefer);
    const r = await rows().update(request.ctx, table, { qs: request.query as QueryString }, request.body, { returning: p.returning });
    return sendWrite(reply, r, false);
  });
  app.delete('/:table/rows/:pk', { config: write, schema: deleteSchema(true) }, async (request, reply) => {
    const { table, pk } = request.params as { table: string; pk: string };
    const p = prefer(request.headers.prefer);
    const r = await rows().remove(request.ctx, table, { pk, qs: request.query as QueryString }, { ifMatch: ifMatch(request.headers['if-match']), returning: p.returning });
    return sendWrite(reply, r, false);
  });
  app.delete('/:table/rows', { config: write, schema: deleteSchema(false) }, async (request, reply) => {
    const { table } = request.params as { table: string };
    const p = prefer(request.headers.prefer);
    const r = await rows().remove(request.ctx, table, { qs: request.query as QueryString }, { returning: p.returning });
    return sendWrite(reply, r, false);
  });
}
