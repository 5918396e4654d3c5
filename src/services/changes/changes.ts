/**
 * The change log (strata.changes) as tenants see it: keyset pages in id order up to the visibility
 * horizon, a follow-forever stream, one row's history, and undo.
 *
 * Reads run in the caller's tenant session (row-level security keeps them to their own events): first
 * the tenant's horizon (strata.change_horizon(tenant)), then, in a later statement and so a later snapshot, the
 * page up to it; a page never holds an id above which a lower one could still commit.
 */
import type { Enforcement, EventMasking } from '../compliance/index.js';
import pg from 'pg';
import type { Database } from '../../db/database.js';
import type { SessionContext, Tx } from '../../db/session.js';
import { sqlstateOf } from '../../db/pool.js';
import { SQLSTATE } from '../../db/errors.js';
import { badRequest, conflict, notFound } from '../../errors.js';
import type { SchemaRegistry, TableInfo } from '../data/index.js';
import { boundRowsSql, readBounded, tooLarge } from '../data/index.js';
import { createLatch, type ChangeFeed } from './change-feed.js';

export const CHANGE_OPS = ['insert', 'update', 'delete'] as const;
export type ChangeOp = (typeof CHANGE_OPS)[number];

/** One change event as the API shows it (ids as strings: they are bigints). */
export interface ChangeEvent {
  id: string;
  txid: string;
  tenant_id: string;
  table: string;
  op: ChangeOp;
  pk: Record<string, unknown>;
  before: Record<string, unknown> | null;
  after: Record<string, unknown> | null;
  actor: string | null;
  at: string;
}

export interface ChangeFilter {
  tables?: readonly string[];
  ops?: readonly string[];
  /** One row: its primary key as the capture trigger wrote it. */
  pk?: Record<string, unknown>;
}

export interface ChangePage {
  data: ChangeEvent[];
  /** The last id of a full page (more may follow), else null. */
  next_cursor: string | null;
}

const CURSOR = /^(0|[1-9][0-9]{0,17})$/;

/** Columns of strata.changes as ChangeEvent. */
export const EVENT_COLUMNS = `c.id::text AS id, c.txid::text AS txid, c.tenant_id, c.table_name AS "table", c.op, c.pk, c.before, c.after, c.actor,
  to_char(c.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS at`;

/** An `after`/`until` cursor: a change id (digits). 400 BAD_CURSOR otherwise. */
export function parseCursor(value: string | undefined, name = 'after'): string {
  if (value === undefined || value === '') return '0';
  if (!CURSOR.test(value)) throw badRequest('BAD_CURSOR', `${name} must be a change id (a non-negative integer), got ${JSON.stringify(value)}`);
  return value;
}

/** WHERE fragments for a filter (values as parameters $n from `start`). */
export function filterSql(filter: ChangeFilter, values: unknown[]): string {
  const parts: string[] = [];
  if (filter.tables?.length) {
    values.push(filter.tables);
    parts.push(`c.table_name = ANY($${values.length}::text[])`);
  }
  if (filter.ops?.length) {
    values.push(filter.ops);
    parts.push(`c.op = ANY($${values.length}::text[])`);
  }
  if (filter.pk) {
    values.push(JSON.stringify(filter.pk));
    parts.push(`c.pk = $${values.length}::jsonb`);
  }
  return parts.map((p) => ` AND ${p}`).join('');
}

/**
 * Events of one tenant after `after`, up to the horizon, in id order. The horizon is computed by one
 * statement and the events read by the next (READ COMMITTED: its snapshot is taken after the
 * horizon), which is what makes `id <= horizon` safe. Never inside a REPEATABLE READ transaction.
 */
