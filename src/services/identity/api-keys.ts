/** API keys: created by a tenant admin for its own tenant, stored hashed, shown once, revocable. */
import { randomBytes } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import type { PlatformDB } from '../../db/generated/tenant-db.js';
import type { RequestContext, Role } from '../../domain.js';
import { badRequest, forbidden, notFound } from '../../errors.js';
import { hashApiKey } from './auth.js';

export interface ApiKey {
  id: string;
  tenant_id: string;
  name: string;
  role: Role;
  created_by: string;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
  last_used_at: string | null;
}

const RANK: Record<Role, number> = { reader: 0, writer: 1, analyst: 1, admin: 2, platform_admin: 3 };
const iso = (d: Date | string | null) => (d === null ? null : new Date(d).toISOString());

export function createApiKeyService(deps: { kysely: Kysely<PlatformDB> }) {
  const { kysely } = deps;
  const columns = ['id', 'tenant_id', 'name', 'role', 'created_by', 'created_at', 'expires_at', 'revoked_at', 'last_used_at'] as const;
  const toKey = (r: Record<(typeof columns)[number], unknown>): ApiKey => ({
    id: r.id as string,
    tenant_id: r.tenant_id as string,
    name: r.name as string,
    role: r.role as Role,
    created_by: r.created_by as string,
    created_at: iso(r.created_at as Date) as string,
    expires_at: iso(r.expires_at as Date | null),
    revoked_at: iso(r.revoked_at as Date | null),
    last_used_at: iso(r.last_used_at as Date | null),
  });
  const tenantOf = (ctx: RequestContext): string => {
    if (!ctx.tenantId) throw badRequest('TENANT_REQUIRED', 'API keys belong to a tenant: use a token that names one');
    return ctx.tenantId;
  };

  return {
    /** Create a key for the caller's tenant. The secret is returned once and only its hash is kept. */
    async create(ctx: RequestContext, input: { name: string; role: Role; expires_at?: string }): Promise<ApiKey & { key: string }> {
      const tenantId = tenantOf(ctx);
      if (RANK[input.role] > RANK[ctx.role]) {
        throw forbidden('ROLE_ESCALATION', `a ${ctx.role} cannot create a key with role ${input.role}`);
      }
      if (input.expires_at !== undefined && !(new Date(input.expires_at).getTime() > Date.now())) {
        throw badRequest('INVALID_EXPIRY', 'expires_at must be a timestamp in the future');
      }
      const key = `sk_${randomBytes(24).toString('base64url')}`;
      const row = await kysely
        .insertInto('strata.api_keys')
        .values({
          tenant_id: tenantId,
          name: input.name,
          role: input.role,
          key_hash: hashApiKey(key),
          created_by: ctx.actor,
          expires_at: input.expires_at ?? null,
        })
        .returning(columns)
        .executeTakeFirstOrThrow();
      return { ...toKey(row), key };
    },
    async list(ctx: RequestContext): Promise<ApiKey[]> {
      const rows = await kysely
        .selectFrom('strata.api_keys')
        .select(columns)
        .where('tenant_id', '=', tenantOf(ctx))
        .orderBy('created_at', 'desc')
        .execute();
      return rows.map(toKey);
    },
    /**
     * Revoke a key of the caller's tenant; another tenant's key is 404 (its existence is not told).
     * Idempotent: revoking again keeps the first revocation time (it is audit data).
     */
    async revoke(ctx: RequestContext, id: string): Promise<ApiKey> {
      const row = await kysely
        .updateTable('strata.api_keys')
        .set({ revoked_at: sql<Date>`coalesce(revoked_at, now())` })
        .where('id', '=', id)
        .where('tenant_id', '=', tenantOf(ctx))
        .returning(columns)
        .executeTakeFirst();
      if (!row) throw notFound('API_KEY_NOT_FOUND', `API key ${id} does not exist`);
      return toKey(row);
    },
    /** Revoke every key past its expiry (the scheduled maintenance job). Returns how many. */
    async revokeExpired(): Promise<number> {
      const res = await kysely
        .updateTable('strata.api_keys')
        .set({ revoked_at: new Date() })
        .where('revoked_at', 'is', null)
        .where('expires_at', '<=', new Date())
        .executeTakeFirst();
      return Number(res.numUpdatedRows);
    },
  };
}
export type ApiKeyService = ReturnType<typeof createApiKeyService>;
