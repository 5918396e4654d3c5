/**
 * POST /v1/testing/factories/{table}: rows made by strata/testing's factories inside the caller's
 * tenant transaction (RLS applies: a row of another tenant cannot be written), parents created on
 * demand in the same transaction. Factory problems become 4xx with stable codes.
 */
import { randomInt } from 'node:crypto';
import type { Database } from '../../db/database.js';
import type { SessionContext } from '../../db/session.js';
import { badRequest, notFound, type AppError } from '../../errors.js';
import { createFactoryRuntime, factory, FactoryError, txContext, UnsupportedColumnError, type Row } from '../../testing/index.js';
import type { SchemaRegistry } from '../data/index.js';
import { isTenantTable, withAncestors } from './tenant-tables.js';

export interface FactoryDeps {
  db: Database;
  schema: SchemaRegistry;
  afterCommit?: (ctx: SessionContext, tables: string[]) => Promise<void>;
}

export function createTestingFactories(deps: FactoryDeps) {
  // one runtime per process: schema read once (again after migrations), sequences from a random
  // start so unique values of one process do not collide with an earlier one's
  const runtime = createFactoryRuntime({
    query: (text, values) => deps.db.adminQuery(text, values),
    seed: randomInt(1, 2 ** 31),
    seqStart: randomInt(0, 1_000_000_000),
  });
  deps.schema.onChange(() => runtime.refresh());

  return {
    /** `count` rows of `table` for the caller's tenant; `overrides` apply to every row. */
    async create(ctx: SessionContext, table: string, count: number, overrides: Record<string, unknown>): Promise<Row[]> {
      if (!ctx.tenantId) throw badRequest('TENANT_REQUIRED', 'testing mode works on one tenant: use a token that names one');
      const tables = await deps.schema.tables();
      const t = tables.get(table);
      if (!t) throw notFound('TABLE_NOT_FOUND', `table ${JSON.stringify(table)} does not exist or is not exposed`);
      if (!isTenantTable(t)) {
        throw badRequest('NOT_A_TENANT_TABLE', `${table} has no tenant_id under forced row-level security; testing mode writes only tenant tables`);
      }
      for (const name of Object.keys(overrides)) {
        const c = t.columnMap.get(name);
        if (!c) throw badRequest('UNKNOWN_COLUMN', `column ${JSON.stringify(name)} does not exist in ${table}`, { column: name, table });
        if (c.generated && !c.identityAlways) throw badRequest('READ_ONLY_COLUMN', `column ${name} of ${table} is generated and cannot be given`, { column: name });
      }
      let rows: Row[];
      try {
        rows = await deps.db.withTenant(ctx, (tx) => factory(table).createList(txContext(tx, runtime), count, overrides));
      } catch (err) {
        throw asAppError(err) ?? err;
      }
      await deps.afterCommit?.(ctx, withAncestors(t, tables));
      return rows;
    },
  };
}

function asAppError(err: unknown): AppError | undefined {
  if (err instanceof UnsupportedColumnError) return badRequest(err.code, err.message, { table: err.table, column: err.column });
  if (!(err instanceof FactoryError)) return undefined;
  return err.code === 'TABLE_NOT_FOUND' ? notFound(err.code, err.message) : badRequest(err.code, err.message, err.details);
}
