/**
 * Profile the server on the hot path: `npx tsx bench/profile.ts [dist ...]`; or, with
 * `--cpu`, only compare the server's CPU per request of each dist/ (no profiler), in
 * BENCH_ROUNDS short interleaved rounds (medians): the quick check between two builds.
 *
 * Each `dist/` given (default: this tree's) is started with `--cpu-prof`, warmed up, loaded with the
 * hot-path scenario's single-row read (`GET /v1/tables/items/rows/{id}`, Bearer JWT, 100 tenants) for
 * BENCH_DURATION seconds at the first of BENCH_CONNECTIONS, then stopped; the samples taken while the
 * load ran are summed by function and by file (self time), per request. The bench database must be
 * ready (`BENCH_SCENARIOS=hot-path npm run bench` once). Profiles and summaries go to
 * BENCH_PROFILE_DIR (default /tmp/strata-profile).
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import autocannon from 'autocannon';
import { SignJWT } from 'jose';
import { APP_PASSWORD, APP_ROLE, BENCH_TENANTS, prepareBenchDatabase } from './setup.js';
import { CONNECTION_LEVELS, DATABASE, DURATION, ROOT, SECRET, SERVER_URL, WARMUP, cannon, log, randId, spawnLogged, startAndCheck, stop, strataTarget } from './lib.js';

const INTERVAL_US = 100;

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

const short = (url: string) => {
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + 13).split('/');
    return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  const d = url.indexOf('/dist/');
  return d >= 0 ? url.slice(d + 1) : url.replace(/^file:\/\//, '') || '(native)';
};

/** Self time (µs) by function and by file for samples between from and to (µs, the profile's clock). */
function summarize(p: Profile, from: number, to: number) {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const fn = new Map<string, number>();
  const file = new Map<string, number>();
  let t = p.startTime;
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i]!;
    if (t < from || t > to) continue;
    // count samples, not the time between them: a process descheduled on a busy machine takes no
    // samples meanwhile, so samples x interval is close to CPU time where time deltas are not
    const dt = INTERVAL_US;
    const n = byId.get(p.samples[i]!)!;
    const f = n.callFrame;
    if (f.functionName === '(idle)') continue;
    total += dt;
    const key = `${f.functionName || '(anonymous)'} ${short(f.url)}:${f.lineNumber + 1}`;
    fn.set(key, (fn.get(key) ?? 0) + dt);
    const k2 = f.url ? short(f.url) : f.functionName;
    file.set(k2, (file.get(k2) ?? 0) + dt);
  }
  return { total, fn, file };
}

