/**
 * Atomic batches (`POST /v1/transactions`): a list of insert / upsert / update / delete operations
 * run all-or-nothing in one tenant transaction at the chosen isolation level. An operation may run
 * in a named savepoint with `on_error: rollback_to_savepoint`, so its failure undoes only itself.
 * Serialization failures and deadlocks retry the whole batch; the attempt count is returned.
 */
import type { Database } from '../../db/database.js';
import { toAppError } from '../../db/errors.js';
import type { Isolation, SessionContext, Tx } from '../../db/session.js';
import { AppError, badRequest } from '../../errors.js';
import type { QueryString, RowsService, WriteResult } from './rows.js';

export interface Operation {
  op: 'insert' | 'upsert' | 'update' | 'delete';
  table: string;
  rows?: unknown;
  set?: unknown;
  pk?: string | number;
  filters?: Record<string, string>;
  on_conflict?: string;
  select?: string;
  savepoint?: string;
  on_error?: 'rollback_to_savepoint' | 'fail';
}

export interface OperationResult {
  index: number;
  op: Operation['op'];
  table: string;
  status: 'ok' | 'rolled_back';
  count: number;
  data?: unknown;
  error?: { code: string; message: string; details?: unknown };
}

export function createTransactionService(deps: { db: Database; rows: RowsService; afterCommit?: (ctx: SessionContext, tables: string[]) => Promise<void> }) {
  const { db, rows } = deps;

  async function runOne(ctx: SessionContext, tx: Tx, o: Operation): Promise<WriteResult> {
    const qs: QueryString = { ...(o.filters ?? {}) };
    const pk = o.pk === undefined ? undefined : String(o.pk);
    switch (o.op) {
      case 'insert':
      case 'upsert':
        if (o.rows === undefined) throw badRequest('INVALID_OPERATION', `${o.op} needs rows`);
        if (o.op === 'upsert' && !o.on_conflict) throw badRequest('INVALID_OPERATION', 'upsert needs on_conflict (the columns of a unique key)');
        return rows.insert(ctx, o.table, o.rows, { onConflict: o.on_conflict, select: o.select }, tx);
      case 'update':
        if (o.set === undefined) throw badRequest('INVALID_OPERATION', 'update needs set');
        return rows.update(ctx, o.table, { pk, qs }, o.set, { select: o.select }, tx);
      case 'delete':
        return rows.remove(ctx, o.table, { pk, qs }, { select: o.select }, tx);
    }
  }

  const describe = (err: unknown): AppError | undefined => (err instanceof AppError ? err : toAppError(err));

  return {
    async run(ctx: SessionContext, input: { operations: Operation[]; isolation?: Isolation }) {
      let attempts = 0;
      const results = await db.withTransaction(
        ctx,
        async (tx) => {
          attempts = tx.attempt;
          const out: OperationResult[] = [];
          for (const [index, o] of input.operations.entries()) {
            const base = { index, op: o.op, table: o.table };
            const exec = async () => {
              const r = await runOne(ctx, tx, o);
              out.push({ ...base, status: 'ok', count: r.count, data: r.body === undefined ? undefined : (JSON.parse(r.body) as { data: unknown }).data });
            };
            try {
              if (o.savepoint !== undefined || o.on_error === 'rollback_to_savepoint') await tx.savepoint(exec, o.savepoint ?? `op_${index}`);
              else await exec();
            } catch (err) {
              const known = describe(err);
              // retryable conflicts and connection failures end the attempt whatever on_error says
              if (o.on_error === 'rollback_to_savepoint' && known && known.statusCode < 500 && known.code !== 'TRANSACTION_CONFLICT') {
                out.push({ ...base, status: 'rolled_back', count: 0, error: { code: known.code, message: known.message, details: known.details } });
                continue;
              }
              if (!known || known.statusCode >= 500 || known.code === 'TRANSACTION_CONFLICT') throw err;
              throw new AppError(known.statusCode, known.code, `operation ${index} (${o.op} ${o.table}) failed: ${known.message}; nothing was committed`, {
                operation: index,
                ...(known.details && typeof known.details === 'object' ? (known.details) : {}),
              });
            }
          }
          return out;
        },
        { isolation: input.isolation },
      );
      await deps.afterCommit?.(ctx, results.filter((r) => r.status === 'ok').map((r) => r.table));
      return { attempts, results };
    },
  };
}
export type TransactionService = ReturnType<typeof createTransactionService>;
