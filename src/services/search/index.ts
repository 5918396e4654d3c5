/**
 * The search service (SPEC 10): ranked full-text search with highlights, typo tolerance, facets and
 * keyset paging; vector similarity (pgvector HNSW when installed, an exact cosine scan otherwise);
 * hybrid ranking by reciprocal rank fusion; and the management of search indexes (definitions in
 * strata.search_indexes, DDL in jobs on the `search` queue). Searches run in the caller's tenant
 * session: row-level security scopes hits, facets and totals.
 */
import type { Enforcement, Guard } from '../compliance/index.js';
import type { Database } from '../../db/database.js';
import type { SessionContext } from '../../db/session.js';
import type { RequestContext } from '../../domain.js';
import { badRequest, conflict, notFound } from '../../errors.js';
import type { JobsService } from '../jobs/index.js';
import type { ColumnInfo, SchemaRegistry, TableInfo } from '../data/index.js';
import { SEARCH_TSV_COLUMN } from '../data/index.js';
import { Params, boundRowsSql, checkEmbedPaths, filterSql, readBounded, rowJsonSql, tooLarge, type BuildScope } from '../data/index.js';
import type { CursorCodec } from '../data/index.js';
import { parseRowsQuery, type RowsQuery } from '../data/index.js';
import type { QueryString } from '../data/index.js';
import { createDefinitionCache, readDefinition, type SearchIndexDef, type Weight } from './definitions.js';
import { hasPgvector } from './ddl.js';
import { hitsCtes, textSearchSql, vectorHitsCte, type TextPlan } from './sql.js';

export const SEARCH_DEFAULT_LIMIT = 20;
export const SEARCH_MAX_LIMIT = 100;
export const VECTOR_MAX_K = 100;
/** Reciprocal rank fusion constant (Cormack et al.): score = sum over rankings of 1 / (RRF_K + rank). */
export const RRF_K = 60;
/** Candidates taken from each ranking before fusion. */
export const RRF_WINDOW = 100;
const MAX_FACETS = 10;
const TEXTUAL = new Set(['text', 'varchar', 'bpchar', 'citext']);

export interface SearchHit {
  row: unknown;
  score: number;
  match?: 'text' | 'fuzzy';
  highlights?: Record<string, string>;
  text_rank?: number | null;
  vector_rank?: number | null;
}
export interface SearchResult {
  data: SearchHit[];
  facets?: Record<string, Array<{ value: string | null; count: number }>>;
  total?: number;
  next_cursor: string | null;
}

export interface TextSearchInput {
  table: string;
  q: string;
  fuzzy?: boolean;
  facets?: string[];
  /** Rows-API parameters: filters (column=op.value, or=, and=), select, limit, cursor. */
  qs: QueryString;
}
export interface PostSearchInput {
  table: string;
  q?: string;
  vector?: number[];
  k?: number;
  hybrid?: boolean;
  fuzzy?: boolean;
  facets?: string[];
  filters?: Record<string, string>;
  select?: string;
  limit?: number;
  cursor?: string;
}
export interface CreateIndexInput {
  table: string;
  columns?: Array<{ name: string; weight: Weight }>;
  language?: string;
  vector?: { column: string; dimensions: number };
}

export interface SearchServiceOptions {
  db: Database;
  /** The compliance policy: declared columns are decrypted and masked in hits; no match, highlight or facet reveals a masked one. */
  compliance?: Enforcement;
  /** Most bytes of JSON one search answers (RESPONSE_MAX_BYTES): past it 413 RESPONSE_TOO_LARGE. */
  maxResponseBytes?: number;
  schema: SchemaRegistry;
  cursors: CursorCodec;
  fuzzyThreshold: number;
  /** word_similarity a fuzzy match needs (0..1). */
  fuzzySimilarity: number;
  maxQueryLength: number;
}

/** The public view of a definition. */
export function indexView(d: SearchIndexDef) {
  return {
    table: d.table,
    columns: d.columns,
    language: d.language,
    maintenance: d.maintenance,
    vector: d.vector,
    status: d.status,
    job_id: d.jobId,
    error: d.error,
    created_by: d.createdBy,
    created_at: d.createdAt,
    updated_at: d.updatedAt,
  };
}
export type SearchIndexView = ReturnType<typeof indexView>;

