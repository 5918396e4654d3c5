/**
 * The backup store: where dump files and manifests live. A directory by default, an S3-compatible
 * bucket as an option. Objects are never half-visible: the directory store writes to a temporary
 * name and renames (atomic on one filesystem); S3 makes an object visible only when its upload
 * completes. A backup's manifest is written last, so a reader sees a backup only once its files exist.
 *
 * Keys are `<backup id>/<file>`; every backup is one "folder".
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import type * as S3 from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import type { Upload as S3Upload } from '@aws-sdk/lib-storage';
import type { Config } from '../../config.js';

export interface BackupStore {
  readonly kind: 'directory' | 's3';
  /** Human-readable location (no credentials). */
  readonly location: string;
  /** A local directory for temporary files on the same filesystem as the store (directory store) or scratch (S3). */
  readonly tmpDir: string;
  /** Make a local file the object `key` (the local file is consumed). */
  putFile(key: string, localPath: string): Promise<void>;
  putJson(key: string, value: unknown): Promise<void>;
  /** The JSON object at key, or undefined when it does not exist. */
  getJson<T>(key: string): Promise<T | undefined>;
  /** A readable stream of the object. */
  read(key: string): Promise<Readable>;
  /** Copy the object to a local file (for pg_restore). */
  download(key: string, localPath: string): Promise<void>;
  /** Backup ids (folders) present. */
  listIds(): Promise<string[]>;
  /** Remove a backup: its manifest first (it disappears from listings), then its files. */
  removeBackup(id: string): Promise<void>;
}

const tmpName = (dir: string) => path.join(dir, `.tmp-${Date.now()}-${randomBytes(4).toString('hex')}`);

/** Directory store: BACKUP_DIR/<id>/<file>; temporary files in BACKUP_DIR/.tmp then renamed. */
export function createDirectoryStore(root: string): BackupStore {
  const dir = path.resolve(root);
  const tmpDir = path.join(dir, '.tmp');
  const file = (key: string) => path.join(dir, ...key.split('/'));
  const ensure = async (p: string) => mkdir(path.dirname(p), { recursive: true });
  return {
    kind: 'directory',
    location: dir,
    tmpDir,
    async putFile(key, localPath) {
      const target = file(key);
      await ensure(target);
      await rename(localPath, target);
    },
    async putJson(key, value) {
      await mkdir(tmpDir, { recursive: true });
      const tmp = tmpName(tmpDir);
      try {
        await writeFile(tmp, JSON.stringify(value, null, 2));
        const target = file(key);
        await ensure(target);
        await rename(tmp, target);
      } catch (err) {
        // a full or read-only disk: leave no (zero-byte) temporary behind
        await rm(tmp, { force: true }).catch(() => undefined);
        throw err;
      }
    },
    async getJson<T>(key: string) {
      try {
        return JSON.parse(await readFile(file(key), 'utf8')) as T;
      } catch (err) {
        if ((err as { code?: string }).code === 'ENOENT') return undefined;
        throw err;
      }
    },
    async read(key) {
      await stat(file(key));
      return createReadStream(file(key));
    },
    async download(key, localPath) {
      await pipeline(createReadStream(file(key)), createWriteStream(localPath));
    },
    async listIds() {
      const entries = await readdir(dir, { withFileTypes: true }).catch((err: { code?: string }) => {
        if (err.code === 'ENOENT') return [];
        throw err;
      });
      return entries.filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => e.name);
    },
    async removeBackup(id) {
      await rm(file(`${id}/manifest.json`), { force: true });
      await rm(file(id), { recursive: true, force: true });
    },
  };
}

