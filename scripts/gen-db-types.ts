/**
 * `npm run db:types`: Kysely types generated from the schema the migrations build.
 *
 * Creates a scratch database on DATABASE_URL's server, applies every migration, introspects the
 * catalogs, drops the database, and writes src/db/generated/tenant-db.ts: one interface per table of
 * schema `public` (the tenant tables, `TenantDB`) and of schema `strata` (the platform tables,
 * `PlatformDB`, without the migration runner's bookkeeping). `--check` writes nothing and exits 1
 * when the committed file differs. Exit 2: DATABASE_URL missing.
 *
 * Mapping: Defaulted<> (Kysely's Generated<>, unwrapping helper column types) for a column with a default or BY DEFAULT identity, GeneratedAlways<> for
 * ALWAYS identity and generated columns; bigint and numeric are strings on read (node-postgres);
 * timestamps and dates are Date on read and Date | string on write; json/jsonb are JsonValue on read
 * and JSON text on write; a text column whose CHECK is `col = ANY (ARRAY[...])` becomes the union of
 * those literals; enums become unions; domains map as their base type. The output depends only on
 * the catalogs, sorted by name and column position: the same migrations give the same bytes.
 */
import { randomBytes } from 'node:crypto';
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { createMigrator, defaultMigrationsDir } from '../src/db/migrations/index.js';

export const OUTPUT_FILE = 'src/db/generated/tenant-db.ts';
const SCHEMAS = ['public', 'strata'] as const;
/** The runner's bookkeeping table: internal to src/db/migrations, not a platform table. */
const EXCLUDED = new Set(['strata.schema_migrations']);

export interface IntrospectedColumn {
  schema: string;
  table: string;
  column: string;
  /** pg_attribute.attnum: the column's place in its table. */
  position: number;
  /** pg_type.typname of the column (of the element for arrays, of the base type for domains). */
  type: string;
  isArray: boolean;
  notNull: boolean;
  hasDefault: boolean;
  /** '' | 'a' (ALWAYS) | 'd' (BY DEFAULT). */
  identity: string;
  /** '' | 's' (GENERATED ALWAYS AS ... STORED). */
  generated: string;
  enumLabels: string[] | null;
  /** Literals of a `CHECK (col = ANY (ARRAY[...]))` on this column alone, else null. */
  checkValues: string[] | null;
  comment: string | null;
}

const INTROSPECT_SQL = `
SELECT n.nspname AS schema, c.relname AS "table", a.attname AS "column", a.attnum::int AS position,
       coalesce(et.typname, bt.typname, t.typname) AS type,
       (t.typcategory = 'A' OR bt.typcategory = 'A') AS "isArray",
       a.attnotnull AS "notNull", a.atthasdef AS "hasDefault",
       a.attidentity::text AS identity, a.attgenerated::text AS generated,
       (SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e
         WHERE e.enumtypid = coalesce(et.oid, bt.oid, t.oid)) AS "enumLabels",
       (SELECT array_agg(pg_get_constraintdef(co.oid) ORDER BY co.conname) FROM pg_constraint co
         WHERE co.conrelid = c.oid AND co.contype = 'c' AND co.conkey = ARRAY[a.attnum]) AS checks,
       col_description(c.oid, a.attnum) AS comment
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
  LEFT JOIN pg_type et ON et.oid = CASE WHEN t.typcategory = 'A' THEN t.typelem WHEN bt.typcategory = 'A' THEN bt.typelem END
 WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'v', 'm') AND NOT c.relispartition
   AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY n.nspname, c.relname, a.attnum`;

const ANY_ARRAY = /^CHECK \(\(\(?(\w+)\)?(?:::\w+)? = ANY \(\(?ARRAY\[(.+)\]\)?(?:::[\w ]+\[\])?\)\)\)$/;
const LITERAL = /'((?:[^']|'')*)'::[\w ]+/g;

/** The literals of `CHECK ((col = ANY (ARRAY['a'::text, ...])))`, when `def` is exactly that. */
export function checkLiterals(def: string, column: string): string[] | null {
  const m = ANY_ARRAY.exec(def);
  if (!m || m[1] !== column || m[2] === undefined) return null;
  const values = [...m[2].matchAll(LITERAL)].map((l) => (l[1] ?? '').replace(/''/g, "'"));
  return values.length > 0 ? values : null;
}

/** Columns of every table and view of the exposed schemas, in a stable order. */
export async function introspect(client: pg.ClientBase): Promise<IntrospectedColumn[]> {
  const { rows } = await client.query<Omit<IntrospectedColumn, 'checkValues'> & { checks: string[] | null }>(INTROSPECT_SQL, [SCHEMAS]);
  return rows
    .filter((r) => !EXCLUDED.has(`${r.schema}.${r.table}`))
    .map(({ checks, ...r }) => {
      const literal = (checks ?? []).map((d) => checkLiterals(d, r.column)).find((v) => v !== null);
      return { ...r, checkValues: literal ?? null };
    });
}

