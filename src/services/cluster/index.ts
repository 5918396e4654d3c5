/**
 * Scale-out on Citus: the cluster step after migrations, and tenant placement (cluster overview,
 * isolate, online move, rebalance, add node) for platform admins.
 */
import type pg from 'pg';
import { detectClusterMode } from '../../db/cluster-mode.js';
import { distributeTables, type DistributeReport } from './distribute.js';

export type { DistributeReport } from './distribute.js';
export { createClusterService, type ClusterService } from './admin.js';

/** Advisory lock key of the cluster step (one process at a time distributes). */
const CLUSTER_STEP_LOCK = 0x53434c53; // 'SCLS'

/**
 * After migrations: on a Citus coordinator, distribute tenant tables by tenant_id (colocated),
 * make tenant-readable shared tables reference tables, and set the session propagation the tenant
 * sessions need. A no-op (one catalog query) on a single server. Returns null there.
 */
export async function prepareCluster(pool: pg.Pool, log: { info(obj: object, msg: string): void }): Promise<DistributeReport | null> {
  const client = await pool.connect();
  try {
    const mode = await detectClusterMode(client);
    if (!mode.cluster) return null;
    await client.query('SELECT pg_advisory_lock($1)', [CLUSTER_STEP_LOCK]);
    try {
      const report = await distributeTables(client);
      log.info({ ...report, citus: mode.citusVersion, workers: mode.workers }, 'cluster step: tenant tables distributed');
      return report;
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [CLUSTER_STEP_LOCK]);
    }
  } finally {
    client.release();
  }
}
