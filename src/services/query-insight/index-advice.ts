/**
 * GET /v1/admin/index-advice: Dexter's method (ankane/dexter) on the slow-query log.
 *
 * 1. The logged statements (already normalised: every value a $n) are parsed by libpg-query and
 *    their predicates read (predicates.ts): equality, range and ORDER BY columns per table.
 * 2. Candidates: every single column, and two-column indexes led by an equality column. A candidate
 *    an existing valid index already starts with is dropped.
 * 3. Each query is planned generically (`plan_cache_mode = force_generic_plan`, PREPARE, EXPLAIN
 *    EXECUTE with NULLs, DEALLOCATE: values unknown, as Dexter does before PostgreSQL 16) with no
 *    index added, then with each candidate created as a HypoPG hypothetical index (never built).
 * 4. A query's best candidate is suggested when it at least halves the plan's cost; a two-column
 *    index wins over the best single column only when it is cheaper still by 10%.
 *
 * Plans are made on an admin connection switched to the strata_analyst role (read-only privileges;
 * statements are planned, never run). No tenant is set, so the row-level security filter is a
 * constant-free generic condition: the advice is about the query's own predicates. Without hypopg the answer says
 * so (501 HYPOPG_UNAVAILABLE); nothing is guessed.
 */
import pg from 'pg';
import type { Database } from '../../db/database.js';
import { AppError } from '../../errors.js';
import { ANALYST_ROLE } from '../data/index.js';
import type { ExtensionProbe } from './extensions.js';
import { queryPredicates, type ColumnUse, type TableRef } from './predicates.js';
import type { SlowQueryEntry } from './slow-log.js';

export const MIN_GAIN = 0.5;
const TWO_COLUMN_MARGIN = 0.9;
const MAX_QUERIES = 50;
const MAX_CANDIDATES_PER_TABLE = 40;

export interface IndexSuggestion {
  table: string;
  columns: string[];
  statement: string;
  /** Planner costs: null when redacted (tenant roles). */
  cost_before: number | null;
  cost_after: number | null;
  queries: { sql: string; occurrences: number; cost_before: number | null; cost_after: number | null }[];
}

export interface IndexAdvice {
  hypopg: 'available';
  /**
   * True for tenant roles: plan costs come from planner statistics computed over every tenant's rows
   * of the shared tables, so a tenant admin gets the suggestions without them (ordered by how often
   * their queries ran), never figures that would tell how many rows other tenants hold.
   */
  redacted: boolean;
  queries_analyzed: number;
  suggestions: IndexSuggestion[];
  skipped: { sql: string; reason: string }[];
}

interface CatalogTable {
  ref: string;
  schema: string;
  name: string;
  columns: string[];
  indexes: string[][];
}

interface Query {
  sql: string;
  occurrences: number;
  /** Column uses resolved to catalog tables: key `schema.name`. */
  byTable: Map<string, { eq: Set<string>; range: Set<string>; order: Set<string> }>;
  params: number;
  types?: string[];
  baseline?: number;
}

const q = pg.escapeIdentifier;
const refText = (t: TableRef) => (t.schema ? `${q(t.schema)}.${q(t.name)}` : q(t.name));
const round = (n: number) => Math.round(n * 100) / 100;

function maxParam(sql: string): number {
  let max = 0;
  for (const m of sql.matchAll(/\$(\d+)/g)) max = Math.max(max, Number(m[1]));
  return max;
}

/** Candidate column lists for one table's predicates, Dexter style. */
function candidates(p: { eq: Set<string>; range: Set<string>; order: Set<string> }): string[][] {
  const all = [...new Set([...p.eq, ...p.range, ...p.order])];
  const out: string[][] = all.map((c) => [c]);
  for (const a of p.eq) for (const b of all) if (a !== b) out.push([a, b]);
  return out.slice(0, MAX_CANDIDATES_PER_TABLE);
}

const covered = (indexes: string[][], cols: string[]) =>
  indexes.some((ix) => cols.every((c, i) => ix[i] === c));

export interface IndexAdviceDeps {
  db: Database;
  extensions: ExtensionProbe;
  statementTimeoutMs: number;
}

