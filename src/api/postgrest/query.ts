/**
 * PostgREST's query string, read into the core's query tree: `select`, filters (`col=op.value`,
 * JSON paths, `or=()`, `and=()`, `not.`), `order`, `limit`/`offset`, embedded resources' options
 * (`rel.col=`, `rel.order=`, `rel.limit=`, `rel.or=`), `rel=is.null`, and for writes `columns` and
 * `on_conflict`. Anything it cannot read is refused (PGRST100), never dropped.
 */
import { AppError } from '../../errors.js';
import { embedPaths, parseCondition, parseLogic, parseOrder, parseSelect, type EmbedOptions, type RestQuery, type SelectItem } from '../../services/data/index.js';
import { PgrstError } from './errors.js';

export type QueryString = Record<string, string | string[] | undefined>;

export interface ParsedRequest extends RestQuery {
  /** `select` was given (a write returns only what it names). */
  selectGiven: boolean;
  columns?: string[];
  onConflict?: string[];
}

const AGGREGATE = /(^|[,(:])\s*(count\(\)|[A-Za-z_][A-Za-z0-9_$]*(->>?[A-Za-z0-9_$-]+)*\.(count|sum|avg|max|min)\(\))/;
const IDENT = /^[A-Za-z_][A-Za-z0-9_$]*$/;

/** Core parse errors (AppError 400) become PGRST100 with PostgREST's wording. */
function syntax<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof AppError && err.statusCode === 400) throw new PgrstError(400, 'PGRST100', `"failed to parse ${what}"`, err.message);
    throw err;
  }
}

function nonNegative(value: string, what: string): number {
  if (!/^\d{1,15}$/.test(value)) throw new PgrstError(400, 'PGRST100', `"failed to parse ${what} parameter (${value})"`, `${what} must be a non-negative integer`);
  return Number(value);
}

const one = (v: string | string[], key: string): string => {
  if (Array.isArray(v)) {
    if (v.length !== 1) throw new PgrstError(400, 'PGRST100', `"failed to parse ${key}"`, `${key} was given more than once`);
    return v[0]!;
  }
  return v;
};

const embedNames = (select: SelectItem[]): Set<string> => new Set(select.flatMap((s) => (s.kind === 'embed' ? [s.alias ?? s.relation] : [])));

/** A parsed `select`, kept by its text: the parse tree is only read, never changed, by the builders. */
interface ParsedSelect {
  select: SelectItem[];
  embeds: Set<string>;
}
/** Parsed select texts kept (least recently used dropped past this); longer texts are not kept. */
export const SELECT_CACHE_SIZE = 500;
const SELECT_CACHE_MAX_TEXT = 2_000;
const selects = new Map<string, ParsedSelect>();
const STAR: ParsedSelect = { select: [{ kind: 'star' }], embeds: new Set() };

/**
 * The select parse of `text`, from the cache or parsed now (then kept). Throws as parseRequest does
 * (PGRST123 for an aggregate, PGRST100 for bad syntax); errors are never kept.
 */
function selectOf(text: string): ParsedSelect {
  const hit = selects.get(text);
  if (hit !== undefined) {
    // refresh its place in the LRU order (only when it is not already the newest)
    if (selects.size > 1) {
      selects.delete(text);
      selects.set(text, hit);
    }
    return hit;
  }
  if (AGGREGATE.test(text)) throw new PgrstError(400, 'PGRST123', 'Use of aggregate functions is not allowed');
  const select = syntax(`select parameter (${text})`, () => parseSelect(text));
  const parsed = { select, embeds: embedNames(select) };
  if (text.length <= SELECT_CACHE_MAX_TEXT) {
    if (selects.size >= SELECT_CACHE_SIZE) selects.delete(selects.keys().next().value!);
    selects.set(text, parsed);
  }
  return parsed;
}

/** Query parameters that are never a column filter on a table read. */
const RESERVED = new Set(['select', 'order', 'limit', 'offset', 'columns', 'on_conflict', 'or', 'and']);
const COLUMN_KEY = /^[A-Za-z_][A-Za-z0-9_$]{0,62}$/;

/** The commonest read: one `column=eq.value` filter and at most a select (postgrest-js's `.eq(c, v).single()`). */
export interface EqRead {
  column: string;
  value: string;
  select: SelectItem[];
  /** The select's text ('*' when absent): the select list's key in prebuilt statements. */
  selectKey: string;
}

/**
 * The query string as an EqRead when it has exactly that shape, else undefined (then parseRequest
 * reads it, and answers every mistake). A select that does not parse also answers undefined.
 */
