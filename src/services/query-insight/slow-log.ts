/**
 * The slow-query log: every tenant statement over SLOW_QUERY_MS, normalised by PostgreSQL's own
 * parser (libpg-query `normalize`: literals become $n, as pg_stat_statements shows them), kept in a
 * capped Redis stream (`XADD ... MAXLEN ~ SLOW_QUERY_LOG_MAX`) so the API and the worker processes
 * share one log. Redis down: the entry is dropped and counted, the request never fails for it.
 */
import { fingerprint, normalize } from '../data/index.js';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { Counter, type Registry } from 'prom-client';
import type { SessionContext } from '../../db/session.js';
import { normalizeSql } from '../../db/session.js';
import { unavailable } from '../../errors.js';

/** One slow statement, as GET /v1/admin/queries/slow returns it. */
export interface SlowQueryEntry {
  id: string;
  at: string;
  sql: string;
  fingerprint: string | null;
  duration_ms: number;
  rows: number | null;
  tenant: string | null;
  request_id: string;
  route: string | null;
  actor: string;
}

export interface SlowQueryFilter {
  /** Only this tenant's entries; undefined: every tenant (platform_admin). */
  tenant?: string | null;
  route?: string;
  limit: number;
}

export interface SlowQueryLogOptions {
  redis: Redis;
  key: string;
  maxLen: number;
  log: Pick<Logger, 'warn' | 'debug'>;
  registry: Registry;
}

export type SlowQueryLog = ReturnType<typeof createSlowQueryLog>;

/** SQL normalised by PostgreSQL's parser; text it cannot parse falls back to the regex form. */
export async function normalizeStatement(text: string): Promise<{ sql: string; fingerprint: string | null }> {
  try {
    const [sql, fp] = await Promise.all([normalize(text), fingerprint(text)]);
    return { sql: sql.replace(/\s+/g, ' ').trim(), fingerprint: fp };
  } catch {
    return { sql: normalizeSql(text), fingerprint: null };
  }
}

function parseEntry(fields: string[]): Omit<SlowQueryEntry, 'id'> | undefined {
  if (fields[0] !== 'e' || fields[1] === undefined) return undefined;
  try {
    const e = JSON.parse(fields[1]) as Omit<SlowQueryEntry, 'id'> | null;
    return e && typeof e.sql === 'string' && typeof e.request_id === 'string' ? e : undefined;
  } catch {
    return undefined;
  }
}

export function createSlowQueryLog(opts: SlowQueryLogOptions) {
  const { redis, key, maxLen, log } = opts;
  const recorded = new Counter({
    name: 'strata_slow_queries_total',
    help: 'Statements slower than SLOW_QUERY_MS',
    registers: [opts.registry],
  });
  const dropped = new Counter({
    name: 'strata_slow_query_log_dropped_total',
    help: 'Slow-query log entries dropped because Redis could not take them',
    registers: [opts.registry],
  });

  async function write(ctx: SessionContext, text: string, ms: number, rows: number | null): Promise<void> {
    const { sql, fingerprint: fp } = await normalizeStatement(text);
    const entry: Omit<SlowQueryEntry, 'id' | 'at'> = {
      sql,
      fingerprint: fp,
      duration_ms: Math.round(ms * 10) / 10,
      rows,
      tenant: ctx.tenantId,
      request_id: ctx.requestId,
      route: ctx.stats?.route ?? null,
      actor: ctx.actor,
    };
    if (redis.status !== 'ready') {
      dropped.inc();
      return;
    }
    try {
      await redis.xadd(
        key,
        'MAXLEN',
        '~',
        String(maxLen),
        '*',
        'e',
        JSON.stringify({ ...entry, at: new Date().toISOString() }),
      );
    } catch (err) {
      dropped.inc();
      log.debug({ err }, 'slow-query log entry dropped');
    }
  }

  return {
    /** Record a slow statement; resolves when stored or dropped, never rejects. */
    record(ctx: SessionContext, text: string, ms: number, rows: number | null): Promise<void> {
      recorded.inc();
      return write(ctx, text, ms, rows).catch(() => dropped.inc());
    },

    /** Newest first, within the capped stream. */
    async list(filter: SlowQueryFilter): Promise<SlowQueryEntry[]> {
      let raw: [string, string[]][];
      try {
        raw = await redis.xrevrange(key, '+', '-', 'COUNT', maxLen);
      } catch (err) {
        throw unavailable(
          'SLOW_QUERY_LOG_UNAVAILABLE',
          'the slow-query log (Redis) is unavailable; retry shortly',
          2,
          err,
        );
      }
      const out: SlowQueryEntry[] = [];
      for (const [id, fields] of raw) {
        const e = parseEntry(fields);
        if (!e) continue; // not written by Strata: skipped
        if (filter.tenant !== undefined && e.tenant !== filter.tenant) continue;
        if (filter.route !== undefined && e.route !== filter.route) continue;
        out.push({ id, ...e });
        if (out.length >= filter.limit) break;
      }
      return out;
    },
  };
}
