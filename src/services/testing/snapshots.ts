/**
 * Tenant snapshots of testing mode: one tenant's rows of every tenant table, read through its own
 * session (RLS), kept in Redis as JSON for TESTING_SNAPSHOT_TTL_S; a restore deletes the tenant's
 * rows and writes the snapshot's back in one tenant transaction, so other tenants never notice.
 * (The database-level snapshots of strata/testing clone whole databases; a served database is
 * shared by tenants, hence rows here.) DELETE /v1/testing/data is the delete half of a restore.
 */
import pg from 'pg';
import type { Redis } from 'ioredis';
import type { Database } from '../../db/database.js';
import type { SessionContext, Tx } from '../../db/session.js';
import { AppError, badRequest, notFound, unavailable } from '../../errors.js';
import type { SchemaRegistry, TableInfo } from '../data/index.js';
import { tenantTables } from './tenant-tables.js';

export interface SnapshotDeps {
  db: Database;
  schema: SchemaRegistry;
  redis: Redis;
  maxRows: number;
  ttlS: number;
  keyPrefix?: string;
  afterCommit?: (ctx: SessionContext, tables: string[]) => Promise<void>;
}

export interface SnapshotInfo {
  name: string;
  tables: Record<string, number>;
  rows: number;
  created_at: string;
}

const q = pg.escapeIdentifier;

export function createTestingSnapshots(deps: SnapshotDeps) {
  const prefix = deps.keyPrefix ?? 'strata:testing:snapshot';
  const key = (tenant: string, name: string) => `${prefix}:${tenant}:${name}`;

  function tenantOf(ctx: SessionContext): string {
    if (!ctx.tenantId) throw badRequest('TENANT_REQUIRED', 'testing mode works on one tenant: use a token that names one');
    return ctx.tenantId;
  }

  async function redisCall<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof AppError) throw err;
      throw unavailable('SNAPSHOT_STORE_UNAVAILABLE', 'the snapshot store (Redis) is unavailable; retry shortly', 2, err);
    }
  }

  /** Delete the tenant's rows of every tenant table, children first; rows deleted per table. */
  async function wipe(tx: Tx, tables: TableInfo[]): Promise<Record<string, number>> {
    const deleted: Record<string, number> = {};
    for (const t of [...tables].reverse()) {
      const { rowCount } = await tx.query(`DELETE FROM ${t.qualified}`);
      deleted[t.name] = rowCount ?? 0;
    }
    return deleted;
  }

  return {
    /** Save the caller's tenant's rows under `name` (replacing a snapshot of that name). */
    async take(ctx: SessionContext, name: string): Promise<SnapshotInfo> {
      const tenant = tenantOf(ctx);
      const tables = tenantTables(await deps.schema.tables());
      const data: Record<string, string> = {};
      const counts: Record<string, number> = {};
      let total = 0;
      await deps.db.withTenant(
        ctx,
        async (tx) => {
          for (const t of tables) {
            const left = deps.maxRows - total;
            const { rows } = await tx.query<{ n: number; rows: string }>(
              `SELECT count(*)::int AS n, coalesce(jsonb_agg(to_jsonb(r)), '[]')::text AS rows FROM (SELECT * FROM ${t.qualified} LIMIT $1) r`,
              [left + 1],
            );
            const n = rows[0]?.n ?? 0;
            if (n > left) {
              throw new AppError(413, 'SNAPSHOT_TOO_LARGE', `the tenant holds more than TESTING_SNAPSHOT_MAX_ROWS (${deps.maxRows}) rows`);
            }
            total += n;
            counts[t.name] = n;
            data[t.name] = rows[0]?.rows ?? '[]';
          }
        },
        { isolation: 'repeatable read', readOnly: true },
      );
      const info: SnapshotInfo = { name, tables: counts, rows: total, created_at: new Date().toISOString() };
      await redisCall(() =>
        deps.redis.multi().del(key(tenant, name)).hset(key(tenant, name), { ...prefixed(data), info: JSON.stringify(info) }).expire(key(tenant, name), deps.ttlS).exec(),
      );
      return info;
    },

    /** Replace the caller's tenant's rows with the snapshot `name`; 404 SNAPSHOT_NOT_FOUND. */
    async restore(ctx: SessionContext, name: string): Promise<SnapshotInfo & { deleted: Record<string, number> }> {
      const tenant = tenantOf(ctx);
      const saved = await redisCall(() => deps.redis.hgetall(key(tenant, name)));
      if (!saved['info']) throw notFound('SNAPSHOT_NOT_FOUND', `no snapshot named ${JSON.stringify(name)} for this tenant (expired, or never taken)`);
      const info = JSON.parse(saved['info']) as SnapshotInfo;
      const tables = tenantTables(await deps.schema.tables());
      const deleted = await deps.db.withTenant(ctx, async (tx) => {
        const removed = await wipe(tx, tables);
        for (const t of tables) {
          const rows = saved[`t:${t.name}`];
          if (!rows || rows === '[]') continue;
          const cols = t.columns.filter((c) => !c.generated || c.identityAlways).map((c) => q(c.name));
          const overriding = t.columns.some((c) => c.identityAlways) ? ' OVERRIDING SYSTEM VALUE' : '';
          await tx.query(
            `INSERT INTO ${t.qualified} (${cols.join(', ')})${overriding} SELECT ${cols.join(', ')} FROM jsonb_populate_recordset(NULL::${t.qualified}, $1::jsonb)`,
            [rows],
          );
        }
        return removed;
      });
      await deps.afterCommit?.(ctx, tables.map((t) => t.name));
      return { ...info, deleted };
    },

    /** Delete every row of the caller's tenant in the tenant tables (RLS keeps it to them). */
    async wipe(ctx: SessionContext): Promise<Record<string, number>> {
      tenantOf(ctx);
      const tables = tenantTables(await deps.schema.tables());
      const deleted = await deps.db.withTenant(ctx, (tx) => wipe(tx, tables));
      await deps.afterCommit?.(ctx, tables.map((t) => t.name));
      return deleted;
    },
  };
}

const prefixed = (data: Record<string, string>) => Object.fromEntries(Object.entries(data).map(([k, v]) => [`t:${k}`, v]));
