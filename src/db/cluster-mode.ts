/**
 * Cluster mode: DATABASE_URL names a Citus coordinator when the citus extension is installed in
 * the database and at least one active primary worker is registered. Tenant tables are then
 * distributed by tenant_id (src/services/cluster) and tenant sessions set their tenant so that the
 * workers see it (session.ts).
 */
import type pg from 'pg';

export interface ClusterMode {
  /** True on a Citus coordinator with workers. */
  readonly cluster: boolean;
  /** The citus extension version, when installed. */
  readonly citusVersion: string | null;
  /** Active primary workers registered on the coordinator. */
  readonly workers: number;
}

/** Detect the mode on an admin (owner) connection. One catalog query; no error on a plain server. */
export async function detectClusterMode(client: pg.ClientBase): Promise<ClusterMode> {
  const { rows } = await client.query<{ v: string | null }>("SELECT extversion AS v FROM pg_extension WHERE extname = 'citus'");
  const citusVersion = rows[0]?.v ?? null;
  if (citusVersion === null) return { cluster: false, citusVersion, workers: 0 };
  const { rows: nodes } = await client.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM pg_dist_node WHERE groupid > 0 AND isactive AND noderole = 'primary'",
  );
  const workers = nodes[0]?.n ?? 0;
  return { cluster: workers > 0, citusVersion, workers };
}
