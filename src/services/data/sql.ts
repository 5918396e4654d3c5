/**
 * Raw read-only SQL for analysts (POST /v1/sql). One statement, with parameters, in the caller's
 * tenant session, behind two walls that each hold alone:
 *
 * 1. src/services/data/sql-guard.ts parses it with PostgreSQL's parser: one plain query, no locks, no
 *    INTO, no deny-listed function, nothing of schema strata.
 * 2. PostgreSQL runs it in a READ ONLY transaction with the caller's statement_timeout, after
 *    `SET LOCAL ROLE strata_analyst` (migration 0003): a role that can SELECT the tenant tables under
 *    their row-level security and nothing else — in particular it cannot EXECUTE set_config, so it
 *    cannot change strata.tenant_id. The statement is sent with the extended protocol (it always has
 *    the LIMIT parameter), which PostgreSQL itself refuses to run with more than one command.
 *
 * Analyst SQL is refused (503 SQL_SANDBOX_UNAVAILABLE) until the database shows the role in place.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import type { Config } from '../../config.js';
import type { Database } from '../../db/database.js';
import type { SessionContext } from '../../db/session.js';
import { AppError, badRequest, unavailable } from '../../errors.js';
import { DENIED_FUNCTION_REGEX, GUARD_ONLY_FUNCTIONS, guardStatement, wrapWithLimit, type GuardedStatement } from './sql-guard.js';
import { BOUND_ROWS_PREFIX_LENGTH, boundRowsSql, readBounded } from './response-bounds.js';

/** The role analyst SQL runs under (migrations/0003_analyst_role). */
export const ANALYST_ROLE = 'strata_analyst';
/** Rows returned at most; one more is fetched to tell whether the result was cut. */
export const DEFAULT_ROW_CAP = 10_000;
export const MAX_PARAMS = 100;
/** The timeout ceiling when DB_STATEMENT_TIMEOUT_MS is 0 (off): analyst SQL always has one. */
export const FALLBACK_TIMEOUT_MS = 30_000;

export interface SqlQueryInput {
  sql: string;
  params?: unknown[];
  timeout_ms?: number;
}

export interface SqlField {
  name: string;
  type: string;
}

export interface SqlQueryResult {
  data: Record<string, unknown>[];
  fields: SqlField[];
  row_count: number;
  truncated: boolean;
  /** Why the rows stop early: `rows` (the row cap) or `bytes` (SQL_MAX_RESULT_BYTES); absent when complete. */
  truncated_by?: 'rows' | 'bytes';
}

export interface SqlServiceDeps {
  db: Database;
  config: Pick<Config, 'DB_STATEMENT_TIMEOUT_MS'> & Partial<Pick<Config, 'SQL_MAX_RESULT_BYTES'>>;
  log?: Pick<Logger, 'warn'>;
  rowCap?: number;
  /** The compliance policy's check of a statement (declared columns the role reads masked). */
  checkSql?: (sql: string, ctx: SessionContext) => Promise<void>;
}

const DEFAULT_MAX_RESULT_BYTES = 8 * 1024 * 1024;

/**
 * The one statement of `sql` (see guardStatement), checked against the parameters given for it:
 * 400 SQL_TOO_MANY_PARAMS past MAX_PARAMS, 400 SQL_PARAMS_MISMATCH when the counts differ.
 */
export async function guardWithParams(
  sql: string,
  params: readonly unknown[],
  unsafeRelations?: () => Promise<ReadonlySet<string>>,
): Promise<GuardedStatement> {
  if (params.length > MAX_PARAMS) throw badRequest('SQL_TOO_MANY_PARAMS', `at most ${MAX_PARAMS} parameters`);
  const stmt = await guardStatement(sql);
  if (unsafeRelations && stmt.relations.size > 0) {
    const unsafe = await unsafeRelations();
    const hit = [...stmt.relations].filter((r) => unsafe.has(r)).sort();
    if (hit.length > 0) {
      throw new AppError(
        403,
        'VIEW_NOT_SECURITY_INVOKER',
        `analyst SQL may not read ${hit.join(', ')}: a view without security_invoker (or a materialized view) reads past row-level security`,
        { relations: hit },
      );
    }
  }
  if (stmt.paramCount !== params.length) {
    throw badRequest('SQL_PARAMS_MISMATCH', `the statement uses ${stmt.paramCount} parameter(s) ($1..$${stmt.paramCount}) but ${params.length} were given`, {
      expected: stmt.paramCount,
      given: params.length,
    });
  }
  return stmt;
}

/**
 * Views in `public` that read past row-level security (no `security_invoker`, or materialized) and
 * that strata_analyst can SELECT (0003 grants it what tenant sessions can read): analyst SQL may not
 * name them, as /v1 and /rest/v1 do not serve them. Read through the admin pool, kept for `ttlMs`.
 */
