/**
 * Time series over a table (or a view's tenant-filtered relation), in the caller's tenant session:
 *   time=<column>  bucket=5m|1h|1d|2w|month|quarter|year  agg=count,avg:duration_ms,max(x)
 *   group=<column>[,<column>]  fill=zero|null|previous  from=<ISO>  to=<ISO>  + rows-API filters
 * Fixed-width buckets use date_bin (aligned on `from`), calendar buckets date_trunc (UTC). With
 * `fill`, every bucket of [from, to) is present (generate_series, per group): empty ones hold 0
 * (zero), null (null) or the group's previous value (previous). Without `fill`, only buckets with
 * rows. The number of buckets is capped (TIMESERIES_MAX_BUCKETS), and so is the answer, inside
 * PostgreSQL: at most TIMESERIES_MAX_POINTS points (groups x buckets, gap-filled ones included: 400
 * TOO_MANY_POINTS) and RESPONSE_MAX_BYTES of JSON (413 RESPONSE_TOO_LARGE).
 */
import pg from 'pg';
import type { Database } from '../../db/database.js';
import type { SessionContext, Tx } from '../../db/session.js';
import { badRequest } from '../../errors.js';
import { boundRowsSql, filterSql, Params, readBounded, tooLarge } from '../data/index.js';
import { parseRowsQuery } from '../data/index.js';
import type { ColumnInfo, SchemaRegistry, TableInfo } from '../data/index.js';

const q = pg.escapeIdentifier;
type QueryString = Record<string, string | string[] | undefined>;

export const FILLS = ['zero', 'null', 'previous'] as const;
export type Fill = (typeof FILLS)[number];
const AGG_FNS = ['count', 'sum', 'avg', 'min', 'max'] as const;
type AggFn = (typeof AGG_FNS)[number];
const OWN_PARAMS = new Set(['time', 'bucket', 'agg', 'group', 'fill', 'from', 'to']);
const NUMERIC = new Set(['int2', 'int4', 'int8', 'numeric', 'float4', 'float8']);
const TIME = new Set(['timestamptz', 'timestamp', 'date']);
const UNIT_MS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };
const UNIT_NAME: Record<string, string> = { s: 'seconds', m: 'minutes', h: 'hours', d: 'days', w: 'weeks' };
const CALENDAR_MONTHS: Record<string, number> = { month: 1, quarter: 3, year: 12 };
const MAX_GROUPS = 3;

export interface TimeseriesInput {
  time?: string;
  bucket?: string;
  agg?: string;
  group?: string;
  fill?: string;
  from?: string;
  to?: string;
  filters: QueryString;
}

type Bucket = { kind: 'bin'; interval: string; ms: number; text: string } | { kind: 'trunc'; unit: string; months: number; text: string };
interface Agg {
  fn: AggFn;
  column?: ColumnInfo;
  name: string;
}

const bad = badRequest;

export function parseBucket(raw: string | undefined): Bucket {
  if (!raw) throw bad('MISSING_PARAMETER', 'bucket is required, e.g. bucket=1h (s, m, h, d, w) or bucket=month', { parameter: 'bucket' });
  const m = /^(\d{1,6})(s|m|h|d|w)$/.exec(raw);
  if (m) {
    const n = Number(m[1]);
    if (n < 1) throw bad('INVALID_BUCKET', `bucket ${JSON.stringify(raw)} must be at least 1 ${UNIT_NAME[m[2]!]}`);
    return { kind: 'bin', interval: `${n} ${UNIT_NAME[m[2]!]}`, ms: n * UNIT_MS[m[2]!]!, text: raw };
  }
  const c = /^(?:1)?(month|quarter|year)$/.exec(raw);
  if (c) return { kind: 'trunc', unit: c[1]!, months: CALENDAR_MONTHS[c[1]!]!, text: raw };
  throw bad('INVALID_BUCKET', `cannot read bucket ${JSON.stringify(raw)}: use <n>s, <n>m, <n>h, <n>d, <n>w, month, quarter or year`, { bucket: raw });
}

function column(t: TableInfo, name: string, what: string): ColumnInfo {
  const c = t.columnMap.get(name);
  if (!c) throw bad('UNKNOWN_COLUMN', `${what} column ${JSON.stringify(name)} does not exist in ${t.name}`, { column: name, table: t.name });
  return c;
}

