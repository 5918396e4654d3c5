/**
 * Authentication: a Bearer JWT (HS256 with JWT_SECRET, or RS256 and others via JWT_JWKS_URL) or an
 * X-API-Key. The tenant comes only from the verified credential, never from any other input.
 */
import { createHash, createSecretKey } from 'node:crypto';
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import type { Config } from '../../config.js';
import type { Database } from '../../db/database.js';
import { ROLES, TENANT_ID_PATTERN, type Role } from '../../domain.js';
import { forbidden, unauthorized } from '../../errors.js';

export interface Principal {
  tenantId: string | null;
  actor: string;
  role: Role;
}

type AuthHeaders = { authorization?: string | undefined; 'x-api-key'?: string | string[] | undefined };

export interface Authenticator {
  authenticate(headers: AuthHeaders): Promise<Principal>;
  /**
   * The principal of a bearer token verified before, whose tenant is known to be active, without
   * waiting: undefined whenever anything is not already known (then call authenticate()).
   */
  cached(headers: AuthHeaders): Principal | undefined;
  /** Forget a tenant's cached status (after PATCH /v1/admin/tenants/{id}). */
  forgetTenant(id: string): void;
}

const TENANT_CACHE_MS = 5_000;
const BEARER = /^Bearer\s+(\S+)\s*$/i;
/** Verified tokens are remembered (bounded) until their expiry or this long, whichever is sooner. */
const TOKEN_CACHE_MS = 60_000;
const TOKEN_CACHE_MAX = 10_000;

export const hashApiKey = (key: string): Buffer => createHash('sha256').update(key).digest();