/** Helper types, emitted only when used. */
const HELPERS: Record<string, string> = {
  Int8: '/** bigint: read as a string (node-postgres keeps all 64 bits). */\nexport type Int8 = ColumnType<string, bigint | number | string, bigint | number | string>;',
  Numeric: 'export type Numeric = ColumnType<string, number | string, number | string>;',
  Timestamp: 'export type Timestamp = ColumnType<Date, Date | string, Date | string>;',
  Json: [
    'export type JsonPrimitive = boolean | number | string | null;',
    'export type JsonArray = JsonValue[];',
    'export type JsonObject = { [key: string]: JsonValue | undefined };',
    'export type JsonValue = JsonArray | JsonObject | JsonPrimitive;',
    '/** json/jsonb: parsed on read; written as JSON text (JSON.stringify), since arrays would bind as PostgreSQL arrays. */',
    'export type Json = ColumnType<JsonValue, string, string>;',
  ].join('\n'),
  Interval: [
    '/** interval, as node-postgres parses it. */',
    'export interface IntervalValue { years?: number; months?: number; days?: number; hours?: number; minutes?: number; seconds?: number; milliseconds?: number }',
    'export type Interval = ColumnType<IntervalValue, IntervalValue | number | string, IntervalValue | number | string>;',
  ].join('\n'),
};

/** TypeScript of one scalar PostgreSQL type; `helpers` collects the helper types it needs. */
function scalarType(type: string, helpers: Set<string>, inArray: boolean): string {
  const use = (h: string, plain: string) => {
    if (inArray) return plain; // arrays are read and written whole: the read type of the element
    helpers.add(h);
    return h;
  };
  switch (type) {
    case 'int2':
    case 'int4':
    case 'float4':
    case 'float8':
    case 'oid':
      return 'number';
    case 'int8':
      return use('Int8', 'string');
    case 'numeric':
      return use('Numeric', 'string');
    case 'bool':
      return 'boolean';
    case 'timestamp':
    case 'timestamptz':
    case 'date':
      return use('Timestamp', 'Date');
    case 'json':
    case 'jsonb':
      if (inArray) helpers.add('Json');
      return use('Json', 'JsonValue');
    case 'interval':
      if (inArray) helpers.add('Interval');
      return use('Interval', 'IntervalValue');
    case 'bytea':
      return 'Buffer';
    case 'text':
    case 'varchar':
    case 'bpchar':
    case 'char':
    case 'name':
    case 'uuid':
    case 'citext':
    case 'inet':
    case 'cidr':
    case 'macaddr':
    case 'macaddr8':
    case 'time':
    case 'timetz':
    case 'money':
    case 'bit':
    case 'varbit':
    case 'xml':
    case 'tsvector':
    case 'tsquery':
    case 'vector':
      return 'string';
    default:
      return 'unknown';
  }
}

const literalUnion = (values: string[]) => values.map((v) => `'${v.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`).join(' | ');

function columnType(c: IntrospectedColumn, helpers: Set<string>): string {
  const labels = c.enumLabels ?? (c.isArray ? null : c.checkValues);
  let t = labels ? literalUnion(labels) : scalarType(c.type, helpers, c.isArray);
  if (c.isArray) t = labels ? `(${t})[]` : `${t}[]`;
  if (!c.notNull) t = `${t} | null`;
  if (c.identity === 'a' || c.generated === 's') return `GeneratedAlways<${t}>`;
  if (c.hasDefault || c.identity === 'd') return `Defaulted<${t}>`;
  return t;
}

const pascal = (s: string) =>
  s
    .split(/[^A-Za-z0-9]+/)
    .filter(Boolean)
    .map((w) => w[0]!.toUpperCase() + w.slice(1))
    .join('');
const propertyName = (s: string) => (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(s) ? s : `'${s}'`);
const jsdoc = (text: string, indent: string) => `${indent}/** ${text.replace(/\*\//g, '* /').replace(/\s*\n\s*/g, ' ')} */\n`;

