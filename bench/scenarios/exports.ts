/**
 * exports: streamed exports against their reference, in one run.
 *
 * 1. Throughput: 2,000,000 run_logs rows of tenant `bench-export` as CSV, through Strata
 *    (`GET /v1/tables/run_logs/export`, Bearer JWT, tenant session under RLS, COPY TO STDOUT) vs
 *    `psql -c "\copy (SELECT ...) TO STDOUT WITH CSV HEADER"` of the same rows (same columns, same
 *    order) as the table owner. Interleaved runs (BENCH_EXPORT_RUNS, default 3); medians of rows/s
 *    and the ratio. Both sides are read to the end by the bench and their byte counts compared.
 * 2. Memory: Strata's peak RSS (VmHWM of a freshly started server, and the highest VmRSS sampled
 *    every 50 ms) while streaming 1,000,000 and then 5,000,000 rows to a deliberately slow client.
 *    The rows come from `POST /v1/sql/export` of a generate_series query in the same tenant session
 *    (nothing stored); the client reads 16 KiB every 20 ms for the first 4 s (the server is held
 *    back by TCP backpressure), then reads at full speed so the run ends in reasonable time.
 *
 * The 2M rows are seeded once (idempotent: kept while the tenant holds exactly 2M run_logs rows)
 * under their own tenant, so no other scenario's data is touched.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { SignJWT } from 'jose';
import pg from 'pg';
import { median, sleep, spawnStrata, stop } from '../lib.js';
import type { BenchContext, BenchScenario } from './types.js';

const TENANT = 'bench-export';
const ROWS = 2_000_000;
const PORT = 3200;
const RUNS = Number(process.env['BENCH_EXPORT_RUNS'] ?? 3);
const COLUMNS = 'id, run_id, level, message, at';
const SLOW_PHASE_MS = 4_000;

async function seed(dbUrl: string, log: (m: string) => void): Promise<void> {
  const c = new pg.Client({ connectionString: dbUrl });
  await c.connect();
  try {
    await c.query("INSERT INTO strata.tenants (id, name) VALUES ($1, 'Export benchmark') ON CONFLICT DO NOTHING", [TENANT]);
    const { rows } = await c.query<{ n: string }>('SELECT count(*) AS n FROM public.run_logs WHERE tenant_id = $1', [TENANT]);
    if (Number(rows[0]?.n) === ROWS) return;
    log(`exports: seeding ${ROWS} run_logs rows for tenant ${TENANT} (once)`);
    await c.query('BEGIN');
    await c.query('DELETE FROM public.pipelines WHERE tenant_id = $1', [TENANT]); // cascades to runs and logs
    const p = await c.query<{ id: string }>("INSERT INTO public.pipelines (tenant_id, name) VALUES ($1, 'export bench') RETURNING id", [TENANT]);
    await c.query(
      "INSERT INTO public.pipeline_runs (tenant_id, pipeline_id, status) SELECT $1, $2, 'succeeded' FROM generate_series(1, 100)",
      [TENANT, p.rows[0]!.id],
    );
    await c.query(
      `INSERT INTO public.run_logs (tenant_id, run_id, level, message, at)
       SELECT $1, r.ids[1 + g % 100], (ARRAY['debug','info','warn','error'])[1 + g % 4],
              CASE g % 10 WHEN 0 THEN 'step ' || g || ', with a comma and "quotes"' WHEN 1 THEN 'unicode é漢字 ' || g ELSE 'log line number ' || g END,
              timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second'
         FROM generate_series(1, ${ROWS}) g,
              (SELECT array_agg(id ORDER BY id) AS ids FROM public.pipeline_runs WHERE tenant_id = $1) r`,
      [TENANT],
    );
    await c.query('COMMIT');
    await c.query('VACUUM ANALYZE public.run_logs');
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    await c.end();
  }
}

function startStrata(ctx: BenchContext, name: string): ChildProcess {
  return spawnStrata(name, { dbUrl: ctx.dbUrl, appUrl: ctx.appUrl, secret: ctx.secret, port: PORT, env: { DB_POOL_MAX: '4', DB_POOL_MIN: '1' } });
}

async function waitUp(child: ChildProcess): Promise<void> {
  for (let i = 0; i < 150; i++) {
    if (child.exitCode !== null) throw new Error('Strata exited early; see bench/results logs');
    try {
      const res = await fetch(`http://127.0.0.1:${PORT}/healthz`, { signal: AbortSignal.timeout(1000) });
      if (res.ok) return;
    } catch {
      /* not up yet */
    }
    await sleep(200);
  }
  throw new Error('Strata did not start');
}

