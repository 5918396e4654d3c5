/** Types of the platform tables (schema `strata`), for Kysely. */
import type { ColumnType, Generated } from 'kysely';

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;

export interface TenantsTable {
  id: string;
  name: string;
  status: Generated<'active' | 'suspended'>;
  created_at: Generated<Date>;
  updated_at: Generated<Date>;
}

export interface ApiKeysTable {
  id: Generated<string>;
  tenant_id: string;
  role: 'reader' | 'writer' | 'analyst' | 'admin' | 'platform_admin';
  name: string;
  key_hash: Buffer;
  created_by: string;
  created_at: Generated<Date>;
  expires_at: Timestamp | null;
  revoked_at: Timestamp | null;
  last_used_at: Timestamp | null;
}

export interface PlatformDB {
  'strata.tenants': TenantsTable;
  'strata.api_keys': ApiKeysTable;
}
