/**
 * PostgreSQL's own parser (libpg-query, compiled to WASM), loaded on first use. Importing it
 * instantiates the WASM module at once, and a service that never parses SQL (no /v1/sql, no EXPLAIN,
 * no slow query) should not carry that memory: every caller goes through here.
 */
import type * as LibPgQuery from 'libpg-query';

let loading: Promise<typeof LibPgQuery> | undefined;

/** The libpg-query module, imported on the first call. */
export function libpgQuery(): Promise<typeof LibPgQuery> {
  return (loading ??= import('libpg-query'));
}

export async function parse(sql: string): Promise<LibPgQuery.ParseResult> {
  return (await libpgQuery()).parse(sql);
}

export async function normalize(sql: string): Promise<string> {
  return (await libpgQuery()).normalize(sql);
}

export async function fingerprint(sql: string): Promise<string> {
  return (await libpgQuery()).fingerprint(sql);
}
