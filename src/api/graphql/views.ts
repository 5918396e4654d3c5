/**
 * Dashboard fields of the GraphQL schema: materialized views' rows (tenant-filtered, with the
 * rows-API filter syntax) and time series of a table or a view. Table aggregates are the generated
 * `<table>_aggregate(where, group_by)` fields (schema.ts). Results are JSON, as the views are
 * created at run time and have no generated types.
 */
import { GraphQLInt, GraphQLNonNull, GraphQLString, type GraphQLFieldConfigMap } from 'graphql/index.js';
import { badRequest } from '../../errors.js';
import type { TimeseriesService } from '../../services/analytics/index.js';
import type { ViewsService } from '../../services/analytics/index.js';
import type { GraphqlContext } from './context.js';
import { checkFirst } from './cost.js';
import { JSONScalar } from './scalars.js';

type Args = Record<string, unknown>;
type QueryString = Record<string, string>;

/** `where` as a rows-API filter object: `{ "status": "eq.ok", "or": "(a.eq.1,b.is.null)" }`. */
function filters(where: unknown): QueryString {
  if (where === undefined || where === null) return {};
  if (typeof where !== 'object' || Array.isArray(where)) throw badRequest('INVALID_WHERE', 'where must be an object of rows-API filters, e.g. { "status": "eq.ok" }');
  const out: QueryString = {};
  for (const [k, v] of Object.entries(where)) {
    if (typeof v !== 'string') throw badRequest('INVALID_WHERE', `where.${k} must be a string such as "eq.5"`);
    if (['select', 'order', 'limit', 'cursor', 'count'].includes(k)) throw badRequest('INVALID_WHERE', `where.${k} is not a filter`);
    out[k] = v;
  }
  return out;
}

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

export function viewFields(services: { views: ViewsService; timeseries: TimeseriesService }): GraphQLFieldConfigMap<Record<string, unknown>, GraphqlContext> {
  return {
    view_rows: {
      type: new GraphQLNonNull(JSONScalar),
      description: 'Rows of a materialized view for your tenant: { data, next_cursor }. where: rows-API filters; order_by: e.g. "day.desc,id".',
      args: {
        name: { type: new GraphQLNonNull(GraphQLString) },
        where: { type: JSONScalar },
        order_by: { type: GraphQLString },
        first: { type: GraphQLInt, description: 'Rows to return (default 50, at most 1000).' },
        after: { type: GraphQLString, description: 'next_cursor of the previous page' },
      },
      resolve: async (_src, args: Args, { strata }, info) => {
        const first = checkFirst(args['first'], info.fieldName);
        const qs: QueryString = { ...filters(args['where']), limit: String(first) };
        const order = str(args['order_by']);
        if (order) qs['order'] = order;
        const after = str(args['after']);
        if (after) qs['cursor'] = after;
        return JSON.parse(await services.views.rows(strata.ctx, args['name'] as string, qs)) as unknown;
      },
    },
    timeseries: {
      type: new GraphQLNonNull(JSONScalar),
      description: 'A time series of a table (or of a materialized view with `view`), as GET /v1/tables/{table}/timeseries: { data: [{ bucket, group?, <agg>... }], meta }.',
      args: {
        table: { type: GraphQLString },
        view: { type: GraphQLString },
        time: { type: new GraphQLNonNull(GraphQLString) },
        bucket: { type: new GraphQLNonNull(GraphQLString) },
        agg: { type: GraphQLString, description: 'count, sum:<col>, avg:<col>, min:<col>, max:<col> (comma-separated)' },
        group: { type: GraphQLString },
        fill: { type: GraphQLString, description: 'zero, null or previous' },
        from: { type: GraphQLString },
        to: { type: GraphQLString },
        where: { type: JSONScalar },
      },
      resolve: async (_src, args: Args, { strata }) => {
        const table = str(args['table']);
        const view = str(args['view']);
        if ((table === undefined) === (view === undefined)) throw badRequest('INVALID_ARGUMENT', 'give exactly one of table or view');
        const qs: QueryString = { ...filters(args['where']) };
        for (const k of ['time', 'bucket', 'agg', 'group', 'fill', 'from', 'to']) {
          const v = str(args[k]);
          if (v !== undefined) qs[k] = v;
        }
        return view !== undefined ? services.views.timeseries(strata.ctx, view, qs) : services.timeseries.table(strata.ctx, table as string, qs);
      },
    },
  };
}
