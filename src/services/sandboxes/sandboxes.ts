/**
 * Tenant sandboxes: the records in strata.sandboxes (created, listed, resolved for a request,
 * deleted, swept when expired) and the databases they name. The copy itself is a job
 * (src/services/sandboxes/copy.ts, queue `sandboxes`); this file never copies rows.
 *
 * Who may do what: a tenant admin creates, lists and deletes the sandboxes of its own tenant; a
 * platform_admin those of any tenant. A request is served against a sandbox only when the sandbox
 * belongs to the request's own tenant (resolve()), so a sandbox never reaches another tenant.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Database } from '../../db/database.js';
import type { RequestContext, SandboxTarget } from '../../domain.js';
import { AppError, badRequest, conflict, forbidden, notFound } from '../../errors.js';
import type { JobsService } from '../jobs/index.js';

/** Sandbox names: what X-Strata-Sandbox and the `sandbox` claim carry (also a CHECK in 0014). */
export const SANDBOX_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/;
/** The header naming the sandbox a request is served against. */
export const SANDBOX_HEADER = 'x-strata-sandbox';

export type SandboxStatus = 'creating' | 'ready' | 'failed';

export interface SandboxView {
  id: string;
  tenant: string;
  name: string;
  status: SandboxStatus | 'expired';
  anonymized: boolean;
  job_id: string | null;
  error: string | null;
  tables: number | null;
  rows: number | null;
  created_by: string;
  created_at: string;
  ready_at: string | null;
  expires_at: string;
}

interface Row {
  id: string;
  tenant_id: string;
  name: string;
  database: string;
  status: SandboxStatus;
  anonymized: boolean;
  job_id: string | null;
  error: string | null;
  tables: number | null;
  rows: string | null;
  created_by: string;
  created_at: Date;
  ready_at: Date | null;
  expires_at: Date;
  expired: boolean;
}

const COLUMNS = `id, tenant_id, name, database, status, anonymized, job_id, error, tables, rows::text AS rows, created_by,
  created_at, ready_at, expires_at, expires_at <= now() AS expired`;

export const quoteIdent = (s: string) => `"${s.replace(/"/g, '""')}"`;
/** The database of a sandbox id: derived, never taken from input. */
export const databaseFor = (id: string) => `strata_sbx_${id.replace(/-/g, '')}`;

function view(r: Row): SandboxView {
  return {
    id: r.id,
    tenant: r.tenant_id,
    name: r.name,
    status: r.expired ? 'expired' : r.status,
    anonymized: r.anonymized,
    job_id: r.job_id,
    error: r.error,
    tables: r.tables,
    rows: r.rows === null ? null : Number(r.rows),
    created_by: r.created_by,
    created_at: r.created_at.toISOString(),
    ready_at: r.ready_at?.toISOString() ?? null,
    expires_at: r.expires_at.toISOString(),
  };
}

export interface CreateSandboxInput {
  tenant: string;
  name: string;
  anonymize?: boolean;
  ttl_s?: number;
}

export interface SandboxServiceDeps {
  db: Database;
  log: Pick<Logger, 'info' | 'warn'>;
  ttlS: number;
  maxPerTenant: number;
}

/** Drop a sandbox database (its sessions are ended first); absent is fine. */
export async function dropSandboxDatabase(db: Database, database: string): Promise<void> {
  await db.closeSandbox(database);
  await db.adminQuery(`DROP DATABASE IF EXISTS ${quoteIdent(database)} WITH (FORCE)`);
}

