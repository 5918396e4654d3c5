/**
 * Tenant placement on a Citus cluster (platform_admin): the cluster overview, isolating a tenant on
 * its own shard, moving a tenant's shard group to another worker online (logical replication,
 * writes blocked only at the cutover), rebalancing, and adding a worker. Every statement goes
 * through the admin (owner) connection to the coordinator.
 *
 * Glossary: a *shard group* is the set of colocated shards (one per tenant table) holding the same
 * hash range of tenant_id, so a tenant's rows of every table move together.
 */
import type { Database } from '../../db/database.js';
import { AppError, badRequest, notFound } from '../../errors.js';
import { analystLoginOnWorkers } from './distribute.js';

export interface ClusterNode {
  id: number;
  host: string;
  port: number;
  role: 'coordinator' | 'worker';
  active: boolean;
  shards: number;
  bytes: number;
  tenants: number;
}

export interface TenantPlacement {
  tenant: string;
  shard_id: number;
  node: { host: string; port: number };
  /** Other tenants hashed into the same shard group (they move with it). */
  shared_with: number;
}

export interface ClusterOverview {
  mode: 'cluster';
  citus_version: string | null;
  nodes: ClusterNode[];
  distributed_tables: Array<{ table: string; shards: number; bytes: number }>;
  reference_tables: string[];
  tenants: TenantPlacement[];
}

/** Progress callback of the long operations (jobs report it over SSE). */
export type Progress = (info: Record<string, unknown>) => Promise<void> | void;

const notCluster = () =>
  new AppError(409, 'NOT_A_CLUSTER', 'this Strata runs on a single PostgreSQL server: cluster operations need a Citus coordinator (DATABASE_URL)');

