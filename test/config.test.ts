/**
 * Configuration: defaults, every wrong value failing with a message naming the variable, secrets
 * never echoed; and the real boot (src/server.ts in a child process) failing fast with one line.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';
import { createTestDatabase, urlFor } from './helpers/databases.js';
import { TEST_APP_PASSWORD, TEST_APP_ROLE, TEST_JWT_SECRET } from './helpers/constants.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** loadConfig must throw a ConfigError for `variable` whose message names it; returns the message. */
function failure(env: Record<string, string>, variable: string): string {
  let caught: unknown;
  try {
    loadConfig(env);
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected ${JSON.stringify(env)} to be refused`).toBeInstanceOf(ConfigError);
  const err = caught as ConfigError;
  expect(err.variable).toBe(variable);
  expect(err.message).toContain(variable);
  return err.message;
}

describe('loadConfig', () => {
  it('applies the documented defaults to an empty environment (embedded mode)', () => {
    const c = loadConfig({});
    expect(c).toMatchObject({
      NODE_ENV: 'development',
      PORT: 3000,
      HOST: '0.0.0.0',
      LOG_LEVEL: 'info',
      REDIS_URL: 'redis://127.0.0.1:6379',
      DB_APP_ROLE: 'strata_app',
      DB_POOL_MAX: 10,
      DB_POOL_MIN: 2,
      DB_ACQUIRE_TIMEOUT_MS: 2000,
      DB_STATEMENT_TIMEOUT_MS: 15_000,
      BODY_LIMIT_BYTES: 1_048_576,
      OTEL_SERVICE_NAME: 'strata',
      embedded: true,
      migrateOnBoot: true,
      seedDemo: true,
      runWorkers: true,
    });
    expect(c.DATABASE_URL).toBeUndefined();
    expect(c.JWT_SECRET).toBeUndefined();
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('treats an empty string as unset', () => {
    expect(loadConfig({ PORT: '', LOG_LEVEL: '' })).toMatchObject({ PORT: 3000, LOG_LEVEL: 'info' });
  });

  it('converts numbers and booleans, and turns boot chores off by default outside embedded mode', () => {
    const c = loadConfig({
      DATABASE_URL: 'postgres://u@db:5432/strata',
      JWT_SECRET: TEST_JWT_SECRET,
      PORT: '8080',
      DB_POOL_MAX: '50',
      SEED_DEMO: 'true',
    });
    expect(c).toMatchObject({
      PORT: 8080,
      DB_POOL_MAX: 50,
      embedded: false,
      migrateOnBoot: false,
      seedDemo: true,
      runWorkers: false,
    });
    expect(loadConfig({ MIGRATE_ON_BOOT: 'false' }).migrateOnBoot).toBe(false);
  });

  it('accepts JWT_JWKS_URL instead of JWT_SECRET when DATABASE_URL is set', () => {
    expect(
      loadConfig({ DATABASE_URL: 'postgresql://db/strata', JWT_JWKS_URL: 'https://idp.example/jwks.json' })
        .embedded,
    ).toBe(false);
  });

  it.each([
    ['DB_POOL_MAX', { DB_POOL_MAX: 'abc' }],
    ['DB_POOL_MAX', { DB_POOL_MAX: '0' }],
    ['PORT', { PORT: '70000' }],
    ['PORT', { PORT: '-1' }],
    ['LOG_LEVEL', { LOG_LEVEL: 'loud' }],
    ['NODE_ENV', { NODE_ENV: 'staging' }],
    ['DATABASE_URL', { DATABASE_URL: 'mysql://x' }],
    ['APP_DATABASE_URL', { APP_DATABASE_URL: 'http://db/strata' }],
    ['REDIS_URL', { REDIS_URL: 'http://x' }],
    ['JWT_JWKS_URL', { JWT_JWKS_URL: 'ftp://idp/jwks' }],
    ['DB_APP_ROLE', { DB_APP_ROLE: 'Robert"; DROP ROLE x' }],
    ['BODY_LIMIT_BYTES', { BODY_LIMIT_BYTES: '10' }],
    ['MIGRATE_ON_BOOT', { MIGRATE_ON_BOOT: 'yes' }],
    ['DB_POOL_MIN', { DB_POOL_MIN: '20', DB_POOL_MAX: '10' }],
    ['JWT_SECRET', { DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/postgres' }],
  ])('refuses a wrong value with a ConfigError naming %s (%j)', (variable, env) => {
    failure(env, variable);
  });

  it.each([
    ['PORT', '3000.5'],
    ['PORT', '1e3'],
    ['PORT', '0x10'],
    ['DB_POOL_MAX', '1e3'],
    ['DB_STATEMENT_TIMEOUT_MS', '15000.9'],
  ])('refuses %s=%s instead of silently reading another number', (variable, value) => {
    failure({ [variable]: value }, variable);
  });

  it('explains the DB_POOL_MIN > DB_POOL_MAX conflict with the maximum', () => {
    expect(failure({ DB_POOL_MIN: '20', DB_POOL_MAX: '10' }, 'DB_POOL_MIN')).toMatch(/DB_POOL_MAX \(10\)/);
  });

  it('shows the offending value of a plain variable, to make the fix obvious', () => {
    expect(failure({ DB_POOL_MAX: 'abc' }, 'DB_POOL_MAX')).toContain('abc');
  });

  it('never echoes a secret: a too-short JWT_SECRET or DB_APP_PASSWORD is named but not shown', () => {
    const secret = 'too-short-but-secret';
    const msg = failure({ JWT_SECRET: secret }, 'JWT_SECRET');
    expect(msg).not.toContain(secret);
    expect(failure({ DB_APP_PASSWORD: 'hunter2' }, 'DB_APP_PASSWORD')).not.toContain('hunter2');
  });

  it.each([
    ['DATABASE_URL', 'mysql://app:hunter2-pw@db:3306/strata'],
    ['DATABASE_URL', 'mysql://app:p@ss-hunter2@db/strata'],
    ['APP_DATABASE_URL', 'mysql://app:hunter2-pw@db/strata'],
    ['REDIS_URL', 'http://:hunter2-pw@cache:6379'],
    ['JWT_JWKS_URL', 'ftp://client:hunter2-pw@idp/jwks'],
    ['OTEL_EXPORTER_OTLP_ENDPOINT', 'grpc://collector:hunter2-pw@otel:4317'],
  ])('never echoes the credentials of a refused %s', (variable, value) => {
    const msg = failure({ [variable]: value }, variable);
    expect(msg).not.toContain('hunter2');
  });
});

/** A loopback port nothing listens on (bound, then released). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const listening = (port: number) =>
  new Promise<boolean>((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    sock.once('connect', () => (sock.destroy(), resolve(true)));
    sock.once('error', () => resolve(false));
  });

interface Exit {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Run src/server.ts in a child process with exactly `env`. PATH is a directory holding only a `node`
 * link: node's own directory may also hold redis-server (it does on Debian: /usr/bin), and the
 * server would then auto-start one for a loopback REDIS_URL.
 */
function boot(binDir: string, env: Record<string, string>): Promise<Exit> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
      cwd: ROOT,
      env: { PATH: binDir, NODE_ENV: 'test', LOG_LEVEL: 'silent', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`server did not exit within 25 s\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, 25_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('booting src/server.ts', () => {
  let binDir: string;
  beforeAll(() => {
    binDir = mkdtempSync(path.join(tmpdir(), 'strata-bin-'));
    symlinkSync(process.execPath, path.join(binDir, 'node'));
  });
  afterAll(() => rmSync(binDir, { recursive: true, force: true }));

  it(
    'exits non-zero with one stderr line naming DB_POOL_MAX when it is not a number',
    { timeout: 30_000 },
    async () => {
      const res = await boot(binDir, { DB_POOL_MAX: 'abc' });
      expect(res.code).not.toBe(0);
      const lines = res.stderr.trim().split('\n');
      expect(lines, res.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/^strata: invalid configuration: DB_POOL_MAX /);
    },
  );

  it(
    'exits non-zero with one stderr line naming REDIS_URL when Redis does not answer, without echoing secrets',
    { timeout: 30_000 },
    async () => {
      const database = await createTestDatabase();
      try {
        const app = new URL(urlFor(database.name));
        app.username = TEST_APP_ROLE;
        app.password = TEST_APP_PASSWORD;
        const port = await freePort();
        const res = await boot(binDir, {
          DATABASE_URL: database.url,
          APP_DATABASE_URL: app.toString(),
          JWT_SECRET: TEST_JWT_SECRET,
          // Loopback, nothing listens there, and redis-server is not on PATH: no auto-start.
          REDIS_URL: `redis://127.0.0.1:${port}`,
          DB_POOL_MIN: '0',
          DB_HEALTHCHECK_INTERVAL_MS: '0',
          PORT: '0',
        });
        expect(res.code).not.toBe(0);
        const lines = res.stderr.trim().split('\n');
        expect(lines, res.stderr).toHaveLength(1);
        expect(lines[0]).toMatch(/^strata: .*REDIS_URL/);
        expect(lines[0]).toContain(`redis://127.0.0.1:${port}`);
        expect(await listening(port), 'no redis-server was started').toBe(false);
        for (const secret of [TEST_JWT_SECRET, TEST_APP_PASSWORD]) {
          expect(res.stderr + res.stdout).not.toContain(secret);
        }
      } finally {
        await database.drop();
      }
    },
  );
});
