/**
 * The cluster step run after the migrations on a Citus coordinator (idempotent, re-run after every
 * migration run):
 *
 * - tenant tables (a `tenant_id` column, outside the platform's schemas) become distributed tables
 *   by `tenant_id`, all colocated, so a tenant's rows of every table sit in one shard group and a
 *   join or foreign key between them stays on one node. Their primary and unique keys are widened
 *   to lead with `tenant_id` first (Citus requires the distribution column in every unique key);
 *   the row API still addresses rows by the rest of the key (the tenant is the session's).
 * - tables without `tenant_id` that tenant sessions may read become reference tables (a copy on
 *   every node, joinable with any shard).
 * - the platform's own tables (schema strata: tenants, API keys, migrations, jobs' bookkeeping)
 *   stay on the coordinator: they are small, read by the service through the admin connection, and
 *   mostly platform-wide. Two hold per-tenant data at volume and are distributed by tenant_id,
 *   colocated with the tenant tables: the change log (strata.changes) and its per-tenant id counters
 *   (strata.change_counters), so that the capture trigger, which runs on the worker holding the
 *   row's shard, writes them there in the row's own transaction (migration 0018).
 * - the database gets `citus.propagate_set_commands = 'local'` (tenant sessions' SET LOCAL reaches
 *   the workers) and `citus.enable_unsafe_triggers = on` (row triggers that only touch their own
 *   row, such as search-column maintenance, may be created on distributed tables).
 * - change capture triggers of tenant tables run strata.capture_change_cluster() instead of the
 *   single-server trigger (per-tenant ids from strata.change_counters, no coordinator sequence).
 *   Row triggers are allowed on distributed tables by `citus.enable_unsafe_triggers`: those of
 *   Strata write only the row itself or tables colocated with it.
 */
import type pg from 'pg';

const PLATFORM_SCHEMAS = ['strata', 'strata_matviews', 'strata_views', 'citus', 'citus_internal', 'columnar', 'columnar_internal'];

export interface DistributeReport {
  distributed: string[];
  reference: string[];
  keysWidened: string[];
  /** Tables whose capture trigger now runs the cluster capture function. */
  captureOnShards: string[];
  /** Platform tables distributed with the tenant tables (the change log and its counters). */
  platformDistributed: string[];
  /** Tables whose FORCE ROW LEVEL SECURITY was lifted (RLS stays enabled; see below). */
  forceLifted: string[];
}

interface Candidate {
  oid: number;
  name: string;
  has_tenant: boolean;
  tenant_readable: boolean;
  refs: number[];
}

/** Distribute the tenant tables of the database `client` is connected to (a Citus coordinator). */
export async function distributeTables(client: pg.ClientBase): Promise<DistributeReport> {
  const report: DistributeReport = { distributed: [], reference: [], keysWidened: [], captureOnShards: [], platformDistributed: [], forceLifted: [] };
  const { rows: dbs } = await client.query<{ db: string }>('SELECT current_database() AS db');
  const db = client.escapeIdentifier(dbs[0]!.db);
  await client.query(`ALTER DATABASE ${db} SET citus.propagate_set_commands = 'local'`);
  await client.query(`ALTER DATABASE ${db} SET citus.enable_unsafe_triggers = on`);

  const { rows } = await client.query<Candidate>(
    `SELECT c.oid::int AS oid, c.oid::regclass::text AS name,
            EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped) AS has_tenant,
            (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'strata_tenant') AND has_table_privilege('strata_tenant', c.oid, 'SELECT')) AS tenant_readable,
            coalesce((SELECT array_agg(DISTINCT f.confrelid::int) FROM pg_constraint f
                       WHERE f.conrelid = c.oid AND f.contype = 'f' AND f.confrelid <> c.oid), '{}') AS refs
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
        AND n.nspname <> ALL ($1::text[]) AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
        AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = c.oid)
        AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')`,
    [PLATFORM_SCHEMAS],
  );
  const { rows: colocated } = await client.query<{ name: string }>(
    "SELECT logicalrelid::regclass::text AS name FROM pg_dist_partition WHERE partmethod = 'h' ORDER BY colocationid, logicalrelid LIMIT 1",
  );
  let colocateWith = colocated[0]?.name;
  // a table with a row trigger (change capture, search columns) may be distributed: the database
  // default set above reaches new sessions only
  await client.query('SET citus.enable_unsafe_triggers = on');

  // parents before children: a foreign key may only point at an already distributed (or reference) table
  const pending = new Map(rows.map((r) => [r.oid, r]));
  const ordered: Candidate[] = [];
  while (pending.size > 0) {
    const ready = [...pending.values()].filter((r) => r.refs.every((ref) => !pending.has(ref)));
    // a cycle of foreign keys: take them in any order, Citus reports what it cannot do
    const batch = ready.length > 0 ? ready : [...pending.values()];
    for (const r of batch) {
      ordered.push(r);
      pending.delete(r.oid);
    }
  }

  for (const t of ordered) {
    if (t.has_tenant) {
      if (await widenKeys(client, t.oid, t.name)) report.keysWidened.push(t.name);
      if (colocateWith === undefined) {
        await client.query("SELECT create_distributed_table($1::regclass, 'tenant_id')", [t.name]);
        colocateWith = t.name;
      } else {
        await client.query("SELECT create_distributed_table($1::regclass, 'tenant_id', colocate_with => $2)", [t.name, colocateWith]);
      }
      await truncateLocal(client, t.name);
      report.distributed.push(t.name);
    } else if (t.tenant_readable) {
      await client.query('SELECT create_reference_table($1::regclass)', [t.name]);
      await truncateLocal(client, t.name);
      report.reference.push(t.name);
    }
  }
  if (colocateWith !== undefined) await distributeChangeLog(client, colocateWith, report);
  report.captureOnShards = await captureOnShards(client);
  // Online moves and tenant isolation replay writes through logical replication, whose apply
  // worker refuses a table under FORCE ROW LEVEL SECURITY. FORCE only binds the table owner;
  // tenant sessions run as a role that owns nothing (checked at boot) and stay under the
  // policies, which remain enabled on every shard.
  const { rows: forced } = await client.query<{ name: string }>(
    `SELECT p.logicalrelid::regclass::text AS name FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid
      WHERE p.partmethod = 'h' AND c.relforcerowsecurity ORDER BY 1`,
  );
  for (const f of forced) {
    await client.query(`ALTER TABLE ${f.name} NO FORCE ROW LEVEL SECURITY`);
    report.forceLifted.push(f.name);
  }
  await analystLoginOnWorkers(client);
  return report;
}

