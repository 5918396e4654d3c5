/**
 * The schema registry: exposed tables read from the database catalog (columns, types, nullability,
 * defaults, primary keys, foreign keys both ways, indexes, checks, RLS status), with a JSON Schema
 * per table. Identifiers in requests are checked against it and only ever quoted from it.
 * Refreshed after migrations.
 */
import pg from 'pg';
import type { Database } from '../../db/database.js';
import { AppError, badRequest, notFound } from '../../errors.js';
import { viewColumnOrigins } from './view-lineage.js';

export interface ColumnInfo {
  name: string;
  /** format_type(), e.g. `character varying(200)`, `bigint`, `jsonb`, `text[]`. */
  type: string;
  /** Base type name (pg_type.typname of the element type for arrays), e.g. `int8`, `varchar`. */
  udt: string;
  isArray: boolean;
  nullable: boolean;
  hasDefault: boolean;
  /** Identity or generated column: never written by clients. */
  generated: boolean;
  /** GENERATED ALWAYS AS IDENTITY (a subset of `generated`): written only with OVERRIDING SYSTEM VALUE. */
  identityAlways?: boolean;
  maxLength: number | null;
  /** Values allowed by a `CHECK (col IN (...))`, when there is one. */
  enum: string[] | null;
}

export interface ForeignKey {
  name: string;
  columns: string[];
  /** Table on the other side (exposed name). */
  table: string;
  refColumns: string[];
}

export interface IndexInfo {
  name: string;
  columns: string[];
  unique: boolean;
  primary: boolean;
}

export interface TableInfo {
  schema: string;
  name: string;
  columns: ColumnInfo[];
  columnMap: Map<string, ColumnInfo>;
  primaryKey: string[];
  /** Outgoing foreign keys (this table references another). */
  foreignKeys: ForeignKey[];
  /** Incoming foreign keys (other tables reference this one), seen from the other table. */
  referencedBy: ForeignKey[];
  indexes: IndexInfo[];
  checks: Array<{ name: string; definition: string }>;
  rls: { enabled: boolean; forced: boolean };
  hasTenantId: boolean;
  /** `"schema"."table"`, quoted from the catalog. */
  qualified: string;
  comment: string | null;
  /**
   * A view: where its columns come from (view column -> exposed table and column), read from the
   * view's query (view-lineage.ts). PostgREST infers a view's relationships from these.
   */
  sources?: Map<string, { table: string; column: string }>;
}

export interface Relationship {
  /** Name to use in `select=name(...)`: the other table's name (or the FK column minus `_id`). */
  name: string;
  kind: 'many-to-one' | 'one-to-many' | 'one-to-one' | 'many-to-many';
  table: string;
  /** Columns on this side and on the other side, pairwise (many-to-many: this side's key the junction refers to). */
  localColumns: string[];
  remoteColumns: string[];
  /** The foreign key it follows (many-to-many: the junction's key to the target). */
  constraint?: string;
  /** Many-to-many: the join table, its columns referring to this side and to the target. */
  junction?: { table: string; qualified: string; localColumns: string[]; remoteColumns: string[]; targetColumns: string[] };
}

export const EXPOSED_SCHEMAS = ['public'];

/**
 * The tsvector column search indexes add (SPEC 10). It is an implementation detail of search, so the
 * registry hides it: not in rows, JSON Schemas, GraphQL types or writable columns.
 */
export const SEARCH_TSV_COLUMN = 'search_tsv';
const hidden = (c: { name: string; udt: string }) => c.name === SEARCH_TSV_COLUMN && c.udt === 'tsvector';

