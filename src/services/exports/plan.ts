/**
 * Export plans: the SELECT an export runs, built from the rows API's syntax (table exports) or from
 * guarded analyst SQL, then wrapped in `COPY (...) TO STDOUT` so PostgreSQL formats every row.
 *
 * COPY takes no bind parameters, so the plan's values are inlined as quoted literals
 * (`pg.escapeLiteral`). A quoted literal is of unknown type, exactly like an untyped `$n`, so the
 * statement means the same. Parameters are found by position, never by searching the text: in the
 * builder's SQL outside quoted identifiers and strings, in analyst SQL from the ParamRef locations
 * PostgreSQL's own parser (libpg-query) reports.
 */
import pg from 'pg';
import { parse } from '../data/index.js';
import { badRequest } from '../../errors.js';
import type { TableInfo } from '../data/index.js';
import { filterSql, orderSql, totalOrder, type Params } from '../data/index.js';
import type { RowsQuery } from '../data/index.js';

export const EXPORT_FORMATS = ['csv', 'ndjson'] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

export const CONTENT_TYPES: Record<ExportFormat, string> = {
  csv: 'text/csv; charset=utf-8',
  ndjson: 'application/x-ndjson; charset=utf-8',
};

/** What an export runs; `select` is one SELECT without parameters. */
export interface ExportPlan {
  readonly format: ExportFormat;
  readonly select: string;
  /** Run under `SET LOCAL ROLE strata_analyst` (analyst SQL). */
  readonly analyst: boolean;
  /** statement_timeout in ms (0: off). */
  readonly timeoutMs: number;
  /** Suggested file name, e.g. `run_logs-20260101-120000.csv`. */
  readonly filename: string;
}

const q = pg.escapeIdentifier;

export function checkFormat(format: unknown): ExportFormat {
  if (typeof format === 'string' && (EXPORT_FORMATS as readonly string[]).includes(format)) return format as ExportFormat;
  throw badRequest('INVALID_EXPORT_FORMAT', `format must be one of ${EXPORT_FORMATS.join(', ')}; got ${JSON.stringify(format ?? null)}`, {
    allowed: EXPORT_FORMATS,
  });
}

/**
 * The COPY statement for a plan. CSV: header and RFC 4180 quoting by PostgreSQL. NDJSON: each row is
 * one JSON text (`to_json`), which never holds a raw newline or control byte; COPY's CSV mode with a
 * control byte as quote and delimiter then has nothing to quote or escape, so the JSON leaves as it is.
 */
export function copySql(plan: Pick<ExportPlan, 'format' | 'select'>): string {
  return plan.format === 'csv'
    ? `COPY (${plan.select}) TO STDOUT WITH (FORMAT csv, HEADER true)`
    : `COPY (${plan.select}) TO STDOUT WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')`;
}

/**
 * A value as an SQL literal, typed by context as a parameter would be; arrays as array literals.
 * The one quoting function of values (COPY takes no bind parameters): every value of an export
 * passes here. PostgreSQL text cannot hold NUL (a parameter holding one is refused with 22021), and
 * in statement text it would end the statement early: 400 INVALID_TEXT before anything is sent.
 */
export function sqlLiteral(v: unknown): string {
  if (v === null || v === undefined) return 'NULL';
  if (Array.isArray(v)) return quote(arrayLiteral(v));
  if (v instanceof Date) return quote(v.toISOString());
  if (typeof v === 'object') return quote(JSON.stringify(v));
  return quote(scalarText(v));
}

function quote(text: string): string {
  if (text.includes('\0')) {
    throw badRequest('INVALID_TEXT', 'a value holds a character PostgreSQL cannot store in text (NUL, \\u0000)');
  }
  return pg.escapeLiteral(text);
}

/** Text of a scalar (string, number, boolean, bigint) as a parameter would send it. */
function scalarText(v: unknown): string {
  return typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint' ? v.toString() : JSON.stringify(v);
}

function arrayLiteral(items: unknown[]): string {
  const parts = items.map((x) => {
    if (x === null || x === undefined) return 'NULL';
    if (Array.isArray(x)) return arrayLiteral(x);
    const s = typeof x === 'object' ? JSON.stringify(x) : scalarText(x);
    return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
  });
  return `{${parts.join(',')}}`;
}

/**
 * Replace `$n` in SQL the rows builder made: its text holds quoted identifiers (`"..."`), a few
 * string constants (`'...'`) and parameters, so skipping quoted runs finds every parameter exactly.
 */
