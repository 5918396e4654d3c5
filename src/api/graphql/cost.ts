/**
 * Limits checked before execution: depth (data fields only; introspection is exempt so GraphiQL
 * and dashboards keep working), `first` bounds, and an estimated cost: the number of values a query
 * may produce. Every field counts one per instance (`__typename`, aggregates and introspection
 * included); a list multiplies what it holds by its `first` (default 50), `_aggregate(group_by:)`
 * by LIMITS.groupByCost, and a `timeseries` costs LIMITS.timeseriesCost (its points are bounded
 * by TIMESERIES_MAX_POINTS). The analysis is linear in the document (fragments are costed once)
 * and has a time budget. The answer's bytes are bounded apart from this (context.ts).
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
  /** Values (fields x the rows holding them) one query may produce: QUERY_TOO_COSTLY. */
  maxCost: 100_000,
  /** The rows an `_aggregate(group_by:)` counts for (groups are not known before it runs). */
  groupByCost: 1000,
  /** What one `timeseries` field counts for. */
  timeseriesCost: 1000,
  /** The analysis of one document may take this long: QUERY_TOO_COMPLEX (it is linear; this is a backstop). */
  maxAnalysisMs: 50,
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

/**
 * What one selection set costs per instance of its parent (so a list multiplies it by its `first`),
 * and how deep its data fields nest. Both are additive, which is what lets a fragment be costed once.
 */
interface Summary {
  cost: number;
  depth: number;
}

/** Throws QUERY_TOO_DEEP, LIMIT_TOO_LARGE, QUERY_TOO_COSTLY or QUERY_TOO_COMPLEX; returns the estimated cost. */
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
  // Each fragment is costed once per type it is spread on (memoised): the walk is linear in the
  // document, however often fragments spread each other (`fragment F1 { ...F2 ...F2 }` 26 deep
  // would be 2^26 visits otherwise).
  const memo = new Map<string, Summary>();
  const started = performance.now();
  let steps = 0;
  const tooCostly = () =>
    badRequest('QUERY_TOO_COSTLY', `the query may produce more than ${LIMITS.maxCost} values (every field counts; lists multiply by their first, default ${LIMITS.defaultFirst})`, {
      maxCost: LIMITS.maxCost,
    });

  const visit = (set: SelectionSetNode, type: GraphQLObjectType | undefined): Summary => {
    let cost = 0;
    let depth = 0;
    for (const sel of set.selections) {
      if ((++steps & 1023) === 0 && performance.now() - started > LIMITS.maxAnalysisMs) {
        throw badRequest('QUERY_TOO_COMPLEX', `the query took longer than ${LIMITS.maxAnalysisMs} ms to analyse`, { maxAnalysisMs: LIMITS.maxAnalysisMs });
      }
      let sub: Summary;
      if (sel.kind === Kind.INLINE_FRAGMENT) {
        const cond = sel.typeCondition ? schema.getType(sel.typeCondition.name.value) : undefined;
        sub = visit(sel.selectionSet, cond && isObjectType(cond) ? cond : type);
      } else if (sel.kind === Kind.FRAGMENT_SPREAD) {
        const frag = fragments.get(sel.name.value);
        if (!frag) continue;
        const cond = schema.getType(frag.typeCondition.name.value);
        const fragType = cond && isObjectType(cond) ? cond : type;
        const key = `${frag.name.value}|${fragType?.name ?? ''}`;
        let known = memo.get(key);
        if (!known) {
          memo.set(key, { cost: 0, depth: 0 }); // a cycle (refused by validation anyway) costs nothing more
          known = visit(frag.selectionSet, fragType);
          memo.set(key, known);
        }
        sub = known;
      } else {
        sub = fieldCost(sel, type);
      }
      cost += sub.cost;
      depth = Math.max(depth, sub.depth);
      if (cost > LIMITS.maxCost) throw tooCostly();
    }
    return { cost, depth };
  };

  const fieldCost = (sel: FieldNode, type: GraphQLObjectType | undefined): Summary => {
    const name = sel.name.value;
    const def = type?.getFields()[name];
    // every field counts, __typename and introspection included; only data fields count for depth
    const own = name.startsWith('__') ? 0 : 1;
    let mult = 1;
    if (def?.args.some((a) => a.name === 'first')) mult = Math.max(1, checkFirst(firstArg(sel, op, variables), sel.alias?.value ?? name));
    if (name.endsWith('_aggregate') && sel.arguments?.some((a) => a.name.value === 'group_by')) mult = LIMITS.groupByCost;
    if (name === 'timeseries' && type === root) return { cost: LIMITS.timeseriesCost, depth: own };
    if (!sel.selectionSet) return { cost: mult, depth: own };
    const named = def ? getNamedType(def.type) : undefined;
    const inner = visit(sel.selectionSet, named && isObjectType(named) ? named : undefined);
    // introspection (__schema, __type) is costed but exempt from the depth limit (GraphiQL nests 15)
    return { cost: 1 + mult * inner.cost, depth: own === 0 ? 0 : own + inner.depth };
  };

  const total = visit(op.selectionSet, root ?? undefined);
  if (total.depth > LIMITS.maxDepth) {
    throw badRequest('QUERY_TOO_DEEP', `the query is nested deeper than ${LIMITS.maxDepth} levels`, { maxDepth: LIMITS.maxDepth });
  }
  return total.cost;
}