const UNSAFE_VIEWS_SQL = `SELECT c.relname::text AS name FROM pg_class c
  WHERE c.relnamespace = 'public'::regnamespace
    AND (c.relkind = 'm' OR (c.relkind = 'v' AND NOT coalesce((SELECT o.option_value::bool FROM pg_options_to_table(c.reloptions) o WHERE o.option_name = 'security_invoker'), false)))
    AND has_table_privilege('${ANALYST_ROLE}', c.oid, 'SELECT')`;

export function createUnsafeRelations(db: Pick<Database, 'adminQuery'>, ttlMs = 1000): () => Promise<ReadonlySet<string>> {
  let at = 0;
  let current: Promise<ReadonlySet<string>> | undefined;
  return () => {
    if (!current || Date.now() - at > ttlMs) {
      at = Date.now();
      const p = db.adminQuery<{ name: string }>(UNSAFE_VIEWS_SQL).then(({ rows }) => new Set(rows.map((r) => r.name)));
      current = p;
      p.catch(() => {
        if (current === p) current = undefined;
      });
    }
    return current;
  };
}

/** The largest timeout_ms a caller may ask for. */
export const maxTimeoutMs = (config: Pick<Config, 'DB_STATEMENT_TIMEOUT_MS'>): number =>
  config.DB_STATEMENT_TIMEOUT_MS > 0 ? config.DB_STATEMENT_TIMEOUT_MS : FALLBACK_TIMEOUT_MS;

/**
 * The low-level executor: `text` as it is, with `values`, in a READ ONLY tenant transaction under
 * strata_analyst. No parsing and no checks here — tests call it directly to prove the database
 * alone refuses what the guard would have stopped. The service only calls it with guarded SQL.
 */
export function runAsAnalyst<R extends pg.QueryResultRow = Record<string, unknown>>(
  db: Database,
  ctx: SessionContext,
  text: string,
  values: readonly unknown[],
  opts: { statementTimeoutMs: number },
): Promise<pg.QueryResult<R>> {
  return db.withTenant(
    ctx,
    async (tx) => {
      // Queued together with BEGIN and the tenant settings: still one round trip. The settings are
      // made before the role changes (strata_analyst could not make them).
      const role = tx.query(`SET LOCAL ROLE ${ANALYST_ROLE}`);
      const result = tx.query<R>(text, values, { final: true });
      const [, res] = await Promise.all([role, result]); // a failed SET ROLE is the error reported
      return res;
    },
    { readOnly: true, statementTimeoutMs: opts.statementTimeoutMs, releaseClean: true },
  );
}

const SANDBOX_SQL = `
SELECT r.oid IS NOT NULL AS role_exists,
       coalesce(NOT r.rolsuper AND NOT r.rolbypassrls AND NOT r.rolcanlogin, false) AS role_plain,
       coalesce(pg_has_role(current_user, r.oid, 'MEMBER'), false) AS can_set_role,
       coalesce(has_function_privilege(r.oid, 'pg_catalog.set_config(text,text,boolean)'::regprocedure, 'EXECUTE'), true) AS can_set_config,
       coalesce(to_regnamespace('strata') IS NOT NULL AND has_schema_privilege(r.oid, 'strata', 'USAGE'), false) AS strata_usage,
       EXISTS (SELECT 1 FROM pg_class c WHERE c.relowner = r.oid) AS owns_relations,
       ARRAY(SELECT DISTINCT p.proname::text FROM pg_proc p
              WHERE r.oid IS NOT NULL AND p.proname ~ $1 AND NOT p.proname = ANY ($2::text[])
                AND has_function_privilege(r.oid, p.oid, 'EXECUTE')
              ORDER BY 1) AS callable,
       ARRAY(SELECT c.relname::text FROM pg_class c
              WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND r.oid IS NOT NULL
                AND has_table_privilege('strata_tenant', c.oid, 'SELECT') AND NOT has_table_privilege(r.oid, c.oid, 'SELECT')
              ORDER BY 1) AS unreadable
  FROM (SELECT 1) one LEFT JOIN pg_roles r ON r.rolname = '${ANALYST_ROLE}'`;

interface SandboxRow {
  role_exists: boolean;
  role_plain: boolean;
  can_set_role: boolean;
  can_set_config: boolean;
  strata_usage: boolean;
  owns_relations: boolean;
  callable: string[];
  unreadable: string[];
}

