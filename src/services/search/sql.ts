/**
 * SQL of search statements. Identifiers come from the schema registry and the search definitions
 * (quoted with escapeIdentifier); every value is a $n parameter. Each statement runs in the caller's
 * tenant session, so row-level security limits hits, facets and totals to the caller's tenant.
 */
import pg from 'pg';
import type { ColumnInfo, TableInfo } from '../data/index.js';
import type { Params } from '../data/index.js';
import type { SearchIndexDef } from './definitions.js';

const q = pg.escapeIdentifier;

/** ts_headline options: marked terms, up to two fragments of about 15 words. */
export const HEADLINE_OPTIONS = 'StartSel=<mark>, StopSel=</mark>, MaxFragments=2, MaxWords=15, MinWords=5, FragmentDelimiter=" … "';

export interface TextPlan {
  table: TableInfo;
  def: SearchIndexDef;
  pk: ColumnInfo;
  query: string;
  fuzzy: boolean;
  fuzzyThreshold: number;
  /** SQL conditions on alias t0 (rows-API filters), already parameterised. */
  filters: string[];
  facets: ColumnInfo[];
}

const tsquery = (lang: string, text: string) => `websearch_to_tsquery(${lang}::regconfig, ${text}::text)`;

/**
 * CTEs `text_hits`, `fuzzy_hits` (trigram matches of the text that the text query
 * missed; only computed when fuzzy and the text query found fewer than the threshold) and `hits`
 * (tier 0 = text, 1 = fuzzy; score = ts_rank_cd or word_similarity; the facet columns f0..fn).
 */
export function hitsCtes(p: TextPlan, params: Params): string {
  return hitsCtesWithQuery(p, params).ctes;
}

/** hitsCtes, and the tsquery expression it used (for ts_headline). */
export function hitsCtesWithQuery(p: TextPlan, params: Params): { ctes: string; query: string } {
  const rel = p.table.qualified;
  const tsv = `t0.${q(p.def.tsvColumn)}`;
  const pk = `t0.${q(p.pk.name)}`;
  const where = p.filters.length ? ` AND ${p.filters.join(' AND ')}` : '';
  const facetCols = p.facets.map((c, i) => `, t0.${q(c.name)}::text AS f${i}`).join('');
  const lang = params.add(p.def.language);
  const text = params.add(p.query);
  // The tsquery is written out where it is used (not read from a CTE): as a stable expression of
  // parameters it can be a GIN index condition; from a CTE it would only be a join filter.
  const query = tsquery(lang, text);
  const ctes = [
    `text_hits AS (SELECT ${pk} AS pk, 0 AS tier, ts_rank_cd(${tsv}, ${query})::float8 AS score${facetCols} FROM ${rel} t0 WHERE ${tsv} @@ ${query}${where})`,
  ];
  if (p.fuzzy) {
    const threshold = params.add(p.fuzzyThreshold);
    const cols = p.def.columns.map((c) => `t0.${q(c.name)}`);
    const sim = cols.length === 1 ? `word_similarity(${text}::text, ${cols[0]})` : `greatest(${cols.map((c) => `word_similarity(${text}::text, ${c})`).join(', ')})`;
    ctes.push(
      `fuzzy_hits AS (SELECT ${pk} AS pk, 1 AS tier, ${sim}::float8 AS score${facetCols} FROM ${rel} t0
        WHERE (${cols.map((c) => `${text}::text <% ${c}`).join(' OR ')}) AND ${tsv} IS NOT NULL AND NOT (${tsv} @@ ${query})${where}
          AND (SELECT count(*) FROM (SELECT 1 FROM text_hits LIMIT ${threshold}::int) x) < ${threshold}::int)`,
    );
    ctes.push('hits AS MATERIALIZED (SELECT * FROM text_hits UNION ALL SELECT * FROM fuzzy_hits)');
  } else {
    ctes.push('hits AS MATERIALIZED (SELECT * FROM text_hits)');
  }
  return { ctes: ctes.join(',\n'), query };
}

/**
 * One statement for a page of hits, the facet counts and the total: rows of kind 'hit' (row JSON,
 * highlights, tier, score, pk), 'facet' (facet index, value, count) and 'total'. Highlights are
 * computed for the page's rows only.
 */
