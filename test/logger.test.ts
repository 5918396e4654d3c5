import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { logFormat } from '../src/logger.js';

/** Runs createLogger in a child process (as server.ts does) and returns what it printed. */
function logLine(env: Record<string, string>): string {
  const script = `
    import { loadConfig } from './src/config.ts';
    import { createLogger } from './src/logger.ts';
    const log = await createLogger(loadConfig());
    log.info({ tenant_hint: 'acme' }, 'hello from the logger test');
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    env: { PATH: process.env['PATH'] ?? '', ...env },
    encoding: 'utf8',
    timeout: 20_000,
  });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout.trim();
}

describe('log format', () => {
  it('is pretty in development and JSON in production unless LOG_FORMAT says otherwise', () => {
    expect(logFormat({ LOG_FORMAT: 'auto', NODE_ENV: 'development' })).toBe('pretty');
    expect(logFormat({ LOG_FORMAT: 'auto', NODE_ENV: 'production' })).toBe('json');
    expect(logFormat({ LOG_FORMAT: 'auto', NODE_ENV: 'test' })).toBe('json');
    expect(logFormat({ LOG_FORMAT: 'json', NODE_ENV: 'development' })).toBe('json');
    expect(logFormat({ LOG_FORMAT: 'pretty', NODE_ENV: 'production' })).toBe('pretty');
  });

  it('writes pino-pretty lines on the development default and JSON lines in production', () => {
    const pretty = logLine({ NODE_ENV: 'development' });
    expect(pretty).toContain('hello from the logger test');
    expect(() => JSON.parse(pretty) as unknown).toThrow();
    expect(pretty).toMatch(/INFO/);

    const json = JSON.parse(logLine({ NODE_ENV: 'production' })) as { msg: string; level: number; tenant_hint: string };
    expect(json).toMatchObject({ msg: 'hello from the logger test', level: 30, tenant_hint: 'acme' });

    const forced = JSON.parse(logLine({ NODE_ENV: 'development', LOG_FORMAT: 'json' })) as { msg: string };
    expect(forced.msg).toBe('hello from the logger test');
  });
});
