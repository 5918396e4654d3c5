/**
 * Faults of the change readers' visibility horizon: a write transaction left open must hold back
 * only the readers that could miss its events. Before migration 0016 the horizon was taken from the
 * capture locks of the whole PostgreSQL cluster and of every tenant, so one open transaction in
 * ANOTHER database (a restore target, a sandbox or test clone) or of ANOTHER tenant stalled every
 * webhook, change page and stream here: the 4-8 s pauses of the webhook-faults benchmark that hit
 * both tenants at once. Counts only, no timing: what is delivered or listed while the transaction
 * stays open.
 */
import http from 'node:http';
import type net from 'node:net';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import pino from 'pino';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorkers, type WorkerRuntime } from '../src/jobs/runtime.js';
import { createJobs, type JobsService } from '../src/jobs/queues.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { createTestDatabase, REDIS_URL, type TestDatabase } from './helpers/databases.js';

const log = pino({ level: 'silent' });
type Json = Record<string, unknown>;

async function until<T>(fn: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('faults: an open write transaction holds back only its own tenant of its own database', () => {
  const prefix = `test-${randomUUID()}`;
  let t: TestApp;
  let other: TestDatabase;
  let jobs: JobsService;
  let workers: WorkerRuntime | undefined;
  let server: http.Server;
  let hookUrl = '';
  /** Event names received per tenant. */
  const got = new Map<string, string[]>();

  beforeAll(async () => {
    jobs = createJobs({ redisUrl: REDIS_URL, prefix, log });
    t = await createTestApp({ jobs, env: { WEBHOOK_ALLOW_PRIVATE: 'true', CHANGES_POLL_MS: '50' } });
    other = await createTestDatabase();
    server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        const e = JSON.parse(body) as { tenant_id: string; after?: { name?: string } };
        got.set(e.tenant_id, [...(got.get(e.tenant_id) ?? []), e.after?.name ?? '']);
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    hookUrl = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/hook`;
    for (const tenant of ['acme', 'globex']) {
      const r = await t.app.inject({ method: 'POST', url: '/v1/webhooks', headers: await t.auth('admin', tenant), payload: { url: hookUrl, tables: ['pipelines'], ops: ['insert'] } });
      expect(r.statusCode).toBe(201);
    }
    workers = startWorkers({ redisUrl: REDIS_URL, prefix, log, db: t.db, queues: ['webhooks'] });
  });
  afterAll(async () => {
    await workers?.close({ timeoutMs: 3000 });
    await t?.close();
    await other?.drop();
    server?.closeAllConnections();
    await new Promise((r) => server?.close(r));
    await Promise.all(Object.values(jobs.queues).map((q) => q.obliterate({ force: true }).catch(() => undefined)));
    await jobs.close();
    const r = new Redis(REDIS_URL);
    const keys = await r.keys(`${prefix}:*`);
    if (keys.length) await r.del(...keys);
    await r.quit();
  });

  const insert = async (tenant: string, name: string) => {
    const r = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: await t.auth('writer', tenant), payload: { name } });
    expect(r.statusCode).toBe(201);
  };
  const listNames = async (tenant: string, prefixOfNames: string) => {
    const r = await t.app.inject({ method: 'GET', url: '/v1/changes?table=pipelines&limit=1000', headers: await t.auth('admin', tenant) });
    expect(r.statusCode).toBe(200);
    return (r.json<{ data: Array<{ after: Json | null }> }>().data ?? []).map((e) => String(e.after?.['name'])).filter((n) => n.startsWith(prefixOfNames));
  };
  const delivered = (tenant: string, prefixOfNames: string) => (got.get(tenant) ?? []).filter((n) => n.startsWith(prefixOfNames));

  /** A client with an uncommitted captured insert of `tenant` (its capture lock held until ROLLBACK/COMMIT). */
  async function openWrite(url: string, tenant: string, name: string): Promise<pg.Client> {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query('BEGIN');
    await c.query("SELECT set_config('strata.tenant_id', $1, true)", [tenant]);
    await c.query('INSERT INTO public.pipelines (tenant_id, name) VALUES ($1, $2)', [tenant, name]);
    return c;
  }

  it('a write transaction left open in another database holds back no reader and no delivery here', async () => {
    const held = await openWrite(other.url, 'acme', 'elsewhere');
    try {
      // precondition: the other database's transaction holds a capture lock (the old horizon took it)
      const locks = await t.db.adminQuery<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database
          WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND (l.classid::bigint >> 16) = 17220 AND d.datname = $1`,
        [other.name],
      );
      expect(locks.rows[0]!.n).toBeGreaterThan(0);
      for (const tenant of ['acme', 'globex']) for (let i = 0; i < 3; i++) await insert(tenant, `xdb-${i}`);
      // every event is listed and delivered while the other database's transaction is still open
      for (const tenant of ['acme', 'globex']) {
        expect(await listNames(tenant, 'xdb-')).toEqual(['xdb-0', 'xdb-1', 'xdb-2']);
        await until(async () => (delivered(tenant, 'xdb-').length === 3 ? true : undefined));
      }
      const h = await t.db.adminQuery<{ h: string; v: string }>('SELECT strata.change_horizon()::text AS h, (SELECT last_value FROM strata.changes_id_seq)::text AS v');
      expect(h.rows[0]!.h).toBe(h.rows[0]!.v);
      expect((await held.query('SELECT 1 AS one')).rows[0]).toEqual({ one: 1 }); // still open
    } finally {
      await held.query('ROLLBACK').catch(() => undefined);
      await held.end();
    }
  });

  it("one tenant's open write transaction holds back only that tenant's readers, which still see nothing past it", async () => {
    const held = await openWrite(t.database.url, 'acme', 'slow-held');
    try {
      await insert('acme', 'slow-after'); // committed, but its id is above the open transaction's
      for (let i = 0; i < 3; i++) await insert('globex', `slow-${i}`);
      // globex: listed and delivered at once, not queued behind acme's open transaction
      expect(await listNames('globex', 'slow-')).toEqual(['slow-0', 'slow-1', 'slow-2']);
      await until(async () => (delivered('globex', 'slow-').length === 3 ? true : undefined));
      // acme: nothing past the open transaction's id is exposed (it could still commit below it)
      expect(await listNames('acme', 'slow-')).toEqual([]);
      expect(delivered('acme', 'slow-')).toEqual([]);
      await held.query('COMMIT');
      expect(await listNames('acme', 'slow-')).toEqual(['slow-held', 'slow-after']);
      await until(async () => (delivered('acme', 'slow-').length === 2 ? true : undefined));
      expect(delivered('acme', 'slow-')).toEqual(['slow-held', 'slow-after']);
    } finally {
      await held.query('ROLLBACK').catch(() => undefined);
      await held.end();
    }
  });
});
