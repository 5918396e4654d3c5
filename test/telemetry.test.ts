import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import path from 'node:path';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, REDIS_URL, urlFor, type TestDatabase } from './helpers/databases.js';
import { TEST_APP_PASSWORD, TEST_APP_ROLE, TEST_JWT_SECRET } from './helpers/constants.js';
import { freePort } from './helpers/net.js';

/**
 * The real server process with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a local collector: spans for
 * the HTTP request arrive over OTLP/HTTP.
 */
describe('OpenTelemetry export', () => {
  let db: TestDatabase;
  let collector: Server;
  let server: ChildProcess;
  let port: number;
  const bodies: string[] = [];
  let stderr = '';

  beforeAll(async () => {
    db = await createTestDatabase();
    const collectorPort = await freePort();
    collector = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        bodies.push(`${req.url} ${Buffer.concat(chunks).toString('latin1')}`);
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((r) => collector.listen(collectorPort, '127.0.0.1', r));
    port = await freePort();
    const app = new URL(urlFor(db.name));
    app.username = TEST_APP_ROLE;
    app.password = TEST_APP_PASSWORD;
    server = spawn(path.resolve('node_modules/.bin/tsx'), ['src/server.ts'], {
      env: {
        ...process.env,
        DATABASE_URL: db.url,
        APP_DATABASE_URL: app.toString(),
        REDIS_URL,
        JWT_SECRET: TEST_JWT_SECRET,
        PORT: String(port),
        HOST: '127.0.0.1',
        LOG_LEVEL: 'warn',
        RUN_WORKERS: 'false',
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${collectorPort}`,
        OTEL_SERVICE_NAME: 'strata-test',
        OTEL_BSP_SCHEDULE_DELAY: '200',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    for (let i = 0; i < 100; i++) {
      try {
        if ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok) return;
      } catch {
        /* not yet */
      }
      if (server.exitCode !== null) throw new Error(`server exited: ${stderr}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`server did not start: ${stderr}`);
  }, 60_000);

  afterAll(async () => {
    if (server && server.exitCode === null) {
      const done = new Promise((r) => server.once('exit', r));
      server.kill('SIGTERM');
      await done;
    }
    await new Promise((r) => collector.close(r));
    await db.drop();
  });

  it('exports spans of an HTTP request over OTLP/HTTP to the configured endpoint', async () => {
    const token = await new SignJWT({ role: 'platform_admin' }).setProtectedHeader({ alg: 'HS256' }).setSubject('otel').setExpirationTime('5m').sign(new TextEncoder().encode(TEST_JWT_SECRET));
    const res = await fetch(`http://127.0.0.1:${port}/healthz`, { headers: { authorization: `Bearer ${token}` } });
    expect(res.status).toBe(200);
    for (let i = 0; i < 50 && !bodies.some((b) => b.includes('/healthz')); i++) await new Promise((r) => setTimeout(r, 200));
    const traces = bodies.filter((b) => b.startsWith('/v1/traces'));
    expect(traces.length).toBeGreaterThan(0);
    expect(traces.join('\n')).toContain('strata-test');
    expect(traces.join('\n')).toContain('/healthz');
    // a database-backed request: the pg instrumentation contributes spans too
    const tenants = await fetch(`http://127.0.0.1:${port}/v1/admin/tenants`, { headers: { authorization: `Bearer ${token}` } });
    expect(tenants.status).toBe(200);
    for (let i = 0; i < 50 && !bodies.some((b) => b.includes('pg.query') || b.includes('pg-pool.connect')); i++) await new Promise((r) => setTimeout(r, 200));
    expect(bodies.join('\n')).toMatch(/pg\.query|pg-pool\.connect/);
  });
});
