/**
 * The access audit (issue 15): every read that returned plaintext of a declared column is recorded
 * in strata.compliance_audit: actor, role, API key id, time, table and columns, row count, request id.
 *
 * The hot path pays no round trip for it: entries are appended to an in-memory buffer and written in
 * batches (one INSERT of up to AUDIT_BATCH rows, from a JSON array) every AUDIT_FLUSH_MS, or at once
 * when the buffer is full, and on close. The cost on a request is one array push. What a crash of
 * the process between two flushes loses is at most one interval of entries; the design choice is
 * written down in docs/compliance.md.
 */
import type { Database } from '../../db/database.js';
import type { RequestContext, Role } from '../../domain.js';
import { badRequest } from '../../errors.js';
import type { Logger } from 'pino';

export interface AuditEntry {
  tenant_id: string;
  at: string;
  actor: string;
  role: Role;
  api_key_id: string | null;
  table_name: string;
  columns: string[];
  row_count: number;
  request_id: string | null;
  path: string | null;
}

/** What one read recorded, without who and when (kept with a cached answer). */
export interface CapturedAudit {
  table: string;
  columns: string[];
  rows: number;
  path: string;
}

export interface AuditRow extends AuditEntry {
  id: string;
}

export interface AuditFilter {
  tenant?: string;
  actor?: string;
  role?: string;
  table?: string;
  api_key_id?: string;
  request_id?: string;
  since?: string;
  until?: string;
  limit?: number;
  cursor?: string;
}

const AUDIT_FLUSH_MS = 1000;
const AUDIT_BATCH = 500;
/** Past this many unflushed entries (the database unreachable), the oldest are dropped and counted. */
const AUDIT_MAX_BUFFER = 50_000;

/** The API key id of a principal authenticated by X-API-Key (its actor is `apikey:<id>`). */
export const apiKeyIdOf = (actor: string): string | null => (actor.startsWith('apikey:') ? actor.slice('apikey:'.length) : null);

