/**
 * The PII scan (POST /v1/admin/compliance/scan, a job on the `compliance` queue): samples each table
 * and judges each column by its name and its sampled values (detection.ts: email, phone, card numbers
 * passing Luhn, IBANs passing mod 97, IPv4...). A finding carries a confidence, at most three
 * examples already masked (`j***@example.com`, last four digits), whether the column is declared, and
 * a proposed declaration to PUT; nothing is ever declared by the scan.
 *
 * Reads go through tenant sessions (RLS): a tenant admin's scan samples that tenant's rows only; a
 * platform_admin's scan samples every tenant's, a share of the sample each. Only text-like columns
 * are sampled for values (a number or date column is judged by its name), encrypted columns are not
 * (their values are ciphertext).
 */
import type { Database } from '../../db/database.js';
import type { RequestContext } from '../../domain.js';
import { badRequest, notFound } from '../../errors.js';
import type { SchemaRegistry, TableInfo } from '../data/index.js';
import type { JobsService, JobView } from '../jobs/index.js';
import { categoryByValue, judgeColumn } from './detection.js';
import { applyMask, type MaskRule, type PiiCategory } from './masking.js';
import { baseTableNames, q } from './tables.js';

export interface ScanInput {
  tables?: string[];
  sample_size?: number;
}

export interface ScanFinding {
  table: string;
  column: string;
  category: PiiCategory;
  confidence: number;
  by: Array<'name' | 'value'>;
  sampled: number;
  examples: string[];
  declared: boolean;
  proposal: { pii: PiiCategory; encrypted: boolean; masks: Record<string, MaskRule>; plaintext_roles: string[] };
}

export const SCAN_DEFAULT_SAMPLE = 200;
export const SCAN_MAX_SAMPLE = 1000;
const MAX_TENANTS = 100;
const SAMPLED_TYPES = new Set(['text', 'varchar', 'bpchar', 'inet', 'cidr', 'citext']);
const STRONG = new Set<PiiCategory>(['card', 'iban', 'national_id']);

function proposalFor(category: PiiCategory): ScanFinding['proposal'] {
  const shown: MaskRule = category === 'date_of_birth' ? 'year' : 'partial';
  return { pii: category, encrypted: STRONG.has(category), masks: { reader: shown, writer: shown, analyst: 'hash' }, plaintext_roles: ['admin'] };
}

