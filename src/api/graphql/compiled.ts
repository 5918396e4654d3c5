/**
 * Serving query operations with one SQL statement (compile.ts), and the plan cache.
 *
 * The plan cache is an LRU (bounded in entries and in source bytes) keyed by (schema version,
 * role, operation name, document text). A hit skips parsing and validation; an operation without
 * variables also skips costing and compilation (its statement is cached with it), and so does one
 * with variables sent again with the same values (the last 16 value sets per document). Documents the
 * compiler cannot serve are cached as such, so they go straight to the resolvers.
 *
 * Anything unusual falls back to the resolver path (mercurius), which then answers exactly as it
 * always did: a document that does not parse or validate, variables that do not coerce, a limit
 * exceeded (cost, depth, first), a malformed cursor, a data error raised by PostgreSQL (a bad ID),
 * fields without a one-statement form (search, views, introspection), mutations, subscriptions.
 */
import { LRUCache } from 'lru-cache';
import {
  Kind,
  Lexer,
  OperationTypeNode,
  Source,
  TokenKind,
  TypeInfo,
  getNamedType,
  isEnumType,
  isListType,
  isNonNullType,
  visitWithTypeInfo,
  type GraphQLInputType,
  type TypeNode,
  type ValueNode,
  type VariableDefinitionNode,
  getOperationAST,
  getVariableValues,
  parse,
  validate,
  visit,
  type ArgumentNode,
  type DocumentNode,
  type FieldNode,
  type FragmentDefinitionNode,
  type GraphQLScalarType,
  type GraphQLSchema,
  type OperationDefinitionNode,
} from 'graphql/index.js';
import type { FastifyBaseLogger } from 'fastify';
import type { Database } from '../../db/database.js';
import type { SessionContext } from '../../db/session.js';
import { AppError } from '../../errors.js';
import { tooLarge } from '../../services/data/index.js';
import { checkLimits } from './cost.js';
import { Unsupported, compileOperation, type Reveal } from './compile.js';
import type { Guard } from '../../services/compliance/index.js';
import { fillSlots, nonSlotKey, slotPositions, slotValues, slotVariables, withSlots } from './template.js';

interface Prepared {
  document: DocumentNode;
  operation: OperationDefinitionNode;
  fragments: Record<string, FragmentDefinitionNode>;
  /** The document as the cost limit sees it: `last` counted like `first`. */
  costDocument: DocumentNode;
  /** No variable definitions: cost and statement depend on nothing but the text. */
  constant: boolean;
  statement?: Statement;
  /**
   * With variables: the statements of the last variable values seen, oldest first, keyed by the
   * JSON of the values (`V` + JSON), or for a template by the JSON of the values of the variables
   * that are not slots (`T` + JSON).
   */
  byValues?: Map<string, Statement>;
  /** The slot variables (template.ts): their values are bound as they are, the statement is one template. */
  slots: ReadonlyMap<string, GraphQLScalarType>;
}

/** Statements kept per document with variables (a dashboard re-sends the same values). */
const STATEMENTS_PER_DOCUMENT = 16;
/** 'resolvers': the compiler does not serve it; 'text': (a shape entry) cache this document by its text. */
type Entry = Prepared | 'resolvers' | 'text';
export interface Statement {
  text: string;
  values: unknown[];
  /** A template's slot parameters: (index in values, variable). */
  slots?: ReadonlyArray<[number, string]>;
  /** Declared columns in the answer (compliance): revealed per role in node before it is sent. */
  reveals?: Reveal[];
}

export type CompiledOutcome = { kind: 'served'; body: string } | { kind: 'failed'; error: unknown } | { kind: 'fallback' };

/**
 * A compiled statement measured inside PostgreSQL: its JSON text when it fits the byte bound (the
 * parameter after the statement's own), else NULL. OFFSET 0 fences the statement: pulled up into
 * this query, its expression would be written twice (in octet_length and in THEN) and PostgreSQL
 * would run the whole statement twice (two InitPlans), doubling the cost of every query.
 */
