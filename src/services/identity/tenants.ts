/** Tenant registry (platform_admin): register, list, suspend and reactivate tenants. */
import { sql, type Kysely } from 'kysely';
import type { PlatformDB } from '../../db/generated/tenant-db.js';
import { conflict, notFound } from '../../errors.js';

export interface Tenant {
  id: string;
  name: string;
  status: 'active' | 'suspended';
  created_at: string;
  updated_at: string;
  /** The tenant's own limit overrides as stored (src/services/limits reads them; absent keys: defaults). */
  limits: unknown;
}

/** A change of limits: a whole number sets one, null removes the override. */
export type LimitsChange = Record<string, number | null>;

const toTenant = (r: { id: string; name: string; status: 'active' | 'suspended'; created_at: Date; updated_at: Date; limits: unknown }): Tenant => ({
  ...r,
  created_at: r.created_at.toISOString(),
  updated_at: r.updated_at.toISOString(),
});

export function createTenantService(deps: { kysely: Kysely<PlatformDB>; onChange?: (id: string) => void }) {
  const { kysely } = deps;
  return {
    /** Register a tenant; 409 TENANT_EXISTS when the id is taken. */
    async create(input: { id: string; name: string }): Promise<Tenant> {
      const row = await kysely
        .insertInto('strata.tenants')
        .values({ id: input.id, name: input.name })
        .onConflict((oc) => oc.column('id').doNothing())
        .returningAll()
        .executeTakeFirst();
      if (!row) throw conflict('TENANT_EXISTS', `tenant ${input.id} already exists`);
      // A token naming the id before it existed cached "unknown"; drop that so it works at once.
      deps.onChange?.(row.id);
      return toTenant(row);
    },
    async list(): Promise<Tenant[]> {
      const rows = await kysely.selectFrom('strata.tenants').selectAll().orderBy('id').execute();
      return rows.map(toTenant);
    },
    async get(id: string): Promise<Tenant> {
      const row = await kysely.selectFrom('strata.tenants').selectAll().where('id', '=', id).executeTakeFirst();
      if (!row) throw notFound('TENANT_NOT_FOUND', `tenant ${id} does not exist`);
      return toTenant(row);
    },
    /** Change name, status and limits (merged into the stored overrides; null removes one). */
    async update(id: string, patch: { name?: string; status?: 'active' | 'suspended'; limits?: LimitsChange }): Promise<Tenant> {
      const { limits, ...rest } = patch;
      const row = await kysely
        .updateTable('strata.tenants')
        .set({
          ...rest,
          ...(limits ? { limits: sql<string>`jsonb_strip_nulls(limits || ${JSON.stringify(limits)}::jsonb)` } : {}),
          updated_at: new Date(),
        })
        .where('id', '=', id)
        .returningAll()
        .executeTakeFirst();
      if (!row) throw notFound('TENANT_NOT_FOUND', `tenant ${id} does not exist`);
      deps.onChange?.(id);
      return toTenant(row);
    },
  };
}
export type TenantService = ReturnType<typeof createTenantService>;
