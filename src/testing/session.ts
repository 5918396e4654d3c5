/**
 * Tenant sessions for tests: each statement (or `transaction`) runs in a transaction that sets the
 * tenant, actor and role the way Strata's own sessions do, as the non-owner group role
 * `strata_tenant` (SET LOCAL ROLE), so row-level security applies exactly as in production.
 */
import type pg from 'pg';
import { expectRows, type RowExpectation } from './expect-rows.js';
import type { FactoryContext, FactoryRuntime } from './factory.js';
import type { QueryFn } from './schema.js';

export interface TenantSessionOptions {
  actor?: string;
  /** Strata role recorded in `strata.role` (default `admin`). */
  role?: string;
  /** The database role statements run as (default `strata_tenant`: no owner, no BYPASSRLS). */
  dbRole?: string;
}

export class TenantSession implements FactoryContext {
  readonly query: QueryFn;
  constructor(
    private readonly pool: () => pg.Pool,
    readonly runtime: FactoryRuntime,
    readonly tenantId: string,
    private readonly opts: TenantSessionOptions = {},
  ) {
    this.query = (text, values) => this.transaction((ctx) => ctx.query(text, values));
  }

  /** Row assertions on what this tenant sees (row-level security applies). */
  expectRows(table: string, where?: Record<string, unknown>): RowExpectation {
    return expectRows(this.query, table, where);
  }

  /** Run `fn` in one tenant transaction; committed when it resolves, rolled back when it throws. */
  async transaction<T>(fn: (ctx: FactoryContext) => Promise<T>): Promise<T> {
    const client = await this.pool().connect();
    let broken = false;
    try {
      await client.query('BEGIN');
      await client.query(`SET LOCAL ROLE ${client.escapeIdentifier(this.opts.dbRole ?? 'strata_tenant')}`);
      await client.query(
        "SELECT set_config('strata.tenant_id', $1, true), set_config('strata.actor', $2, true), set_config('strata.role', $3, true)",
        [this.tenantId, this.opts.actor ?? 'strata-testing', this.opts.role ?? 'admin'],
      );
      const inner: FactoryContext = {
        runtime: this.runtime,
        query: (text, values) => client.query(text, values as unknown[] | undefined),
        transaction: (f) => f(inner), // already in one
      };
      const result = await fn(inner);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => (broken = true));
      throw err;
    } finally {
      client.release(broken);
    }
  }
}

/** A factory context over a Strata transaction (the testing-mode API runs factories this way). */
export function txContext(tx: { query: QueryFn }, runtime: FactoryRuntime): FactoryContext {
  const ctx: FactoryContext = { runtime, query: (text, values) => tx.query(text, values), transaction: (f) => f(ctx) };
  return ctx;
}
