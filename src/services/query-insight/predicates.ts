/**
 * The indexable predicates of a query, read from PostgreSQL's own parse tree (libpg-query): per
 * table, the columns compared for equality (WHERE col = x, col IN (...), JOIN ... ON a.x = b.y),
 * by range (<, <=, >, >=, BETWEEN, LIKE) and sorted on (ORDER BY). Dexter's first step.
 */
import { parse } from '../data/index.js';

/** A table as the query names it: `schema` is null when unqualified (resolved by search_path). */
export interface TableRef {
  schema: string | null;
  name: string;
}

/** A column reference before catalog lookup: `table` null when unqualified and ambiguous. */
export interface ColumnUse {
  table: TableRef | null;
  /** Tables in scope, to resolve an unqualified column against the catalog. */
  scope: TableRef[];
  column: string;
  kind: 'eq' | 'range' | 'order';
}

export interface QueryPredicates {
  tables: TableRef[];
  uses: ColumnUse[];
}

type Node = Record<string, unknown>;
const isNode = (x: unknown): x is Node => typeof x === 'object' && x !== null && !Array.isArray(x);
const str = (x: unknown): string | undefined =>
  isNode(x) && isNode(x['String']) && typeof x['String']['sval'] === 'string'
    ? x['String']['sval']
    : undefined;

const EQ_OPS = new Set(['=']);
const RANGE_OPS = new Set(['<', '<=', '>', '>=']);

/** Every SelectStmt in the tree (subqueries and CTEs included), each with its own FROM scope. */
function selects(root: unknown): Node[] {
  const out: Node[] = [];
  const stack: unknown[] = [root];
  while (stack.length) {
    const n = stack.pop();
    if (Array.isArray(n)) stack.push(...(n as unknown[]));
    else if (isNode(n)) {
      for (const [k, v] of Object.entries(n)) {
        if (k === 'SelectStmt' && isNode(v)) out.push(v);
        stack.push(v);
      }
    }
  }
  return out;
}

/** Tables of a FROM list by alias (and by name), and the JOIN conditions found in it. */
function fromScope(from: unknown, aliases: Map<string, TableRef>, quals: unknown[]): void {
  if (Array.isArray(from)) {
    for (const f of from) fromScope(f, aliases, quals);
    return;
  }
  if (!isNode(from)) return;
  const rv = from['RangeVar'];
  if (isNode(rv) && typeof rv['relname'] === 'string') {
    const ref: TableRef = {
      schema: typeof rv['schemaname'] === 'string' ? rv['schemaname'] : null,
      name: rv['relname'],
    };
    const alias =
      isNode(rv['alias']) && typeof rv['alias']['aliasname'] === 'string'
        ? rv['alias']['aliasname']
        : rv['relname'];
    aliases.set(alias, ref);
    return;
  }
  const join = from['JoinExpr'];
  if (isNode(join)) {
    fromScope(join['larg'], aliases, quals);
    fromScope(join['rarg'], aliases, quals);
    if (join['quals']) quals.push(join['quals']);
  }
}

/** The column a ColumnRef names: [alias?, column]; undefined for `*` or deeper paths. */
function columnRef(node: unknown): { qualifier: string | null; column: string } | undefined {
  if (!isNode(node) || !isNode(node['ColumnRef'])) return undefined;
  const fields = node['ColumnRef']['fields'];
  if (!Array.isArray(fields)) return undefined;
  const parts = fields.map(str);
  if (parts.some((p) => p === undefined)) return undefined;
  if (parts.length === 1) return { qualifier: null, column: parts[0]! };
  if (parts.length === 2) return { qualifier: parts[0]!, column: parts[1]! };
  return undefined;
}

/** Extracts the predicates of one statement; undefined when it is not a plain query. */
export async function queryPredicates(sql: string): Promise<QueryPredicates | undefined> {
  const tree = await parse(sql);
  const stmt = tree.stmts?.length === 1 ? (tree.stmts[0]?.stmt as Node | undefined) : undefined;
  if (!stmt || !isNode(stmt['SelectStmt'])) return undefined;
  const tables = new Map<string, TableRef>();
  const uses: ColumnUse[] = [];
  for (const sel of selects(stmt)) {
    const aliases = new Map<string, TableRef>();
    const quals: unknown[] = [];
    fromScope(sel['fromClause'], aliases, quals);
    if (aliases.size === 0) continue;
    const scope = [...new Map([...aliases.values()].map((t) => [`${t.schema ?? ''}.${t.name}`, t])).values()];
    for (const t of scope) tables.set(`${t.schema ?? ''}.${t.name}`, t);
    const use = (node: unknown, kind: ColumnUse['kind']) => {
      const c = columnRef(node);
      if (!c) return;
      const table = c.qualifier !== null ? aliases.get(c.qualifier) : scope.length === 1 ? scope[0] : null;
      if (table === undefined) return; // an outer query's alias: not this scope's table
      uses.push({ table: table ?? null, scope, column: c.column, kind });
    };
    const visit = (expr: unknown): void => {
      if (!isNode(expr)) return;
      const bool = expr['BoolExpr'];
      if (isNode(bool) && Array.isArray(bool['args'])) {
        for (const a of bool['args']) visit(a);
        return;
      }
      const a = expr['A_Expr'];
      if (!isNode(a)) return;
      const op = Array.isArray(a['name']) ? str(a['name'][0]) : undefined;
      const left = columnRef(a['lexpr']);
      const right = columnRef(a['rexpr']);
      switch (a['kind']) {
        case 'AEXPR_OP':
          if (op === undefined || (!EQ_OPS.has(op) && !RANGE_OPS.has(op))) return;
          // col = col is a join (both sides are candidates); col = value is a filter
          if (left) use(a['lexpr'], EQ_OPS.has(op) ? 'eq' : 'range');
          if (right) use(a['rexpr'], EQ_OPS.has(op) ? 'eq' : 'range');
          return;
        case 'AEXPR_IN':
          if (op === '=' && left) use(a['lexpr'], 'eq');
          return;
        case 'AEXPR_BETWEEN':
        case 'AEXPR_LIKE':
          if (left) use(a['lexpr'], 'range');
          return;
        default:
          return;
      }
    };
    visit(sel['whereClause']);
    for (const q of quals) visit(q);
    if (Array.isArray(sel['sortClause'])) {
      for (const s of sel['sortClause'])
        if (isNode(s) && isNode(s['SortBy'])) use(s['SortBy']['node'], 'order');
    }
  }
  return { tables: [...tables.values()], uses };
}
