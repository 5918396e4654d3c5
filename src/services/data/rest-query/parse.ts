/**
 * Parser for the PostgREST-style query syntax of the rows API:
 *   select=id,name,runs:pipeline_runs(id,status)   columns, aliases and embedded relationships
 *   status=eq.open  score=gte.3  tags=cs.{x}  id=in.(1,2)  name=not.like.*x*  done=is.null
 *   or=(a.eq.1,b.is.null,and(c.gt.2,d.lt.3))  and=(...)
 *   order=created_at.desc.nullslast,id   limit=50   cursor=...   count=exact|estimated
 *   <embed>.order=...  <embed>.limit=...  <embed>.<column>=op.value
 * Produces a syntax tree only; names are checked against the schema registry by the builder.
 */
import { badRequest } from '../../../errors.js';

export const OPERATORS = [
  'eq', 'neq', 'gt', 'gte', 'lt', 'lte', 'like', 'ilike', 'match', 'imatch', 'in', 'is', 'isdistinct',
  'cs', 'cd', 'ov', 'sl', 'sr', 'nxl', 'nxr', 'adj', 'fts', 'plfts', 'phfts', 'wfts',
] as const;
export type Operator = (typeof OPERATORS)[number];
/** Operators that take a quantifier: `like(any).{a*,b*}`, `eq(all).{1,2}`. */
export const QUANTIFIABLE: readonly Operator[] = ['eq', 'neq', 'gt', 'gte', 'lt', 'lte', 'like', 'ilike', 'match', 'imatch'];

/** One step of a JSON path: `->key` (JSON) or `->>key` (text); numeric keys index arrays. */
export interface JsonStep {
  op: '->' | '->>';
  key: string;
}

export type SelectItem =
  | { kind: 'star' }
  | { kind: 'column'; name: string; alias?: string; cast?: string; path?: JsonStep[] }
  | {
      kind: 'embed';
      relation: string;
      alias?: string;
      select: SelectItem[];
      /** `!fk_name` or `!column`: which relationship, when several lead to the same table. */
      hint?: string;
      /** `!inner`: parents without a matching embedded row are left out. */
      inner?: boolean;
      /** `...rel(cols)`: the embedded columns are lifted into the parent (to-one only). */
      spread?: boolean;
    };

export type Filter =
  | { kind: 'cond'; column: string; op: Operator; not: boolean; value: string; language?: string; quant?: 'any' | 'all'; path?: JsonStep[] }
  | { kind: 'and' | 'or'; not: boolean; items: Filter[] };

export interface OrderItem {
  column: string;
  direction: 'asc' | 'desc';
  nulls?: 'first' | 'last';
  /** PostgREST face only: a JSON path under the column (`data->>a.desc`). */
  path?: JsonStep[];
  /** PostgREST face only: a column of an embedded to-one resource (`authors(name).desc`). */
  relation?: string;
}

/** Options that apply to one embedded relationship (`runs.order=`, `runs.limit=`, `runs.status=`). */
export interface EmbedOptions {
  filters: Filter[];
  order: OrderItem[];
  limit?: number;
  offset?: number;
}

export interface RowsQuery {
  select: SelectItem[];
  filters: Filter[];
  order: OrderItem[];
  limit?: number;
  cursor?: string;
  count?: 'exact' | 'estimated';
  /** Keyed by the embed's alias path (e.g. `runs` or `runs.steps`). */
  embeds: Map<string, EmbedOptions>;
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_$]*$/;
const RESERVED = new Set(['select', 'order', 'limit', 'cursor', 'count', 'or', 'and', 'not.or', 'not.and', 'on_conflict', 'columns']);

const fail = (code: string, message: string, details?: unknown) => badRequest(code, message, details);

function identifier(name: string, what: string): string {
  if (!IDENT.test(name) || name.length > 63) throw fail('INVALID_IDENTIFIER', `${what} ${JSON.stringify(name)} is not a valid identifier`);
  return name;
}

/** Split on commas that are not inside parentheses, braces or double quotes. */
export function splitTopLevel(input: string, sep = ','): string[] {
  const out: string[] = [];
  let depth = 0;
  let quoted = false;
  let cur = '';
  for (let i = 0; i < input.length; i++) {
    const ch = input[i]!;
    if (ch === '"' && input[i - 1] !== '\\') quoted = !quoted;
    if (!quoted) {
      if (ch === '(' || ch === '{' || ch === '[') depth++;
      else if (ch === ')' || ch === '}' || ch === ']') depth--;
      if (depth < 0) throw fail('INVALID_SYNTAX', `unbalanced parentheses in ${JSON.stringify(input)}`);
      if (ch === sep && depth === 0) {
        out.push(cur);
        cur = '';
        continue;
      }
    }
    cur += ch;
  }
  if (depth !== 0 || quoted) throw fail('INVALID_SYNTAX', `unbalanced parentheses or quotes in ${JSON.stringify(input)}`);
  out.push(cur);
  return out;
}

