/**
 * Functions callable through the PostgREST face (`/rpc/{fn}`): the functions of the exposed schemas,
 * read from the catalog and chosen among overloads by the names of the arguments given. Only
 * SECURITY INVOKER functions run (a definer function would run past row-level security); every call
 * runs in the caller's tenant session. Results: set-returning as a JSON array, others as a value,
 * void as nothing.
 */
import pg from 'pg';
import type { Database } from '../../db/database.js';
import { AppError, badRequest, forbidden, notFound } from '../../errors.js';
import type { RestCall } from './rest-rows.js';
import { Params } from './rest-query/build.js';
import { EXPOSED_SCHEMAS, type ColumnInfo, type SchemaRegistry, type TableInfo } from './schema-registry.js';

const q = pg.escapeIdentifier;

export interface FunctionArg {
  /** '' for an unnamed argument. */
  name: string;
  type: string;
  hasDefault: boolean;
}

/** A column of a function's result (a row type's attribute, an OUT/TABLE column, or the scalar itself). */
export interface ResultColumn {
  name: string;
  type: string;
  udt: string;
  isArray: boolean;
}

export interface FunctionInfo {
  schema: string;
  name: string;
  args: FunctionArg[];
  returnType: string;
  setof: boolean;
  /** Returns rows (a composite type or a table), so results are objects. */
  composite: boolean;
  void: boolean;
  definer: boolean;
  volatility: 'i' | 's' | 'v';
  /** The result's columns: a scalar function has one, named after the function (as `SELECT fn()` names it). */
  columns: ResultColumn[];
}

const INTROSPECT = `
SELECT n.nspname AS schema, p.proname AS name, p.prosecdef AS definer, p.provolatile AS volatility, p.proretset AS setof,
  format_type(p.prorettype, NULL) AS return_type, p.prorettype = 'void'::regtype AS void,
  (t.typrelid <> 0 OR p.prorettype = 'record'::regtype) AS composite, p.pronargdefaults AS defaults,
  coalesce(p.proargnames, '{}') AS names, coalesce(p.proargmodes::text[], '{}') AS modes,
  (SELECT coalesce(array_agg(format_type(x, NULL) ORDER BY o), '{}') FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) WITH ORDINALITY u(x, o)) AS types,
  (SELECT coalesce(array_agg(CASE WHEN at.typelem <> 0 AND at.typlen = -1 THEN aet.typname ELSE at.typname END ORDER BY o), '{}')
     FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) WITH ORDINALITY u(x, o)
     JOIN pg_type at ON at.oid = u.x LEFT JOIN pg_type aet ON aet.oid = at.typelem) AS udts,
  (SELECT json_agg(json_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
      'udt', CASE WHEN ct.typelem <> 0 AND ct.typlen = -1 THEN cet.typname ELSE ct.typname END,
      'isArray', ct.typelem <> 0 AND ct.typlen = -1) ORDER BY a.attnum)
     FROM pg_attribute a JOIN pg_type ct ON ct.oid = a.atttypid LEFT JOIN pg_type cet ON cet.oid = ct.typelem
     WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) AS row_columns,
  CASE WHEN t.typelem <> 0 AND t.typlen = -1 THEN (SELECT typname FROM pg_type WHERE oid = t.typelem) ELSE t.typname END AS return_udt,
  t.typelem <> 0 AND t.typlen = -1 AS return_array
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_type t ON t.oid = p.prorettype
WHERE n.nspname = ANY($1) AND p.prokind = 'f'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')`;

interface Row {
  schema: string;
  name: string;
  definer: boolean;
  volatility: 'i' | 's' | 'v';
  setof: boolean;
  return_type: string;
  void: boolean;
  composite: boolean;
  defaults: number;
  names: string[];
  modes: string[];
  types: string[];
  udts: string[];
  row_columns: ResultColumn[] | null;
  return_udt: string;
  return_array: boolean;
}