/** S3-compatible store (AWS, MinIO, R2...): multipart upload of files, manifests put last. */
export function createS3Store(config: Config): BackupStore {
  const bucket = config.BACKUP_S3_BUCKET ?? '';
  const prefix = config.BACKUP_S3_PREFIX.replace(/\/+$/, '');
  // The AWS SDK (about 25 MB of resident memory) is loaded only when an S3 store is first used.
  let loaded: Promise<{ s3: typeof S3; Upload: typeof S3Upload; client: S3Client }> | undefined;
  const sdk = () =>
    (loaded ??= Promise.all([import('@aws-sdk/client-s3'), import('@aws-sdk/lib-storage')]).then(([s3, storage]) => ({
      s3,
      Upload: storage.Upload,
      client: new s3.S3Client({
        region: config.BACKUP_S3_REGION,
        ...(config.BACKUP_S3_ENDPOINT ? { endpoint: config.BACKUP_S3_ENDPOINT } : {}),
        forcePathStyle: config.BACKUP_S3_FORCE_PATH_STYLE,
        ...(config.BACKUP_S3_ACCESS_KEY_ID && config.BACKUP_S3_SECRET_ACCESS_KEY
          ? { credentials: { accessKeyId: config.BACKUP_S3_ACCESS_KEY_ID, secretAccessKey: config.BACKUP_S3_SECRET_ACCESS_KEY } }
          : {}),
      }),
    })));
  const objectKey = (key: string) => (prefix ? `${prefix}/${key}` : key);
  const tmpDir = path.join(path.resolve(config.BACKUP_DIR ?? path.join(config.DATA_DIR, 'backups')), '.tmp');
  async function get(key: string): Promise<Readable | undefined> {
    const { s3, client } = await sdk();
    try {
      const out = await client.send(new s3.GetObjectCommand({ Bucket: bucket, Key: objectKey(key) }));
      return out.Body as Readable;
    } catch (err) {
      if ((err as { name?: string }).name === 'NoSuchKey') return undefined;
      throw err;
    }
  }
  return {
    kind: 's3',
    location: `s3://${bucket}/${prefix}`,
    tmpDir,
    async putFile(key, localPath) {
      // Multipart for large files; the object exists only once the upload completes.
      const { Upload, client } = await sdk();
      await new Upload({ client, params: { Bucket: bucket, Key: objectKey(key), Body: createReadStream(localPath) }, queueSize: 2 }).done();
      await rm(localPath, { force: true });
    },
    async putJson(key, value) {
      const { s3, client } = await sdk();
      await client.send(
        new s3.PutObjectCommand({ Bucket: bucket, Key: objectKey(key), Body: JSON.stringify(value, null, 2), ContentType: 'application/json' }),
      );
    },
    async getJson<T>(key: string) {
      const body = await get(key);
      if (!body) return undefined;
      const chunks: Buffer[] = [];
      for await (const c of body) chunks.push(Buffer.from(c as Uint8Array));
      return JSON.parse(Buffer.concat(chunks).toString('utf8')) as T;
    },
    async read(key) {
      const body = await get(key);
      if (!body) throw Object.assign(new Error(`object ${key} does not exist`), { code: 'ENOENT' });
      return body;
    },
    async download(key, localPath) {
      const body = await this.read(key);
      await pipeline(body, createWriteStream(localPath));
    },
    async listIds() {
      const { s3, client } = await sdk();
      const ids: string[] = [];
      let token: string | undefined;
      do {
        const out = await client.send(
          new s3.ListObjectsV2Command({ Bucket: bucket, Prefix: prefix ? `${prefix}/` : undefined, Delimiter: '/', ContinuationToken: token }),
        );
        for (const p of out.CommonPrefixes ?? []) {
          const id = (p.Prefix ?? '').slice(prefix ? prefix.length + 1 : 0).replace(/\/$/, '');
          if (id) ids.push(id);
        }
        token = out.IsTruncated ? out.NextContinuationToken : undefined;
      } while (token);
      return ids;
    },
    async removeBackup(id) {
      const { s3, client } = await sdk();
      await client.send(new s3.DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: [{ Key: objectKey(`${id}/manifest.json`) }] } }));
      const out = await client.send(new s3.ListObjectsV2Command({ Bucket: bucket, Prefix: objectKey(`${id}/`) }));
      const keys = (out.Contents ?? []).map((o) => ({ Key: o.Key ?? '' })).filter((o) => o.Key);
      if (keys.length) await client.send(new s3.DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys } }));
    },
  };
}

/** The store configured: S3 when BACKUP_S3_BUCKET is set, else the directory. */
export function createBackupStore(config: Config): BackupStore {
  if (config.BACKUP_S3_BUCKET) return createS3Store(config);
  return createDirectoryStore(config.BACKUP_DIR ?? path.join(config.DATA_DIR, 'backups'));
}