const INTROSPECT = `
SELECT c.oid::int AS oid, c.relname AS name, n.nspname AS schema, c.relrowsecurity AS rls, c.relforcerowsecurity AS forced,
  obj_description(c.oid, 'pg_class') AS comment,
  (SELECT json_agg(json_build_object(
      'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
      'udt', CASE WHEN t.typelem <> 0 AND t.typlen = -1 THEN et.typname ELSE t.typname END,
      'isArray', t.typelem <> 0 AND t.typlen = -1,
      'nullable', NOT a.attnotnull, 'hasDefault', a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
      'generated', a.attidentity = 'a' OR a.attgenerated <> '', 'identityAlways', a.attidentity = 'a',
      'maxLength', CASE WHEN a.atttypmod > 4 AND a.atttypid IN (1043, 1042) THEN a.atttypmod - 4 END) ORDER BY a.attnum)
     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type et ON et.oid = t.typelem
     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
  (SELECT json_agg(json_build_object('name', ic.relname, 'primary', i.indisprimary, 'unique', i.indisunique,
      'columns', (SELECT json_agg(a.attname ORDER BY k.ord) FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)) ORDER BY ic.relname)
     FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid AND i.indpred IS NULL) AS indexes,
  (SELECT json_agg(json_build_object('name', co.conname, 'definition', pg_get_constraintdef(co.oid)) ORDER BY co.conname)
     FROM pg_constraint co WHERE co.conrelid = c.oid AND co.contype = 'c') AS checks,
  (SELECT json_agg(json_build_object('name', co.conname, 'table', fc.relname, 'schema', fn.nspname,
      'columns', (SELECT json_agg(a.attname ORDER BY k.ord) FROM unnest(co.conkey) WITH ORDINALITY k(attnum, ord)
                  JOIN pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = k.attnum),
      'refColumns', (SELECT json_agg(a.attname ORDER BY k.ord) FROM unnest(co.confkey) WITH ORDINALITY k(attnum, ord)
                  JOIN pg_attribute a ON a.attrelid = co.confrelid AND a.attnum = k.attnum)) ORDER BY co.conname)
     FROM pg_constraint co JOIN pg_class fc ON fc.oid = co.confrelid JOIN pg_namespace fn ON fn.oid = fc.relnamespace
     WHERE co.conrelid = c.oid AND co.contype = 'f') AS fks,
  (SELECT json_object_agg(a.attnum, a.attname) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS attnums,
  CASE WHEN c.relkind = 'v' THEN (SELECT r.ev_action::text FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.rulename = '_RETURN') END AS rule,
  -- the relations a view reads, at any depth, that would run past row-level security: views
  -- without security_invoker (they read as their owner) and materialized views (no RLS at all)
  CASE WHEN c.relkind IN ('v', 'm') THEN (WITH RECURSIVE reach(oid) AS (
      SELECT d.refobjid FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid AND d.refclassid = 'pg_class'::regclass
        WHERE r.ev_class = c.oid AND d.refobjid <> c.oid
      UNION
      SELECT d.refobjid FROM reach JOIN pg_rewrite r ON r.ev_class = reach.oid
        JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid AND d.refclassid = 'pg_class'::regclass WHERE d.refobjid <> r.ev_class)
    SELECT array_agg(DISTINCT x.relname::text) FROM (SELECT c.oid UNION SELECT oid FROM reach) y JOIN pg_class x ON x.oid = y.oid
    WHERE x.relkind = 'm' OR (x.relkind = 'v' AND NOT coalesce((SELECT o.option_value::bool FROM pg_options_to_table(x.reloptions) o WHERE o.option_name = 'security_invoker'), false))) END AS unsafe
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname = ANY($1)
ORDER BY c.relname`;

interface Row {
  oid: number;
  name: string;
  schema: string;
  rls: boolean;
  forced: boolean;
  comment: string | null;
  columns: Array<Omit<ColumnInfo, 'enum'>> | null;
  indexes: IndexInfo[] | null;
  checks: Array<{ name: string; definition: string }> | null;
  fks: Array<ForeignKey & { schema: string }> | null;
  attnums: Record<string, string> | null;
  rule: string | null;
  unsafe: string[] | null;
}

/** `CHECK ((status = ANY (ARRAY['a'::text, 'b'::text])))` -> ['a', 'b'] for column status. */
export function enumFromChecks(column: string, checks: Array<{ definition: string }>): string[] | null {
  for (const { definition } of checks) {
    const m = /^CHECK \(\(\(?"?([a-z_][a-z0-9_]*)"?\)?(?:::text)? = ANY \(\(?ARRAY\[(.*)\]\)?(?:::text\[\])?\)\)\)$/.exec(definition);
    if (!m || m[1] !== column) continue;
    const values = [...(m[2] ?? '').matchAll(/'((?:[^']|'')*)'::(?:text|character varying)/g)].map((v) => (v[1] ?? '').replace(/''/g, "'"));
    if (values.length) return values;
  }
  return null;
}

/**
 * The columns that address a row in the API: the primary key without a leading tenant_id, which the
 * session already fixes (on a Citus cluster every tenant table's key is (tenant_id, id)).
 */
function rowKey(columns: string[]): string[] {
  return columns.length > 1 && columns[0] === 'tenant_id' ? columns.slice(1) : columns;
}

