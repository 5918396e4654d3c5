/**
 * Serving query operations with one SQL statement (compile.ts), and the plan cache.
 *
 * The plan cache is an LRU (bounded in entries and in source bytes) keyed by (schema version,
 * role, operation name, document text). A hit skips parsing and validation; an operation without
 * variables also skips costing and compilation (its statement is cached with it). Documents the
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
  OperationTypeNode,
  getOperationAST,
  getVariableValues,
  parse,
  validate,
  visit,
  type ArgumentNode,
  type DocumentNode,
  type FieldNode,
  type FragmentDefinitionNode,
  type GraphQLSchema,
  type OperationDefinitionNode,
} from 'graphql/index.js';
import type { FastifyBaseLogger } from 'fastify';
import type { Database } from '../../db/database.js';
import type { SessionContext } from '../../db/session.js';
import { AppError } from '../../errors.js';
import { checkLimits } from './cost.js';
import { Unsupported, compileOperation } from './compile.js';
import { normalizeLiterals } from './normalize.js';

interface Prepared {
  document: DocumentNode;
  operation: OperationDefinitionNode;
  fragments: Record<string, FragmentDefinitionNode>;
  /** The document as the cost limit sees it: `last` counted like `first`. */
  costDocument: DocumentNode;
  /** No variable definitions: cost and statement depend on nothing but the text. */
  constant: boolean;
  statement?: Statement;
}
type Entry = Prepared | 'resolvers';
export interface Statement {
  text: string;
  values: unknown[];
}

export type CompiledOutcome = { kind: 'served'; body: string } | { kind: 'failed'; error: unknown } | { kind: 'fallback' };

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

/** A PostgreSQL error the resolver path would report per field (bad input), not a failure of the statement. */
const dataError = (err: unknown) => {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^(22|23|42)/.test(code);
};

export class CompiledQueries {
  private readonly plans: LRUCache<string, Entry>;
  /** Serve query operations compiled (GRAPHQL_COMPILER); false: every operation goes to the resolvers. */
  enabled = true;
  /** Plan cache lookups that found / did not find the document. */
  hits = 0;
  misses = 0;

  constructor(
    private readonly db: Database,
    maxEntries: number,
  ) {
    // bounded by entries and by the documents' size (an AST is a few times its source)
    this.plans = new LRUCache<string, Entry>({ max: Math.max(1, maxEntries), maxSize: Math.max(1, maxEntries) * 32_768, sizeCalculation: (_v, k) => Math.max(1, k.length * 4) });
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
    return { document, operation, fragments, costDocument: costView(document), constant: !operation.variableDefinitions?.length };
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
  ): Promise<CompiledOutcome> {
    const keyOf = (text: string) => `${version}\n${ctx.role}\n${operationName ?? ''}\n${text}`;
    let key = keyOf(query);
    let vars = variables;
    let entry = this.plans.get(key);
    if (entry === undefined) {
      // Literal arguments become variables (normalize.ts): `items_by_pk(id: "7")` and `(id: "8")`
      // share one plan, and the cache is not flooded by one entry per literal.
      const normalized = normalizeLiterals(schema, query, variables);
      if (normalized) {
        key = keyOf(normalized.query);
        vars = normalized.variables;
        entry = this.plans.get(key);
      }
      if (entry === undefined) {
        this.misses++;
        entry = this.prepare(schema, normalized?.query ?? query, operationName);
        this.plans.set(key, entry);
      } else this.hits++;
    } else this.hits++;
    if (entry === 'resolvers') return { kind: 'fallback' };

    let statement = entry.statement;
    if (!statement) {
      const coerced = getVariableValues(schema, entry.operation.variableDefinitions ?? [], vars ?? {});
      if (coerced.errors) return { kind: 'fallback' };
      try {
        checkLimits(schema, entry.costDocument, operationName, vars);
        statement = compileOperation(schema, entry.operation, entry.fragments, coerced.coerced);
      } catch (err) {
        if (err instanceof Unsupported) this.plans.set(key, 'resolvers');
        else if (!(err instanceof AppError)) log.warn({ err }, 'GraphQL compiler failed; the resolvers serve the query');
        return { kind: 'fallback' };
      }
      if (entry.constant) entry.statement = statement;
    }
    try {
      return { kind: 'served', body: await this.execute(ctx, statement) };
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
  private async execute(ctx: SessionContext, statement: Statement): Promise<string> {
    const { rows } = await this.db.tenantQuery<{ j: string }>(ctx, statement.text, statement.values, { readOnly: true });
    return (rows[0] as { j: string }).j;
  }
}
