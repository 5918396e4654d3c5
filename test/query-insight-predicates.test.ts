/** Dexter's first step: the indexable predicates read from PostgreSQL's parse tree (libpg-query). */
import { describe, expect, it } from 'vitest';
import { queryPredicates, type ColumnUse } from '../src/services/query-insight/index.js';

const uses = async (sql: string) =>
  (await queryPredicates(sql))!.uses
    .map(
      (u: ColumnUse) => `${u.table ? `${u.table.schema ?? ''}.${u.table.name}` : '?'}:${u.column}:${u.kind}`,
    )
    .sort();

describe('queryPredicates', () => {
  it('reads equality, IN, range, BETWEEN, LIKE and ORDER BY columns of one table', async () => {
    expect(
      await uses(
        'SELECT * FROM items WHERE status = $1 AND kind IN ($2, $3) AND created_at >= $4 AND price BETWEEN $5 AND $6 AND name LIKE $7 ORDER BY created_at DESC',
      ),
    ).toEqual([
      '.items:created_at:order',
      '.items:created_at:range',
      '.items:kind:eq',
      '.items:name:range',
      '.items:price:range',
      '.items:status:eq',
    ]);
  });

  it('resolves aliases and schema-qualified tables, and takes both sides of a join condition', async () => {
    expect(
      await uses(
        'SELECT r.id FROM public.pipeline_runs r JOIN pipelines p ON p.id = r.pipeline_id WHERE p.status = $1',
      ),
    ).toEqual(['.pipelines:id:eq', '.pipelines:status:eq', 'public.pipeline_runs:pipeline_id:eq']);
  });

  it('looks into subqueries, each with its own scope, and leaves ambiguous columns for the catalog', async () => {
    const p = await queryPredicates(
      'SELECT * FROM (SELECT e.id FROM events e, (SELECT pg_sleep($1)) s WHERE e.category = $2) AS strata_sql LIMIT $3',
    );
    expect(p!.tables).toEqual([{ schema: null, name: 'events' }]);
    expect(await uses('SELECT * FROM a, b WHERE x = $1')).toEqual(['?:x:eq']);
  });

  it('ignores what a plain column index cannot serve (functions of or arithmetic on the column) and statements that are not queries', async () => {
    expect(await uses('SELECT * FROM t WHERE lower(name) = $1 AND id + 1 = $2')).toEqual([]);
    expect(await queryPredicates('UPDATE t SET a = $1 WHERE id = $2')).toBeUndefined();
    expect(await queryPredicates('EXPLAIN SELECT * FROM t WHERE id = $1')).toBeUndefined();
  });
});