/**
 * Views (and materialized views) that would let a tenant past row-level security: a view without
 * `security_invoker = true` reads its tables as the view's owner, and a materialized view has no
 * RLS at all; so does any view reading one of them. They are left out of the registry, so no face
 * (/v1, /rest/v1, GraphQL, exports) serves them; asking for one names the reason (see table()).
 */
export type RefusedViews = Map<string, string[]>;

function build(all: Row[]): { tables: Map<string, TableInfo>; refused: RefusedViews } {
  const map = new Map<string, TableInfo>();
  const refused: RefusedViews = new Map();
  const rows = all.filter((r) => {
    if (r.unsafe?.length) refused.set(r.name, r.unsafe);
    return !r.unsafe?.length;
  });
  const byOid = new Map(all.map((r) => [r.oid, r]));
  for (const r of rows) {
    const checks = r.checks ?? [];
    const columns: ColumnInfo[] = (r.columns ?? []).filter((c) => !hidden(c)).map((c) => ({ ...c, enum: enumFromChecks(c.name, checks) }));
    const indexes = r.indexes ?? [];
    map.set(r.name, {
      schema: r.schema,
      name: r.name,
      columns,
      columnMap: new Map(columns.map((c) => [c.name, c])),
      primaryKey: rowKey(indexes.find((i) => i.primary)?.columns ?? []),
      foreignKeys: (r.fks ?? []).filter((f) => EXPOSED_SCHEMAS.includes(f.schema)).map(({ name, table, columns: cols, refColumns }) => ({ name, table, columns: cols, refColumns })),
      referencedBy: [],
      indexes,
      checks,
      rls: { enabled: r.rls, forced: r.forced },
      hasTenantId: columns.some((c) => c.name === 'tenant_id'),
      qualified: `${pg.escapeIdentifier(r.schema)}.${pg.escapeIdentifier(r.name)}`,
      comment: r.comment,
    });
  }
  for (const r of rows) {
    if (r.rule !== null) map.get(r.name)!.sources = viewSources(r, byOid, map);
  }
  for (const t of map.values()) {
    for (const fk of t.foreignKeys) {
      map.get(fk.table)?.referencedBy.push({ name: fk.name, table: t.name, columns: fk.columns, refColumns: fk.refColumns });
    }
  }
  return { tables: map, refused };
}

/** A view's columns that are plain columns of an exposed table (through other views too). */
function viewSources(view: Row, byOid: Map<number, Row>, tables: Map<string, TableInfo>, depth = 0): Map<string, { table: string; column: string }> {
  const out = new Map<string, { table: string; column: string }>();
  if (depth > 8 || view.rule === null) return out;
  for (const o of viewColumnOrigins(view.rule)) {
    const rel = byOid.get(o.relation);
    const column = rel?.attnums?.[String(o.attnum)];
    if (!rel || column === undefined || !tables.has(rel.name)) continue;
    if (rel.rule !== null) {
      const inner = viewSources(rel, byOid, tables, depth + 1).get(column);
      if (inner) out.set(o.column, inner);
    } else out.set(o.column, { table: rel.name, column });
  }
  return out;
}

/** Relationships of a table, named for embedding: outgoing by target table, incoming by source table. */
export function relationships(t: TableInfo): Relationship[] {
  const out: Relationship[] = [];
  // tenant_id is part of every demo FK (to keep rows in one tenant); it is not what relates them
  const meaningful = (cols: string[]) => cols.filter((c) => c !== 'tenant_id');
  for (const fk of t.foreignKeys) {
    const local = meaningful(fk.columns);
    const self = fk.table === t.name;
    const name = self || t.foreignKeys.filter((f) => f.table === fk.table).length > 1 ? (local[0] ?? fk.name).replace(/_id$/, '') : fk.table;
    out.push({ name, kind: 'many-to-one', table: fk.table, localColumns: fk.columns, remoteColumns: fk.refColumns });
  }
  for (const fk of t.referencedBy) {
    const self = fk.table === t.name;
    const local = meaningful(fk.columns);
    const name = self ? `${(local[0] ?? fk.name).replace(/_id$/, '')}_children` : t.referencedBy.filter((f) => f.table === fk.table).length > 1 ? `${fk.table}_by_${local[0] ?? fk.name}` : fk.table;
    out.push({ name, kind: 'one-to-many', table: fk.table, localColumns: fk.refColumns, remoteColumns: fk.columns });
  }
  return out;
}

