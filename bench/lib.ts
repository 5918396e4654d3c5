/**
 * Shared benchmark plumbing: spawning Strata and the anchors as child processes, autocannon runs,
 * medians, metrics scraping. bench/run.ts and the scenario modules in bench/scenarios/ use it.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { openSync, readFileSync } from 'node:fs';
import path from 'node:path';
import autocannon from 'autocannon';
import pg from 'pg';
import { BENCH_ROWS, BENCH_TENANTS } from './setup.js';

export const env = process.env;
export const DURATION = Number(env['BENCH_DURATION'] ?? 10);
export const WARMUP = Number(env['BENCH_WARMUP'] ?? 3);
export const ROUNDS = Number(env['BENCH_ROUNDS'] ?? 2);
export const CONNECTION_LEVELS = (env['BENCH_CONNECTIONS'] ?? '16,64').split(',').map(Number);
export const POOL_CONNECTIONS = Number(env['BENCH_POOL_CONNECTIONS'] ?? 500);
export const SCENARIOS = (env['BENCH_SCENARIOS'] ?? 'all').split(',');
export const SERVER_URL = env['BENCH_SERVER_URL'] ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const DATABASE = env['BENCH_DATABASE'] ?? 'strata_bench';
export const SECRET = 'bench-secret-bench-secret-bench-secret-0123';
export const ROOT = path.resolve(import.meta.dirname, '..');
export const OUT = path.join(ROOT, 'bench', 'results');
export const stamp = new Date().toISOString().replace(/[:.]/g, '-');

/**
 * V8 flags Strata runs with (package.json start scripts, Dockerfile): a 8 MB young-generation
 * semi-space instead of 16 MB keeps a streaming export's peak RSS about 12 MB lower. Extra flags for
 * a run (say `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile the server) go in BENCH_NODE_FLAGS.
 */
export const STRATA_NODE_FLAGS = ['--max-semi-space-size=8', ...(env['BENCH_NODE_FLAGS'] ?? '').split(' ').filter(Boolean)];

export const log = (m: string) => process.stdout.write(`[bench] ${m}\n`);
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const randId = () => 1 + Math.floor(Math.random() * BENCH_ROWS);
export const tenantOf = (id: number) => (id % BENCH_TENANTS) + 1;

export interface Target {
  name: string;
  desc: string;
  port: number;
  start: () => ChildProcess;
  request: (id: number) => { method: 'GET' | 'POST'; path: string; headers: Record<string, string>; body?: string };
  check: (id: number, body: string) => boolean;
}

export interface Measured {
  target: string;
  round: number;
  connections?: number;
  rps: number;
  p50: number;
  p99: number;
  total: number;
  non2xx: number;
  errors: number;
  statuses: Record<string, number>;
}

export function spawnLogged(name: string, cmd: string, args: string[], extraEnv: Record<string, string>): ChildProcess {
  const out = openSync(path.join(OUT, `${stamp}-${name}.log`), 'a');
  return spawn(cmd, args, { env: { ...env, ...extraEnv }, stdio: ['ignore', out, out] });
}

