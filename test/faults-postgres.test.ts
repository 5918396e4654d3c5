/**
 * A PostgreSQL that stops answering with its connections still open (a stopped server, a network
 * partition without resets): the statement already sent would wait for ever, since the statement
 * timeout is enforced by the server that is not running. The tenant-session pool gives up
 * DB_CLIENT_GRACE_MS past DB_STATEMENT_TIMEOUT_MS, drops the connection and answers
 * 503 DB_UNRESPONSIVE; once the server answers again, the service serves again.
 *
 * The hang is real: the backends of the pool are stopped with SIGSTOP (this suite runs as the
 * PostgreSQL server's user or root, as CI does) and continued with SIGCONT.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';

async function appBackends(t: TestApp): Promise<number[]> {
  const c = new pg.Client({ connectionString: t.database.url });
  await c.connect();
  try {
    const { rows } = await c.query<{ pid: number }>(
      "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'strata:%/app' AND pid <> pg_backend_pid()",
    );
    return rows.map((r) => r.pid);
  } finally {
    await c.end();
  }
}

function signal(pids: number[], sig: NodeJS.Signals): number {
  let sent = 0;
  for (const pid of pids) {
    try {
      process.kill(pid, sig);
      sent++;
    } catch {
      /* gone, or not ours to signal */
    }
  }
  return sent;
}

describe('a PostgreSQL that stops answering', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ env: { DB_POOL_MAX: '2', DB_POOL_MIN: '2', DB_STATEMENT_TIMEOUT_MS: '800', DB_CLIENT_GRACE_MS: '400', DB_ACQUIRE_TIMEOUT_MS: '3000' } });
  });
  afterAll(async () => t?.close());

  it('answers 503 DB_UNRESPONSIVE past the statement timeout and its grace, drops the connection, and serves again once the server answers', async (ctx) => {
    const h = await t.auth('reader', 'acme');
    const read = () => t.app.inject({ method: 'GET', url: '/v1/tables/pipelines/rows?limit=1', headers: h });
    expect((await read()).statusCode).toBe(200);
    const pids = await appBackends(t);
    expect(pids.length).toBeGreaterThan(0);
    if (signal(pids, 'SIGSTOP') === 0) {
      ctx.skip(); // not allowed to signal the server's processes here (not root nor the postgres user)
      return;
    }
    // the server is continued only after the request has answered: without the client-side limit it never would
    let stopped: Awaited<ReturnType<typeof read>>;
    try {
      stopped = await read();
    } finally {
      signal(pids, 'SIGCONT');
    }
    expect(stopped.statusCode).toBe(503);
    expect(stopped.json().error.code).toBe('DB_UNRESPONSIVE');
    // the hung connections were dropped, not returned to the pool; new ones serve
    const after = await read();
    expect(after.statusCode).toBe(200);
    const now = await appBackends(t);
    expect(now.filter((p) => pids.includes(p)).length).toBeLessThan(pids.length);
  });
});
