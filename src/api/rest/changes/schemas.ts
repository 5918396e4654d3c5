/** TypeBox shapes of change events and pages (REST and OpenAPI). */
import { Type } from '@sinclair/typebox';

const Json = Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()]);

export const ChangeEvent = Type.Object({
  id: Type.String({ description: 'Change id (bigint as a string); increasing in write order' }),
  txid: Type.String({ description: 'PostgreSQL transaction id (xid8)' }),
  tenant_id: Type.String(),
  table: Type.String(),
  op: Type.Union([Type.Literal('insert'), Type.Literal('update'), Type.Literal('delete')]),
  pk: Type.Record(Type.String(), Type.Unknown(), { description: 'Primary-key columns of the row' }),
  before: Json,
  after: Json,
  actor: Type.Union([Type.String(), Type.Null()]),
  at: Type.String({ format: 'date-time', description: 'Transaction timestamp' }),
});

export const ChangePage = Type.Object({
  data: Type.Array(ChangeEvent),
  next_cursor: Type.Union([Type.String(), Type.Null()], { description: 'Pass as `after` for the next page; null when this page is not full' }),
});

export const PageQuery = {
  after: Type.Optional(Type.String({ description: 'Return events with a greater id (a change id; default 0)' })),
  limit: Type.Optional(Type.Integer({ minimum: 1 })),
};