export function inlineBuilderParams(text: string, values: readonly unknown[]): string {
  let out = '';
  for (let i = 0; i < text.length; ) {
    const ch = text[i]!;
    if (ch === '"' || ch === "'") {
      let j = i + 1;
      for (; j < text.length; j++) {
        if (text[j] === ch) {
          if (text[j + 1] === ch) j++;
          else break;
        }
      }
      out += text.slice(i, j + 1);
      i = j + 1;
      continue;
    }
    const m = ch === '$' ? /^\$(\d+)/.exec(text.slice(i, i + 12)) : null;
    if (m && !/[A-Za-z0-9_$]/.test(text[i - 1] ?? ' ')) {
      const n = Number(m[1]);
      if (n < 1 || n > values.length) throw new Error(`parameter $${n} has no value`);
      out += sqlLiteral(values[n - 1]);
      i += m[0].length;
      continue;
    }
    out += ch;
    i++;
  }
  return out;
}

interface ParamRefNode {
  number: number;
  location: number;
}

function collectParamRefs(node: unknown, out: ParamRefNode[]): void {
  if (Array.isArray(node)) {
    for (const x of node) collectParamRefs(x, out);
    return;
  }
  if (node === null || typeof node !== 'object') return;
  for (const [k, v] of Object.entries(node)) {
    if (k === 'ParamRef' && v && typeof v === 'object') {
      const p = v as { number?: number; location?: number };
      out.push({ number: p.number ?? 0, location: p.location ?? -1 });
    } else collectParamRefs(v, out);
  }
}

/**
 * Replace each `$n` of a (guarded) statement by its value, at the byte offsets PostgreSQL's parser
 * gives, so `$1` inside a string, comment or dollar-quoted body is never touched.
 */
export async function inlineStatementParams(text: string, values: readonly unknown[]): Promise<string> {
  const refs: ParamRefNode[] = [];
  collectParamRefs(await parse(text), refs);
  if (refs.length === 0) return text;
  const bytes = Buffer.from(text, 'utf8');
  const pieces: Buffer[] = [];
  let at = 0;
  for (const r of refs.sort((a, b) => a.location - b.location)) {
    const token = `$${r.number}`;
    if (r.location < at || bytes.toString('utf8', r.location, r.location + token.length) !== token) {
      throw badRequest('SQL_ERROR', `cannot place parameter ${token} of the statement`);
    }
    if (r.number < 1 || r.number > values.length) throw badRequest('SQL_PARAMS_MISMATCH', `parameter ${token} has no value`);
    pieces.push(bytes.subarray(at, r.location), Buffer.from(sqlLiteral(values[r.number - 1]), 'utf8'));
    at = r.location + token.length;
  }
  pieces.push(bytes.subarray(at));
  return Buffer.concat(pieces).toString('utf8');
}

/**
 * The SELECT of a table export. CSV takes columns (with aliases) only: an embedded relationship is
 * nested JSON and has no flat CSV form (400 EXPORT_EMBED_UNSUPPORTED); NDJSON takes embeds too.
 * Rows come in the requested order with the primary key as tie-breaker (so every export of the same
 * data is byte-identical), or in primary-key order.
 */
export function tableSelect(
  t: TableInfo,
  rq: RowsQuery,
  format: ExportFormat,
  params: Params,
  json: () => string,
): string {
  let list: string;
  if (format === 'csv') {
    const cols: string[] = [];
    for (const s of rq.select) {
      if (s.kind === 'embed') {
        throw badRequest(
          'EXPORT_EMBED_UNSUPPORTED',
          `CSV exports are flat: ${s.relation}(...) embeds nested rows; export it as ndjson or export ${s.relation} separately`,
          { relationship: s.relation },
        );
      }
      const g = params.guard;
      if (s.kind === 'star') {
        for (const c of t.columns) {
          if (g?.omit(t.name, c.name)) continue;
          const e = `t0.${q(c.name)}`;
          const guarded = g ? g.columnSql(t.name, c.name, e) : e;
          cols.push(guarded === e ? e : `${guarded} AS ${q(c.name)}`);
        }
      } else {
        if (!t.columnMap.has(s.name)) {
          throw badRequest('UNKNOWN_COLUMN', `column ${JSON.stringify(s.name)} does not exist in ${t.name}`, { column: s.name, table: t.name });
        }
        const e = `t0.${q(s.name)}`;
        const guarded = g ? g.columnSql(t.name, s.name, e) : e;
        cols.push(s.alias || guarded !== e ? `${guarded} AS ${q(s.alias ?? s.name)}` : e);
      }
    }
    if (cols.length === 0) throw badRequest('INVALID_SELECT', 'select must name at least one column');
    list = cols.join(', ');
  } else {
    list = `${json()}::text`;
  }
  const where = rq.filters.map((f) => filterSql(t, 't0', f, params));
  const order = totalOrder(t, rq.order, params.guard);
  const limit = rq.limit === undefined ? '' : ` LIMIT ${params.add(rq.limit)}`;
  return `SELECT ${list} FROM ${t.qualified} t0${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY ${orderSql('t0', order)}${limit}`;
}

/** `<base>-YYYYMMDD-HHMMSS.<ext>`, safe in a Content-Disposition header and on any file system. */
export function exportFilename(base: string, format: ExportFormat, now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  const safe = base.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 63) || 'export';
  return `${safe}-${stamp}.${format}`;
}