export function eqRead(qs: QueryString): EqRead | undefined {
  let column: string | undefined;
  let value: string | undefined;
  let selectText: string | undefined;
  for (const key in qs) {
    const v = qs[key];
    if (v === undefined) continue;
    if (typeof v !== 'string') return undefined;
    if (key === 'select') {
      selectText = v;
      continue;
    }
    if (column !== undefined || RESERVED.has(key) || !v.startsWith('eq.') || !COLUMN_KEY.test(key)) return undefined;
    column = key;
    value = v.slice(3);
  }
  if (column === undefined || value === undefined) return undefined;
  let parsed = STAR;
  if (selectText !== undefined) {
    try {
      parsed = selectOf(selectText);
    } catch {
      return undefined;
    }
  }
  // `rel=...` names an embedded resource, not a column: parseRequest's business
  if (parsed.embeds.has(column)) return undefined;
  return { column, value, select: parsed.select, selectKey: selectText ?? '*' };
}

/** Parse the query string of a table request. `write` accepts `columns` and `on_conflict`. */
export function parseRequest(qs: QueryString, opts: { write: boolean }): ParsedRequest {
  const out: ParsedRequest = { select: [{ kind: 'star' }], filters: [], order: [], embeds: new Map(), offset: 0, embedNull: [], selectGiven: false };
  const embed = (path: string): EmbedOptions => {
    let e = out.embeds.get(path);
    if (!e) out.embeds.set(path, (e = { filters: [], order: [] }));
    return e;
  };
  const sel = qs['select'];
  let embeds = STAR.embeds;
  if (sel !== undefined) {
    const parsed = selectOf(one(sel, 'select'));
    out.select = parsed.select;
    embeds = parsed.embeds;
    out.selectGiven = true;
  }
  for (const [key, raw] of Object.entries(qs)) {
    if (raw === undefined || key === 'select') continue;
    const values = Array.isArray(raw) ? raw : [raw];
    if (key.length > 200) throw new PgrstError(400, 'PGRST100', '"failed to parse filter"', 'a parameter name is too long');
    switch (key) {
      case 'order':
        out.order = syntax(`order (${one(raw, key)})`, () => parseOrder(one(raw, key), { extended: true }));
        continue;
      case 'limit':
        out.limit = nonNegative(one(raw, key), 'limit');
        continue;
      case 'offset':
        out.offset = nonNegative(one(raw, key), 'offset');
        continue;
      case 'columns':
      case 'on_conflict': {
        if (!opts.write) break;
        const list = one(raw, key).split(',').map((c) => c.trim().replace(/^"(.*)"$/, '$1'));
        for (const c of list) if (!IDENT.test(c)) throw new PgrstError(400, 'PGRST100', `"failed to parse ${key} (${one(raw, key)})"`, `${JSON.stringify(c)} is not a column name`);
        if (key === 'columns') out.columns = list;
        else out.onConflict = list;
        continue;
      }
    }
    const logic = /^(?:(.+)\.)?(not\.)?(or|and)$/.exec(key);
    if (logic) {
      const target = logic[1] === undefined ? out.filters : embed(logic[1]).filters;
      for (const v of values) target.push(syntax(`logic tree (${v})`, () => parseLogic(logic[3] as 'and' | 'or', Boolean(logic[2]), v)));
      continue;
    }
    if (embeds.has(key)) {
      // `rel=is.null` / `rel=not.is.null`: parents without / with a related row
      for (const v of values) {
        if (v === 'is.null' || v === 'not.is.null') out.embedNull.push({ embed: key, isNull: v === 'is.null' });
        else throw new PgrstError(400, 'PGRST100', `"failed to parse filter (${v})"`, `an embedded resource takes only is.null or not.is.null, got ${v}`);
      }
      continue;
    }
    const lastDot = key.lastIndexOf('.');
    if (lastDot > 0 && !key.includes('->')) {
      const path = key.slice(0, lastDot);
      const leaf = key.slice(lastDot + 1);
      const e = embed(path);
      if (leaf === 'order') e.order = syntax(`order (${one(raw, key)})`, () => parseOrder(one(raw, key)));
      else if (leaf === 'limit') e.limit = nonNegative(one(raw, key), key);
      else if (leaf === 'offset') e.offset = nonNegative(one(raw, key), key);
      else for (const v of values) e.filters.push(syntax(`filter (${v})`, () => parseCondition(leaf, v)));
      continue;
    }
    for (const v of values) out.filters.push(syntax(`filter (${v})`, () => parseCondition(key, v)));
  }
  checkEmbedPaths(out);
  return out;
}

/** Embed options must name an embedded resource of the select (PGRST108 otherwise). */
function checkEmbedPaths(r: ParsedRequest): void {
  const paths = embedPaths(r.select);
  for (const p of r.embeds.keys()) {
    if (!paths.has(p)) throw new PgrstError(400, 'PGRST108', `'${p}' is not an embedded resource in this request`, null, `Verify that '${p}' is included in the 'select' query parameter.`);
  }
}
