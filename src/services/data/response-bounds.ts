/**
 * Byte bounds of answers, computed by PostgreSQL: a statement is wrapped so that the server adds up
 * the size of each row's JSON as it produces them and sends only the rows that fit, so an oversized
 * answer is never turned into one giant string in the service (V8 cannot hold a string past about
 * 512 MB; node-postgres would throw ERR_STRING_TOO_LONG while parsing). The caller learns that rows
 * were left out and answers 413 RESPONSE_TOO_LARGE, or cuts the page where the API has a way to say
 * so (a truncation flag, a next cursor). Settings: RESPONSE_MAX_BYTES and SQL_MAX_RESULT_BYTES
 * (docs/limits.md).
 *
 * Two shapes:
 * - boundJsonSql: the statement already renders each row as JSON text in column `j` (rows API):
 *   its length is summed, the crossing row and those after it come back with `j` NULL (only the
 *   first of them is sent at all), flagged by column `strata$over`.
 * - boundRowsSql: any row-returning statement (analyst SQL, time series, search, change history,
 *   GraphQL): every row is sized as `to_json(row)`; rows past the bound are not sent, and a one-row
 *   summary says how many rows there were (read with readBounded).
 * - boundWriteSql: a write returning its rows (rows API, /rest/v1): a write cannot be cut, so
 *   PostgreSQL fails the statement (SQLSTATE ST413, strata.answer_within of migration 0017) when
 *   the rows' JSON would pass the bound, before sending any: the transaction rolls back, nothing is
 *   written, and the caller answers 413 (isAnswerTooLarge).
 */
import type pg from 'pg';
import { SQLSTATE } from '../../db/errors.js';
import { responseTooLarge } from '../../errors.js';

/**
 * Wrap a statement whose column `j` is a row's JSON text; `others` are its other column names (as
 * valid SQL identifiers). `maxParam` is the `$n` holding the byte bound. Row order is kept: the
 * window has no ORDER BY and takes the rows as the statement produces them.
 */
export function boundJsonSql(inner: string, others: readonly string[], maxParam: string): string {
  const rest = others.map((c) => `, strata_b.${c}`).join('');
  return (
    `SELECT CASE WHEN strata_b."strata$to" <= ${maxParam}::int8 THEN strata_b.j END AS j${rest}, strata_b."strata$to" > ${maxParam}::int8 AS "strata$over" ` +
    `FROM (SELECT strata_i.*, sum(octet_length(strata_i.j) + 1) OVER (ROWS UNBOUNDED PRECEDING) AS "strata$to" FROM (${inner}) strata_i) strata_b ` +
    `WHERE strata_b."strata$to" - octet_length(strata_b.j) - 1 <= ${maxParam}::int8`
  );
}

/**
 * boundJsonSql for a statement that answers at most one row (an equality on a single-column primary
 * key; `inner` has no LIMIT or OFFSET of its own): the running sum is the row's own size, so no
 * window is needed. Same columns and meaning:
 * `j` is NULL and `strata$over` true when the row's JSON (plus its separator) passes the bound.
 */
export function boundOneJsonSql(inner: string, maxParam: string): string {
  // OFFSET 0 keeps the subquery whole: pulled up, each of the three references to `j` would
  // build the row's JSON again
  return (
    `SELECT CASE WHEN octet_length(strata_i.j) + 1 <= ${maxParam}::int8 THEN strata_i.j END AS j, octet_length(strata_i.j) + 1 > ${maxParam}::int8 AS "strata$over" ` +
    `FROM (${inner} OFFSET 0) strata_i`
  );
}

/** True when a row of a boundJsonSql statement is past the bound (its `j` is NULL then). */
export const isOver = (row: Record<string, unknown>): boolean => row['strata$over'] === true;

/**
 * Wrap any row-returning statement: PostgreSQL sizes each row as its JSON (`to_json`, what the
 * client is sent, not the row's text: a thousand NULL columns are a thousand keys) and keeps the
 * rows while the running total stays within `$maxParam`. The statement is a CTE read twice, so it
 * is materialized and run once; the left join from its one-row summary keeps one row even when no
 * row fits, to tell that apart from an empty result (the nested loop a non-equality join needs keeps
 * the rows in order). Adds two columns, removed by readBounded.
 */
export function boundRowsSql(inner: string, maxParam: string): string {
  return (
    `WITH strata_r AS (SELECT strata_rows.*, sum(octet_length(to_json(strata_rows)::text) + 1) OVER (ROWS UNBOUNDED PRECEDING) AS "strata$bytes" FROM (\n${inner}\n) AS strata_rows), ` +
    `strata_m AS (SELECT count(*) AS "strata$rows" FROM strata_r)\n` +
    `SELECT strata_r.*, strata_m."strata$rows" FROM strata_m LEFT JOIN strata_r ON strata_r."strata$bytes" <= ${maxParam}::int8`
  );
}

/**
 * A write answered only when it fits: `ctes` defines (at least) the CTE `strata_w` of the written
 * rows, with their JSON text in column `j` (a data-modifying CTE is always run to completion, and
 * before the outer SELECT can fail). The rows' bytes are summed once (an InitPlan) and checked by
 * strata.answer_within, which raises ST413 past `$maxParam`; no row is sent then.
 */
export function boundWriteSql(ctes: string, maxParam: string): string {
  return (
    `WITH ${ctes} SELECT strata_w.* FROM strata_w ` +
    `WHERE strata.answer_within((SELECT sum(octet_length(strata_s.j) + 1) FROM strata_w strata_s)::int8, ${maxParam}::int8)`
  );
}

/** True for the error of a boundWriteSql statement past its bound (SQLSTATE ST413; the write rolled back). */
export const isAnswerTooLarge = (err: unknown): boolean =>
  typeof err === 'object' && err !== null && (err as { code?: unknown }).code === SQLSTATE.ANSWER_TOO_LARGE;

/** Text before the caller's statement in boundRowsSql (to map error positions back). */
export const BOUND_ROWS_PREFIX_LENGTH = boundRowsSql('', '$1').indexOf('\n') + 1;

export interface Bounded<R> {
  rows: R[];
  /** Rows the statement produced, sent or not. */
  total: number;
  /** Some rows were left out for the byte bound. */
  cut: boolean;
  /** Bytes of the rows sent (PostgreSQL's JSON size). */
  bytes: number;
}

/** Read a boundRowsSql result in place: the two bound columns are removed from rows and fields. */
export function readBounded<R extends pg.QueryResultRow>(res: pg.QueryResult<R>): Bounded<R> {
  const rows = res.rows as Array<Record<string, unknown>>;
  const total = Number(rows[0]?.['strata$rows'] ?? 0);
  if (rows.length === 1 && rows[0]?.['strata$bytes'] === null) rows.length = 0; // no row fits, or none at all
  const bytes = Number(rows[rows.length - 1]?.['strata$bytes'] ?? 0);
  for (const r of rows) {
    delete r['strata$bytes'];
    delete r['strata$rows'];
  }
  res.fields = res.fields.filter((f) => f.name !== 'strata$bytes' && f.name !== 'strata$rows');
  return { rows: res.rows, total, cut: rows.length < total, bytes };
}

/** The 413 of an answer past its bound; `setting` names what to raise, `hint` what to ask for instead. */
export function tooLarge(what: string, maxBytes: number, setting: string, hint: string): Error {
  return responseTooLarge(`${what} would be larger than ${maxBytes} bytes (${setting}); ${hint}`, { max_bytes: maxBytes, setting });
}
