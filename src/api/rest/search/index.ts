/**
 * Search (SPEC 10): GET /v1/search (ranked full-text, highlights, fuzzy, facets, keyset paging) and
 * POST /v1/search (vector top-k, hybrid text + vector, or text with a JSON body). Tenant-scoped by RLS.
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { ErrorBody, errorResponses } from '../../schemas/common.js';
import type { QueryString } from '../../../services/data/index.js';

const tags = ['search'];
const Hit = Type.Object({
  row: Type.Unknown({ description: 'The row, as the rows API renders it (select= applies)' }),
  score: Type.Number({ description: 'ts_rank_cd (text), word_similarity (fuzzy), cosine similarity (vector) or the RRF score (hybrid)' }),
  match: Type.Optional(Type.Union([Type.Literal('text'), Type.Literal('fuzzy')])),
  highlights: Type.Optional(Type.Record(Type.String(), Type.String(), { description: 'ts_headline snippet per indexed column, terms in <mark>' })),
  text_rank: Type.Optional(Type.Union([Type.Integer(), Type.Null()])),
  vector_rank: Type.Optional(Type.Union([Type.Integer(), Type.Null()])),
});
const Result = Type.Object({
  data: Type.Array(Hit),
  facets: Type.Optional(Type.Record(Type.String(), Type.Array(Type.Object({ value: Type.Union([Type.String(), Type.Null()]), count: Type.Integer() })))),
  total: Type.Optional(Type.Integer({ description: 'Hits (text and fuzzy) under the same filters, all pages' })),
  next_cursor: Type.Union([Type.String(), Type.Null()]),
});
const GetQuery = Type.Object(
  {
    q: Type.Optional(Type.String({ description: 'websearch_to_tsquery syntax: words, "a phrase", a OR b, -excluded' })),
    table: Type.String({ minLength: 1, maxLength: 63 }),
    fuzzy: Type.Optional(Type.Boolean({ description: 'Add trigram (typo-tolerant) matches when the text query finds fewer than SEARCH_FUZZY_THRESHOLD' })),
    facets: Type.Optional(Type.String({ description: 'Comma-separated columns to count hits by, e.g. level,status' })),
    select: Type.Optional(Type.String()),
    limit: Type.Optional(Type.String({ pattern: '^[0-9]+$' })),
    cursor: Type.Optional(Type.String()),
  },
  { additionalProperties: true, description: 'Any other parameter is a rows-API filter: column=op.value, or=(...), and=(...)' },
);
const PostBody = Type.Object(
  {
    table: Type.String({ minLength: 1, maxLength: 63 }),
    q: Type.Optional(Type.String()),
    vector: Type.Optional(Type.Array(Type.Number(), { maxItems: 16000 })),
    k: Type.Optional(Type.Integer({ description: 'Results of a vector or hybrid search (default 10, at most 100)' })),
    hybrid: Type.Optional(Type.Boolean({ description: 'Fuse the text and vector rankings by reciprocal rank fusion (k = 60)' })),
    fuzzy: Type.Optional(Type.Boolean()),
    facets: Type.Optional(Type.Array(Type.String())),
    filters: Type.Optional(Type.Record(Type.String(), Type.String(), { description: 'Rows-API filters, e.g. { "level": "eq.error", "or": "(a.eq.1,b.eq.2)" }' })),
    select: Type.Optional(Type.String()),
    limit: Type.Optional(Type.Integer()),
    cursor: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);

export default async function searchRoutes(app: FastifyInstance) {
  const responses = { 200: Result, 409: ErrorBody, ...errorResponses };
  app.get('/', { config: { capability: 'read' }, schema: { tags, querystring: GetQuery, response: responses } }, async (request) => {
    const { q, table, fuzzy, facets, ...rest } = request.query as { q?: string; table: string; fuzzy?: boolean; facets?: string } & QueryString;
    return app.services.search.search(request.ctx, { table, q: q ?? '', fuzzy, facets: facets?.split(','), qs: rest });
  });
  app.post('/', { config: { capability: 'read' }, schema: { tags, body: PostBody, response: responses } }, async (request) =>
    app.services.search.searchPost(request.ctx, request.body as Parameters<typeof app.services.search.searchPost>[1]),
  );
}
