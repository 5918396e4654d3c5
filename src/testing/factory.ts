/**
 * Factories generated from the schema (fishery / factory_bot style): `factory('pipelines')` makes
 * valid rows for any table, honouring types, NOT NULL, simple CHECKs, enums, lengths and unique
 * indexes; a NOT NULL foreign key gets a parent created on demand through the same session, or the
 * row given in `associations`. Defaults, traits and overrides layer in that order.
 *
 *   const pipelines = factory('pipelines').traits({ archived: { status: 'archived' } });
 *   const p = await pipelines.create(acme);                       // acme = db.tenant('acme'): RLS applies
 *   const runs = await factory('pipeline_runs').associations({ pipelines: p }).createList(acme, 5);
 *   const draft = await pipelines.trait('archived').build(acme);  // no write
 */
import { Faker, base, en } from '@faker-js/faker';
import pg from 'pg';
import type { FactorySchema, FactoryTable, QueryFn } from './schema.js';
import { loadFactorySchema } from './schema.js';
import { valueFor } from './values.js';

export type Row = Record<string, unknown>;
/** A value, or a function of the row's sequence number and the seeded faker. */
export type OverrideValue = unknown;
export type Overrides = Record<string, OverrideValue>;
export interface ValueContext {
  seq: number;
  faker: Faker;
}

/** What factories generate with: the schema, a seeded faker and per-table sequence numbers. */
export interface FactoryRuntime {
  schema(): Promise<FactorySchema>;
  readonly faker: Faker;
  nextSeq(table: string): number;
  /** Forget the cached schema (after a migration). */
  refresh(): void;
}

/** Where rows are written: a tenant session (RLS applies) or an owner connection. */
export interface FactoryContext {
  query: QueryFn;
  runtime: FactoryRuntime;
  /** Run several writes as one transaction of this context. */
  transaction?<T>(fn: (ctx: FactoryContext) => Promise<T>): Promise<T>;
}

export class FactoryError extends Error {
  constructor(
    readonly code: 'TABLE_NOT_FOUND' | 'FACTORY_NOT_A_TABLE' | 'UNKNOWN_COLUMN' | 'UNKNOWN_TRAIT' | 'FACTORY_TOO_DEEP' | 'FACTORY_BAD_COUNT',
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'FactoryError';
  }
}

/** Seed of every runtime that is not given one: STRATA_TEST_SEED, else a fixed number. */
export const defaultSeed = (): number => {
  const env = Number(process.env['STRATA_TEST_SEED']);
  return Number.isInteger(env) ? env : 20_261_207;
};

export function createFactoryRuntime(opts: { query: QueryFn; seed?: number; seqStart?: number; schemas?: string[] }): FactoryRuntime {
  const faker = new Faker({ locale: [en, base] });
  faker.seed(opts.seed ?? defaultSeed());
  const seqs = new Map<string, number>();
  let schema: Promise<FactorySchema> | undefined;
  return {
    faker,
    schema() {
      schema ??= loadFactorySchema(opts.query, opts.schemas);
      schema.catch(() => (schema = undefined));
      return schema;
    },
    nextSeq(table) {
      const n = (seqs.get(table) ?? opts.seqStart ?? 0) + 1;
      seqs.set(table, n);
      return n;
    },
    refresh() {
      schema = undefined;
    },
  };
}

interface Definition {
  defaults: Overrides[];
  traits: Record<string, Overrides>;
  associations: Record<string, Row>;
}

const MAX_DEPTH = 8;
const q = pg.escapeIdentifier;

export class Factory {
  constructor(
    readonly table: string,
    private readonly def: Definition = { defaults: [], traits: {}, associations: {} },
  ) {}

  /** Default values for every row of this factory (layered over the generated ones). */
  params(overrides: Overrides): Factory {
    return new Factory(this.table, { ...this.def, defaults: [...this.def.defaults, overrides] });
  }

  /** Named sets of overrides, applied with `.trait(name)`. */
  traits(traits: Record<string, Overrides>): Factory {
    return new Factory(this.table, { ...this.def, traits: { ...this.def.traits, ...traits } });
  }