export function parseAggs(t: TableInfo, raw: string | undefined): Agg[] {
  const items = (raw ?? 'count').split(',').map((s) => s.trim());
  const out = new Map<string, Agg>();
  for (const item of items) {
    const m = /^([a-z]+)(?::([A-Za-z_][A-Za-z0-9_$]*)|\((\*|[A-Za-z_][A-Za-z0-9_$]*)?\))?$/.exec(item);
    const fn = m?.[1] as AggFn | undefined;
    if (!m || !fn || !(AGG_FNS as readonly string[]).includes(fn)) {
      throw bad('INVALID_AGG', `cannot read aggregate ${JSON.stringify(item)}: use count, sum:<column>, avg:<column>, min:<column> or max:<column>`, { agg: item });
    }
    const colName = m[2] ?? (m[3] === '*' ? undefined : m[3]);
    if (fn === 'count') {
      if (colName !== undefined) column(t, colName, 'count');
      const name = colName ? `count_${colName}` : 'count';
      out.set(name, { fn, column: colName ? t.columnMap.get(colName) : undefined, name });
      continue;
    }
    if (colName === undefined) throw bad('INVALID_AGG', `${fn} needs a column, e.g. ${fn}:duration_ms`, { agg: item });
    const c = column(t, colName, fn);
    const ok = c.isArray ? false : fn === 'sum' || fn === 'avg' ? NUMERIC.has(c.udt) : NUMERIC.has(c.udt) || TIME.has(c.udt);
    if (!ok) throw bad('INVALID_AGG', `${fn} cannot aggregate column ${c.name} (${c.type})`, { agg: item, column: c.name });
    out.set(`${fn}_${c.name}`, { fn, column: c, name: `${fn}_${c.name}` });
  }
  return [...out.values()];
}

function aggSql(a: Agg): string {
  if (a.fn === 'count') return a.column ? `count(t0.${q(a.column.name)})::int8` : 'count(*)::int8';
  const col = `t0.${q(a.column!.name)}`;
  if (a.fn === 'sum' || a.fn === 'avg') return `${a.fn}(${col})::float8`;
  return NUMERIC.has(a.column!.udt) ? `${a.fn}(${col})::float8` : `${a.fn}(${col})`;
}

function parseTime(raw: string | undefined, what: string): Date | undefined {
  if (raw === undefined || raw === '') return undefined;
  const d = new Date(raw);
  if (Number.isNaN(d.getTime())) throw bad('INVALID_TIMESTAMP', `${what} ${JSON.stringify(raw)} is not an ISO 8601 timestamp`, { parameter: what });
  return d;
}

function bucketCount(b: Bucket, from: Date, to: Date): number {
  if (b.kind === 'bin') return Math.ceil((to.getTime() - from.getTime()) / b.ms);
  const months = (to.getUTCFullYear() - from.getUTCFullYear()) * 12 + (to.getUTCMonth() - from.getUTCMonth()) + 1;
  return Math.ceil(months / b.months);
}

export interface TimeseriesResult {
  data: Array<Record<string, unknown>>;
  meta: { bucket: string; from: string | null; to: string | null; fill: Fill | null; buckets: number };
}

