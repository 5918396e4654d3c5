/**
 * Faults of the job side: 20 black-hole webhooks of one tenant (accept, never answer) must not stop
 * delivery to the healthy webhooks of that tenant and of another; a job whose worker dies twice still
 * completes; orphaned export/backup temporaries are swept.
 */
import { mkdtemp, mkdir, readdir, utimes, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import pino from 'pino';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorkers, type WorkerRuntime } from '../src/jobs/runtime.js';
import { createJobs, type JobsService } from '../src/jobs/queues.js';
import { sweepTemporaries } from '../src/services/maintenance-sweep/index.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { REDIS_URL } from './helpers/databases.js';

const log = pino({ level: 'silent' });

async function until<T>(fn: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? NaN;
};

describe('faults: jobs and webhooks', () => {
  const prefix = `test-${randomUUID()}`;
  let t: TestApp;
  let jobs: JobsService;
  let workers: WorkerRuntime | undefined;

  beforeAll(async () => {
    jobs = createJobs({ redisUrl: REDIS_URL, prefix, log });
    t = await createTestApp({
      jobs,
      env: { WEBHOOK_ALLOW_PRIVATE: 'true', WEBHOOK_TIMEOUT_MS: '3000', WEBHOOK_TENANT_MAX: '21', CHANGES_POLL_MS: '50', WEBHOOK_BACKOFF_BASE_MS: '200' },
    });
  });
  afterAll(async () => {
    await workers?.close({ timeoutMs: 3000 });
    await t?.close();
    await Promise.all(Object.values(jobs.queues).map((q) => q.obliterate({ force: true }).catch(() => undefined)));
    await jobs.close();
    const r = new Redis(REDIS_URL);
    const keys = await r.keys(`${prefix}:*`);
    if (keys.length) await r.del(...keys);
    await r.quit();
  });

  it("20 stuck webhooks of one tenant do not stop delivery to that tenant's healthy webhook nor another tenant's", async () => {
    const arrivals = new Map<string, number>();
    const healthy = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        const e = JSON.parse(body) as { after?: { name?: string }; tenant_id: string };
        arrivals.set(`${e.tenant_id}:${e.after?.name}`, Date.now());
        res.writeHead(204).end();
      });
    });
    const held: net.Socket[] = [];
    // accepts, never answers; counts the requests hanging at once, per endpoint and in all
    const open = new Map<string, number>();
    const most = { perEndpoint: 0, all: 0 };
    const timeline: string[] = [];
    const blackHole = net.createServer((s) => {
      held.push(s);
      s.once('data', (d: Buffer) => {
        const hole = d.toString().split(' ')[1] ?? '?';
        open.set(hole, (open.get(hole) ?? 0) + 1);
        most.perEndpoint = Math.max(most.perEndpoint, open.get(hole)!);
        most.all = Math.max(most.all, [...open.values()].reduce((a, b) => a + b, 0));
        timeline.push(`${Date.now()} open ${hole} ${JSON.stringify([...open])}`);
        s.on('close', () => {
          open.set(hole, open.get(hole)! - 1);
          timeline.push(`${Date.now()} close ${hole}`);
        });
      });
    });
    await new Promise<void>((r) => healthy.listen(0, '127.0.0.1', () => r()));
    await new Promise<void>((r) => blackHole.listen(0, '127.0.0.1', () => r()));
    const okUrl = `http://127.0.0.1:${(healthy.address() as net.AddressInfo).port}/ok`;
    const holeUrl = (i: number) => `http://127.0.0.1:${(blackHole.address() as net.AddressInfo).port}/hole-${i}`;
    workers = startWorkers({ redisUrl: REDIS_URL, prefix, log, db: t.db, queues: ['webhooks'] });
    try {
      const acme = await t.auth('admin', 'acme');
      const globex = await t.auth('admin', 'globex');
      const acmeW = await t.auth('writer', 'acme');
      const globexW = await t.auth('writer', 'globex');
      const create = (headers: Record<string, string>, url: string) =>
        t.app.inject({ method: 'POST', url: '/v1/webhooks', headers, payload: { url, tables: ['pipelines'], ops: ['insert'] } });
      const write = async (headers: Record<string, string>, name: string) => {
        const r = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers, payload: { name } });
        expect(r.statusCode).toBe(201);
        return Date.now();
      };
      expect((await create(acme, okUrl)).statusCode).toBe(201);
      expect((await create(globex, okUrl)).statusCode).toBe(201);
      // both healthy webhooks have delivered (proven endpoints)
      await write(acmeW, 'warm');
      await write(globexW, 'warm');
      await until(async () => (arrivals.has('acme:warm') && arrivals.has('globex:warm') ? true : undefined));

      for (let i = 0; i < 20; i++) expect((await create(acme, holeUrl(i))).statusCode).toBe(201);
      // the per-tenant cap (WEBHOOK_TENANT_MAX = 21): a 22nd is refused and nothing is written
      const over = await create(acme, holeUrl(99));
      expect(over.statusCode).toBe(409);
      expect(over.json().error.code).toBe('WEBHOOK_LIMIT_REACHED');
      expect(Number((await t.db.adminQuery<{ n: string }>("SELECT count(*) AS n FROM strata.webhooks WHERE tenant_id = 'acme'")).rows[0]?.n)).toBe(21);

      const lat: Record<'acme' | 'globex', number[]> = { acme: [], globex: [] };
      const sent: Array<{ key: string; at: number; tenant: 'acme' | 'globex' }> = [];
      for (let i = 0; i < 40; i++) {
        sent.push({ key: `acme:ev-${i}`, at: await write(acmeW, `ev-${i}`), tenant: 'acme' });
        sent.push({ key: `globex:ev-${i}`, at: await write(globexW, `ev-${i}`), tenant: 'globex' });
        await new Promise((r) => setTimeout(r, 150));
      }
      await until(async () => (sent.every((s) => arrivals.has(s.key)) ? true : undefined), 30_000);
      for (const s of sent) lat[s.tenant].push(arrivals.get(s.key)! - s.at);
      console.log(
        `[figures] with 20 black-hole webhooks in acme (3 s timeout): healthy acme p50 ${pct(lat.acme, 50)} ms p99 ${pct(lat.acme, 99)} ms; globex p50 ${pct(lat.globex, 50)} ms p99 ${pct(lat.globex, 99)} ms`,
      );
      // nothing of the healthy webhooks waited behind the black holes as a failed or repeated attempt:
      // each of their 41 events (warm-up included) was delivered once, at its first attempt
      const healthyRows = await t.db.adminQuery<{ tenant_id: string; ok: number; other: number; events: number }>(
        `SELECT d.tenant_id, count(*) FILTER (WHERE d.status = 'succeeded' AND d.attempt = 1)::int AS ok,
                count(*) FILTER (WHERE d.status <> 'succeeded' OR d.attempt <> 1)::int AS other, count(DISTINCT d.change_id)::int AS events
           FROM strata.webhook_deliveries d JOIN strata.webhooks w ON w.id = d.webhook_id
          WHERE w.url = $1 AND NOT d.replay GROUP BY d.tenant_id ORDER BY d.tenant_id`,
        [okUrl],
      );
      expect(healthyRows.rows).toEqual([
        { tenant_id: 'acme', ok: 41, other: 0, events: 41 },
        { tenant_id: 'globex', ok: 41, other: 0, events: 41 },
      ]);
      // failing endpoints share one slot of the tenant, and an endpoint that never answered gets one
      // lane at a time: never more than one request hung in the black holes at once (was: a lane per
      // pending row, up to WEBHOOK_CONCURRENCY, timing out together)
      expect(most, timeline.join('\n')).toEqual({ perEndpoint: 1, all: 1 });
      // failing endpoints share one slot of the tenant: at most one black hole is being tried at a time
      const leased = await t.db.adminQuery<{ n: number }>(
        "SELECT count(*)::int AS n FROM strata.webhooks WHERE tenant_id = 'acme' AND url LIKE '%/hole-%' AND lease_until > now()",
      );
      expect(leased.rows[0]!.n).toBeLessThanOrEqual(1);
      const tried = await t.db.adminQuery<{ n: number }>("SELECT count(*)::int AS n FROM strata.webhooks WHERE url LIKE '%/hole-%' AND failures > 0");
      expect(tried.rows[0]!.n).toBeGreaterThan(0);
    } finally {
      await workers.close({ timeoutMs: 3000 });
      workers = undefined;
      for (const s of held) s.destroy();
      await new Promise((r) => blackHole.close(r));
      healthy.closeAllConnections();
      await new Promise((r) => healthy.close(r));
    }
  }, 90_000);

  it('a job whose worker dies twice still completes, on its third run', async () => {
    const fast = { lockDuration: 1_000, stalledInterval: 500 };
    const ctx = { tenantId: 'acme', actor: 'test', role: 'admin', requestId: 'r' } as never;
    const { job_id } = await jobs.enqueue(ctx, 'sleep', { ms: 1_500, steps: 3 });
    const crashed: WorkerRuntime[] = [];
    try {
      for (let kill = 0; kill < 2; kill++) {
        const w = startWorkers({ redisUrl: REDIS_URL, prefix, log, db: t.db, queues: ['noop'], workerOptions: fast });
        crashed.push(w);
        await until(async () => ((await jobs.queues.noop.getJob(job_id))?.attemptsStarted === kill + 1 ? true : undefined));
        await Promise.all(w.workers.map((x) => x.close(true))); // a crash: no completion, the lock lapses
      }
      workers = startWorkers({ redisUrl: REDIS_URL, prefix, log, db: t.db, queues: ['noop'], workerOptions: fast });
      const done = await until(async () => {
        const v = await jobs.get(ctx, job_id);
        return ['completed', 'failed'].includes(v.state) ? v : undefined;
      });
      expect(done.state).toBe('completed');
      expect(done.result).toEqual({ slept: 1_500 });
      const raw = await jobs.queues.noop.getJob(job_id);
      expect(raw?.attemptsStarted).toBe(3);
      expect(raw?.stalledCounter).toBe(2);
    } finally {
      for (const w of crashed) await w.close({ timeoutMs: 500 });
      await workers?.close({ timeoutMs: 2000 });
      workers = undefined;
    }
  });

  it('sweeps orphaned export and backup temporaries older than the bound, and keeps fresh and finished files', async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), 'strata-sweep-'));
    const exportDir = path.join(root, 'exports');
    const backupDir = path.join(root, 'backups');
    await mkdir(exportDir, { recursive: true });
    await mkdir(path.join(backupDir, '.tmp'), { recursive: true });
    await mkdir(path.join(backupDir, 'b1'), { recursive: true });
    await mkdir(path.join(backupDir, 'b2'), { recursive: true });
    const old = new Date(Date.now() - 2 * 3600_000);
    const files = {
      oldExport: path.join(exportDir, 'exports-1.csv.1-4242.tmp'),
      freshExport: path.join(exportDir, 'exports-2.csv.1-4243.tmp'),
      finished: path.join(exportDir, 'exports-3.csv'),
      oldPart: path.join(backupDir, '.tmp', 'b1_data.dump.a1b2c3d4.part'),
      oldManifestTmp: path.join(backupDir, '.tmp', '.tmp-1765000000000-deadbeef'),
      emptyManifest: path.join(backupDir, 'b1', 'manifest.json'),
      goodManifest: path.join(backupDir, 'b2', 'manifest.json'),
    };
    for (const [k, f] of Object.entries(files)) await writeFile(f, k === 'emptyManifest' ? '' : 'x'.repeat(100));
    for (const k of ['oldExport', 'finished', 'oldPart', 'oldManifestTmp', 'emptyManifest', 'goodManifest'] as const) await utimes(files[k], old, old);
    const expired = randomUUID();
    await t.db.adminQuery("INSERT INTO strata.idempotency_keys (tenant_id, key, fingerprint, state, expires_at) VALUES ('acme', $1, 'f', 'done', now() - interval '1 second')", [expired]);

    const result = await sweepTemporaries({ exportDir, backupDir, minAgeMs: 3600_000, db: t.db, log });
    expect(result).toMatchObject({ exports: 1, backups: 2, manifests: 1 });
    expect(result.idempotency_keys).toBeGreaterThanOrEqual(1);
    expect((await readdir(exportDir)).sort()).toEqual(['exports-2.csv.1-4243.tmp', 'exports-3.csv']);
    expect(await readdir(path.join(backupDir, '.tmp'))).toEqual([]);
    expect(await readdir(path.join(backupDir, 'b1'))).toEqual([]);
    expect(await readdir(path.join(backupDir, 'b2'))).toEqual(['manifest.json']);
    expect((await t.db.adminQuery('SELECT 1 FROM strata.idempotency_keys WHERE key = $1', [expired])).rowCount).toBe(0);

    // the scheduled job does the same, through the worker
    const runner = startWorkers({ redisUrl: REDIS_URL, prefix, log, db: t.db, queues: ['maintenance'] });
    try {
      const ctx = { tenantId: null, actor: 'system:scheduler', role: 'platform_admin', requestId: 'r' } as never;
      const { job_id } = await jobs.enqueue(ctx, 'sweep-temporaries', {});
      const done = await until(async () => {
        const v = await jobs.get(ctx, job_id);
        return ['completed', 'failed'].includes(v.state) ? v : undefined;
      });
      expect(done.state).toBe('completed');
      expect(done.result).toMatchObject({ exports: expect.any(Number), backups: expect.any(Number) });
    } finally {
      await runner.close({ timeoutMs: 2000 });
    }
  });
});