async function main(): Promise<void> {
  const cpuOnly = process.argv.includes('--cpu');
  const dists = process.argv.slice(2).filter((a) => a !== '--cpu');
  if (dists.length === 0) dists.push(path.join(ROOT, 'dist'));
  const out = process.env['BENCH_PROFILE_DIR'] ?? '/tmp/strata-profile';
  mkdirSync(out, { recursive: true });
  const dbUrl = await prepareBenchDatabase(SERVER_URL, DATABASE, log);
  const appUrl = new URL(dbUrl);
  appUrl.username = APP_ROLE;
  appUrl.password = APP_PASSWORD;
  const key = new TextEncoder().encode(SECRET);
  const tokens: string[] = [''];
  for (let t = 1; t <= BENCH_TENANTS; t++) {
    tokens.push(`Bearer ${await new SignJWT({ tenant_id: String(t), role: 'reader' }).setProtectedHeader({ alg: 'HS256' }).setSubject(`bench-${t}`).setExpirationTime('2h').sign(key)}`);
  }
  const connections = CONNECTION_LEVELS[0]!;
  const extra = Object.fromEntries((process.env['BENCH_PROFILE_ENV'] ?? '').split(' ').filter(Boolean).map((kv) => kv.split('=') as [string, string]));
  if (cpuOnly) return compareCpu(dists, dbUrl, appUrl.toString(), tokens, extra);
  for (const [i, dist] of dists.entries()) {
    const name = `prof${i}`;
    const dir = path.join(out, name);
    mkdirSync(dir, { recursive: true });
    for (const f of readdirSync(dir)) if (f.endsWith('.cpuprofile')) writeFileSync(path.join(dir, f), '');
    const port = 3150 + i;
    const target = {
      ...strataTarget(name, port, dbUrl, appUrl.toString(), tokens, {}),
      start: () =>
        spawnLogged(name, process.execPath, ['--max-semi-space-size=8', ...FLAGS, '--cpu-prof', `--cpu-prof-dir=${dir}`, `--cpu-prof-interval=${INTERVAL_US}`, path.join(path.resolve(dist), 'server.js')], {
          DATABASE_URL: dbUrl, APP_DATABASE_URL: appUrl.toString(), JWT_SECRET: SECRET, PORT: String(port), HOST: '127.0.0.1',
          LOG_LEVEL: 'warn', MIGRATE_ON_BOOT: 'false', SEED_DEMO: 'false', RUN_WORKERS: 'false', NODE_ENV: 'production', DB_POOL_MAX: '16', DB_POOL_MIN: '16', ...extra,
        }),
    };
    const child = await startAndCheck(target);
    await cannon(target, WARMUP, 64);
    const from = Number(process.hrtime.bigint() / 1000n);
    const m = RATE > 0 ? await paced(target, DURATION, connections, RATE) : await cannon(target, DURATION, connections);
    const to = Number(process.hrtime.bigint() / 1000n);
    await stop(child);
    const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile') && readFileSync(path.join(dir, f)).length > 0)!;
    const p = JSON.parse(readFileSync(path.join(dir, file), 'utf8')) as Profile;
    const s = summarize(p, from, to);
    const per = (us: number) => (us / m.total).toFixed(2);
    const lines = [`# ${dist}: ${m.total} requests (${m.rps} req/s, ${connections} conns), busy ${per(s.total)} us/req sampled`, '', '## by file (self us/req)'];
    for (const [k, v] of [...s.file].sort((a, b) => b[1] - a[1]).slice(0, 40)) lines.push(`${per(v).padStart(8)}  ${k}`);
    lines.push('', '## by function (self us/req)');
    for (const [k, v] of [...s.fn].sort((a, b) => b[1] - a[1]).slice(0, 120)) lines.push(`${per(v).padStart(8)}  ${k}`);
    writeFileSync(path.join(out, `${name}.txt`), lines.join('\n') + '\n');
    writeFileSync(path.join(out, `${name}.json`), JSON.stringify({ dist, total: m.total, busy: s.total, fn: Object.fromEntries(s.fn), file: Object.fromEntries(s.file) }));
    log(`${dist}: ${m.rps} req/s, sampled busy ${per(s.total)} us/req; summary in ${path.join(out, `${name}.txt`)}`);
  }
}

/**
 * BENCH_RATE (req/s, --cpu only): send at this fixed rate instead of as fast as possible, so both
 * builds do the same work per second (CPU per request depends on the load level: batching, idle
 * wake-ups), a fairer comparison on a busy machine.
 */
/** More node flags for the servers (e.g. --trace-gc; their output is in bench/results/<stamp>-<name>.log). */
const FLAGS = (process.env['BENCH_PROFILE_FLAGS'] ?? '').split(' ').filter(Boolean);

const RATE = Number(process.env['BENCH_RATE'] ?? 0);

function paced(t: ReturnType<typeof strataTarget>, seconds: number, connections: number, rate: number): Promise<{ rps: number; total: number; non2xx: number }> {
  return new Promise((resolve, reject) => {
    autocannon(
      { url: `http://127.0.0.1:${t.port}`, connections, duration: seconds, overallRate: rate, timeout: 20, requests: [{ setupRequest: (req) => ({ ...req, ...t.request(randId()) }) }] },
      (err, res) => (err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve({ rps: Math.round(res.requests.total / res.duration), total: res.requests.total, non2xx: res.non2xx })),
    );
  });
}