export function createScan(deps: { db: Database; schema: SchemaRegistry }) {
  const { db, schema } = deps;

  async function targetTables(names?: string[]): Promise<TableInfo[]> {
    const tables = await schema.tables();
    const base = await baseTableNames((text) => db.adminQuery<{ name: string }>(text));
    if (names?.length) {
      return names.map((n) => {
        const t = tables.get(n);
        if (!t || !base.has(n)) throw badRequest('UNKNOWN_TABLE', `table ${n} does not exist (or is a view)`);
        return t;
      });
    }
    return [...tables.values()].filter((t) => base.has(t.name)).sort((a, b) => a.name.localeCompare(b.name));
  }

  async function sample(ctx: RequestContext, t: TableInfo, cols: string[], n: number): Promise<Array<Record<string, unknown>>> {
    if (!cols.length) return [];
    const select = cols.map((c) => `${q(c)}::text AS ${q(c)}`).join(', ');
    const sampleOne = async (tenantId: string) =>
      (await db.withTenant({ ...ctx, tenantId }, (tx) => tx.query<Record<string, unknown>>(`SELECT ${select} FROM ${t.qualified} LIMIT ${n}`, [], { final: true }))).rows;
    if (ctx.tenantId) return sampleOne(ctx.tenantId);
    const { rows: tenants } = await db.adminQuery<{ id: string }>(`SELECT id FROM strata.tenants ORDER BY id LIMIT ${MAX_TENANTS}`);
    const out: Array<Record<string, unknown>> = [];
    const share = Math.max(10, Math.ceil(n / Math.max(1, tenants.length)));
    for (const { id } of tenants) {
      if (out.length >= n) break;
      out.push(...(await sampleOne(id)).slice(0, Math.min(share, n - out.length)));
    }
    return out;
  }

  return {
    /** Validate and enqueue a scan; 202 with the job id. */
    async start(ctx: RequestContext, input: ScanInput, jobs: JobsService): Promise<{ job_id: string }> {
      const size = input.sample_size ?? SCAN_DEFAULT_SAMPLE;
      if (!Number.isInteger(size) || size < 1 || size > SCAN_MAX_SAMPLE) throw badRequest('INVALID_SAMPLE_SIZE', `sample_size is 1 to ${SCAN_MAX_SAMPLE} (got ${String(size)})`);
      await targetTables(input.tables);
      return jobs.enqueue(ctx, 'compliance-scan', { tables: input.tables ?? null, sample_size: size });
    },

    /** The scan job of the caller (any for platform_admin): its state, progress and findings. */
    async get(ctx: RequestContext, jobId: string, jobs: JobsService): Promise<JobView> {
      const view = await jobs.get(ctx, jobId);
      if (view.name !== 'compliance-scan') throw notFound('JOB_NOT_FOUND', `job ${jobId} is not a compliance scan`);
      return view;
    },

    /** The job's work: sample every table, judge every column, store and return the findings. */
    async run(
      job: { id: string; ctx: RequestContext; tables: string[] | null; sampleSize: number },
      progress: (done: number, total: number | null) => Promise<void>,
      signal?: AbortSignal,
    ): Promise<{ tables: number; findings: ScanFinding[]; skipped: Array<{ table: string; reason: string }> }> {
      await schema.refresh(); // a worker's registry may predate the last migration
      const tables = await targetTables(job.tables ?? undefined);
      const skipped: Array<{ table: string; reason: string }> = [];
      const { rows: declared } = await db.adminQuery<{ table_name: string; column_name: string; encrypted: boolean; pii: string | null }>(
        `SELECT table_name, column_name, encrypted, pii FROM strata.compliance_columns`,
      );
      const decl = new Map(declared.map((d) => [`${d.table_name}.${d.column_name}`, d]));
      const findings: ScanFinding[] = [];
      await progress(0, tables.length);
      for (const [i, t] of tables.entries()) {
        if (signal?.aborted) throw new Error('cancelled');
        const candidates = t.columns.filter((c) => c.name !== 'tenant_id' && !c.isArray && !t.primaryKey.includes(c.name) && !c.name.endsWith('_bidx'));
        const sampled = candidates.filter((c) => SAMPLED_TYPES.has(c.udt) && !decl.get(`${t.name}.${c.name}`)?.encrypted).map((c) => c.name);
        let rows: Array<Record<string, unknown>>;
        try {
          rows = await sample(job.ctx, t, sampled, job.sampleSize);
        } catch (err) {
          // a table tenant sessions may not read (no grant) is judged by column names only
          const code = (err as { code?: string }).code ?? 'error';
          skipped.push({ table: t.name, reason: code === '42501' || code === 'FORBIDDEN_BY_DATABASE' ? 'not readable by tenant sessions: judged by column names only' : `sampling failed (${code}): judged by column names only` });
          rows = [];
        }
        for (const c of candidates) {
          const values = sampled.includes(c.name) ? rows.map((r) => r[c.name]) : [];
          if (signal?.aborted) throw new Error('cancelled');
          const f = judgeColumn(c.name, values);
          if (!f) continue;
          const examples = values
            .filter((v): v is string => typeof v === 'string' && v !== '' && (f.by.includes('value') ? categoryByValue(v) === f.category : true))
            .slice(0, 3)
            .map((v) => String(applyMask(v, f.category === 'date_of_birth' ? 'year' : 'partial', f.category)));
          findings.push({
            table: t.name,
            column: c.name,
            category: f.category,
            confidence: Math.round(f.confidence * 100) / 100,
            by: f.by,
            sampled: f.sampled,
            examples,
            declared: Boolean(decl.get(`${t.name}.${c.name}`)?.pii),
            proposal: proposalFor(f.category),
          });
        }
        await progress(i + 1, tables.length);
      }
      await db.adminQuery(
        `INSERT INTO strata.compliance_scans (job_id, tenant_id, requested_by, findings) VALUES ($1, $2, $3, $4) ON CONFLICT (job_id) DO UPDATE SET findings = EXCLUDED.findings, finished_at = now()`,
        [job.id, job.ctx.tenantId, job.ctx.actor, JSON.stringify(findings)],
      );
      return { tables: tables.length, findings, skipped };
    },
  };
}

export type ScanService = ReturnType<typeof createScan>;