export function createSearchService(opts: SearchServiceOptions) {
  const { db, schema, cursors } = opts;
  const defs = createDefinitionCache(db);
  let pgvector: Promise<boolean> | undefined;

  async function searchable(table: string, need: 'text' | 'vector'): Promise<{ t: TableInfo; def: SearchIndexDef; pk: ColumnInfo }> {
    const def = await defs.get(table);
    const t = (await schema.tables()).get(table);
    if (!def || !t || (need === 'text' && def.columns.length === 0)) {
      throw badRequest('TABLE_NOT_SEARCHABLE', `table ${JSON.stringify(table)} has no ${need === 'text' ? 'full-text' : 'vector'} search index; create one with POST /v1/admin/search-indexes`, { table });
    }
    if (need === 'vector' && !def.vector) {
      throw badRequest('NO_VECTOR_COLUMN', `table ${table} declares no vector column; add one with POST /v1/admin/search-indexes { table, vector: { column, dimensions } }`, { table });
    }
    if (def.status !== 'ready') throw conflict('SEARCH_INDEX_NOT_READY', `the search index of ${table} is ${def.status}; try again when it is ready`, { table, status: def.status });
    const pk = t.columnMap.get(t.primaryKey[0] ?? '');
    if (!pk || t.primaryKey.length !== 1) throw badRequest('NO_SINGLE_PRIMARY_KEY', `table ${table} has no single-column primary key`);
    return { t, def, pk };
  }

  function checkQuery(q: string | undefined): string {
    if (q === undefined || q.trim() === '') throw badRequest('EMPTY_QUERY', 'q must contain at least one search term');
    if (q.length > opts.maxQueryLength) {
      throw badRequest('QUERY_TOO_LONG', `q is ${q.length} characters; at most ${opts.maxQueryLength} are allowed`, { max: opts.maxQueryLength });
    }
    return q;
  }

  function facetColumns(t: TableInfo, names: string[] | undefined): ColumnInfo[] {
    const unique = [...new Set((names ?? []).map((n) => n.trim()).filter((n) => n !== ''))];
    if (unique.length > MAX_FACETS) throw badRequest('TOO_MANY_FACETS', `at most ${MAX_FACETS} facets per search`, { max: MAX_FACETS });
    return unique.map((name) => {
      const c = t.columnMap.get(name);
      if (!c) throw badRequest('UNKNOWN_FACET_COLUMN', `facet column ${JSON.stringify(name)} does not exist in ${t.name}`, { column: name, table: t.name });
      if (c.isArray || c.udt === 'json' || c.udt === 'jsonb') throw badRequest('INVALID_FACET_COLUMN', `facet column ${name} is ${c.type}; facets need a scalar column`, { column: name });
      return c;
    });
  }

  /**
   * Matching a column is reading it: a search over an index holding a declared column the role may
   * not read in full (or an encrypted one: its index would hold ciphertext) is refused, and so is a
   * facet of such a column (its counts would list the values).
   */
  function guardSearch(guard: Guard | undefined, t: TableInfo, indexed: string[], facets: string[]): void {
    if (!guard?.table(t.name)) return;
    for (const name of indexed) {
      const c = guard.column(t.name, name);
      if (c && (c.encrypted || !c.plaintext)) throw badRequest('SEARCH_MASKED_COLUMN', `the search index of ${t.name} covers ${name}, which this role reads masked or encrypted: matches and highlights would reveal it`, { table: t.name, column: name });
    }
    for (const name of facets) {
      const c = guard.column(t.name, name);
      if (c && (c.encrypted || !c.plaintext)) throw badRequest('MASKED_COLUMN_FACET', `${t.name}.${name} is masked or encrypted for this role: it cannot be a facet`, { table: t.name, column: name });
    }
  }

  async function revealRows<T extends { row: unknown }>(guard: Guard | undefined, data: T[]): Promise<T[]> {
    if (!guard?.tagged || data.length === 0) return data;
    const rows = (await guard.revealValue(data.map((d) => d.row), { path: 'search' })) as unknown[];
    return data.map((d, i) => ({ ...d, row: rows[i] }));
  }

  async function buildScope(params: Params, rq: RowsQuery): Promise<BuildScope> {
    checkEmbedPaths(rq.select, rq.embeds);
    return { tables: await schema.tables(), params, embeds: rq.embeds, maxEmbedLimit: SEARCH_MAX_LIMIT, alias: 0 };
  }

  function parseFilters(qs: QueryString): RowsQuery {
    const rq = parseRowsQuery(qs, { maxLimit: SEARCH_MAX_LIMIT });
    if (rq.order.length) throw badRequest('ORDER_NOT_SUPPORTED', 'search results are ordered by relevance; order is not accepted');
    return rq;
  }

  async function text(ctx: SessionContext, input: TextSearchInput): Promise<SearchResult> {
    const query = checkQuery(input.q);
    const { t, def, pk } = await searchable(input.table, 'text');
    const facets = facetColumns(t, input.facets);
    const guard = await opts.compliance?.guard(ctx);
    guardSearch(guard, t, def.columns.map((c) => c.name), facets.map((c) => c.name));
    const rq = parseFilters(input.qs);
    const limit = rq.limit ?? SEARCH_DEFAULT_LIMIT;
    const params = new Params(guard);
    const scope = await buildScope(params, rq);
    const filters = rq.filters.map((f) => filterSql(t, 't0', f, params));
    const signature = JSON.stringify(['search', t.name, query, input.fuzzy === true]);
    let after: { tier: string; score: string; pk: string } | undefined;
    if (rq.cursor !== undefined) {
      const [tier, score, key] = cursors.decode(signature, rq.cursor, 3);
      if (tier == null || score == null || key == null || !/^[01]$/.test(tier) || !Number.isFinite(Number(score))) {
        throw badRequest('INVALID_CURSOR', 'the cursor is malformed; start again without it');
      }
      after = { tier, score, pk: key };
    }
    const plan: TextPlan = { table: t, def, pk, query, fuzzy: input.fuzzy === true, fuzzyThreshold: opts.fuzzyThreshold, filters, facets };
    const rowJson = rowJsonSql(t, 't0', rq.select, scope);
    const sql = textSearchSql(plan, params, { rowJson, after, limit });
    const rows = await run<ResultRow>(ctx, plan.fuzzy, sql, params.values);
    const hits = rows.filter((r) => r.kind === 'hit').sort((a, b) => Number(a.n) - Number(b.n));
    const page = hits.slice(0, limit);
    const last = page[page.length - 1];
    const result: SearchResult = {
      data: page.map((r) => ({
        row: JSON.parse(r.j ?? 'null') as unknown,
        score: Number(r.score),
        match: r.tier === 1 ? 'fuzzy' : 'text',
        highlights: JSON.parse(r.hl ?? '{}') as Record<string, string>,
      })),
      total: Number(rows.find((r) => r.kind === 'total')?.n ?? 0),
      next_cursor: hits.length > limit && last ? cursors.encode(signature, [String(last.tier), last.score, last.pk]) : null,
    };
    result.data = await revealRows(guard, result.data);
    if (facets.length) {
      result.facets = Object.fromEntries(facets.map((c) => [c.name, [] as Array<{ value: string | null; count: number }>]));
      for (const r of rows) if (r.kind === 'facet') result.facets[facets[r.facet ?? 0]!.name]!.push({ value: r.value, count: Number(r.n) });
    }
    return result;
  }

  async function vectorPlan(table: string, vector: number[] | undefined) {
    const { t, def, pk } = await searchable(table, 'vector');
    const v = def.vector!;
    if (!vector || vector.length !== v.dimensions) {
      throw badRequest('VECTOR_DIMENSION_MISMATCH', `vector must have ${v.dimensions} numbers for ${table}.${v.column}; got ${vector?.length ?? 0}`, { expected: v.dimensions, got: vector?.length ?? 0 });
    }
    if (!vector.every((x) => Number.isFinite(x))) throw badRequest('INVALID_VECTOR', 'vector must contain finite numbers only');
    if (vector.every((x) => x === 0)) throw badRequest('ZERO_VECTOR', 'the zero vector has no direction; cosine similarity is undefined');
    pgvector ??= hasPgvector(db);
    return { t, def, pk, column: v.column, dimensions: v.dimensions, pgvector: await pgvector };
  }

  /**
   * Run a search statement in the caller's tenant session. With fuzzy matching, the trigram
   * threshold is set LOCAL first (the `<%` operator reads it; GIN trigram indexes serve it), in the
   * same pipelined round trip; otherwise the statement is a single-trip transaction.
   */
  async function run<R extends Record<string, unknown>>(ctx: SessionContext, fuzzy: boolean, unbounded: string, given: unknown[]) {
    // PostgreSQL sizes the answer's rows and sends none past the bound (data/response-bounds.ts)
    const maxBytes = opts.maxResponseBytes ?? 16 * 1024 * 1024;
    const values = [...given, maxBytes];
    const sql = boundRowsSql(unbounded, `$${values.length}`);
    const res = !fuzzy
      ? await db.tenantQuery<R>(ctx, sql, values, { readOnly: true })
      : await db.withTenant(
          ctx,
          async (tx) => {
            const [, r] = await Promise.all([
              tx.query("SELECT set_config('pg_trgm.word_similarity_threshold', $1, true)", [String(opts.fuzzySimilarity)]),
              tx.query<R>(sql, values, { final: true }),
            ]);
            return r;
          },
          { readOnly: true },
        );
    const b = readBounded(res);
    if (b.cut) throw tooLarge('the search answer', maxBytes, 'RESPONSE_MAX_BYTES', 'ask for fewer hits (limit) or fewer columns (select)');
    return b.rows;
  }

  function checkK(k: number | undefined): number {
    const n = k ?? 10;
    if (!Number.isInteger(n) || n < 1 || n > VECTOR_MAX_K) throw badRequest('INVALID_K', `k must be an integer between 1 and ${VECTOR_MAX_K}`, { max: VECTOR_MAX_K });
    return n;
  }

  async function vector(ctx: SessionContext, input: PostSearchInput): Promise<SearchResult> {
    const k = checkK(input.k);
    const vp = await vectorPlan(input.table, input.vector);
    const rq = parseFilters({ ...(input.filters ?? {}), ...(input.select ? { select: input.select } : {}) });
    const guard = await opts.compliance?.guard(ctx);
    guardSearch(guard, vp.t, [vp.column], []);
    const params = new Params(guard);
    const scope = await buildScope(params, rq);
    const filters = rq.filters.map((f) => filterSql(vp.t, 't0', f, params));
    const cte = vectorHitsCte({ table: vp.t, pk: vp.pk, column: vp.column, dimensions: vp.dimensions, filters, pgvector: vp.pgvector }, params, input.vector!, k);
    const rowJson = rowJsonSql(vp.t, 't0', rq.select, scope);
    const sql = `WITH ${cte}
      SELECT ${rowJson}::text AS j, vh.score::text AS score FROM vector_hits vh JOIN ${vp.t.qualified} t0 ON t0.${pgIdent(vp.pk.name)} = vh.pk ORDER BY vh.score DESC, vh.pk`;
    const rows = await run<{ j: string; score: string }>(ctx, false, sql, params.values);
    return { data: await revealRows(guard, rows.map((r) => ({ row: JSON.parse(r.j) as unknown, score: Number(r.score) }))), next_cursor: null };
  }

  async function hybrid(ctx: SessionContext, input: PostSearchInput): Promise<SearchResult> {
    const query = checkQuery(input.q);
    const k = checkK(input.k);
    const vp = await vectorPlan(input.table, input.vector);
    const { def } = await searchable(input.table, 'text');
    const rq = parseFilters({ ...(input.filters ?? {}), ...(input.select ? { select: input.select } : {}) });
    const guard = await opts.compliance?.guard(ctx);
    guardSearch(guard, vp.t, [...def.columns.map((c) => c.name), vp.column], []);
    const params = new Params(guard);
    const scope = await buildScope(params, rq);
    const filters = rq.filters.map((f) => filterSql(vp.t, 't0', f, params));
    const window = Math.max(k, RRF_WINDOW);
    const textCtes = hitsCtes({ table: vp.t, def, pk: vp.pk, query, fuzzy: input.fuzzy === true, fuzzyThreshold: opts.fuzzyThreshold, filters, facets: [] }, params);
    const vecCte = vectorHitsCte({ table: vp.t, pk: vp.pk, column: vp.column, dimensions: vp.dimensions, filters, pgvector: vp.pgvector }, params, input.vector!, window);
    const rrf = params.add(RRF_K);
    const rowJson = rowJsonSql(vp.t, 't0', rq.select, scope);
    const sql = `WITH ${textCtes}, ${vecCte},
      text_ranked AS (SELECT pk, row_number() OVER (ORDER BY tier, score DESC, pk) AS r FROM hits ORDER BY r LIMIT ${params.add(window)}),
      vector_ranked AS (SELECT pk, row_number() OVER (ORDER BY score DESC, pk) AS r FROM vector_hits),
      fused AS (SELECT coalesce(t.pk, v.pk) AS pk, t.r AS tr, v.r AS vr,
                  coalesce(1.0::float8 / (${rrf}::int + t.r), 0) + coalesce(1.0::float8 / (${rrf}::int + v.r), 0) AS score
                FROM text_ranked t FULL JOIN vector_ranked v ON t.pk = v.pk ORDER BY score DESC, pk LIMIT ${params.add(k)})
      SELECT ${rowJson}::text AS j, f.score::text AS score, f.tr, f.vr FROM fused f JOIN ${vp.t.qualified} t0 ON t0.${pgIdent(vp.pk.name)} = f.pk
      ORDER BY f.score DESC, f.pk`;
    const rows = await run<{ j: string; score: string; tr: string | null; vr: string | null }>(ctx, input.fuzzy === true, sql, params.values);
    return {
      data: await revealRows(
        guard,
        rows.map((r) => ({
          row: JSON.parse(r.j) as unknown,
          score: Number(r.score),
          text_rank: r.tr === null ? null : Number(r.tr),
          vector_rank: r.vr === null ? null : Number(r.vr),
        })),
      ),
      next_cursor: null,
    };
  }

  return {
    /** GET /v1/search: ranked text search with highlights, fuzzy fallback, facets and paging. */
    search: text,

    /** POST /v1/search: vector top-k, hybrid (text + vector, RRF), or text search with a JSON body. */
    async searchPost(ctx: SessionContext, input: PostSearchInput): Promise<SearchResult> {
      if (input.hybrid) {
        if (input.vector === undefined || input.q === undefined) {
          throw badRequest('HYBRID_NEEDS_QUERY_AND_VECTOR', 'hybrid search needs both q and vector');
        }
        return hybrid(ctx, input);
      }
      if (input.vector !== undefined) {
        if (input.q !== undefined) throw badRequest('AMBIGUOUS_SEARCH', 'give q or vector, or both with hybrid: true');
        return vector(ctx, input);
      }
      if (input.q === undefined) throw badRequest('EMPTY_QUERY', 'give q (text search) or vector (similarity search)');
      const qs: QueryString = { ...(input.filters ?? {}) };
      if (input.select !== undefined) qs['select'] = input.select;
      if (input.limit !== undefined) qs['limit'] = String(input.limit);
      if (input.cursor !== undefined) qs['cursor'] = input.cursor;
      return text(ctx, { table: input.table, q: input.q, fuzzy: input.fuzzy, facets: input.facets, qs });
    },

    /** Every search index (read now, not from the cache). */
    async listIndexes(): Promise<SearchIndexView[]> {
      return (await defs.all()).map(indexView);
    },

    async getIndex(table: string): Promise<SearchIndexView> {
      defs.invalidate();
      const d = await readDefinition(db, table);
      if (!d) throw notFound('SEARCH_INDEX_NOT_FOUND', `table ${JSON.stringify(table)} has no search index`);
      return indexView(d);
    },

    /**
     * Validate, record the definition (status building) and enqueue the build job. Bad input is
     * refused before anything is written; a table with an index already -> 409.
     */
    async createIndex(ctx: RequestContext, input: CreateIndexInput, jobs: JobsService): Promise<{ index: SearchIndexView; job_id: string }> {
      const t = (await schema.tables()).get(input.table);
      if (!t) throw badRequest('UNKNOWN_TABLE', `table ${JSON.stringify(input.table)} does not exist or is not exposed`, { table: input.table });
      // on a Citus cluster FORCE is lifted from distributed tables (logical replication of moves
      // refuses it; docs/cluster.md): RLS enabled is the tenant wall there
      const walled = t.rls.forced || (db.cluster && t.rls.enabled);
      if (!t.hasTenantId || !walled) throw badRequest('NOT_A_TENANT_TABLE', `table ${t.name} is not a tenant table (tenant_id with forced row-level security)`, { table: t.name });
      if (t.primaryKey.length !== 1) throw badRequest('NO_SINGLE_PRIMARY_KEY', `table ${t.name} has no single-column primary key`, { table: t.name });
      const columns = input.columns ?? [];
      if (columns.length === 0 && !input.vector) throw badRequest('NOTHING_TO_INDEX', 'give columns to index for text search, a vector column, or both');
      const seen = new Set<string>();
      for (const c of columns) {
        const col = t.columnMap.get(c.name);
        if (!col) throw badRequest('UNKNOWN_COLUMN', `column ${JSON.stringify(c.name)} does not exist in ${t.name}`, { column: c.name, table: t.name });
        if (!TEXTUAL.has(col.udt) || col.isArray) throw badRequest('COLUMN_NOT_TEXT', `column ${c.name} is ${col.type}; only text columns can be indexed for full-text search`, { column: c.name });
        if (seen.has(c.name)) throw badRequest('DUPLICATE_COLUMN', `column ${c.name} is listed twice`, { column: c.name });
        seen.add(c.name);
      }
      if (input.vector) {
        const col = t.columnMap.get(input.vector.column);
        if (!col) throw badRequest('UNKNOWN_COLUMN', `column ${JSON.stringify(input.vector.column)} does not exist in ${t.name}`, { column: input.vector.column, table: t.name });
        if (!(col.udt === 'float4' && col.isArray)) throw badRequest('INVALID_VECTOR_COLUMN', `vector column ${col.name} is ${col.type}; it must be real[] (float4[])`, { column: col.name });
      }
      const language = input.language ?? 'english';
      const cfg = await db.adminQuery('SELECT 1 FROM pg_ts_config WHERE cfgname = $1', [language]);
      if (!cfg.rowCount) throw badRequest('UNKNOWN_LANGUAGE', `no text search configuration ${JSON.stringify(language)}; see pg_ts_config (english, simple, german, ...)`, { language });
      if (columns.length) {
        const taken = await db.adminQuery('SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped', [t.qualified, SEARCH_TSV_COLUMN]);
        const existing = await readDefinition(db, t.name);
        if (taken.rowCount && !existing) throw conflict('COLUMN_EXISTS', `${t.name} already has a column ${SEARCH_TSV_COLUMN} that search did not create`, { column: SEARCH_TSV_COLUMN });
      }
      const inserted = await db.adminQuery(
        `INSERT INTO strata.search_indexes (table_name, columns, language, maintenance, vector_column, vector_dimensions, created_by)
         VALUES ($1, $2, $3, 'trigger', $4, $5, $6) ON CONFLICT (table_name) DO NOTHING`,
        [t.name, JSON.stringify(columns), language, input.vector?.column ?? null, input.vector?.dimensions ?? null, ctx.actor],
      );
      if (!inserted.rowCount) throw conflict('SEARCH_INDEX_EXISTS', `table ${t.name} already has a search index; DELETE it first to change it`, { table: t.name });
      try {
        // A platform job, whoever's token asked: the table is every tenant's, and its progress counts
        // every tenant's rows (a tenant's admin must not read them on GET /v1/jobs/{id})
        const { job_id } = await jobs.enqueue({ ...ctx, tenantId: null }, 'search-index-create', { table: t.name });
        await db.adminQuery('UPDATE strata.search_indexes SET job_id = $2 WHERE table_name = $1', [t.name, job_id]);
        defs.invalidate();
        return { index: await this.getIndex(t.name), job_id };
      } catch (err) {
        await db.adminQuery("DELETE FROM strata.search_indexes WHERE table_name = $1 AND status = 'building'", [t.name]);
        throw err;
      }
    },

    /** Mark the index dropping and enqueue the drop job. */
    async dropIndex(ctx: RequestContext, table: string, jobs: JobsService): Promise<{ job_id: string }> {
      const { rows } = await db.adminQuery(
        "UPDATE strata.search_indexes SET status = 'dropping', updated_at = now() WHERE table_name = $1 AND status <> 'building' RETURNING table_name",
        [table],
      );
      if (!rows[0]) {
        const d = await readDefinition(db, table);
        if (!d) throw notFound('SEARCH_INDEX_NOT_FOUND', `table ${JSON.stringify(table)} has no search index`);
        throw conflict('SEARCH_INDEX_BUSY', `the search index of ${table} is being built; wait for it (or cancel its job ${d.jobId ?? ''})`, { job_id: d.jobId });
      }
      defs.invalidate();
      const { job_id } = await jobs.enqueue({ ...ctx, tenantId: null }, 'search-index-drop', { table });
      await db.adminQuery('UPDATE strata.search_indexes SET job_id = $2 WHERE table_name = $1', [table, job_id]);
      return { job_id };
    },
  };
}

const pgIdent = (s: string) => `"${s.replace(/"/g, '""')}"`;

type ResultRow = {
  kind: 'hit' | 'facet' | 'total';
  facet: number | null;
  value: string | null;
  n: string | null;
  j: string | null;
  hl: string | null;
  tier: number | null;
  score: string;
  pk: string;
};

export type SearchService = ReturnType<typeof createSearchService>;
export * from './ddl.js';
export * from './definitions.js';
