/**
 * Domain types shared by every layer.
 *
 * Glossary
 * - tenant: an isolated customer of the platform; every tenant row carries `tenant_id`, and
 *   PostgreSQL row-level security (policy on `current_setting('strata.tenant_id')`) enforces it.
 * - actor: who acts (the JWT `sub`, or `apikey:<id>`), recorded in `strata.actor` for audit.
 * - role: what the actor may do: reader, writer, analyst (reader + raw read-only SQL), admin
 *   (tenant admin), platform_admin (cross-tenant operations).
 * - shard: one PostgreSQL server holding some tenants; the pool layer is keyed by shard.
 * - tenant session: a transaction on a pooled connection, running as a non-owner role, with the
 *   tenant and actor set LOCAL; nothing of it survives on the connection.
 * - job: a BullMQ job owned by a tenant, followed at /v1/jobs/{id}.
 */
export const ROLES = ['reader', 'writer', 'analyst', 'admin', 'platform_admin'] as const;
export type Role = (typeof ROLES)[number];

/** Roles allowed per capability; routes declare which capability they need. */
export const CAN = {
  read: ['reader', 'writer', 'analyst', 'admin', 'platform_admin'],
  write: ['writer', 'admin', 'platform_admin'],
  sql: ['analyst', 'admin', 'platform_admin'],
  admin: ['admin', 'platform_admin'],
  platform: ['platform_admin'],
} as const satisfies Record<string, readonly Role[]>;
export type Capability = keyof typeof CAN;

/** Who is calling: set by the auth plugin from a verified JWT or API key, never from input. */
export interface RequestContext {
  readonly requestId: string;
  /** Null only for a platform_admin token that names no tenant. */
  readonly tenantId: string | null;
  readonly actor: string;
  readonly role: Role;
  /** Set when the request names a tenant sandbox: every tenant session of it runs on the sandbox's database. */
  readonly sandbox?: SandboxTarget;
  /** The token's `sandbox` claim: such a credential is served against that sandbox only, never the real data. */
  readonly sandboxClaim?: string;
}

/** A tenant sandbox a request is served against (resolved and checked against the tenant by the API). */
export interface SandboxTarget {
  readonly id: string;
  /** The sandbox's database on the same server (strata_sbx_<hex>, from strata.sandboxes, never from input). */
  readonly database: string;
}

/** Tenant identifiers: also enforced by a CHECK on strata.tenants. */
export const TENANT_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
