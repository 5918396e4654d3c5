/**
 * `npm run migrate:check`: proves every migration reversible on a scratch database created on
 * DATABASE_URL's server (dropped at the end, whatever happens).
 *
 * 1. For each migration N in apply order: snapshot, up N, snapshot A, down 1 (must equal the first
 *    snapshot), up N again (must equal A).
 * 2. All up, down to zero: no object created by a migration may remain (public must be exactly as
 *    before), then all up again: the schema must equal the first full up.
 *
 * Snapshots are catalog queries (src/db/migrations/snapshot.ts). Exit 0 ok, 1 a failure naming the
 * migration and its file, 2 missing DATABASE_URL. Options: --dir PATH (default: migrations/).
 *
 * Cluster mode: when DATABASE_URL names a Citus coordinator with workers (docs/cluster.md), the
 * scratch database is made on the coordinator and on every worker (same credentials, the workers'
 * host and port from pg_dist_node), with the citus extension and the workers registered, and the
 * cluster step (distribution, src/services/cluster) runs after every `up`, as at boot. `down` runs
 * through the coordinator alone (Citus propagates the DDL).
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { detectClusterMode } from '../src/db/cluster-mode.js';
import { createMigrator, defaultMigrationsDir, MigrationError } from '../src/db/migrations/index.js';
import { prepareCluster } from '../src/services/cluster/index.js';
import { diffSnapshots, snapshotSchema, type SchemaSnapshot } from '../src/db/migrations/snapshot.js';

const out = (line: string) => process.stdout.write(`${line}\n`);

class CheckFailed extends Error {}

function expectSame(before: SchemaSnapshot, after: SchemaSnapshot, what: string): void {
  const diff = diffSnapshots(before, after);
  if (diff.length > 0) throw new CheckFailed(`${what}:\n${diff.map((l) => `    ${l}`).join('\n')}`);
}

/** True for keys of objects in schema public (and the schema itself). */
const inPublic = (key: string): boolean => {
  const name = key.slice(key.indexOf(' ') + 1);
  return name === 'public' || name.startsWith('public.') || name.includes('.public.');
};

async function check(pool: pg.Pool, dir: string, cluster: boolean): Promise<void> {
  const plain = createMigrator({ pool, dir });
  const quiet = { info: () => undefined };
  // on a cluster every `up` is followed by the cluster step, as at boot
  const migrator = {
    verify: () => plain.verify(),
    status: () => plain.status(),
    down: (o: Parameters<typeof plain.down>[0]) => plain.down(o),
    up: async (o?: Parameters<typeof plain.up>[0]) => {
      const r = await plain.up(o);
      if (cluster) await prepareCluster(pool, quiet);
      return r;
    },
  };
  const verified = await migrator.verify();
  if (!verified.ok) throw new CheckFailed(verified.problems.map((p) => p.message).join('\n'));
  const all = await migrator.status();
  const snap = async () => {
    const client = await pool.connect();
    try {
      return await snapshotSchema(client);
    } finally {
      client.release();
    }
  };

  const baseline = await snap();
  const introducedBy = new Map<string, string>();
  let before = baseline;
  for (const m of all) {
    const files = `${dir}/${m.id}`;
    await migrator.up({ to: m.id });
    const after = await snap();
    for (const [key, def] of after)
      if (before.get(key) !== def && !introducedBy.has(key)) introducedBy.set(key, m.id);
    await migrator.down({ steps: 1 });
    expectSame(before, await snap(), `${m.id}: down does not undo up (${files}/down.sql)`);
    await migrator.up({ to: m.id });
    expectSame(after, await snap(), `${m.id}: up after down gives a different schema (${files}/up.sql)`);
    out(`  ok  ${m.id}  (up, down, up)`);
    before = after;
  }

  const full = before;
  await migrator.down({ to: 'zero' });
  const zero = await snap();
  const residual = diffSnapshots(baseline, zero).filter((line) => {
    const key = line.slice(2, line.indexOf(': '));
    return line.startsWith('+') || inPublic(key);
  });
  if (residual.length > 0) {
    const lines = residual.map((l) => {
      const key = l.slice(2, l.indexOf(': '));
      const by = introducedBy.get(key);
      return `    ${l}${by ? `   (from ${by}: ${dir}/${by}/down.sql)` : ''}`;
    });
    throw new CheckFailed(`down to zero leaves objects behind:\n${lines.join('\n')}`);
  }
  out(`  ok  down to zero leaves nothing behind`);
  await migrator.up();
  expectSame(full, await snap(), 'up, down to zero, up gives a different schema');
  out(`  ok  up, down to zero, up gives the same schema`);
}

