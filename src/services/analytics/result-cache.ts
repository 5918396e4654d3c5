/**
 * The result cache: rows-API reads of opted-in tables kept in Redis. An entry is keyed by tenant,
 * role and the normalised request (route, table, key, sorted query parameters), and stores the
 * versions it was computed under: a global epoch plus one counter per (tenant, table) it reads
 * (the table and every table embedded by its select). Every committed write INCRs the counters of
 * the tables it touched (src/services/analytics/write-hooks.ts), so an entry read after a write no longer
 * matches and is recomputed: no stale read survives a write.
 *
 * One round trip per read: MGET of the epoch, the counters and the entry. Redis is optional: while
 * it is down (client not ready, or a command slower than OP_TIMEOUT_MS) reads are served uncached
 * (`bypass`). A write whose bump failed (or timed out) marks the cache suspect: this process then
 * serves reads uncached and retries bumping the epoch until it succeeds, which retires every entry
 * written before. (Another process may serve such an entry until then; the TTL bounds that window.)
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { Counter, type Registry } from 'prom-client';
import type { Logger } from 'pino';
import type { RequestContext } from '../../domain.js';
import type { Database } from '../../db/database.js';
import { parseSelect, type SelectItem } from '../data/index.js';
import type { CapturedAudit } from '../compliance/index.js';
import { relationships, type SchemaRegistry, type TableInfo } from '../data/index.js';

export type CacheStatus = 'hit' | 'miss' | 'bypass';
type QueryString = Record<string, string | string[] | undefined>;

export interface CacheRequest {
  /** Which read: `list` or `get`. */
  route: string;
  table: string;
  pk?: string;
  qs: QueryString;
}

export interface ResultCacheOptions {
  redis: Redis;
  db: Database;
  schema: SchemaRegistry;
  log: Pick<Logger, 'warn' | 'debug'>;
  enabled: boolean;
  ttlS: number;
  /** Tables opted in by configuration (CACHE_TABLES). */
  staticTables: readonly string[];
  prefix?: string;
  /** Prometheus registry for `strata_cache_reads_total{status}`. */
  registry?: Registry;
  /**
   * The compliance policy (issue 15): `tag` digests the declarations of the tables an answer reads
   * (part of the key: an answer masked under one policy is never served under another); `audit`
   * collects what a computed answer recorded in the access audit, kept with the entry and recorded
   * again, for the reading request, on every hit.
   */
  compliance?: {
    tag(tables: readonly string[]): Promise<string>;
    audit: {
      capture<T>(ctx: RequestContext, fn: () => Promise<T>): Promise<{ value: T; entries: CapturedAudit[] }>;
      replay(ctx: RequestContext, entries: readonly CapturedAudit[]): void;
    };
  };
}

const OP_TIMEOUT_MS = 300;
const OPT_IN_RELOAD_MS = 5_000;

/** The request with its query parameters in a stable order, hashed. */
export function normaliseRequest(req: CacheRequest): string {
  const params = Object.entries(req.qs)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => [k, Array.isArray(v) ? v : [v as string]] as const)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return createHash('sha256').update(JSON.stringify([req.route, req.table, req.pk ?? null, params])).digest('base64url');
}

function bounded<T>(p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`redis command slower than ${OP_TIMEOUT_MS} ms`)), OP_TIMEOUT_MS);
    }),
  ]).finally(() => clearTimeout(timer));
}