export function boundedText(statement: Statement): string {
  return `SELECT CASE WHEN octet_length(strata_c.j) <= $${statement.values.length + 1}::int8 THEN strata_c.j END AS j FROM (${statement.text} OFFSET 0) strata_c`;
}

/** `last` is a page size like `first`: the cost limit (which reads `first`) must count it too. */
export function costView(document: DocumentNode): DocumentNode {
  return visit(document, {
    Field(node: FieldNode) {
      const last = node.arguments?.find((a) => a.name.value === 'last');
      if (!last || node.arguments?.some((a) => a.name.value === 'first')) return undefined;
      const first: ArgumentNode = { ...last, name: { kind: Kind.NAME, value: 'first' } };
      return { ...node, arguments: [...(node.arguments ?? []), first] };
    },
  });
}

interface Literal {
  kind: TokenKind;
  value: string;
}

/** The document's tokens with every literal blanked out, and the literals in order; undefined without literals. */
function shapeOf(query: string): { key: string; literals: Literal[] } | undefined {
  const parts: string[] = [];
  const literals: Literal[] = [];
  try {
    const lexer = new Lexer(new Source(query));
    for (let tok = lexer.advance(); tok.kind !== TokenKind.EOF; tok = lexer.advance()) {
      if (tok.kind === TokenKind.STRING || tok.kind === TokenKind.BLOCK_STRING || tok.kind === TokenKind.INT || tok.kind === TokenKind.FLOAT) {
        parts.push('\u0000');
        literals.push({ kind: tok.kind, value: tok.value ?? '' });
      } else parts.push(tok.value ?? tok.kind);
    }
  } catch {
    return undefined;
  }
  return literals.length ? { key: parts.join(' '), literals } : undefined;
}

