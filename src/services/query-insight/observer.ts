/**
 * The database layer's QueryObserver: slow statements go to the slow-query log, a statement run
 * more than N_PLUS_ONE_THRESHOLD times in one request is logged (warn, with route and normalised
 * SQL) and counted in `strata_n_plus_one_total{route}`. Both run off the request's path: the only
 * cost on it is the call itself.
 */
import type { Logger } from 'pino';
import { Counter, type Registry } from 'prom-client';
import type { QueryObserver, SessionContext } from '../../db/session.js';
import { normalizeStatement, type SlowQueryLog } from './slow-log.js';

export interface QueryInsightObserverOptions {
  slowLog: SlowQueryLog;
  log: Pick<Logger, 'warn'>;
  registry: Registry;
  repeatThreshold: number;
}

export function createQueryObserver(opts: QueryInsightObserverOptions): QueryObserver {
  const { slowLog, log } = opts;
  const nPlusOne = new Counter({
    name: 'strata_n_plus_one_total',
    help: 'Requests that ran one statement more than N_PLUS_ONE_THRESHOLD times',
    labelNames: ['route'],
    registers: [opts.registry],
  });
  return {
    repeatThreshold: opts.repeatThreshold,
    repeated(ctx: SessionContext, text: string, times: number) {
      const route = ctx.stats?.route ?? 'none';
      nPlusOne.inc({ route });
      void normalizeStatement(text).then(({ sql, fingerprint }) =>
        log.warn(
          {
            requestId: ctx.requestId,
            tenant: ctx.tenantId,
            route,
            sql,
            fingerprint,
            times,
            threshold: opts.repeatThreshold,
          },
          'N+1 query pattern: one statement repeated within a request',
        ),
      );
    },
    slow(ctx: SessionContext, text: string, ms: number, rows: number | null) {
      const write = slowLog.record(ctx, text, ms, rows);
      // a request waits for its own entries before answering (read-your-writes for the caller)
      if (ctx.stats) (ctx.stats.pending ??= []).push(write);
    },
  };
}
