/**
 * pino options shared by the API and the worker: structured, with credentials redacted, and with
 * the tenant, actor and role of the request on every line its logger writes.
 */
import type { Logger, LoggerOptions } from 'pino';
import type { Config } from './config.js';

/** Where a request logger keeps the request's principal (see attachPrincipal). */
const PRINCIPAL = Symbol('strata.principal');

interface PrincipalFields {
  tenantId: string | null;
  actor: string;
  role: string;
}

/**
 * Put `tenant`, `actor` and `role` on every line `log` (a request's child logger) and its children
 * write. Unlike pino's setBindings, nothing is serialized until a line is actually written, which
 * on most requests is never.
 */
export function attachPrincipal(log: unknown, p: PrincipalFields): void {
  (log as { [PRINCIPAL]?: PrincipalFields })[PRINCIPAL] = p;
}

/**
 * The process logger: JSON lines in production, pino-pretty in development (`LOG_FORMAT`). pino is
 * imported here, lazily, so a caller can start telemetry before pino loads. pino-pretty is a
 * development dependency: where it is not installed (a production install), lines stay JSON.
 */
export async function createLogger(config: Pick<Config, 'LOG_LEVEL' | 'LOG_FORMAT' | 'NODE_ENV'>): Promise<Logger> {
  const { default: pino } = await import('pino');
  if (logFormat(config) === 'pretty') {
    try {
      const { default: pretty } = await import('pino-pretty');
      return pino(loggerOptions(config), pretty({ sync: true, colorize: process.stdout.isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' }));
    } catch {
      // not installed: fall through to JSON
    }
  }
  return pino(loggerOptions(config));
}

/** `auto` is pretty only in development (the default NODE_ENV of `npm start` on the embedded database). */
export function logFormat(config: Pick<Config, 'LOG_FORMAT' | 'NODE_ENV'>): 'json' | 'pretty' {
  if (config.LOG_FORMAT !== 'auto') return config.LOG_FORMAT;
  return config.NODE_ENV === 'development' ? 'pretty' : 'json';
}

/**
 * A URL as logged: the path, and the query string's parameter names with their values replaced,
 * since a filter value may be the plaintext of a sensitive column (`?email=eq.jane@example.com`).
 * The operator stays (`email=eq.…`), so a line still says what was asked.
 */
export function redactUrl(url: string | undefined): string | undefined {
  if (!url) return url;
  const q = url.indexOf('?');
  if (q < 0) return url;
  const parts = url
    .slice(q + 1)
    .split('&')
    .map((kv) => {
      const eq = kv.indexOf('=');
      if (eq < 0) return kv;
      const name = kv.slice(0, eq);
      const value = kv.slice(eq + 1);
      const op = /^(not\.)?[a-z]{2,11}(\((any|all)\))?\./.exec(value)?.[0] ?? '';
      return `${name}=${op}…`;
    });
  return `${url.slice(0, q)}?${parts.join('&')}`;
}

interface LoggedRequest {
  method?: string;
  url?: string;
  host?: string;
  ip?: string;
}

export function loggerOptions(config: Pick<Config, 'LOG_LEVEL'>): LoggerOptions {
  return {
    level: config.LOG_LEVEL,
    serializers: {
      req: (req: LoggedRequest) => ({ method: req.method, url: redactUrl(req.url), host: req.host, remoteAddress: req.ip }),
    },
    redact: {
      paths: ['req.headers.authorization', 'req.headers["x-api-key"]', 'req.headers.apikey', 'req.headers.cookie', '*.password', '*.key', '*.secret', 'req.url'],
      // a data subject's id (DELETE /v1/subjects/{id}: often an email) never reaches the logs; other URLs stay as they are
      censor: (value: unknown, path: string[]) => (path[path.length - 1] === 'url' && typeof value === 'string' ? value.replace(/^\/v1\/subjects\/[^?#]*/, '/v1/subjects/[redacted]') : '[redacted]'),
    },
    // called once per written line with the logger that writes it (children inherit the property)
    mixin: (_merge: object, _level: number, logger: Logger) => {
      const p = (logger as { [PRINCIPAL]?: PrincipalFields })[PRINCIPAL];
      return p ? { tenant: p.tenantId, actor: p.actor, role: p.role } : {};
    },
  };
}
