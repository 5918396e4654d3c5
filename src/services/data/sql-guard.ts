/**
 * The first wall around raw analyst SQL: the statement is parsed by PostgreSQL's own parser
 * (libpg-query, compiled to WASM) and must be exactly one plain query — a SELECT, VALUES, TABLE or a
 * WITH whose every CTE is a query — with no row locks, no INTO, no function that could change
 * settings or roles, reach files, other servers or large objects, hold locks beyond the statement,
 * consume sequences or run SQL given as text, and no reference to the platform schema `strata`.
 *
 * The database is the second wall (src/services/data/sql.ts): a READ ONLY transaction under the role
 * strata_analyst, which cannot EXECUTE set_config nor any function of migration 0009's list (locks,
 * large objects, notifications, SQL given as text...) and has no USAGE on schema strata. Each wall
 * holds on its own; this one gives clear 4xx answers before anything is sent. Functions are found
 * however they are spelled: a call `f(x)`, and the field selection `(x).f` / `alias.f` that PostgreSQL
 * also resolves to a call of a one-argument function.
 *
 * pg_sleep, pg_sleep_for and pg_sleep_until are allowed on purpose: the statement_timeout of the
 * analyst transaction (at most DB_STATEMENT_TIMEOUT_MS) bounds them as it bounds any slow query.
 */
import { libpgQuery, parse } from './pg-parser.js';
import { AppError, badRequest, forbidden } from '../../errors.js';

/** A statement that passed the guard. */
export interface GuardedStatement {
  /** The statement alone: no trailing semicolon, nothing after it. */
  readonly text: string;
  /** Character offset (0-based) of `text` in the submitted SQL, to map PostgreSQL's error positions back. */
  readonly offset: number;
  /** Highest `$n` the statement references (0 for none). */
  readonly paramCount: number;
  /** Relations named without a schema or in `public` (lower-cased as PostgreSQL folds them; quoted names as written). */
  readonly relations: ReadonlySet<string>;
}

/** Functions denied by exact name (any schema). */
const DENIED_FUNCTIONS = new Set([
  // settings and roles: the tenant lives in strata.tenant_id
  'set_config',
  // server files
  'pg_read_file',
  'pg_read_binary_file',
  'pg_stat_file',
  'pg_logdir_ls',
  // large objects (lo_* below)
  'loread',
  'lowrite',
  // other backends and the server itself
  'pg_terminate_backend',
  'pg_cancel_backend',
  'pg_reload_conf',
  'pg_rotate_logfile',
  'pg_promote',
  'pg_switch_wal',
  'pg_create_restore_point',
  'pg_log_backend_memory_contexts',
  'pg_import_system_collations',
  'pg_logical_emit_message',
  'pg_replication_slot_advance',
  // notifications, transaction ids and sequences: side effects outside the read-only statement
  'pg_notify',
  'txid_current',
  'txid_current_if_assigned',
  'pg_current_xact_id',
  'pg_current_xact_id_if_assigned',
  'pg_export_snapshot',
  'nextval',
  'setval',
  'currval',
  'lastval',
  // run SQL given as text
  'ts_stat',
  'ts_rewrite',
  // session state that would outlive the statement on a pooled connection
  'setseed',
  'set_limit',
  'pg_current_snapshot',
  'txid_current_snapshot',
  // writes to indexes
  'brin_summarize_new_values',
  'brin_summarize_range',
  'brin_desummarize_range',
  'gin_clean_pending_list',
  // network access from the server (pgsql-http)
  'http',
]);

/** Function families denied by name prefix. */
const DENIED_PATTERNS: readonly RegExp[] = [
  /^pg_ls_/, // directory listings
  /^pg_file_/, // adminpack writes
  /^lo_/, // large objects: lo_import, lo_export, lo_open...
  /^dblink/, // other connections, as other roles
  /^postgres_fdw_/,
  /^http_/,
  /^pg_(try_)?advisory/, // session advisory locks would outlive the request on a pooled connection
  /^(query|cursor|table|schema|database)_to_xml/, // run SQL given as text
  /^pg_stat_reset/,
  /^pg_stat_statements_reset/,
  /^pg_(create|drop|copy)_\w*replication_slot$/,
  /^pg_replication_origin_/,
  /^pg_logical_slot_/,
  /^pg_(backup_start|backup_stop|start_backup|stop_backup)$/,
  /^pg_wal_replay_/,
];

