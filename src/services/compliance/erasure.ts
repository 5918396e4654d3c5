/**
 * Erasure of a data subject (DELETE /v1/subjects/{id}), in one transaction of the caller's tenant:
 * 1. rows of tables declared `anonymize` lose the subject columns and every declared PII column
 *    (null, or an `erased:<uuid>` tombstone in a NOT NULL text column);
 * 2. rows of tables declared `delete` are deleted, children first; foreign keys may cascade further;
 * 3. change-log entries of every touched row (and older entries naming the subject) are anonymized
 *    in place: every value but the primary key and tenant_id becomes null, so history, undo, the
 *    change feed and webhook replays cannot bring the subject back;
 * 4. the subject's data key (strata.subject_keys) is deleted: values encrypted under it are
 *    unreadable everywhere, backups included (crypto-shredding).
 * The report counts rows from PostgreSQL's own per-transaction counters (pg_stat_xact_user_tables),
 * so rows removed by ON DELETE CASCADE are counted exactly; on a Citus cluster (where those counters
 * stay on the workers) from the transaction's own change events (see clusterCounts). Backups taken before the erasure are
 * listed: they still hold the subject's rows until retention removes them.
 */
import { createHash, randomUUID } from 'node:crypto';
import type pg from 'pg';
import type { Database } from '../../db/database.js';
import type { RequestContext } from '../../domain.js';
import { AppError, badRequest, conflict, notFound } from '../../errors.js';
import type { SchemaRegistry, TableInfo } from '../data/index.js';
import { blindIndexColumn } from './declarations.js';
import { anonymizable, type SubjectAction } from './subjects.js';
import { parentsFirst, q } from './tables.js';

export interface ErasureTableReport {
  table: string;
  /** The declared action, or `cascade` for rows removed or changed by a foreign key. */
  action: SubjectAction | 'cascade';
  matched_by: string[];
  deleted: number;
  anonymized: number;
}

export interface ErasureReport {
  erasure_id: string;
  tenant: string;
  tables: ErasureTableReport[];
  totals: { rows: number; deleted: number; anonymized: number };
  change_log: { entries_anonymized: number };
  crypto_shredded: boolean;
  /** Backups taken before the erasure: they hold the subject until retention removes them. */
  backups: Array<{ id: string; kind: string; taken_at: string; expires_after: string }>;
  erased_at: string;
}

/** What erasure needs of the backups capability (structural, to stay off its private files). */
export interface BackupLister {
  completed(): Promise<Array<{ id: string; kind: string; started_at: string; snapshot_at: string | null }>>;
}

// 1-256 characters, none of them a control character
const validSubjectId = (id: string) => id.length >= 1 && id.length <= 256 && ![...id].some((ch) => ch.charCodeAt(0) < 32 || ch.charCodeAt(0) === 127);
const INT_TYPES = new Set(['int2', 'int4', 'int8']);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const TEXT = new Set(['text', 'varchar', 'bpchar']);

/** `col = $2` typed for the column, or null when the id cannot be a value of it (the table cannot hold the subject). */
function matchOne(t: TableInfo, column: string, id: string): string | null {
  const c = t.columnMap.get(column);
  if (!c) return null;
  if (INT_TYPES.has(c.udt)) return /^-?\d{1,18}$/.test(id) ? `${q(column)} = $2::bigint` : null;
  if (c.udt === 'uuid') return UUID.test(id) ? `${q(column)} = $2::uuid` : null;
  if (TEXT.has(c.udt) && !c.isArray) return `${q(column)} = $2`;
  return `${q(column)}::text = $2`;
}

/** A jsonb change payload with every key but the primary key's and tenant_id set to null. */
const scrub = (col: string) =>
  `CASE WHEN ${col} IS NULL THEN NULL ELSE (SELECT jsonb_object_agg(k, CASE WHEN c.pk ? k OR k = 'tenant_id' THEN v ELSE 'null'::jsonb END) FROM jsonb_each(${col}) e(k, v)) END`;
const SCRUB_SET = `before = ${scrub('c.before')}, after = ${scrub('c.after')}`;
const SCRUB_CHANGED = `(c.before IS DISTINCT FROM ${scrub('c.before')} OR c.after IS DISTINCT FROM ${scrub('c.after')})`;

