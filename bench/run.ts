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
 *    route: statuses (only 200, timely 503 and 429 past a tenant cap allowed), p50/p99, the acquire-wait histogram, and
 *    the borrowed-client gauge after the run (must be 0).
 *
 * 4. every module in bench/scenarios/ (exports, change capture, search, ...): see each file.
 *
 * Knobs: BENCH_DURATION (10 s), BENCH_WARMUP (3 s), BENCH_ROUNDS (2), BENCH_CONNECTIONS (16,64),
 * BENCH_POOL_CONNECTIONS (500), BENCH_SCENARIOS (isolation,lists,pool-load and every bench/scenarios module; `all` by default), BENCH_SERVER_URL,
 * BENCH_DATABASE.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { SignJWT } from 'jose';
import { APP_PASSWORD, APP_ROLE, BENCH_TENANTS, prepareBenchDatabase } from './setup.js';
import {
  CONNECTION_LEVELS, DATABASE, DURATION, OUT, SERVER_URL, POOL_CONNECTIONS, ROOT, ROUNDS, SCENARIOS, SECRET, WARMUP,
  anchorTarget, cannon, gql, histogram, log, median, metricsText, pgbench, postgraphileTarget, postgraphile5Target, sleep, startAndCheck, stop, strataTarget, tenantOf, variant,
  type Measured,
} from './lib.js';
import type { BenchContext, BenchScenario } from './scenarios/types.js';

const has = (name: string) => SCENARIOS.includes('all') || SCENARIOS.includes(name);

async function main(): Promise<void> {
  mkdirSync(OUT, { recursive: true });
  if (!existsSync(path.join(ROOT, 'bench', 'anchors', 'node_modules', 'postgraphile'))) {
    log('installing the reference servers (bench/anchors: Fastify + pg, PostGraphile 4.14.1)');
    execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: path.join(ROOT, 'bench', 'anchors'), stdio: 'inherit' });
  }
  if (has('lists') && !existsSync(path.join(ROOT, 'bench', 'anchors', 'postgraphile5', 'node_modules', 'postgraphile'))) {
    log('installing PostGraphile 5 (bench/anchors/postgraphile5)');
    execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: path.join(ROOT, 'bench', 'anchors', 'postgraphile5'), stdio: 'inherit' });
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

  // the lists send every request as tenant 1: its rate limit is raised (a big customer), or the faster side would be measured on cheap 429s
  const rest = strataTarget('STRATA-rest', 3110, dbUrl, appUrl.toString(), tokens, { DB_POOL_MAX: '16', DB_POOL_MIN: '16', LIMIT_REQUESTS_PER_SECOND: '1000000' });
  const gqlTarget = variant(
    rest,
    'STRATA-gql',
    'Strata GraphQL items_by_pk, Bearer JWT',
    (id) => ({ method: 'POST', path: '/graphql', headers: { 'content-type': 'application/json', authorization: tokens[tenantOf(id)]! }, body: gql(`{ items_by_pk(id: "${id}") { id tenant_id name payload } }`) }),
    (id, body) => String((JSON.parse(body) as { data: { items_by_pk: { id: string } } }).data.items_by_pk.id) === String(id),
  );

  if (has('isolation')) {
    const ceiling = pgbench(dbUrl);
    if (ceiling) log(`pgbench select-only ceiling (owner, -M prepared, -c 16): ${ceiling.tps} tps`);
    const targets = [anchorTarget('B-norls', 'norls', 3103), anchorTarget('B-rls', 'rls', 3101), postgraphileTarget(3102), rest, gqlTarget];
    const runs: Measured[] = [];
    // An untimed pass first: the first system measured would otherwise pay for a cold page cache
    // (seen: B-norls at 16 connections, 5,972 req/s in round 1 and 11,136 in round 2).
    {
      const first = targets[0]!;
      log(`isolation warm-up (untimed): ${first.name}`);
      const child = await startAndCheck(first);
      try {
        await cannon(first, Math.max(10, WARMUP), CONNECTION_LEVELS[0] ?? 16);
      } finally {
        await stop(child);
      }
    }
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
      md.push(`GraphQL / REST by key: ${(med('STRATA-gql', c, 'rps') / med('STRATA-rest', c, 'rps')).toFixed(2)}x.`, '');
    }
    report['isolation'] = { runs, medians, pgbench: ceiling };
  }

  if (has('lists')) {
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
      postgraphile5Target(3104, appUrl.toString()),
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
    const ratio = (a: number, b: number) => ((listRuns[a]?.rps ?? 0) / (listRuns[b]?.rps || 1)).toFixed(2);
    md.push('', `GraphQL / REST: 50-row page ${ratio(1, 0)}x, two-level relationship ${ratio(3, 2)}x. Two-level, Strata GraphQL / PostGraphile 5: ${ratio(3, 4)}x.`);
    md.push('');
    report['lists'] = listRuns;
  }

  if (has('pool-load')) {
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
      // 429: a tenant past its connection cap (fair shares) after waiting DB_ACQUIRE_TIMEOUT_MS, as timely as a 503
      const other = Object.entries(m.statuses).filter(([s]) => s !== '200' && s !== '503' && s !== '429');
      log(`  ${m.rps} req/s p50=${m.p50}ms p99=${m.p99}ms statuses=${JSON.stringify(m.statuses)} errors=${m.errors} borrowed-after=${borrowed}`);
      md.push(
        `## Pool under load: ${POOL_CONNECTIONS} concurrent connections, pool of 10, ${DURATION}s`,
        '',
        `- throughput ${m.rps} req/s; latency p50 ${m.p50} ms, p99 ${m.p99} ms (all responses)`,
        `- statuses: ${Object.entries(m.statuses).map(([s, n]) => `${s}: ${n}`).join(', ')}; socket errors/timeouts: ${m.errors}`,
        `- responses other than 200, 429 and 503: ${other.length ? JSON.stringify(other) : 'none'}`,
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

  const ctx: BenchContext = { dbUrl, appUrl: appUrl.toString(), tokens, secret: SECRET, log };
  for (const scenario of await loadScenarios()) {
    if (!SCENARIOS.includes('all') && !SCENARIOS.includes(scenario.name)) continue;
    log(`scenario ${scenario.name}`);
    try {
      const out = await scenario.run(ctx);
      md.push(...out.md, '');
      report[scenario.name] = out.json;
    } catch (err) {
      // One failing scenario is reported, not allowed to lose the figures of the others.
      const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
      log(`scenario ${scenario.name} FAILED: ${message}`);
      md.push(`## ${scenario.name}: FAILED`, '', '```', message.slice(0, 2000), '```', '');
      report[scenario.name] = { error: message };
    }
    writeFileSync(path.join(OUT, 'latest.md'), md.join('\n') + '\n');
  }

  const text = md.join('\n') + '\n';
  writeFileSync(path.join(OUT, 'latest.md'), text);
  writeFileSync(path.join(OUT, 'latest.json'), JSON.stringify(report, null, 2) + '\n');
  process.stdout.write('\n' + text);
}

/** The scenario modules in bench/scenarios/ (every file but types.ts), in file-name order. */
async function loadScenarios(): Promise<BenchScenario[]> {
  const dir = path.join(ROOT, 'bench', 'scenarios');
  const files = readdirSync(dir).filter((f) => f.endsWith('.ts') && f !== 'types.ts').sort();
  const mods = await Promise.all(files.map((f) => import(path.join(dir, f)) as Promise<{ default: BenchScenario }>));
  return mods.map((m) => m.default);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
