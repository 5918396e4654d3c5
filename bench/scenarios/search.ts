/**
 * Search (SPEC 10) beside the old way, through real HTTP on a Strata server started from dist/.
 *
 * Data (seeded once, idempotently, kept between runs): tenants search-1..search-10 with 100,000
 * run_logs rows each (1,000,000 in all; parent pipelines and runs included) of generated text: 8
 * words per message from a 2,000-word vocabulary with a skewed (Zipf-like) frequency, in which some
 * real words sit at fixed ranks; and 100,000 documents of tenant search-1 with a 384-dimension
 * float4[] embedding. Other scenarios' rows (e.g. tenant bench-export's run_logs) share the table:
 * every query here is tenant-scoped, by RLS, as in production.
 *
 * Measured (sequential requests, one connection, p50/p95 in ms; 200 samples per Strata query, 50 per
 * old-way query):
 *  - text: GET /v1/search?table=run_logs&q=<mid-frequency word(s)>&limit=20 (ranked, highlighted,
 *    with total); old way: GET /v1/tables/run_logs/rows?message=ilike.*<word>*&limit=20&count=exact
 *    (the rows API's ILIKE in the tenant session, with the total that search also returns);
 *  - fuzzy: a misspelled word with fuzzy=true (no text hit, so the trigram path runs); old way:
 *    the same ILIKE with the misspelled word (it finds nothing);
 *  - faceted: text + facets=level; old way: the ILIKE page plus one count=exact request per level;
 *  - vector: POST /v1/search { table: documents, vector, k: 10 } over 100,000 x 384 (exact scan
 *    without pgvector), no old way.
 * Note: migration 0005's (tenant_id, message gin_trgm_ops) index could serve ILIKE, but under RLS
 * the planner keeps ILIKE (texticlike, not LEAKPROOF) out of index conditions, so the old way scans
 * the tenant's rows, as it did before.
 */
import pg from 'pg';
import { SignJWT } from 'jose';
import { log, median, startAndCheck, stop, strataTarget } from '../lib.js';
import type { BenchContext, BenchScenario } from './types.js';

const TENANTS = Array.from({ length: 10 }, (_, i) => `search-${i + 1}`);
const ROWS_PER_TENANT = 100_000;
const VECTOR_TENANT = 'search-1';
const VECTOR_ROWS = 100_000;
const DIMS = 384;
const PORT = 3260;
const N = Number(process.env['BENCH_SEARCH_REQUESTS'] ?? 200);
const VECTOR_N = Number(process.env['BENCH_SEARCH_VECTOR_REQUESTS'] ?? 20);

/** Real words placed at fixed frequency ranks of the vocabulary (rank 0 = most frequent). */
const REAL: Record<number, string> = {
  3: 'started',
  40: 'worker',
  250: 'pipeline',
  300: 'connection',
  350: 'timeout',
  400: 'cache',
  500: 'deploy',
  600: 'artifact',
  700: 'retrying',
  800: 'checksum',
  900: 'scheduler',
  1000: 'warehouse',
};
const TEXT_QUERIES = ['pipeline', 'connection timeout', 'cache', 'deploy artifact', 'checksum', 'scheduler OR warehouse', '"retrying connection"', 'pipeline -cache'];
const ILIKE_TERMS = ['pipeline', 'connection', 'cache', 'deploy', 'checksum', 'scheduler', 'retrying connection', 'pipeline'];
const FUZZY_QUERIES = ['pipline', 'conection', 'timout', 'artefact', 'chekcsum', 'shceduler'];

/** 2,000 deterministic pronounceable words (three or four syllables), with the real ones placed. */
function vocabulary(): string[] {
  const cons = 'bdfgklmnprstvz';
  const vows = 'aeiou';
  const words: string[] = [];
  let x = 7;
  const next = () => (x = (x * 1103515245 + 12345) % 2147483648);
  while (words.length < 2000) {
    const syl = 3 + (next() % 2);
    let w = '';
    for (let s = 0; s < syl; s++) w += cons[next() % cons.length]! + vows[next() % vows.length]!;
    if (!words.includes(w)) words.push(w);
  }
  for (const [rank, w] of Object.entries(REAL)) words[Number(rank)] = w;
  return words;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return +(s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? NaN).toFixed(2);
};