export function createClusterService({ db }: { db: Database }) {
  const q = <R extends Record<string, unknown>>(text: string, values?: unknown[]) => db.adminQuery<R>(text, values);

  function requireCluster(): void {
    if (!db.cluster) throw notCluster();
  }

  /** The distributed table every tenant table is colocated with (the first of the group). */
  async function anchorTable(): Promise<string> {
    const { rows } = await q<{ t: string }>(
      "SELECT logicalrelid::regclass::text AS t FROM pg_dist_partition WHERE partmethod = 'h' AND column_to_column_name(logicalrelid, partkey) = 'tenant_id' ORDER BY colocationid, logicalrelid LIMIT 1",
    );
    const t = rows[0]?.t;
    if (!t) throw new AppError(409, 'NO_DISTRIBUTED_TABLES', 'no table is distributed by tenant_id (run the migrations: their cluster step distributes them)');
    return t;
  }

  async function tenantExists(tenant: string): Promise<void> {
    const { rowCount } = await q('SELECT 1 FROM strata.tenants WHERE id = $1', [tenant]);
    if (!rowCount) throw notFound('TENANT_NOT_FOUND', `no tenant ${JSON.stringify(tenant)}`);
  }

  async function placements(anchor: string, tenant?: string): Promise<TenantPlacement[]> {
    const { rows } = await q<{ tenant: string; shard_id: string; host: string; port: number; shared_with: number }>(
      `WITH t AS (
         SELECT id AS tenant, get_shard_id_for_distribution_column($1::regclass, id) AS shard_id
           FROM strata.tenants WHERE $2::text IS NULL OR id = $2)
       SELECT t.tenant, t.shard_id::text, n.nodename AS host, n.nodeport AS port,
              (SELECT count(*)::int - 1 FROM strata.tenants o WHERE get_shard_id_for_distribution_column($1::regclass, o.id) = t.shard_id) AS shared_with
         FROM t JOIN pg_dist_placement p ON p.shardid = t.shard_id JOIN pg_dist_node n ON n.groupid = p.groupid
        ORDER BY t.tenant`,
      [anchor, tenant ?? null],
    );
    return rows.map((r) => ({ tenant: r.tenant, shard_id: Number(r.shard_id), node: { host: r.host, port: r.port }, shared_with: r.shared_with }));
  }

  async function nodeOf(host: string, port: number): Promise<{ host: string; port: number }> {
    const { rows } = await q<{ nodename: string; nodeport: number }>(
      "SELECT nodename, nodeport FROM pg_dist_node WHERE nodename = $1 AND nodeport = $2 AND groupid > 0 AND noderole = 'primary' AND isactive",
      [host, port],
    );
    if (!rows[0]) throw badRequest('UNKNOWN_NODE', `no active worker ${host}:${port} in the cluster (GET /v1/admin/cluster lists them)`, { node: `${host}:${port}` });
    return { host: rows[0].nodename, port: rows[0].nodeport };
  }

  return {
    /** Nodes, shards, tenants per node and sizes. */
    async overview(): Promise<ClusterOverview> {
      requireCluster();
      const anchor = await anchorTable();
      const [nodes, tables, refs, tenants] = await Promise.all([
        q<{ id: number; host: string; port: number; groupid: number; active: boolean; shards: number; bytes: string }>(
          `SELECT n.nodeid AS id, n.nodename AS host, n.nodeport AS port, n.groupid, n.isactive AS active,
                  count(s.shardid)::int AS shards, coalesce(sum(s.shard_size), 0)::text AS bytes
             FROM pg_dist_node n LEFT JOIN citus_shards s ON s.nodename = n.nodename AND s.nodeport = n.nodeport AND s.citus_table_type = 'distributed'
            WHERE n.noderole = 'primary' GROUP BY 1, 2, 3, 4, 5 ORDER BY n.groupid, n.nodeid`,
        ),
        q<{ table: string; shards: number; bytes: string }>(
          "SELECT table_name::text AS table, shard_count AS shards, citus_table_size(table_name)::text AS bytes FROM citus_tables WHERE citus_table_type = 'distributed' ORDER BY 1",
        ),
        q<{ table: string }>("SELECT table_name::text AS table FROM citus_tables WHERE citus_table_type = 'reference' ORDER BY 1"),
        placements(anchor),
      ]);
      const perNode = new Map<string, number>();
      for (const t of tenants) perNode.set(`${t.node.host}:${t.node.port}`, (perNode.get(`${t.node.host}:${t.node.port}`) ?? 0) + 1);
      return {
        mode: 'cluster',
        citus_version: db.clusterMode.citusVersion,
        nodes: nodes.rows.map((n) => ({
          id: n.id,
          host: n.host,
          port: n.port,
          role: n.groupid === 0 ? 'coordinator' : 'worker',
          active: n.active,
          shards: n.shards,
          bytes: Number(n.bytes),
          tenants: perNode.get(`${n.host}:${n.port}`) ?? 0,
        })),
        distributed_tables: tables.rows.map((t) => ({ table: t.table, shards: t.shards, bytes: Number(t.bytes) })),
        reference_tables: refs.rows.map((r) => r.table),
        tenants,
      };
    },

    /** Where a tenant's rows live. */
    async placement(tenant: string): Promise<TenantPlacement> {
      requireCluster();
      await tenantExists(tenant);
      const [p] = await placements(await anchorTable(), tenant);
      if (!p) throw notFound('TENANT_NOT_FOUND', `tenant ${JSON.stringify(tenant)} has no placement`);
      return p;
    },

    /** Checks done before a move job is queued (bad input answers at once, not in the job). */
    async checkMove(tenant: string, node: { host: string; port: number }): Promise<void> {
      requireCluster();
      await tenantExists(tenant);
      await nodeOf(node.host, node.port);
    },

    async checkTenant(tenant: string): Promise<void> {
      requireCluster();
      await tenantExists(tenant);
    },

    /**
     * Give a tenant a shard group of its own (isolate_tenant_to_new_shard with CASCADE: every
     * colocated table), online through logical replication. A tenant already alone keeps its shard.
     */
    async isolate(tenant: string, progress?: Progress): Promise<{ tenant: string; shard_id: number; isolated: boolean }> {
      requireCluster();
      await tenantExists(tenant);
      const anchor = await anchorTable();
      const before = await this.placement(tenant);
      if (before.shared_with === 0) return { tenant, shard_id: before.shard_id, isolated: false };
      await progress?.({ step: 'isolating', shard_id: before.shard_id });
      const { rows } = await q<{ id: string }>(
        "SELECT isolate_tenant_to_new_shard($1::regclass, $2::text, 'CASCADE', shard_transfer_mode => 'force_logical')::text AS id",
        [anchor, tenant],
      );
      return { tenant, shard_id: Number(rows[0]!.id), isolated: true };
    },

    /**
     * Move the tenant's shard group to `node` online (citus_move_shard_placement, force_logical):
     * rows are copied and kept in sync by logical replication; writes wait only at the cutover.
     * Other tenants of the same shard group move with it (isolate first to move one alone).
     */
    async move(tenant: string, target: { host: string; port: number }, progress?: Progress) {
      requireCluster();
      await tenantExists(tenant);
      const to = await nodeOf(target.host, target.port);
      const from = await this.placement(tenant);
      if (from.node.host === to.host && from.node.port === to.port) return { tenant, shard_id: from.shard_id, from: from.node, to, moved: false, tenants_moved: 1 + from.shared_with, ms: 0 };
      await progress?.({ step: 'moving', shard_id: from.shard_id, from: from.node, to });
      const started = performance.now();
      let done = false;
      // the move is one blocking call: its progress is read from another connection meanwhile
      const watch = (async () => {
        while (!done) {
          await new Promise((r) => setTimeout(r, 500));
          if (done) break;
          const { rows } = await q<{ source: string; target: string; progress: number }>(
            'SELECT sum(source_shard_size)::text AS source, sum(target_shard_size)::text AS target, min(progress)::int AS progress FROM get_rebalance_progress()',
          ).catch(() => ({ rows: [] }));
          const r = rows[0];
          if (r && r.source !== null) await progress?.({ step: 'moving', source_bytes: Number(r.source), target_bytes: Number(r.target), citus_progress: r.progress });
        }
      })();
      try {
        await q("SELECT citus_move_shard_placement($1, $2, $3, $4, $5, shard_transfer_mode => 'force_logical')", [from.shard_id, from.node.host, from.node.port, to.host, to.port]);
      } finally {
        done = true;
        await watch;
      }
      return { tenant, shard_id: from.shard_id, from: from.node, to, moved: true, tenants_moved: 1 + from.shared_with, ms: Math.round(performance.now() - started) };
    },

    /** Start the background rebalancer and follow it to the end (citus_rebalance_status). */
    async rebalance(progress?: Progress, signal?: AbortSignal): Promise<{ job_id: number | null; state: string; tasks: number }> {
      requireCluster();
      const { rows } = await q<{ id: string | null }>("SELECT citus_rebalance_start(shard_transfer_mode => 'force_logical')::text AS id").catch((err: { code?: string }) => {
        // "No moves available for rebalancing" is a notice; a rebalance already running is 55000
        if (err.code === '55000') throw new AppError(409, 'REBALANCE_RUNNING', 'a rebalance is already running', undefined, { cause: err });
        throw err;
      });
      const id = rows[0]?.id ?? null;
      if (id === null) return { job_id: null, state: 'nothing to do', tasks: 0 };
      for (;;) {
        const { rows: st } = await q<{ state: string; details: Record<string, unknown> | null }>('SELECT state::text, details FROM citus_rebalance_status() WHERE job_id = $1', [id]);
        const s = st[0];
        await progress?.({ state: s?.state ?? 'unknown', details: s?.details ?? null });
        if (!s || ['finished', 'failed', 'cancelled'].includes(s.state)) {
          const tasks = Number((s?.details?.['tasks'] as unknown[] | undefined)?.length ?? 0);
          if (s?.state === 'failed') throw new AppError(500, 'REBALANCE_FAILED', `rebalance job ${id} failed`);
          return { job_id: Number(id), state: s?.state ?? 'unknown', tasks };
        }
        if (signal?.aborted) {
          await q('SELECT citus_rebalance_stop()');
          return { job_id: Number(id), state: 'cancelled', tasks: 0 };
        }
        await new Promise((r) => setTimeout(r, 500));
      }
    },

    /** Register a worker (its database must have the citus extension), then sync the analyst role. */
    async addNode(host: string, port: number): Promise<ClusterNode> {
      requireCluster();
      const { rows } = await q<{ id: number }>('SELECT citus_add_node($1, $2) AS id', [host, port]).catch((err: { code?: string; message?: string }) => {
        // connection refused / unknown host / no citus there: the node cannot join
        throw badRequest('NODE_UNREACHABLE', `could not add ${host}:${port} to the cluster: ${err.message ?? 'error'}`, { node: `${host}:${port}` });
      });
      await db.admin.with((c) => analystLoginOnWorkers(c));
      return { id: rows[0]!.id, host, port, role: 'worker', active: true, shards: 0, bytes: 0, tenants: 0 };
    },
  };
}

export type ClusterService = ReturnType<typeof createClusterService>;
