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
 * Built on node-postgres' own Query class (multi-result handling, type parsing, callbacks), only
 * `submit` differs; it is accepted on pipelined connections because it is a Query.
 */
import { createRequire } from 'node:module';
import pg from 'pg';

interface PgConnection {
  parse(msg: { text: string; name: string; types: unknown[] }): void;
  bind(msg: { portal: string; statement: string; values: readonly unknown[]; binary?: boolean; valueMapper: (v: unknown) => unknown }): void;
  describe(msg: { type: 'P' | 'S'; name: string }): void;
  execute(msg: { portal: string; rows?: number }): void;
  sync(): void;
  stream: { cork?: () => void; uncork?: () => void };
}

interface QueryInternals {
  text: string;
  values: unknown[] | undefined;
  callback: ((err: Error | null, res?: pg.QueryResult | pg.QueryResult[]) => void) | undefined;
  handleRowDescription(msg: unknown): void;
}

const require = createRequire(import.meta.url);
const { prepareValue } = require('pg/lib/utils.js') as { prepareValue: (v: unknown) => unknown };
const BaseQuery = (pg as unknown as { Query: new (config: { text: string; values?: unknown[] }) => QueryInternals }).Query;

/** Statements prepared on each connection (named statements live as long as the connection). */
const prepared = new WeakMap<PgConnection, Set<string>>();

export interface SetupStatement {
  readonly name: string;
  readonly text: string;
}

class SingleTripQuery extends BaseQuery {
  private connection: PgConnection | undefined;
  private sawSetup = false;
  constructor(
    private readonly setup: SetupStatement,
    private readonly setupValues: readonly unknown[],
    text: string,
    values: readonly unknown[] | undefined,
  ) {
    super({ text, values: values as unknown[] | undefined });
  }

  requiresPreparation(): boolean {
    return true;
  }

  submit(connection: PgConnection): null {
    this.connection = connection;
    const known = prepared.get(connection)?.has(this.setup.name) ?? false;
    connection.stream.cork?.();
    try {
      if (!known) connection.parse({ text: this.setup.text, name: this.setup.name, types: [] });
      connection.bind({ portal: '', statement: this.setup.name, values: this.setupValues, valueMapper: prepareValue });
      connection.describe({ type: 'P', name: '' });
      connection.execute({ portal: '' });
      connection.parse({ text: this.text, name: '', types: [] });
      connection.bind({ portal: '', statement: '', values: this.values ?? [], valueMapper: prepareValue });
      connection.describe({ type: 'P', name: '' });
      connection.execute({ portal: '' });
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
      let names = prepared.get(this.connection);
      if (!names) prepared.set(this.connection, (names = new Set()));
      names.add(this.setup.name);
    }
    super.handleRowDescription(msg);
  }
}

/** Run `setup` then `text` in one implicit transaction, one round trip; resolves to `text`'s result. */
export function singleTrip<R extends pg.QueryResultRow>(
  client: pg.PoolClient,
  setup: SetupStatement,
  setupValues: readonly unknown[],
  text: string,
  values?: readonly unknown[],
): Promise<pg.QueryResult<R>> {
  return new Promise((resolve, reject) => {
    const q = new SingleTripQuery(setup, setupValues, text, values);
    q.callback = (err, res) => {
      if (err) return reject(err);
      const results = Array.isArray(res) ? res : [res];
      resolve(results[results.length - 1] as pg.QueryResult<R>);
    };
    void client.query(q as unknown as pg.QueryConfig);
  });
}
