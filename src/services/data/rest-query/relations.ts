/**
 * Relationships as PostgREST names them, for the PostgREST face: an embed names the other table (or
 * view), optionally with a hint (`!fk_name`, `!column`, or the join table of a many-to-many).
 * Many-to-one and one-to-one (a referencing key that is unique) embed an object; one-to-many and
 * many-to-many (through a join table whose primary key holds both foreign keys) embed an array.
 * Several candidates are an ambiguity (300, as PostgREST's PGRST201), none is a 400 (PGRST200).
 */
import { AppError, badRequest } from '../../../errors.js';
import type { ForeignKey, Relationship, TableInfo } from '../schema-registry.js';
import type { SelectItem } from './parse.js';

type Cardinality = 'many-to-one' | 'one-to-many' | 'one-to-one' | 'many-to-many';

interface Candidate {
  rel: Relationship;
  /** Names a hint may use for it. */
  hints: string[];
  describe: string;
}

const unique = (t: TableInfo, cols: string[]) => t.indexes.some((ix) => ix.unique && ix.columns.length > 0 && ix.columns.every((c) => cols.includes(c)));
const meaningful = (cols: string[]) => cols.filter((c) => c !== 'tenant_id');

/** A view's relationships are its base table's, restricted to the columns the view shows. */
function baseOf(tables: Map<string, TableInfo>, x: TableInfo): TableInfo {
  return (x.base !== undefined ? tables.get(x.base) : undefined) ?? x;
}
const shows = (x: TableInfo, cols: string[]) => cols.every((c) => x.columnMap.has(c));

function candidates(tables: Map<string, TableInfo>, t: TableInfo, target: string): Candidate[] {
  const out: Candidate[] = [];
  const other = tables.get(target);
  if (!other) return out;
  const tb = baseOf(tables, t);
  const ob = baseOf(tables, other);
  for (const fk of tb.foreignKeys) {
    if (fk.table !== ob.name || !shows(t, fk.columns) || !shows(other, fk.refColumns)) continue;
    out.push({
      rel: { name: target, kind: 'many-to-one', table: target, localColumns: fk.columns, remoteColumns: fk.refColumns, constraint: fk.name },
      hints: [fk.name, ...meaningful(fk.columns), ...meaningful(fk.refColumns)],
      describe: `${fk.name} using ${t.name}(${fk.columns.join(', ')}) and ${target}(${fk.refColumns.join(', ')})`,
    });
  }
  for (const fk of tb.referencedBy) {
    if (fk.table !== ob.name || !shows(t, fk.refColumns) || !shows(other, fk.columns)) continue;
    const kind: Cardinality = unique(ob, fk.columns) ? 'one-to-one' : 'one-to-many';
    out.push({
      rel: { name: target, kind, table: target, localColumns: fk.refColumns, remoteColumns: fk.columns, constraint: fk.name },
      hints: [fk.name, ...meaningful(fk.columns), ...meaningful(fk.refColumns)],
      describe: `${fk.name} using ${target}(${fk.columns.join(', ')}) and ${t.name}(${fk.refColumns.join(', ')})`,
    });
  }
  // many-to-many: a join table with a foreign key to each side, both inside its primary key
  for (const j of tables.values()) {
    if (j.name === tb.name || j.name === ob.name || j.primaryKey.length === 0 || j.base !== undefined) continue;
    // the registry's primary key leaves out a leading tenant_id (the session fixes it), which a
    // composite foreign key (tenant_id, x) still names
    const inPk = (f: ForeignKey) => f.columns.every((c) => c === 'tenant_id' || j.primaryKey.includes(c));
    for (const toT of j.foreignKeys.filter((f) => f.table === tb.name && inPk(f) && shows(t, f.refColumns))) {
      for (const toTarget of j.foreignKeys.filter((f) => f.table === ob.name && f !== toT && inPk(f) && shows(other, f.refColumns))) {
        out.push({
          rel: {
            name: target,
            kind: 'many-to-many',
            table: target,
            localColumns: toT.refColumns,
            remoteColumns: toTarget.refColumns,
            constraint: toTarget.name,
            junction: { table: j.name, qualified: j.qualified, localColumns: toT.columns, remoteColumns: toTarget.columns, targetColumns: toTarget.refColumns },
          },
          hints: [j.name, toT.name, toTarget.name],
          describe: `${t.name}, ${target} through ${j.name} (${toT.name}, ${toTarget.name})`,
        });
      }
    }
  }
  return out;
}

/** Resolve an embed of `t` as PostgREST does; throws AMBIGUOUS_RELATIONSHIP (300) or UNKNOWN_RELATIONSHIP (400). */
export function resolveRelationship(tables: Map<string, TableInfo>, t: TableInfo, item: Extract<SelectItem, { kind: 'embed' }>): Relationship {
  let found = candidates(tables, t, item.relation);
  if (item.hint !== undefined) found = found.filter((c) => c.hints.includes(item.hint!));
  if (found.length === 1) return found[0]!.rel;
  if (found.length === 0) {
    throw badRequest('UNKNOWN_RELATIONSHIP', `Could not find a relationship between '${t.name}' and '${item.relation}' in the schema cache`, {
      details: `Searched for a foreign key relationship between '${t.name}' and '${item.relation}'${item.hint ? ` using the hint '${item.hint}'` : ''} in the schema 'public', but no matches were found.`,
    });
  }
  const options = found.map((c) => `'${item.relation}!${c.rel.kind === 'many-to-many' ? c.rel.junction!.table : c.rel.constraint}'`);
  throw new AppError(300, 'AMBIGUOUS_RELATIONSHIP', `Could not embed because more than one relationship was found for '${t.name}' and '${item.relation}'`, {
    details: found.map((c) => ({ cardinality: c.rel.kind, embedding: `${t.name} with ${item.relation}`, relationship: c.describe })),
    hint: `Try changing '${item.relation}' to one of the following: ${options.join(', ')}. Find the desired relationship in the 'details' key.`,
  });
}
