/**
 * Kysely over the admin pool, typed with the platform schema, for the service's own queries.
 * Connections are borrowed through StrataPool so leak detection and metrics apply.
 */
import { Kysely, PostgresDialect } from 'kysely';
import type { StrataPool } from './pool.js';
import type { PlatformDB } from './generated/tenant-db.js';

export function createKysely(pool: StrataPool): Kysely<PlatformDB> {
  return new Kysely<PlatformDB>({
    dialect: new PostgresDialect({
      pool: {
        connect: async () => {
          const lease = await pool.acquire();
          return new Proxy(lease.client, {
            get: (target, prop) => {
              if (prop === 'release') return () => lease.release();
              const value: unknown = Reflect.get(target, prop, target);
              return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
            },
          });
        },
        end: async () => undefined,
      },
    }),
  });
}
