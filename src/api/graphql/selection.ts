/**
 * What a selection needs from SQL: the columns of a table type that are asked for (plus primary
 * key and the key columns of selected relationships), found by walking the field's selection set
 * through fragments. Plans are cached per field AST node: mercurius caches parsed documents, so
 * the same query text reuses its plans (SQL shape built once per selection). @include/@skip are
 * ignored: selecting a superset of columns is harmless.
 */
import { Kind, type FieldNode, type GraphQLResolveInfo, type SelectionSetNode } from 'graphql/index.js';
import type { ColumnInfo, Relationship, TableInfo } from '../../services/data/index.js';

/** Sub-fields by field name (not alias), merged across fragments and repeated fields. */
export function subFields(info: Pick<GraphQLResolveInfo, 'fragments'>, nodes: readonly FieldNode[]): Map<string, FieldNode[]> {
  const out = new Map<string, FieldNode[]>();
  const seenFragments = new Set<string>();
  const walk = (set: SelectionSetNode | undefined) => {
    for (const s of set?.selections ?? []) {
      if (s.kind === Kind.FIELD) {
        const list = out.get(s.name.value);
        if (list) list.push(s);
        else out.set(s.name.value, [s]);
      } else if (s.kind === Kind.INLINE_FRAGMENT) {
        walk(s.selectionSet);
      } else if (!seenFragments.has(s.name.value)) {
        seenFragments.add(s.name.value);
        walk(info.fragments[s.name.value]?.selectionSet);
      }
    }
  };
  for (const n of nodes) walk(n.selectionSet);
  return out;
}

export interface NodePlan {
  columns: ColumnInfo[];
  /** Identifies the column set (for loader batch keys). */
  signature: string;
}

/** Columns to select for rows of `t` given the field nodes selecting them. */
export function nodePlan(t: TableInfo, rels: ReadonlyMap<string, Relationship>, info: Pick<GraphQLResolveInfo, 'fragments'>, nodes: readonly FieldNode[]): NodePlan {
  const names = new Set<string>(t.primaryKey);
  for (const name of subFields(info, nodes).keys()) {
    if (t.columnMap.has(name)) names.add(name);
    const rel = rels.get(name);
    if (rel) for (const c of rel.localColumns) names.add(c);
  }
  const columns = t.columns.filter((c) => names.has(c.name));
  return { columns, signature: columns.map((c) => c.name).join(',') };
}

/** Memoize `compute` per field node in `store` (only when the field is selected by exactly one node). */
export function cached<T>(store: WeakMap<FieldNode, T>, nodes: readonly FieldNode[], compute: () => T): T {
  const node = nodes.length === 1 ? nodes[0] : undefined;
  if (!node) return compute();
  const hit = store.get(node);
  if (hit !== undefined) return hit;
  const value = compute();
  store.set(node, value);
  return value;
}