async function main(): Promise<number> {
  const url = process.env['DATABASE_URL'];
  if (!url) {
    process.stderr.write(
      'migrate:check: DATABASE_URL is required (a server where a scratch database can be created)\n',
    );
    return 2;
  }
  const { values } = parseArgs({ options: { dir: { type: 'string' } } });
  const dir = values.dir ?? defaultMigrationsDir();
  const name = `strata_revcheck_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  const mode = await detectClusterMode(admin);
  // on a cluster: the workers, reached with DATABASE_URL's credentials
  const workers = mode.cluster
    ? (await admin.query<{ host: string; port: number }>("SELECT nodename AS host, nodeport AS port FROM pg_dist_node WHERE groupid > 0 AND isactive AND noderole = 'primary' ORDER BY nodeid")).rows
    : [];
  const nodeUrl = (host: string, port: number, db: string) => {
    const u = new URL(url);
    u.hostname = host;
    u.port = String(port);
    u.pathname = `/${db}`;
    return u.toString();
  };
  const onNode = async (host: string, port: number, db: string, text: string, values?: unknown[]) => {
    const c = new pg.Client({ connectionString: nodeUrl(host, port, db) });
    await c.connect();
    try {
      await c.query(text, values);
    } finally {
      await c.end();
    }
  };
  const scratch = new URL(url);
  scratch.pathname = `/${name}`;
  const pool = new pg.Pool({
    connectionString: scratch.toString(),
    max: 3,
    application_name: 'strata-migrate-check',
    // the database defaults the cluster step sets reach new sessions only; the pool's are older
    ...(mode.cluster ? { options: '-c citus.enable_unsafe_triggers=on -c citus.propagate_set_commands=local' } : {}),
  });
  // pool.end() resolves before its sockets close; DROP ... WITH (FORCE) may then kill one, harmlessly.
  pool.on('error', () => undefined);
  try {
    if (mode.cluster) {
      // each node gets the database itself (Citus's own CREATE DATABASE propagation is not relied on)
      await admin.query('SET citus.enable_create_database_propagation = off').catch(() => undefined);
      await admin.query(`CREATE DATABASE ${admin.escapeIdentifier(name)}`);
      for (const w of workers) await onNode(w.host, w.port, 'postgres', `CREATE DATABASE ${admin.escapeIdentifier(name)}`);
      for (const w of workers) await onNode(w.host, w.port, name, 'CREATE EXTENSION citus');
      const me = new URL(url);
      await onNode(me.hostname, Number(me.port || 5432), name, 'CREATE EXTENSION citus');
      const { rows } = await admin.query<{ host: string; port: number }>('SELECT nodename AS host, nodeport AS port FROM pg_dist_node WHERE groupid = 0');
      const coord = rows[0] ?? { host: me.hostname, port: Number(me.port || 5432) };
      await onNode(me.hostname, Number(me.port || 5432), name, 'SELECT citus_set_coordinator_host($1, $2)', [coord.host, coord.port]);
      for (const w of workers) await onNode(me.hostname, Number(me.port || 5432), name, 'SELECT citus_add_node($1, $2)', [w.host, w.port]);
      out(`cluster mode: Citus ${mode.citusVersion}, ${workers.length} workers; the cluster step runs after every up`);
    } else {
      await admin.query(`CREATE DATABASE ${admin.escapeIdentifier(name)}`);
    }
    out(`checking migrations in ${dir} on scratch database ${name}`);
    await check(pool, dir, mode.cluster);
    out('all migrations are reversible');
    return 0;
  } catch (e) {
    const message = e instanceof MigrationError ? `${e.code}: ${e.message}` : (e as Error).message;
    process.stderr.write(`migrate:check failed: ${message}\n`);
    return 1;
  } finally {
    await pool.end();
    await admin.query(`DROP DATABASE IF EXISTS ${admin.escapeIdentifier(name)} WITH (FORCE)`);
    for (const w of workers) await onNode(w.host, w.port, 'postgres', `DROP DATABASE IF EXISTS ${admin.escapeIdentifier(name)} WITH (FORCE)`).catch(() => undefined);
    await admin.end();
  }
}

process.exitCode = await main();