export function createTimeseriesService(deps: { db: Database; schema: SchemaRegistry; maxBuckets: number; maxLimit: number; maxPoints?: number; maxBytes?: number }) {
  const { db, schema, maxBuckets } = deps;
  const maxPoints = deps.maxPoints ?? 100_000;
  const maxBytes = deps.maxBytes ?? 16 * 1024 * 1024;

  /** Validate everything that can be checked without the database; 400 naming the problem. */
  function plan(t: TableInfo, input: TimeseriesInput) {
    if (!input.time) throw bad('MISSING_PARAMETER', 'time is required: the timestamp column to bucket on', { parameter: 'time' });
    const time = column(t, input.time, 'time');
    if (!TIME.has(time.udt) || time.isArray) throw bad('INVALID_TIME_COLUMN', `time column ${time.name} is ${time.type}, not a date or timestamp`, { column: time.name });
    const bucket = parseBucket(input.bucket);
    const aggs = parseAggs(t, input.agg);
    const groups = input.group ? input.group.split(',').map((g) => column(t, g.trim(), 'group')) : [];
    if (groups.length > MAX_GROUPS) throw bad('INVALID_GROUP', `at most ${MAX_GROUPS} group columns`);
    for (const g of groups) if (g.isArray || g.udt === 'json') throw bad('INVALID_GROUP', `cannot group by ${g.name} (${g.type})`, { column: g.name });
    if (input.fill !== undefined && !(FILLS as readonly string[]).includes(input.fill)) {
      throw bad('INVALID_FILL', `fill must be zero, null or previous, not ${JSON.stringify(input.fill)}`, { fill: input.fill });
    }
    const fill = (input.fill as Fill | undefined) ?? null;
    const from = parseTime(input.from, 'from');
    const to = parseTime(input.to, 'to');
    if (from && to && from.getTime() >= to.getTime()) throw bad('INVALID_RANGE', `from (${input.from}) must be before to (${input.to})`);
    const rq = parseRowsQuery(input.filters, { maxLimit: deps.maxLimit });
    return { time, bucket, aggs, groups, fill, from, to, filters: rq.filters };
  }

  async function run(ctx: SessionContext, t: TableInfo, input: TimeseriesInput): Promise<TimeseriesResult> {
    const p = plan(t, input);
    const timeCol = `t0.${q(p.time.name)}::timestamptz`;
    return db.withTenant(
      ctx,
      async (tx: Tx) => {
        const baseParams = new Params();
        const baseFilters = p.filters.map((f) => filterSql(t, 't0', f, baseParams));
        let { from, to } = p;
        if (p.fill && (!from || !to)) {
          // Gap filling needs bounds: the filtered rows' first and last times fill in the missing ones.
          const where = baseFilters.length ? `WHERE ${baseFilters.join(' AND ')}` : '';
          const { rows } = await tx.query<{ lo: Date | null; hi: Date | null }>(
            `SELECT min(${timeCol}) AS lo, max(${timeCol}) AS hi FROM ${t.qualified} t0 ${where}`,
            baseParams.values,
          );
          const lo = rows[0]?.lo;
          const hi = rows[0]?.hi;
          if (!lo || !hi) return { data: [], meta: { bucket: p.bucket.text, from: from?.toISOString() ?? null, to: to?.toISOString() ?? null, fill: p.fill, buckets: 0 } };
          from ??= lo;
          to ??= new Date(hi.getTime() + 1);
          if (from.getTime() >= to.getTime()) throw bad('INVALID_RANGE', 'from must be before to (the data ends before from)');
        }
        if (from && to) {
          const n = bucketCount(p.bucket, from, to);
          if (n > maxBuckets) throw bad('TOO_MANY_BUCKETS', `${n} buckets of ${p.bucket.text} between from and to; at most ${maxBuckets}`, { buckets: n, max: maxBuckets });
        }
        const params = new Params();
        const filters = p.filters.map((f) => filterSql(t, 't0', f, params));
        const fromP = from ? params.add(from.toISOString()) : undefined;
        const toP = to ? params.add(to.toISOString()) : undefined;
        if (fromP) filters.push(`${timeCol} >= ${fromP}::timestamptz`);
        if (toP) filters.push(`${timeCol} < ${toP}::timestamptz`);
        const b = p.bucket;
        const stepP = params.add(b.kind === 'bin' ? b.interval : `${b.months} months`);
        const origin = fromP ? `${fromP}::timestamptz` : `'2000-01-01T00:00:00Z'::timestamptz`;
        const bucketExpr = b.kind === 'bin' ? `date_bin(${stepP}::interval, ${timeCol}, ${origin})` : `date_trunc(${params.add(b.unit)}, ${timeCol}, 'UTC')`;
        const groupCols = p.groups.map((g, i) => `t0.${q(g.name)} AS g${i}`);
        const where = filters.length ? `WHERE ${filters.join(' AND ')}` : '';
        const data = `SELECT ${[`${bucketExpr} AS bucket`, ...groupCols, ...p.aggs.map((a, i) => `${aggSql(a)} AS a${i}`)].join(', ')} FROM ${t.qualified} t0 ${where} GROUP BY ${['1', ...p.groups.map((_, i) => String(i + 2))].join(', ')}`;
        const gNames = p.groups.map((_, i) => `g${i}`);
        const aNames = p.aggs.map((_, i) => `a${i}`);
        let text: string;
        if (!p.fill || !fromP || !toP) {
          text = `${data} ORDER BY ${[...gNames.map((_, i) => String(i + 2)), '1'].join(', ')}`;
        } else {
          const seriesStart = b.kind === 'bin' ? `${fromP}::timestamptz` : `date_trunc(${params.add(b.unit)}, ${fromP}::timestamptz, 'UTC')`;
          // generate_series over timestamptz steps in the session time zone: pin it to UTC for calendar units
          const series =
            b.kind === 'bin'
              ? `SELECT s AS bucket FROM generate_series(${seriesStart}, ${toP}::timestamptz, ${stepP}::interval) s WHERE s < ${toP}::timestamptz`
              : `SELECT (s AT TIME ZONE 'UTC') AS bucket FROM generate_series(${seriesStart} AT TIME ZONE 'UTC', ${toP}::timestamptz AT TIME ZONE 'UTC', ${stepP}::interval) s WHERE (s AT TIME ZONE 'UTC') < ${toP}::timestamptz`;
          const zero = p.fill === 'zero';
          const zeroable = (a: Agg) => a.fn === 'count' || (a.column !== undefined && NUMERIC.has(a.column.udt));
          const aggOut = p.aggs.map((a, i) => (zero && zeroable(a) ? `COALESCE(d.a${i}, 0) AS a${i}` : `d.a${i}`));
          if (gNames.length === 0) {
            text = `WITH d AS (${data}), s AS (${series}) SELECT s.bucket, ${aggOut.join(', ')} FROM s LEFT JOIN d ON d.bucket = s.bucket ORDER BY s.bucket`;
          } else {
            const on = ['d.bucket = s.bucket', ...gNames.map((g) => `d.${g} IS NOT DISTINCT FROM gs.${g}`)].join(' AND ');
            text = `WITH d AS (${data}), s AS (${series}), gs AS (SELECT DISTINCT ${gNames.join(', ')} FROM d) SELECT s.bucket, ${gNames.map((g) => `gs.${g}`).join(', ')}, ${aggOut.join(', ')} FROM s CROSS JOIN gs LEFT JOIN d ON ${on} ORDER BY ${gNames.map((g) => `gs.${g}`).join(', ')}, s.bucket`;
          }
        }
        // One point more than allowed tells that there were more; PostgreSQL sizes the points it sends.
        const bounded = boundRowsSql(`${text} LIMIT ${params.add(maxPoints + 1)}`, params.add(maxBytes));
        const res = await tx.query<Record<string, unknown>>(bounded, params.values, { final: true });
        const { rows, total, cut } = readBounded(res);
        if (total > maxPoints) {
          throw bad('TOO_MANY_POINTS', `the time series has more than ${maxPoints} points (groups x buckets); narrow from/to, use a larger bucket, fewer groups or a filter`, {
            max: maxPoints,
          });
        }
        if (cut) throw tooLarge('the time series', maxBytes, 'RESPONSE_MAX_BYTES', 'narrow from/to, use a larger bucket or fewer groups');
        const out = rows.map((r) => {
          const row: Record<string, unknown> = { bucket: (r['bucket'] as Date).toISOString() };
          if (p.groups.length) row['group'] = Object.fromEntries(p.groups.map((g, i) => [g.name, r[`g${i}`]]));
          p.aggs.forEach((a, i) => {
            const v = r[aNames[i]!];
            row[a.name] = a.fn === 'count' && v !== null ? Number(v) : v instanceof Date ? v.toISOString() : v;
          });
          return row;
        });
        if (p.fill === 'previous') fillPrevious(out, p.aggs.map((a) => a.name));
        return { data: out, meta: { bucket: p.bucket.text, from: from?.toISOString() ?? null, to: to?.toISOString() ?? null, fill: p.fill, buckets: out.length } };
      },
      { readOnly: true },
    );
  }

  return {
    /** Validate only (for callers that want 400s before anything else). */
    plan,
    /** A time series of a registry table. */
    async table(ctx: SessionContext, table: string, qs: QueryString): Promise<TimeseriesResult> {
      return run(ctx, await schema.table(table), splitInput(qs));
    },
    /** A time series of any relation described as a TableInfo (a view's tenant-filtered relation). */
    relation: (ctx: SessionContext, t: TableInfo, qs: QueryString) => run(ctx, t, splitInput(qs)),
  };
}