/**
 * Bounds of a select list, checked while parsing (400 before anything runs): each item can make
 * every row larger (an alias repeats a column, an embed nests up to `limit` rows per row), so a short
 * URL could otherwise ask PostgreSQL for gigabytes. Documented in docs/limits.md.
 */
export const SELECT_LIMITS = {
  /** Items (columns, aliases, embeds, `*`) over the whole select, nested lists included: SELECT_TOO_WIDE. */
  maxItems: 100,
  /** Embeds inside embeds: `a(b(c(*)))` is depth 3: EMBED_TOO_DEEP. */
  maxEmbedDepth: 3,
  /** Embeds over the whole select: TOO_MANY_EMBEDS. */
  maxEmbeds: 10,
  /** Times one column may appear (under different aliases) in one select list: TOO_MANY_ALIASES. */
  maxSameColumn: 4,
} as const;

export function parseSelect(input: string): SelectItem[] {
  return parseSelectList(input, 0, { items: 0, embeds: 0 });
}

function parseSelectList(input: string, depth: number, seen: { items: number; embeds: number }): SelectItem[] {
  if (input.trim() === '') throw fail('INVALID_SELECT', 'select must name at least one column');
  const perColumn = new Map<string, number>();
  return splitTopLevel(input).map((raw) => {
    if (++seen.items > SELECT_LIMITS.maxItems) {
      throw fail('SELECT_TOO_WIDE', `select names more than ${SELECT_LIMITS.maxItems} items (columns, aliases and embeds, nested ones included)`, { max: SELECT_LIMITS.maxItems });
    }
    const item = raw.trim();
    if (item === '*') {
      // every `*` repeats all the columns: it counts like a column repeated under another alias
      const stars = (perColumn.get('*') ?? 0) + 1;
      perColumn.set('*', stars);
      if (stars > SELECT_LIMITS.maxSameColumn) {
        throw fail('TOO_MANY_ALIASES', `* is selected more than ${SELECT_LIMITS.maxSameColumn} times in one select list`, { column: '*', max: SELECT_LIMITS.maxSameColumn });
      }
      return { kind: 'star' as const };
    }
    const e = /^(\.\.\.)?(?:([A-Za-z_][A-Za-z0-9_$]*):)?([A-Za-z_][A-Za-z0-9_$]*)((?:![A-Za-z_][A-Za-z0-9_$]*)*)\((.*)\)$/s.exec(item);
    if (e) {
      const [, spread, alias, name, bangs, inner] = e;
      if (depth + 1 > SELECT_LIMITS.maxEmbedDepth) {
        throw fail('EMBED_TOO_DEEP', `embedded relationships nest deeper than ${SELECT_LIMITS.maxEmbedDepth} levels at ${JSON.stringify(name)}`, { max: SELECT_LIMITS.maxEmbedDepth });
      }
      if (++seen.embeds > SELECT_LIMITS.maxEmbeds) {
        throw fail('TOO_MANY_EMBEDS', `select embeds more than ${SELECT_LIMITS.maxEmbeds} relationships`, { max: SELECT_LIMITS.maxEmbeds });
      }
      const out: SelectItem = { kind: 'embed', relation: identifier(name!, 'relationship'), select: parseSelectList(inner === '' ? '*' : inner!, depth + 1, seen) };
      if (alias) out.alias = alias;
      if (spread) out.spread = true;
      for (const b of (bangs ?? '').split('!').slice(1)) {
        if (b === 'inner') out.inner = true;
        else if (b === 'left') out.inner = false;
        else if (out.hint === undefined) out.hint = identifier(b, 'hint');
        else throw fail('INVALID_SELECT', `select item ${JSON.stringify(item)} has more than one hint`);
      }
      return out;
    }
    const m = /^(?:([A-Za-z_][A-Za-z0-9_$]*):)?([A-Za-z_][A-Za-z0-9_$]*)((?:->>?(?:-?\d+|[A-Za-z_][A-Za-z0-9_$]*))*)(?:::([a-z][a-z0-9_ ]{0,40}[a-z0-9_](?:\[\])?))?$/s.exec(item);
    if (!m) throw fail('INVALID_SELECT', `cannot read select item ${JSON.stringify(item)}`);
    const [, alias, name, pathText, cast] = m;
    const times = (perColumn.get(name!) ?? 0) + 1;
    perColumn.set(name!, times);
    if (times > SELECT_LIMITS.maxSameColumn) {
      throw fail('TOO_MANY_ALIASES', `column ${JSON.stringify(name)} is selected more than ${SELECT_LIMITS.maxSameColumn} times in one select list`, {
        column: name,
        max: SELECT_LIMITS.maxSameColumn,
      });
    }
    const out: SelectItem = { kind: 'column', name: identifier(name!, 'column') };
    if (alias) out.alias = alias;
    if (cast) out.cast = cast;
    if (pathText) out.path = parsePath(pathText);
    return out;
  });
}

