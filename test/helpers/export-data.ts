/**
 * Data for the export tests: N pipelines of tenant acme (ids 2, 4, 6...) with names that need CSV
 * quoting (commas, quotes, newlines, CR LF), unicode, NULL and empty descriptions, interleaved with
 * globex rows (odd ids) that must never appear in acme's exports. The expectation is computed here in
 * JavaScript from the row number, independently of PostgreSQL's formatting.
 */
import type { Database } from '../../src/db/database.js';

export const ACME_ROWS = 210_000;
export const GLOBEX_ROWS = 3_000;

export interface PipelineRow {
  id: number;
  name: string;
  description: string | null;
}

/** The name and description of row `i` (the SQL in seedPipelines makes the same). */
export function acmeRow(i: number): PipelineRow {
  const kinds = [
    `plain ${i}`,
    `comma, ${i}`,
    `quote "q" ${i}`,
    `multi\nline ${i}`,
    `unicode é漢字🙂 ${i}`,
    `crlf\r\n${i}`,
    `  spaced ${i} `,
  ];
  const name = kinds[i % 7]!;
  const description = i % 5 === 0 ? null : i % 5 === 1 ? '' : i % 5 === 2 ? `d,"${i}"` : `d${i}`;
  return { id: 2 * i, name, description };
}

export function globexRow(i: number): PipelineRow {
  return { id: 2 * i + 1, name: `globex-secret ${i}`, description: `globex ${i}` };
}

/** Seed both tenants' pipelines through the admin connection (tenant ids given explicitly). */
export async function seedPipelines(db: Database): Promise<void> {
  await db.adminQuery(`
    INSERT INTO public.pipelines (id, tenant_id, name, description)
    SELECT 2 * i, 'acme',
           (ARRAY['plain ' || i, 'comma, ' || i, 'quote "q" ' || i, E'multi\\nline ' || i,
                  'unicode é漢字🙂 ' || i, E'crlf\\r\\n' || i, '  spaced ' || i || ' '])[i % 7 + 1],
           CASE i % 5 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN 'd,"' || i || '"' ELSE 'd' || i END
      FROM generate_series(1, ${ACME_ROWS}) i`);
  await db.adminQuery(`
    INSERT INTO public.pipelines (id, tenant_id, name, description)
    SELECT 2 * i + 1, 'globex', 'globex-secret ' || i, 'globex ' || i FROM generate_series(1, ${GLOBEX_ROWS}) i`);
  await db.adminQuery('ANALYZE public.pipelines');
}

/** RFC 4180 as PostgreSQL writes it: quote when the value holds , " CR or LF, or is empty; NULL is nothing. */
export function csvField(v: string | number | null): string {
  if (v === null) return '';
  const s = String(v);
  return s === '' || /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function expectedCsv(rows: PipelineRow[]): string {
  return ['id,name,description\n', ...rows.map((r) => `${csvField(r.id)},${csvField(r.name)},${csvField(r.description)}\n`)].join('');
}

export function expectedNdjson(rows: PipelineRow[]): string {
  return rows.map((r) => `${JSON.stringify({ id: r.id, name: r.name, description: r.description })}\n`).join('');
}

export const allAcme = (): PipelineRow[] => Array.from({ length: ACME_ROWS }, (_, k) => acmeRow(k + 1));
export const allGlobex = (): PipelineRow[] => Array.from({ length: GLOBEX_ROWS }, (_, k) => globexRow(k + 1));
