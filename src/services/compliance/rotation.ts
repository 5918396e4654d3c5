/**
 * Key rotation (POST /v1/admin/compliance/keys/rotate), as resumable jobs on the `compliance` queue:
 * - `master`: every wrapped key (tenants' data and index keys, subjects' keys) not wrapped by the
 *   active master key is unwrapped with the key it names and wrapped again with the active one. A key
 *   never changes, only its wrapping, so readers never see a gap; once done, no key needs the old
 *   master key and it can leave ENCRYPTION_MASTER_KEYS.
 * - `data`: a new data key version of the tenant is created first (new writes use it as soon as a
 *   process's key cache renews), then every value still under an older version is decrypted and
 *   encrypted again under the new one, in primary-key order, a batch per transaction. Each update is
 *   a compare-and-set on the old ciphertext, so a concurrent write is never overwritten (the next pass
 *   or rotation takes it). Older versions stay readable throughout and afterwards (marked retired,
 *   never deleted: backups hold values under them), so there is no window where a row cannot be read.
 * The position (table, column, last primary key) is saved in the batch's own transaction in
 * strata.key_rotations, so a retried or resumed job continues where the last batch committed.
 * Re-encryption does not enter the change log (see migration 0013: the owner's connection with
 * `strata.rekey` on skips capture for its updates).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type pg from 'pg';
import type { Database } from '../../db/database.js';
import type { RequestContext } from '../../domain.js';
import { badRequest, conflict, forbidden, notFound } from '../../errors.js';
import type { SchemaRegistry } from '../data/index.js';
import { FINAL_STATES, type JobsService, type JobState } from '../jobs/index.js';
import { decryptField, encryptField } from './envelope.js';
import type { MasterKeys } from './keyring.js';
import { encryptionDisabled, type TenantKeys } from './keys.js';
import { q } from './tables.js';

export type RotationKind = 'master' | 'data';

export interface Rotation {
  id: string;
  kind: RotationKind;
  tenant_id: string | null;
  /** The master key id (master) or the data key version (data) everything moves to. */
  target: string;
  state: 'running' | 'completed' | 'failed';
  position: Record<string, unknown>;
  done: number;
  job_id: string | null;
  requested_by: string;
  started_at: string;
  finished_at: string | null;
}

interface Row extends Omit<Rotation, 'started_at' | 'finished_at' | 'done'> {
  started_at: Date;
  finished_at: Date | null;
  done: string;
}
const toRotation = (r: Row): Rotation => ({ ...r, done: Number(r.done), started_at: r.started_at.toISOString(), finished_at: r.finished_at?.toISOString() ?? null });

export interface RotationProgress {
  (done: number, total: number | null): Promise<void>;
}

const BATCH = 500;

