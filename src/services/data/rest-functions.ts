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
import { EXPOSED_SCHEMAS, type SchemaRegistry } from './schema-registry.js';

const q = pg.escapeIdentifier;

export interface FunctionArg {
  name: string;
  type: string;
  hasDefault: boolean;
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
}

const INTROSPECT = `
SELECT n.nspname AS schema, p.proname AS name, p.prosecdef AS definer, p.provolatile AS volatility, p.proretset AS setof,
  format_type(p.prorettype, NULL) AS return_type, p.prorettype = 'void'::regtype AS void,
  (t.typrelid <> 0 OR p.prorettype = 'record'::regtype) AS composite, p.pronargdefaults AS defaults,
  coalesce(p.proargnames, '{}') AS names, coalesce(p.proargmodes::text[], '{}') AS modes,
  (SELECT coalesce(array_agg(format_type(x, NULL) ORDER BY o), '{}') FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) WITH ORDINALITY u(x, o)) AS types
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
}

function toInfo(r: Row): FunctionInfo {
  const inputs: Array<{ name: string; type: string }> = [];
  r.types.forEach((type, i) => {
    const mode = r.modes[i] ?? 'i';
    if (mode === 'i' || mode === 'b' || mode === 'v') inputs.push({ name: r.names[i] ?? '', type });
  });
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

  /** The overload of `name` whose arguments are exactly covered by `given` (names). */
  async function resolve(name: string, given: string[]): Promise<FunctionInfo> {
    const all = (await functions()).get(name) ?? [];
    const fits = all.filter((f) => given.every((g) => f.args.some((a) => a.name === g)) && f.args.every((a) => a.hasDefault || given.includes(a.name)));
    const signature = `public.${name}(${[...given].sort().join(', ')})`;
    if (fits.length === 0) {
      throw notFound('FUNCTION_NOT_FOUND', `Could not find the function ${signature} in the schema cache`);
    }
    if (fits.length > 1) {
      throw new AppError(300, 'AMBIGUOUS_FUNCTION', `Could not choose the best candidate function between: ${fits.map((f) => `${f.schema}.${f.name}(${f.args.map((a) => `${a.name} => ${a.type}`).join(', ')})`).join(', ')}`, {
        hint: 'Try renaming the parameters or the function itself in the database so function overloading can be resolved',
      });
    }
    const f = fits[0]!;
    if (f.definer) {
      throw forbidden('SECURITY_DEFINER_REFUSED', `function ${f.schema}.${f.name} is SECURITY DEFINER; only SECURITY INVOKER functions can be called, so row-level security applies`);
    }
    return f;
  }

  return {
    /** Every callable function (OpenAPI description). */
    async list(): Promise<FunctionInfo[]> {
      return [...(await functions()).values()].flat().filter((f) => !f.definer);
    },
    resolve,
    /**
     * Call `name` with named arguments. `readOnly` for GET (a volatile function then fails as in
     * PostgREST). Returns the result as JSON text, or undefined for a void function.
     */
    /** Names of every argument of every overload of `name` (to tell arguments from filters on GET). */
    async argNames(name: string): Promise<Set<string>> {
      return new Set(((await functions()).get(name) ?? []).flatMap((f) => f.args.map((a) => a.name)));
    },
    /** `schema.fn(a => $1::type, ...)` with its values added to `params`. */
    callSql(f: FunctionInfo, args: Record<string, unknown>, params: Params): string {
      const list = Object.entries(args).map(([k, v]) => `${q(k)} => ${params.add(argValue(f.args.find((x) => x.name === k)!, v))}::${f.args.find((x) => x.name === k)!.type}`);
      return `${q(f.schema)}.${q(f.name)}(${list.join(', ')})`;
    },
    async call(call: RestCall, name: string, args: Record<string, unknown>, o: { readOnly: boolean }): Promise<{ json?: string; fn: FunctionInfo }> {
      const f = await resolve(name, Object.keys(args));
      const params = new Params();
      const fn = this.callSql(f, args, params);
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

function argValue(a: FunctionArg, v: unknown): unknown {
  if (v === null || v === undefined) return null;
  if (a.type === 'json' || a.type === 'jsonb') return JSON.stringify(v);
  if (typeof v === 'object' && !Array.isArray(v)) return JSON.stringify(v);
  if (Array.isArray(v) && !a.type.endsWith('[]')) throw badRequest('INVALID_ARGUMENT', `argument ${a.name} (${a.type}) does not take an array`);
  return v;
}

export type RestFunctionsService = ReturnType<typeof createRestFunctionsService>;
