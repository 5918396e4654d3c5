/**
 * Encrypting the rows written before a column was declared encrypted (issue 15). Declaring a column
 * `encrypted` (PUT /v1/admin/compliance/columns/{table}/{column}) starts a conversion job on the
 * `compliance` queue: every plaintext value of the column, in every tenant, is encrypted under its
 * tenant's current data key (or, for a column keyed per subject, under the key of the subject the row
 * names; the tenant key when that is null), and the blind index of a searchable column is filled.
 *
 * - Ciphertext vs plaintext: a stored value is taken as ciphertext only when it has the exact shape
 *   the service writes (`sx1.<version>.<16 base64url>.<22+ base64url>`, or the subject-keyed
 *   `sxs1.` forms); everything else is plaintext and is encrypted. Reads accept both forms throughout
 *   (the guard decrypts ciphertext and masks plaintext by the same rule), so there is no moment where a
 *   row cannot be read.
 * - Batches: rows in primary-key order, BATCH a transaction on the owner's connection; each update is
 *   a compare-and-set on the old value, so a write that lands meanwhile (already encrypted by the
 *   API) is never overwritten. Re-encryption in place skips change capture (`strata.rekey`, as the
 *   rotation does). The position is saved in the batch's transaction in strata.compliance_conversions,
 *   so a retried job resumes where the last batch committed.
 * - The change log: after the table, the entries of the table whose `before`/`after` carry a
 *   plaintext value of the column get it encrypted in place too, so no plaintext of the column is left
 *   in the database once the job is done.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import type { Database } from '../../db/database.js';
import type { RequestContext } from '../../domain.js';
import { conflict, notFound } from '../../errors.js';
import type { SchemaRegistry, TableInfo } from '../data/index.js';
import { FINAL_STATES, type JobState, type JobsService } from '../jobs/index.js';
import { blindIndexColumn } from './declarations.js';
import { blindIndex, encryptField } from './envelope.js';
import type { TenantKeys } from './keys.js';
import { isSubjectFieldCiphertext, subjectIdOf, type SubjectFields } from './subject-fields.js';
import { q } from './tables.js';

const BATCH = 500;
/** The exact shape of a tenant-key ciphertext written by the service. */
const TENANT_SHAPE = /^sx1\.[1-9][0-9]*\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{22,}$/;
/** The three-part subject-key form of subjectKeys.encrypt. */
const SUBJECT_SHAPE = /^sxs1\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{22,}$/;
/** SQL: a value that is certainly plaintext or has to be checked (not of a ciphertext shape). */
const SQL_NOT_CIPHERTEXT = (col: string) =>
  `${col} IS NOT NULL AND ${col} !~ '^sx1\\.[1-9][0-9]*\\.[A-Za-z0-9_-]{16}\\.[A-Za-z0-9_-]{22,}$' AND ${col} !~ '^sxs1\\.([0-9a-f]{32}\\.)?[A-Za-z0-9_-]{16}\\.[A-Za-z0-9_-]{22,}$'`;

/** Whether a stored value has a ciphertext shape (and so is not encrypted again). */
export function looksEncrypted(v: string): boolean {
  return TENANT_SHAPE.test(v) || SUBJECT_SHAPE.test(v) || isSubjectFieldCiphertext(v);
}

export interface Conversion {
  id: string;
  table: string;
  column: string;
  state: 'running' | 'completed' | 'failed';
  position: Record<string, unknown>;
  done: number;
  job_id: string | null;
  requested_by: string;
  started_at: string;
  finished_at: string | null;
}

interface Row {
  id: string;
  table_name: string;
  column_name: string;
  state: Conversion['state'];
  position: Record<string, unknown>;
  done: string;
  job_id: string | null;
  requested_by: string;
  started_at: Date;
  finished_at: Date | null;
}
const toConversion = (r: Row): Conversion => ({
  id: r.id,
  table: r.table_name,
  column: r.column_name,
  state: r.state,
  position: r.position,
  done: Number(r.done),
  job_id: r.job_id,
  requested_by: r.requested_by,
  started_at: r.started_at.toISOString(),
  finished_at: r.finished_at?.toISOString() ?? null,
});

