/** Schemas shared by every route: the error envelope and small reusable pieces. */
import { Type, type Static } from '@sinclair/typebox';

export const ErrorBody = Type.Object(
  {
    error: Type.Object({
      code: Type.String({ description: 'Stable machine-readable error code' }),
      message: Type.String(),
      details: Type.Optional(Type.Unknown()),
    }),
  },
  { $id: 'ErrorBody' },
);
export type ErrorBody = Static<typeof ErrorBody>;

/** Standard error responses for authenticated routes. */
export const errorResponses = {
  400: ErrorBody,
  401: ErrorBody,
  403: ErrorBody,
  404: ErrorBody,
  /** RATE_LIMITED or TENANT_CONCURRENCY_LIMIT, with Retry-After (docs/limits.md). */
  429: ErrorBody,
  503: ErrorBody,
};
