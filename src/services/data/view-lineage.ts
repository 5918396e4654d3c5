/**
 * Where a view's columns come from: the base table and column of each output column of the view's
 * query, read from its stored rewrite rule (`pg_rewrite.ev_action`, PostgreSQL's node tree text).
 * The parser marks every plain column reference with its origin (TargetEntry's `resorigtbl` and
 * `resorigcol`), which is how PostgREST infers a view's relationships from its source tables.
 * Only the top-level query's target list counts: subqueries, CTEs and sublinks are nested inside it.
 */

/** A parsed node: its type (`QUERY`, `TARGETENTRY`...) and its fields. */
interface PgNode {
  type: string;
  fields: Map<string, Value>;
}
type Value = PgNode | Value[] | string | null;

/** Split node tree text into tokens: `{ } ( )` alone, others by whitespace, `\` escapes one character. */
function tokenize(text: string): string[] {
  const out: string[] = [];
  let cur = '';
  const flush = () => {
    if (cur !== '') out.push(cur);
    cur = '';
  };
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === '\\' && i + 1 < text.length) {
      cur += text[++i];
    } else if (ch === '{' || ch === '}' || ch === '(' || ch === ')') {
      flush();
      out.push(ch);
    } else if (ch === ' ' || ch === '\n' || ch === '\t' || ch === '\r') {
      flush();
    } else cur += ch;
  }
  flush();
  return out;
}

/** Parse the tokens into nodes and lists. A field's value runs to the next `:field` or `}`. */
function parse(tokens: string[]): Value {
  let i = 0;
  const value = (): Value => {
    const tok = tokens[i];
    if (tok === '{') {
      i++;
      const node: PgNode = { type: tokens[i++] ?? '', fields: new Map() };
      while (i < tokens.length && tokens[i] !== '}') {
        const key = tokens[i++]!;
        if (!key.startsWith(':')) continue;
        const parts: Value[] = [];
        while (i < tokens.length && tokens[i] !== '}' && !tokens[i]!.startsWith(':')) parts.push(value());
        node.fields.set(key.slice(1), parts.length === 1 ? parts[0]! : parts);
      }
      i++;
      return node;
    }
    if (tok === '(') {
      i++;
      const list: Value[] = [];
      while (i < tokens.length && tokens[i] !== ')') list.push(value());
      i++;
      return list;
    }
    i++;
    return tok === '<>' || tok === undefined ? null : tok;
  };
  return value();
}

export interface ColumnOrigin {
  /** The view's output column. */
  column: string;
  /** OID of the relation the column is read from (a table, or another view). */
  relation: number;
  /** Attribute number of the column in that relation. */
  attnum: number;
}

const isNode = (v: Value | undefined): v is PgNode => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The origins of a view's output columns from its `_RETURN` rule's `ev_action` text; columns that
 * are not a plain reference to a relation's column (expressions, aggregates) are left out. Text
 * that is not a node tree gives no origins.
 */
export function viewColumnOrigins(evAction: string): ColumnOrigin[] {
  let tree: Value;
  try {
    tree = parse(tokenize(evAction));
  } catch {
    return [];
  }
  const query = Array.isArray(tree) ? tree[0] : tree;
  if (!isNode(query) || query.type !== 'QUERY') return [];
  const targets = query.fields.get('targetList');
  const out: ColumnOrigin[] = [];
  for (const te of Array.isArray(targets) ? targets : []) {
    if (!isNode(te) || te.type !== 'TARGETENTRY') continue;
    const name = te.fields.get('resname');
    const rel = Number(te.fields.get('resorigtbl'));
    const att = Number(te.fields.get('resorigcol'));
    if (te.fields.get('resjunk') === 'true' || typeof name !== 'string' || !(rel > 0) || !(att > 0)) continue;
    out.push({ column: name, relation: rel, attnum: att });
  }
  return out;
}