/**
 * Citus opens its connections to the workers as the session's current role. The /v1/sql sandbox
 * runs its statement under `SET LOCAL ROLE strata_analyst`, a NOLOGIN role, so the workers would
 * refuse it: there (only there; the coordinator keeps it NOLOGIN, which the sandbox check reads) it
 * may log in. It has no password: in production the workers authenticate it as they do every role
 * Citus connects with (pg_dist_authinfo, certificates or .pgpass on the coordinator), and pg_hba on
 * the workers admits only the coordinator and the other nodes. Re-run after a node is added.
 */
export async function analystLoginOnWorkers(client: pg.ClientBase): Promise<void> {
  await client.query(
    `SELECT run_command_on_workers($c$DO $d$ BEGIN
       IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'strata_analyst' AND NOT rolcanlogin) THEN
         SET LOCAL citus.enable_alter_role_propagation = off;
         ALTER ROLE strata_analyst LOGIN;
       END IF; END $d$$c$)`,
  );
}

/** Rows a table held before it was distributed are copied to the shards; the local copy goes. */
async function truncateLocal(client: pg.ClientBase, name: string): Promise<void> {
  await client.query('SELECT truncate_local_data_after_distributing_table($1::regclass)', [name]).catch(() => undefined);
}


/**
 * The change log and its per-tenant id counters become distributed tables colocated with the tenant
 * tables (once). The log's key gains tenant_id; the counters start at each tenant's highest id
 * already logged, so ids keep increasing per tenant.
 */
async function distributeChangeLog(client: pg.ClientBase, colocateWith: string, report: DistributeReport): Promise<void> {
  const { rows } = await client.query<{ name: string }>(
    `SELECT t AS name FROM unnest(ARRAY['strata.changes', 'strata.change_counters']) t
      WHERE to_regclass(t) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = to_regclass(t))`,
  );
  const todo = new Set(rows.map((r) => r.name));
  if (todo.has('strata.change_counters') && todo.has('strata.changes')) {
    await client.query(
      'INSERT INTO strata.change_counters (tenant_id, last_id) SELECT tenant_id, max(id) FROM strata.changes GROUP BY tenant_id ON CONFLICT (tenant_id) DO NOTHING',
    );
  }
  for (const name of ['strata.changes', 'strata.change_counters']) {
    if (!todo.has(name)) continue;
    const { rows: oid } = await client.query<{ oid: number }>('SELECT $1::regclass::oid::int AS oid', [name]);
    if (await widenKeys(client, oid[0]!.oid, name)) report.keysWidened.push(name);
    await client.query("SELECT create_distributed_table($1::regclass, 'tenant_id', colocate_with => $2)", [name, colocateWith]);
    await truncateLocal(client, name);
    report.platformDistributed.push(name);
  }
}

