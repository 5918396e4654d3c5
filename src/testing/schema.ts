/**
 * What factories know about a database: the schema registry's tables (columns, keys, foreign keys,
 * unique indexes, CHECK constraints) plus what generating valid values needs beyond it: the kind
 * of relation, column defaults, enum labels, and the bounds and allowed values simple CHECKs set.
 */
import type pg from 'pg';
import { createRegistryService, type ColumnInfo, type TableInfo } from '../services/data/index.js';

export type QueryFn = <R extends pg.QueryResultRow = Record<string, unknown>>(text: string, values?: readonly unknown[]) => Promise<pg.QueryResult<R>>;

export interface ColumnRules {
  /** Inclusive bounds from CHECKs such as `x >= 0`, `x BETWEEN 1 AND 10`, `x > 0` (as x >= next). */
  min: number | null;
  max: number | null;
  /** Allowed values from `x IN (...)` (text or numbers) or an enum type. */
  oneOf: Array<string | number> | null;
  /** Longest text allowed (varchar(n), or a CHECK on length(x)). */
  maxLength: number | null;
  /** A CHECK names this column that is not understood: a nullable column is then left NULL. */
  opaqueCheck: boolean;
  /** Part of a unique index (values get a sequence number). */
  unique: boolean;
  /** The default's SQL expression, if any. */
  defaultExpr: string | null;
}

export interface FactoryColumn extends ColumnInfo {
  rules: ColumnRules;
}

export interface FactoryTable extends Omit<TableInfo, 'columns' | 'columnMap'> {
  kind: 'table' | 'partitioned table' | 'view' | 'materialized view';
  columns: FactoryColumn[];
  columnMap: Map<string, FactoryColumn>;
}

export type FactorySchema = Map<string, FactoryTable>;

const EXTRAS = `
SELECT c.relname AS table, c.relkind AS kind,
  (SELECT json_object_agg(a.attname, json_build_object(
      'default', pg_get_expr(d.adbin, d.adrelid),
      'labels', CASE WHEN t.typtype = 'e' THEN (SELECT json_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid) END))
     FROM pg_attribute a JOIN pg_type t ON t.oid = CASE WHEN (SELECT typelem FROM pg_type x WHERE x.oid = a.atttypid AND x.typlen = -1) <> 0
                                                       THEN (SELECT typelem FROM pg_type x WHERE x.oid = a.atttypid) ELSE a.atttypid END
     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname = ANY($1)`;

const KINDS: Record<string, FactoryTable['kind']> = { r: 'table', p: 'partitioned table', v: 'view', m: 'materialized view' };

/** Read the factory schema of the exposed tables (schema `public`) through an owner connection. */
export async function loadFactorySchema(query: QueryFn, schemas: string[] = ['public']): Promise<FactorySchema> {
  const registry = createRegistryService({ db: { adminQuery: query } });
  const tables = await registry.tables();
  const { rows } = await query<{ table: string; kind: string; columns: Record<string, { default: string | null; labels: string[] | null }> | null }>(EXTRAS, [schemas]);
  const extras = new Map(rows.map((r) => [r.table, r]));
  const out: FactorySchema = new Map();
  for (const t of tables.values()) {
    const x = extras.get(t.name);
    const uniqueCols = new Set(t.indexes.filter((i) => i.unique).flatMap((i) => i.columns));
    const columns = t.columns.map((c): FactoryColumn => {
      const extra = x?.columns?.[c.name];
      const rules = rulesFromChecks(c.name, t.checks);
      const labels = extra?.labels ?? null;
      return {
        ...c,
        rules: {
          ...rules,
          oneOf: labels ?? rules.oneOf ?? c.enum,
          maxLength: minOf(c.maxLength, rules.maxLength),
          unique: uniqueCols.has(c.name),
          defaultExpr: extra?.default ?? null,
        },
      };
    });
    out.set(t.name, { ...t, kind: KINDS[x?.kind ?? 'r'] ?? 'table', columns, columnMap: new Map(columns.map((c) => [c.name, c])) });
  }
  return out;
}