/** A Strata API server from dist/ (no migrations, seed or workers: the bench database is ready). */
export function spawnStrata(name: string, o: { dbUrl: string; appUrl: string; secret: string; port: number; env?: Record<string, string> }): ChildProcess {
  return spawnLogged(name, process.execPath, [...STRATA_NODE_FLAGS, path.join(ROOT, 'dist', 'server.js')], {
    DATABASE_URL: o.dbUrl,
    APP_DATABASE_URL: o.appUrl,
    JWT_SECRET: o.secret,
    PORT: String(o.port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    MIGRATE_ON_BOOT: 'false',
    SEED_DEMO: 'false',
    RUN_WORKERS: 'false',
    NODE_ENV: 'production',
    ...o.env,
  });
}

export function strataTarget(name: string, port: number, dbUrl: string, appUrl: string, tokens: string[], pool: Record<string, string>): Target {
  return {
    name,
    desc: 'Strata GET /v1/tables/items/rows/{id}, Bearer JWT, pipelined tenant transaction under RLS',
    port,
    start: () => spawnStrata(name, { dbUrl, appUrl, secret: SECRET, port, env: pool }),
    request: (id) => ({ method: 'GET', path: `/v1/tables/items/rows/${id}`, headers: { authorization: tokens[tenantOf(id)]! } }),
    check: (id, body) => String((JSON.parse(body) as { data: { id: string | number } }).data.id) === String(id),
  };
}

/** The same Strata server, asked another request shape. */
export function variant(base: Target, name: string, desc: string, request: Target['request'], check: Target['check']): Target {
  return { ...base, name, desc, request, check };
}

export const gql = (query: string) => JSON.stringify({ query });

export function postgraphileTarget(port: number): Target {
  return {
    name: 'C-rls',
    desc: 'PostGraphile 4.14.1 itemById, pgSettings tenant under RLS',
    port,
    start: () =>
      spawnLogged('C-rls', process.execPath, [path.join(ROOT, 'bench', 'anchors', 'server-postgraphile.cjs')], {
        MODE: 'rls',
        PORT: String(port),
        NODE_ENV: 'production',
        PGHOST: '127.0.0.1',
        PGPORT: '5432',
        PGDATABASE: DATABASE,
        PGPASSWORD: 'anchor',
      }),
    request: (id) => ({
      method: 'POST',
      path: '/graphql',
      headers: { 'content-type': 'application/json', 'x-tenant-id': String(tenantOf(id)) },
      body: gql(`{ itemById(id: "${id}") { id tenantId name payload } }`),
    }),
    check: (id, body) => (JSON.parse(body) as { data: { itemById: { id: string } } }).data.itemById.id === String(id),
  };
}

/**
 * PostGraphile 5 (bench/anchors/postgraphile5) over Strata's benchmark database as Strata's app role,
 * the tenant set by pgSettings (`strata.tenant_id`) under the same RLS policies: the two-level
 * relationship query (pipelines -> pipeline_runs -> run_steps), as Strata's lists scenario asks it.
 */
export function postgraphile5Target(port: number, appUrl: string): Target {
  const query =
    '{ allPipelines(first: 10) { nodes { rowId name pipelineRunsByTenantIdAndPipelineId(first: 5) { nodes { rowId status runStepsByTenantIdAndRunId(first: 10) { nodes { rowId name } } } } } } }';
  return {
    name: 'C5-rls',
    desc: 'PostGraphile 5.1.5 two-level relationship, pgSettings tenant under RLS',
    port,
    start: () => spawnLogged('C5-rls', process.execPath, [path.join(ROOT, 'bench', 'anchors', 'postgraphile5', 'server.mjs')], { PORT: String(port), NODE_ENV: 'production', DATABASE_URL: appUrl }),
    request: () => ({ method: 'POST', path: '/graphql', headers: { 'content-type': 'application/json', 'x-tenant-id': '1' }, body: gql(query) }),
    check: (_id, body) => (JSON.parse(body) as { data: { allPipelines: { nodes: unknown[] } } }).data.allPipelines.nodes.length === 10,
  };
}

export function anchorTarget(name: string, mode: 'rls' | 'norls', port: number): Target {
  return {
    name,
    desc: mode === 'rls' ? 'bare Fastify + pg: BEGIN; set_config; SELECT; COMMIT as a non-owner under RLS' : 'bare Fastify + pg: plain pool.query as the table owner, no isolation',
    port,
    start: () =>
      spawnLogged(name, process.execPath, [path.join(ROOT, 'bench', 'anchors', 'server-fastify.cjs')], {
        MODE: mode,
        PORT: String(port),
        PGHOST: '127.0.0.1',
        PGPORT: '5432',
        PGDATABASE: DATABASE,
        PGPASSWORD: 'anchor',
      }),
    request: (id) => ({ method: 'GET', path: `/items/${id}`, headers: { 'x-tenant-id': String(tenantOf(id)) } }),
    check: (id, body) => (JSON.parse(body) as { id: string }).id === String(id),
  };
}

export async function startAndCheck(t: Target): Promise<ChildProcess> {
  const child = t.start();
  try {
    await waitAndCheck(t, child);
  } catch (err) {
    await stop(child);
    throw err;
  }
  return child;
}

export async function waitAndCheck(t: Target, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 150; i++) {
    await sleep(200);
    if (child.exitCode !== null) throw new Error(`${t.name} exited early; see bench/results/${stamp}-${t.name}.log`);
    try {
      await fetch(`http://127.0.0.1:${t.port}/`, { signal: AbortSignal.timeout(1000) });
      break;
    } catch {
      /* not up yet */
    }
  }
  for (let i = 0; i < 50; i++) {
    const id = randId();
    const r = t.request(id);
    const res = await fetch(`http://127.0.0.1:${t.port}${r.path}`, { method: r.method, headers: r.headers, body: r.body });
    const body = await res.text();
    if (res.status !== 200 || !t.check(id, body)) throw new Error(`${t.name}: wrong answer for id ${id}: ${res.status} ${body.slice(0, 200)}`);
  }
}