  /** This factory with the named traits applied (in order). */
  trait(...names: string[]): Factory {
    const layers = names.map((n) => {
      const t = this.def.traits[n];
      if (!t) throw new FactoryError('UNKNOWN_TRAIT', `factory ${this.table} has no trait ${JSON.stringify(n)}`, { trait: n });
      return t;
    });
    return new Factory(this.table, { ...this.def, defaults: [...this.def.defaults, ...layers] });
  }

  /**
   * Parent rows for foreign keys, keyed by the referenced table (`pipelines`), the foreign key's
   * column (`pipeline_id`) or the constraint name; a row as `create` returned it.
   */
  associations(associations: Record<string, Row>): Factory {
    return new Factory(this.table, { ...this.def, associations: { ...this.def.associations, ...associations } });
  }

  /** One row, not written (foreign keys are filled only from associations). */
  async build(ctx: FactoryContext, overrides: Overrides = {}): Promise<Row> {
    return this.draft(ctx, await ctx.runtime.schema(), overrides);
  }

  async buildList(ctx: FactoryContext, count: number, overrides: Overrides = {}): Promise<Row[]> {
    checkCount(count);
    const schema = await ctx.runtime.schema();
    const out: Row[] = [];
    for (let i = 0; i < count; i++) out.push(await this.draft(ctx, schema, overrides));
    return out;
  }

  /** One row written through `ctx` (parents created on demand); the row as stored. */
  async create(ctx: FactoryContext, overrides: Overrides = {}): Promise<Row> {
    const [row] = await this.createList(ctx, 1, overrides);
    return row!;
  }

  /** `count` rows written in one transaction of `ctx` (multi-row INSERTs); the rows as stored. */
  async createList(ctx: FactoryContext, count: number, overrides: Overrides = {}): Promise<Row[]> {
    checkCount(count);
    const run = (c: FactoryContext) => this.insertMany(c, count, overrides, 0);
    return ctx.transaction ? ctx.transaction(run) : run(ctx);
  }

  /** The same factory with `ctx` bound: `build()`, `create()`, `createList(n)`. */
  for(ctx: FactoryContext) {
    return {
      build: (o?: Overrides) => this.build(ctx, o),
      buildList: (n: number, o?: Overrides) => this.buildList(ctx, n, o),
      create: (o?: Overrides) => this.create(ctx, o),
      createList: (n: number, o?: Overrides) => this.createList(ctx, n, o),
    };
  }

  private async insertMany(ctx: FactoryContext, count: number, overrides: Overrides, depth: number): Promise<Row[]> {
    if (depth > MAX_DEPTH) {
      throw new FactoryError('FACTORY_TOO_DEEP', `creating parents for ${this.table} went ${MAX_DEPTH} levels deep (a cycle of NOT NULL foreign keys?); pass associations`);
    }
    const schema = await ctx.runtime.schema();
    const table = tableOf(schema, this.table);
    const given = this.merged(overrides);
    // parents on demand: one batch per foreign key for the whole list, not one INSERT per row
    const parents = new Map<string, Row[]>();
    for (const fk of table.foreignKeys) {
      if (this.needsParent(table, fk, given)) parents.set(fk.name, await new Factory(fk.table).insertMany(ctx, count, {}, depth + 1));
    }
    const drafts: Row[] = [];
    for (let i = 0; i < count; i++) {
      const own = new Map([...parents].map(([name, rows]) => [name, rows[i]!]));
      drafts.push(await this.draft(ctx, schema, overrides, own));
    }
    return insertRows(ctx.query, table, drafts);
  }

  private merged(overrides: Overrides): Overrides {
    return Object.assign({}, ...this.def.defaults, overrides) as Overrides;
  }

  /** A NOT NULL foreign key that neither the overrides nor an association fill. */
  private needsParent(table: FactoryTable, fk: FactoryTable['foreignKeys'][number], given: Overrides): boolean {
    if (fk.columns.some((col) => col in given) || this.association(fk)) return false;
    const needed = fk.columns.filter((col) => !table.columnMap.get(col)?.hasDefault);
    return needed.length > 0 && !needed.every((col) => table.columnMap.get(col)?.nullable);
  }

