/**
 * A throwaway three-node Citus cluster (coordinator + 2 workers) on this machine, for the Citus
 * suite: initdb into fixed data directories under the temporary folder (one set per port base, so a
 * crashed run's leftovers are found, stopped and removed by the next), `shared_preload_libraries =
 * 'citus'`, `wal_level = logical` (online shard moves), trust auth on 127.0.0.1 only. Never touches
 * the machine's own PostgreSQL clusters.
 *
 * Where the citus extension files are absent (a machine without Citus installed), `citusAvailable()`
 * says why and the suite skips.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync, appendFileSync, chownSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';

const BIN = process.env['CITUS_TEST_PG_BIN'] ?? '/usr/lib/postgresql/15/bin';
/** First port of the cluster: coordinator on it, workers on the next ones (the 4th node after). */
export const CITUS_PORT_BASE = Number(process.env['CITUS_TEST_PORT_BASE'] ?? 5531);

/** Null when a cluster can be made here, else the reason it cannot. */
export function citusAvailable(): string | null {
  if (!existsSync(path.join(BIN, 'initdb'))) return `no PostgreSQL server binaries in ${BIN} (set CITUS_TEST_PG_BIN)`;
  let libdir: string;
  let sharedir: string;
  try {
    libdir = execFileSync(path.join(BIN, 'pg_config'), ['--pkglibdir']).toString().trim();
    sharedir = execFileSync(path.join(BIN, 'pg_config'), ['--sharedir']).toString().trim();
  } catch {
    libdir = '/usr/lib/postgresql/15/lib';
    sharedir = '/usr/share/postgresql/15';
  }
  if (!existsSync(path.join(libdir, 'citus.so'))) return `the citus extension is not installed (${libdir}/citus.so missing)`;
  if (!existsSync(path.join(sharedir, 'extension', 'citus.control'))) return 'the citus extension control file is missing';
  return null;
}

export interface CitusNode {
  readonly port: number;
  readonly dir: string;
  readonly url: string;
}

export interface CitusCluster {
  readonly coordinator: CitusNode;
  readonly workers: CitusNode[];
  /** Start one more node (not yet added to the cluster): for add-node and rebalance tests. */
  startExtraNode(): Promise<CitusNode>;
  /** A superuser query on a node's `postgres` database. */
  query<R extends pg.QueryResultRow = Record<string, unknown>>(node: CitusNode, text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
  stop(): Promise<void>;
}

const isRoot = process.getuid?.() === 0;
/** initdb and postgres refuse to run as root: run them as the postgres user then. */
function run(cmd: string, args: string[]): void {
  const full = path.join(BIN, cmd);
  const r = isRoot ? spawnSync('runuser', ['-u', 'postgres', '--', full, ...args], { encoding: 'utf8' }) : spawnSync(full, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr || r.stdout}`);
}

function rootDir(): string {
  return path.join(tmpdir(), `strata-citus-${CITUS_PORT_BASE}`);
}

function nodeUrl(port: number): string {
  return `postgres://postgres@127.0.0.1:${port}/postgres`;
}

async function q<R extends pg.QueryResultRow>(url: string, text: string, values?: unknown[]): Promise<pg.QueryResult<R>> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await c.query<R>(text, values);
  } finally {
    await c.end();
  }
}

/** Stop whatever a crashed run left running in our data directories and remove them. */
function cleanLeftovers(): void {
  const root = rootDir();
  if (!existsSync(root)) return;
  for (let i = 0; i < 4; i++) {
    const dir = path.join(root, `node${i}`);
    if (existsSync(path.join(dir, 'postmaster.pid'))) {
      try {
        run('pg_ctl', ['stop', '-D', dir, '-m', 'immediate', '-w', '-t', '20']);
      } catch {
        // a stale pid file of a dead server: nothing to stop
      }
    }
  }
  rmSync(root, { recursive: true, force: true });
}