/** The variables standing for the literals (numbers as JSON would carry them; big integers keep their digits). */
function literalValues(literals: Literal[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  literals.forEach((l, i) => {
    let v: unknown = l.value;
    if (l.kind === TokenKind.INT) v = Number.isSafeInteger(Number(l.value)) ? Number(l.value) : l.value;
    else if (l.kind === TokenKind.FLOAT) v = Number(l.value);
    out[`__s${i}`] = v;
  });
  return out;
}

const hasReservedVariable = (variables: Record<string, unknown> | undefined) => variables !== undefined && variables !== null && Object.keys(variables).some((k) => k.startsWith('__s'));

function typeNode(type: GraphQLInputType): TypeNode {
  if (isNonNullType(type)) return { kind: Kind.NON_NULL_TYPE, type: typeNode(type.ofType) as Exclude<TypeNode, { kind: Kind.NON_NULL_TYPE }> };
  if (isListType(type)) return { kind: Kind.LIST_TYPE, type: typeNode(type.ofType) };
  return { kind: Kind.NAMED_TYPE, name: { kind: Kind.NAME, value: type.name } };
}

/** A PostgreSQL error the resolver path would report per field (bad input), not a failure of the statement. */
const dataError = (err: unknown) => {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^(22|23|42)/.test(code);
};

/** Every holder object at `path` (`*`: each item of a list) with its key: the places a declared column's value sits. */
function at(node: unknown, path: readonly string[], i: number, fn: (holder: Record<string, unknown>, key: string) => void): void {
  if (node === null || typeof node !== 'object') return;
  const seg = path[i] as string;
  if (seg === '*') {
    if (Array.isArray(node)) for (const item of node) at(item, path, i + 1, fn);
    return;
  }
  if (i === path.length - 1) {
    if (seg in node) fn(node as Record<string, unknown>, seg);
    return;
  }
  at((node as Record<string, unknown>)[seg], path, i + 1, fn);
}

/**
 * The answer with its declared columns as the caller's role may see them: each value at a known
 * path of the compiled plan goes through Guard.revealField (decrypted, masked, a mask that does not
 * fit the field's type answering null, plaintext reads audited), exactly as the column resolvers.
 */
export async function revealAnswer(body: string, reveals: readonly Reveal[], guard: Guard): Promise<string> {
  const doc = JSON.parse(body) as unknown;
  const pending: Array<Promise<void>> = [];
  for (const r of reveals) {
    at(doc, r.path, 0, (holder, key) => {
      pending.push(
        guard.revealField(r.table, r.column, holder[key], holder).then((v) => {
          holder[key] = v;
        }),
      );
    });
  }
  await Promise.all(pending);
  guard.flushAudit('graphql');
  return JSON.stringify(doc);
}

export class CompiledQueries {
  private readonly plans: LRUCache<string, Entry>;
  /** Serve query operations compiled (GRAPHQL_COMPILER); false: every operation goes to the resolvers. */
  enabled = true;
  /** Plan cache lookups that found / did not find the document. */
  hits = 0;
  misses = 0;
  /** Statements compiled (a repeated document, or the same variable values again, compiles none). */
  compiles = 0;
  /** Requests served by a template with their own slot values (template.ts): no compile. */
  templateHits = 0;
  /** Requests answered by a compiled statement. */
  served = 0;
  /** Statements run together with others in one round trip (executeMany). */
  batched = 0;

  constructor(
    private readonly db: Database,
    maxEntries: number,
    /** The byte bound of one answer (GRAPHQL_MAX_RESPONSE_BYTES / RESPONSE_MAX_BYTES); past it the resolvers answer 413. */
    private readonly maxBytes = 16 * 1024 * 1024,
  ) {
    // bounded by entries and by the documents' size (an AST is a few times its source)
    this.plans = new LRUCache<string, Entry>({ max: Math.max(1, maxEntries), maxSize: Math.max(1, maxEntries) * 32_768, sizeCalculation: (_v, k) => Math.max(1, k.length * 4) });
  }

  /** The 413 of an answer past the byte bound (live queries; the resolvers raise their own). */
  tooLarge(): AppError {
    return tooLarge('the GraphQL answer', this.maxBytes, 'GRAPHQL_MAX_RESPONSE_BYTES / RESPONSE_MAX_BYTES', 'ask for fewer rows (first), fewer fields or fewer nested lists') as AppError;
  }

  clear(): void {
    this.plans.clear();
  }

  get size(): number {
    return this.plans.size;
  }

  private prepare(schema: GraphQLSchema, query: string, operationName: string | undefined): Entry {
    let document: DocumentNode;
    try {
      document = parse(query, { noLocation: true });
    } catch {
      return 'resolvers';
    }
    const operation = getOperationAST(document, operationName);
    if (!operation || operation.operation !== OperationTypeNode.QUERY) return 'resolvers';
    if (validate(schema, document).length) return 'resolvers';
    const fragments: Record<string, FragmentDefinitionNode> = {};
    for (const d of document.definitions) if (d.kind === Kind.FRAGMENT_DEFINITION) fragments[d.name.value] = d;
    return { document, operation, fragments, costDocument: costView(document), constant: !operation.variableDefinitions?.length, slots: slotVariables(schema, document, operation) };
  }

  /**
   * A document whose every literal (argument values, list items, input object fields) is replaced
   * by a variable `$__sN` typed from its position; undefined when that is not possible (a literal
   * in a variable's default or inside a JSON value, several operations, a document that does not
   * parse): the document is then cached by its text.
   */
  private prepareShape(schema: GraphQLSchema, query: string, operationName: string | undefined, literals: number): Prepared | 'resolvers' | undefined {
    let document: DocumentNode;
    try {
      document = parse(query, { noLocation: true });
    } catch {
      return undefined;
    }
    const ops = document.definitions.filter((d) => d.kind === Kind.OPERATION_DEFINITION);
    if (ops.length !== 1 || (ops[0] as OperationDefinitionNode).operation !== OperationTypeNode.QUERY) return undefined;
    const typeInfo = new TypeInfo(schema);
    const defs: VariableDefinitionNode[] = [];
    let failed = false;
    let inDefault = 0;
    const literal = (node: ValueNode) => {
      const type = typeInfo.getInputType();
      // an enum takes no string literal: as a variable it would (validation judges the text as sent)
      if (!type || inDefault || isEnumType(getNamedType(type))) {
        failed = true;
        return undefined;
      }
      const name = `__s${defs.length}`;
      defs.push({ kind: Kind.VARIABLE_DEFINITION, variable: { kind: Kind.VARIABLE, name: { kind: Kind.NAME, value: name } }, type: typeNode(type) });
      return { kind: Kind.VARIABLE, name: { kind: Kind.NAME, value: name }, loc: node.loc };
    };
    const edited = visit(
      document,
      visitWithTypeInfo(typeInfo, {
        VariableDefinition: { enter: () => void inDefault++, leave: () => void inDefault-- },
        StringValue: literal,
        IntValue: literal,
        FloatValue: literal,
      }),
    );
    if (failed || defs.length !== literals) return undefined;
    const normalized: DocumentNode = {
      ...edited,
      definitions: edited.definitions.map((d) => (d.kind === Kind.OPERATION_DEFINITION ? { ...d, variableDefinitions: [...(d.variableDefinitions ?? []), ...defs] } : d)),
    };
    const operation = getOperationAST(normalized, operationName);
    if (!operation) return undefined;
    if (validate(schema, normalized).length) return undefined; // the text itself is then judged (and its errors reported) as sent
    const fragments: Record<string, FragmentDefinitionNode> = {};
    for (const d of normalized.definitions) if (d.kind === Kind.FRAGMENT_DEFINITION) fragments[d.name.value] = d;
    return { document: normalized, operation, fragments, costDocument: costView(normalized), constant: false, slots: slotVariables(schema, normalized, operation) };
  }

  /**
   * Answer a query operation with one statement, or say `fallback` (the resolvers serve it).
   * `failed`: the statement itself failed in a way the resolvers would fail too (timeout, pool).
   */
  async run(
    schema: GraphQLSchema,
    version: number,
    ctx: SessionContext,
    query: string,
    operationName: string | undefined,
    variables: Record<string, unknown> | undefined,
    log: FastifyBaseLogger,
    /** The caller's compliance guard when any column is declared: declared columns are revealed per role, filters on them checked. */
    guard?: Guard,
  ): Promise<CompiledOutcome> {
    // the policy version is part of the key: a statement compiled before a declaration knows nothing of it
    const keyOf = (text: string) => `${version}\n${guard?.version ?? 0}\n${ctx.role}\n${operationName ?? ''}\n${text}`;
    let vars = variables;
    const rawKey = keyOf(query);
    let entryKey = rawKey;
    let entry = this.plans.get(rawKey);
    if (entry === undefined) {
      // Literals become variables: `items_by_pk(id: "7")` and `(id: "8")` share one plan (found by
      // the document's tokens with literals blanked out: a lexer pass, no parse), and a stream of
      // distinct literals does not flood the cache.
      const shape = shapeOf(query);
      if (shape && !hasReservedVariable(variables)) {
        const shapeKey = keyOf(`\u0001${shape.key}`);
        entry = this.plans.get(shapeKey);
        if (entry === undefined) {
          const prepared = this.prepareShape(schema, query, operationName, shape.literals.length);
          this.plans.set(shapeKey, prepared ?? 'text');
          if (prepared) {
            this.misses++;
            entry = prepared;
          }
        } else if (entry === 'text') entry = undefined;
        else this.hits++;
        if (entry !== undefined) entryKey = shapeKey;
        if (entry !== undefined && entry !== 'resolvers') vars = { ...(variables ?? {}), ...literalValues(shape.literals) };
      }
      if (entry === undefined) {
        this.misses++;
        entry = this.prepare(schema, query, operationName);
        this.plans.set(rawKey, entry);
      }
    } else this.hits++;
    if (entry === 'resolvers' || entry === 'text') return { kind: 'fallback' };

    let statement = entry.statement;
    // Slot variables (template.ts) change nothing but parameters: one template serves every value.
    const slots = statement || !entry.slots.size ? undefined : slotValues(entry.slots, vars);
    // Same document, same variable values (the slots' aside): costing and compilation gave this
    // statement already (the values decide both, so the key is exact: nothing is assumed about how
    // a value other than a slot's is used).
    const valuesKey = statement || entry.constant ? undefined : slots ? `T${nonSlotKey(vars, entry.slots)}` : `V${JSON.stringify(vars ?? {})}`;
    if (valuesKey !== undefined) statement = entry.byValues?.get(valuesKey);
    if (!statement) {
      const coerced = getVariableValues(schema, entry.operation.variableDefinitions ?? [], vars ?? {});
      if (coerced.errors) return { kind: 'fallback' };
      try {
        checkLimits(schema, entry.costDocument, operationName, vars);
        if (slots) {
          const template = compileOperation(schema, entry.operation, entry.fragments, withSlots(coerced.coerced, entry.slots), guard);
          statement = { ...template, slots: slotPositions(template.values) };
        } else statement = compileOperation(schema, entry.operation, entry.fragments, coerced.coerced, guard);
        this.compiles++;
      } catch (err) {
        if (err instanceof Unsupported) this.plans.set(entryKey, 'resolvers');
        else if (!(err instanceof AppError)) log.warn({ err }, 'GraphQL compiler failed; the resolvers serve the query');
        return { kind: 'fallback' };
      }
      if (entry.constant) entry.statement = statement;
      else if (valuesKey !== undefined && valuesKey.length <= 4096) {
        const kept = (entry.byValues ??= new Map<string, Statement>());
        if (kept.size >= STATEMENTS_PER_DOCUMENT) kept.delete(kept.keys().next().value as string);
        // the text is usually the same for every value set: keep it once
        let text = statement.text;
        for (const k of kept.values()) if (k.text === text) text = k.text;
        kept.set(valuesKey, { ...statement, text });
      }
    } else this.templateHits += slots ? 1 : 0;
    if (slots && statement.slots) statement = { text: statement.text, values: fillSlots(statement.values, statement.slots, slots), reveals: statement.reveals };
    try {
      let body = await this.execute(ctx, statement);
      // Past the byte bound PostgreSQL sends no answer; the resolver path then answers 413
      // RESPONSE_TOO_LARGE with its per-field budget, exactly as without the compiler.
      if (body === null) return { kind: 'fallback' };
      if (statement.reveals?.length && guard) body = await revealAnswer(body, statement.reveals, guard);
      this.served++;
      return { kind: 'served', body };
    } catch (err) {
      if (dataError(err)) {
        if (/^42/.test(String((err as { code?: unknown }).code))) log.warn({ err, sql: statement.text }, 'compiled GraphQL statement refused by PostgreSQL; the resolvers serve the query');
        return { kind: 'fallback' };
      }
      return { kind: 'failed', error: err };
    }
  }

  /**
   * Every compiled statement runs here, in the tenant session's single round trip (settings,
   * statement and commit in one write), read-only. This is the one place where a bound on the
   * answer's size applies to compiled queries.
   */
  /**
   * Several compiled statements of one caller in one read-only tenant transaction, pipelined: one
   * round trip instead of one per statement (live query re-runs after a change). The byte bound is
   * shared: each answer may take its share of it (null past it: run that one alone, by execute(),
   * to know whether it fits the whole bound), so a batch holds no more than one answer would.
   */
  async executeMany(ctx: SessionContext, statements: readonly Statement[]): Promise<Array<string | null>> {
    if (statements.length === 1) return [await this.execute(ctx, statements[0] as Statement)];
    const share = Math.floor(this.maxBytes / statements.length);
    this.batched += statements.length;
    return this.db.withTenant(
      ctx,
      (tx) =>
        Promise.all(
          statements.map(async (st, i) => {
            const { rows } = await tx.query<{ j: string | null }>(boundedText(st), [...st.values, share], i === statements.length - 1 ? { final: true } : undefined);
            return (rows[0] as { j: string | null }).j;
          }),
        ),
      { readOnly: true },
    );
  }

  async execute(ctx: SessionContext, statement: Statement): Promise<string | null> {
    // The JSON is measured inside PostgreSQL: an answer past the bound never reaches the service.
    const text = boundedText(statement);
    const { rows } = await this.db.tenantQuery<{ j: string | null }>(ctx, text, [...statement.values, this.maxBytes], { readOnly: true });
    return (rows[0] as { j: string | null }).j;
  }
}
