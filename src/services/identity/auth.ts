/**
 * Authentication: a Bearer JWT (HS256 with JWT_SECRET, or RS256 and others via JWT_JWKS_URL) or an
 * X-API-Key. The tenant comes only from the verified credential, never from any other input.
 */
import { createHash, createSecretKey } from 'node:crypto';
import { createRemoteJWKSet, decodeJwt, errors as joseErrors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import type { Config } from '../../config.js';
import type { Database } from '../../db/database.js';
import { ROLES, TENANT_ID_PATTERN, type Role } from '../../domain.js';
import { forbidden, unauthorized } from '../../errors.js';

export interface Principal {
  tenantId: string | null;
  actor: string;
  role: Role;
  /** The token's `sandbox` claim (a sandbox name): the credential reaches that sandbox only. */
  sandboxClaim?: string;
}

/** A sandbox name in a `sandbox` claim (the same rule as strata.sandboxes.name). */
const SANDBOX_CLAIM = /^[a-z0-9][a-z0-9_-]{0,62}$/;

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
  /**
   * A watch over the credential of an authenticated request, for streams that outlive it: call
   * current() before each delivery and refresh() periodically (STREAM_AUTH_RECHECK_MS).
   */
  watch(headers: AuthHeaders, principal: Principal): CredentialWatch;
}

/** Why a stream's credential no longer holds: sent as the stream's last event. */
export interface CredentialEnd {
  code: 'TOKEN_EXPIRED' | 'CREDENTIAL_REVOKED' | 'CREDENTIAL_EXPIRED' | 'TENANT_SUSPENDED' | 'TENANT_UNKNOWN';
  message: string;
}

export interface CredentialWatch {
  /** From the state known now, without waiting: why the credential no longer holds, or undefined. */
  current(): CredentialEnd | undefined;
  /** Re-reads the API key and the tenant from the database; then as current(). Never rejects. */
  refresh(): Promise<CredentialEnd | undefined>;
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
    const { principal, expiresAt } = await fromJwt(token);
    if (verified.size >= TOKEN_CACHE_MAX) verified.delete(verified.keys().next().value as string);
    verified.set(token, { principal, until: Math.min(expiresAt, now + TOKEN_CACHE_MS) });
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

  /**
   * When a verified token stops being valid (ms): its exp, or for a token without exp, iat +
   * JWT_MAX_AGE_S when that is set. Throws 401 TOKEN_NO_EXPIRY / TOKEN_EXPIRED.
   */
  function expiryOf(payload: JWTPayload): number {
    if (typeof payload.exp === 'number') return payload.exp * 1000;
    const maxAge = config.JWT_MAX_AGE_S ?? 0;
    if (maxAge <= 0) throw unauthorized('TOKEN_NO_EXPIRY', 'the bearer token has no exp claim; tokens must expire');
    if (typeof payload.iat !== 'number') {
      throw unauthorized('TOKEN_NO_EXPIRY', 'the bearer token has neither exp nor iat; a token without exp needs iat (JWT_MAX_AGE_S)');
    }
    const until = (payload.iat + maxAge) * 1000;
    if (until <= Date.now()) throw unauthorized('TOKEN_EXPIRED', 'the bearer token is older than JWT_MAX_AGE_S');
    return until;
  }

  async function fromJwt(token: string): Promise<{ principal: Principal; expiresAt: number }> {
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
    const sandbox = payload['sandbox'];
    if (sandbox !== undefined && (typeof sandbox !== 'string' || !SANDBOX_CLAIM.test(sandbox))) {
      throw unauthorized('TOKEN_INVALID', "the bearer token's sandbox claim must be a sandbox name (^[a-z0-9][a-z0-9_-]{0,62}$)");
    }
    if (sandbox !== undefined && tenant === undefined) throw unauthorized('TOKEN_INVALID', 'the bearer token has a sandbox claim but no tenant_id claim');
    const expiresAt = expiryOf(payload);
    const principal: Principal = { tenantId: tenant ?? null, actor: payload.sub.slice(0, 200), role: role as Role };
    if (sandbox !== undefined) principal.sandboxClaim = sandbox;
    return { principal, expiresAt };
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
    watch(headers, principal) {
      const bearer = headers.authorization === undefined ? undefined : BEARER.exec(headers.authorization)?.[1];
      const apiKey = bearer === undefined && typeof headers['x-api-key'] === 'string' ? headers['x-api-key'] : undefined;
      let expiresAt = Infinity;
      if (bearer !== undefined) {
        // verified when the request was authenticated; only the expiry is read here
        try {
          expiresAt = expiryOf(decodeJwt(bearer));
        } catch {
          expiresAt = 0;
        }
      }
      let ended: CredentialEnd | undefined;
      let keyExpiresAt = Infinity;
      const current = (): CredentialEnd | undefined => {
        if (ended) return ended;
        const now = Date.now();
        if (now >= expiresAt) ended = { code: 'TOKEN_EXPIRED', message: 'the bearer token has expired' };
        else if (now >= keyExpiresAt) ended = { code: 'CREDENTIAL_EXPIRED', message: 'the API key has expired' };
        return ended;
      };
      return {
        current,
        async refresh() {
          if (current()) return ended;
          try {
            if (apiKey !== undefined) {
              const { rows } = await db.adminQuery<{ revoked: boolean; expires_at: Date | null }>(
                'SELECT revoked_at IS NOT NULL AS revoked, expires_at FROM strata.api_keys WHERE key_hash = $1',
                [hashApiKey(apiKey)],
              );
              const row = rows[0];
              if (!row || row.revoked) ended ??= { code: 'CREDENTIAL_REVOKED', message: 'the API key has been revoked' };
              else if (row.expires_at) keyExpiresAt = row.expires_at.getTime();
            }
            if (principal.tenantId !== null && principal.role !== 'platform_admin') {
              const { rows } = await db.adminQuery<{ status: string }>('SELECT status FROM strata.tenants WHERE id = $1', [principal.tenantId]);
              const status = rows[0]?.status;
              if (status === undefined) ended ??= { code: 'TENANT_UNKNOWN', message: `tenant ${principal.tenantId} is no longer registered` };
              else if (status !== 'active') ended ??= { code: 'TENANT_SUSPENDED', message: `tenant ${principal.tenantId} is suspended` };
            }
          } catch {
            // the database cannot answer now: the stream goes on and the next check tries again
          }
          return current();
        },
      };
    },
  };
}