export function createErasure(deps: { db: Database; schema: SchemaRegistry; backups?: BackupLister; backupKeepDays: number }) {
  const { db, schema } = deps;

  async function plan(tenantId: string, subjectId: string) {
    const { rows: decls } = await db.adminQuery<{ table_name: string; columns: string[]; action: SubjectAction }>(`SELECT table_name, columns, action FROM strata.compliance_subjects`);
    if (!decls.length) throw conflict('NO_SUBJECT_DECLARATIONS', 'no table declares which columns identify a subject (PUT /v1/admin/compliance/subjects/{table})');
    const { rows: pii } = await db.adminQuery<{ table_name: string; column_name: string; searchable: boolean }>(
      `SELECT table_name, column_name, searchable FROM strata.compliance_columns WHERE pii IS NOT NULL OR encrypted`,
    );
    const tables = await schema.tables();
    const steps: Array<{ t: TableInfo; action: SubjectAction; columns: string[]; where: string; set: string }> = [];
    for (const d of decls) {
      const t = tables.get(d.table_name);
      if (!t) throw conflict('SUBJECT_TABLE_MISSING', `table ${d.table_name} is declared for subjects but no longer exists: remove its declaration`);
      const preds = d.columns.map((c) => matchOne(t, c, subjectId)).filter((p): p is string => p !== null);
      if (!preds.length) continue;
      let set = '';
      if (d.action === 'anonymize') {
        const cols = new Set(d.columns);
        for (const p of pii) {
          if (p.table_name !== t.name) continue;
          cols.add(p.column_name);
          if (p.searchable && t.columnMap.has(blindIndexColumn(p.column_name))) cols.add(blindIndexColumn(p.column_name));
        }
        const sets: string[] = [];
        for (const col of cols) {
          const a = anonymizable(t, col);
          if (!a.ok) throw conflict('ERASURE_UNSUPPORTED', `${a.why}; it cannot be anonymized (declare ${t.name} with action "delete")`);
          sets.push(`${q(col)} = ${t.columnMap.get(col)!.nullable ? 'NULL' : `'erased:' || gen_random_uuid()`}`);
        }
        set = sets.join(', ');
      }
      steps.push({ t, action: d.action, columns: d.columns, where: `tenant_id = $1 AND (${preds.join(' OR ')})`, set });
    }
    // anonymize first (a cascade must not delete rows meant to stay), then delete children first
    const order = parentsFirst(steps.map((s) => s.t)).map((t) => t.name);
    const rank = (s: (typeof steps)[number]) => (s.action === 'anonymize' ? -1 : order.length - order.indexOf(s.t.name));
    steps.sort((a, b) => rank(a) - rank(b));
    return steps;
  }

  async function xactCounts(c: pg.ClientBase): Promise<Map<string, { del: number; upd: number }>> {
    const { rows } = await c.query<{ relname: string; del: string; upd: string }>(
      `SELECT relname, n_tup_del AS del, n_tup_upd AS upd FROM pg_stat_xact_user_tables WHERE schemaname = 'public'`,
    );
    return new Map(rows.map((r) => [r.relname, { del: Number(r.del), upd: Number(r.upd) }]));
  }

  /**
   * On a cluster the coordinator's pg_stat_xact_user_tables never sees the rows changed on the
   * workers' shards (its tables are empty shells): the counts come from this transaction's own
   * change events instead (ids after `mark`, per tenant; capture triggers fire for cascaded rows
   * too), and, for a declared table without change capture, from its statement's row count.
   */
  async function clusterCounts(c: pg.ClientBase, tenantId: string, mark: string, direct: Map<string, { del: number; upd: number }>) {
    const { rows } = await c.query<{ table_name: string; del: number; upd: number }>(
      `SELECT table_name, count(*) FILTER (WHERE op = 'delete')::int AS del, count(*) FILTER (WHERE op = 'update')::int AS upd
         FROM strata.changes WHERE tenant_id = $1 AND id > $2::bigint GROUP BY table_name`,
      [tenantId, mark],
    );
    const out = new Map(rows.map((r) => [r.table_name, { del: r.del, upd: r.upd }]));
    for (const [name, d] of direct) if (!out.has(name)) out.set(name, d);
    return out;
  }

  async function listBackups(now: Date): Promise<ErasureReport['backups']> {
    if (!deps.backups) return [];
    const all = await deps.backups.completed();
    return all
      .filter((b) => Date.parse(b.started_at) <= now.getTime())
      .map((b) => ({
        id: b.id,
        kind: b.kind,
        taken_at: b.snapshot_at ?? b.started_at,
        expires_after: new Date(Date.parse(b.started_at) + deps.backupKeepDays * 86_400_000).toISOString(),
      }));
  }

  return {
    /** Erase subject `subjectId` of the caller's tenant; the report is exact (see the file comment). */
    async erase(ctx: RequestContext, subjectId: string): Promise<ErasureReport> {
      const tenantId = ctx.tenantId;
      if (!tenantId) throw badRequest('TENANT_REQUIRED', 'a subject belongs to a tenant: use a token of that tenant');
      if (!validSubjectId(subjectId)) throw badRequest('INVALID_SUBJECT_ID', 'a subject id is 1 to 256 characters without control characters');
      const steps = await plan(tenantId, subjectId);
      const erasureId = randomUUID();
      const now = new Date();
      const backups = await listBackups(now).catch(() => {
        throw new AppError(503, 'BACKUPS_UNAVAILABLE', 'the backup store cannot be listed, so the report could not name the backups holding the subject; nothing was erased');
      });
      const report = await db.admin.with(async (c) => {
        await c.query('BEGIN');
        try {
          await c.query(`SELECT set_config('strata.tenant_id', $1, true), set_config('strata.actor', $2, true), set_config('strata.role', $3, true)`, [tenantId, ctx.actor, ctx.role]);
          // On a cluster change ids are per tenant (migration 0018): hold the tenant's id counter from
          // the start, so the events after `mark` are exactly this transaction's (its worker's txid is
          // not the coordinator's pg_current_xact_id()).
          const mark = db.cluster
            ? (
                await c.query<{ m: string }>(
                  'INSERT INTO strata.change_counters AS k (tenant_id, last_id) VALUES ($1, 0) ON CONFLICT (tenant_id) DO UPDATE SET last_id = k.last_id RETURNING k.last_id::text AS m',
                  [tenantId],
                )
              ).rows[0]!.m
            : undefined;
          const before = mark === undefined ? await xactCounts(c) : new Map<string, { del: number; upd: number }>();
          const direct = new Map<string, { del: number; upd: number }>();
          for (const s of steps) {
            const sql = s.action === 'delete' ? `DELETE FROM ${s.t.qualified} WHERE ${s.where}` : `UPDATE ${s.t.qualified} SET ${s.set} WHERE ${s.where}`;
            const r = await c.query(sql, [tenantId, subjectId]);
            const d = direct.get(s.t.name) ?? { del: 0, upd: 0 };
            if (s.action === 'delete') d.del += r.rowCount ?? 0;
            else d.upd += r.rowCount ?? 0;
            direct.set(s.t.name, d);
          }
          const after = mark === undefined ? await xactCounts(c) : await clusterCounts(c, tenantId, mark, direct);
          const tables: ErasureTableReport[] = [];
          for (const [name, a] of after) {
            const b = before.get(name) ?? { del: 0, upd: 0 };
            const deleted = a.del - b.del;
            const anonymized = a.upd - b.upd;
            if (!deleted && !anonymized) continue;
            const step = steps.find((s) => s.t.name === name);
            tables.push({ table: name, action: step?.action ?? 'cascade', matched_by: step?.columns ?? [], deleted, anonymized });
          }
          tables.sort((x, y) => x.table.localeCompare(y.table));
          // change log: every row this transaction touched (their pks are in its own events), and
          // older entries whose payload names the subject in a subject column
          const touched = await c.query(
            `UPDATE strata.changes c SET ${SCRUB_SET}
              WHERE c.tenant_id = $1 AND (c.table_name, c.pk) IN (SELECT table_name, pk FROM strata.changes WHERE ${mark === undefined ? 'txid = pg_current_xact_id()' : 'id > $2::bigint'} AND tenant_id = $1)
                AND ${SCRUB_CHANGED}`,
            mark === undefined ? [tenantId] : [tenantId, mark],
          );
          let entries = touched.rowCount ?? 0;
          for (const s of steps) {
            const named = s.columns.map((col) => `c.before ->> ${pgLiteral(col)} = $3 OR c.after ->> ${pgLiteral(col)} = $3`).join(' OR ');
            const r = await c.query(`UPDATE strata.changes c SET ${SCRUB_SET} WHERE c.tenant_id = $1 AND c.table_name = $2 AND (${named}) AND ${SCRUB_CHANGED}`, [tenantId, s.t.name, subjectId]);
            entries += r.rowCount ?? 0;
          }
          const shred = await c.query(`DELETE FROM strata.subject_keys WHERE tenant_id = $1 AND subject_id = $2`, [tenantId, subjectId]);
          const totals = tables.reduce((acc, t) => ({ rows: acc.rows + t.deleted + t.anonymized, deleted: acc.deleted + t.deleted, anonymized: acc.anonymized + t.anonymized }), { rows: 0, deleted: 0, anonymized: 0 });
          if (!totals.rows && !entries && !shred.rowCount) {
            await c.query('ROLLBACK');
            return null;
          }
          const out: ErasureReport = {
            erasure_id: erasureId,
            tenant: tenantId,
            tables,
            totals,
            change_log: { entries_anonymized: entries },
            crypto_shredded: (shred.rowCount ?? 0) > 0,
            backups,
            erased_at: now.toISOString(),
          };
          await c.query(
            `INSERT INTO strata.compliance_erasures (id, tenant_id, subject_hash, requested_by, request_id, outcome, report) VALUES ($1, $2, $3, $4, $5, 'erased', $6)`,
            [erasureId, tenantId, subjectDigest(tenantId, subjectId), ctx.actor, ctx.requestId, JSON.stringify(out)],
          );
          await c.query('COMMIT');
          return out;
        } catch (err) {
          await c.query('ROLLBACK').catch(() => undefined);
          throw err;
        }
      });
      if (!report) throw notFound('SUBJECT_NOT_FOUND', 'no row, change-log entry or key of this subject exists in this tenant; nothing was changed');
      return report;
    },
  };
}

/** The digest an erasure keeps of the subject id (for "was this subject erased?"), never the id itself. */
export const subjectDigest = (tenantId: string, subjectId: string) => createHash('sha256').update(`strata-subject:${tenantId}:${subjectId}`).digest('hex');

const pgLiteral = (s: string) => `'${s.replace(/'/g, "''")}'`;

export type Erasure = ReturnType<typeof createErasure>;
