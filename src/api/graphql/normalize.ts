/**
 * Query normalisation: scalar literals given directly as field arguments become variables, so that
 * `{ items_by_pk(id: "1") { .. } }` and `{ items_by_pk(id: "2") { .. } }` share one query text. The
 * executor caches parsed, validated and JIT-compiled queries by text; without this every request
 * with another literal would be parsed, validated and compiled anew (Hasura normalises the same way).
 *
 * Conservative by design: only String/Int/Float/Boolean literals that are direct field arguments
 * with a known input type; not directive arguments, not values nested in objects or lists, not the
 * paging arguments the cost limit reads. Anything unusual (several operations, fragments, a parse
 * error, an unknown field or argument) leaves the query untouched, so validation reports errors on
 * the text the client sent.
 */
import {
  Kind,
  TypeInfo,
  isListType,
  isNonNullType,
  parse,
  print,
  visit,
  visitWithTypeInfo,
  type ArgumentNode,
  type DocumentNode,
  type GraphQLInputType,
  type GraphQLSchema,
  type OperationDefinitionNode,
  type TypeNode,
  type VariableDefinitionNode,
} from 'graphql/index.js';

const MAX_SOURCE = 20_000;
const PAGING = new Set(['first', 'after', 'last', 'before']);

function typeNode(type: GraphQLInputType): TypeNode {
  if (isNonNullType(type)) return { kind: Kind.NON_NULL_TYPE, type: typeNode(type.ofType) as Exclude<TypeNode, { kind: Kind.NON_NULL_TYPE }> };
  if (isListType(type)) return { kind: Kind.LIST_TYPE, type: typeNode(type.ofType) };
  return { kind: Kind.NAMED_TYPE, name: { kind: Kind.NAME, value: type.name } };
}

export interface Normalized {
  query: string;
  variables: Record<string, unknown>;
}

/** The normalised query and its variables, or undefined when the query is left as sent. */
export function normalizeLiterals(schema: GraphQLSchema, source: string, variables: Record<string, unknown> | undefined): Normalized | undefined {
  if (source.length > MAX_SOURCE) return undefined;
  let doc: DocumentNode;
  try {
    doc = parse(source, { noLocation: true });
  } catch {
    return undefined;
  }
  const [op, ...rest] = doc.definitions;
  if (!op || rest.length || op.kind !== Kind.OPERATION_DEFINITION) return undefined;
  const values: Record<string, unknown> = { ...(variables ?? {}) };
  const defs: VariableDefinitionNode[] = [];
  const typeInfo = new TypeInfo(schema);
  let unknown = false;
  let n = 0;
  const edited = visit(
    doc,
    visitWithTypeInfo(typeInfo, {
      Argument(node: ArgumentNode) {
        const type = typeInfo.getInputType();
        if (!type || !typeInfo.getArgument()) {
          unknown = true;
          return undefined;
        }
        if (typeInfo.getDirective() || PAGING.has(node.name.value)) return undefined;
        const v = node.value;
        let value: unknown;
        if (v.kind === Kind.STRING || v.kind === Kind.BOOLEAN) value = v.value;
        else if (v.kind === Kind.INT || v.kind === Kind.FLOAT) value = Number(v.value);
        else return undefined;
        // integers beyond 2^53 keep their digits as text (BigInt accepts either)
        if (v.kind === Kind.INT && !Number.isSafeInteger(value)) value = v.value;
        let name = `_l${n++}`;
        while (name in values) name = `_l${n++}`;
        values[name] = value;
        defs.push({ kind: Kind.VARIABLE_DEFINITION, variable: { kind: Kind.VARIABLE, name: { kind: Kind.NAME, value: name } }, type: typeNode(type) });
        return { ...node, value: { kind: Kind.VARIABLE, name: { kind: Kind.NAME, value: name } } };
      },
    }),
  );
  if (unknown || defs.length === 0) return undefined;
  const operation = edited.definitions[0] as OperationDefinitionNode;
  const normalized: DocumentNode = {
    ...edited,
    definitions: [{ ...operation, variableDefinitions: [...(operation.variableDefinitions ?? []), ...defs] }],
  };
  return { query: print(normalized), variables: values };
}