async function seed(client: pg.Client): Promise<void> {
  const vocab = vocabulary();
  await client.query("INSERT INTO strata.tenants (id, name) SELECT t, 'search bench ' || t FROM unnest($1::text[]) t ON CONFLICT DO NOTHING", [TENANTS]);
  for (const tenant of TENANTS) {
    const { rows } = await client.query<{ n: number }>('SELECT count(*)::int AS n FROM run_logs WHERE tenant_id = $1', [tenant]);
    if (rows[0]?.n === ROWS_PER_TENANT) continue;
    const started = Date.now();
    await client.query('DELETE FROM pipelines WHERE tenant_id = $1', [tenant]); // cascades to runs and logs
    await client.query(
      `INSERT INTO pipelines (tenant_id, name, description) SELECT $1, 'pipeline-' || g, 'search bench pipeline ' || g FROM generate_series(1, 10) g`,
      [tenant],
    );
    await client.query(
      `INSERT INTO pipeline_runs (tenant_id, pipeline_id, status) SELECT $1, p.id, 'succeeded' FROM pipelines p, generate_series(1, 10) WHERE p.tenant_id = $1`,
      [tenant],
    );
    // The subquery refers to g, so it is evaluated per row (8 words drawn per message).
    await client.query(
      `INSERT INTO run_logs (tenant_id, run_id, level, message, at)
       SELECT $1, r.ids[1 + g % cardinality(r.ids)], (ARRAY['debug','info','info','warn','error'])[1 + g % 5],
              'step ' || g || ': ' || array_to_string(ARRAY(SELECT ($2::text[])[1 + floor(2000 * random() ^ 2)::int] FROM generate_series(1, 8) WHERE g > 0), ' '),
              now() - make_interval(secs => g)
       FROM (SELECT array_agg(id) AS ids FROM pipeline_runs WHERE tenant_id = $1) r, generate_series(1, $3::int) g`,
      [tenant, vocab, ROWS_PER_TENANT],
    );
    log(`search: seeded ${ROWS_PER_TENANT.toLocaleString()} run_logs for ${tenant} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
  const { rows } = await client.query<{ n: number }>('SELECT count(*)::int AS n FROM documents WHERE tenant_id = $1', [VECTOR_TENANT]);
  if (rows[0]?.n !== VECTOR_ROWS) {
    const started = Date.now();
    await client.query('DELETE FROM documents WHERE tenant_id = $1', [VECTOR_TENANT]);
    for (let b = 0; b < 10; b++) {
      await client.query(
        `INSERT INTO documents (tenant_id, title, body, kind, embedding)
         SELECT $1, 'doc ' || g, array_to_string(ARRAY(SELECT ($2::text[])[1 + floor(2000 * random() ^ 2)::int] FROM generate_series(1, 20) WHERE g > 0), ' '),
                (ARRAY['article','note','faq'])[1 + g % 3],
                ARRAY(SELECT (random() * 2 - 1)::real FROM generate_series(1, ${DIMS}) WHERE g > 0)
         FROM generate_series($3::int, $4::int) g`,
        [VECTOR_TENANT, vocab, b * (VECTOR_ROWS / 10) + 1, (b + 1) * (VECTOR_ROWS / 10)],
      );
    }
    log(`search: seeded ${VECTOR_ROWS.toLocaleString()} documents x ${DIMS} dims in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
  await client.query('ANALYZE run_logs, documents, pipelines, pipeline_runs');
}

interface Req {
  method: 'GET' | 'POST';
  path: string;
  body?: unknown;
}

/** Sequential requests: each request's wall time in ms (several requests make one sample when given). */
async function measure(n: number, make: (i: number) => Req[], tokenOf: (i: number) => string): Promise<number[]> {
  const lat: number[] = [];
  for (let i = -Math.min(20, Math.ceil(n / 10)); i < n; i++) {
    const started = performance.now();
    for (const r of make(Math.abs(i))) {
      const res = await fetch(`http://127.0.0.1:${PORT}${r.path}`, {
        method: r.method,
        headers: { authorization: tokenOf(Math.abs(i)), ...(r.body ? { 'content-type': 'application/json' } : {}) },
        body: r.body ? JSON.stringify(r.body) : undefined,
      });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`search bench: ${r.method} ${r.path} -> ${res.status} ${text.slice(0, 300)}`);
    }
    if (i >= 0) lat.push(performance.now() - started);
  }
  return lat;
}

const scenario: BenchScenario = {
  name: 'search',
  async run(ctx: BenchContext) {
    const client = new pg.Client({ connectionString: ctx.dbUrl });
    await client.connect();
    try {
      await client.query("SET statement_timeout = 0; SET maintenance_work_mem = '256MB'");
      await seed(client);
    } finally {
      await client.end();
    }
    const key = new TextEncoder().encode(ctx.secret);
    const tokens = await Promise.all(
      TENANTS.map(async (t) => `Bearer ${await new SignJWT({ tenant_id: t, role: 'reader' }).setProtectedHeader({ alg: 'HS256' }).setSubject(`bench-${t}`).setExpirationTime('2h').sign(key)}`),
    );
    const tokenOf = (i: number) => tokens[i % tokens.length]!;
    const target = strataTarget('STRATA-search', PORT, ctx.dbUrl, ctx.appUrl, ctx.tokens, { DB_POOL_MAX: '8', DB_POOL_MIN: '2', DB_STATEMENT_TIMEOUT_MS: '120000' });
    const server = await startAndCheck(target);
    const enc = encodeURIComponent;
    const results: Record<string, { p50: number; p95: number; n: number }> = {};
    const run = async (name: string, n: number, make: (i: number) => Req[], tok = tokenOf) => {
      const lat = await measure(n, make, tok);
      results[name] = { p50: median(lat), p95: pct(lat, 95), n: lat.length };
      log(`search: ${name} p50 ${results[name].p50} ms, p95 ${results[name].p95} ms`);
    };
    try {
      // hits per tenant for the text terms (for the report)
      const sample = await fetch(`http://127.0.0.1:${PORT}/v1/search?table=run_logs&q=pipeline&limit=1`, { headers: { authorization: tokenOf(0) } });
      const hitsPerTenant = ((await sample.json()) as { total: number }).total;
      const ilike = (term: string, limit = 20) => `/v1/tables/run_logs/rows?message=ilike.${enc(`*${term}*`)}&limit=${limit}&count=exact`;
      // Warm the caches for every query shape and tenant first, so the first measured series does
      // not pay for reading the heap from disk while the later ones do not.
      await measure(TENANTS.length * TEXT_QUERIES.length, (i) => [{ method: 'GET', path: `/v1/search?table=run_logs&q=${enc(TEXT_QUERIES[i % TEXT_QUERIES.length]!)}&facets=level&limit=20` }], (i) => tokenOf(Math.floor(i / TEXT_QUERIES.length)));
      await measure(TENANTS.length * FUZZY_QUERIES.length, (i) => [{ method: 'GET', path: `/v1/search?table=run_logs&q=${enc(FUZZY_QUERIES[i % FUZZY_QUERIES.length]!)}&fuzzy=true&limit=20` }], (i) => tokenOf(Math.floor(i / FUZZY_QUERIES.length)));
      await run('text', N, (i) => [{ method: 'GET', path: `/v1/search?table=run_logs&q=${enc(TEXT_QUERIES[i % TEXT_QUERIES.length]!)}&limit=20` }]);
      // the old way is 10-40x slower: fewer samples keep the scenario within a few minutes
      const OLD_N = Math.ceil(N / 4);
      await run('text-ilike', OLD_N, (i) => [{ method: 'GET', path: ilike(ILIKE_TERMS[i % ILIKE_TERMS.length]!) }]);
      await run('fuzzy', N, (i) => [{ method: 'GET', path: `/v1/search?table=run_logs&q=${enc(FUZZY_QUERIES[i % FUZZY_QUERIES.length]!)}&fuzzy=true&limit=20` }]);
      await run('fuzzy-ilike', OLD_N, (i) => [{ method: 'GET', path: ilike(FUZZY_QUERIES[i % FUZZY_QUERIES.length]!) }]);
      await run('faceted', N, (i) => [{ method: 'GET', path: `/v1/search?table=run_logs&q=${enc(TEXT_QUERIES[i % TEXT_QUERIES.length]!)}&facets=level&level=neq.debug&limit=20` }]);
      await run('faceted-ilike', OLD_N, (i) => {
        const term = ILIKE_TERMS[i % ILIKE_TERMS.length]!;
        return [
          { method: 'GET', path: `${ilike(term)}&level=neq.debug` },
          ...['info', 'warn', 'error'].map((level) => ({ method: 'GET' as const, path: `${ilike(term, 1)}&level=eq.${level}` })),
        ];
      });
      const common = await measure(Math.ceil(N / 4), () => [{ method: 'GET', path: '/v1/search?table=run_logs&q=started&limit=20' }], tokenOf);
      results['text-common-word'] = { p50: median(common), p95: pct(common, 95), n: common.length };
      const vtoken = tokens[TENANTS.indexOf(VECTOR_TENANT)]!;
      await run(
        'vector',
        VECTOR_N,
        () => [{ method: 'POST', path: '/v1/search', body: { table: 'documents', vector: Array.from({ length: DIMS }, () => Math.random() * 2 - 1), k: 10 } }],
        () => vtoken,
      );
      const ratio = (a: string, b: string) => `${(results[b]!.p95 / results[a]!.p95).toFixed(1)}x`;
      const md = [
        `## Search: ${TENANTS.length} tenants x ${ROWS_PER_TENANT.toLocaleString()} run_logs; sequential requests through HTTP (noisy if other work shares the machine)`,
        '',
        `"pipeline" matches ${hitsPerTenant.toLocaleString()} rows in one tenant; queries rotate over tenants and terms. Old way = rows API \`message=ilike.*term*&limit=20&count=exact\` in the tenant session.`,
        '',
        '| query | Strata search p50 / p95 ms | old way (ILIKE) p50 / p95 ms | p95 ratio (old / search) |',
        '|---|---:|---:|---:|',
        `| text (target p95 < 30 ms) | ${results['text']!.p50} / ${results['text']!.p95} | ${results['text-ilike']!.p50} / ${results['text-ilike']!.p95} | ${ratio('text', 'text-ilike')} |`,
        `| fuzzy, misspelled word (target p95 < 60 ms) | ${results['fuzzy']!.p50} / ${results['fuzzy']!.p95} | ${results['fuzzy-ilike']!.p50} / ${results['fuzzy-ilike']!.p95} (finds nothing) | ${ratio('fuzzy', 'fuzzy-ilike')} |`,
        `| faceted (facets=level, level filter) | ${results['faceted']!.p50} / ${results['faceted']!.p95} | ${results['faceted-ilike']!.p50} / ${results['faceted-ilike']!.p95} (page + 3 counts) | ${ratio('faceted', 'faceted-ilike')} |`,
        `| text, a word in ~18% of rows ("started") | ${results['text-common-word'].p50} / ${results['text-common-word'].p95} | | |`,
        `| vector top-10, ${VECTOR_ROWS.toLocaleString()} x ${DIMS} dims, exact cosine (no pgvector) | ${results['vector']!.p50} / ${results['vector']!.p95} | | |`,
      ];
      return { md, json: { hitsPerTenant, results } };
    } finally {
      await stop(server);
    }
  },
};

export default scenario;