function initNode(i: number): CitusNode {
  const port = CITUS_PORT_BASE + i;
  const dir = path.join(rootDir(), `node${i}`);
  mkdirSync(dir, { recursive: true });
  if (isRoot) chownSync(dir, uidOf('postgres'), gidOf('postgres'));
  run('initdb', ['-D', dir, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale=C.UTF-8']);
  appendFileSync(
    path.join(dir, 'postgresql.conf'),
    [
      `port = ${port}`,
      "listen_addresses = '127.0.0.1'",
      `unix_socket_directories = '${dir}'`,
      "shared_preload_libraries = 'citus'",
      'wal_level = logical',
      ...outputPlugins(),
      'max_connections = 200',
      'max_wal_senders = 20',
      'max_replication_slots = 20',
      'shared_buffers = 32MB',
      'fsync = off',
      // On purpose: the setting under which online moves lost acknowledged writes (a commit still in
      // the WAL buffers lies beyond the pg_current_wal_lsn() the move's last catch-up waits for;
      // see SessionDeps.clusterSyncCommit). Strata must detect it and flush its own commits; a slow
      // WAL writer widens the window so that the move test would catch a regression.
      'synchronous_commit = off',
      `wal_writer_delay = ${process.env['CITUS_TEST_WAL_WRITER_DELAY'] ?? '1000ms'}`,
      'full_page_writes = off',
      // fewer shards than the default 32: same placement logic, far less DDL on two shared cores
      'citus.shard_count = 8',
      'citus.log_remote_commands = off',
      "log_min_messages = 'warning'",
      '',
    ].join('\n'),
  );
  writeFileSync(path.join(dir, 'pg_hba.conf'), 'local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n');
  run('pg_ctl', ['start', '-D', dir, '-w', '-t', '60', '-l', path.join(dir, 'server.log')]);
  return { port, dir, url: nodeUrl(port) };
}

let describedConfig: string | undefined;
/**
 * Tenant isolation (a shard split) decodes with citus's own output plugin. Builds of PostgreSQL 15
 * that have `output_plugin_libraries` load only the plugins it lists: citus is added to its default.
 * Older builds have no such setting (and restrict nothing); naming it there would stop the server.
 */
function outputPlugins(): string[] {
  if (describedConfig === undefined) {
    const args = ['--describe-config'];
    const full = path.join(BIN, 'postgres');
    const r = isRoot ? spawnSync('runuser', ['-u', 'postgres', '--', full, ...args], { encoding: 'utf8' }) : spawnSync(full, args, { encoding: 'utf8' });
    describedConfig = r.stdout ?? '';
  }
  const line = describedConfig.split('\n').find((l) => l.startsWith('output_plugin_libraries\t'));
  if (!line) return [];
  const current = line.split('\t')[4] ?? 'pgoutput';
  return [`output_plugin_libraries = '${current}, citus'`];
}

function uidOf(user: string): number {
  return Number(execFileSync('id', ['-u', user]).toString().trim());
}
function gidOf(user: string): number {
  return Number(execFileSync('id', ['-g', user]).toString().trim());
}

/** Make and start the cluster (coordinator on CITUS_PORT_BASE, workers on the next two ports). */
export async function startCitusCluster(): Promise<CitusCluster> {
  cleanLeftovers();
  mkdirSync(rootDir(), { recursive: true, mode: 0o755 });
  if (isRoot) chownSync(rootDir(), uidOf('postgres'), gidOf('postgres'));
  const nodes: CitusNode[] = [];
  const stop = async () => {
    for (const n of nodes) {
      try {
        run('pg_ctl', ['stop', '-D', n.dir, '-m', 'fast', '-w', '-t', '30']);
      } catch {
        try {
          run('pg_ctl', ['stop', '-D', n.dir, '-m', 'immediate', '-w', '-t', '10']);
        } catch {
          // already gone
        }
      }
    }
    rmSync(rootDir(), { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < 3; i++) nodes.push(initNode(i));
    for (const n of nodes) await q(n.url, 'CREATE EXTENSION citus');
    const [coordinator, ...workers] = nodes as [CitusNode, ...CitusNode[]];
    await q(coordinator.url, 'SELECT citus_set_coordinator_host($1, $2)', ['127.0.0.1', coordinator.port]);
    for (const w of workers) await q(coordinator.url, 'SELECT citus_add_node($1, $2)', ['127.0.0.1', w.port]);
    return {
      coordinator,
      workers,
      async startExtraNode() {
        const n = initNode(nodes.length);
        nodes.push(n);
        await q(n.url, 'CREATE EXTENSION citus');
        return n;
      },
      query: (node, text, values) => q(node.url, text, values),
      stop,
    };
  } catch (err) {
    const logs = nodes.map((n) => {
      try {
        return readFileSync(path.join(n.dir, 'server.log'), 'utf8').slice(-2000);
      } catch {
        return '';
      }
    });
    await stop();
    throw new Error(`could not start the Citus test cluster: ${(err as Error).message}\n${logs.join('\n')}`, { cause: err });
  }
}
