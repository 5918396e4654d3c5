/**
 * `npm run bench`: side-by-side benchmarks in one run, reported as medians and ratios.
 *
 * 1. isolation: the same tenant-scoped single-row read (1M-row `items`, random id, its tenant),
 *    at BENCH_CONNECTIONS (16,64), through (a) B-norls, the anchor's bare Fastify + pg route as
 *    table owner with no isolation, (b) B-rls, the anchor's naive tenant transaction (BEGIN;
 *    set_config; SELECT; COMMIT) under RLS, (c) C-rls, PostGraphile 4.14.1 with its pgSettings
 *    tenant under RLS, STRATA-rest (`GET /v1/tables/items/rows/{id}`, Bearer JWT) and STRATA-gql
 *    (`items_by_pk`). Rounds are interleaved; pgbench select-only (prepared) is the ceiling.
 * 2. lists: a 50-row filtered, ordered page and a two-level relationship query, REST and GraphQL.
 * 3. pool-load: 500 concurrent connections against Strata with a pool of 10 on the single-row
 *    route: statuses (only 200 and timely 503 allowed), p50/p99, the acquire-wait histogram, and
 *    the borrowed-client gauge after the run (must be 0).
 *
 * Knobs: BENCH_DURATION (10 s), BENCH_WARMUP (3 s), BENCH_ROUNDS (2), BENCH_CONNECTIONS (16,64),
 * BENCH_POOL_CONNECTIONS (500), BENCH_SCENARIOS (isolation,lists,pool-load), BENCH_SERVER_URL,
 * BENCH_DATABASE.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, openSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import autocannon from 'autocannon';
import { SignJWT } from 'jose';
import { APP_PASSWORD, APP_ROLE, BENCH_ROWS, BENCH_TENANTS, prepareBenchDatabase } from './setup.js';

const env = process.env;
const DURATION = Number(env['BENCH_DURATION'] ?? 10);
const WARMUP = Number(env['BENCH_WARMUP'] ?? 3);
const ROUNDS = Number(env['BENCH_ROUNDS'] ?? 2);
const CONNECTION_LEVELS = (env['BENCH_CONNECTIONS'] ?? '16,64').split(',').map(Number);
const POOL_CONNECTIONS = Number(env['BENCH_POOL_CONNECTIONS'] ?? 500);
const SCENARIOS = (env['BENCH_SCENARIOS'] ?? 'isolation,lists,pool-load').split(',');
const SERVER_URL = env['BENCH_SERVER_URL'] ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const DATABASE = env['BENCH_DATABASE'] ?? 'strata_bench';
const SECRET = 'bench-secret-bench-secret-bench-secret-0123';
const ROOT = path.resolve(import.meta.dirname, '..');
const OUT = path.join(ROOT, 'bench', 'results');
const stamp = new Date().toISOString().replace(/[:.]/g, '-');

const log = (m: string) => process.stdout.write(`[bench] ${m}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const randId = () => 1 + Math.floor(Math.random() * BENCH_ROWS);
const tenantOf = (id: number) => (id % BENCH_TENANTS) + 1;

interface Target {
  name: string;
  desc: string;
  port: number;
  start: () => ChildProcess;
  request: (id: number) => { method: 'GET' | 'POST'; path: string; headers: Record<string, string>; body?: string };
  check: (id: number, body: string) => boolean;
}

interface Measured {
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

function spawnLogged(name: string, cmd: string, args: string[], extraEnv: Record<string, string>): ChildProcess {
  const out = openSync(path.join(OUT, `${stamp}-${name}.log`), 'a');
  return spawn(cmd, args, { env: { ...env, ...extraEnv }, stdio: ['ignore', out, out] });
}

function strataTarget(name: string, port: number, dbUrl: string, appUrl: string, tokens: string[], pool: Record<string, string>): Target {
  return {
    name,
    desc: 'Strata GET /v1/tables/items/rows/{id}, Bearer JWT, pipelined tenant transaction under RLS',
    port,
    start: () =>
      spawnLogged(name, process.execPath, [path.join(ROOT, 'dist', 'server.js')], {
        DATABASE_URL: dbUrl,
        APP_DATABASE_URL: appUrl,
        JWT_SECRET: SECRET,
        PORT: String(port),
        HOST: '127.0.0.1',
        LOG_LEVEL: 'warn',
        MIGRATE_ON_BOOT: 'false',
        SEED_DEMO: 'false',
        RUN_WORKERS: 'false',
        NODE_ENV: 'production',
        ...pool,
      }),
    request: (id) => ({ method: 'GET', path: `/v1/tables/items/rows/${id}`, headers: { authorization: tokens[tenantOf(id)]! } }),
    check: (id, body) => String((JSON.parse(body) as { data: { id: string | number } }).data.id) === String(id),
  };
}

/** The same Strata server, asked another request shape. */
function variant(base: Target, name: string, desc: string, request: Target['request'], check: Target['check']): Target {
  return { ...base, name, desc, request, check };
}

