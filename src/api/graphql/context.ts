/**
 * Per-request GraphQL state: the caller's session context, the batch loaders, and for mutation
 * operations ONE transaction shared by every mutation field (opened lazily by the first one,
 * committed or rolled back once the whole operation has resolved: any error rolls all back).
 */
import type pg from 'pg';
import type { FastifyBaseLogger } from 'fastify';
import { OperationTypeNode, type GraphQLResolveInfo } from 'graphql/index.js';
import { CAN } from '../../domain.js';
import type { Database } from '../../db/database.js';
import type { SessionContext, Tx } from '../../db/session.js';
import { AppError, forbidden, unauthorized } from '../../errors.js';
import type { BatchLoader } from './loaders.js';
import type { Guard } from '../../services/compliance/index.js';
import { boundRowsSql, readBounded, tooLarge } from '../../services/data/index.js';

/** The default byte budget of one GraphQL request (GRAPHQL_MAX_RESPONSE_BYTES / RESPONSE_MAX_BYTES). */
export const DEFAULT_GRAPHQL_MAX_BYTES = 16 * 1024 * 1024;

/** A write statement (sql-write.ts) and whether it returns rows. */
const WRITE = /^\s*(INSERT|UPDATE|DELETE)\b/i;
/** The clause sql-write.ts appends (outside quotes: a column may be named "RETURNING"). */
const RETURNING = /(?<!")\bRETURNING\b(?!")/;

/** The rows a bounded statement produced (sent or not): a write's affected rows. */
const readBoundedTotal = (res: pg.QueryResult): number => Number((res.rows[0] as Record<string, unknown> | undefined)?.['strata$rows'] ?? 0);

/** Rejection that makes withTenant roll the mutation transaction back. */
class Rollback extends Error {}
const ROLLBACK = new Rollback('rollback');

/** The transaction of a mutation operation, held open across its (serially run) root fields. */
class MutationTransaction {
  private opened: Promise<Tx> | undefined;
  private settle: ((commit: boolean) => void) | undefined;
  private finished: Promise<void> | undefined;

  constructor(
    private readonly db: Database,
    private readonly ctx: SessionContext,
  ) {}

  get started(): boolean {
    return this.opened !== undefined;
  }

  tx(): Promise<Tx> {
    this.opened ??= new Promise<Tx>((resolveTx, rejectTx) => {
      // No automatic retry: the statements already ran and their results are in the response.
      this.finished = this.db
        .withTenant(
          this.ctx,
          (tx) =>
            new Promise<void>((commit, rollback) => {
              this.settle = (ok) => (ok ? commit() : rollback(ROLLBACK));
              resolveTx(tx);
            }),
          { retries: 0 },
        )
        .catch((err: unknown) => {
          rejectTx(err instanceof Error ? err : new Error(String(err)));
          if (err !== ROLLBACK) throw err;
        });
      this.finished.catch(() => undefined);
    });
    return this.opened;
  }

  /** Commit (when `commit` and nothing failed) or roll back; resolves to the commit error, if any. */
  async end(commit: boolean): Promise<unknown> {
    const finished = this.finished;
    if (!finished) return undefined;
    this.finished = undefined;
    this.settle?.(commit);
    try {
      await finished;
      return undefined;
    } catch (err) {
      return commit ? err : undefined;
    }
  }
}

export class GraphqlRequest {
  readonly loaders = new Map<string, BatchLoader<unknown>>();
  /** Tables the mutation fields of this request wrote to (told to the write hook after commit). */
  readonly written = new Set<string>();
  private mutation: MutationTransaction | undefined;
  /** The operation is a mutation (set before execution). */
  isMutation = false;
  /** Set when a mutation field or a statement of the mutation transaction failed. */
  mutationFailed = false;
  /** HTTP status of the errors formatted for this request (first 4xx/5xx wins). */
  errorStatus: number | undefined;
  /** The compliance guard (declared columns), set before execution when any column is declared. */
  guard: Guard | undefined;

  /**
   * What is left of the request's byte budget. Every read statement is wrapped so PostgreSQL sends
   * no more than this (data/response-bounds.ts); what it sent is taken off. Statements running at
   * once each see what was left when they started, so the whole answer stays within a small multiple
   * of the budget at worst, and no single string is ever larger than it.
   */
  private bytesLeft: number;

  constructor(
    readonly db: Database,
    private readonly session: SessionContext | null,
    readonly log: FastifyBaseLogger,
    readonly operationName: string | undefined,
    readonly maxBytes: number = DEFAULT_GRAPHQL_MAX_BYTES,
  ) {
    this.bytesLeft = maxBytes;
  }

  /** A read statement bounded by the bytes left: the wrapped text and its values. */
  private bounded(text: string, values: unknown[]): [string, unknown[]] {
    const all = [...values, Math.max(0, this.bytesLeft)];
    return [boundRowsSql(text, `$${all.length}`), all];
  }

