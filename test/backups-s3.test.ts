/**
 * The S3 backup store end to end through @aws-sdk/client-s3 against an S3-compatible HTTP server
 * (s3rver, in-process, on disk): a full backup uploaded (multipart-capable upload, manifest last),
 * listed, verified by a real restore from the downloaded file, restored into a new database, deleted.
 * Not AWS itself: this proves the S3 protocol path, not a particular provider.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import pino from 'pino';
import S3rver from 's3rver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { createBackupService, type BackupService } from '../src/services/backups/index.js';
import { createRestoreService } from '../src/services/backups/index.js';
import { createTestDatabase, withServer, type TestDatabase } from './helpers/databases.js';
import { readDatabase, sqlOn } from './helpers/backups.js';

const PORT = 3242;
const BUCKET = 'strata-backups-test';

describe('S3 backup store', () => {
  let database: TestDatabase;
  let dir: string;
  let server: S3rver;
  let backups: BackupService;
  const s3 = new S3Client({ region: 'us-east-1', endpoint: `http://127.0.0.1:${PORT}`, forcePathStyle: true, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
  const keys = async () => ((await s3.send(new ListObjectsV2Command({ Bucket: BUCKET }))).Contents ?? []).map((o) => o.Key ?? '').sort();
  const restored = () => `${database.name}_s3`;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'strata-s3-'));
    server = new S3rver({ address: '127.0.0.1', port: PORT, silent: true, directory: path.join(dir, 's3'), configureBuckets: [{ name: BUCKET, configs: [] }] });
    await server.run();
    database = await createTestDatabase();
    await sqlOn(database.name, "INSERT INTO strata.tenants (id, name) VALUES ('acme', 'Acme'); INSERT INTO public.pipelines (tenant_id, name) SELECT 'acme', 'p' || g FROM generate_series(1, 30) g");
    const config = loadConfig({
      DATABASE_URL: database.url,
      JWT_SECRET: 'test-secret-test-secret-test-secret-0123456789',
      BACKUP_DIR: path.join(dir, 'local'),
      BACKUP_S3_BUCKET: BUCKET,
      BACKUP_S3_PREFIX: 'prod/backups',
      BACKUP_S3_ENDPOINT: `http://127.0.0.1:${PORT}`,
      BACKUP_S3_FORCE_PATH_STYLE: 'true',
      BACKUP_S3_ACCESS_KEY_ID: 'S3RVER',
      BACKUP_S3_SECRET_ACCESS_KEY: 'S3RVER',
    });
    backups = createBackupService({ config, adminUrl: database.url, log: pino({ level: 'silent' }) });
  });
  afterAll(async () => {
    if (database) await withServer((c) => c.query(`DROP DATABASE IF EXISTS ${restored()} WITH (FORCE)`));
    await database?.drop();
    s3.destroy();
    await server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('backs up into the bucket, lists, verifies, restores and deletes through the S3 API', async () => {
    expect(backups.store.kind).toBe('s3');
    const state = await readDatabase(database.name);
    const m = await backups.create('full', { trigger: 'test' });
    expect(m.status).toBe('completed');
    expect(await keys()).toEqual([`prod/backups/${m.id}/dump.pgcustom`, `prod/backups/${m.id}/manifest.json`]);
    expect((await backups.list()).map((b) => b.id)).toEqual([m.id]);

    const v = await backups.verify(m.id);
    expect(v).toMatchObject({ ok: true, checksum_ok: true, restore_ok: true, row_counts_ok: true });
    expect((await backups.get(m.id)).verifications).toHaveLength(1);

    await sqlOn(database.name, 'DELETE FROM public.pipelines');
    const restores = createRestoreService({ backups, redisUrl: 'redis://127.0.0.1:6379' });
    const r = await restores.restore({ backup_id: m.id, target: 'new_database', database: restored() });
    expect(r.database).toBe(restored());
    expect(await readDatabase(restored())).toEqual(state);

    // The last verified full backup is kept; a second verified one lets it go.
    const next = await backups.create('full', { trigger: 'test' });
    expect((await backups.verify(next.id)).ok).toBe(true);
    await backups.remove(m.id);
    expect(await keys()).toEqual([`prod/backups/${next.id}/dump.pgcustom`, `prod/backups/${next.id}/manifest.json`]);
  });
});