const minOf = (a: number | null, b: number | null) => (a === null ? b : b === null ? a : Math.min(a, b));

type Rules = Pick<ColumnRules, 'min' | 'max' | 'oneOf' | 'maxLength' | 'opaqueCheck'>;

/** Bounds and lists for `column` from CHECK definitions (pg_get_constraintdef output). */
export function rulesFromChecks(column: string, checks: Array<{ definition: string }>): Rules {
  const r: Rules = { min: null, max: null, oneOf: null, maxLength: null, opaqueCheck: false };
  const ident = `\\(*"?${column.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}"?\\)*(?:::[a-z ]+)?`;
  const namesColumn = new RegExp(`(^|[^a-z0-9_])"?${column}"?([^a-z0-9_]|$)`);
  for (const { definition } of checks) {
    if (!namesColumn.test(definition)) continue;
    const body = definition.replace(/^CHECK /, '');
    const parts = splitAnd(stripParens(body));
    let understood = parts.length > 0;
    for (const part of parts) {
      const p = stripParens(part);
      const cmp = new RegExp(`^${ident} (>=|<=|>|<) \\(?'?(-?[0-9]+(?:\\.[0-9]+)?)'?\\)?(?:::[a-z ]+)?$`).exec(p);
      const len = new RegExp(`^(?:char_)?length\\(${ident}\\) (<=|<) \\(?([0-9]+)\\)?$`).exec(p);
      const list = new RegExp(`^${ident} = ANY \\(\\(?ARRAY\\[(.*)\\]\\)?(?:::[a-z ]+\\[\\])?\\)$`).exec(p);
      if (cmp) {
        const [op, n] = [cmp[1]!, Number(cmp[2])];
        const step = Number.isInteger(n) ? 1 : 0.01;
        if (op === '>=') r.min = Math.max(r.min ?? -Infinity, n);
        else if (op === '>') r.min = Math.max(r.min ?? -Infinity, n + step);
        else if (op === '<=') r.max = Math.min(r.max ?? Infinity, n);
        else r.max = Math.min(r.max ?? Infinity, n - step);
      } else if (len) {
        const n = Number(len[2]) - (len[1] === '<' ? 1 : 0);
        r.maxLength = minOf(r.maxLength, n);
      } else if (list) {
        const items = [...list[1]!.matchAll(/'((?:[^']|'')*)'(?:::[a-z ]+)?|(-?[0-9]+(?:\.[0-9]+)?)/g)].map((m) =>
          m[1] !== undefined ? m[1].replace(/''/g, "'") : Number(m[2]),
        );
        if (items.length) r.oneOf = items;
        else understood = false;
      } else {
        understood = false;
      }
    }
    if (!understood) r.opaqueCheck = true;
  }
  return r;
}

function stripParens(s: string): string {
  let t = s.trim();
  while (t.startsWith('(') && t.endsWith(')') && balanced(t.slice(1, -1))) t = t.slice(1, -1).trim();
  return t;
}

function balanced(s: string): boolean {
  let depth = 0;
  let quoted = false;
  for (const ch of s) {
    if (ch === "'") quoted = !quoted;
    else if (!quoted && ch === '(') depth++;
    else if (!quoted && ch === ')' && --depth < 0) return false;
  }
  return depth === 0;
}

/** Split on top-level ` AND ` (not inside parentheses or quotes). */
function splitAnd(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let quoted = false;
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const ch = s[i];
    if (ch === "'") quoted = !quoted;
    else if (!quoted && ch === '(') depth++;
    else if (!quoted && ch === ')') depth--;
    else if (!quoted && depth === 0 && s.startsWith(' AND ', i)) {
      out.push(s.slice(start, i));
      start = i + 5;
    }
    if (!quoted && depth === 0 && s.startsWith(' OR ', i)) return []; // a disjunction: not a simple rule
  }
  out.push(s.slice(start));
  return out;
}