export function createIndexAdvisor(deps: IndexAdviceDeps) {
  const { db } = deps;

  async function catalog(refs: TableRef[]): Promise<Map<string, CatalogTable>> {
    const { rows } = await db.adminQuery<CatalogTable>(
      `SELECT r.ref, n.nspname AS schema, c.relname AS name,
              ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
              (SELECT coalesce(json_agg((SELECT coalesce(json_agg(coalesce(a.attname::text, '(expression)') ORDER BY k.ord), '[]'::json)
                                           FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                                           LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum)), '[]'::json)
                 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisvalid AND i.indpred IS NULL) AS indexes
         FROM unnest($1::text[]) AS r(ref)
         JOIN pg_class c ON c.oid = to_regclass(r.ref)
         JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'`,
      [[...new Set(refs.map(refText))]],
    );
    return new Map(rows.map((r) => [r.ref, r]));
  }

  function resolve(use: ColumnUse, tables: Map<string, CatalogTable>): CatalogTable | undefined {
    if (use.table) {
      const t = tables.get(refText(use.table));
      return t?.columns.includes(use.column) ? t : undefined;
    }
    const owners = use.scope
      .map((s) => tables.get(refText(s)))
      .filter((t): t is CatalogTable => !!t && t.columns.includes(use.column));
    return owners.length === 1 ? owners[0] : undefined;
  }

  return {
    /** Advice for the given slow-log entries (already scoped to the caller's tenant); `redact` for tenant roles. */
    async advise(entries: SlowQueryEntry[], opts: { redact?: boolean } = {}): Promise<IndexAdvice> {
      const hypo = await deps.extensions('hypopg');
      if (!hypo.available) {
        throw new AppError(
          501,
          'HYPOPG_UNAVAILABLE',
          `hypopg unavailable: ${hypo.reason}; index advice needs hypothetical indexes and does not guess without them`,
        );
      }
      const grouped = new Map<string, { sql: string; occurrences: number }>();
      for (const e of entries) {
        const key = e.fingerprint ?? e.sql;
        const g = grouped.get(key);
        if (g) g.occurrences++;
        else grouped.set(key, { sql: e.sql, occurrences: 1 });
      }
      const distinct = [...grouped.values()]
        .sort((a, b) => b.occurrences - a.occurrences)
        .slice(0, MAX_QUERIES);
      const skipped: IndexAdvice['skipped'] = [];
      const parsed: { sql: string; occurrences: number; uses: ColumnUse[]; tables: TableRef[] }[] = [];
      for (const d of distinct) {
        const p = await queryPredicates(d.sql).catch(() => undefined);
        if (!p) skipped.push({ sql: d.sql, reason: 'not a plain query' });
        else if (p.uses.length === 0) skipped.push({ sql: d.sql, reason: 'no indexable predicate' });
        else parsed.push({ ...d, uses: p.uses, tables: p.tables });
      }
      const tables = await catalog(parsed.flatMap((p) => p.tables));
      const queries: Query[] = [];
      for (const p of parsed) {
        const byTable: Query['byTable'] = new Map();
        for (const u of p.uses) {
          const t = resolve(u, tables);
          if (!t) continue;
          const key = `${q(t.schema)}.${q(t.name)}`;
          let s = byTable.get(key);
          if (!s) byTable.set(key, (s = { eq: new Set(), range: new Set(), order: new Set() }));
          s[u.kind].add(u.column);
        }
        if (byTable.size === 0) skipped.push({ sql: p.sql, reason: 'no predicate on a known table column' });
        else queries.push({ sql: p.sql, occurrences: p.occurrences, byTable, params: maxParam(p.sql) });
      }
      const indexesOf = new Map([...tables.values()].map((t) => [`${q(t.schema)}.${q(t.name)}`, t.indexes]));

      // candidate index (table + columns) -> the queries it may help
      const cands = new Map<string, { table: string; columns: string[]; queries: Query[] }>();
      for (const qu of queries) {
        for (const [table, preds] of qu.byTable) {
          for (const cols of candidates(preds)) {
            if (covered(indexesOf.get(table) ?? [], cols)) continue;
            const key = `${table}(${cols.map(q).join(',')})`;
            const c = cands.get(key);
            if (c) c.queries.push(qu);
            else cands.set(key, { table, columns: cols, queries: [qu] });
          }
        }
      }

      const costs = new Map<Query, { columns: string[]; table: string; cost: number }[]>();
      // a connection whose settings could not be reset is destroyed, never handed back as analyst
      const lease = await db.admin.acquire();
      const client = lease.client;
      let reset = false;
      try {
        let n = 0;
        /** Generic plan cost; the parameter types PostgreSQL cannot infer are taken as text. */
        const plan = async (qu: Query): Promise<number> => {
          const name = `strata_advice_${n++}`;
          const types = (qu.types ??= Array.from({ length: qu.params }, () => 'unknown'));
          for (let attempt = 0; ; attempt++) {
            try {
              await client.query(
                `PREPARE ${name}${types.length ? `(${types.join(', ')})` : ''} AS ${qu.sql}`,
              );
              break;
            } catch (err) {
              const m = /parameter \$(\d+)/.exec((err as Error).message);
              if ((err as { code?: string }).code !== '42P18' || !m || attempt > qu.params) throw err;
              types[Number(m[1]) - 1] = 'text';
            }
          }
          try {
            const args = types.length ? `(${types.map(() => 'NULL').join(', ')})` : '';
            const { rows } = await client.query<{ 'QUERY PLAN': [{ Plan: { 'Total Cost': number } }] }>(
              `EXPLAIN (FORMAT JSON) EXECUTE ${name}${args}`,
            );
            return rows[0]!['QUERY PLAN'][0].Plan['Total Cost'];
          } finally {
            await client.query(`DEALLOCATE ${name}`);
          }
        };
        await client.query(
          "SELECT set_config('plan_cache_mode', 'force_generic_plan', false), set_config('statement_timeout', $1, false)",
          [String(deps.statementTimeoutMs)],
        );
        // logged statements are planned (never run) with the analyst role's privileges, not the admin's
        await client.query(`SET ROLE ${ANALYST_ROLE}`);
        try {
          for (const qu of queries) {
            try {
              qu.baseline = await plan(qu);
            } catch (err) {
              skipped.push({ sql: qu.sql, reason: `could not be planned: ${(err as Error).message}` });
            }
          }
          for (const c of cands.values()) {
            const live = c.queries.filter((qu) => qu.baseline !== undefined);
            if (live.length === 0) continue;
            let created: pg.QueryResult<{ indexrelid: number }>;
            try {
              created = await client.query<{ indexrelid: number }>(
                'SELECT indexrelid FROM hypopg_create_index($1)',
                [`CREATE INDEX ON ${c.table} (${c.columns.map(q).join(', ')})`],
              );
            } catch {
              continue; // a column type btree cannot index (json, ...): not a candidate
            }
            const rows = created.rows;
            try {
              for (const qu of live) {
                const cost = await plan(qu).catch(() => undefined);
                if (cost === undefined) continue;
                let list = costs.get(qu);
                if (!list) costs.set(qu, (list = []));
                list.push({ table: c.table, columns: c.columns, cost });
              }
            } finally {
              await client.query('SELECT hypopg_drop_index($1)', [rows[0]?.indexrelid]);
            }
          }
        } finally {
          await client.query(
            'RESET ROLE; SELECT hypopg_reset(); RESET plan_cache_mode; RESET statement_timeout',
          );
          reset = true;
        }
      } finally {
        lease.release(reset ? undefined : true);
      }

      const suggestions = new Map<string, IndexSuggestion>();
      for (const qu of queries) {
        const tried = costs.get(qu) ?? [];
        const best = (width: number) =>
          tried.filter((t) => t.columns.length === width).sort((a, b) => a.cost - b.cost)[0];
        const one = best(1);
        const two = best(2);
        const pick = two && (!one || two.cost < one.cost * TWO_COLUMN_MARGIN) ? two : one;
        if (!pick || qu.baseline === undefined || pick.cost > qu.baseline * MIN_GAIN) continue;
        const key = `${pick.table}(${pick.columns.join(',')})`;
        let s = suggestions.get(key);
        if (!s) {
          s = {
            table: pick.table,
            columns: pick.columns,
            statement: `CREATE INDEX CONCURRENTLY ON ${pick.table} (${pick.columns.map(q).join(', ')})`,
            cost_before: 0,
            cost_after: 0,
            queries: [],
          };
          suggestions.set(key, s);
        }
        s.cost_before = round(s.cost_before! + qu.baseline);
        s.cost_after = round(s.cost_after! + pick.cost);
        s.queries.push({
          sql: qu.sql,
          occurrences: qu.occurrences,
          cost_before: round(qu.baseline),
          cost_after: round(pick.cost),
        });
      }
      const ranked = [...suggestions.values()].sort(
        (a, b) => b.cost_before! - b.cost_after! - (a.cost_before! - a.cost_after!),
      );
      if (!opts.redact) return { hypopg: 'available', redacted: false, queries_analyzed: queries.length, suggestions: ranked, skipped };
      // Tenant roles: no cost, and no order by cost (it would rank the tables by size); the most
      // run queries first, then by name
      const occurrences = (s: IndexSuggestion) => s.queries.reduce((n, qu) => n + qu.occurrences, 0);
      const redacted = ranked
        .map((s) => ({ ...s, cost_before: null, cost_after: null, queries: s.queries.map((qu) => ({ ...qu, cost_before: null, cost_after: null })) }))
        .sort((a, b) => occurrences(b) - occurrences(a) || a.statement.localeCompare(b.statement));
      return { hypopg: 'available', redacted: true, queries_analyzed: queries.length, suggestions: redacted, skipped };
    },
  };
}
