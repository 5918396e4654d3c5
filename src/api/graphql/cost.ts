/**
 * Limits checked before execution: depth (data fields only; introspection is exempt so GraphiQL
 * and dashboards keep working), `first` bounds, and an estimated cost: the number of table rows a
 * query may produce, where every list field multiplies by its `first` (default 50).
 */
import {
  Kind,
  OperationTypeNode,
  getNamedType,
  getOperationAST,
  isObjectType,
  type DocumentNode,
  type FieldNode,
  type FragmentDefinitionNode,
  type GraphQLObjectType,
  type GraphQLSchema,
  type OperationDefinitionNode,
  type SelectionSetNode,
} from 'graphql/index.js';
import { badRequest } from '../../errors.js';

export const LIMITS = {
  defaultFirst: 50,
  maxFirst: 1000,
  maxDepth: 10,
  maxCost: 50_000,
} as const;

/** `first` as given (literal or variable, or the variable's default), else undefined. */
function firstArg(field: FieldNode, op: OperationDefinitionNode, variables: Record<string, unknown> | undefined): unknown {
  const arg = field.arguments?.find((a) => a.name.value === 'first');
  if (!arg) return undefined;
  const v = arg.value;
  if (v.kind === Kind.INT) return Number(v.value);
  if (v.kind === Kind.VARIABLE) {
    const name = v.name.value;
    if (variables && name in variables) return variables[name];
    const def = op.variableDefinitions?.find((d) => d.variable.name.value === name)?.defaultValue;
    return def?.kind === Kind.INT ? Number(def.value) : undefined;
  }
  return undefined;
}

/** A `first` argument checked against its bounds (also used by resolvers). */
export function checkFirst(value: unknown, field: string): number {
  if (value === undefined || value === null) return LIMITS.defaultFirst;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw badRequest('INVALID_ARGUMENT', `${field}.first must be a non-negative integer`, { field: `${field}.first` });
  }
  if (value > LIMITS.maxFirst) {
    throw badRequest('LIMIT_TOO_LARGE', `${field}.first may be at most ${LIMITS.maxFirst} (got ${value})`, { field: `${field}.first`, max: LIMITS.maxFirst });
  }
  return value;
}

const isRowType = (t: GraphQLObjectType) => t.extensions['strataTable'] !== undefined;

/** Throws QUERY_TOO_DEEP, LIMIT_TOO_LARGE or QUERY_TOO_COSTLY; returns the estimated cost. */
export function checkLimits(
  schema: GraphQLSchema,
  document: DocumentNode,
  operationName: string | undefined,
  variables: Record<string, unknown> | undefined,
): number {
  const op = getOperationAST(document, operationName);
  if (!op) return 0;
  const fragments = new Map<string, FragmentDefinitionNode>();
  for (const d of document.definitions) if (d.kind === Kind.FRAGMENT_DEFINITION) fragments.set(d.name.value, d);
  const root = op.operation === OperationTypeNode.MUTATION ? schema.getMutationType() : op.operation === OperationTypeNode.QUERY ? schema.getQueryType() : schema.getSubscriptionType();
  let cost = 0;

  const visit = (set: SelectionSetNode, type: GraphQLObjectType | undefined, mult: number, depth: number, inFragments: ReadonlySet<string>) => {
    for (const sel of set.selections) {
      if (sel.kind === Kind.INLINE_FRAGMENT) {
        visit(sel.selectionSet, type, mult, depth, inFragments);
        continue;
      }
      if (sel.kind === Kind.FRAGMENT_SPREAD) {
        const frag = fragments.get(sel.name.value);
        if (frag && !inFragments.has(frag.name.value)) visit(frag.selectionSet, type, mult, depth, new Set([...inFragments, frag.name.value]));
        continue;
      }
      const name = sel.name.value;
      if (name.startsWith('__')) continue; // introspection and __typename
      if (depth + 1 > LIMITS.maxDepth) {
        throw badRequest('QUERY_TOO_DEEP', `the query is nested deeper than ${LIMITS.maxDepth} levels`, { maxDepth: LIMITS.maxDepth });
      }
      const def = type?.getFields()[name];
      let m = mult;
      if (def?.args.some((a) => a.name === 'first')) m = mult * checkFirst(firstArg(sel, op, variables), sel.alias?.value ?? name);
      const named = def ? getNamedType(def.type) : undefined;
      const objectType = named && isObjectType(named) ? named : undefined;
      if (objectType && isRowType(objectType)) {
        cost += m;
        if (cost > LIMITS.maxCost) {
          throw badRequest('QUERY_TOO_COSTLY', `the query may return more than ${LIMITS.maxCost} rows (lists multiply by their first, default ${LIMITS.defaultFirst})`, {
            maxCost: LIMITS.maxCost,
          });
        }
      }
      if (sel.selectionSet) visit(sel.selectionSet, objectType, m, depth + 1, inFragments);
    }
  };
  visit(op.selectionSet, root ?? undefined, 1, 0, new Set());
  return cost;
}