function toInfo(r: Row): FunctionInfo {
  const inputs: Array<{ name: string; type: string }> = [];
  const outputs: ResultColumn[] = [];
  r.types.forEach((type, i) => {
    const mode = r.modes[i] ?? 'i';
    if (mode === 'i' || mode === 'b' || mode === 'v') inputs.push({ name: r.names[i] ?? '', type });
    if (mode === 'o' || mode === 'b' || mode === 't') outputs.push({ name: r.names[i] ?? '', type, udt: r.udts[i] ?? '', isArray: type.endsWith('[]') });
  });
  const columns: ResultColumn[] = r.void
    ? []
    : r.row_columns?.length
      ? r.row_columns
      : outputs.length > 1 || (outputs.length === 1 && r.composite)
        ? outputs
        : [{ name: outputs[0]?.name || r.name, type: r.return_type, udt: r.return_udt, isArray: r.return_array }];
  const firstDefault = inputs.length - r.defaults;
  return {
    schema: r.schema,
    name: r.name,
    args: inputs.map((a, i) => ({ ...a, hasDefault: i >= firstDefault })),
    returnType: r.return_type,
    setof: r.setof,
    composite: r.composite,
    void: r.void,
    definer: r.definer,
    volatility: r.volatility,
    columns: columns.filter((c) => c.name !== ''),
  };
}

export function createRestFunctionsService(deps: { db: Database; schema: SchemaRegistry }) {
  let cache: Promise<Map<string, FunctionInfo[]>> | undefined;
  deps.schema.onChange(() => {
    cache = undefined;
  });
  const load = async () => {
    const { rows } = await deps.db.adminQuery<Row>(INTROSPECT, [EXPOSED_SCHEMAS]);
    const map = new Map<string, FunctionInfo[]>();
    for (const r of rows) {
      const f = toInfo(r);
      map.set(f.name, [...(map.get(f.name) ?? []), f]);
    }
    return map;
  };
  const functions = () => {
    cache ??= load().catch((err: unknown) => {
      cache = undefined;
      throw err;
    });
    return cache;
  };

  const refuseDefiner = (f: FunctionInfo): FunctionInfo => {
    if (f.definer) {
      throw forbidden('SECURITY_DEFINER_REFUSED', `function ${f.schema}.${f.name} is SECURITY DEFINER; only SECURITY INVOKER functions can be called, so row-level security applies`);
    }
    return f;
  };
  const ambiguous = (fits: FunctionInfo[]) =>
    new AppError(300, 'AMBIGUOUS_FUNCTION', `Could not choose the best candidate function between: ${fits.map((f) => `${f.schema}.${f.name}(${f.args.map((a) => `${a.name} => ${a.type}`).join(', ')})`).join(', ')}`, {
      hint: 'Try renaming the parameters or the function itself in the database so function overloading can be resolved',
    });
  const isJson = (a: FunctionArg) => a.type === 'json' || a.type === 'jsonb';

  /**
   * The overload of `name` whose arguments are exactly covered by `given` (names). With `body`
   * (a POST's JSON), an overload taking one unnamed json/jsonb argument fits too when no named
   * overload does: it receives the whole body, as in PostgREST.
   */
  async function resolve(name: string, given: string[], o: { body?: boolean } = {}): Promise<FunctionInfo> {
    const all = (await functions()).get(name) ?? [];
    const fits = all.filter((f) => given.every((g) => f.args.some((a) => a.name === g)) && f.args.every((a) => a.hasDefault || given.includes(a.name)));
    const signature = `public.${name}(${[...given].sort().join(', ')})`;
    if (fits.length === 0 && o.body) {
      const whole = all.filter((f) => f.args.length === 1 && f.args[0]!.name === '' && isJson(f.args[0]!));
      if (whole.length === 1) return refuseDefiner(whole[0]!);
    }
    if (fits.length === 0) {
      throw notFound('FUNCTION_NOT_FOUND', `Could not find the function ${signature} in the schema cache`);
    }
    if (fits.length > 1) throw ambiguous(fits);
    return refuseDefiner(fits[0]!);
  }

  /** `Prefer: params=single-object`: the overload of `name` taking exactly one json/jsonb argument. */
  async function resolveSingleObject(name: string): Promise<FunctionInfo> {
    const fits = ((await functions()).get(name) ?? []).filter((f) => f.args.length === 1 && isJson(f.args[0]!));
    if (fits.length === 0) {
      throw new AppError(404, 'FUNCTION_NOT_FOUND', `Could not find the function public.${name} with a single json or jsonb argument in the schema cache`, {
        hint: 'Prefer: params=single-object calls a function that takes one json or jsonb argument',
      });
    }
    if (fits.length > 1) throw ambiguous(fits);
    return refuseDefiner(fits[0]!);
  }

  let zones: Promise<Map<string, string>> | undefined;

  return {
    /** Every callable function (OpenAPI description). */
    async list(): Promise<FunctionInfo[]> {
      return [...(await functions()).values()].flat().filter((f) => !f.definer);
    },
    resolve,
    resolveSingleObject,
    /** PostgreSQL's time zone names (pg_timezone_names), by lower-cased name: `Prefer: timezone`. */
    timezones(): Promise<Map<string, string>> {
      zones ??= deps.db
        .adminQuery<{ name: string }>('SELECT name FROM pg_catalog.pg_timezone_names')
        .then((r) => new Map(r.rows.map((x) => [x.name.toLowerCase(), x.name])))
        .catch((err: unknown) => {
          zones = undefined;
          throw err;
        });
      return zones;
    },
    /** Names of every argument of every overload of `name` (to tell arguments from filters on GET). */
    async argNames(name: string): Promise<Set<string>> {
      return new Set(((await functions()).get(name) ?? []).flatMap((f) => f.args.map((a) => a.name)));
    },
    /**
     * `schema.fn(a => $1::type, ...)` with its values added to `params`; a function taking the
     * whole body (one json/jsonb argument, see resolve) is called with `args` as that argument.
     */
    callSql(f: FunctionInfo, args: Record<string, unknown>, params: Params, o: { whole?: boolean } = {}): string {
      const only = f.args.length === 1 ? f.args[0]! : undefined;
      if (only && isJson(only) && (o.whole || only.name === '')) {
        return `${q(f.schema)}.${q(f.name)}(${params.add(JSON.stringify(args))}::${only.type})`;
      }
      const list = Object.entries(args).map(([k, v]) => `${q(k)} => ${params.add(argValue(f.args.find((x) => x.name === k)!, v))}::${f.args.find((x) => x.name === k)!.type}`);
      return `${q(f.schema)}.${q(f.name)}(${list.join(', ')})`;
    },
    /**
     * Call `f` with named arguments (or the whole body, see callSql). `readOnly` for GET (a volatile
     * function then fails as in PostgREST). Returns the result as JSON text, or undefined for void.
     */
    async call(call: RestCall, f: FunctionInfo, args: Record<string, unknown>, o: { readOnly: boolean; whole?: boolean }): Promise<{ json?: string; fn: FunctionInfo }> {
      const params = new Params();
      const fn = this.callSql(f, args, params, { whole: o.whole });
      const values = params.values;
      const text = f.void
        ? `SELECT ${fn} AS j`
        : f.setof
          ? f.composite
            ? `SELECT coalesce(json_agg(_r), '[]')::text AS j FROM ${fn} _r`
            : `SELECT coalesce(json_agg(_r.v), '[]')::text AS j FROM ${fn} AS _r(v)`
          : f.composite
            ? `SELECT to_json(_r)::text AS j FROM ${fn} _r`
            : `SELECT to_json(${fn})::text AS j`;
      const res = await deps.db.tenantQuery<{ j: string | null }>(call.ctx, text, values, { readOnly: o.readOnly || f.volatility !== 'v', request: call.request });
      if (f.void) return { fn: f };
      return { fn: f, json: res.rows[0]?.j ?? 'null' };
    },
  };
}