/**
 * Every distributed table of schema public with the single-server capture trigger (from
 * strata.enable_capture, in a migration before or after distribution) gets the cluster one instead:
 * its arguments are the table's name (a shard's TG_TABLE_NAME is the shard's) and its key columns
 * without tenant_id (events name a row as on one server). Before migration 0018 (no cluster
 * function; migrate:check steps through every migration) the single-server trigger cannot run on
 * the shards: it is disabled, and 0018 turns it into the cluster one. Returns the tables changed.
 */
async function captureOnShards(client: pg.ClientBase): Promise<string[]> {
  const { rows } = await client.query<{ name: string; rel: string; enabled: boolean; def: string; all: string[]; cols: string[] }>(
    `SELECT c.oid::regclass::text AS name, c.relname AS rel, t.tgenabled <> 'D' AS enabled, pg_get_triggerdef(t.oid) AS def,
            array(SELECT a.attname::text FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(n, o), pg_attribute a
                   WHERE i.indrelid = c.oid AND i.indisprimary AND a.attrelid = c.oid AND a.attnum = k.n ORDER BY k.o) AS all,
            array(SELECT a.attname::text FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(n, o), pg_attribute a
                   WHERE i.indrelid = c.oid AND i.indisprimary AND a.attrelid = c.oid AND a.attnum = k.n AND a.attname <> 'tenant_id'
                   ORDER BY k.o) AS cols
       FROM pg_class c JOIN pg_trigger t ON t.tgrelid = c.oid AND t.tgname = 'strata_capture' AND t.tgfoid = to_regprocedure('strata.capture_change()')
      WHERE c.relnamespace = 'public'::regnamespace
        AND EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = c.oid AND p.partmethod = 'h')
      ORDER BY 1`,
  );
  const changed: string[] = [];
  const { rows: fn } = await client.query<{ ok: boolean }>("SELECT to_regprocedure('strata.capture_change_cluster()') IS NOT NULL AS ok");
  if (!fn[0]?.ok) {
    // disabled, with every key column as its arguments (as strata.enable_capture makes it now, after
    // the keys were widened), which is what 0018's down restores
    for (const r of rows) {
      const args = ['quiet', ...r.all].map((a) => client.escapeLiteral(a)).join(', ');
      if (!r.enabled && r.def.includes(`capture_change(${args})`)) continue;
      await client.query(`DROP TRIGGER strata_capture ON ${r.name}`);
      await client.query(`CREATE TRIGGER strata_capture AFTER INSERT OR UPDATE OR DELETE ON ${r.name} FOR EACH ROW EXECUTE FUNCTION strata.capture_change(${args})`);
      await client.query(`ALTER TABLE ${r.name} DISABLE TRIGGER strata_capture`);
    }
    return changed;
  }
  for (const r of rows) {
    if (r.cols.length === 0) continue;
    const args = [r.rel, ...r.cols].map((a) => client.escapeLiteral(a)).join(', ');
    await client.query(`DROP TRIGGER strata_capture ON ${r.name}`);
    await client.query(`CREATE TRIGGER strata_capture AFTER INSERT OR UPDATE OR DELETE ON ${r.name} FOR EACH ROW EXECUTE FUNCTION strata.capture_change_cluster(${args})`);
    changed.push(r.name);
  }
  return changed;
}

/**
 * Primary and unique keys without tenant_id get tenant_id in front (same name, same other columns).
 * Returns true when a key changed.
 */
async function widenKeys(client: pg.ClientBase, oid: number, table: string): Promise<boolean> {
  const { rows } = await client.query<{ conname: string; contype: string; cols: string[] }>(
    `SELECT con.conname, con.contype,
            array(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
                    JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i) AS cols
       FROM pg_constraint con
      WHERE con.conrelid = $1 AND con.contype IN ('p', 'u')`,
    [oid],
  );
  let changed = false;
  for (const k of rows) {
    if (k.cols.includes('tenant_id')) continue;
    const name = client.escapeIdentifier(k.conname);
    const cols = ['tenant_id', ...k.cols].map((c) => client.escapeIdentifier(c)).join(', ');
    const kind = k.contype === 'p' ? 'PRIMARY KEY' : 'UNIQUE';
    await client.query('BEGIN');
    try {
      await client.query(`ALTER TABLE ${table} DROP CONSTRAINT ${name}`);
      await client.query(`ALTER TABLE ${table} ADD CONSTRAINT ${name} ${kind} (${cols})`);
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK');
      throw err;
    }
    changed = true;
  }
  return changed;
}
