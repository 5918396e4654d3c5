/**
 * Glossary. A tenant's *limits* are its fair share of the service: a request rate (counted across
 * every API process) and caps on concurrent work of each kind (connections held from each pool,
 * streamed exports, running jobs). *Overrides* are what PATCH /v1/admin/tenants/{id} stored for one
 * tenant; every key it did not set takes the *default* from the configuration.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { Config } from '../../config.js';

/** The names of the limits, their bounds and meaning: the PATCH body and the docs come from this. */
export const LIMIT_FIELDS = {
  requests_per_second: { max: 10_000_000, description: 'Requests per second across all API processes (LIMIT_REQUESTS_PER_SECOND)' },
  app_connections: { max: 1000, description: 'Connections of the tenant-session pool held at once (LIMIT_APP_CONNECTIONS)' },
  stream_connections: { max: 1000, description: 'Connections of the streaming pool held at once (LIMIT_STREAM_CONNECTIONS)' },
  exports: { max: 1000, description: 'Streamed exports running at once per API process (LIMIT_EXPORTS)' },
  jobs: { max: 1000, description: 'Jobs running at once across all workers (LIMIT_JOBS)' },
} as const;
export type LimitName = keyof typeof LIMIT_FIELDS;
export const LIMIT_NAMES = Object.keys(LIMIT_FIELDS) as LimitName[];

/** Effective limits of a tenant: every key has a value. */
export type TenantLimits = Record<LimitName, number>;
/** A tenant's stored overrides. */
export type LimitOverrides = Partial<TenantLimits>;

// One JSON-Schema type list, not a union: with the app's type coercion a union would read 0 as null.
const patchField = (k: LimitName) =>
  Type.Optional(
    Type.Unsafe<number | null>({
      type: ['integer', 'null'],
      minimum: 1,
      maximum: LIMIT_FIELDS[k].max,
      description: `${LIMIT_FIELDS[k].description}: a whole number from 1 to ${LIMIT_FIELDS[k].max}, or null for the default`,
    }),
  );
const viewField = (k: LimitName) => Type.Integer({ description: LIMIT_FIELDS[k].description });

/** PATCH body `limits`: a whole number per key to set it, null to go back to the default. */
export const LimitsPatch = Type.Object(
  {
    requests_per_second: patchField('requests_per_second'),
    app_connections: patchField('app_connections'),
    stream_connections: patchField('stream_connections'),
    exports: patchField('exports'),
    jobs: patchField('jobs'),
  },
  { additionalProperties: false, minProperties: 1, description: 'Per-tenant limits to change; keys left out keep their value' },
);
export type LimitsPatchInput = Partial<Record<LimitName, number | null>>;

/** Every limit of a tenant, as a whole number (the response shape). */
export const LimitsView = Type.Object({
  requests_per_second: viewField('requests_per_second'),
  app_connections: viewField('app_connections'),
  stream_connections: viewField('stream_connections'),
  exports: viewField('exports'),
  jobs: viewField('jobs'),
});
/** The overrides a tenant has (only the keys set). */
export const OverridesView = Type.Partial(LimitsView);
export type LimitsViewType = Static<typeof LimitsView>;

/** Pool sizes the connection defaults are derived from. */
export interface PoolSizes {
  app: number;
  stream: number;
}

/** Defaults of every tenant, from the configuration (connection caps: half of each pool, rounded up). */
export function defaultLimits(config: Config, pools: PoolSizes): TenantLimits {
  return {
    requests_per_second: config.LIMIT_REQUESTS_PER_SECOND,
    app_connections: config.LIMIT_APP_CONNECTIONS ?? Math.ceil(pools.app / 2),
    stream_connections: config.LIMIT_STREAM_CONNECTIONS ?? Math.ceil(pools.stream / 2),
    exports: config.LIMIT_EXPORTS,
    jobs: config.LIMIT_JOBS,
  };
}

/** Stored overrides (a jsonb object) merged over the defaults; unknown or malformed keys are ignored. */
export function mergeLimits(defaults: TenantLimits, stored: unknown): TenantLimits {
  const out = { ...defaults };
  if (stored && typeof stored === 'object') {
    for (const k of LIMIT_NAMES) {
      const v = (stored as Record<string, unknown>)[k];
      if (typeof v === 'number' && Number.isInteger(v) && v >= 1) out[k] = v;
    }
  }
  return out;
}

/** Only the known keys of a stored object (what GET shows as the tenant's own overrides). */
export function overridesOf(stored: unknown): LimitOverrides {
  const out: LimitOverrides = {};
  if (stored && typeof stored === 'object') {
    for (const k of LIMIT_NAMES) {
      const v = (stored as Record<string, unknown>)[k];
      if (typeof v === 'number') out[k] = v;
    }
  }
  return out;
}