  private async draft(ctx: FactoryContext, schema: FactorySchema, overrides: Overrides, parents?: Map<string, Row>): Promise<Row> {
    const table = tableOf(schema, this.table);
    const { faker } = ctx.runtime;
    const seq = ctx.runtime.nextSeq(table.name);
    const given = this.merged(overrides);
    for (const name of Object.keys(given)) {
      if (!table.columnMap.has(name)) {
        throw new FactoryError('UNKNOWN_COLUMN', `column ${JSON.stringify(name)} does not exist in ${table.name}`, { column: name, table: table.name });
      }
    }
    const fkColumns = new Set(table.foreignKeys.flatMap((fk) => fk.columns));
    const row: Row = {};
    for (const c of table.columns) {
      if (c.name in given) {
        const v = given[c.name];
        row[c.name] = typeof v === 'function' ? (v as (x: ValueContext) => unknown)({ seq, faker }) : v;
      } else if (c.generated || c.hasDefault || fkColumns.has(c.name)) {
        continue; // the database's default, or filled from a parent below
      } else {
        row[c.name] = valueFor(table.name, c, faker, seq);
      }
    }
    for (const fk of table.foreignKeys) {
      if (fk.columns.some((col) => col in given)) continue;
      // an association, else the parent made for this row (create), else NULL / left out (build)
      const parent = this.association(fk) ?? parents?.get(fk.name);
      if (!parent) continue;
      fk.columns.forEach((col, i) => {
        const v = parent[fk.refColumns[i]!];
        if (v !== undefined) row[col] = v;
      });
    }
    return row;
  }

  private association(fk: { name: string; table: string; columns: string[] }): Row | undefined {
    const a = this.def.associations;
    const own = fk.columns.filter((c) => c !== 'tenant_id');
    return a[fk.name] ?? (own.length === 1 ? (a[own[0]!] ?? a[own[0]!.replace(/_id$/, '')]) : undefined) ?? a[fk.table];
  }
}

/** A factory for `table` (any table of the schema), with optional default values. */
export function factory(table: string, defaults?: Overrides): Factory {
  const f = new Factory(table);
  return defaults ? f.params(defaults) : f;
}

function checkCount(count: number): void {
  if (!Number.isInteger(count) || count < 0) throw new FactoryError('FACTORY_BAD_COUNT', `count must be a non-negative integer (got ${count})`);
}

function tableOf(schema: FactorySchema, name: string): FactoryTable {
  const t = schema.get(name);
  if (!t) throw new FactoryError('TABLE_NOT_FOUND', `table ${JSON.stringify(name)} does not exist or is not exposed`, { table: name });
  if (t.kind !== 'table' && t.kind !== 'partitioned table') {
    throw new FactoryError('FACTORY_NOT_A_TABLE', `${name} is a ${t.kind}; factories write tables`, { table: name });
  }
  return t;
}

/** Multi-row INSERT ... RETURNING *, columns a row lacks take DEFAULT; chunks under the parameter cap. */
export async function insertRows(query: QueryFn, table: FactoryTable, rows: Row[]): Promise<Row[]> {
  if (rows.length === 0) return [];
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  if (cols.length === 0) {
    const out: Row[] = [];
    for (let i = 0; i < rows.length; i++) out.push(...(await query(`INSERT INTO ${table.qualified} DEFAULT VALUES RETURNING *`)).rows);
    return out;
  }
  const overriding = cols.some((c) => table.columnMap.get(c)?.identityAlways) ? ' OVERRIDING SYSTEM VALUE' : '';
  const perChunk = Math.max(1, Math.min(1000, Math.floor(60_000 / cols.length)));
  const out: Row[] = [];
  for (let start = 0; start < rows.length; start += perChunk) {
    const values: unknown[] = [];
    const tuples = rows.slice(start, start + perChunk).map((r) => {
      const items = cols.map((c) => {
        if (!(c in r)) return 'DEFAULT';
        values.push(encode(table, c, r[c]));
        return `$${values.length}`;
      });
      return `(${items.join(', ')})`;
    });
    const { rows: inserted } = await query(
      `INSERT INTO ${table.qualified} (${cols.map(q).join(', ')})${overriding} VALUES ${tuples.join(', ')} RETURNING *`,
      values,
    );
    out.push(...inserted);
  }
  return out;
}

function encode(table: FactoryTable, column: string, v: unknown): unknown {
  const c = table.columnMap.get(column);
  if (v === null || v === undefined || !c) return v ?? null;
  if ((c.udt === 'json' || c.udt === 'jsonb') && typeof v !== 'string') return JSON.stringify(v);
  return v;
}
