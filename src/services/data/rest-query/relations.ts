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

/**
 * The tables a relation shows, each with how its columns are named there: a table shows itself; a
 * view shows each source table of its columns (PostgREST infers a view's relationships from them).
 */
function exposures(tables: Map<string, TableInfo>, x: TableInfo): Array<{ table: TableInfo; as: Map<string, string> }> {
  if (x.sources === undefined) return [{ table: x, as: new Map(x.columns.map((c) => [c.name, c.name])) }];
  const by = new Map<string, Map<string, string>>();
  for (const [viewColumn, src] of x.sources) {
    const m = by.get(src.table) ?? new Map<string, string>();
    if (!m.has(src.column)) m.set(src.column, viewColumn);
    by.set(src.table, m);
  }
  return [...by].flatMap(([name, as]) => {
    const table = tables.get(name);
    return table ? [{ table, as }] : [];
  });
}
/** `cols` as the relation names them, or undefined when it does not show every one. */
const named = (as: Map<string, string>, cols: string[]): string[] | undefined => {
  const out = cols.map((c) => as.get(c));
  return out.every((c) => c !== undefined) ? out : undefined;
};

function candidates(tables: Map<string, TableInfo>, t: TableInfo, target: string): Candidate[] {
  const out: Candidate[] = [];
  const other = tables.get(target);
  if (!other) return out;
  const mine = exposures(tables, t);
  const theirs = exposures(tables, other);
  for (const { table: tb, as: tAs } of mine) {
    for (const { table: ob, as: oAs } of theirs) {
      for (const fk of tb.foreignKeys) {
        if (fk.table !== ob.name) continue;
        const local = named(tAs, fk.columns);
        const remote = named(oAs, fk.refColumns);
        if (!local || !remote) continue;
        out.push({
          rel: { name: target, kind: 'many-to-one', table: target, localColumns: local, remoteColumns: remote, constraint: fk.name },
          hints: [fk.name, ...meaningful(fk.columns), ...meaningful(fk.refColumns), ...meaningful(local), ...meaningful(remote)],
          describe: `${fk.name} using ${t.name}(${local.join(', ')}) and ${target}(${remote.join(', ')})`,
        });
      }
      for (const fk of tb.referencedBy) {
        if (fk.table !== ob.name) continue;
        const local = named(tAs, fk.refColumns);
        const remote = named(oAs, fk.columns);
        if (!local || !remote) continue;
        const kind: Cardinality = unique(ob, fk.columns) ? 'one-to-one' : 'one-to-many';
        out.push({
          rel: { name: target, kind, table: target, localColumns: local, remoteColumns: remote, constraint: fk.name },
          hints: [fk.name, ...meaningful(fk.columns), ...meaningful(fk.refColumns), ...meaningful(local), ...meaningful(remote)],
          describe: `${fk.name} using ${target}(${remote.join(', ')}) and ${t.name}(${local.join(', ')})`,
        });
      }
      // many-to-many: a join table with a foreign key to each side, both inside its primary key
      for (const j of tables.values()) {
        if (j.name === tb.name || j.name === ob.name || j.primaryKey.length === 0 || j.sources !== undefined) continue;
        // the registry's primary key leaves out a leading tenant_id (the session fixes it), which a
        // composite foreign key (tenant_id, x) still names
        const inPk = (f: ForeignKey) => f.columns.every((c) => c === 'tenant_id' || j.primaryKey.includes(c));
        for (const toT of j.foreignKeys.filter((f) => f.table === tb.name && inPk(f))) {
          const local = named(tAs, toT.refColumns);
          if (!local) continue;
          for (const toTarget of j.foreignKeys.filter((f) => f.table === ob.name && f !== toT && inPk(f))) {
            const remote = named(oAs, toTarget.refColumns);
            if (!remote) continue;
            out.push({
              rel: {
                name: target,
                kind: 'many-to-many',
                table: target,
                localColumns: local,
                remoteColumns: remote,
                constraint: toTarget.name,
                junction: { table: j.name, qualified: j.qualified, localColumns: toT.columns, remoteColumns: toTarget.columns, targetColumns: remote },
              },
              hints: [j.name, toT.name, toTarget.name],
              describe: `${t.name}, ${target} through ${j.name} (${toT.name}, ${toTarget.name})`,
            });
          }
        }
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