/** `->a->>b` -> [{op:'->',key:'a'},{op:'->>',key:'b'}]. */
export function parsePath(text: string): JsonStep[] {
  return [...text.matchAll(/(->>?)(-?\d+|[A-Za-z_][A-Za-z0-9_$]*)/g)].map((m) => ({ op: m[1] as '->' | '->>', key: m[2]! }));
}

/** A filter's left side: a column, or a column with a JSON path (`data->a->>b`). */
function filterTarget(text: string): { column: string; path?: JsonStep[] } {
  const m = /^([A-Za-z_][A-Za-z0-9_$]*)((?:->>?(?:-?\d+|[A-Za-z_][A-Za-z0-9_$]*))+)$/.exec(text);
  if (!m) return { column: identifier(text, 'column') };
  return { column: identifier(m[1]!, 'column'), path: parsePath(m[2]!) };
}

/** `[not.]op[(lang)].value` for a column filter. */
export function parseCondition(column: string, expr: string): Filter {
  let rest = expr;
  let not = false;
  if (rest.startsWith('not.')) {
    not = true;
    rest = rest.slice(4);
  }
  const dot = rest.indexOf('.');
  if (dot < 0) throw fail('INVALID_FILTER', `filter on ${column} must look like op.value (e.g. eq.5), got ${JSON.stringify(expr)}`, { column });
  const opPart = rest.slice(0, dot);
  const value = rest.slice(dot + 1);
  const m = /^([a-z]+)(?:\(([a-z_]+)\))?$/.exec(opPart);
  if (!m || !(OPERATORS as readonly string[]).includes(m[1]!)) {
    throw fail('UNKNOWN_OPERATOR', `unknown operator ${JSON.stringify(opPart)} in the filter on ${column}; use one of ${OPERATORS.join(', ')}`, {
      column,
      operator: opPart,
    });
  }
  const op = m[1] as Operator;
  const target = filterTarget(column);
  const out: Filter = { kind: 'cond', ...target, op, not, value };
  if (m[2] !== undefined) {
    if ((m[2] === 'any' || m[2] === 'all') && QUANTIFIABLE.includes(op)) out.quant = m[2];
    else if (op.endsWith('fts')) out.language = m[2];
    else throw fail('INVALID_FILTER', `${op}(${m[2]}) is not an operator: only full-text operators take a language, and only ${QUANTIFIABLE.join(', ')} take (any) or (all)`, { column });
  }
  return out;
}

/** The inside of `or=(...)` / `and=(...)`: `a.eq.1,b.is.null,and(c.gt.2,d.lt.3)`. */
export function parseLogic(kind: 'and' | 'or', not: boolean, expr: string): Filter {
  const m = /^\((.*)\)$/s.exec(expr.trim());
  if (!m) throw fail('INVALID_FILTER', `${kind} must be a parenthesised list, e.g. ${kind}=(a.eq.1,b.is.null)`);
  const items = splitTopLevel(m[1]!).map((part): Filter => {
    const p = part.trim();
    const nested = /^(not\.)?(and|or)(\(.*\))$/s.exec(p);
    if (nested) return parseLogic(nested[2] as 'and' | 'or', Boolean(nested[1]), nested[3]!);
    const dot = p.indexOf('.');
    if (dot < 0) throw fail('INVALID_FILTER', `cannot read condition ${JSON.stringify(p)} in ${kind}=(...)`);
    return parseCondition(p.slice(0, dot), p.slice(dot + 1));
  });
  return { kind, not, items };
}