export async function readChanges(
  tx: Pick<Tx, 'query'>,
  tenantId: string,
  after: string,
  filter: ChangeFilter,
  limit: number,
  bounds: { until?: string; maxBytes?: number; report?: { cut: boolean } } = {},
): Promise<ChangeEvent[]> {
  // the tenant's horizon: only transactions writing this tenant's events can hold it back
  const { rows } = await tx.query<{ h: string }>('SELECT strata.change_horizon($1)::text AS h', [tenantId]);
  const h = rows[0]?.h ?? '0';
  const values: unknown[] = [tenantId, after, h, limit];
  let until = '';
  if (bounds.until !== undefined) {
    values.push(bounds.until);
    until = ` AND c.id <= $${values.length}::bigint`;
  }
  const text = `SELECT ${EVENT_COLUMNS} FROM strata.changes c
      WHERE c.tenant_id = $1 AND c.id > $2::bigint AND c.id <= $3::bigint${until}${filterSql(filter, values)}
      ORDER BY c.id LIMIT $4`;
  if (bounds.maxBytes === undefined) return (await tx.query<ChangeEvent>(text, values)).rows;
  // PostgreSQL sizes the events and sends those that fit (data/response-bounds.ts): a page of large
  // rows ends early and the caller pages on; a single event past the bound is a 413.
  values.push(bounds.maxBytes);
  const b = readBounded(await tx.query<ChangeEvent>(boundRowsSql(text, `$${values.length}`), values));
  if (b.cut && b.rows.length === 0) {
    throw tooLarge('one change event', bounds.maxBytes, 'RESPONSE_MAX_BYTES', 'the event is larger than one answer may be; read the row itself instead');
  }
  if (bounds.report) bounds.report.cut = b.cut;
  return b.rows;
}

export interface ChangeServiceOptions {
  db: Database;
  schema: SchemaRegistry;
  feed: ChangeFeed;
  defaultLimit: number;
  maxLimit: number;
  /** Most bytes of JSON one page of events carries (RESPONSE_MAX_BYTES): the page ends early, with next_cursor. */
  maxResponseBytes?: number;
  /** Declared columns: events carry ciphertext or masked values, never plaintext the caller's role may not see. */
  masking?: EventMasking;
  /** The compliance policy for undo answers (decrypted and masked like a read). */
  compliance?: Enforcement;
}

