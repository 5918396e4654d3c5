/**
 * Cluster mode (Citus): capabilities not available on a cluster answer
 * `501 NOT_SUPPORTED_ON_CLUSTER` with the reason, before any work, instead of failing halfway on a
 * worker. The support matrix in docs/cluster.md lists the same routes. On a single server this
 * hook is not even installed.
 */
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';
import { AppError } from '../errors.js';

interface Rule {
  /** Route pattern prefix (request.routeOptions.url). */
  readonly prefix: string;
  readonly suffix?: string;
  readonly capability: string;
  readonly reason: string;
}

/** What does not run on a cluster, and why (docs/cluster.md, support matrix). */
export const CLUSTER_UNSUPPORTED: readonly Rule[] = [
  { prefix: '/v1/admin/backups', capability: 'backups', reason: 'pg_dump of the coordinator holds no shard rows; a cluster is backed up per node with a common restore point (citus_create_restore_point), outside Strata' },
  { prefix: '/v1/admin/restores', capability: 'restores', reason: 'a cluster is restored per node to a common restore point (citus_create_restore_point), outside Strata' },
  { prefix: '/v1/admin/sandboxes', capability: 'tenant sandboxes', reason: "a sandbox is a copy of the coordinator's database; a cluster's tenant rows live on the workers' shards" },
  { prefix: '/v1/admin/index-advice', capability: 'index advice', reason: 'HypoPG hypothetical indexes exist only on the coordinator, where no shard rows are planned' },
];

export function clusterRuleFor(url: string | undefined): Rule | undefined {
  if (!url) return undefined;
  return CLUSTER_UNSUPPORTED.find((r) => url === r.prefix || url.startsWith(`${r.prefix}/`));
}

export default fp(async function clusterGuard(app: FastifyInstance) {
  if (!app.db.cluster) return;
  app.addHook('preHandler', async (request) => {
    const rule = clusterRuleFor(request.routeOptions.url);
    if (rule) throw new AppError(501, 'NOT_SUPPORTED_ON_CLUSTER', `${rule.capability} is not available on a Citus cluster: ${rule.reason}`, { capability: rule.capability });
  });
});