/**
 * Denied functions the database leaves to other privileges: a sequence function needs a privilege
 * on the sequence, and strata_analyst holds none. Every other denied function must be revoked from
 * strata_analyst in the database itself (migration 0009), which the SQL service checks at first use.
 */
export const GUARD_ONLY_FUNCTIONS: ReadonlySet<string> = new Set(['nextval', 'setval', 'currval', 'lastval']);

/** A PostgreSQL regular expression matching every denied function name (for catalog checks). */
export const DENIED_FUNCTION_REGEX = `^(${[...DENIED_FUNCTIONS].join('|')})$|${DENIED_PATTERNS.map((p) => p.source).join('|')}`;

/**
 * The denied functions PostgreSQL can call by field selection, `(x).f` or `alias.f`: those taking one
 * argument (or one plus defaults). Listed from the catalog of PostgreSQL 15 (pg_proc, names matching
 * the denied names with pronargs - pronargdefaults <= 1 <= pronargs) and the extensions named above.
 * Only these are refused as field names, so a column such as `lo_priority` or `http_status` stays
 * readable as `t.lo_priority`; the database refuses every one of them anyway (migration 0009).
 */
const FIELD_CALLABLE = new Set([
  'brin_summarize_new_values', 'currval', 'gin_clean_pending_list', 'lo_close', 'lo_creat', 'lo_create', 'lo_get',
  'lo_import', 'lo_tell', 'lo_tell64', 'lo_unlink', 'nextval', 'pg_advisory_lock', 'pg_advisory_lock_shared',
  'pg_advisory_unlock', 'pg_advisory_unlock_shared', 'pg_advisory_xact_lock', 'pg_advisory_xact_lock_shared',
  'pg_backup_start', 'pg_backup_stop', 'pg_cancel_backend', 'pg_create_physical_replication_slot',
  'pg_create_restore_point', 'pg_drop_replication_slot', 'pg_import_system_collations', 'pg_log_backend_memory_contexts',
  'pg_ls_dir', 'pg_ls_replslotdir', 'pg_ls_tmpdir', 'pg_promote', 'pg_read_binary_file', 'pg_read_file',
  'pg_replication_origin_create', 'pg_replication_origin_drop', 'pg_replication_origin_oid',
  'pg_replication_origin_session_progress', 'pg_replication_origin_session_setup', 'pg_stat_file',
  'pg_stat_reset_replication_slot', 'pg_stat_reset_shared', 'pg_stat_reset_single_function_counters',
  'pg_stat_reset_single_table_counters', 'pg_stat_reset_slru', 'pg_stat_reset_subscription_stats', 'pg_terminate_backend',
  'pg_try_advisory_lock', 'pg_try_advisory_lock_shared', 'pg_try_advisory_xact_lock', 'pg_try_advisory_xact_lock_shared',
  'set_limit', 'setseed', 'ts_stat',
  // extensions: dblink, pgsql-http, postgres_fdw
  'dblink', 'dblink_exec', 'dblink_connect', 'dblink_connect_u', 'dblink_disconnect', 'dblink_get_result', 'dblink_is_busy',
  'dblink_cancel_query', 'dblink_error_message', 'http', 'http_get', 'http_head', 'http_delete', 'postgres_fdw_disconnect',
]);

/** True when analyst SQL may not call the function `name` (unqualified, any case). */
export function isDeniedFunction(name: string): boolean {
  const n = name.toLowerCase();
  return DENIED_FUNCTIONS.has(n) || DENIED_PATTERNS.some((p) => p.test(n));
}

/** The platform's own schema: never visible to tenant SQL. */
const FORBIDDEN_SCHEMA = 'strata';

/** Statements that may appear as a CTE or a top-level statement besides SELECT, by AST node name. */
const STATEMENT_KEYWORDS: Record<string, string> = {
  InsertStmt: 'INSERT',
  UpdateStmt: 'UPDATE',
  DeleteStmt: 'DELETE',
  MergeStmt: 'MERGE',
  CopyStmt: 'COPY',
  DoStmt: 'DO',
  CallStmt: 'CALL',
  ExplainStmt: 'EXPLAIN',
  VariableSetStmt: 'SET',
  VariableShowStmt: 'SHOW',
  TransactionStmt: 'a transaction command',
  ListenStmt: 'LISTEN',
  UnlistenStmt: 'UNLISTEN',
  NotifyStmt: 'NOTIFY',
  PrepareStmt: 'PREPARE',
  ExecuteStmt: 'EXECUTE',
  DeallocateStmt: 'DEALLOCATE',
  LockStmt: 'LOCK',
  CreateTableAsStmt: 'CREATE TABLE AS',
  DeclareCursorStmt: 'DECLARE CURSOR',
};
const statementKeyword = (node: string) =>
  STATEMENT_KEYWORDS[node] ?? node.replace(/Stmt$/, '').replace(/([a-z])([A-Z])/g, '$1 $2').toUpperCase();