/**
 * The result of a call as a table the read path can query (select, filters, order, paging,
 * counts): its columns are the function's result columns; a scalar result is one column named
 * after the function. `call` is the function call's SQL (callSql). No relationships: embedding
 * needs a table's row type.
 */
export function resultTable(f: FunctionInfo, call: string): TableInfo {
  const columns: ColumnInfo[] = f.columns.map((c) => ({ ...c, nullable: true, hasDefault: false, generated: false, maxLength: null, enum: null }));
  const scalar = !f.composite && columns.length === 1;
  return {
    schema: f.schema,
    name: f.name,
    columns,
    columnMap: new Map(columns.map((c) => [c.name, c])),
    primaryKey: [],
    foreignKeys: [],
    referencedBy: [],
    indexes: [],
    checks: [],
    rls: { enabled: false, forced: false },
    hasTenantId: false,
    // a scalar function in FROM names its one column after the alias: name it after the function
    qualified: scalar ? `(SELECT _v AS ${q(columns[0]!.name)} FROM ${call} _v)` : call,
    comment: null,
  };
}

function argValue(a: FunctionArg, v: unknown): unknown {
  if (v === null || v === undefined) return null;
  if (a.type === 'json' || a.type === 'jsonb') return JSON.stringify(v);
  if (typeof v === 'object' && !Array.isArray(v)) return JSON.stringify(v);
  if (Array.isArray(v) && !a.type.endsWith('[]')) throw badRequest('INVALID_ARGUMENT', `argument ${a.name} (${a.type}) does not take an array`);
  return v;
}

export type RestFunctionsService = ReturnType<typeof createRestFunctionsService>;