export function createRotation(deps: { db: Database; schema: SchemaRegistry; keys: TenantKeys; masterKeys: MasterKeys | null; batchSize?: number }) {
  const { db } = deps;
  const batchSize = deps.batchSize ?? BATCH;
  const ring = () => {
    if (!deps.masterKeys) throw encryptionDisabled();
    return deps.masterKeys;
  };

  async function get(id: string): Promise<Rotation> {
    const { rows } = await db.adminQuery<Row>(`SELECT * FROM strata.key_rotations WHERE id = $1`, [id]);
    if (!rows[0]) throw notFound('ROTATION_NOT_FOUND', `key rotation ${id} does not exist`);
    return toRotation(rows[0]);
  }

  async function jobState(jobs: JobsService, jobId: string | null): Promise<JobState | 'missing'> {
    if (!jobId) return 'missing';
    const job = await jobs.queues.compliance.getJob(jobId);
    if (!job) return 'missing';
    return (await job.getState()) as JobState;
  }

  /** The new data key version of a tenant (wrapped like keys.ts does), returned as the target. */
  async function newDataKeyVersion(c: pg.ClientBase, tenantId: string): Promise<number> {
    await deps.keys.current(tenantId); // version 1 exists before there can be a version 2
    const { rows } = await c.query<{ v: number }>(`SELECT coalesce(max(version), 0) + 1 AS v FROM strata.tenant_keys WHERE tenant_id = $1 AND kind = 'data'`, [tenantId]);
    const version = rows[0]!.v;
    const w = ring().wrap(randomBytes(32), `${tenantId}:data:${version}`);
    await c.query(`INSERT INTO strata.tenant_keys (tenant_id, kind, version, master_key_id, wrapped) VALUES ($1, 'data', $2, $3, $4)`, [tenantId, version, w.masterKeyId, w.wrapped]);
    return version;
  }

  /**
   * Start a rotation (or resume the unfinished one of the same kind and tenant whose job ended) and
   * enqueue its job. `master` is platform_admin's; `data` rotates the caller's tenant (platform_admin
   * names any tenant).
   */
  async function start(ctx: RequestContext, input: { kind: string; tenant?: string }, jobs: JobsService): Promise<{ rotation: Rotation; job_id: string; resumed: boolean }> {
    if (input.kind !== 'master' && input.kind !== 'data') throw badRequest('INVALID_ROTATION_KIND', `kind must be master or data (got ${String(input.kind)})`);
    ring();
    let tenantId: string | null = null;
    if (input.kind === 'master') {
      if (ctx.role !== 'platform_admin') throw forbidden('ROLE_FORBIDDEN', 'rotating the master key is for platform_admin (the key ring is the platform configuration)');
      if (input.tenant !== undefined) throw badRequest('TENANT_NOT_ALLOWED', 'a master-key rotation covers every tenant: leave tenant out');
    } else {
      if (ctx.role !== 'platform_admin' && input.tenant !== undefined && input.tenant !== ctx.tenantId) {
        throw forbidden('ROLE_FORBIDDEN', 'a tenant admin rotates only its own tenant\'s data key');
      }
      tenantId = input.tenant ?? ctx.tenantId;
      if (!tenantId) throw badRequest('TENANT_REQUIRED', 'name the tenant whose data key to rotate');
      const { rowCount } = await db.adminQuery(`SELECT 1 FROM strata.tenants WHERE id = $1`, [tenantId]);
      if (!rowCount) throw notFound('TENANT_NOT_FOUND', `tenant ${tenantId} does not exist`);
    }
    const { rows: running } = await db.adminQuery<Row>(`SELECT * FROM strata.key_rotations WHERE kind = $1 AND coalesce(tenant_id, '') = coalesce($2, '') AND state = 'running'`, [input.kind, tenantId]);
    if (running[0]) {
      const state = await jobState(jobs, running[0].job_id);
      if (state !== 'missing' && !FINAL_STATES.has(state)) {
        throw conflict('ROTATION_RUNNING', `key rotation ${running[0].id} is still running (job ${running[0].job_id ?? '?'})`, { rotation_id: running[0].id });
      }
      const { job_id } = await jobs.enqueue(ctx, 'compliance-rotate', { rotation_id: running[0].id });
      await db.adminQuery(`UPDATE strata.key_rotations SET job_id = $2 WHERE id = $1`, [running[0].id, job_id]);
      return { rotation: await get(running[0].id), job_id, resumed: true };
    }
    const id = randomUUID();
    await db.admin.with(async (c) => {
      await c.query('BEGIN');
      try {
        const target = input.kind === 'master' ? ring().activeId : String(await newDataKeyVersion(c, tenantId!));
        await c.query(`INSERT INTO strata.key_rotations (id, kind, tenant_id, target, requested_by) VALUES ($1, $2, $3, $4, $5)`, [id, input.kind, tenantId, target, ctx.actor]);
        await c.query('COMMIT');
      } catch (err) {
        await c.query('ROLLBACK').catch(() => undefined);
        if ((err as { code?: string }).code === '23505') throw conflict('ROTATION_RUNNING', 'a rotation of this kind and tenant started at the same time');
        throw err;
      }
    });
    if (tenantId) deps.keys.forget(tenantId);
    const { job_id } = await jobs.enqueue(ctx, 'compliance-rotate', { rotation_id: id });
    await db.adminQuery(`UPDATE strata.key_rotations SET job_id = $2 WHERE id = $1`, [id, job_id]);
    return { rotation: await get(id), job_id, resumed: false };
  }

  /** One batch in its own transaction on the owner's connection, re-key capture skipped. */
  async function batch<T>(tenantId: string | null, fn: (c: pg.ClientBase) => Promise<T>): Promise<T> {
    return db.admin.with(async (c) => {
      await c.query('BEGIN');
      try {
        await c.query(`SELECT set_config('strata.tenant_id', $1, true), set_config('strata.rekey', 'on', true), set_config('strata.actor', 'key-rotation', true)`, [tenantId ?? '']);
        const out = await fn(c);
        await c.query('COMMIT');
        return out;
      } catch (err) {
        await c.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
    });
  }

  async function runData(rot: Rotation, progress: RotationProgress, signal?: AbortSignal) {
    const tenantId = rot.tenant_id!;
    const target = Number(rot.target);
    const { rows: versions } = await db.adminQuery<{ version: number }>(`SELECT version FROM strata.tenant_keys WHERE tenant_id = $1 AND kind = 'data'`, [tenantId]);
    const keyring = new Map<number, Buffer>();
    for (const { version } of versions) keyring.set(version, await deps.keys.version(tenantId, version));
    const targetKey = keyring.get(target);
    if (!targetKey) throw notFound('KEY_NOT_FOUND', `data key version ${target} of tenant ${tenantId} does not exist`);
    const { rows: cols } = await db.adminQuery<{ table_name: string; column_name: string }>(`SELECT table_name, column_name FROM strata.compliance_columns WHERE encrypted ORDER BY table_name, column_name`);
    await deps.schema.refresh(); // a worker's registry may predate the last migration
    const tables = await deps.schema.tables();
    const work = cols.filter((c) => tables.get(c.table_name)?.columnMap.has(c.column_name) && tables.get(c.table_name)!.primaryKey.length);
    const stale = (col: string) => `${q(col)} LIKE 'sx1.%' AND split_part(${q(col)}, '.', 2) <> $2`;
    let total = rot.done;
    for (const w of work) {
      const t = tables.get(w.table_name)!;
      const r = await batch(tenantId, (c) => c.query<{ n: string }>(`SELECT count(*) AS n FROM ${t.qualified} WHERE tenant_id = $1 AND ${stale(w.column_name)}`, [tenantId, String(target)]));
      total += Number(r.rows[0]!.n);
    }
    let done = rot.done;
    let unreadable = 0;
    const pos = rot.position as { table?: string; column?: string; after?: unknown[] | null };
    await progress(done, total);
    for (const w of work) {
      const key = `${w.table_name}.${w.column_name}`;
      if (pos.table && key < `${pos.table}.${pos.column}`) continue;
      let after: unknown[] | null = pos.table === w.table_name && pos.column === w.column_name ? (pos.after ?? null) : null;
      const t = tables.get(w.table_name)!;
      const pk = t.primaryKey;
      const pkTypes = pk.map((c) => t.columnMap.get(c)!.type);
      const ctx = { tenantId, table: w.table_name, column: w.column_name };
      for (;;) {
        if (signal?.aborted) throw new Error('cancelled');
        const result = await batch(tenantId, async (c) => {
          const keyset = after ? `AND (${pk.map(q).join(', ')}) > (${pk.map((_, i) => `$${i + 4}::${pkTypes[i]}`).join(', ')})` : '';
          const { rows } = await c.query<Record<string, unknown>>(
            `SELECT ${pk.map(q).join(', ')}, ${q(w.column_name)} AS v FROM ${t.qualified}
              WHERE tenant_id = $1 AND ${stale(w.column_name)} ${keyset} ORDER BY ${pk.map(q).join(', ')} LIMIT $3`,
            [tenantId, String(target), batchSize, ...(after ?? [])],
          );
          if (!rows.length) return { n: 0, updated: 0, last: null as unknown[] | null, bad: 0 };
          const changes: Array<Record<string, unknown>> = [];
          let bad = 0;
          for (const row of rows) {
            const old = row['v'] as string;
            let plain: string;
            try {
              plain = decryptField(old, (v) => {
                const k = keyring.get(v);
                if (!k) throw new Error(`no data key version ${v}`);
                return k;
              }, ctx);
            } catch {
              bad++; // a value that does not decrypt here (moved from elsewhere, or tampered): left as is
              continue;
            }
            const entry: Record<string, unknown> = { old, new: encryptField(plain, targetKey, target, ctx) };
            for (const col of pk) entry[col] = row[col];
            changes.push(entry);
          }
          let updated = 0;
          if (changes.length) {
            const u = await c.query(
              `UPDATE ${t.qualified} AS t SET ${q(w.column_name)} = v.new
                 FROM jsonb_to_recordset($2::jsonb) AS v(${pk.map((col, i) => `${q(col)} ${pkTypes[i]}`).join(', ')}, old text, new text)
                WHERE t.tenant_id = $1 AND ${pk.map((col) => `t.${q(col)} = v.${q(col)}`).join(' AND ')} AND t.${q(w.column_name)} = v.old`,
              [tenantId, JSON.stringify(changes)],
            );
            updated = u.rowCount ?? 0;
          }
          const lastRow = rows[rows.length - 1]!;
          const last = pk.map((col) => lastRow[col]);
          await c.query(`UPDATE strata.key_rotations SET position = $2, done = done + $3 WHERE id = $1`, [rot.id, JSON.stringify({ table: w.table_name, column: w.column_name, after: last }), rows.length]);
          return { n: rows.length, updated, last, bad };
        });
        if (!result.n) break;
        after = result.last;
        done += result.n;
        unreadable += result.bad;
        await progress(done, Math.max(total, done));
      }
    }
    await db.adminQuery(`UPDATE strata.tenant_keys SET retired_at = now() WHERE tenant_id = $1 AND kind = 'data' AND version < $2 AND retired_at IS NULL`, [tenantId, target]);
    deps.keys.forget(tenantId);
    return { rows: done, unreadable };
  }

  async function runMaster(rot: Rotation, progress: RotationProgress, signal?: AbortSignal) {
    const keys = ring();
    const active = keys.activeId;
    const { rows: counts } = await db.adminQuery<{ n: string }>(
      `SELECT (SELECT count(*) FROM strata.tenant_keys WHERE master_key_id <> $1) + (SELECT count(*) FROM strata.subject_keys WHERE master_key_id <> $1) AS n`,
      [active],
    );
    const total = rot.done + Number(counts[0]!.n);
    let done = rot.done;
    let failed = 0;
    await progress(done, total);
    const sources = [
      { table: 'strata.tenant_keys', key: ['tenant_id', 'kind', 'version'], types: { tenant_id: 'text', kind: 'text', version: 'integer' } as Record<string, string>, context: (r: Record<string, unknown>) => `${String(r['tenant_id'])}:${String(r['kind'])}:${String(r['version'])}` },
      { table: 'strata.subject_keys', key: ['tenant_id', 'subject_id'], types: { tenant_id: 'text', subject_id: 'text' } as Record<string, string>, context: (r: Record<string, unknown>) => `${String(r['tenant_id'])}:subject:${String(r['subject_id'])}` },
    ];
    for (const s of sources) {
      let after: unknown[] | null = null;
      for (;;) {
        if (signal?.aborted) throw new Error('cancelled');
        const keyset: string = after ? `AND (${s.key.join(', ')}) > (${s.key.map((_, i) => `$${i + 2}`).join(', ')})` : '';
        const { rows }: { rows: Array<Record<string, unknown> & { master_key_id: string; wrapped: Buffer }> } = await db.adminQuery<Record<string, unknown> & { master_key_id: string; wrapped: Buffer }>(
          `SELECT ${s.key.join(', ')}, master_key_id, wrapped FROM ${s.table} WHERE master_key_id <> $1 ${keyset} ORDER BY ${s.key.join(', ')} LIMIT 200`,
          [active, ...(after ?? [])],
        );
        if (!rows.length) break;
        const rewrapped: Array<Record<string, unknown>> = [];
        for (const r of rows) {
          try {
            const w = keys.wrap(keys.unwrap({ masterKeyId: r.master_key_id, wrapped: r.wrapped }, s.context(r)), s.context(r));
            rewrapped.push({ ...Object.fromEntries(s.key.map((k) => [k, r[k]])), old_id: r.master_key_id, old_w: r.wrapped.toString('base64'), new_id: w.masterKeyId, new_w: w.wrapped.toString('base64') });
          } catch {
            failed++; // wrapped by a master key no longer in the ring: it stays as it is, and is reported
          }
        }
        // one statement per batch, each row a compare-and-set on its old wrapping
        if (rewrapped.length) {
          await db.adminQuery(
            `UPDATE ${s.table} AS t SET master_key_id = v.new_id, wrapped = decode(v.new_w, 'base64')
               FROM jsonb_to_recordset($1::jsonb) AS v(${s.key.map((k) => `${k} ${s.types[k]}`).join(', ')}, old_id text, old_w text, new_id text, new_w text)
              WHERE ${s.key.map((k) => `t.${k} = v.${k}`).join(' AND ')} AND t.master_key_id = v.old_id AND t.wrapped = decode(v.old_w, 'base64')`,
            [JSON.stringify(rewrapped)],
          );
        }
        after = s.key.map((k) => rows[rows.length - 1]![k]);
        done += rows.length;
        await db.adminQuery(`UPDATE strata.key_rotations SET position = $2, done = $3 WHERE id = $1`, [rot.id, JSON.stringify({ table: s.table, after }), done]);
        await progress(done, Math.max(total, done));
      }
    }
    deps.keys.forget();
    return { keys: done, failed };
  }

  return {
    start,
    get,
    async list(filter: { tenantId?: string | null; limit?: number } = {}): Promise<Rotation[]> {
      const { rows } = await db.adminQuery<Row>(
        `SELECT * FROM strata.key_rotations WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY started_at DESC LIMIT $2`,
        [filter.tenantId ?? null, filter.limit ?? 20],
      );
      return rows.map(toRotation);
    },
    /** The job's work: runs (or resumes) rotation `id` to the end. */
    async run(id: string, progress: RotationProgress, signal?: AbortSignal) {
      const rot = await get(id);
      if (rot.state !== 'running') return { rotation: rot, resumed: false };
      // on failure the rotation stays `running`: a retry of the job, or a new POST, resumes from the saved position
      const outcome = rot.kind === 'master' ? await runMaster(rot, progress, signal) : await runData(rot, progress, signal);
      await db.adminQuery(`UPDATE strata.key_rotations SET state = 'completed', finished_at = now() WHERE id = $1`, [id]);
      return { rotation: await get(id), ...outcome };
    },
  };
}

export type RotationService = ReturnType<typeof createRotation>;