interface RawStmt {
  stmt?: Record<string, unknown>;
  stmt_location?: number;
  stmt_len?: number;
}

const isObject = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null;

/** The names (schema-qualified parts) of a FuncCall's funcname or a TypeName's names. */
function nameParts(list: unknown): string[] {
  if (!Array.isArray(list)) return [];
  return list.map((item) => {
    const s = isObject(item) && isObject(item['String']) ? item['String']['sval'] : undefined;
    return typeof s === 'string' ? s : '';
  });
}

/** What a walk over the statement's tree found. */
interface Findings {
  writes: string[];
  locking: boolean;
  into: boolean;
  schemas: Set<string>;
  functions: Set<string>;
  relations: Set<string>;
  maxParam: number;
}

/** Visits every node of the tree (iteratively: a deeply nested query must not overflow the stack). */
function inspect(root: unknown): Findings {
  const f: Findings = { writes: [], locking: false, into: false, schemas: new Set(), functions: new Set(), relations: new Set(), maxParam: 0 };
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const node = stack.pop();
    if (Array.isArray(node)) {
      for (const child of node) stack.push(child);
      continue;
    }
    if (!isObject(node)) continue;
    for (const [key, value] of Object.entries(node)) {
      if (/^[A-Z]\w*Stmt$/.test(key) && key !== 'SelectStmt') f.writes.push(statementKeyword(key));
      else if (key === 'lockingClause' && Array.isArray(value) && value.length > 0) f.locking = true;
      else if (key === 'intoClause' && value !== undefined && value !== null) f.into = true;
      else if (key === 'FuncCall' && isObject(value)) {
        const parts = nameParts(value['funcname']);
        const name = parts[parts.length - 1] ?? '';
        if (parts.length > 1 && parts[parts.length - 2] === FORBIDDEN_SCHEMA) f.schemas.add(FORBIDDEN_SCHEMA);
        if (isDeniedFunction(name)) f.functions.add(name.toLowerCase());
      } else if ((key === 'A_Indirection' || key === 'ColumnRef') && isObject(value)) {
        // PostgreSQL calls a one-argument function written as field selection: `(expr).fname` or
        // `alias.fname` (when no column has that name). A field named after a denied one-argument
        // function is refused, whatever it would resolve to.
        const fields = nameParts(key === 'ColumnRef' ? value['fields'] : value['indirection']);
        if (key === 'ColumnRef' && fields.length < 2) {
          // a bare name is a column, never a call
        } else {
          for (const field of fields) if (FIELD_CALLABLE.has(field.toLowerCase())) f.functions.add(field.toLowerCase());
        }
      } else if (key === 'RangeVar' && isObject(value)) {
        if (value['schemaname'] === FORBIDDEN_SCHEMA) f.schemas.add(FORBIDDEN_SCHEMA);
        if ((value['schemaname'] === undefined || value['schemaname'] === 'public') && typeof value['relname'] === 'string') f.relations.add(value['relname']);
      } else if (key === 'TypeName' && isObject(value)) {
        const parts = nameParts(value['names']);
        if (parts.length > 1 && parts[parts.length - 2] === FORBIDDEN_SCHEMA) f.schemas.add(FORBIDDEN_SCHEMA);
      } else if (key === 'ParamRef' && isObject(value) && typeof value['number'] === 'number') {
        f.maxParam = Math.max(f.maxParam, value['number']);
      }
      if (isObject(value)) stack.push(value);
    }
  }
  return f;
}

/** The submitted SQL cut to one statement. libpg-query's locations count UTF-8 bytes. */
function sliceStatement(sql: string, raw: RawStmt): { text: string; offset: number } {
  const bytes = Buffer.from(sql, 'utf8');
  const start = raw.stmt_location ?? 0;
  const end = raw.stmt_len ? start + raw.stmt_len : bytes.length;
  return { text: bytes.subarray(start, end).toString('utf8'), offset: bytes.subarray(0, start).toString('utf8').length };
}