export async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 8000);
  await done;
  clearTimeout(t);
}

export function cannon(t: Target, seconds: number, connections: number): Promise<Measured & { lat: number[] }> {
  return new Promise((resolve, reject) => {
    const lat: number[] = [];
    const statuses: Record<string, number> = {};
    const inst = autocannon(
      {
        url: `http://127.0.0.1:${t.port}`,
        connections,
        duration: seconds,
        timeout: 20,
        requests: [{ setupRequest: (req) => ({ ...req, ...t.request(randId()) }) }],
      },
      (err, res) => {
        if (err) return reject(err instanceof Error ? err : new Error(String(err)));
        lat.sort((a, b) => a - b);
        const pct = (p: number) => lat[Math.min(lat.length - 1, Math.max(0, Math.ceil((p / 100) * lat.length) - 1))] ?? NaN;
        resolve({
          target: t.name,
          round: 0,
          rps: Math.round(res.requests.total / res.duration),
          p50: +pct(50).toFixed(2),
          p99: +pct(99).toFixed(2),
          total: res.requests.total,
          non2xx: res.non2xx,
          errors: res.errors,
          statuses,
          lat,
        });
      },
    );
    inst.on('response', (_client: unknown, status: number, _bytes: number, responseTime: number) => {
      statuses[status] = (statuses[status] ?? 0) + 1;
      lat.push(responseTime);
    });
  });
}

/** pgbench select-only (prepared, 16 clients, as the table owner): the ceiling. */
export function pgbench(dbUrl: string): { tps: number } | undefined {
  const bin = ['/usr/lib/postgresql/15/bin/pgbench', 'pgbench'].find((b) => {
    try {
      execFileSync(b, ['--version'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  });
  if (!bin) return undefined;
  const u = new URL(dbUrl);
  const args = ['-n', '-M', 'prepared', '-c', '16', '-j', '2', '-h', u.hostname, '-p', u.port || '5432', '-U', 'anchor_owner', '-f', path.join(ROOT, 'bench', 'anchors', 'pgbench-select.sql'), DATABASE];
  const penv = { ...env, PGPASSWORD: 'anchor' };
  execFileSync(bin, ['-T', String(WARMUP), ...args], { env: penv, stdio: 'ignore' });
  const out = execFileSync(bin, ['-T', String(DURATION), ...args], { env: penv }).toString();
  return { tps: Math.round(Number(/tps = ([\d.]+)/.exec(out)?.[1] ?? NaN)) };
}

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return +(s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2).toFixed(2);
};

export async function metricsText(port: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

export function histogram(text: string, name: string, pool: string): Array<[string, number]> {
  const re = new RegExp(`^${name}_bucket\\{le="([^"]+)",pool="${pool.replace('/', '\\/')}"\\} (\\d+)`, 'gm');
  return [...text.matchAll(re)].map((m) => [m[1]!, Number(m[2])]);
}


/** CPU ticks (user + system, 1/100 s) a set of processes has used so far; a process gone counts 0. */
export function cpuTicks(pids: number[]): number {
  let sum = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      sum += Number(f[11]) + Number(f[12]);
    } catch {
      /* gone */
    }
  }
  return sum;
}

/** The PostgreSQL backends of a database now (but the asking one), to measure a server's backends by difference. */
export async function backendPidsOf(dbUrl: string): Promise<Set<number>> {
  const c = new pg.Client({ connectionString: dbUrl });
  await c.connect();
  try {
    const r = await c.query<{ pid: number }>('select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()');
    return new Set(r.rows.map((x) => x.pid));
  } finally {
    await c.end();
  }
}