/** What is missing from the sandbox, as sentences; [] when it is in place. */
function sandboxProblems(r: SandboxRow): string[] {
  if (!r.role_exists) return [`role ${ANALYST_ROLE} does not exist (apply migration 0003_analyst_role)`];
  const out: string[] = [];
  if (!r.role_plain) out.push(`${ANALYST_ROLE} is a superuser, can log in or bypasses RLS`);
  if (!r.can_set_role) out.push(`the application role is not a member of ${ANALYST_ROLE}`);
  if (r.can_set_config) out.push(`${ANALYST_ROLE} may EXECUTE pg_catalog.set_config (run migration 0003_analyst_role as a superuser)`);
  if (r.strata_usage) out.push(`${ANALYST_ROLE} has USAGE on schema strata`);
  if (r.owns_relations) out.push(`${ANALYST_ROLE} owns relations`);
  if (r.callable.length > 0) {
    out.push(`${ANALYST_ROLE} may EXECUTE ${r.callable.join(', ')} (run migration 0009_analyst_sandbox as a superuser, or revoke them from PUBLIC)`);
  }
  return out;
}

/** SQLSTATE classes that are the analyst's own mistakes: answered 400 SQL_ERROR with PostgreSQL's message. */
const USER_ERROR_CLASSES = new Set(['21', '22', '2F', '38', '39', '3D', '3F', '42', '0A', '54', 'P0']);

interface PgErrorLike {
  code?: string;
  message?: string;
  position?: string;
  hint?: string;
}

/** Maps an error of the analyst statement to a 4xx; anything else is rethrown to the error handler. */
export function toSqlError(err: unknown, where: { prefixLength: number; offset: number }): unknown {
  if (err instanceof AppError || !err || typeof err !== 'object') return err;
  const e = err as PgErrorLike;
  const code = e.code ?? '';
  if (!/^[0-9A-Z]{5}$/.test(code)) return err;
  const details: Record<string, unknown> = { sqlstate: code };
  const pos = Number(e.position);
  // PostgreSQL counts from the start of the wrapped text: map back into the caller's SQL.
  if (Number.isInteger(pos) && pos > where.prefixLength) details['position'] = pos - where.prefixLength + where.offset;
  if (e.hint) details['hint'] = e.hint;
  const message = e.message ?? 'the statement failed';
  switch (code) {
    case '42601':
      return new AppError(400, 'SQL_SYNTAX_ERROR', message, details, { cause: err });
    case '42501':
      return new AppError(403, 'SQL_PERMISSION_DENIED', message, details, { cause: err });
    case '25006':
      return new AppError(400, 'SQL_NOT_READ_ONLY', message, details, { cause: err });
    case '08P01': // bind message with the wrong number of parameters: a protocol error about this statement
      return new AppError(400, 'SQL_ERROR', message, details, { cause: err });
    default:
      if (USER_ERROR_CLASSES.has(code.slice(0, 2))) return new AppError(400, 'SQL_ERROR', message, details, { cause: err });
      return err; // 57014 -> 504 STATEMENT_TIMEOUT, connection loss -> 503... (src/db/errors.ts)
  }
}

/** Builtin type names as format_type() spells them; others are looked up once and cached. */
const BUILTIN_TYPES: Record<number, string> = {
  16: 'boolean', 17: 'bytea', 18: '"char"', 19: 'name', 20: 'bigint', 21: 'smallint', 23: 'integer', 25: 'text',
  26: 'oid', 114: 'json', 142: 'xml', 199: 'json[]', 700: 'real', 701: 'double precision', 705: 'unknown',
  790: 'money', 869: 'inet', 1000: 'boolean[]', 1005: 'smallint[]', 1007: 'integer[]', 1009: 'text[]',
  1015: 'character varying[]', 1016: 'bigint[]', 1021: 'real[]', 1022: 'double precision[]', 1042: 'character',
  1043: 'character varying', 1082: 'date', 1083: 'time without time zone', 1114: 'timestamp without time zone',
  1115: 'timestamp without time zone[]', 1182: 'date[]', 1184: 'timestamp with time zone',
  1185: 'timestamp with time zone[]', 1186: 'interval', 1231: 'numeric[]', 1266: 'time with time zone',
  1700: 'numeric', 2249: 'record', 2278: 'void', 2950: 'uuid', 2951: 'uuid[]', 3614: 'tsvector', 3615: 'tsquery',
  3802: 'jsonb', 3807: 'jsonb[]',
};

/** JSON-friendly values: bytea as PostgreSQL's hex text (`\x...`) rather than a Buffer object. */
function toJsonRow(row: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const [k, v] of Object.entries(row)) {
    if (Buffer.isBuffer(v)) {
      out ??= { ...row };
      out[k] = `\\x${v.toString('hex')}`;
    }
  }
  return out ?? row;
}

export type SqlService = ReturnType<typeof createSqlService>;