export function textSearchSql(p: TextPlan, params: Params, opts: { rowJson: string; after?: { tier: string; score: string; pk: string }; limit: number }): string {
  const { ctes, query } = hitsCtesWithQuery(p, params);
  const keyset = opts.after
    ? `WHERE (h.tier > ${params.add(opts.after.tier)}::int OR (h.tier = ${params.add(opts.after.tier)}::int AND (h.score < ${params.add(opts.after.score)}::float8 OR (h.score = ${params.add(opts.after.score)}::float8 AND h.pk > ${params.add(opts.after.pk)}))))`
    : '';
  const headline = p.def.columns
    .map((c) => `${pg.escapeLiteral(c.name)}, ts_headline(${params.add(p.def.language)}::regconfig, coalesce(t0.${q(c.name)}::text, ''), ${query}, ${pg.escapeLiteral(HEADLINE_OPTIONS)})`)
    .join(', ');
  const facets = p.facets
    .map((_, i) => `(SELECT 'facet'::text, ${i}, f${i}, count(*)::bigint FROM hits GROUP BY f${i} ORDER BY 4 DESC, 3 NULLS LAST LIMIT 100)`)
    .join('\nUNION ALL ');
  return `WITH ${ctes},
page AS (SELECT h.pk, h.tier, h.score, row_number() OVER (ORDER BY h.tier, h.score DESC, h.pk) AS rn FROM hits h ${keyset} ORDER BY h.tier, h.score DESC, h.pk LIMIT ${params.add(opts.limit + 1)})
SELECT 'hit'::text AS kind, NULL::int AS facet, NULL::text AS value, pg.rn::bigint AS n,
  ${opts.rowJson}::text AS j, json_build_object(${headline})::text AS hl, pg.tier, pg.score::text AS score, pg.pk::text AS pk
FROM page pg JOIN ${p.table.qualified} t0 ON t0.${q(p.pk.name)} = pg.pk
UNION ALL (SELECT 'total', NULL, NULL, count(*)::bigint, NULL, NULL, NULL, NULL, NULL FROM hits)
${facets ? `UNION ALL SELECT kind, facet, value, n, NULL, NULL, NULL, NULL, NULL FROM (${facets}) f(kind, facet, value, n)` : ''}`;
}

export interface VectorPlan {
  table: TableInfo;
  pk: ColumnInfo;
  column: string;
  dimensions: number;
  filters: string[];
  pgvector: boolean;
}

/**
 * `vector_hits(pk, score)`: the rows ordered by cosine similarity to the query vector, best first,
 * `limit` of them. With pgvector, `<=>` over `column::vector(d)` (the HNSW index's expression);
 * without it, an exact scan computing the cosine over the float4[] in SQL (the two arrays unnested
 * side by side in the select list: a ProjectSet, no tuplestore per row, about a third faster than
 * unnest(a, b) in FROM). Its cost is O(rows x dimensions): install pgvector for large tables. Rows whose vector is
 * null, of another dimension or all zeros are not candidates.
 */
export function vectorHitsCte(p: VectorPlan, params: Params, vector: number[], limit: number): string {
  const col = `t0.${q(p.column)}`;
  const pk = `t0.${q(p.pk.name)}`;
  const where = [`${col} IS NOT NULL`, `cardinality(${col}) = ${p.dimensions}`, ...p.filters].join(' AND ');
  const lim = params.add(limit);
  if (p.pgvector) {
    const v = `${params.add(`[${vector.join(',')}]`)}::vector(${p.dimensions})`;
    const dist = `(${col}::vector(${p.dimensions}) <=> ${v})`;
    return `vector_hits AS MATERIALIZED (SELECT ${pk} AS pk, (1 - ${dist})::float8 AS score FROM ${p.table.qualified} t0 WHERE ${where} ORDER BY ${dist}, ${pk} LIMIT ${lim})`;
  }
  const norm = Math.sqrt(vector.reduce((s, x) => s + x * x, 0));
  const vec = params.add(vector);
  const qn = params.add(norm);
  return `vector_hits AS MATERIALIZED (SELECT pk, score FROM (
      SELECT ${pk} AS pk, (SELECT sum(a * b) / NULLIF(sqrt(sum(a * a)) * ${qn}::float8, 0) FROM (SELECT unnest(${col})::float8 AS a, unnest(${vec}::float8[]) AS b) u) AS score
      FROM ${p.table.qualified} t0 WHERE ${where}) s
    WHERE score IS NOT NULL ORDER BY score DESC, pk LIMIT ${lim})`;
}
