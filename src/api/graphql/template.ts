/**
 * Statement templates: one compiled statement serving every value of a document's "slot" variables.
 *
 * A slot variable is a scalar variable (ID, String, Int, Float, BigInt, DateTime, Boolean; no
 * default) whose EVERY use in the document is a position where the compiler does nothing with the
 * value but bind it as a parameter:
 * - an argument of a by-key root field (`items_by_pk(id: $id)`);
 * - a scalar comparison of a `where` (`{ name: { _eq: $n } }`: `_eq _neq _gt _gte _lt _lte _like
 *   _ilike`; not `_in`, `_is_null`).
 * Such a value changes neither the SQL text, nor the cost (only `first`/`last` count), nor which
 * path serves the document. So the statement is compiled once with a marker (Slot) standing for
 * each slot variable, and a request only coerces its slot values (the variable's scalar) and puts
 * them in the marked parameters: no coercion of the whole variable set, no cost walk, no compile.
 * A by-key read with a new id every request (literals become variables first, compiled.ts) is
 * served by one template.
 *
 * A slot value that is null, missing or does not coerce is not served by the template: the request
 * takes the full path (compile with its values, or the resolvers and their errors), as before.
 */
import {
  GraphQLBoolean,
  GraphQLFloat,
  GraphQLID,
  GraphQLInt,
  GraphQLString,
  Kind,
  TypeInfo,
  getNamedType,
  isListType,
  isNonNullType,
  isScalarType,
  typeFromAST,
  visit,
  visitWithTypeInfo,
  type DocumentNode,
  type GraphQLScalarType,
  type GraphQLSchema,
  type OperationDefinitionNode,
} from 'graphql/index.js';

/** Stands for a slot variable's value in a template's parameters. */
export class Slot {
  constructor(readonly name: string) {}
}

/** Comparison operators whose value the compiler binds as it is (sql.ts columnPredicate). */
const BOUND_OPS = new Set(['_eq', '_neq', '_gt', '_gte', '_lt', '_lte', '_like', '_ilike']);
/** Scalars whose coerced value is bound as it is (not JSON: JSON columns bind JSON text). */
const SLOT_SCALARS = new Set([GraphQLID.name, GraphQLString.name, GraphQLInt.name, GraphQLFloat.name, GraphQLBoolean.name, 'BigInt', 'DateTime']);

/** A field's compile plan kind (schema.ts sets `extensions.strata`). */
const planKind = (def: { extensions: Record<string, unknown> } | null | undefined) => (def?.extensions['strata'] as { kind?: string } | undefined)?.kind;

/**
 * The slot variables of `operation` in `document` and their scalars; empty when there are none.
 * Conservative: any use of a variable in another position (directives, `first`, `_in` lists, nested
 * input objects other than a comparison, list items) keeps it out.
 */
export function slotVariables(schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode): Map<string, GraphQLScalarType> {
  const candidates = new Map<string, GraphQLScalarType>();
  for (const def of operation.variableDefinitions ?? []) {
    // a default, or a name an object already has (`__proto__`, `constructor`): not a slot
    if (def.defaultValue || def.variable.name.value in Object.prototype) continue;
    const type = typeFromAST(schema, def.type);
    if (!type) continue;
    const inner = isNonNullType(type) ? type.ofType : type;
    if (isListType(inner) || !isScalarType(inner) || !SLOT_SCALARS.has(inner.name)) continue;
    candidates.set(def.variable.name.value, inner);
  }
  if (!candidates.size) return candidates;
  const out = new Set<string>();
  const typeInfo = new TypeInfo(schema);
  visit(
    document,
    visitWithTypeInfo(typeInfo, {
      VariableDefinition: () => false, // the definitions themselves are not uses
      Variable(node, _key, parent) {
        const name = node.name.value;
        if (!candidates.has(name)) return;
        const p = parent;
        let bound = false;
        if (p && !Array.isArray(p) && 'kind' in p) {
          if (p.kind === Kind.ARGUMENT) {
            // a by-key root field's key argument
            bound = planKind(typeInfo.getFieldDef()) === 'byPk' && !typeInfo.getDirective();
          } else if (p.kind === Kind.OBJECT_FIELD) {
            const holder = typeInfo.getParentInputType();
            const named = holder ? getNamedType(holder) : undefined;
            bound = BOUND_OPS.has(p.name.value) && named !== undefined && named.name.endsWith('_comparison_exp') && !typeInfo.getDirective();
          }
        }
        if (!bound) out.add(name);
      },
    }),
  );
  for (const name of out) candidates.delete(name);
  return candidates;
}

/**
 * The slot variables' values as the variable coercion would give them, or undefined when one is
 * null, missing or not a valid value of its scalar (the request then takes the full path).
 */
export function slotValues(slots: ReadonlyMap<string, GraphQLScalarType>, variables: Record<string, unknown> | undefined): Record<string, unknown> | undefined {
  const out: Record<string, unknown> = {};
  for (const [name, scalar] of slots) {
    const raw = variables?.[name];
    if (raw === undefined || raw === null) return undefined;
    let v: unknown;
    try {
      v = scalar.parseValue(raw);
    } catch {
      return undefined;
    }
    if (v === undefined || v === null) return undefined;
    out[name] = v;
  }
  return out;
}

/** The variables a template is compiled with: every slot variable a Slot marker. */
export function withSlots(coerced: Record<string, unknown>, slots: ReadonlyMap<string, GraphQLScalarType>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...coerced };
  for (const name of slots.keys()) out[name] = new Slot(name);
  return out;
}

/** Where each slot goes in a template's parameters; throws when a marker ended up anywhere else (a compiler change the analysis does not know). */
export function slotPositions(values: readonly unknown[]): Array<[number, string]> {
  const out: Array<[number, string]> = [];
  values.forEach((v, i) => {
    if (v instanceof Slot) out.push([i, v.name]);
    else if (Array.isArray(v) && v.some((x) => x instanceof Slot)) throw new Error('a slot variable inside a list parameter');
  });
  return out;
}

/** A template's parameters with the slot values in place. */
export function fillSlots(values: readonly unknown[], positions: ReadonlyArray<[number, string]>, slots: Record<string, unknown>): unknown[] {
  const out = values.slice();
  for (const [i, name] of positions) out[i] = slots[name];
  return out;
}

/** The values of the variables that are not slots (they decide the SQL): the template's key. */
export function nonSlotKey(variables: Record<string, unknown> | undefined, slots: ReadonlyMap<string, unknown>): string {
  if (!variables) return '{}';
  if (!slots.size) return JSON.stringify(variables);
  const rest: Record<string, unknown> = {};
  for (const k of Object.keys(variables)) if (!slots.has(k)) rest[k] = variables[k];
  return JSON.stringify(rest);
}