export function createAuditLog(deps: { db: Database; log?: Pick<Logger, 'warn' | 'error'>; flushMs?: number }) {
  const { db } = deps;
  let buffer: AuditEntry[] = [];
  let timer: NodeJS.Timeout | undefined;
  let flushing: Promise<void> = Promise.resolve();
  let dropped = 0;

  async function write(batch: AuditEntry[]): Promise<void> {
    await db.adminQuery(
      `INSERT INTO strata.compliance_audit (tenant_id, at, actor, role, api_key_id, table_name, columns, row_count, request_id, path)
       SELECT tenant_id, at, actor, role, api_key_id, table_name, columns, row_count, request_id, path
         FROM jsonb_to_recordset($1::jsonb) AS x(tenant_id text, at timestamptz, actor text, role text, api_key_id text,
              table_name text, columns text[], row_count int, request_id text, path text)`,
      [JSON.stringify(batch)],
    );
  }

  function flush(): Promise<void> {
    if (timer) clearTimeout(timer);
    timer = undefined;
    flushing = flushing.then(async () => {
      while (buffer.length) {
        const batch = buffer.slice(0, AUDIT_BATCH);
        try {
          await write(batch);
          buffer = buffer.slice(batch.length);
        } catch (err) {
          // kept for the next flush; the entries name columns, never values, so the log is safe
          deps.log?.warn({ err, entries: buffer.length }, 'compliance audit flush failed; will retry');
          schedule();
          return;
        }
      }
    });
    return flushing;
  }

  function schedule() {
    if (timer) return;
    timer = setTimeout(() => void flush(), deps.flushMs ?? AUDIT_FLUSH_MS);
    timer.unref();
  }

  /** Requests whose entries are also collected (a result-cache miss keeps them with the answer). */
  const captures = new WeakMap<RequestContext, CapturedAudit[]>();

  return {
    /**
     * Run `fn` collecting the entries it records for `ctx` (they are recorded as usual too): the
     * result cache stores them with the answer and replays them on a hit (`replay`).
     */
    async capture<T>(ctx: RequestContext, fn: () => Promise<T>): Promise<{ value: T; entries: CapturedAudit[] }> {
      const entries: CapturedAudit[] = [];
      captures.set(ctx, entries);
      try {
        return { value: await fn(), entries };
      } finally {
        captures.delete(ctx);
      }
    },
    /** Record again, for this request, what an earlier computation of the same answer recorded (a cache hit). */
    replay(ctx: RequestContext, entries: readonly CapturedAudit[]): void {
      for (const e of entries) this.record(ctx, e.table, e.columns, e.rows, e.path);
    },
    /** Append one entry (no I/O on the caller's path). */
    record(ctx: RequestContext, table: string, columns: string[], rowCount: number, path: string): void {
      if (!ctx.tenantId) return;
      captures.get(ctx)?.push({ table, columns: [...columns], rows: rowCount, path });
      buffer.push({
        tenant_id: ctx.tenantId,
        at: new Date().toISOString(),
        actor: ctx.actor,
        role: ctx.role,
        api_key_id: apiKeyIdOf(ctx.actor),
        table_name: table,
        columns: [...columns].sort(),
        row_count: rowCount,
        request_id: ctx.requestId ?? null,
        path,
      });
      if (buffer.length > AUDIT_MAX_BUFFER) {
        dropped += buffer.length - AUDIT_MAX_BUFFER;
        buffer = buffer.slice(buffer.length - AUDIT_MAX_BUFFER);
        deps.log?.error({ dropped }, 'compliance audit buffer full: oldest entries dropped');
      }
      if (buffer.length >= AUDIT_BATCH) void flush();
      else schedule();
    },
    flush,
    /** Entries not yet written (for tests and /metrics-style checks). */
    pending: () => buffer.length,
    dropped: () => dropped,
    async close(): Promise<void> {
      await flush();
      if (timer) clearTimeout(timer);
    },
    /**
     * A page of the audit, newest first, keyset-paged by id (`cursor` is the last id seen). A tenant
     * admin's `run` is its tenant session (RLS decides); platform_admin reads across tenants.
     */
    async list(
      run: (text: string, values: unknown[]) => Promise<AuditRow[]>,
      f: AuditFilter,
    ): Promise<{ data: AuditRow[]; next_cursor: string | null }> {
      await flush();
      const limit = Math.min(Math.max(f.limit ?? 100, 1), 1000);
      const where: string[] = [];
      const values: unknown[] = [];
      const add = (v: unknown) => {
        values.push(v);
        return `$${values.length}`;
      };
      if (f.tenant !== undefined) where.push(`tenant_id = ${add(f.tenant)}`);
      if (f.actor !== undefined) where.push(`actor = ${add(f.actor)}`);
      if (f.role !== undefined) where.push(`role = ${add(f.role)}`);
      if (f.table !== undefined) where.push(`table_name = ${add(f.table)}`);
      if (f.api_key_id !== undefined) where.push(`api_key_id = ${add(f.api_key_id)}`);
      if (f.request_id !== undefined) where.push(`request_id = ${add(f.request_id)}`);
      for (const [k, op] of [['since', '>='], ['until', '<']] as const) {
        const v = f[k];
        if (v === undefined) continue;
        if (Number.isNaN(Date.parse(v))) throw badRequest('INVALID_TIMESTAMP', `${k} must be an ISO 8601 timestamp, got ${JSON.stringify(v.slice(0, 64))}`);
        where.push(`at ${op} ${add(v)}::timestamptz`);
      }
      if (f.cursor !== undefined) {
        const id = decodeCursor(f.cursor);
        where.push(`id < ${add(id)}::bigint`);
      }
      const rows = await run(
        `SELECT id::text AS id, tenant_id, to_jsonb(at) #>> '{}' AS at, actor, role, api_key_id, table_name, columns, row_count, request_id, path
           FROM strata.compliance_audit ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ${add(limit + 1)}`,
        values,
      );
      const more = rows.length > limit;
      const data = more ? rows.slice(0, limit) : rows;
      return { data, next_cursor: more ? Buffer.from(`a:${data[data.length - 1]!.id}`).toString('base64url') : null };
    },
  };
}

function decodeCursor(cursor: string): string {
  const m = /^a:(\d{1,19})$/.exec(Buffer.from(cursor, 'base64url').toString('utf8'));
  if (!m) throw badRequest('INVALID_CURSOR', 'cursor is not a next_cursor of this endpoint');
  return m[1]!;
}

export type AuditLog = ReturnType<typeof createAuditLog>;
