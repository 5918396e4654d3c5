/**
 * A tenant statement in one network round trip and one server flush.
 *
 * The extended protocol runs every message up to a Sync in one implicit transaction. So we send,
 * in a single write: the tenant settings (`set_config(..., true)`, a statement prepared once per
 * connection), then the caller's parameterised statement, then one Sync. PostgreSQL applies the
 * settings, runs the statement under row-level security, commits (or rolls back on error) and
 * forgets the settings at the Sync: nothing survives on the connection. Compared with
 * BEGIN / set_config / statement / COMMIT as four round trips, this costs the database and the
 * service the same system calls as a plain query.
 *
 * The caller's statement is prepared once per connection and reused (a bounded LRU of named
 * statements per connection, evicted with Close), so PostgreSQL parses and plans each query shape
 * once per connection instead of on every request.
 *
 * Built on node-postgres' own Query class (multi-result handling, type parsing, callbacks), only
 * `submit` differs; it is accepted on pipelined connections because it is a Query.
 */
import { createRequire } from 'node:module';
import pg from 'pg';

interface PgConnection {
  parse(msg: { text: string; name: string; types: unknown[] }): void;
  bind(msg: { portal: string; statement: string; values: readonly unknown[]; binary?: boolean; valueMapper: (v: unknown) => unknown }): void;
  describe(msg: { type: 'P' | 'S'; name: string }): void;
  close(msg: { type: 'P' | 'S'; name: string }): void;
  execute(msg: { portal: string; rows?: number }): void;
  sync(): void;
  stream: { cork?: () => void; uncork?: () => void };
}

interface QueryInternals {
  text: string;
  values: unknown[] | undefined;
  callback: ((err: Error | null, res?: pg.QueryResult | pg.QueryResult[]) => void) | undefined;
  handleRowDescription(msg: unknown): void;
  handleError(err: Error, connection: unknown): void;
}

const require = createRequire(import.meta.url);
const { prepareValue } = require('pg/lib/utils.js') as { prepareValue: (v: unknown) => unknown };
const BaseQuery = (pg as unknown as { Query: new (text: string, values?: unknown[]) => QueryInternals }).Query;

/** What is prepared on one connection (named statements live as long as the connection). */
interface ConnectionState {
  setups: Set<string>;
  /** SQL text -> statement name, in least-recently-used order. */
  statements: Map<string, string>;
  /** Names whose Parse may or may not have happened (the batch failed): closed on next use. */
  toClose: string[];
  next: number;
}
const states = new WeakMap<PgConnection, ConnectionState>();
/** Prepared statements kept per connection; the least recently used is closed beyond this. */
export const STATEMENT_CACHE_SIZE = 200;

function stateOf(connection: PgConnection): ConnectionState {
  let s = states.get(connection);
  if (!s) states.set(connection, (s = { setups: new Set(), statements: new Map(), toClose: [], next: 0 }));
  return s;
}

export interface SetupStatement {
  readonly name: string;
  readonly text: string;
}

class SingleTripQuery extends BaseQuery {
  private connection: PgConnection | undefined;
  private sawSetup = false;
  /** Name given to the caller's statement in this batch when it was parsed here. */
  private parsedAs: string | undefined;
  private parsedSetup = false;
  constructor(
    private readonly setup: SetupStatement,
    private readonly setupValues: readonly unknown[],
    text: string,
    values: readonly unknown[] | undefined,
    private readonly block?: BlockWrap,
  ) {
    // text and values as separate arguments: a config object would be deep-copied by pg
    super(text, values as unknown[] | undefined);
  }

  requiresPreparation(): boolean {
    return true;
  }