export function parseOrder(input: string, opts: { extended?: boolean } = {}): OrderItem[] {
  return splitTopLevel(input).map((raw) => {
    const parts = raw.trim().split('.');
    let item: OrderItem;
    const rel = opts.extended ? /^([A-Za-z_][A-Za-z0-9_$]*)\(([A-Za-z_][A-Za-z0-9_$]*)\)$/.exec(parts[0] ?? '') : null;
    const path = opts.extended ? /^([A-Za-z_][A-Za-z0-9_$]*)((?:->>?(?:-?\d+|[A-Za-z_][A-Za-z0-9_$]*))+)$/.exec(parts[0] ?? '') : null;
    if (rel) item = { column: identifier(rel[2]!, 'order column'), relation: rel[1]!, direction: 'asc' };
    else if (path) item = { column: identifier(path[1]!, 'order column'), path: parsePath(path[2]!), direction: 'asc' };
    else item = { column: identifier(parts[0] ?? '', 'order column'), direction: 'asc' };
    for (const p of parts.slice(1)) {
      if (p === 'asc' || p === 'desc') item.direction = p;
      else if (p === 'nullsfirst') item.nulls = 'first';
      else if (p === 'nullslast') item.nulls = 'last';
      else throw fail('INVALID_ORDER', `cannot read order ${JSON.stringify(raw)}: use column[.asc|.desc][.nullsfirst|.nullslast]`);
    }
    return item;
  });
}

function parseLimit(value: string, max: number, what = 'limit'): number {
  if (!/^\d{1,9}$/.test(value)) throw fail('INVALID_LIMIT', `${what} must be a positive integer, got ${JSON.stringify(value)}`);
  const n = Number(value);
  if (n < 1) throw fail('INVALID_LIMIT', `${what} must be at least 1`);
  if (n > max) throw fail('LIMIT_TOO_LARGE', `${what} ${n} is above the maximum of ${max}; page with the cursor instead`, { max });
  return n;
}

const one = (v: string | string[] | undefined, key: string): string | undefined => {
  if (Array.isArray(v)) {
    if (v.length > 1) throw fail('DUPLICATE_PARAMETER', `parameter ${key} was given more than once`);
    return v[0];
  }
  return v;
};

/** Parse the whole query string of a rows request (select, filters, order, paging). */
export function parseRowsQuery(qs: Record<string, string | string[] | undefined>, opts: { maxLimit: number; allowPaging?: boolean }): RowsQuery {
  const q: RowsQuery = { select: [{ kind: 'star' }], filters: [], order: [], embeds: new Map() };
  const embed = (path: string): EmbedOptions => {
    let e = q.embeds.get(path);
    if (!e) q.embeds.set(path, (e = { filters: [], order: [] }));
    return e;
  };
  for (const [key, raw] of Object.entries(qs)) {
    if (raw === undefined) continue;
    const values = Array.isArray(raw) ? raw : [raw];
    if (key.length > 200) throw fail('INVALID_FILTER', 'a parameter name is too long');
    switch (key) {
      case 'select':
        q.select = parseSelect(one(raw, key)!);
        continue;
      case 'order':
        q.order = parseOrder(one(raw, key)!);
        continue;
      case 'limit':
        q.limit = parseLimit(one(raw, key)!, opts.maxLimit);
        continue;
      case 'cursor':
        q.cursor = one(raw, key);
        continue;
      case 'count': {
        const c = one(raw, key);
        if (c !== 'exact' && c !== 'estimated') throw fail('INVALID_COUNT', 'count must be exact or estimated');
        q.count = c;
        continue;
      }
      case 'on_conflict':
      case 'columns':
        continue;
    }
    const logic = /^(?:(.+)\.)?(not\.)?(or|and)$/.exec(key);
    if (logic) {
      const target = logic[1] === undefined ? q.filters : embed(logic[1]).filters;
      for (const v of values) target.push(parseLogic(logic[3] as 'and' | 'or', Boolean(logic[2]), v));
      continue;
    }
    const lastDot = key.lastIndexOf('.');
    if (lastDot > 0) {
      const path = key.slice(0, lastDot);
      const leaf = key.slice(lastDot + 1);
      const e = embed(path);
      if (leaf === 'order') e.order = parseOrder(one(raw, key)!);
      else if (leaf === 'limit') e.limit = parseLimit(one(raw, key)!, opts.maxLimit, key);
      else for (const v of values) e.filters.push(parseCondition(leaf, v));
      continue;
    }
    if (RESERVED.has(key)) continue;
    for (const v of values) q.filters.push(parseCondition(key, v));
  }
  return q;
}

/** `in.(a,b,"c,d")` -> ['a', 'b', 'c,d']. */
export function parseInList(column: string, value: string): string[] {
  const m = /^\((.*)\)$/s.exec(value);
  if (!m) throw fail('MALFORMED_IN_LIST', `in filter on ${column} must be a parenthesised list, e.g. in.(1,2,3)`, { column });
  if (m[1]!.trim() === '') return [];
  return splitTopLevel(m[1]!).map((v) => {
    const t = v.trim();
    if (t.startsWith('"')) {
      if (!t.endsWith('"') || t.length < 2) throw fail('MALFORMED_IN_LIST', `unterminated quote in the in list on ${column}`, { column });
      return t.slice(1, -1).replace(/\\(.)/g, '$1');
    }
    return t;
  });
}