export function createSqlService(deps: SqlServiceDeps) {
  const { db } = deps;
  const rowCap = deps.rowCap ?? DEFAULT_ROW_CAP;
  const maxBytes = deps.config.SQL_MAX_RESULT_BYTES ?? DEFAULT_MAX_RESULT_BYTES;
  const typeNames = new Map<number, string>(Object.entries(BUILTIN_TYPES).map(([oid, name]) => [Number(oid), name]));
  let sandboxReady: Promise<void> | undefined;
  const unsafeRelations = createUnsafeRelations(db);

  /** Checks once per process that the database holds its wall; a failed check is retried next call. */
  function ensureSandbox(ctx: SessionContext): Promise<void> {
    sandboxReady ??= (async () => {
      const { rows } = await db.tenantQuery<SandboxRow>(ctx, SANDBOX_SQL, [DENIED_FUNCTION_REGEX, [...GUARD_ONLY_FUNCTIONS]], { readOnly: true });
      const row = rows[0];
      const problems = row ? sandboxProblems(row) : ['the sandbox check returned nothing'];
      if (problems.length > 0) {
        throw unavailable('SQL_SANDBOX_UNAVAILABLE', `raw SQL is disabled: ${problems.join('; ')}`, 60);
      }
      if (row && row.unreadable.length > 0) {
        deps.log?.warn({ tables: row.unreadable }, `tables readable by tenant sessions but not by ${ANALYST_ROLE}: grant SELECT on them to ${ANALYST_ROLE}`);
      }
    })();
    return sandboxReady.catch((err: unknown) => {
      sandboxReady = undefined;
      throw err;
    });
  }

  async function fieldTypes(ctx: SessionContext, oids: number[]): Promise<void> {
    const missing = [...new Set(oids)].filter((oid) => !typeNames.has(oid));
    if (missing.length === 0) return;
    const { rows } = await db.tenantQuery<{ oid: string; name: string }>(
      ctx,
      'SELECT oid::int8::text AS oid, format_type(oid, NULL) AS name FROM pg_catalog.pg_type WHERE oid = ANY($1::oid[])',
      [missing],
      { readOnly: true },
    );
    for (const r of rows) typeNames.set(Number(r.oid), r.name);
  }

  return {
    /**
     * Runs one read-only statement for the caller's tenant. Returns at most the row cap, with
     * `truncated` when there were more. Errors: see guardStatement, plus 400 SQL_PARAMS_MISMATCH,
     * SQL_ERROR, SQL_DUPLICATE_COLUMN, 403 SQL_PERMISSION_DENIED, 504 STATEMENT_TIMEOUT and
     * 503 SQL_SANDBOX_UNAVAILABLE.
     */
    async query(ctx: SessionContext, input: SqlQueryInput): Promise<SqlQueryResult> {
      const params = input.params ?? [];
      const ceiling = maxTimeoutMs(deps.config);
      const timeout = input.timeout_ms ?? ceiling;
      if (!Number.isInteger(timeout) || timeout < 1 || timeout > ceiling) {
        throw badRequest('VALIDATION_FAILED', `body.timeout_ms must be an integer between 1 and ${ceiling}`, { field: 'body.timeout_ms' });
      }
      const stmt = await guardWithParams(input.sql, params, unsafeRelations);
      await deps.checkSql?.(input.sql, ctx);
      const wrapped = await wrapWithLimit(stmt, params.length + 1);
      // Bytes are capped inside PostgreSQL, counted as each row's JSON (what the client is sent):
      // a row of a gigabyte never reaches the service (response-bounds.ts).
      const text = boundRowsSql(wrapped.text, `$${params.length + 2}`);
      await ensureSandbox(ctx);
      let res: pg.QueryResult;
      try {
        res = await runAsAnalyst(db, ctx, text, [...params, rowCap + 1, maxBytes], { statementTimeoutMs: timeout });
      } catch (err) {
        throw toSqlError(err, { prefixLength: BOUND_ROWS_PREFIX_LENGTH + wrapped.prefixLength, offset: stmt.offset });
      }
      // the rows the statement produced (up to the row cap + 1), sent or not
      const before = readBounded(res).total;
      const names = res.fields.map((f) => f.name);
      const dup = names.find((n, i) => names.indexOf(n) !== i);
      if (dup !== undefined) {
        throw badRequest('SQL_DUPLICATE_COLUMN', `the result has two columns named ${JSON.stringify(dup)}: give them distinct aliases`, { column: dup });
      }
      await fieldTypes(
        ctx,
        res.fields.map((f) => f.dataTypeID),
      );
      const byBytes = res.rows.length < Math.min(before, rowCap);
      const truncated = byBytes || res.rows.length > rowCap;
      const data = (res.rows.length > rowCap ? res.rows.slice(0, rowCap) : res.rows).map(toJsonRow);
      return {
        data,
        fields: res.fields.map((f) => ({ name: f.name, type: typeNames.get(f.dataTypeID) ?? `oid:${f.dataTypeID}` })),
        row_count: data.length,
        truncated,
        ...(truncated ? { truncated_by: byBytes ? ('bytes' as const) : ('rows' as const) } : {}),
      };
    },
  };
}
