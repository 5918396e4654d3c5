/**
 * Query insight (SPEC section 6): the slow-query log, N+1 detection, pg_stat_statements' top
 * statements, EXPLAIN with a summary, and index advice with hypothetical indexes. One factory so
 * REST routes (and anything else) share one slow-query log and one extension probe.
 */
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Config } from '../../config.js';
import type { Database } from '../../db/database.js';
import type { QueryObserver, SessionContext } from '../../db/session.js';
import type { RowsService } from '../data/index.js';
import { createExplainService, type ExplainInput, type ExplainResult } from './explain.js';
import { createExtensionProbe } from './extensions.js';
import { createIndexAdvisor, type IndexAdvice } from './index-advice.js';
import { createQueryObserver } from './observer.js';
import { createSlowQueryLog, type SlowQueryEntry } from './slow-log.js';
import { createTopQueries, type TopOrder, type TopQuery } from './top-queries.js';

export interface QueryInsightDeps {
  db: Database;
  redis: Redis;
  config: Pick<
    Config,
    'SLOW_QUERY_LOG_KEY' | 'SLOW_QUERY_LOG_MAX' | 'N_PLUS_ONE_THRESHOLD' | 'EXPLAIN_LARGE_TABLE_ROWS' | 'DB_STATEMENT_TIMEOUT_MS'
  >;
  log: Pick<Logger, 'warn' | 'debug'>;
  registry: Registry;
  rows: Pick<RowsService, 'listStatement'>;
}

/** The slow-query log and N+1 observer alone (the worker process needs only these). */
export function createInsightObserver(deps: Omit<QueryInsightDeps, 'rows'>) {
  const slowLog = createSlowQueryLog({
    redis: deps.redis,
    key: deps.config.SLOW_QUERY_LOG_KEY,
    maxLen: deps.config.SLOW_QUERY_LOG_MAX,
    log: deps.log,
    registry: deps.registry,
  });
  const observer: QueryObserver = createQueryObserver({
    slowLog,
    log: deps.log,
    registry: deps.registry,
    repeatThreshold: deps.config.N_PLUS_ONE_THRESHOLD,
  });
  return { slowLog, observer };
}

/** Whose slow queries a caller sees: a tenant admin its own tenant's, a platform admin everyone's. */
const scopeOf = (ctx: SessionContext): string | null | undefined => (ctx.role === 'platform_admin' ? undefined : ctx.tenantId);

export function createQueryInsightService(deps: QueryInsightDeps) {
  const { slowLog, observer } = createInsightObserver(deps);
  const extensions = createExtensionProbe(deps.db.admin);
  const timeout = deps.config.DB_STATEMENT_TIMEOUT_MS > 0 ? deps.config.DB_STATEMENT_TIMEOUT_MS : 30_000;
  const explainer = createExplainService({
    db: deps.db,
    rows: deps.rows,
    largeTableRows: deps.config.EXPLAIN_LARGE_TABLE_ROWS,
    statementTimeoutMs: timeout,
  });
  const advisor = createIndexAdvisor({ db: deps.db, extensions, statementTimeoutMs: timeout });
  const topQueries = createTopQueries({ db: deps.db, extensions });
  return {
    observer,
    slowLog,
    /** Slow queries the caller may see, newest first. */
    slow(ctx: SessionContext, filter: { route?: string; limit: number }): Promise<SlowQueryEntry[]> {
      return slowLog.list({ ...filter, tenant: scopeOf(ctx) });
    },
    top(opts: { order: TopOrder; limit: number }): Promise<TopQuery[]> {
      return topQueries.top(opts);
    },
    explain(ctx: SessionContext, input: ExplainInput): Promise<ExplainResult> {
      return explainer.explain(ctx, input);
    },
    /** Index advice from the caller's slow queries (every tenant's for a platform admin). */
    async indexAdvice(ctx: SessionContext): Promise<IndexAdvice> {
      const entries = await slowLog.list({ tenant: scopeOf(ctx), limit: deps.config.SLOW_QUERY_LOG_MAX });
      // planner costs span every tenant's rows: only platform_admin sees them
      return advisor.advise(entries, { redact: ctx.role !== 'platform_admin' });
    },
  };
}

export type QueryInsightService = ReturnType<typeof createQueryInsightService>;
export * from './explain.js';
export * from './predicates.js';
export * from './top-queries.js';