/** JSON Schema (draft 2020-12 subset) for a row as written: used to validate inserts and updates. */
export function jsonSchemaFor(t: TableInfo): Record<string, unknown> {
  const properties: Record<string, unknown> = {};
  const required: string[] = [];
  for (const c of t.columns) {
    const base = typeSchema(c);
    const s: Record<string, unknown> = c.nullable ? { anyOf: [base, { type: 'null' }] } : base;
    if (c.generated) s['readOnly'] = true;
    properties[c.name] = s;
    if (!c.nullable && !c.hasDefault && !c.generated) required.push(c.name);
  }
  return { $schema: 'https://json-schema.org/draft/2020-12/schema', title: t.name, type: 'object', properties, required, additionalProperties: false };
}

function typeSchema(c: ColumnInfo): Record<string, unknown> {
  const scalar = (): Record<string, unknown> => {
    switch (c.udt) {
      case 'int2':
        return { type: 'integer', minimum: -32768, maximum: 32767 };
      case 'int4':
        return { type: 'integer', minimum: -2147483648, maximum: 2147483647 };
      case 'int8':
        // bigint travels as a string to keep 64-bit precision; integers are accepted too
        return { anyOf: [{ type: 'integer' }, { type: 'string', pattern: '^-?[0-9]{1,19}$' }] };
      case 'numeric':
        return { anyOf: [{ type: 'number' }, { type: 'string', pattern: '^-?[0-9]+(\\.[0-9]+)?$' }] };
      case 'float4':
      case 'float8':
        return { type: 'number' };
      case 'bool':
        return { type: 'boolean' };
      case 'json':
      case 'jsonb':
        return {};
      case 'uuid':
        return { type: 'string', format: 'uuid' };
      case 'timestamptz':
      case 'timestamp':
        return { type: 'string', format: 'date-time' };
      case 'date':
        return { type: 'string', format: 'date' };
      default: {
        const s: Record<string, unknown> = { type: 'string' };
        if (c.maxLength !== null) s['maxLength'] = c.maxLength;
        if (c.enum) s['enum'] = c.enum;
        return s;
      }
    }
  };
  return c.isArray ? { type: 'array', items: scalar() } : scalar();
}

export function createRegistryService(deps: { db: Pick<Database, 'adminQuery'> }) {
  let tables: Map<string, TableInfo> | undefined;
  let refused: RefusedViews = new Map();
  let loading: Promise<Map<string, TableInfo>> | undefined;
  let version = 0;
  const listeners = new Set<() => void>();

  async function load(): Promise<Map<string, TableInfo>> {
    const { rows } = await deps.db.adminQuery<Row>(INTROSPECT, [EXPOSED_SCHEMAS]);
    const built = build(rows);
    refused = built.refused;
    return built.tables;
  }

  return {
    /** All exposed tables (loaded once, then cached until refresh()). */
    async tables(): Promise<Map<string, TableInfo>> {
      if (tables) return tables;
      loading ??= load().then((m) => {
        tables = m;
        version++;
        return m;
      });
      try {
        return await loading;
      } finally {
        loading = undefined;
      }
    },
    /** A table by name; 404 TABLE_NOT_FOUND when it is not exposed. */
    async table(name: string): Promise<TableInfo> {
      const t = (await this.tables()).get(name);
      if (!t) {
        const through = refused.get(name);
        if (through) {
          throw new AppError(403, 'VIEW_NOT_SECURITY_INVOKER', `view ${JSON.stringify(name)} is not served: it reads ${through.map((x) => JSON.stringify(x)).join(', ')} past row-level security`, {
            hint: 'create the view WITH (security_invoker = true) over tables or security_invoker views (not materialized views), so row-level security applies to the caller',
          });
        }
        throw notFound('TABLE_NOT_FOUND', `table ${JSON.stringify(name)} does not exist or is not exposed`);
      }
      return t;
    },
    /** A column of a table; 400 UNKNOWN_COLUMN naming it when absent. */
    column(t: TableInfo, name: string): ColumnInfo {
      const c = t.columnMap.get(name);
      if (!c) throw badRequest('UNKNOWN_COLUMN', `column ${JSON.stringify(name)} does not exist in ${t.name}`, { column: name, table: t.name });
      return c;
    },
    /** Re-read the catalog (after migrations); listeners (GraphQL schema, caches) are told. */
    async refresh(): Promise<void> {
      tables = await load();
      version++;
      for (const l of listeners) l();
    },
    /** Bumped on every (re)load. */
    get version(): number {
      return version;
    },
    onChange(listener: () => void): () => void {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}
export type SchemaRegistry = ReturnType<typeof createRegistryService>;