/** CPU ticks (user + system, 1/100 s) of a process so far. */
function ticks(pid: number, which: 'user' | 'system' | 'both' = 'both'): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (which === 'system' ? 0 : Number(f[11])) + (which === 'user' ? 0 : Number(f[12]));
}

/** CPU ticks per thread name of a process (main thread: its own name; V8 and libuv helpers by theirs). */
function threadTicks(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const name = tid === String(pid) ? 'main' : stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(name, (out.get(name) ?? 0) + Number(f[11]) + Number(f[12]));
    } catch {
      /* gone */
    }
  }
  return out;
}

async function compareCpu(dists: string[], dbUrl: string, appUrl: string, tokens: string[], extra: Record<string, string>): Promise<void> {
  const targets = dists.map((dist, i) => {
    const name = `cpu${i}`;
    const port = 3160 + i;
    return {
      dist,
      t: {
        ...strataTarget(name, port, dbUrl, appUrl, tokens, {}),
        start: () =>
          spawnLogged(name, process.execPath, ['--max-semi-space-size=8', ...FLAGS, path.join(path.resolve(dist), 'server.js')], {
            DATABASE_URL: dbUrl, APP_DATABASE_URL: appUrl, JWT_SECRET: SECRET, PORT: String(port), HOST: '127.0.0.1',
            LOG_LEVEL: 'warn', MIGRATE_ON_BOOT: 'false', SEED_DEMO: 'false', RUN_WORKERS: 'false', NODE_ENV: 'production', DB_POOL_MAX: '16', DB_POOL_MIN: '16', ...extra,
          }),
      },
    };
  });
  const children = [];
  const rounds = Number(process.env['BENCH_ROUNDS'] ?? 6);
  const us = new Map<string, Map<number, number[]>>();
  const rps = new Map<string, Map<number, number[]>>();
  try {
    for (const { t } of targets) {
      const child = await startAndCheck(t);
      children.push(child);
      await cannon(t, WARMUP, 64);
    }
    for (let r = 0; r < rounds; r++) {
      for (const c of CONNECTION_LEVELS) {
        for (const [i, { dist, t }] of (r % 2 ? [...targets].reverse() : targets).entries()) {
          const child = children[r % 2 ? targets.length - 1 - i : i]!;
          const th0 = threadTicks(child.pid!);
          const t0 = ticks(child.pid!);
          const s0 = ticks(child.pid!, 'system');
          const m = RATE > 0 ? await paced(t, DURATION, c, RATE) : await cannon(t, DURATION, c);
          const v = ((ticks(child.pid!) - t0) * 10_000) / Math.max(1, m.total);
          const sys = ((ticks(child.pid!, 'system') - s0) * 10_000) / Math.max(1, m.total);
          const th = [...threadTicks(child.pid!)].map(([k, x]) => `${k}=${(((x - (th0.get(k) ?? 0)) * 10_000) / Math.max(1, m.total)).toFixed(0)}`).join(' ');
          for (const [map, x] of [[us, v], [rps, m.rps]] as const) {
            if (!map.has(dist)) map.set(dist, new Map());
            const byC = map.get(dist)!;
            if (!byC.has(c)) byC.set(c, []);
            byC.get(c)!.push(x);
          }
          log(`round ${r + 1} ${c} conns ${dist}: ${m.rps} req/s, node ${v.toFixed(1)} us/req (system ${sys.toFixed(1)}; ${th}), non2xx=${m.non2xx}`);
        }
      }
    }
  } finally {
    for (const c of children) await stop(c);
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  for (const c of CONNECTION_LEVELS) {
    const ref = med(us.get(dists[dists.length - 1]!)!.get(c)!);
    for (const d of dists) {
      const m = med(us.get(d)!.get(c)!);
      log(`${c} conns ${d}: median node ${m.toFixed(1)} us/req (${(m / ref).toFixed(3)}x the last), median ${med(rps.get(d)!.get(c)!)} req/s; rounds ${us.get(d)!.get(c)!.map((x) => x.toFixed(0)).join(' ')}`);
    }
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
