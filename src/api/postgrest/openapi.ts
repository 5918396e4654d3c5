/**
 * `GET /rest/v1/`: the OpenAPI (Swagger 2.0) description PostgREST serves at its root: one path
 * per exposed table and callable function, one definition per table.
 */
import type { FunctionInfo, TableInfo } from '../../services/data/index.js';

function propertyOf(c: TableInfo['columns'][number]): Record<string, unknown> {
  const base: Record<string, unknown> = { format: c.type };
  switch (c.udt) {
    case 'int2':
    case 'int4':
    case 'int8':
      base['type'] = 'integer';
      break;
    case 'numeric':
    case 'float4':
    case 'float8':
      base['type'] = 'number';
      break;
    case 'bool':
      base['type'] = 'boolean';
      break;
    case 'json':
    case 'jsonb':
      break;
    default:
      base['type'] = 'string';
  }
  if (c.isArray) return { type: 'array', items: { type: base['type'] ?? 'string' }, format: c.type };
  if (c.maxLength !== null) base['maxLength'] = c.maxLength;
  if (c.enum) base['enum'] = c.enum;
  return base;
}

export function openApiDocument(tables: TableInfo[], functions: FunctionInfo[], host: string | undefined) {
  const paths: Record<string, unknown> = { '/': { get: { tags: ['Introspection'], summary: 'OpenAPI description (this document)', produces: ['application/openapi+json', 'application/json'], responses: { '200': { description: 'OK' } } } } };
  const definitions: Record<string, unknown> = {};
  const common = ['select', 'order', 'range', 'rangeUnit', 'offset', 'limit', 'preferCount'].map((p) => ({ $ref: `#/parameters/${p}` }));
  for (const t of tables) {
    const rowFilters = t.columns.map((c) => ({ name: c.name, in: 'query', required: false, type: 'string', format: c.type }));
    const body = { name: t.name, in: 'body', required: false, schema: { $ref: `#/definitions/${t.name}` } };
    const ok = { '200': { description: 'OK', schema: { type: 'array', items: { $ref: `#/definitions/${t.name}` } } }, '206': { description: 'Partial Content' } };
    paths[`/${t.name}`] = {
      get: { tags: [t.name], summary: t.comment ?? undefined, parameters: [...rowFilters, ...common], responses: ok },
      post: { tags: [t.name], parameters: [body, { $ref: '#/parameters/select' }, { $ref: '#/parameters/preferPost' }], responses: { '201': { description: 'Created' } } },
      patch: { tags: [t.name], parameters: [...rowFilters, body, { $ref: '#/parameters/preferReturn' }], responses: { '204': { description: 'No Content' } } },
      delete: { tags: [t.name], parameters: [...rowFilters, { $ref: '#/parameters/preferReturn' }], responses: { '204': { description: 'No Content' } } },
    };
    const properties: Record<string, unknown> = {};
    for (const c of t.columns) {
      const p = propertyOf(c);
      if (t.primaryKey.includes(c.name)) p['description'] = 'Note:\nThis is a Primary Key.<pk/>';
      properties[c.name] = p;
    }
    definitions[t.name] = { type: 'object', properties, required: t.columns.filter((c) => !c.nullable && !c.hasDefault).map((c) => c.name) };
  }
  for (const f of functions) {
    const args = { type: 'object', properties: Object.fromEntries(f.args.map((a) => [a.name, { format: a.type, type: 'string' }])), required: f.args.filter((a) => !a.hasDefault).map((a) => a.name) };
    paths[`/rpc/${f.name}`] = {
      get: { tags: ['(rpc) ' + f.name], parameters: f.args.map((a) => ({ name: a.name, in: 'query', required: !a.hasDefault, type: 'string', format: a.type })), responses: { '200': { description: 'OK' } } },
      post: { tags: ['(rpc) ' + f.name], parameters: [{ name: 'args', in: 'body', required: true, schema: args }], responses: { '200': { description: 'OK' } } },
    };
  }
  const param = (name: string, inn: string, description: string, extra: Record<string, unknown> = {}) => ({ name, in: inn, required: false, type: 'string', description, ...extra });
  return {
    swagger: '2.0',
    info: { title: 'Strata PostgREST-compatible API', description: 'PostgREST 12 query syntax over Strata, with tenant isolation by row-level security.', version: '12' },
    host,
    basePath: '/rest/v1',
    schemes: ['http', 'https'],
    consumes: ['application/json', 'application/vnd.pgrst.object+json', 'text/csv'],
    produces: ['application/json', 'application/vnd.pgrst.object+json', 'text/csv'],
    paths,
    definitions,
    parameters: {
      select: param('select', 'query', 'Filtering Columns'),
      order: param('order', 'query', 'Ordering'),
      range: param('Range', 'header', 'Limiting and Pagination'),
      rangeUnit: param('Range-Unit', 'header', 'Limiting and Pagination', { default: 'items' }),
      offset: param('offset', 'query', 'Limiting and Pagination'),
      limit: param('limit', 'query', 'Limiting and Pagination'),
      preferCount: param('Prefer', 'header', 'Preference', { enum: ['count=none', 'count=exact', 'count=planned', 'count=estimated'] }),
      preferReturn: param('Prefer', 'header', 'Preference', { enum: ['return=representation', 'return=minimal', 'return=none'] }),
      preferPost: param('Prefer', 'header', 'Preference', { enum: ['return=representation', 'return=minimal', 'resolution=ignore-duplicates', 'resolution=merge-duplicates'] }),
    },
    securityDefinitions: { bearer: { type: 'apiKey', name: 'Authorization', in: 'header' }, apikey: { type: 'apiKey', name: 'apikey', in: 'header' } },
    security: [{ bearer: [] }, { apikey: [] }],
  };
}