async function parseOrThrow(sql: string) {
  try {
    return await parse(sql);
  } catch (err) {
    if (err instanceof (await libpgQuery()).SqlError) {
      const pos = err.sqlDetails?.cursorPosition;
      throw new AppError(400, 'SQL_SYNTAX_ERROR', err.message, pos === undefined ? undefined : { position: pos + 1 }, { cause: err });
    }
    throw err;
  }
}

/**
 * Checks `sql` and returns the one statement it holds, or throws: 400 SQL_SYNTAX_ERROR (with the
 * 1-based `position`, as PostgreSQL reports it), SQL_EMPTY, SQL_MULTIPLE_STATEMENTS or
 * SQL_NOT_READ_ONLY; 403 SQL_FORBIDDEN_SCHEMA or SQL_FORBIDDEN_FUNCTION (naming the functions).
 */
export async function guardStatement(sql: string): Promise<GuardedStatement> {
  const result = await parseOrThrow(sql);
  const stmts = (result.stmts ?? []) as RawStmt[];
  if (stmts.length === 0) throw badRequest('SQL_EMPTY', 'the SQL holds no statement');
  if (stmts.length > 1) {
    throw badRequest('SQL_MULTIPLE_STATEMENTS', `exactly one statement is allowed; found ${stmts.length}`, { statements: stmts.length });
  }
  const raw = stmts[0] as RawStmt;
  const kind = Object.keys(raw.stmt ?? {})[0] ?? '';
  if (kind !== 'SelectStmt') {
    throw badRequest('SQL_NOT_READ_ONLY', `only a query (SELECT, VALUES, TABLE or WITH ... SELECT) may run here, not ${statementKeyword(kind)}`, {
      statement: statementKeyword(kind),
    });
  }
  const f = inspect(raw.stmt);
  if (f.writes.length > 0) {
    throw badRequest('SQL_NOT_READ_ONLY', `the query contains a data-modifying statement (${f.writes[0]})`, { statement: f.writes[0] });
  }
  if (f.locking) throw badRequest('SQL_NOT_READ_ONLY', 'FOR UPDATE / FOR SHARE would lock rows: not allowed in a read-only query');
  if (f.into) throw badRequest('SQL_NOT_READ_ONLY', 'SELECT ... INTO creates a table: not allowed in a read-only query');
  if (f.schemas.size > 0) {
    throw forbidden('SQL_FORBIDDEN_SCHEMA', `schema ${FORBIDDEN_SCHEMA} belongs to the platform and is not readable`, { schema: FORBIDDEN_SCHEMA });
  }
  if (f.functions.size > 0) {
    const names = [...f.functions].sort();
    throw forbidden('SQL_FORBIDDEN_FUNCTION', `function${names.length > 1 ? 's' : ''} ${names.join(', ')} may not be called from analyst SQL`, {
      functions: names,
    });
  }
  return { ...sliceStatement(sql, raw), paramCount: f.maxParam, relations: f.relations };
}

/**
 * Wraps a guarded statement as `SELECT * FROM (<statement>) LIMIT $n`, and proves by parsing again
 * that the result is still one query reading from that one subquery (so no text in the statement
 * can escape the parentheses). `$n` is the parameter after the statement's own.
 */
export async function wrapWithLimit(stmt: GuardedStatement, limitParam: number): Promise<{ text: string; prefixLength: number }> {
  const prefix = 'SELECT * FROM (\n';
  const text = `${prefix}${stmt.text}\n) AS strata_sql LIMIT $${limitParam}`;
  const again = await parseOrThrow(text);
  const only = again.stmts?.length === 1 ? (again.stmts[0]?.stmt as Record<string, unknown> | undefined) : undefined;
  const select = only && isObject(only['SelectStmt']) ? only['SelectStmt'] : undefined;
  const from = select && Array.isArray(select['fromClause']) ? (select['fromClause'] as unknown[]) : [];
  if (from.length !== 1 || !isObject(from[0]) || !('RangeSubselect' in from[0])) {
    throw badRequest('SQL_NOT_READ_ONLY', 'the statement cannot be run as a single query');
  }
  return { text, prefixLength: prefix.length };
}