/** Read an HTTP response to the end; slow for `slowMs` (16 KiB per 20 ms), then at full speed. */
function download(opts: http.RequestOptions & { body?: string }, slowMs = 0): Promise<{ status: number; bytes: number; lines: number; ms: number }> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const req = http.request({ host: '127.0.0.1', port: PORT, ...opts }, (res) => {
      let bytes = 0;
      let lines = 0;
      const count = (c: Buffer) => {
        bytes += c.length;
        for (let i = c.indexOf(10); i !== -1; i = c.indexOf(10, i + 1)) lines++;
      };
      res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, lines, ms: performance.now() - started }));
      res.on('error', reject);
      if (slowMs <= 0) {
        res.on('data', count);
        return;
      }
      const slowUntil = Date.now() + slowMs;
      res.pause();
      const tick = () => {
        if (Date.now() >= slowUntil) {
          res.on('data', count);
          res.resume();
          return;
        }
        let chunk: Buffer | null;
        if ((chunk = res.read(16_384) as Buffer | null) !== null) count(chunk);
        setTimeout(tick, 20);
      };
      res.once('readable', tick);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

function psqlCopy(dbUrl: string): Promise<{ bytes: number; lines: number; ms: number }> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const sql = `\\copy (SELECT ${COLUMNS} FROM public.run_logs WHERE tenant_id = '${TENANT}' ORDER BY id) TO STDOUT WITH CSV HEADER`;
    const child = spawn('psql', [dbUrl, '-X', '-q', '-c', sql], { stdio: ['ignore', 'pipe', 'inherit'] });
    let bytes = 0;
    let lines = 0;
    child.stdout.on('data', (c: Buffer) => {
      bytes += c.length;
      for (let i = c.indexOf(10); i !== -1; i = c.indexOf(10, i + 1)) lines++;
    });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve({ bytes, lines, ms: performance.now() - started }) : reject(new Error(`psql exited ${code}`))));
  });
}

const rssKb = (pid: number, field: 'VmRSS' | 'VmHWM') => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);

async function memoryRun(ctx: BenchContext, token: string, rows: number) {
  const child = startStrata(ctx, `exports-mem-${rows}`);
  try {
    await waitUp(child);
    const pid = child.pid!;
    const idleMb = rssKb(pid, 'VmRSS') / 1024;
    let sampledMax = 0;
    const sampler = setInterval(() => (sampledMax = Math.max(sampledMax, rssKb(pid, 'VmRSS'))), 50);
    const body = JSON.stringify({ sql: `SELECT g AS id, 'generated row ' || g || ', "quoted"' AS message, timestamptz '2026-01-01' + g * interval '1 second' AS at FROM (SELECT generate_series(1, ${rows}) AS g) s`, format: 'csv' });
    const r = await download({ method: 'POST', path: '/v1/sql/export', headers: { authorization: token, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }, body }, SLOW_PHASE_MS);
    clearInterval(sampler);
    const peakMb = rssKb(pid, 'VmHWM') / 1024;
    if (r.status !== 200 || r.lines !== rows + 1) throw new Error(`memory run ${rows}: status ${r.status}, ${r.lines - 1} rows`);
    return { rows, idle_mb: +idleMb.toFixed(1), peak_rss_mb: +peakMb.toFixed(1), sampled_max_rss_mb: +(sampledMax / 1024).toFixed(1), seconds: +(r.ms / 1000).toFixed(1), bytes: r.bytes };
  } finally {
    await stop(child);
  }
}