export function createConversion(deps: { db: Database; schema: SchemaRegistry; keys: TenantKeys; subjects: SubjectFields; batchSize?: number }) {
  const { db } = deps;
  const batchSize = deps.batchSize ?? BATCH;

  async function get(id: string): Promise<Conversion> {
    const { rows } = await db.adminQuery<Row>(`SELECT * FROM strata.compliance_conversions WHERE id = $1`, [id]);
    if (!rows[0]) throw notFound('CONVERSION_NOT_FOUND', `conversion ${id} does not exist`);
    return toConversion(rows[0]);
  }

  async function batch<T>(fn: (c: pg.ClientBase) => Promise<T>): Promise<T> {
    return db.admin.with(async (c) => {
      await c.query('BEGIN');
      try {
        await c.query(`SELECT set_config('strata.rekey', 'on', true), set_config('strata.actor', 'compliance-conversion', true)`);
        const out = await fn(c);
        await c.query('COMMIT');
        return out;
      } catch (err) {
        await c.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
    });
  }

  /** The stored form of one plaintext value of `row` (tenant or subject key), and its blind index. */
  async function encryptValue(t: TableInfo, column: string, p: { searchable: boolean; subject_column: string | null }, tenantId: string, plain: string, subject: unknown) {
    const ctx = { tenantId, table: t.name, column };
    let value: string;
    if (p.subject_column && subject !== null && subject !== undefined) value = await deps.subjects.encrypt(tenantId, subjectIdOf(subject), plain, t.name, column);
    else {
      const { key, version } = await deps.keys.current(tenantId);
      value = encryptField(plain, key, version, ctx);
    }
    const bidx = p.searchable ? blindIndex(plain, await deps.keys.index(tenantId), { table: t.name, column }) : null;
    return { value, bidx };
  }

  async function runTable(conv: Conversion, progress: (done: number, total: number | null) => Promise<void>, signal?: AbortSignal) {
    const { rows: decl } = await db.adminQuery<{ encrypted: boolean; searchable: boolean; subject_column: string | null }>(
      `SELECT encrypted, searchable, subject_column FROM strata.compliance_columns WHERE table_name = $1 AND column_name = $2`,
      [conv.table, conv.column],
    );
    const p = decl[0];
    if (!p?.encrypted) return { rows: conv.done, skipped: 'not declared encrypted' };
    await deps.schema.refresh();
    const t = await deps.schema.table(conv.table);
    const col = q(conv.column);
    const pk = t.primaryKey.length ? t.primaryKey : [];
    if (!pk.length || !t.hasTenantId) return { rows: conv.done, skipped: 'no primary key or tenant_id' };
    const pkTypes = pk.map((c) => t.columnMap.get(c)!.type);
    const pos = conv.position as { phase?: string; after?: unknown[] | null; change_after?: string | null };
    let done = conv.done;
    const { rows: cnt } = await db.adminQuery<{ n: string }>(`SELECT count(*) AS n FROM ${t.qualified} WHERE ${SQL_NOT_CIPHERTEXT(col)}`);
    const total = done + Number(cnt[0]!.n);
    await progress(done, total);
    let after: unknown[] | null = pos.phase === 'changes' ? null : (pos.after ?? null);
    const subjectCol = p.subject_column && t.columnMap.has(p.subject_column) ? p.subject_column : null;
    const bidxCol = p.searchable ? blindIndexColumn(conv.column) : null;
    // phase 1: the table
    while (pos.phase !== 'changes') {
      if (signal?.aborted) throw new Error('cancelled');
      const r = await batch(async (c) => {
        const keyset = after ? `AND (${pk.map(q).join(', ')}) > (${pk.map((_, i) => `$${i + 2}::${pkTypes[i]}`).join(', ')})` : '';
        const { rows } = await c.query<Record<string, unknown>>(
          `SELECT ${pk.map(q).join(', ')}, tenant_id::text AS _tenant, ${col} AS _v${subjectCol ? `, ${q(subjectCol)}::text AS _s` : ''}
             FROM ${t.qualified} WHERE ${SQL_NOT_CIPHERTEXT(col)} ${keyset} ORDER BY ${pk.map(q).join(', ')} LIMIT $1`,
          [batchSize, ...(after ?? [])],
        );
        if (!rows.length) return null;
        const changes: Array<Record<string, unknown>> = [];
        for (const row of rows) {
          const tenantId = row['_tenant'] as string | null;
          const old = row['_v'] as string;
          // the SQL selected values not of a ciphertext's exact shape: plaintext (a plaintext that merely
          // starts like a ciphertext, `sx1.x`, is plaintext too and is encrypted)
          if (!tenantId) continue;
          const enc = await encryptValue(t, conv.column, { searchable: p.searchable, subject_column: subjectCol }, tenantId, old, row['_s']);
          const entry: Record<string, unknown> = { _old: old, _new: enc.value, _bidx: enc.bidx };
          for (const k of pk) entry[k] = row[k];
          changes.push(entry);
        }
        if (changes.length) {
          await c.query(
            `UPDATE ${t.qualified} AS t SET ${col} = v._new${bidxCol ? `, ${q(bidxCol)} = v._bidx` : ''}
               FROM jsonb_to_recordset($1::jsonb) AS v(${pk.map((k, i) => `${q(k)} ${pkTypes[i]}`).join(', ')}, _old text, _new text, _bidx text)
              WHERE ${pk.map((k) => `t.${q(k)} = v.${q(k)}`).join(' AND ')} AND t.${col} = v._old`,
            [JSON.stringify(changes)],
          );
        }
        const last = pk.map((k) => rows[rows.length - 1]![k]);
        await c.query(`UPDATE strata.compliance_conversions SET position = $2, done = done + $3 WHERE id = $1`, [conv.id, JSON.stringify({ phase: 'table', after: last }), rows.length]);
        return { n: rows.length, last };
      });
      if (!r) break;
      after = r.last;
      done += r.n;
      await progress(done, Math.max(total, done));
    }
    // phase 2: the change log of the table (plaintext of the column in before/after)
    let changeAfter = pos.phase === 'changes' ? (pos.change_after ?? '0') : '0';
    let events = 0;
    for (;;) {
      if (signal?.aborted) throw new Error('cancelled');
      const r = await batch(async (c) => {
        const { rows } = await c.query<{ id: string; tenant_id: string | null; before: Record<string, unknown> | null; after: Record<string, unknown> | null }>(
          `SELECT e.id::text AS id, e.tenant_id, e.before, e.after FROM strata.changes e
            WHERE e.table_name = $1 AND e.id > $2::bigint AND (jsonb_typeof(e.before -> $3) = 'string' OR jsonb_typeof(e.after -> $3) = 'string')
            ORDER BY e.id LIMIT $4`,
          [conv.table, changeAfter, conv.column, batchSize],
        );
        if (!rows.length) return null;
        const fixed: Array<{ id: string; before: unknown; after: unknown }> = [];
        for (const e of rows) {
          if (!e.tenant_id) continue;
          let touched = false;
          const fix = async (img: Record<string, unknown> | null) => {
            const v = img?.[conv.column];
            if (!img || typeof v !== 'string' || looksEncrypted(v)) return img;
            touched = true;
            const enc = await encryptValue(t, conv.column, { searchable: p.searchable, subject_column: subjectCol }, e.tenant_id!, v, subjectCol ? img[subjectCol] : null);
            return { ...img, [conv.column]: enc.value, ...(bidxCol && bidxCol in img ? { [bidxCol]: enc.bidx } : {}) };
          };
          const before = await fix(e.before);
          const afterImg = await fix(e.after);
          if (touched) fixed.push({ id: e.id, before, after: afterImg });
        }
        if (fixed.length) {
          await c.query(
            `UPDATE strata.changes AS c SET before = v.before, after = v.after
               FROM jsonb_to_recordset($1::jsonb) AS v(id bigint, before jsonb, after jsonb) WHERE c.id = v.id`,
            [JSON.stringify(fixed)],
          );
        }
        const last = rows[rows.length - 1]!.id;
        await c.query(`UPDATE strata.compliance_conversions SET position = $2 WHERE id = $1`, [conv.id, JSON.stringify({ phase: 'changes', change_after: last })]);
        return { last, n: fixed.length };
      });
      if (!r) break;
      changeAfter = r.last;
      events += r.n;
    }
    return { rows: done, change_log_entries: events };
  }

  return {
    get,
    /** Whether `table.column` holds a value not of a ciphertext's shape (in any tenant). */
    async hasPlaintext(table: string, column: string): Promise<boolean> {
      const t = await deps.schema.table(table);
      const { rowCount } = await db.adminQuery(`SELECT 1 FROM ${t.qualified} WHERE ${SQL_NOT_CIPHERTEXT(q(column))} LIMIT 1`);
      return (rowCount ?? 0) > 0;
    },
    /** Start the conversion of `table.column` (or answer the running one) and enqueue its job. */
    async start(ctx: RequestContext, table: string, column: string, jobs: JobsService): Promise<{ conversion: Conversion; job_id: string; resumed: boolean }> {
      const { rows: running } = await db.adminQuery<Row>(`SELECT * FROM strata.compliance_conversions WHERE table_name = $1 AND column_name = $2 AND state = 'running'`, [table, column]);
      let id = running[0]?.id;
      const resumed = !!id;
      if (running[0]?.job_id) {
        const job = await jobs.queues.compliance.getJob(running[0].job_id);
        const state = job ? ((await job.getState()) as JobState) : 'missing';
        if (state !== 'missing' && !FINAL_STATES.has(state)) return { conversion: toConversion(running[0]), job_id: running[0].job_id, resumed: true };
      }
      if (!id) {
        id = randomUUID();
        try {
          await db.adminQuery(`INSERT INTO strata.compliance_conversions (id, table_name, column_name, requested_by) VALUES ($1, $2, $3, $4)`, [id, table, column, ctx.actor]);
        } catch (err) {
          if ((err as { code?: string }).code === '23505') throw conflict('CONVERSION_RUNNING', `a conversion of ${table}.${column} started at the same time`);
          throw err;
        }
      }
      const { job_id } = await jobs.enqueue(ctx, 'compliance-convert', { conversion_id: id });
      await db.adminQuery(`UPDATE strata.compliance_conversions SET job_id = $2 WHERE id = $1`, [id, job_id]);
      return { conversion: await get(id), job_id, resumed };
    },
    /** The job's work: runs (or resumes) conversion `id` to the end. */
    async run(id: string, progress: (done: number, total: number | null) => Promise<void>, signal?: AbortSignal) {
      const conv = await get(id);
      if (conv.state !== 'running') return { conversion: conv };
      const outcome = await runTable(conv, progress, signal);
      await db.adminQuery(`UPDATE strata.compliance_conversions SET state = 'completed', finished_at = now() WHERE id = $1`, [id]);
      return { conversion: await get(id), ...outcome };
    },
    async list(filter: { table?: string; limit?: number } = {}): Promise<Conversion[]> {
      const { rows } = await db.adminQuery<Row>(
        `SELECT * FROM strata.compliance_conversions WHERE $1::text IS NULL OR table_name = $1 ORDER BY started_at DESC LIMIT $2`,
        [filter.table ?? null, filter.limit ?? 20],
      );
      return rows.map(toConversion);
    },
  };
}

export type ConversionService = ReturnType<typeof createConversion>;
