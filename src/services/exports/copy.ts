/**
 * Runs one export: `COPY (SELECT ...) TO STDOUT` in the caller's tenant session (a transaction on the
 * non-pipelined stream pool with the strata GUCs set LOCAL, so RLS applies), piped with
 * stream.pipeline into a sink. pg-copy-streams reads the socket only as fast as the sink drains, so a
 * slow consumer pauses PostgreSQL through TCP backpressure and memory stays flat.
 *
 * When the sink goes away first (client disconnect, job cancelled), the query is cancelled on the
 * server (pg_cancel_backend, for a query still sorting before its first row) and the connection is
 * destroyed rather than returned: a half-read COPY cannot be reused.
 */
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import type { Database } from '../../db/database.js';
import type { SessionContext, Tx } from '../../db/session.js';
import { ANALYST_ROLE } from '../data/index.js';
import { copySql, type ExportPlan } from './plan.js';

export interface CopyOptions {
  signal?: AbortSignal;
  /** Every chunk as it passes (counting, first-byte detection). */
  onChunk?: (chunk: Buffer) => void;
  /** Runs in the transaction before COPY (e.g. the planner's estimate). */
  before?: (tx: Tx) => Promise<void>;
}

export interface CopyResult {
  rows: number;
  bytes: number;
}

interface SocketHolder {
  processID?: number;
  connection?: { stream?: { destroy(): void; destroyed?: boolean; once(ev: string, fn: () => void): void } };
}

/** Cancel the statement on the server and drop the connection (never returned to the pool). */
async function abortBackend(db: Database, client: pg.PoolClient): Promise<void> {
  const c = client as unknown as SocketHolder;
  const cancel = c.processID
    ? db.adminQuery('SELECT pg_cancel_backend($1)', [c.processID]).catch(() => undefined)
    : Promise.resolve();
  const socket = c.connection?.stream;
  if (socket && !socket.destroyed) {
    const closed = new Promise<void>((resolve) => socket.once('close', resolve));
    socket.destroy();
    await closed;
  }
  await cancel;
}

/** Read size of the COPY stream and of the pipes behind it. */
export const CHUNK_BYTES = 64 * 1024;

const isSqlError = (err: unknown) => typeof (err as { code?: unknown } | null)?.code === 'string' && /^[0-9A-Z]{5}$/.test((err as { code: string }).code);

/** Stream the plan's rows into `sink`; resolves when PostgreSQL has sent the last row and the sink finished. */
export function runCopy(db: Database, ctx: SessionContext, plan: ExportPlan, sink: Writable, opts: CopyOptions = {}): Promise<CopyResult> {
  return db.withTenantStream(
    ctx,
    async (tx) => {
      if (plan.analyst) await tx.query(`SET LOCAL ROLE ${ANALYST_ROLE}`);
      if (opts.before) await opts.before(tx);
      const copy = tx.client.query(copyTo(copySql(plan), { highWaterMark: CHUNK_BYTES }));
      let bytes = 0;
      // A second 'data' listener observes the chunks without another stream hop; pipeline's pipe
      // still decides when the copy stream flows (backpressure).
      copy.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        opts.onChunk?.(chunk);
      });
      try {
        await pipeline(copy, sink, opts.signal ? { signal: opts.signal } : {});
      } catch (err) {
        // A statement error (timeout, bad cast...) leaves the connection usable: the transaction
        // rolls back as usual. Anything else means the consumer left mid-COPY.
        if (!isSqlError(err)) await abortBackend(db, tx.client);
        throw err;
      }
      return { rows: copy.rowCount, bytes };
    },
    { readOnly: true, statementTimeoutMs: plan.timeoutMs, retries: 0, releaseClean: plan.analyst === true },
  );
}