const scenario: BenchScenario = {
  name: 'exports',
  async run(ctx) {
    await seed(ctx.dbUrl, ctx.log);
    const key = new TextEncoder().encode(ctx.secret);
    const sign = (role: string) =>
      new SignJWT({ tenant_id: TENANT, role }).setProtectedHeader({ alg: 'HS256' }).setSubject(`bench-${role}`).setExpirationTime('2h').sign(key);
    const reader = `Bearer ${await sign('reader')}`;
    const analyst = `Bearer ${await sign('analyst')}`;

    // 1. Throughput, interleaved.
    const child = startStrata(ctx, 'exports-throughput');
    const strata: number[] = [];
    const psql: number[] = [];
    let sizes = { strata: 0, psql: 0 };
    try {
      await waitUp(child);
      const url = `/v1/tables/run_logs/export?format=csv&select=${COLUMNS.replace(/ /g, '')}`;
      await download({ path: `${url}&limit=1000`, headers: { authorization: reader } }); // warm-up
      for (let i = 0; i < RUNS; i++) {
        const s = await download({ path: url, headers: { authorization: reader } });
        if (s.status !== 200 || s.lines !== ROWS + 1) throw new Error(`Strata export: status ${s.status}, ${s.lines - 1} rows`);
        strata.push(ROWS / (s.ms / 1000));
        const p = await psqlCopy(ctx.dbUrl);
        if (p.lines !== ROWS + 1) throw new Error(`psql export: ${p.lines - 1} rows`);
        psql.push(ROWS / (p.ms / 1000));
        sizes = { strata: s.bytes, psql: p.bytes };
        ctx.log(`exports: run ${i + 1}: Strata ${Math.round(strata.at(-1)!)} rows/s, psql ${Math.round(psql.at(-1)!)} rows/s`);
      }
    } finally {
      await stop(child);
    }
    const ratio = +(median(strata) / median(psql)).toFixed(3);

    // 2. Memory with a slow client, a fresh server per size.
    const m1 = await memoryRun(ctx, analyst, 1_000_000);
    const m5 = await memoryRun(ctx, analyst, 5_000_000);
    const growth = +(m5.peak_rss_mb - m1.peak_rss_mb).toFixed(1);

    const md = [
      '## Exports',
      '',
      `Throughput: ${ROWS.toLocaleString('en')} run_logs rows as CSV, medians of ${RUNS} interleaved runs (noisy when the machine is shared).`,
      '',
      '| target | rows/s (median) | runs | bytes |',
      '|---|---|---|---|',
      `| Strata GET /v1/tables/run_logs/export (HTTP, JWT, tenant session, RLS, COPY) | ${Math.round(median(strata))} | ${strata.map(Math.round).join(', ')} | ${sizes.strata} |`,
      `| psql \\copy (SELECT ...) TO STDOUT WITH CSV (owner, no RLS) | ${Math.round(median(psql))} | ${psql.map(Math.round).join(', ')} | ${sizes.psql} |`,
      '',
      `Ratio Strata/psql: **${ratio}x** (target >= 0.85x).`,
      '',
      `Memory: slow client (16 KiB per 20 ms for ${SLOW_PHASE_MS / 1000} s, then full speed), POST /v1/sql/export of generate_series rows, fresh server per run.`,
      '',
      '| rows | idle RSS MB | peak RSS MB (VmHWM) | max sampled RSS MB | peak - idle MB | seconds |',
      '|---|---|---|---|---|---|',
      ...[m1, m5].map((m) => `| ${m.rows.toLocaleString('en')} | ${m.idle_mb} | ${m.peak_rss_mb} | ${m.sampled_max_rss_mb} | ${(m.peak_rss_mb - m.idle_mb).toFixed(1)} | ${m.seconds} |`),
      '',
      `5M peak - 1M peak: **${growth} MB** (target: within 20 MB; both under 200 MB).`,
      '',
    ];
    return {
      md,
      json: {
        throughput: { rows: ROWS, strata_rows_per_s: strata.map(Math.round), psql_rows_per_s: psql.map(Math.round), strata_median: Math.round(median(strata)), psql_median: Math.round(median(psql)), ratio, bytes: sizes },
        memory: { one_million: m1, five_million: m5, growth_mb: growth },
      },
    };
  },
};

export default scenario;
