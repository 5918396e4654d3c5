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

const CAPTURE =
  'change capture writes the change log from row triggers, which on a cluster run on the worker holding the shard and cannot write the coordinator\'s ordered log';

/** What does not run on a cluster, and why. */
export const CLUSTER_UNSUPPORTED: readonly Rule[] = [
  { prefix: '/v1/changes', capability: 'change feed, change stream and undo', reason: CAPTURE },
  { prefix: '/v1/webhooks', capability: 'webhooks', reason: `webhooks deliver change events: ${CAPTURE}` },
  { prefix: '/v1/tables/:table/rows/:pk/history', capability: 'row history', reason: `row history reads the change log: ${CAPTURE}` },
  { prefix: '/v1/admin/backups', capability: 'backups', reason: 'pg_dump of the coordinator holds no shard rows; a cluster is backed up per node with a common restore point (citus_create_restore_point), outside Strata' },
  { prefix: '/v1/admin/restores', capability: 'restores', reason: 'a cluster is restored per node to a common restore point (citus_create_restore_point), outside Strata' },
  { prefix: '/v1/admin/views', capability: 'materialized views', reason: 'materialized views over distributed tables are not yet verified on a cluster' },
  { prefix: '/v1/views', capability: 'materialized views', reason: 'materialized views over distributed tables are not yet verified on a cluster' },
  { prefix: '/v1/tables/:table/timeseries', capability: 'time series', reason: 'time series over distributed tables are not yet verified on a cluster' },
  { prefix: '/v1/tables/:table/export', capability: 'streamed exports', reason: 'COPY exports through the coordinator are not yet verified on a cluster' },
  { prefix: '/v1/sql/export', capability: 'streamed exports', reason: 'COPY exports through the coordinator are not yet verified on a cluster' },
  { prefix: '/v1/exports', capability: 'export jobs', reason: 'COPY exports through the coordinator are not yet verified on a cluster' },
  { prefix: '/v1/search', capability: 'search', reason: 'search over distributed tables is not yet verified on a cluster' },
  { prefix: '/v1/admin/search-indexes', capability: 'search indexes', reason: 'search index DDL on distributed tables is not yet verified on a cluster' },
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
