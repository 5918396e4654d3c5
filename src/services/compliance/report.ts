/**
 * The compliance report (GET /v1/admin/compliance/report): declared columns and subject tables, how
 * much of the last scan's findings the declarations cover, the encryption status of each encrypted
 * column (values under each key version and values still in plaintext, counted through the tenant's
 * own session, each count capped), key ages, rotations, erasures and their outcome, and the size of
 * the access audit when strata.compliance_audit exists. A tenant admin's report covers its tenant;
 * platform_admin's (tokens without a tenant) covers every tenant (counts over the first 100).
 */
import type { Database } from '../../db/database.js';
import type { RequestContext } from '../../domain.js';
import type { SchemaRegistry } from '../data/index.js';
import type { MasterKeys } from './keyring.js';
import { q } from './tables.js';

/** Values counted per column and tenant at most (the report stays cheap on big tables). */
export const REPORT_COUNT_CAP = 100_000;
const MAX_TENANTS = 100;

export function createReport(deps: { db: Database; schema: SchemaRegistry; masterKeys: MasterKeys | null }) {
  const { db } = deps;

  async function encryptionStatus(ctx: RequestContext, tenants: string[]) {
    const { rows: cols } = await db.adminQuery<{ table_name: string; column_name: string; searchable: boolean }>(
      `SELECT table_name, column_name, searchable FROM strata.compliance_columns WHERE encrypted ORDER BY table_name, column_name`,
    );
    const tables = await deps.schema.tables();
    const out = [];
    for (const c of cols) {
      const t = tables.get(c.table_name);
      if (!t?.columnMap.has(c.column_name)) continue;
      const byVersion: Record<string, number> = {};
      let plaintext = 0;
      let capped = false;
      for (const tenantId of tenants) {
        const { rows } = await db.withTenant({ ...ctx, tenantId }, (tx) =>
          tx.query<{ v: string | null; n: string }>(
            `SELECT CASE WHEN v LIKE 'sx1.%' THEN split_part(v, '.', 2) WHEN v LIKE 'sxs1.%' THEN 'subject' END AS v, count(*) AS n
               FROM (SELECT ${q(c.column_name)}::text AS v FROM ${t.qualified} WHERE ${q(c.column_name)} IS NOT NULL LIMIT ${REPORT_COUNT_CAP + 1}) s GROUP BY 1`,
            [],
            { final: true },
          ),
        );
        let seen = 0;
        for (const r of rows) {
          seen += Number(r.n);
          if (r.v === null) plaintext += Number(r.n);
          else byVersion[r.v] = (byVersion[r.v] ?? 0) + Number(r.n);
        }
        if (seen > REPORT_COUNT_CAP) capped = true;
      }
      const encrypted = Object.values(byVersion).reduce((a, b) => a + b, 0);
      out.push({ table: c.table_name, column: c.column_name, searchable: c.searchable, encrypted_values: encrypted, plaintext_values: plaintext, by_key_version: byVersion, capped });
    }
    return out;
  }

  return {
    async build(ctx: RequestContext) {
      const tenantId = ctx.tenantId;
      const scopeTenants = tenantId ? [tenantId] : (await db.adminQuery<{ id: string }>(`SELECT id FROM strata.tenants ORDER BY id LIMIT ${MAX_TENANTS}`)).rows.map((r) => r.id);
      const { rows: declared } = await db.adminQuery<{ table: string; column: string; encrypted: boolean; searchable: boolean; pii: string | null }>(
        `SELECT table_name AS table, column_name AS column, encrypted, searchable, pii FROM strata.compliance_columns ORDER BY 1, 2`,
      );
      const { rows: subjects } = await db.adminQuery<{ table: string; columns: string[]; action: string }>(
        `SELECT table_name AS table, columns, action FROM strata.compliance_subjects ORDER BY 1`,
      );
      // the last scan of this scope (a tenant's own, or a platform-wide one)
      const { rows: scans } = await db.adminQuery<{ job_id: string; finished_at: Date; findings: Array<{ table: string; column: string; category: string; confidence: number }> }>(
        `SELECT job_id, finished_at, findings FROM strata.compliance_scans WHERE tenant_id IS NOT DISTINCT FROM $1 ORDER BY finished_at DESC LIMIT 1`,
        [tenantId],
      );
      const isDeclared = new Set(declared.filter((d) => d.pii || d.encrypted).map((d) => `${d.table}.${d.column}`));
      const last = scans[0];
      const undeclared = last ? last.findings.filter((f) => !isDeclared.has(`${f.table}.${f.column}`)).map((f) => ({ table: f.table, column: f.column, category: f.category, confidence: f.confidence })) : [];
      const scan = last
        ? {
            job_id: last.job_id,
            finished_at: last.finished_at.toISOString(),
            findings: last.findings.length,
            declared: last.findings.length - undeclared.length,
            coverage: last.findings.length ? Math.round(((last.findings.length - undeclared.length) / last.findings.length) * 1000) / 1000 : 1,
            undeclared,
          }
        : null;
      const { rows: keys } = await db.adminQuery<{ tenant: string; kind: string; version: number; master_key_id: string; created_at: Date; retired_at: Date | null }>(
        `SELECT tenant_id AS tenant, kind, version, master_key_id, created_at, retired_at FROM strata.tenant_keys WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY 1, 2, 3`,
        [tenantId],
      );
      const now = Date.now();
      const { rows: erasures } = await db.adminQuery<{ id: string; tenant_id: string; requested_at: Date; requested_by: string; outcome: string; report: { totals: { deleted: number; anonymized: number }; crypto_shredded: boolean; backups: unknown[] } }>(
        `SELECT id, tenant_id, requested_at, requested_by, outcome, report FROM strata.compliance_erasures WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY requested_at DESC LIMIT 20`,
        [tenantId],
      );
      const { rows: outcomes } = await db.adminQuery<{ outcome: string; n: string }>(
        `SELECT outcome, count(*) AS n FROM strata.compliance_erasures WHERE $1::text IS NULL OR tenant_id = $1 GROUP BY outcome`,
        [tenantId],
      );
      const { rows: rotations } = await db.adminQuery<{ id: string; kind: string; tenant_id: string | null; target: string; state: string; done: string; started_at: Date; finished_at: Date | null }>(
        `SELECT id, kind, tenant_id, target, state, done, started_at, finished_at FROM strata.key_rotations WHERE $1::text IS NULL OR tenant_id = $1 OR (kind = 'master' AND $1::text IS NULL) ORDER BY started_at DESC LIMIT 20`,
        [tenantId],
      );
      return {
        generated_at: new Date(now).toISOString(),
        scope: { tenant: tenantId },
        declared_columns: declared,
        subjects,
        scan,
        encryption: await encryptionStatus(ctx, scopeTenants),
        keys: keys.map((k) => ({
          tenant: k.tenant,
          kind: k.kind,
          version: k.version,
          master_key_id: k.master_key_id,
          created_at: k.created_at.toISOString(),
          age_days: Math.floor((now - k.created_at.getTime()) / 86_400_000),
          retired_at: k.retired_at?.toISOString() ?? null,
        })),
        master_keys: ctx.role === 'platform_admin' && deps.masterKeys ? { active: deps.masterKeys.activeId, configured: [...deps.masterKeys.ids] } : null,
        rotations: rotations.map((r) => ({ ...r, done: Number(r.done), started_at: r.started_at.toISOString(), finished_at: r.finished_at?.toISOString() ?? null })),
        erasures: {
          total: outcomes.reduce((a, o) => a + Number(o.n), 0),
          by_outcome: Object.fromEntries(outcomes.map((o) => [o.outcome, Number(o.n)])),
          recent: erasures.map((e) => ({
            id: e.id,
            tenant: e.tenant_id,
            requested_at: e.requested_at.toISOString(),
            requested_by: e.requested_by,
            outcome: e.outcome,
            rows_deleted: e.report.totals.deleted,
            rows_anonymized: e.report.totals.anonymized,
            crypto_shredded: e.report.crypto_shredded,
            backups_holding: e.report.backups.length,
          })),
        },
        audit: await auditSize(tenantId),
      };
    },
  };

  /** strata.compliance_audit is another part of issue 15 (migration 0012): read only when it exists. */
  async function auditSize(tenantId: string | null): Promise<{ available: boolean; entries: number | null }> {
    const { rows } = await db.adminQuery<{ t: string | null; has_tenant: boolean }>(
      `SELECT to_regclass('strata.compliance_audit')::text AS t,
              EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'strata' AND table_name = 'compliance_audit' AND column_name = 'tenant_id') AS has_tenant`,
    );
    if (!rows[0]?.t) return { available: false, entries: null };
    const filtered = tenantId && rows[0].has_tenant;
    const { rows: n } = await db.adminQuery<{ n: string }>(`SELECT count(*) AS n FROM strata.compliance_audit ${filtered ? 'WHERE tenant_id = $1' : ''}`, filtered ? [tenantId] : []);
    return { available: true, entries: Number(n[0]!.n) };
  }
}

export type ReportService = ReturnType<typeof createReport>;