/** The generated module for `columns` (pure: the same input gives the same bytes). */
export function renderTypes(columns: IntrospectedColumn[]): string {
  const tables = new Map<string, IntrospectedColumn[]>();
  const ordered = [...columns].sort((a, b) => a.position - b.position);
  for (const c of ordered) {
    const key = `${c.schema}.${c.table}`;
    tables.set(key, [...(tables.get(key) ?? []), c]);
  }
  const keys = [...tables.keys()].sort();
  const helpers = new Set<string>();
  const interfaces: string[] = [];
  const named = new Map<string, string>();
  const members: Record<(typeof SCHEMAS)[number], string[]> = { public: [], strata: [] };
  for (const key of keys) {
    const cols = tables.get(key)!;
    const { schema, table } = cols[0]!;
    const name = schema === 'public' ? pascal(table) : pascal(`${schema}_${table}`);
    const clash = named.get(name);
    if (clash) throw new Error(`tables ${clash} and ${key} would both be typed as ${name}: rename one`);
    named.set(name, key);
    const body = cols.map((c) => `${c.comment ? jsdoc(c.comment, '  ') : ''}  ${propertyName(c.column)}: ${columnType(c, helpers)};`).join('\n');
    interfaces.push(`export interface ${name} {\n${body}\n}`);
    if (schema === 'public') members.public.push(`  ${propertyName(table)}: ${name};`);
    else members.strata.push(`  '${schema}.${table}': ${name};`);
  }
  const all = interfaces.join('\n');
  const defaulted = /\bDefaulted</.test(all);
  const kysely = [
    ...(helpers.size > 0 || defaulted ? ['ColumnType'] : []), // every helper is a ColumnType
    ...(defaulted ? ['InsertType', 'SelectType', 'UpdateType'] : []),
    ...['GeneratedAlways'].filter((n) => new RegExp(`\\b${n}<`).test(all)),
  ];
  const header = [
    '/**',
    ' * Kysely types of the database, generated from the migrations by scripts/gen-db-types.ts.',
    ' * Do not edit: run `npm run db:types` after changing a migration (CI runs `npm run db:types:check`).',
    ' *',
    ' * - TenantDB: the tenant tables of schema public (read and written through tenant sessions, under RLS).',
    ' * - PlatformDB: the platform tables of schema strata (admin connection only).',
    ' */',
  ].join('\n');
  const sections = [
    kysely.length > 0 ? `${header}\nimport type { ${kysely.sort().join(', ')} } from 'kysely';` : header,
    ...Object.keys(HELPERS)
      .filter((h) => helpers.has(h))
      .map((h) => HELPERS[h]!),
    ...(defaulted
      ? [
          '/** Kysely\'s Generated, unwrapping a ColumnType such as Timestamp so that selects stay Date. */\nexport type Defaulted<T> = ColumnType<SelectType<T>, InsertType<T> | undefined, UpdateType<T>>;',
        ]
      : []),
    ...interfaces,
    `export interface TenantDB {\n${members.public.join('\n')}\n}`,
    `export interface PlatformDB {\n${members.strata.join('\n')}\n}`,
  ];
  return `${sections.join('\n\n')}\n`;
}

/** Migrates a scratch database on `serverUrl`'s server, introspects it, and drops it. */
export async function generateFromMigrations(serverUrl: string, dir = defaultMigrationsDir()): Promise<string> {
  const name = `strata_dbtypes_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${admin.escapeIdentifier(name)}`);
    const scratch = new URL(serverUrl);
    scratch.pathname = `/${name}`;
    const pool = new pg.Pool({ connectionString: scratch.toString(), max: 2, application_name: 'strata-db-types' });
    pool.on('error', () => undefined); // DROP ... WITH (FORCE) may end a socket pool.end() left closing
    try {
      await createMigrator({ pool, dir }).up();
      const client = await pool.connect();
      try {
        return renderTypes(await introspect(client));
      } finally {
        client.release();
      }
    } finally {
      await pool.end();
    }
  } finally {
    await admin.query(`DROP DATABASE IF EXISTS ${admin.escapeIdentifier(name)} WITH (FORCE)`);
    await admin.end();
  }
}

/** The first line where two texts differ, for the --check message. */
function firstDifference(a: string, b: string): string {
  const al = a.split('\n');
  const bl = b.split('\n');
  for (let i = 0; i < Math.max(al.length, bl.length); i++) {
    if (al[i] !== bl[i]) return `line ${i + 1}:\n  committed: ${al[i] ?? '(end of file)'}\n  generated: ${bl[i] ?? '(end of file)'}`;
  }
  return '';
}

async function main(): Promise<number> {
  const url = process.env['DATABASE_URL'];
  if (!url) {
    process.stderr.write('db:types: DATABASE_URL is required (a server where a scratch database can be created)\n');
    return 2;
  }
  const file = path.resolve(OUTPUT_FILE);
  const generated = await generateFromMigrations(url);
  if (process.argv.includes('--check')) {
    const committed = await readFile(file, 'utf8').catch(() => '');
    if (committed !== generated) {
      process.stderr.write(`${OUTPUT_FILE} is out of date with the migrations: run \`npm run db:types\` and commit it\n${firstDifference(committed, generated)}\n`);
      return 1;
    }
    process.stdout.write(`${OUTPUT_FILE} is current\n`);
    return 0;
  }
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, generated);
  process.stdout.write(`wrote ${OUTPUT_FILE}\n`);
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  process.exitCode = await main().catch((err: unknown) => {
    process.stderr.write(`db:types failed: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  });
}