export function createAuthenticator(deps: { config: Config; db: Database; jwtSecret: string | undefined }): Authenticator {
  const { config, db } = deps;
  const secret = deps.jwtSecret ? createSecretKey(Buffer.from(deps.jwtSecret)) : undefined;
  const jwks: JWTVerifyGetKey | undefined = config.JWT_JWKS_URL ? createRemoteJWKSet(new URL(config.JWT_JWKS_URL)) : undefined;
  const tenants = new Map<string, { status: string | null; at: number }>();
  // Signature checks dominate the per-request cost; a token verified once is trusted until it
  // expires (capped), exactly as it would be on re-verification. Insertion order gives FIFO eviction.
  const verified = new Map<string, { principal: Principal; until: number }>();

  async function fromJwtCached(token: string): Promise<Principal> {
    const now = Date.now();
    const hit = verified.get(token);
    if (hit && hit.until > now) return hit.principal;
    if (hit) verified.delete(token);
    const { principal, exp } = await fromJwt(token);
    if (verified.size >= TOKEN_CACHE_MAX) verified.delete(verified.keys().next().value as string);
    verified.set(token, { principal, until: Math.min(exp === undefined ? Infinity : exp * 1000, now + TOKEN_CACHE_MS) });
    return principal;
  }

  // Concurrent misses for one tenant share one lookup (no stampede on the admin pool).
  const inflight = new Map<string, Promise<string | null>>();
  async function tenantStatus(id: string): Promise<string | null> {
    const hit = tenants.get(id);
    if (hit && Date.now() - hit.at < TENANT_CACHE_MS) return hit.status;
    let pending = inflight.get(id);
    if (!pending) {
      pending = db
        .adminQuery<{ status: string }>('SELECT status FROM strata.tenants WHERE id = $1', [id])
        .then(({ rows }) => {
          const status = rows[0]?.status ?? null;
          tenants.set(id, { status, at: Date.now() });
          return status;
        })
        .finally(() => inflight.delete(id));
      inflight.set(id, pending);
    }
    return pending;
  }

  async function checkTenant(p: Principal): Promise<Principal> {
    if (p.role === 'platform_admin' || p.tenantId === null) return p;
    const status = await tenantStatus(p.tenantId);
    if (status === null) throw forbidden('TENANT_UNKNOWN', `tenant ${p.tenantId} is not registered`);
    if (status !== 'active') throw forbidden('TENANT_SUSPENDED', `tenant ${p.tenantId} is suspended`);
    return p;
  }

  async function fromJwt(token: string): Promise<{ principal: Principal; exp: number | undefined }> {
    let payload: JWTPayload;
    try {
      const verifyOpts = {
        issuer: config.JWT_ISSUER,
        audience: config.JWT_AUDIENCE,
      };
      if (secret) {
        try {
          payload = (await jwtVerify(token, secret, { ...verifyOpts, algorithms: ['HS256'] })).payload;
        } catch (err) {
          if (!jwks || err instanceof joseErrors.JWTExpired) throw err;
          payload = (await jwtVerify(token, jwks, verifyOpts)).payload;
        }
      } else if (jwks) {
        payload = (await jwtVerify(token, jwks, verifyOpts)).payload;
      } else {
        throw unauthorized('TOKEN_INVALID', 'bearer tokens are not accepted: no JWT_SECRET or JWT_JWKS_URL configured');
      }
    } catch (err) {
      if (err instanceof joseErrors.JWTExpired) throw unauthorized('TOKEN_EXPIRED', 'the bearer token has expired');
      if (err instanceof joseErrors.JOSEError) throw unauthorized('TOKEN_INVALID', 'the bearer token is invalid or badly signed');
      throw err;
    }
    const role = payload['role'];
    const tenant = payload['tenant_id'];
    if (typeof payload.sub !== 'string' || payload.sub.length === 0) throw unauthorized('TOKEN_INVALID', 'the bearer token has no sub claim');
    if (typeof role !== 'string' || !(ROLES as readonly string[]).includes(role)) {
      throw unauthorized('TOKEN_INVALID', `the bearer token's role claim must be one of ${ROLES.join(', ')}`);
    }
    if (tenant !== undefined && (typeof tenant !== 'string' || !TENANT_ID_PATTERN.test(tenant))) {
      throw unauthorized('TOKEN_INVALID', "the bearer token's tenant_id claim is malformed");
    }
    if (tenant === undefined && role !== 'platform_admin') throw unauthorized('TOKEN_INVALID', 'the bearer token has no tenant_id claim');
    return { principal: { tenantId: tenant ?? null, actor: payload.sub.slice(0, 200), role: role as Role }, exp: payload.exp };
  }

  async function fromApiKey(key: string): Promise<Principal> {
    const { rows } = await db.adminQuery<{ id: string; tenant_id: string; role: Role; revoked: boolean; expired: boolean; stale: boolean }>(
      `SELECT id, tenant_id, role, revoked_at IS NOT NULL AS revoked, coalesce(expires_at <= now(), false) AS expired,
              coalesce(last_used_at < now() - interval '1 minute', true) AS stale
         FROM strata.api_keys WHERE key_hash = $1`,
      [hashApiKey(key)],
    );
    const row = rows[0];
    if (!row) throw unauthorized('API_KEY_INVALID', 'the API key is not valid');
    if (row.revoked) throw unauthorized('API_KEY_REVOKED', 'the API key has been revoked');
    if (row.expired) throw unauthorized('API_KEY_EXPIRED', 'the API key has expired');
    if (row.stale) {
      // last_used_at is advisory; written at most once a minute per key, off the request path
      db.adminQuery('UPDATE strata.api_keys SET last_used_at = now() WHERE id = $1', [row.id]).catch(() => undefined);
    }
    return { tenantId: row.tenant_id, actor: `apikey:${row.id}`, role: row.role };
  }

  return {
    cached(headers) {
      const auth = headers.authorization;
      if (auth === undefined || headers['x-api-key'] !== undefined) return undefined;
      const m = BEARER.exec(auth);
      const hit = m?.[1] === undefined ? undefined : verified.get(m[1]);
      if (!hit) return undefined;
      const now = Date.now();
      if (hit.until <= now) return undefined;
      const p = hit.principal;
      if (p.role === 'platform_admin' || p.tenantId === null) return p;
      const t = tenants.get(p.tenantId);
      return t !== undefined && t.status === 'active' && now - t.at < TENANT_CACHE_MS ? p : undefined;
    },
    async authenticate(headers) {
      const auth = headers.authorization;
      const apiKey = headers['x-api-key'];
      if (auth !== undefined) {
        const m = BEARER.exec(auth);
        if (!m?.[1]) throw unauthorized('AUTH_MALFORMED', 'the Authorization header must be "Bearer <token>"');
        return checkTenant(await fromJwtCached(m[1]));
      }
      if (apiKey !== undefined) {
        if (Array.isArray(apiKey) || apiKey.length < 10 || apiKey.length > 200) throw unauthorized('API_KEY_INVALID', 'the API key is not valid');
        return checkTenant(await fromApiKey(apiKey));
      }
      throw unauthorized('AUTH_REQUIRED', 'send Authorization: Bearer <JWT> or X-API-Key');
    },
    forgetTenant(id) {
      tenants.delete(id);
    },
  };
}