export function createResultCache(opts: ResultCacheOptions) {
  const { redis, db, schema, log } = opts;
  const prefix = opts.prefix ?? 'strata:cache';
  const epochKey = `${prefix}:epoch`;
  const verKey = (tenant: string, table: string) => `${prefix}:ver:${tenant}:${table}`;
  const staticTables = new Set(opts.staticTables);
  let optIn: { at: number; tables: Set<string> } | undefined;
  const reads = new Counter({ name: 'strata_cache_reads_total', help: 'Rows-API reads by result-cache outcome', labelNames: ['status'], registers: opts.registry ? [opts.registry] : [] });
  let suspect = false;
  let retry: NodeJS.Timeout | undefined;

  /** Bump the epoch once Redis answers again; until then this process reads uncached. */
  const retireAll = () => {
    clearTimeout(retry);
    retry = undefined;
    if (!suspect) return;
    if (redis.status !== 'ready') {
      retry = setTimeout(retireAll, 1000).unref();
      return;
    }
    bounded(redis.incr(epochKey))
      .then(() => {
        suspect = false;
        log.warn('result cache: a write could not be recorded; every earlier entry retired');
      })
      .catch(() => {
        retry = setTimeout(retireAll, 1000).unref();
      });
  };
  const markSuspect = () => {
    suspect = true;
    retry ??= setTimeout(retireAll, 250).unref();
  };
  const onReady = () => retireAll();
  redis.on('ready', onReady);

  const readChildren = new Map<CacheStatus, { inc(): void }>();
  const readsBy = (status: CacheStatus) => {
    let c = readChildren.get(status);
    if (!c) readChildren.set(status, (c = reads.labels({ status })));
    return c;
  };

  /** True when `table` is certainly not cached right now (no lookup needed to know it). */
  function knownUncached(table: string): boolean {
    if (!opts.enabled) return true;
    return !staticTables.has(table) && optIn !== undefined && Date.now() - optIn.at <= OPT_IN_RELOAD_MS && !optIn.tables.has(table);
  }

  async function optedIn(table: string): Promise<boolean> {
    if (!opts.enabled) return false;
    if (staticTables.has(table)) return true;
    if (!optIn || Date.now() - optIn.at > OPT_IN_RELOAD_MS) {
      const { rows } = await db.adminQuery<{ table_name: string }>('SELECT table_name FROM strata.cache_tables');
      optIn = { at: Date.now(), tables: new Set(rows.map((r) => r.table_name)) };
    }
    return optIn.tables.has(table);
  }

  /** The table and every table its select embeds (at any depth). Unknown names: the read itself reports them. */
  async function dependencies(table: string, qs: QueryString): Promise<string[] | undefined> {
    const tables = await schema.tables();
    const root = tables.get(table);
    if (!root) return undefined;
    const out = new Set([root.name]);
    const select = typeof qs['select'] === 'string' ? qs['select'] : undefined;
    if (select === undefined) return [...out];
    let items: SelectItem[];
    try {
      items = parseSelect(select);
    } catch {
      return undefined;
    }
    const walk = (t: TableInfo, list: SelectItem[]): boolean =>
      list.every((s) => {
        if (s.kind !== 'embed') return true;
        const rel = relationships(t).find((r) => r.name === s.relation);
        const target = rel && tables.get(rel.table);
        if (!target) return false;
        out.add(target.name);
        return walk(target, s.select);
      });
    return walk(root, items) ? [...out] : undefined;
  }

  const cache = {
    /** Whether reads of `table` are cached (CACHE_TABLES or strata.cache_tables). */
    optedIn,

    /**
     * Serve a read from the cache or compute (and store) it. `compute` errors propagate and are
     * never cached; any Redis failure serves the computed value with status `bypass`.
     */
    async read<T>(ctx: RequestContext, req: CacheRequest, compute: () => Promise<T>): Promise<{ value: T; status: CacheStatus }> {
      // a table known not to be cached goes straight to the database
      const r = knownUncached(req.table) ? { value: await compute(), status: 'bypass' as const } : await cache.lookup(ctx, req, compute);
      readsBy(r.status).inc();
      return r;
    },

    async lookup<T>(ctx: RequestContext, req: CacheRequest, compute: () => Promise<T>): Promise<{ value: T; status: CacheStatus }> {
      const bypass = async () => ({ value: await compute(), status: 'bypass' as const });
      if (ctx.tenantId === null || ctx.sandbox !== undefined || suspect || !(await optedIn(req.table)) || redis.status !== 'ready') return bypass();
      const deps = await dependencies(req.table, req.qs);
      if (!deps) return bypass();
      // the role and the policy decide what the answer reveals: both are part of the key
      const policy = opts.compliance ? await opts.compliance.tag(deps) : '-';
      const key = `${prefix}:e:${ctx.tenantId}:${ctx.role}:${policy}:${req.table}:${normaliseRequest(req)}`;
      let got: Array<string | null>;
      try {
        got = await bounded(redis.mget(epochKey, ...deps.map((t) => verKey(ctx.tenantId as string, t)), key));
      } catch (err) {
        log.debug({ err }, 'result cache: read failed, serving uncached');
        return bypass();
      }
      const versions = got.slice(0, -1).map((v) => v ?? '0').join('.');
      const raw = got[got.length - 1];
      if (raw) {
        const entry = JSON.parse(raw) as { v: string; d: T; a?: CapturedAudit[] };
        if (entry.v === versions) {
          // a hit reveals what the computed answer revealed: the access audit records it for this request
          if (entry.a?.length) opts.compliance?.audit.replay(ctx, entry.a);
          return { value: entry.d, status: 'hit' };
        }
      }
      const { value, entries } = opts.compliance ? await opts.compliance.audit.capture(ctx, compute) : { value: await compute(), entries: [] };
      try {
        // Stored under the versions read BEFORE computing: a write that lands meanwhile makes it stale at once.
        await bounded(redis.set(key, JSON.stringify(entries.length ? { v: versions, d: value, a: entries } : { v: versions, d: value }), 'EX', opts.ttlS));
      } catch (err) {
        log.debug({ err }, 'result cache: store failed');
        return { value, status: 'bypass' };
      }
      return { value, status: 'miss' };
    },

    /** Bump the version of each table for the tenant: every cached read of them is stale from now on. */
    async invalidate(tenantId: string, tables: Iterable<string>): Promise<void> {
      const list = [...tables];
      if (!list.length) return;
      if (redis.status !== 'ready') {
        markSuspect();
        return;
      }
      try {
        const multi = redis.multi();
        for (const t of list) multi.incr(verKey(tenantId, t));
        await bounded(multi.exec());
      } catch (err) {
        markSuspect();
        log.warn({ err: { message: (err as Error).message }, tables: list }, 'result cache: version bump failed; the cache is retired when Redis is back');
      }
    },

    /** Platform opt-in registry (strata.cache_tables). */
    async listTables(): Promise<Array<{ table: string; source: 'config' | 'admin'; enabled_by: string | null; enabled_at: string | null }>> {
      const { rows } = await db.adminQuery<{ table_name: string; enabled_by: string; enabled_at: Date }>(
        'SELECT table_name, enabled_by, enabled_at FROM strata.cache_tables ORDER BY table_name',
      );
      const out: Array<{ table: string; source: 'config' | 'admin'; enabled_by: string | null; enabled_at: string | null }> = rows.map((r) => ({
        table: r.table_name,
        source: 'admin',
        enabled_by: r.enabled_by,
        enabled_at: r.enabled_at.toISOString(),
      }));
      for (const t of [...staticTables].sort()) if (!out.some((r) => r.table === t)) out.push({ table: t, source: 'config', enabled_by: null, enabled_at: null });
      return out;
    },
    async enable(ctx: RequestContext, table: string): Promise<void> {
      await schema.table(table);
      await db.adminQuery('INSERT INTO strata.cache_tables (table_name, enabled_by) VALUES ($1, $2) ON CONFLICT (table_name) DO NOTHING', [table, ctx.actor]);
      optIn = undefined;
    },
    async disable(table: string): Promise<boolean> {
      const res = await db.adminQuery('DELETE FROM strata.cache_tables WHERE table_name = $1', [table]);
      optIn = undefined;
      return (res.rowCount ?? 0) > 0;
    },
    close(): void {
      clearTimeout(retry);
      redis.off('ready', onReady);
    },
  };
  return cache;
}

export type ResultCache = ReturnType<typeof createResultCache>;
