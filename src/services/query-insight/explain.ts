/**
 * POST /v1/admin/explain: the plan of one read-only statement (or of a rows-API read), run in the
 * caller's tenant session under the same two walls as /v1/sql (the libpg-query guard, then a READ
 * ONLY transaction as strata_analyst with row-level security). The transaction is always rolled
 * back, so EXPLAIN ANALYZE leaves nothing behind. The plan comes back as PostgreSQL's JSON with a
 * short summary: sequential scans on large tables, the costliest node, row misestimates over 10x.
 * Planner statistics are computed over every tenant's rows, so a tenant role gets the plan without
 * them (redactPlan); the full plan and summary are for platform_admin.
 */
import { parse } from '../data/index.js';
import type pg from 'pg';
import type { Database } from '../../db/database.js';
import type { SessionContext } from '../../db/session.js';
import { badRequest } from '../../errors.js';
import type { QueryString, RowsService } from '../data/index.js';
import { guardStatement } from '../data/index.js';
import { ANALYST_ROLE, MAX_PARAMS, toSqlError } from '../data/index.js';

export interface ExplainInput {
  sql?: string;
  params?: unknown[];
  analyze?: boolean;
  /** Instead of sql: a table and a rows-API query string (`status=eq.active&order=id.desc`). */
  table?: string;
  query?: string;
}

/** One node of PostgreSQL's JSON plan (the fields read here). */
export interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  Alias?: string;
  'Total Cost': number;
  'Plan Rows': number;
  'Actual Rows'?: number;
  'Actual Loops'?: number;
  Filter?: string;
  Plans?: PlanNode[];
}

export interface ExplainSummary {
  total_cost: number | null;
  seq_scans_on_large_tables: { relation: string; table_rows: number | null; filter: string | null }[];
  costliest_node: { node_type: string; relation: string | null; total_cost: number; self_cost: number } | null;
  /** Nodes whose actual rows differ from the estimate by more than 10x (null without analyze). */
  misestimates:
    | {
        node_type: string;
        relation: string | null;
        estimated_rows: number;
        actual_rows: number;
        factor: number;
      }[]
    | null;
  planning_time_ms: number | null;
  execution_time_ms: number | null;
}

export interface ExplainResult {
  sql: string;
  analyzed: boolean;
  plan: unknown;
  /** Tenant roles: planner statistics (computed over every tenant) are left out; see redactPlan. */
  redacted: boolean;
  summary: ExplainSummary;
}

/**
 * Plan fields that carry numbers computed over every tenant's rows: the planner's estimates (and
 * the costs and widths derived from them), rows counted before row-level security filtered them
 * (removed by a filter, fetched from an index, matched by a bitmap index scan), and buffer and
 * block counts, which grow with the whole table. A tenant's EXPLAIN leaves them out.
 */
const TENANT_HIDDEN = new Set([
  'Startup Cost',
  'Total Cost',
  'Plan Rows',
  'Plan Width',
  'Actual Rows',
  'Actual Loops',
  'Rows Removed by Filter',
  'Rows Removed by Index Recheck',
  'Rows Removed by Join Filter',
  'Heap Fetches',
  'Exact Heap Blocks',
  'Lossy Heap Blocks',
  'Hash Buckets',
  'Original Hash Buckets',
  'Hash Batches',
  'Original Hash Batches',
  'Peak Memory Usage',
  'Sort Space Used',
  'Sort Space Type',
  'Shared Hit Blocks',
  'Shared Read Blocks',
  'Shared Dirtied Blocks',
  'Shared Written Blocks',
  'Local Hit Blocks',
  'Local Read Blocks',
  'Local Dirtied Blocks',
  'Local Written Blocks',
  'Temp Read Blocks',
  'Temp Written Blocks',
  'I/O Read Time',
  'I/O Write Time',
  'Temp I/O Read Time',
  'Temp I/O Write Time',
  'Workers Planned',
  'Workers Launched',
  'Workers',
]);

/** A copy of a JSON plan without TENANT_HIDDEN fields, at every depth (Planning buffers included). */
export function redactPlan(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(redactPlan);
  if (typeof value !== 'object' || value === null) return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) if (!TENANT_HIDDEN.has(k)) out[k] = redactPlan(v);
  return out;
}

