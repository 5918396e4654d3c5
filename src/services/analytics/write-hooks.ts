/**
 * The one after-commit hook every write path calls (the rows service, POST /v1/transactions,
 * GraphQL mutations; change data capture will feed the same hook): once a transaction that wrote
 * to some tables has committed, and before the response is sent,
 *   - the result cache's version of each table (for the writing tenant) is bumped, and
 *   - materialized views refreshed `after_writes_to` one of them get their debounced refresh job.
 * Tables a write reaches through foreign keys (ON DELETE CASCADE...) count as written too.
 * The hook never fails the request: its own failures are logged.
 */
import type { Logger } from 'pino';
import type { RequestContext } from '../../domain.js';
import type { ResultCache } from './result-cache.js';
import type { SchemaRegistry } from '../data/index.js';

export interface WriteListener {
  afterWrites(ctx: RequestContext, tables: ReadonlySet<string>): Promise<void>;
}

export interface WriteHooks {
  /** Call after the commit of a transaction that wrote to `tables`. */
  afterCommit: (ctx: RequestContext, tables: Iterable<string>) => Promise<void>;
}

export function createWriteHooks(deps: {
  cache: ResultCache;
  schema: SchemaRegistry;
  /** Later listeners (views; change capture): looked up at call time, as they are built after the hooks. */
  listeners: () => readonly WriteListener[];
  log: Pick<Logger, 'warn'>;
}): WriteHooks {
  /** The written tables plus every table referencing one of them, transitively. */
  async function reached(written: Set<string>): Promise<Set<string>> {
    const tables = await deps.schema.tables();
    const out = new Set(written);
    const queue = [...written];
    while (queue.length) {
      const t = tables.get(queue.pop() as string);
      for (const fk of t?.referencedBy ?? []) {
        if (!out.has(fk.table)) {
          out.add(fk.table);
          queue.push(fk.table);
        }
      }
    }
    return out;
  }

  return {
    async afterCommit(ctx, tables) {
      const written = new Set(tables);
      // a sandbox's writes change neither the real tenant's cached reads nor its views
      if (!written.size || ctx.sandbox !== undefined) return;
      try {
        const all = await reached(written);
        await Promise.all([
          ctx.tenantId === null ? undefined : deps.cache.invalidate(ctx.tenantId, all),
          ...deps.listeners().map((l) => l.afterWrites(ctx, all)),
        ]);
      } catch (err) {
        deps.log.warn({ err, tables: [...written], tenant: ctx.tenantId }, 'after-commit hook failed');
      }
    },
  };
}
