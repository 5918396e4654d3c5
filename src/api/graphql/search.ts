/**
 * GraphQL `search` (SPEC 10): the text search of GET /v1/search as a query field:
 * `search(table, q, fuzzy, facets, filter, limit, after) { hits { row score match highlights } facets total nextCursor }`.
 * `filter` takes rows-API filters as a JSON object (`{ level: "eq.error" }`). Same service, same
 * tenant session and row-level security as REST.
 */
import type { FastifyInstance } from 'fastify';
import {
  GraphQLBoolean,
  GraphQLFloat,
  GraphQLInt,
  GraphQLList,
  GraphQLNonNull,
  GraphQLObjectType,
  GraphQLString,
  type GraphQLFieldConfig,
} from 'graphql/index.js';
import { badRequest } from '../../errors.js';
import type { QueryString } from '../../services/data/index.js';
import type { GraphqlContext } from './context.js';
import { JSONScalar } from './scalars.js';

/** Names the search field takes in the schema (a table may not use them). */
export const SEARCH_TYPE_NAMES = ['search', 'SearchHit', 'SearchResult'];

const SearchHit = new GraphQLObjectType({
  name: 'SearchHit',
  fields: {
    row: { type: new GraphQLNonNull(JSONScalar) },
    score: { type: new GraphQLNonNull(GraphQLFloat) },
    match: { type: GraphQLString, description: 'text or fuzzy' },
    highlights: { type: JSONScalar, description: 'ts_headline snippet per indexed column, terms in <mark>' },
  },
});
const SearchResult = new GraphQLObjectType({
  name: 'SearchResult',
  fields: {
    hits: { type: new GraphQLNonNull(new GraphQLList(new GraphQLNonNull(SearchHit))) },
    facets: { type: JSONScalar, description: '{ column: [{ value, count }] } for the requested facets' },
    total: { type: new GraphQLNonNull(GraphQLInt) },
    nextCursor: { type: GraphQLString },
  },
});

interface Args {
  table: string;
  q: string;
  fuzzy?: boolean | null;
  facets?: string[] | null;
  filter?: unknown;
  limit?: number | null;
  after?: string | null;
}

/** The `search` query field. */
export function searchField(): GraphQLFieldConfig<Record<string, unknown>, GraphqlContext> {
  return {
    type: new GraphQLNonNull(SearchResult),
    description: 'Ranked full-text search over a search-indexed table (websearch syntax), with highlights, typo tolerance and facets.',
    args: {
      table: { type: new GraphQLNonNull(GraphQLString) },
      q: { type: new GraphQLNonNull(GraphQLString) },
      fuzzy: { type: GraphQLBoolean },
      facets: { type: new GraphQLList(new GraphQLNonNull(GraphQLString)) },
      filter: { type: JSONScalar, description: 'Rows-API filters, e.g. { "level": "eq.error" }' },
      limit: { type: GraphQLInt },
      after: { type: GraphQLString },
    },
    resolve: async (_src, raw, context) => {
      const args = raw as unknown as Args;
      const qs: QueryString = {};
      if (args.filter !== undefined && args.filter !== null) {
        if (typeof args.filter !== 'object' || Array.isArray(args.filter) || !Object.values(args.filter).every((v) => typeof v === 'string')) {
          throw badRequest('INVALID_ARGUMENT', 'search.filter must be an object of rows-API filters, e.g. { "level": "eq.error" }');
        }
        Object.assign(qs, args.filter);
      }
      if (typeof args.limit === 'number') qs['limit'] = String(args.limit);
      if (args.after) qs['cursor'] = args.after;
      const { app } = context as unknown as { app: FastifyInstance };
      const r = await app.services.search.search(context.strata.ctx, { table: args.table, q: args.q, fuzzy: args.fuzzy ?? false, facets: args.facets ?? undefined, qs });
      return { hits: r.data, facets: r.facets ?? {}, total: r.total ?? 0, nextCursor: r.next_cursor };
    },
  };
}