export function createSandboxService(deps: SandboxServiceDeps) {
  const { db, log } = deps;

  /** The tenant whose sandboxes the caller may manage: its own, or (platform_admin) the one named. */
  function scopeOf(ctx: RequestContext, tenant: string | undefined): string | null {
    if (ctx.role === 'platform_admin') return tenant ?? null;
    if (tenant !== undefined && tenant !== ctx.tenantId) {
      throw forbidden('TENANT_MISMATCH', `a tenant admin manages the sandboxes of its own tenant (${ctx.tenantId ?? 'none'}) only, not of ${tenant}`);
    }
    return ctx.tenantId;
  }

  async function find(ctx: RequestContext, id: string): Promise<Row> {
    const scope = scopeOf(ctx, undefined);
    const { rows } = await db.adminQuery<Row>(`SELECT ${COLUMNS} FROM strata.sandboxes WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)`, [id, scope]);
    const r = rows[0];
    if (!r) throw notFound('SANDBOX_NOT_FOUND', `no sandbox ${id}`);
    return r;
  }

  async function remove(r: Pick<Row, 'id' | 'database' | 'tenant_id' | 'name'>, reason: string): Promise<void> {
    // expired first: from here no request resolves it and a copy still running stops; the record
    // goes only once the database is gone, so a failed drop is tried again by the next sweep
    await db.adminQuery("UPDATE strata.sandboxes SET expires_at = least(expires_at, now() - interval '1 second') WHERE id = $1", [r.id]);
    await dropSandboxDatabase(db, r.database);
    await db.adminQuery('DELETE FROM strata.sandboxes WHERE id = $1', [r.id]);
    log.info({ sandbox: r.id, tenant: r.tenant_id, name: r.name, reason }, 'sandbox dropped');
  }

  return {
    /**
     * Record a sandbox and enqueue its copy (job `sandbox-create`). Refused before anything is
     * written: unknown tenant (404), another tenant's (403),
     * a name taken (409 SANDBOX_EXISTS), the tenant at SANDBOX_MAX_PER_TENANT (409).
     */
    async create(ctx: RequestContext, input: CreateSandboxInput, jobs: JobsService): Promise<{ sandbox: SandboxView; job_id: string }> {
      const tenant = scopeOf(ctx, input.tenant);
      if (tenant === null) throw badRequest('TENANT_REQUIRED', 'name the tenant whose rows the sandbox copies');
      const { rows: known } = await db.adminQuery('SELECT 1 FROM strata.tenants WHERE id = $1', [tenant]);
      if (!known.length) throw notFound('TENANT_NOT_FOUND', `tenant ${tenant} is not registered`);
      // expired sandboxes not yet swept neither count nor keep their names
      const { rows: stale } = await db.adminQuery<Row>(`SELECT ${COLUMNS} FROM strata.sandboxes WHERE tenant_id = $1 AND expires_at <= now()`, [tenant]);
      for (const r of stale) await remove(r, 'expired');
      const id = randomUUID();
      const ttlS = input.ttl_s ?? deps.ttlS;
      const created = await db.admin.with(async (c) => {
        await c.query('BEGIN');
        try {
          // one tenant's creations in turn, so the count below holds
          await c.query("SELECT pg_advisory_xact_lock(hashtext('strata.sandboxes:' || $1))", [tenant]);
          const { rows: taken } = await c.query<{ n: number; same: boolean }>(
            'SELECT count(*)::int AS n, coalesce(bool_or(name = $2), false) AS same FROM strata.sandboxes WHERE tenant_id = $1',
            [tenant, input.name],
          );
          const t = taken[0] ?? { n: 0, same: false };
          if (t.same) throw conflict('SANDBOX_EXISTS', `tenant ${tenant} already has a sandbox named ${input.name}`);
          if (t.n >= deps.maxPerTenant) {
            throw conflict('SANDBOX_LIMIT_REACHED', `tenant ${tenant} has ${t.n} sandboxes, the most allowed (SANDBOX_MAX_PER_TENANT=${deps.maxPerTenant}); delete one first`);
          }
          const { rows } = await c.query<Row>(
            `INSERT INTO strata.sandboxes (id, tenant_id, name, database, anonymized, created_by, expires_at)
             VALUES ($1, $2, $3, $4, $7, $5, now() + make_interval(secs => $6)) RETURNING ${COLUMNS}`,
            [id, tenant, input.name, databaseFor(id), ctx.actor, ttlS, input.anonymize === true],
          );
          await c.query('COMMIT');
          return rows[0] as Row;
        } catch (err) {
          await c.query('ROLLBACK').catch(() => undefined);
          throw err;
        }
      });
      try {
        // the job belongs to the sandbox's tenant: its admin follows it at /v1/jobs/{id}
        const { job_id } = await jobs.enqueue({ ...ctx, tenantId: tenant }, 'sandbox-create', { sandbox_id: id });
        await db.adminQuery('UPDATE strata.sandboxes SET job_id = $2 WHERE id = $1', [id, job_id]);
        log.info({ sandbox: id, tenant, name: input.name, job_id }, 'sandbox requested');
        return { sandbox: { ...view(created), job_id }, job_id };
      } catch (err) {
        await db.adminQuery('DELETE FROM strata.sandboxes WHERE id = $1', [id]).catch(() => undefined);
        throw err;
      }
    },

    /** The caller's tenant's sandboxes (platform_admin: all, or those of `tenant`). */
    async list(ctx: RequestContext, tenant?: string): Promise<SandboxView[]> {
      const scope = scopeOf(ctx, tenant);
      const { rows } = await db.adminQuery<Row>(
        `SELECT ${COLUMNS} FROM strata.sandboxes WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY tenant_id, created_at LIMIT 1000`,
        [scope],
      );
      return rows.map(view);
    },

    async get(ctx: RequestContext, id: string): Promise<SandboxView> {
      return view(await find(ctx, id));
    },

    /** Drop a sandbox (any state: a copy still running stops at its next step). */
    async delete(ctx: RequestContext, id: string, jobs?: JobsService): Promise<SandboxView> {
      const r = await find(ctx, id);
      await remove(r, `deleted by ${ctx.actor}`);
      if (r.status === 'creating' && r.job_id && jobs) await jobs.cancel({ ...ctx, tenantId: r.tenant_id }, r.job_id).catch(() => undefined);
      return view(r);
    },

    /**
     * The sandbox `name` of the request's tenant, ready and unexpired, for serving a request:
     * 404 SANDBOX_NOT_FOUND when the tenant has none of that name (another tenant's sandbox is
     * not found either), 409 SANDBOX_NOT_READY while copying or after a failed copy, 410
     * SANDBOX_EXPIRED past its expiry.
     */
    async resolve(tenantId: string, name: string): Promise<SandboxTarget> {
      const { rows } = await db.adminQuery<Row>(`SELECT ${COLUMNS} FROM strata.sandboxes WHERE tenant_id = $1 AND name = $2`, [tenantId, name]);
      const r = rows[0];
      if (!r) throw notFound('SANDBOX_NOT_FOUND', `tenant ${tenantId} has no sandbox named ${name}`);
      if (r.expired) throw new AppError(410, 'SANDBOX_EXPIRED', `sandbox ${name} expired at ${r.expires_at.toISOString()}`);
      if (r.status !== 'ready') {
        throw conflict('SANDBOX_NOT_READY', r.status === 'failed' ? `sandbox ${name} failed to copy: ${r.error ?? 'unknown error'}` : `sandbox ${name} is still being copied (job ${r.job_id ?? '?'})`);
      }
      return { id: r.id, database: r.database };
    },

    /** Drop every expired sandbox (the sweep, SWEEP_CRON). Returns how many went. */
    async sweep(): Promise<number> {
      const { rows } = await db.adminQuery<Row>(`SELECT ${COLUMNS} FROM strata.sandboxes WHERE expires_at <= now() ORDER BY expires_at LIMIT 100`);
      let n = 0;
      for (const r of rows) {
        try {
          await remove(r, 'expired');
          n++;
        } catch (err) {
          log.warn({ sandbox: r.id, err }, 'could not drop an expired sandbox; the next sweep tries again');
        }
      }
      return n;
    },
  };
}

export type SandboxService = ReturnType<typeof createSandboxService>;