/** Carry each group's last non-null value forward into empty buckets (rows are ordered by group, then bucket). */
function fillPrevious(rows: Array<Record<string, unknown>>, names: string[]): void {
  let group: string | undefined;
  const last = new Map<string, unknown>();
  for (const r of rows) {
    const g = JSON.stringify(r['group'] ?? null);
    if (g !== group) {
      group = g;
      last.clear();
    }
    for (const n of names) {
      if (r[n] === null || r[n] === undefined) r[n] = last.get(n) ?? null;
      else last.set(n, r[n]);
    }
  }
}

export function splitInput(qs: QueryString): TimeseriesInput {
  const one = (k: string): string | undefined => {
    const v = qs[k];
    if (Array.isArray(v)) {
      if (v.length > 1) throw bad('DUPLICATE_PARAMETER', `parameter ${k} was given more than once`);
      return v[0];
    }
    return v;
  };
  const filters: QueryString = {};
  for (const [k, v] of Object.entries(qs)) if (!OWN_PARAMS.has(k)) filters[k] = v;
  for (const k of ['select', 'order', 'limit', 'cursor', 'count']) {
    if (k in filters) throw bad('INVALID_PARAMETER', `${k} does not apply to a time series`, { parameter: k });
  }
  return { time: one('time'), bucket: one('bucket'), agg: one('agg'), group: one('group'), fill: one('fill'), from: one('from'), to: one('to'), filters };
}

export type TimeseriesService = ReturnType<typeof createTimeseriesService>;
