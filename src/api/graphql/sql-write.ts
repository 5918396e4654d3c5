/**
 * Write SQL for GraphQL mutations: multi-row INSERT (DEFAULT for absent columns), UPDATE and
 * DELETE by primary key or by filter, RETURNING only the columns the selection needs. Identifiers
 * from the registry, values as $n parameters.
 */
import type { ColumnInfo, TableInfo } from '../../services/data/index.js';
import { paramValue, q } from './columns.js';
import { pkCondition, selectList, type Params } from './sql.js';

const returning = (cols: ColumnInfo[] | null) => (cols && cols.length ? ` RETURNING ${selectList(cols)}` : '');

export function insertSql(t: TableInfo, objects: Array<Record<string, unknown>>, cols: ColumnInfo[] | null, p: Params): string {
  const names = [...new Set(objects.flatMap((o) => Object.keys(o).filter((k) => o[k] !== undefined)))];
  const targets = names.map((n) => t.columnMap.get(n) as ColumnInfo);
  if (!targets.length) {
    // no column given anywhere: one DEFAULT VALUES row per object
    const rows = objects.map(() => 'DEFAULT VALUES');
    if (rows.length === 1) return `INSERT INTO ${t.qualified} DEFAULT VALUES${returning(cols)}`;
    const pk = t.primaryKey[0];
    const fill = pk ? `(${q(pk)}) VALUES ${objects.map(() => '(DEFAULT)').join(', ')}` : 'DEFAULT VALUES';
    return `INSERT INTO ${t.qualified} ${fill}${returning(cols)}`;
  }
  const values = objects.map((o) => `(${targets.map((c) => (o[c.name] === undefined ? 'DEFAULT' : p.add(paramValue(c, o[c.name])))).join(', ')})`);
  return `INSERT INTO ${t.qualified} (${targets.map((c) => q(c.name)).join(', ')}) VALUES ${values.join(', ')}${returning(cols)}`;
}

function setList(t: TableInfo, set: Record<string, unknown>, p: Params): string {
  return Object.entries(set)
    .filter(([, v]) => v !== undefined)
    .map(([name, v]) => `${q(name)} = ${p.add(paramValue(t.columnMap.get(name) as ColumnInfo, v))}`)
    .join(', ');
}

export function updateByPkSql(t: TableInfo, pk: Record<string, unknown>, set: Record<string, unknown>, cols: ColumnInfo[] | null, p: Params): string {
  const assignments = setList(t, set, p);
  return `UPDATE ${t.qualified} SET ${assignments} WHERE ${pkCondition(t, pk, p)}${returning(cols)}`;
}

export function updateWhereSql(t: TableInfo, where: string, set: Record<string, unknown>, cols: ColumnInfo[] | null, p: Params): string {
  return `UPDATE ${t.qualified} SET ${setList(t, set, p)} WHERE ${where}${returning(cols)}`;
}

export function deleteByPkSql(t: TableInfo, pk: Record<string, unknown>, cols: ColumnInfo[] | null, p: Params): string {
  return `DELETE FROM ${t.qualified} WHERE ${pkCondition(t, pk, p)}${returning(cols)}`;
}

export function deleteWhereSql(t: TableInfo, where: string, cols: ColumnInfo[] | null): string {
  return `DELETE FROM ${t.qualified} WHERE ${where}${returning(cols)}`;
}