  submit(connection: PgConnection): null {
    this.connection = connection;
    const state = stateOf(connection);
    const known = state.setups.has(this.setup.name);
    let name = state.statements.get(this.text);
    connection.stream.cork?.();
    try {
      for (const stale of state.toClose.splice(0)) connection.close({ type: 'S', name: stale });
      if (name !== undefined) {
        // refresh its place in the LRU order
        state.statements.delete(this.text);
        state.statements.set(this.text, name);
      } else {
        if (state.statements.size >= STATEMENT_CACHE_SIZE) {
          const [oldText, oldName] = state.statements.entries().next().value as [string, string];
          state.statements.delete(oldText);
          connection.close({ type: 'S', name: oldName });
        }
        name = `strata_q${state.next++}`;
        this.parsedAs = name;
        state.statements.set(this.text, name);
      }
      if (this.block) {
        // cluster mode: an explicit transaction block, so that Citus sends SET LOCAL to the workers
        for (const text of ['BEGIN', ...this.block.set]) {
          connection.parse({ text, name: '', types: [] });
          connection.bind({ portal: '', statement: '', values: [], valueMapper: prepareValue });
          connection.execute({ portal: '' });
        }
      }
      if (!known) {
        this.parsedSetup = true;
        connection.parse({ text: this.setup.text, name: this.setup.name, types: [] });
      }
      connection.bind({ portal: '', statement: this.setup.name, values: this.setupValues, valueMapper: prepareValue });
      connection.describe({ type: 'P', name: '' });
      connection.execute({ portal: '' });
      if (this.parsedAs !== undefined) connection.parse({ text: this.text, name, types: [] });
      connection.bind({ portal: '', statement: name, values: this.values ?? [], valueMapper: prepareValue });
      connection.describe({ type: 'P', name: '' });
      connection.execute({ portal: '' });
      if (this.block) {
        connection.parse({ text: 'COMMIT', name: '', types: [] });
        connection.bind({ portal: '', statement: '', values: [], valueMapper: prepareValue });
        connection.execute({ portal: '' });
      }
      connection.sync();
    } finally {
      connection.stream.uncork?.();
    }
    return null;
  }

  override handleRowDescription(msg: unknown): void {
    if (!this.sawSetup && this.connection) {
      // the setup statement's description arrives first: it parsed, so it is prepared from now on
      this.sawSetup = true;
      stateOf(this.connection).setups.add(this.setup.name);
    }
    super.handleRowDescription(msg);
  }

  override handleError(err: Error, connection: unknown): void {
    if (this.connection) {
      const state = stateOf(this.connection);
      if (this.parsedSetup && !this.sawSetup) {
        state.setups.delete(this.setup.name);
        state.toClose.push(this.setup.name);
      }
      if (this.parsedAs !== undefined) {
        // whether its Parse got through is unknown: forget it, and close the name next time
        state.statements.delete(this.text);
        state.toClose.push(this.parsedAs);
      } else if ((err as { code?: string }).code === '0A000' || (err as { code?: string }).code === '26000') {
        // "cached plan must not change result type" after a schema change, or a vanished statement
        const name = state.statements.get(this.text);
        state.statements.delete(this.text);
        if (name !== undefined) state.toClose.push(name);
      }
    }
    super.handleError(err, connection);
  }
}

/**
 * Cluster mode (Citus): the batch becomes `BEGIN; <set>; setup; statement; COMMIT` before the one
 * Sync. Citus propagates `SET LOCAL` to the workers (citus.propagate_set_commands = 'local') only
 * inside an explicit transaction block, and `set_config()` never. Still one write and one round
 * trip; on an error the block is left aborted, and the caller sends ROLLBACK.
 */
export interface BlockWrap {
  /** `SET LOCAL ...` statements with their values as quoted literals (SET takes no parameters). */
  readonly set: readonly string[];
}

/** Run `setup` then `text` in one implicit transaction, one round trip; resolves to `text`'s result. */
export function singleTrip<R extends pg.QueryResultRow>(
  client: pg.PoolClient,
  setup: SetupStatement,
  setupValues: readonly unknown[],
  text: string,
  values?: readonly unknown[],
  block?: BlockWrap,
): Promise<pg.QueryResult<R>> {
  return new Promise((resolve, reject) => {
    const q = new SingleTripQuery(setup, setupValues, text, values, block);
    q.callback = (err, res) => {
      if (err) return reject(err);
      const results = Array.isArray(res) ? res : [res];
      // the statement's result is the last one, or the one before COMMIT in a block
      resolve(results[results.length - (block ? 2 : 1)] as pg.QueryResult<R>);
    };
    void client.query(q as unknown as pg.QueryConfig);
  });
}