  /**
   * A statement of the mutation transaction bounded by the bytes left. A write with RETURNING
   * becomes a data-modifying CTE read through the bound (the write runs in full whatever is sent);
   * a write without RETURNING sends no rows and is left as it is.
   */
  private boundedWrite(text: string, values: unknown[]): [string, unknown[]] {
    if (!WRITE.test(text)) return this.bounded(text, values);
    if (!RETURNING.test(text)) return [text, values];
    const all = [...values, Math.max(0, this.bytesLeft)];
    const read = boundRowsSql('SELECT * FROM strata_w', `$${all.length}`);
    return [`WITH strata_w AS (\n${text}\n), ${read.slice('WITH '.length)}`, all];
  }

  /** Take a bounded result's bytes off the budget; 413 RESPONSE_TOO_LARGE when rows were left out. */
  private settle<R extends pg.QueryResultRow>(res: pg.QueryResult<R>): pg.QueryResult<R> {
    const b = readBounded(res);
    this.bytesLeft -= b.bytes;
    if (b.cut) {
      throw tooLarge('the GraphQL answer', this.maxBytes, 'GRAPHQL_MAX_RESPONSE_BYTES / RESPONSE_MAX_BYTES', 'ask for fewer rows (first), fewer fields or fewer nested lists');
    }
    return res;
  }

  /** The caller's session, or null (app.graphql() without a caller). */
  get session_(): SessionContext | null {
    return this.session;
  }

  get ctx(): SessionContext {
    if (!this.session) throw unauthorized('UNAUTHENTICATED', 'authentication is required');
    return this.session;
  }

  assertCanWrite(): void {
    const role = this.ctx.role;
    if (!(CAN.write as readonly string[]).includes(role)) {
      throw forbidden('ROLE_FORBIDDEN', `role ${role} may not run mutations (needs one of ${CAN.write.join(', ')})`);
    }
  }

  get mutationStarted(): boolean {
    return this.mutation?.started ?? false;
  }

  /** Run one statement: in the mutation transaction for mutations, else its own read-only one. */
  async query<R extends pg.QueryResultRow = Record<string, unknown>>(info: GraphQLResolveInfo, text: string, values: unknown[]): Promise<pg.QueryResult<R>> {
    if (info.operation.operation !== OperationTypeNode.MUTATION) {
      const [bounded, all] = this.bounded(text, values);
      return this.settle(await this.db.tenantQuery<R>(this.ctx, bounded, all, { readOnly: true }));
    }
    if (this.mutationFailed) throw new AppError(409, 'MUTATION_ABORTED', 'not run: an earlier part of this mutation request failed');
    this.mutation ??= new MutationTransaction(this.db, this.ctx);
    try {
      const tx = await this.mutation.tx();
      // The mutation's answer is bounded like a query's: its RETURNING rows and the reads of its
      // selection. Past the bound the field fails 413 RESPONSE_TOO_LARGE, which fails the request:
      // the transaction rolls back, so an answer too large to send writes nothing.
      const [bounded, all] = this.boundedWrite(text, values);
      if (bounded === text) return await tx.query<R>(text, values);
      const res = await tx.query<R>(bounded, all);
      const total = readBoundedTotal(res);
      this.settle(res);
      res.rowCount = total;
      return res;
    } catch (err) {
      this.mutationFailed = true;
      throw err;
    }
  }

  /** A list and its count together: one round trip (read-only transaction, pipelined). */
  async queryWithCount<R extends pg.QueryResultRow>(
    info: GraphQLResolveInfo,
    list: { text: string; values: unknown[] },
    count: { text: string; values: unknown[] },
  ): Promise<[pg.QueryResult<R>, number]> {
    if (info.operation.operation === OperationTypeNode.MUTATION) {
      const [rows, n] = await Promise.all([this.query<R>(info, list.text, list.values), this.query<{ n: number }>(info, count.text, count.values)]);
      return [rows, n.rows[0]?.n ?? 0];
    }
    return this.db.withTenant(
      this.ctx,
      async (tx) => {
        const [bounded, all] = this.bounded(list.text, list.values);
        const [rows, n] = await Promise.all([tx.query<R>(bounded, all), tx.query<{ n: number }>(count.text, count.values, { final: true })]);
        return [this.settle(rows), n.rows[0]?.n ?? 0] as [pg.QueryResult<R>, number];
      },
      { readOnly: true },
    );
  }

  /** Finish the mutation transaction (if one was opened): the commit error when it failed. */
  async endMutation(commit: boolean): Promise<unknown> {
    const m = this.mutation;
    if (!m) return undefined;
    this.mutation = undefined;
    return m.end(commit && !this.mutationFailed);
  }
}

export interface GraphqlContext {
  strata: GraphqlRequest;
}
