/**
 * What a sandbox serves: the data paths whose every statement runs in a tenant session (so on the
 * sandbox's database). Everything else (jobs, exports to files, webhooks, change feeds, admin
 * routes, testing mode, caches kept outside PostgreSQL) would reach the real database or shared
 * state, so a request naming a sandbox there is refused with 400 SANDBOX_NOT_SUPPORTED instead of
 * quietly running against the real data.
 */

/** Route patterns (Fastify's routeOptions.url) served on a sandbox; `*` ends a prefix. */
export const SANDBOX_ROUTES: readonly string[] = [
  '/v1/tables',
  '/v1/tables/:table',
  '/v1/tables/:table/rows',
  '/v1/tables/:table/rows/:pk',
  '/v1/transactions',
  '/v1/sql',
  '/graphql',
  '/rest/v1/*',
];

export function sandboxRouteAllowed(url: string | undefined): boolean {
  if (!url) return false;
  return SANDBOX_ROUTES.some((r) => (r.endsWith('/*') ? url === r.slice(0, -2) || url.startsWith(r.slice(0, -1)) : url === r));
}
