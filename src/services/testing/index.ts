/**
 * Testing mode (TESTING_MODE=true only): factories, tenant snapshots and wiping a tenant's rows over
 * HTTP, so an end-to-end suite sets up state the way strata/testing does in-process.
 */
import type { Redis } from 'ioredis';
import type { Database } from '../../db/database.js';
import type { SessionContext } from '../../db/session.js';
import type { SchemaRegistry } from '../data/index.js';
import { createTestingFactories } from './factories.js';
import { createTestingSnapshots } from './snapshots.js';

export interface TestingServiceDeps {
  db: Database;
  schema: SchemaRegistry;
  redis: Redis;
  enabled: boolean;
  snapshotMaxRows: number;
  snapshotTtlS: number;
  afterCommit?: (ctx: SessionContext, tables: string[]) => Promise<void>;
}

export function createTestingService(deps: TestingServiceDeps) {
  const factories = createTestingFactories(deps);
  const snapshots = createTestingSnapshots({ ...deps, maxRows: deps.snapshotMaxRows, ttlS: deps.snapshotTtlS });
  return {
    enabled: deps.enabled,
    createRows: (ctx: SessionContext, table: string, count: number, overrides: Record<string, unknown>) => factories.create(ctx, table, count, overrides),
    takeSnapshot: (ctx: SessionContext, name: string) => snapshots.take(ctx, name),
    restoreSnapshot: (ctx: SessionContext, name: string) => snapshots.restore(ctx, name),
    wipe: (ctx: SessionContext) => snapshots.wipe(ctx),
  };
}

export type TestingService = ReturnType<typeof createTestingService>;
export type { SnapshotInfo } from './snapshots.js';
/** Tenant tables, parents first: also the tables a tenant sandbox copies (src/services/sandboxes). */
export { tenantTables } from './tenant-tables.js';
