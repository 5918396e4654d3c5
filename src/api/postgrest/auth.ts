/**
 * Strata's authentication under PostgREST's headers: supabase-js sends its key as `apikey` and
 * `Authorization: Bearer <key or user JWT>`. A JWT goes to Strata's JWT check, anything else is a
 * Strata API key. There is no anonymous role: no credential, or a credential without a tenant, is a
 * 401 in PostgREST's shape. The request.* settings PostgREST exposes are built here.
 */
import type { FastifyRequest } from 'fastify';
import { CAN, type Capability } from '../../domain.js';
import { attachPrincipal } from '../../logger.js';
import type { Authenticator, Principal } from '../../services/identity/index.js';
import type { RequestSettings } from '../../db/session.js';
import { PgrstError } from './errors.js';

const BEARER = /^Bearer\s+(\S+)\s*$/i;
const isJwt = (s: string) => /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(s);
/** Headers never copied into request.headers (credentials). */
const SECRET_HEADERS = new Set(['authorization', 'apikey', 'x-api-key', 'cookie', 'proxy-authorization']);

function credentials(request: FastifyRequest): { authorization?: string; 'x-api-key'?: string } {
  const h = request.headers;
  const auth = h.authorization;
  if (auth !== undefined) {
    const token = BEARER.exec(auth)?.[1];
    if (!token) throw new PgrstError(401, 'PGRST301', 'the Authorization header must be "Bearer <token>"');
    return isJwt(token) ? { authorization: `Bearer ${token}` } : { 'x-api-key': token };
  }
  const key = h['x-api-key'] ?? h['apikey'];
  if (typeof key === 'string' && key.length > 0) return isJwt(key) ? { authorization: `Bearer ${key}` } : { 'x-api-key': key };
  throw new PgrstError(401, 'PGRST302', 'Anonymous access is disabled', null, 'send a Strata JWT (Authorization: Bearer) or API key (apikey)');
}

/**
 * The principal of a Bearer JWT verified before, without waiting (undefined whenever it is not
 * already known): the same answer authenticate() would reach, as only verified JWTs are remembered.
 */
export function knownPrincipal(request: FastifyRequest, authenticator: Authenticator): Principal | undefined {
  const auth = request.headers.authorization;
  return auth === undefined ? undefined : authenticator.cached({ authorization: auth });
}

/** The request's principal (PostgREST-shaped 401 for a missing or bad credential). */
export async function lookupPrincipal(request: FastifyRequest, authenticator: Authenticator): Promise<Principal> {
  const headers = credentials(request);
  return authenticator.cached(headers) ?? (await authenticator.authenticate(headers));
}

/** Admit the request (sets request.ctx); throws PostgREST-shaped 401/403. */
export function admit(request: FastifyRequest, principal: Principal, capability: Capability): void {
  if (principal.tenantId === null) {
    throw new PgrstError(401, 'PGRST301', 'the credential names no tenant: /rest/v1 needs a token with a tenant_id claim or a tenant API key');
  }
  // as /v1's: work queued for a client that has gone is dropped before it reaches the database
  request.ctx = { ...principal, requestId: request.id, stats: request.queryStats, alive: () => !(request.raw.socket?.destroyed === true) };
  attachPrincipal(request.log, principal);
  const allowed = CAN[capability] as readonly string[];
  if (!allowed.includes(principal.role)) {
    throw new PgrstError(403, '42501', `permission denied: role ${principal.role} may not do this (needs one of ${allowed.join(', ')})`);
  }
}

/** The headers of the last request on a connection (credentials removed) and their JSON. */
interface SeenHeaders {
  names: string[];
  values: string[];
  json: string;
}
const lastHeaders = new WeakMap<object, SeenHeaders>();

/**
 * request.headers' JSON: lower-case names, credentials removed. A keep-alive client sends the same
 * headers request after request (the credential aside, which is left out): the JSON of the previous
 * request on the connection is reused when every header is the same, in the same order.
 */
function headersJson(request: FastifyRequest): string {
  const all = request.headers;
  const socket = request.raw.socket as object | null;
  const seen = socket ? lastHeaders.get(socket) : undefined;
  if (seen !== undefined) {
    let i = 0;
    let same = true;
    for (const k in all) {
      const v = all[k];
      if (v === undefined || SECRET_HEADERS.has(k)) continue;
      if (seen.names[i] !== k || seen.values[i] !== v) {
        same = false;
        break;
      }
      i++;
    }
    if (same && i === seen.names.length) return seen.json;
  }
  const names: string[] = [];
  const values: string[] = [];
  const headers: Record<string, string> = {};
  // for...in over Node's header object (own, enumerable, lower-case names): no entries array per request
  for (const k in all) {
    const v = all[k];
    if (v === undefined || SECRET_HEADERS.has(k)) continue;
    const text = typeof v === 'string' ? v : v.join(', ');
    headers[k] = text;
    names.push(k);
    // an array (set-cookie) never compares equal: such a request's JSON is built each time
    values.push(typeof v === 'string' ? v : '\u0000');
  }
  const json = JSON.stringify(headers);
  if (socket) lastHeaders.set(socket, { names, values, json });
  return json;
}

/** PostgREST's request.jwt.claims, request.method, request.path and request.headers (credentials removed). */
export function requestSettings(request: FastifyRequest, path: string): RequestSettings {
  const ctx = request.ctx;
  return {
    claims: JSON.stringify({ sub: ctx.actor, role: ctx.role, tenant_id: ctx.tenantId }),
    method: request.method,
    path,
    headers: headersJson(request),
  };
}

/** The path PostgREST's request.path holds: the URL's path below /rest/v1, without the query. */
export function restPath(url: string): string {
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  const below = path.startsWith('/rest/v1') ? path.slice(8) : path;
  return below === '' ? '/' : below;
}
