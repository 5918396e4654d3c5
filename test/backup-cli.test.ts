/**
 * The `strata backup` CLI as a user runs it (a child process through tsx): create with progress,
 * list, verify, restore into a new database; usage errors exit 2 without writing anything.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, withServer, type TestDatabase } from './helpers/databases.js';
import { databaseExists, readDatabase, sqlOn } from './helpers/backups.js';

const exec = promisify(execFile);

describe('strata backup CLI', () => {
  let database: TestDatabase;
  let dir: string;
  const restored = () => `${database.name}_cli`;
  const cli = async (...args: string[]) => {
    try {
      const r = await exec(process.execPath, ['--import', 'tsx', 'src/cli/strata.ts', 'backup', ...args], {
        env: { ...process.env, DATABASE_URL: database.url, BACKUP_DIR: dir, LOG_LEVEL: 'silent' },
        timeout: 120_000,
      });
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (e) {
      const err = e as { code: number; stdout: string; stderr: string };
      return { code: err.code, stdout: err.stdout, stderr: err.stderr };
    }
  };

  beforeAll(async () => {
    database = await createTestDatabase();
    dir = await mkdtemp(path.join(os.tmpdir(), 'strata-cli-'));
    await sqlOn(database.name, "INSERT INTO strata.tenants (id, name) VALUES ('acme', 'Acme')");
    await sqlOn(database.name, "INSERT INTO public.pipelines (tenant_id, name) SELECT 'acme', 'p' || g FROM generate_series(1, 50) g");
  });
  afterAll(async () => {
    if (database) await withServer((c) => c.query(`DROP DATABASE IF EXISTS ${restored()} WITH (FORCE)`));
    await database?.drop();
    await rm(dir, { recursive: true, force: true });
  });

  it('exits 2 with usage for unknown commands and bad options, writing nothing', async () => {
    expect((await cli('explode')).code).toBe(2);
    const bad = await cli('create', '--kind', 'weekly');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--kind must be full or incremental/);
    expect((await cli('verify')).code).toBe(2);
    const missing = await cli('restore', '--target', 'new_database');
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/RESTORE_SOURCE_REQUIRED/);
    expect(await readdir(dir)).toEqual([]);
  });

  it('creates (printing progress), lists, verifies and restores a backup into a new database', async () => {
    const state = await readDatabase(database.name);
    const created = await cli('create');
    expect(created.code, created.stderr).toBe(0);
    expect(created.stderr).toMatch(/dump: \d+\/\d+ \(100%\)/);
    const m = JSON.parse(created.stdout) as { id: string; status: string; trigger: string; row_counts: Record<string, number> };
    expect(m).toMatchObject({ status: 'completed', trigger: 'cli' });
    expect(m.row_counts['public.pipelines']).toBe(50);

    const list = await cli('list');
    expect(list.code).toBe(0);
    expect(list.stdout).toContain(m.id);

    const verified = await cli('verify', m.id);
    expect(verified.code, verified.stderr).toBe(0);
    expect(JSON.parse(verified.stdout)).toMatchObject({ ok: true, checksum_ok: true, restore_ok: true, row_counts_ok: true });
    expect(verified.stderr).toMatch(/restore: /);

    await sqlOn(database.name, 'DELETE FROM public.pipelines');
    const r = await cli('restore', '--backup', m.id, '--database', restored());
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ database: restored(), backup_id: m.id });
    expect(await readDatabase(restored())).toEqual(state);

    const again = await cli('restore', '--backup', m.id, '--database', restored());
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/DATABASE_EXISTS/);
    expect(await databaseExists(restored())).toBe(true);
  });
});