const gql = (query: string) => JSON.stringify({ query });

function postgraphileTarget(port: number): Target {
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

function anchorTarget(name: string, mode: 'rls' | 'norls', port: number): Target {
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

async function startAndCheck(t: Target): Promise<ChildProcess> {
  const child = t.start();
  try {
    await waitAndCheck(t, child);
  } catch (err) {
    await stop(child);
    throw err;
  }
  return child;
}

async function waitAndCheck(t: Target, child: ChildProcess): Promise<void> {
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

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 8000);
  await done;
  clearTimeout(t);
}

function cannon(t: Target, seconds: number, connections: number): Promise<Measured & { lat: number[] }> {
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
function pgbench(dbUrl: string): { tps: number } | undefined {
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

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return +(s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2).toFixed(2);
};

async function metricsText(port: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

function histogram(text: string, name: string, pool: string): Array<[string, number]> {
  const re = new RegExp(`^${name}_bucket\\{le="([^"]+)",pool="${pool.replace('/', '\\/')}"\\} (\\d+)`, 'gm');
  return [...text.matchAll(re)].map((m) => [m[1]!, Number(m[2])]);
}

async function main(): Promise<void> {
  mkdirSync(OUT, { recursive: true });
  if (!existsSync(path.join(ROOT, 'bench', 'anchors', 'node_modules', 'postgraphile'))) {
    log('installing the reference servers (bench/anchors: Fastify + pg, PostGraphile 4.14.1)');
    execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: path.join(ROOT, 'bench', 'anchors'), stdio: 'inherit' });
  }
  log('building dist/ (npm run build)');
  execFileSync('npm', ['run', 'build', '--silent'], { cwd: ROOT, stdio: 'inherit' });
  const dbUrl = await prepareBenchDatabase(SERVER_URL, DATABASE, log);
  const appUrl = new URL(dbUrl);
  appUrl.username = APP_ROLE;
  appUrl.password = APP_PASSWORD;
  const key = new TextEncoder().encode(SECRET);
  const tokens: string[] = [''];
  for (let t = 1; t <= BENCH_TENANTS; t++) {
    const jwt = await new SignJWT({ tenant_id: String(t), role: 'reader' }).setProtectedHeader({ alg: 'HS256' }).setSubject(`bench-${t}`).setExpirationTime('2h').sign(key);
    tokens.push(`Bearer ${jwt}`);
  }
  const report: Record<string, unknown> = { at: new Date().toISOString(), machine: { cpus: (await import('node:os')).cpus().length, node: process.version } };
  const md: string[] = [`# Strata benchmarks (${new Date().toISOString()})`, ''];

  const rest = strataTarget('STRATA-rest', 3110, dbUrl, appUrl.toString(), tokens, { DB_POOL_MAX: '16', DB_POOL_MIN: '16' });
  const gqlTarget = variant(
    rest,
    'STRATA-gql',
    'Strata GraphQL items_by_pk, Bearer JWT',
    (id) => ({ method: 'POST', path: '/graphql', headers: { 'content-type': 'application/json', authorization: tokens[tenantOf(id)]! }, body: gql(`{ items_by_pk(id: "${id}") { id tenant_id name payload } }`) }),
    (id, body) => String((JSON.parse(body) as { data: { items_by_pk: { id: string } } }).data.items_by_pk.id) === String(id),
  );

  if (SCENARIOS.includes('isolation')) {
    const ceiling = pgbench(dbUrl);
    if (ceiling) log(`pgbench select-only ceiling (owner, -M prepared, -c 16): ${ceiling.tps} tps`);
    const targets = [anchorTarget('B-norls', 'norls', 3103), anchorTarget('B-rls', 'rls', 3101), postgraphileTarget(3102), rest, gqlTarget];
    const runs: Measured[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      for (const connections of CONNECTION_LEVELS) {
        for (const t of targets) {
          log(`isolation round ${round}, ${connections} connections: ${t.name}`);
          const child = await startAndCheck(t);
          try {
            await cannon(t, WARMUP, connections);
            const m = await cannon(t, DURATION, connections);
            runs.push({ ...m, lat: undefined, round, connections } as unknown as Measured);
            log(`  ${t.name}: ${m.rps} req/s p50=${m.p50}ms p99=${m.p99}ms non2xx=${m.non2xx} errors=${m.errors}`);
          } finally {
            await stop(child);
          }
        }
      }
    }
    const med = (name: string, c: number, k: 'rps' | 'p50' | 'p99') => median(runs.filter((r) => r.target === name && r.connections === c).map((r) => r[k]));
    const medians: Record<string, unknown> = {};
    for (const c of CONNECTION_LEVELS) {
      const a = med('B-norls', c, 'rps');
      const b = med('B-rls', c, 'rps');
      const pg = med('C-rls', c, 'rps');
      md.push(
        `## Single-row tenant-scoped read, ${c} connections, ${DURATION}s x ${ROUNDS} rounds (medians, one run)`,
        '',
        ceiling ? `Ceiling: pgbench select-only, prepared, 16 clients, as the owner: ${ceiling.tps} tps.` : 'Ceiling: pgbench not found.',
        '',
        '| system | req/s | p50 ms | p99 ms | vs (a) B-norls | vs (b) B-rls | vs (c) PostGraphile |',
        '|---|---:|---:|---:|---:|---:|---:|',
      );
      for (const t of targets) {
        const rps = med(t.name, c, 'rps');
        medians[`${t.name}@${c}`] = { rps, p50: med(t.name, c, 'p50'), p99: med(t.name, c, 'p99') };
        md.push(`| ${t.name}: ${t.desc} | ${rps} | ${med(t.name, c, 'p50')} | ${med(t.name, c, 'p99')} | ${(rps / a).toFixed(2)}x | ${(rps / b).toFixed(2)}x | ${(rps / pg).toFixed(2)}x |`);
      }
      md.push('');
    }
    report['isolation'] = { runs, medians, pgbench: ceiling };
  }

  if (SCENARIOS.includes('lists')) {
    const list = [
      variant(rest, 'REST list: 50 rows, filtered, ordered', 'GET /v1/tables/items/rows?select=id,name,payload&id=lt.500000&order=id.desc&limit=50',
        (id) => ({ method: 'GET', path: '/v1/tables/items/rows?select=id,name,payload&id=lt.500000&order=id.desc&limit=50', headers: { authorization: tokens[tenantOf(id)]! } }),
        (_id, body) => (JSON.parse(body) as { data: unknown[] }).data.length === 50),
      variant(gqlTarget, 'GraphQL list: 50 rows, filtered, ordered', 'items(first: 50, where: { id: { _lt: 500000 } }, order_by: [{ id: desc }])',
        (id) => ({ method: 'POST', path: '/graphql', headers: { 'content-type': 'application/json', authorization: tokens[tenantOf(id)]! }, body: gql('{ items(first: 50, where: { id: { _lt: "500000" } }, order_by: [{ id: desc }]) { nodes { id name payload } } }') }),
        (_id, body) => (JSON.parse(body) as { data: { items: { nodes: unknown[] } } }).data.items.nodes.length === 50),
      variant(rest, 'REST two-level relationship', 'pipelines(10) -> pipeline_runs(5 each) -> run_steps',
        () => ({ method: 'GET', path: '/v1/tables/pipelines/rows?select=id,name,pipeline_runs(id,status,run_steps(id,name))&limit=10&pipeline_runs.limit=5', headers: { authorization: tokens[1]! } }),
        (_id, body) => (JSON.parse(body) as { data: unknown[] }).data.length === 10),
      variant(gqlTarget, 'GraphQL two-level relationship', 'pipelines(first: 10) { pipeline_runs(first: 5) { run_steps } }',
        () => ({ method: 'POST', path: '/graphql', headers: { 'content-type': 'application/json', authorization: tokens[1]! }, body: gql('{ pipelines(first: 10) { nodes { id name pipeline_runs(first: 5) { id status run_steps(first: 10) { id name } } } } }') }),
        (_id, body) => (JSON.parse(body) as { data: { pipelines: { nodes: unknown[] } } }).data.pipelines.nodes.length === 10),
    ];
    md.push(`## Lists and relationships, 16 connections, ${DURATION}s`, '', '| query | req/s | p50 ms | p99 ms | non-2xx |', '|---|---:|---:|---:|---:|');
    const listRuns: Measured[] = [];
    for (const t of list) {
      log(`lists: ${t.name}`);
      const child = await startAndCheck(t);
      try {
        await cannon(t, WARMUP, 16);
        const m = await cannon(t, DURATION, 16);
        listRuns.push({ ...m, lat: undefined } as unknown as Measured);
        log(`  ${m.rps} req/s p50=${m.p50}ms p99=${m.p99}ms`);
        md.push(`| ${t.name} (${t.desc}) | ${m.rps} | ${m.p50} | ${m.p99} | ${m.non2xx} |`);
      } finally {
        await stop(child);
      }
    }
    md.push('');
    report['lists'] = listRuns;
  }

  if (SCENARIOS.includes('pool-load')) {
    const t = strataTarget('STRATA-pool10', 3111, dbUrl, appUrl.toString(), tokens, {
      DB_POOL_MAX: '10',
      DB_POOL_MIN: '10',
      DB_ACQUIRE_TIMEOUT_MS: '1000',
      DB_LEAK_THRESHOLD_MS: '5000',
    });
    log(`pool-load: ${POOL_CONNECTIONS} concurrent connections against a pool of 10`);
    const child = await startAndCheck(t);
    try {
      const m = await cannon(t, DURATION, POOL_CONNECTIONS);
      await sleep(500);
      const text = await metricsText(t.port);
      const borrowed = /^strata_db_pool_borrowed\{pool="default\/app"\} (\d+)/m.exec(text)?.[1];
      const leaks = /^strata_db_pool_leaked_clients_total\{pool="default\/app"\} (\d+)/m.exec(text)?.[1] ?? '0';
      const acquire = histogram(text, 'strata_db_pool_acquire_seconds', 'default/app');
      const other = Object.entries(m.statuses).filter(([s]) => s !== '200' && s !== '503');
      log(`  ${m.rps} req/s p50=${m.p50}ms p99=${m.p99}ms statuses=${JSON.stringify(m.statuses)} errors=${m.errors} borrowed-after=${borrowed}`);
      md.push(
        `## Pool under load: ${POOL_CONNECTIONS} concurrent connections, pool of 10, ${DURATION}s`,
        '',
        `- throughput ${m.rps} req/s; latency p50 ${m.p50} ms, p99 ${m.p99} ms (all responses)`,
        `- statuses: ${Object.entries(m.statuses).map(([s, n]) => `${s}: ${n}`).join(', ')}; socket errors/timeouts: ${m.errors}`,
        `- responses other than 200 and 503: ${other.length ? JSON.stringify(other) : 'none'}`,
        `- clients checked out after the run: ${borrowed ?? '?'}; leaks reported: ${leaks}`,
        '- acquire wait (cumulative count of borrows waiting at most `le` seconds):',
        '',
        '| le (s) | borrows |',
        '|---:|---:|',
        ...acquire.map(([le, n]) => `| ${le} | ${n} |`),
        '',
      );
      report['poolLoad'] = { ...m, lat: undefined, borrowedAfter: Number(borrowed), leaks: Number(leaks), acquire };
    } finally {
      await stop(child);
    }
  }

  const text = md.join('\n') + '\n';
  writeFileSync(path.join(OUT, 'latest.md'), text);
  writeFileSync(path.join(OUT, 'latest.json'), JSON.stringify(report, null, 2) + '\n');
  process.stdout.write('\n' + text);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