export function createChangeService(opts: ChangeServiceOptions) {
  const { db, schema, feed } = opts;

  /** The captured tables (those with the capture trigger), cached until the schema registry changes. */
  let captured: { version: number; names: Set<string> } | undefined;
  async function capturedTables(): Promise<Set<string>> {
    await schema.tables();
    if (captured?.version === schema.version) return captured.names;
    const { rows } = await db.adminQuery<{ table_name: string }>('SELECT table_name FROM strata.captured_tables');
    captured = { version: schema.version, names: new Set(rows.map((r) => r.table_name)) };
    return captured.names;
  }

  /** Check a filter's table and op names: 400 UNKNOWN_TABLE / BAD_OP naming the culprit. */
  async function checkFilter(filter: ChangeFilter): Promise<void> {
    const names = await capturedTables();
    for (const t of filter.tables ?? []) {
      if (!names.has(t)) throw badRequest('UNKNOWN_TABLE', `table ${JSON.stringify(t)} does not exist or is not captured`);
    }
    for (const o of filter.ops ?? []) {
      if (!(CHANGE_OPS as readonly string[]).includes(o)) throw badRequest('BAD_OP', `op ${JSON.stringify(o)} is not one of insert, update, delete`);
    }
  }

  function limitOf(limit: number | undefined): number {
    const l = limit ?? opts.defaultLimit;
    if (l > opts.maxLimit) throw badRequest('LIMIT_TOO_LARGE', `limit must be at most ${opts.maxLimit}`);
    return l;
  }

  /** A page under the horizon. */
  async function page(ctx: SessionContext, after: string, filter: ChangeFilter, limit: number): Promise<ChangePage> {
    const tenantId = requireTenant(ctx);
    const maxBytes = opts.maxResponseBytes ?? 16 * 1024 * 1024;
    const report = { cut: false };
    const rows = await db.withTenant(ctx, (tx) => readChanges(tx, tenantId, after, filter, limit + 1, { maxBytes, report }), { readOnly: true });
    // a page the byte bound cut ends early: next_cursor continues after its last event
    const more = report.cut || rows.length > limit;
    const page = more ? rows.slice(0, limit) : rows;
    const m = opts.masking;
    const data = m ? await Promise.all(page.map((e) => m.maskEvent(e, ctx.role))) : page;
    return { data, next_cursor: more ? (data[data.length - 1]?.id ?? null) : null };
  }

  async function rowKey(table: TableInfo, pk: string): Promise<Record<string, unknown>> {
    const [col, ...rest] = table.primaryKey;
    if (!col || rest.length) throw badRequest('NO_SINGLE_PRIMARY_KEY', `table ${table.name} has no single-column primary key`);
    const type = table.columnMap.get(col)?.type ?? 'text';
    try {
      // The value is cast to the column's type (from the catalog), so it matches what to_jsonb wrote.
      const { rows } = await db.adminQuery<{ k: Record<string, unknown> }>(`SELECT jsonb_build_object($1::text, $2::${type}) AS k`, [col, pk]);
      return rows[0]!.k;
    } catch (err) {
      const code = sqlstateOf(err);
      if (code === SQLSTATE.INVALID_TEXT_REPRESENTATION || code === SQLSTATE.NUMERIC_OUT_OF_RANGE || code === SQLSTATE.INVALID_DATETIME)
        throw badRequest('INVALID_VALUE', `${JSON.stringify(pk)} is not a valid ${type} for ${table.name}.${col}`);
      throw err;
    }
  }

  return {
    checkFilter,
    capturedTables,

    /** GET /v1/changes: the tenant's events after `after`, filtered, keyset-paged. */
    async list(ctx: SessionContext, q: { after?: string; table?: string; op?: string; limit?: number }): Promise<ChangePage> {
      const after = parseCursor(q.after);
      const filter: ChangeFilter = { tables: q.table ? q.table.split(',') : undefined, ops: q.op ? q.op.split(',') : undefined };
      await checkFilter(filter);
      return page(ctx, after, filter, limitOf(q.limit));
    },

    /** GET /v1/tables/{t}/rows/{pk}/history: one row's events, oldest first. */
    async history(ctx: SessionContext, table: string, pk: string, q: { after?: string; limit?: number }): Promise<ChangePage> {
      const t = await schema.table(table);
      const after = parseCursor(q.after);
      if (!(await capturedTables()).has(t.name)) throw badRequest('UNKNOWN_TABLE', `table ${t.name} is not captured`);
      return page(ctx, after, { tables: [t.name], pk: await rowKey(t, pk) }, limitOf(q.limit));
    },

    /**
     * Follow the tenant's events from `after`, forever (until `signal` aborts): every event once, in
     * id order, woken by the change feed.
     */
    async *follow(ctx: SessionContext, after: string, filter: ChangeFilter, signal: AbortSignal): AsyncGenerator<ChangeEvent> {
      const latch = createLatch(signal);
      const unsubscribe = feed.subscribe(() => latch.wake());
      let cursor = after;
      try {
        while (!signal.aborted) {
          await latch.wait();
          if (signal.aborted) return;
          for (;;) {
            const p = await page(ctx, cursor, filter, 500);
            for (const e of p.data) {
              cursor = e.id;
              yield e;
            }
            if (!p.next_cursor || signal.aborted) break;
          }
        }
      } finally {
        unsubscribe();
        latch.dispose();
      }
    },

    /** POST /v1/changes/{id}/undo: apply the inverse when the row is still as the change left it. */
    async undo(ctx: SessionContext, id: string): Promise<{ undone: string; table: string; op: ChangeOp; change_id: string | null; row: Record<string, unknown> | null }> {
      const changeId = parseCursor(id, 'id');
      const guard = await opts.compliance?.guard(ctx);
      return db.withTenant(ctx, async (tx) => {
        const tenantId = requireTenant(ctx);
        // the tenant's qual beside RLS: on a cluster it routes the statement to the tenant's shard
        // (where change ids are the tenant's own, migration 0018)
        const { rows } = await tx.query<ChangeEvent>(`SELECT ${EVENT_COLUMNS} FROM strata.changes c WHERE c.tenant_id = $1 AND c.id = $2::bigint`, [tenantId, changeId]);
        const e = rows[0];
        if (!e) throw notFound('CHANGE_NOT_FOUND', `change ${changeId} does not exist`);
        const t = await schema.table(e.table);
        const keyCols = Object.keys(e.pk).map((k) => {
          if (!t.columnMap.has(k)) throw conflict('UNDO_SCHEMA_CHANGED', `column ${k} of ${t.name} no longer exists`);
          return pg.escapeIdentifier(k);
        });
        const rec = `jsonb_populate_record(NULL::${t.qualified}, $1::jsonb)`;
        const tenantQual = t.columnMap.has('tenant_id') ? ` AND t.tenant_id = ${pg.escapeLiteral(tenantId)}` : '';
        const where = `(${keyCols.map((c) => `t.${c}`).join(', ')}) = (SELECT ${keyCols.map((c) => `r.${c}`).join(', ')} FROM ${rec} r)${tenantQual}`;
        const cur = await tx.query<{ row: Record<string, unknown> }>(`SELECT to_jsonb(t) AS row FROM ${t.qualified} t WHERE ${where} FOR UPDATE`, [JSON.stringify(e.pk)]);
        const current = cur.rows[0]?.row ?? null;
        const expected = e.op === 'delete' ? null : e.after;
        const same = current === null || expected === null ? current === expected : (await tx.query<{ same: boolean }>('SELECT $1::jsonb = $2::jsonb AS same', [JSON.stringify(current), JSON.stringify(expected)])).rows[0]?.same;
        if (!same) {
          const [exp, cur] = guard ? await guard.revealRows(t.name, [expected, current], { path: 'undo' }) : [expected, current];
          throw conflict('UNDO_CONFLICT', `row ${JSON.stringify(e.pk)} of ${t.name} has changed since change ${changeId}; undo would overwrite it`, {
            expected: exp,
            current: cur,
          });
        }
        // tenant_id is the same before and after (RLS), and Citus refuses to SET a distribution column
        const cols = t.columns.filter((c) => !c.generated && c.name !== 'tenant_id').map((c) => pg.escapeIdentifier(c.name));
        let inverse: ChangeOp;
        let row: Record<string, unknown> | null = null;
        if (e.op === 'insert') {
          inverse = 'delete';
          await tx.query(`DELETE FROM ${t.qualified} t WHERE ${where}`, [JSON.stringify(e.pk)]);
        } else if (e.op === 'update') {
          inverse = 'update';
          const res = await tx.query<{ row: Record<string, unknown> }>(
            `WITH w AS (UPDATE ${t.qualified} t SET (${cols.join(', ')}) = (SELECT ${cols.map((c) => `b.${c}`).join(', ')} FROM jsonb_populate_record(NULL::${t.qualified}, $2::jsonb) b)
              WHERE ${where} RETURNING t.*) SELECT to_jsonb(w) AS row FROM w`,
            [JSON.stringify(e.pk), JSON.stringify(e.before)],
          );
          row = res.rows[0]?.row ?? null;
        } else {
          inverse = 'insert';
          // the row comes back as it was, identity values included (a new identity would be another row)
          const restore = t.columns.filter((c) => !c.generated || c.identityAlways).map((c) => pg.escapeIdentifier(c.name));
          const overriding = t.columns.some((c) => c.identityAlways) ? 'OVERRIDING SYSTEM VALUE' : '';
          const res = await tx.query<{ row: Record<string, unknown> }>(
            `WITH w AS (INSERT INTO ${t.qualified} AS t (${restore.join(', ')}) ${overriding} SELECT ${restore.map((c) => `b.${c}`).join(', ')} FROM jsonb_populate_record(NULL::${t.qualified}, $1::jsonb) b RETURNING t.*)
             SELECT to_jsonb(w) AS row FROM w`,
            [JSON.stringify(e.before)],
          );
          row = res.rows[0]?.row ?? null;
        }
        // The undo is captured like any write: its event is this transaction's last one.
        // (On a cluster, ids are per tenant and this transaction holds the tenant's id counter since
        // its write: the tenant's highest id is its own. Citus also refuses RETURNING with to_jsonb,
        // hence the CTEs above.)
        const ev = await tx.query<{ id: string }>(
          db.cluster
            ? 'SELECT max(id)::text AS id FROM strata.changes WHERE tenant_id = $1'
            : 'SELECT max(id)::text AS id FROM strata.changes WHERE tenant_id = $1 AND txid = pg_current_xact_id()',
          [tenantId],
        );
        if (guard && row) row = (await guard.revealRows(t.name, [row], { path: 'undo' }))[0] ?? null;
        return { undone: changeId, table: t.name, op: inverse, change_id: ev.rows[0]?.id ?? null, row };
      });
    },
  };
}

function requireTenant(ctx: SessionContext): string {
  if (!ctx.tenantId) throw badRequest('TENANT_REQUIRED', 'change events belong to a tenant: use a token naming one');
  return ctx.tenantId;
}

export type ChangeService = ReturnType<typeof createChangeService>;