/** The summary a tenant role gets: the plan's shape only (every sequential scan, no sizes or costs). */
function tenantSummary(root: { Plan: PlanNode; 'Planning Time'?: number; 'Execution Time'?: number }, analyzed: boolean): ExplainSummary {
  const seq: ExplainSummary['seq_scans_on_large_tables'] = [];
  walk(root.Plan, (n) => {
    if (n['Node Type'] === 'Seq Scan' && n['Relation Name']) seq.push({ relation: n['Relation Name'], table_rows: null, filter: n.Filter ?? null });
  });
  return {
    total_cost: null,
    seq_scans_on_large_tables: seq,
    costliest_node: null,
    misestimates: null,
    planning_time_ms: root['Planning Time'] ?? null,
    execution_time_ms: analyzed ? (root['Execution Time'] ?? null) : null,
  };
}

export const MISESTIMATE_FACTOR = 10;

/** Marks the end of the explain transaction: thrown to roll it back, carrying the plan out. */
class RolledBack extends Error {
  constructor(readonly result: pg.QueryResult) {
    super('explain transaction rolled back');
  }
}

function toQueryString(query: string): QueryString {
  const out: QueryString = {};
  for (const [k, v] of new URLSearchParams(query)) {
    const prev = out[k];
    out[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return out;
}

function walk(node: PlanNode, visit: (n: PlanNode) => void): void {
  visit(node);
  for (const child of node.Plans ?? []) walk(child, visit);
}

/** The summary of a JSON plan; `tableRows` gives pg_class.reltuples by relation name. */
export function summarizePlan(
  root: { Plan: PlanNode; 'Planning Time'?: number; 'Execution Time'?: number },
  tableRows: Map<string, number>,
  largeTableRows: number,
  analyzed: boolean,
): ExplainSummary {
  const seq: ExplainSummary['seq_scans_on_large_tables'] = [];
  const mis: NonNullable<ExplainSummary['misestimates']> = [];
  let costliest: ExplainSummary['costliest_node'] | undefined;
  walk(root.Plan, (n) => {
    const relation = n['Relation Name'] ?? null;
    const self = n['Total Cost'] - (n.Plans ?? []).reduce((s, c) => s + c['Total Cost'], 0);
    if (!costliest || self > costliest.self_cost) {
      costliest = {
        node_type: n['Node Type'],
        relation,
        total_cost: n['Total Cost'],
        self_cost: Math.round(Math.max(0, self) * 100) / 100,
      };
    }
    if (n['Node Type'] === 'Seq Scan' && relation !== null) {
      const rows = tableRows.get(relation) ?? 0;
      if (rows >= largeTableRows) seq.push({ relation, table_rows: rows, filter: n.Filter ?? null });
    }
    if (analyzed && n['Actual Rows'] !== undefined && (n['Actual Loops'] ?? 0) > 0) {
      const est = n['Plan Rows'];
      const act = n['Actual Rows'];
      const factor = Math.max(est, 1) / Math.max(act, 1);
      const off = factor >= 1 ? factor : 1 / factor;
      if (off > MISESTIMATE_FACTOR) {
        mis.push({
          node_type: n['Node Type'],
          relation,
          estimated_rows: est,
          actual_rows: act,
          factor: Math.round(off * 10) / 10,
        });
      }
    }
  });
  return {
    total_cost: root.Plan['Total Cost'],
    seq_scans_on_large_tables: seq,
    costliest_node: costliest as ExplainSummary['costliest_node'],
    misestimates: analyzed ? mis : null,
    planning_time_ms: root['Planning Time'] ?? null,
    execution_time_ms: root['Execution Time'] ?? null,
  };
}

export interface ExplainServiceDeps {
  db: Database;
  rows: Pick<RowsService, 'listStatement'>;
  largeTableRows: number;
  statementTimeoutMs: number;
}

export function createExplainService(deps: ExplainServiceDeps) {
  const { db } = deps;

  async function statement(
    input: ExplainInput,
    ctx: SessionContext,
  ): Promise<{ text: string; values: unknown[]; offset: number }> {
    if ((input.sql === undefined) === (input.table === undefined)) {
      throw badRequest(
        'EXPLAIN_INPUT_INVALID',
        'give either sql (with params) or table (with a rows-API query), not both or neither',
      );
    }
    if (input.sql !== undefined) {
      if (input.query !== undefined)
        throw badRequest('EXPLAIN_INPUT_INVALID', 'query goes with table, not with sql');
      const params = input.params ?? [];
      if (params.length > MAX_PARAMS)
        throw badRequest('SQL_TOO_MANY_PARAMS', `at most ${MAX_PARAMS} parameters`);
      const stmt = await guardStatement(input.sql);
      if (stmt.paramCount !== params.length) {
        throw badRequest(
          'SQL_PARAMS_MISMATCH',
          `the statement uses ${stmt.paramCount} parameter(s) ($1..$${stmt.paramCount}) but ${params.length} were given`,
          {
            expected: stmt.paramCount,
            given: params.length,
          },
        );
      }
      return { text: stmt.text, values: params, offset: stmt.offset };
    }
    if (input.params !== undefined)
      throw badRequest('EXPLAIN_INPUT_INVALID', 'params go with sql; a rows-API query carries its values');
    const built = await deps.rows.listStatement(input.table as string, toQueryString(input.query ?? ''), ctx);
    return { ...built, offset: 0 };
  }

  return {
    /**
     * Plans (and with `analyze`, runs) one read-only statement for the caller's tenant, then rolls
     * back. Errors: those of /v1/sql's guard, 400 EXPLAIN_INPUT_INVALID, SQL_PARAMS_MISMATCH, and
     * the rows API's for a table query.
     */
    async explain(ctx: SessionContext, input: ExplainInput): Promise<ExplainResult> {
      const analyzed = input.analyze === true;
      const { text, values, offset } = await statement(input, ctx);
      const prefix = `EXPLAIN (${analyzed ? 'ANALYZE, BUFFERS, ' : ''}FORMAT JSON) `;
      const explainText = prefix + text;
      // the prefix must not change what the statement is: still exactly one EXPLAIN
      const again = await parse(explainText);
      if (again.stmts?.length !== 1 || !again.stmts[0]?.stmt || !('ExplainStmt' in again.stmts[0].stmt)) {
        throw badRequest('SQL_NOT_READ_ONLY', 'the statement cannot be explained as a single query');
      }
      let res: pg.QueryResult | undefined;
      try {
        await db.withTenant(
          ctx,
          async (tx) => {
            const role = tx.query(`SET LOCAL ROLE ${ANALYST_ROLE}`);
            const plan = tx.query(explainText, values);
            const [, r] = await Promise.all([role, plan]);
            throw new RolledBack(r);
          },
          { readOnly: true, statementTimeoutMs: deps.statementTimeoutMs, retries: 0, releaseClean: true },
        );
      } catch (err) {
        if (!(err instanceof RolledBack)) throw toSqlError(err, { prefixLength: prefix.length, offset });
        res = err.result;
      }
      const plan = (
        res?.rows[0] as {
          'QUERY PLAN': [{ Plan: PlanNode; 'Planning Time'?: number; 'Execution Time'?: number }];
        }
      )['QUERY PLAN'];
      if (ctx.role !== 'platform_admin') {
        return { sql: text, analyzed, plan: redactPlan(plan), redacted: true, summary: tenantSummary(plan[0], analyzed) };
      }
      const relations = new Set<string>();
      for (const p of plan)
        walk(
          p.Plan,
          (n) => n['Node Type'] === 'Seq Scan' && n['Relation Name'] && relations.add(n['Relation Name']),
        );
      const tableRows = new Map<string, number>();
      if (relations.size > 0) {
        const { rows } = await db.tenantQuery<{ name: string; reltuples: number }>(
          ctx,
          `SELECT r.name, greatest(c.reltuples, 0)::float8 AS reltuples
             FROM unnest($1::text[]) AS r(name) JOIN pg_catalog.pg_class c ON c.oid = to_regclass(quote_ident(r.name))`,
          [[...relations]],
          { readOnly: true },
        );
        for (const r of rows) tableRows.set(r.name, r.reltuples);
      }
      return {
        sql: text,
        analyzed,
        plan,
        redacted: false,
        summary: summarizePlan(plan[0], tableRows, deps.largeTableRows, analyzed),
      };
    },
  };
}
