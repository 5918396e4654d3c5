/**
 * Search (SPEC 10) end to end against the real PostgreSQL and Redis: ranking by column weight,
 * websearch syntax (phrase, OR, exclusion), typo tolerance, facets under filters, keyset paging,
 * highlights, tenant isolation of hits/facets/totals, exact vector top-k against a brute-force
 * computation, hybrid RRF, GraphQL, and the 400 paths (nothing written).
 */
import { randomUUID } from 'node:crypto';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createJobs, type JobsService } from '../src/jobs/queues.js';
import type { SessionContext } from '../src/db/session.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { REDIS_URL } from './helpers/databases.js';

const log = pino({ level: 'silent' });
const DIMS = 384;

interface Doc {
  title: string;
  body: string;
  kind: 'article' | 'note' | 'faq';
  status: 'draft' | 'published' | 'archived';
  embedding: number[] | null;
}

/** Deterministic pseudo-random numbers (mulberry32), so a failure can be replayed. */
function rng(seed: number) {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(42);
const randomVector = () => Array.from({ length: DIMS }, () => Math.fround(rand() * 2 - 1));
const cosine = (a: number[], b: number[]) => {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return dot / (Math.sqrt(na) * Math.sqrt(nb));
};

const ACME_TEXT: Doc[] = [
  { title: 'Pipeline runbook', body: 'How to restart things safely', kind: 'article', status: 'published', embedding: null },
  { title: 'Operations guide', body: 'Restart the pipeline when the cache misses', kind: 'article', status: 'published', embedding: null },
  { title: 'Deploy checklist', body: 'Deploy the pipeline to production carefully', kind: 'faq', status: 'published', embedding: null },
  { title: 'Cache tuning', body: 'The cache of the build step', kind: 'note', status: 'published', embedding: null },
  { title: 'Pipeline failure modes', body: 'Retrying a connection after a timeout', kind: 'faq', status: 'draft', embedding: null },
  { title: 'Onboarding', body: 'Every new pipeline starts paused', kind: 'note', status: 'archived', embedding: null },
];
const GLOBEX_TEXT: Doc[] = [
  { title: 'Globex pipeline secret', body: 'A pipeline for globex only, pipline spelled badly', kind: 'article', status: 'published', embedding: null },
  { title: 'Globex pipeline notes', body: 'pipeline pipeline pipeline', kind: 'faq', status: 'published', embedding: null },
];
const ACME_VECTORS: Doc[] = Array.from({ length: 60 }, (_, i) => ({ title: `Vector doc ${i}`, body: i % 2 ? 'embedding about pipelines' : 'embedding about caches', kind: (['article', 'note', 'faq'] as const)[i % 3]!, status: 'published', embedding: randomVector() }));
const QUERY_VECTOR = randomVector();
// globex's vectors are the query itself and its near copies: they would win every ranking if visible
const GLOBEX_VECTORS: Doc[] = Array.from({ length: 5 }, (_, i) => ({ title: `Globex vector ${i}`, body: 'embedding about pipelines', kind: 'article', status: 'published', embedding: QUERY_VECTOR.map((x, j) => (j === i ? x + 0.001 : x)) }));

const words = (s: string) => s.toLowerCase().split(/[^a-z]+/).filter(Boolean);
const mentions = (d: Doc, w: string) => [...words(d.title), ...words(d.body)].some((x) => x === w || x === `${w}s`);

describe('search', () => {
  const prefix = `test-${randomUUID()}`;
  let t: TestApp;
  let jobs: JobsService;
  const ids = new Map<string, number>(); // title -> id
  const tenantOfId = new Map<number, string>();

  const ctxOf = (tenant: string): SessionContext => ({ tenantId: tenant, actor: 'test', role: 'writer', requestId: 'test', stats: { count: 0, ms: 0 } }) as unknown as SessionContext;
  async function insert(tenant: string, docs: Doc[]) {
    await t.db.withTenant(ctxOf(tenant), async (tx) => {
      for (const d of docs) {
        const { rows } = await tx.query<{ id: string }>('INSERT INTO documents (title, body, kind, status, embedding) VALUES ($1, $2, $3, $4, $5) RETURNING id', [
          d.title,
          d.body,
          d.kind,
          d.status,
          d.embedding,
        ]);
        ids.set(d.title, Number(rows[0]!.id));
        tenantOfId.set(Number(rows[0]!.id), tenant);
      }
    });
  }
  const get = async (qs: string, role: Parameters<TestApp['auth']>[0] = 'reader', tenant = 'acme') =>
    t.app.inject({ url: `/v1/search?${qs}`, headers: await t.auth(role, tenant) });
  const post = async (body: unknown, tenant = 'acme') => t.app.inject({ method: 'POST', url: '/v1/search', headers: await t.auth('reader', tenant), payload: body as object });
  const titles = (res: { json(): unknown }) => (res.json() as { data: Array<{ row: { title: string } }> }).data.map((h) => h.row.title);

  beforeAll(async () => {
    jobs = createJobs({ redisUrl: REDIS_URL, prefix, log });
    t = await createTestApp({ seed: true, jobs });
    await insert('acme', [...ACME_TEXT, ...ACME_VECTORS]);
    await insert('globex', [...GLOBEX_TEXT, ...GLOBEX_VECTORS]);
  });
  afterAll(async () => {
    await t?.close();
    if (jobs) {
      for (const q of Object.values(jobs.queues)) await q.obliterate({ force: true });
      await jobs.close();
    }
  });

  it('ranks title (weight A) matches above body (weight B) matches, with highlighted snippets', async () => {
    const res = await get('table=documents&q=pipeline&limit=100');
    expect(res.statusCode).toBe(200);
    const body = res.json<{ data: Array<{ row: { title: string; id: string }; score: number; match: string; highlights: Record<string, string> }>; total: number }>();
    const acmeText = [...ACME_TEXT, ...ACME_VECTORS].filter((d) => mentions(d, 'pipeline'));
    expect(body.total).toBe(acmeText.length);
    const inTitle = body.data.filter((h) => words(h.row.title).some((w) => w.startsWith('pipeline')));
    const bodyOnly = body.data.filter((h) => !words(h.row.title).some((w) => w.startsWith('pipeline')));
    expect(inTitle.length).toBeGreaterThan(0);
    expect(bodyOnly.length).toBeGreaterThan(0);
    expect(Math.min(...inTitle.map((h) => h.score))).toBeGreaterThan(Math.max(...bodyOnly.map((h) => h.score)));
    expect(body.data.slice(0, inTitle.length).map((h) => h.row.title)).toEqual(inTitle.map((h) => h.row.title));
    expect(body.data.every((h) => h.match === 'text')).toBe(true);
    const runbook = body.data.find((h) => h.row.title === 'Pipeline runbook')!;
    expect(runbook.highlights['title']).toContain('<mark>Pipeline</mark>');
    expect(runbook.row).not.toHaveProperty('search_tsv');
  });

  it('honours phrases, OR and -exclusion (websearch syntax)', async () => {
    const phrase = await get(`table=documents&q=${encodeURIComponent('"restart the pipeline"')}`);
    expect(phrase.statusCode).toBe(200);
    expect(titles(phrase)).toEqual(['Operations guide']);
    const excluded = await get(`table=documents&q=${encodeURIComponent('pipeline -deploy')}&limit=100`);
    const expected = ACME_TEXT.concat(ACME_VECTORS).filter((d) => mentions(d, 'pipeline') && !mentions(d, 'deploy'));
    expect(titles(excluded).sort()).toEqual(expected.map((d) => d.title).sort());
    expect(titles(excluded)).not.toContain('Deploy checklist');
    const or = await get(`table=documents&q=${encodeURIComponent('timeout OR onboarding')}`);
    expect(titles(or).sort()).toEqual(['Onboarding', 'Pipeline failure modes']);
  });

  it('finds "pipeline" for the typo "pipline" only with fuzzy on, after the text matches', async () => {
    const strict = await get('table=documents&q=pipline');
    expect(strict.statusCode).toBe(200);
    expect(strict.json().data).toEqual([]);
    const fuzzy = await get('table=documents&q=pipline&fuzzy=true&limit=100');
    expect(fuzzy.statusCode).toBe(200);
    const hits = fuzzy.json().data as Array<{ row: { title: string; body: string }; match: string; score: number }>;
    expect(hits.length).toBeGreaterThan(0);
    expect(hits.every((h) => h.match === 'fuzzy' && h.score > 0)).toBe(true);
    expect(hits.map((h) => h.row.title)).toContain('Pipeline runbook');
    expect(hits.every((h) => /pipeline/i.test(`${h.row.title} ${h.row.body}`))).toBe(true);
    // run_logs: the seeded message "pipeline cache miss"
    const logs = await get('table=run_logs&q=pipline%20cach&fuzzy=true&limit=5');
    expect(logs.statusCode).toBe(200);
    expect((logs.json().data as Array<{ row: { message: string } }>).every((h) => h.row.message.includes('pipeline cache miss'))).toBe(true);
    expect(logs.json().data.length).toBe(5);
  });

  it('counts facets under the same query and filters', async () => {
    const res = await get('table=documents&q=pipeline&facets=kind,status&status=neq.archived&limit=1');
    expect(res.statusCode).toBe(200);
    const body = res.json<{ facets: Record<string, Array<{ value: string; count: number }>>; total: number; data: unknown[] }>();
    const matching = [...ACME_TEXT, ...ACME_VECTORS].filter((d) => mentions(d, 'pipeline') && d.status !== 'archived');
    const count = (key: 'kind' | 'status') => {
      const m = new Map<string, number>();
      for (const d of matching) m.set(d[key], (m.get(d[key]) ?? 0) + 1);
      return Object.fromEntries(m);
    };
    const asMap = (xs: Array<{ value: string; count: number }>) => Object.fromEntries(xs.map((x) => [x.value, x.count]));
    expect(asMap(body.facets['kind']!)).toEqual(count('kind'));
    expect(asMap(body.facets['status']!)).toEqual(count('status'));
    expect(body.total).toBe(matching.length);
    expect(body.data).toHaveLength(1);
    // run_logs by level, filtered to one run: the counts match the rows API's own counts
    const logs = await get('table=run_logs&q=cache&facets=level&level=in.(info,warn)');
    expect(logs.statusCode).toBe(200);
    const levels = logs.json().facets.level as Array<{ value: string; count: number }>;
    for (const { value, count: n } of levels) {
      const rows = await t.app.inject({ url: `/v1/tables/run_logs/rows?level=eq.${value}&message=ilike.*cache*&count=exact&limit=1`, headers: await t.auth('reader', 'acme') });
      expect(rows.json().total).toBe(n);
    }
    expect(levels.map((l) => l.value).sort()).toEqual(['info', 'warn']);
  });

  it("never shows another tenant's documents in hits, facets or totals", async () => {
    const acme = await get('table=documents&q=pipeline&facets=kind&limit=100');
    const body = acme.json<{ data: Array<{ row: { id: string; tenant_id: string } }>; facets: { kind: Array<{ count: number }> }; total: number }>();
    expect(body.data.every((h) => h.row.tenant_id === 'acme' && tenantOfId.get(Number(h.row.id)) === 'acme')).toBe(true);
    const acmeCount = [...ACME_TEXT, ...ACME_VECTORS].filter((d) => mentions(d, 'pipeline')).length;
    expect(body.total).toBe(acmeCount);
    expect(body.facets.kind.reduce((s, f) => s + f.count, 0)).toBe(acmeCount);
    const fuzzy = await get('table=documents&q=globex%20secret&fuzzy=true');
    expect(fuzzy.json().data).toEqual([]);
    expect(fuzzy.json().total).toBe(0);
    const globex = await get('table=documents&q=pipeline&limit=100', 'reader', 'globex');
    const globexCount = [...GLOBEX_TEXT, ...GLOBEX_VECTORS].filter((d) => mentions(d, 'pipeline')).length;
    expect(globex.json().total).toBe(globexCount);
    expect((globex.json().data as Array<{ row: { tenant_id: string } }>).every((h) => h.row.tenant_id === 'globex')).toBe(true);
    // a forged filter on tenant_id finds nothing either
    const forged = await get('table=documents&q=pipeline&tenant_id=eq.globex');
    expect(forged.json().total).toBe(0);
    // vectors: globex's copies of the query vector never reach acme's top-k
    const vec = await post({ table: 'documents', vector: QUERY_VECTOR, k: 20 });
    expect((vec.json().data as Array<{ row: { tenant_id: string } }>).every((h) => h.row.tenant_id === 'acme')).toBe(true);
  });

  it('pages with an opaque keyset cursor through the same ranking', async () => {
    const all = await get('table=documents&q=pipeline%20OR%20cache&limit=100');
    const expected = titles(all);
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const res = await get(`table=documents&q=pipeline%20OR%20cache&limit=4${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
      expect(res.statusCode).toBe(200);
      seen.push(...titles(res));
      cursor = res.json().next_cursor as string | null;
    } while (cursor);
    expect(seen).toEqual(expected);
    expect(expected.length).toBeGreaterThan(8);
  });

  it('returns the exact vector top-k: the same as a brute-force cosine computation', async () => {
    const k = 10;
    const res = await post({ table: 'documents', vector: QUERY_VECTOR, k });
    expect(res.statusCode).toBe(200);
    const got = res.json().data as Array<{ row: { title: string }; score: number }>;
    const brute = ACME_VECTORS.map((d) => ({ title: d.title, id: ids.get(d.title)!, score: cosine(d.embedding!, QUERY_VECTOR) }))
      .sort((a, b) => b.score - a.score || a.id - b.id)
      .slice(0, k);
    expect(got.map((h) => h.row.title)).toEqual(brute.map((b) => b.title));
    got.forEach((h, i) => expect(h.score).toBeCloseTo(brute[i]!.score, 6));
    // with a filter: brute force over the filtered set
    const notes = await post({ table: 'documents', vector: QUERY_VECTOR, k: 5, filters: { kind: 'eq.note' } });
    const bruteNotes = ACME_VECTORS.filter((d) => d.kind === 'note')
      .map((d) => ({ title: d.title, score: cosine(d.embedding!, QUERY_VECTOR) }))
      .sort((a, b) => b.score - a.score)
      .slice(0, 5);
    expect(titles(notes)).toEqual(bruteNotes.map((b) => b.title));
  });

  it('fuses the text and vector rankings by reciprocal rank fusion (k = 60)', async () => {
    const text = await get('table=documents&q=pipelines&limit=100');
    const vec = await post({ table: 'documents', vector: QUERY_VECTOR, k: 100 });
    const fused = new Map<string, number>();
    titles(text).forEach((x, i) => fused.set(x, (fused.get(x) ?? 0) + 1 / (60 + i + 1)));
    titles(vec).forEach((x, i) => fused.set(x, (fused.get(x) ?? 0) + 1 / (60 + i + 1)));
    const expected = [...fused.entries()].sort((a, b) => b[1] - a[1] || ids.get(a[0])! - ids.get(b[0])!).slice(0, 10);
    const res = await post({ table: 'documents', q: 'pipelines', vector: QUERY_VECTOR, k: 10, hybrid: true });
    expect(res.statusCode).toBe(200);
    const got = res.json().data as Array<{ row: { title: string }; score: number; text_rank: number | null; vector_rank: number | null }>;
    expect(got.map((h) => h.row.title)).toEqual(expected.map((e) => e[0]));
    got.forEach((h, i) => expect(h.score).toBeCloseTo(expected[i]![1], 10));
    expect(got.some((h) => h.text_rank !== null && h.vector_rank !== null)).toBe(true);
  });

  it('serves the GraphQL search query from the same service', async () => {
    const res = await t.app.inject({
      method: 'POST',
      url: '/graphql',
      headers: await t.auth('reader', 'acme'),
      payload: { query: '{ search(table: "documents", q: "pipeline", facets: ["kind"], filter: { status: "eq.published" }, limit: 2) { hits { row score match highlights } facets total nextCursor } }' },
    });
    expect(res.statusCode).toBe(200);
    const s = res.json().data.search as { hits: Array<{ row: { status: string; tenant_id: string } }>; total: number; nextCursor: string | null; facets: { kind: unknown[] } };
    const expected = [...ACME_TEXT, ...ACME_VECTORS].filter((d) => mentions(d, 'pipeline') && d.status === 'published').length;
    expect(s.total).toBe(expected);
    expect(s.hits).toHaveLength(2);
    expect(s.hits.every((h) => h.row.status === 'published' && h.row.tenant_id === 'acme')).toBe(true);
    expect(s.nextCursor).toEqual(expect.any(String));
    expect(s.facets.kind.length).toBeGreaterThan(0);
  });

  it('keeps the tsvector column out of the rows API, table metadata and writes', async () => {
    const meta = await t.app.inject({ url: '/v1/tables/run_logs', headers: await t.auth('reader', 'acme') });
    expect((meta.json().data.columns as Array<{ name: string }>).map((c) => c.name)).not.toContain('search_tsv');
    const rows = await t.app.inject({ url: '/v1/tables/documents/rows?limit=1', headers: await t.auth('reader', 'acme') });
    expect(rows.json().data[0]).not.toHaveProperty('search_tsv');
    const write = await t.app.inject({ method: 'POST', url: '/v1/tables/documents/rows', headers: await t.auth('writer', 'acme'), payload: { title: 'x', search_tsv: 'x' } });
    expect(write.statusCode).toBe(400);
    expect(write.json().error.code).toBe('UNKNOWN_COLUMN');
    const written = await t.db.adminQuery("SELECT count(*)::int AS n FROM documents WHERE title = 'x'");
    expect(written.rows[0]!['n']).toBe(0);
  });

  it('marks the match operators LEAKPROOF so GIN indexes serve searches under row-level security', async () => {
    // Under RLS a condition becomes an index condition ahead of the tenant policy only when its
    // function is leakproof; otherwise every row of the tenant is filtered instead.
    const { rows } = await t.db.adminQuery<{ proname: string; proleakproof: boolean }>(
      "SELECT proname, proleakproof FROM pg_proc WHERE proname IN ('ts_match_vq', 'word_similarity_op', 'word_similarity_commutator_op') AND pronargs = 2 AND proargtypes[0] IN ('tsvector'::regtype, 'text'::regtype) ORDER BY 1",
    );
    expect(rows).toEqual([
      { proname: 'ts_match_vq', proleakproof: true },
      { proname: 'word_similarity_commutator_op', proleakproof: true },
      { proname: 'word_similarity_op', proleakproof: true },
    ]);
    // (the plans themselves are looked at in bench/scenarios/search.ts, on 1M rows)
  });

  describe('bad input -> 400 with a stable code', () => {
    const cases: Array<[string, string, number, string]> = [
      ['empty q', 'table=documents&q=%20%20', 400, 'EMPTY_QUERY'],
      ['missing q', 'table=documents', 400, 'EMPTY_QUERY'],
      ['q too long', `table=documents&q=${'a'.repeat(300)}`, 400, 'QUERY_TOO_LONG'],
      ['unknown facet column', 'table=documents&q=pipeline&facets=kind,nope', 400, 'UNKNOWN_FACET_COLUMN'],
      ['array facet column', 'table=documents&q=pipeline&facets=embedding', 400, 'INVALID_FACET_COLUMN'],
      ['unindexed table', 'table=run_steps&q=build', 400, 'TABLE_NOT_SEARCHABLE'],
      ['unknown table', 'table=nope&q=build', 400, 'TABLE_NOT_SEARCHABLE'],
      ['unknown filter column', 'table=documents&q=pipeline&nope=eq.1', 400, 'UNKNOWN_COLUMN'],
      ['filter on the hidden tsvector', 'table=documents&q=pipeline&search_tsv=eq.x', 400, 'UNKNOWN_COLUMN'],
      ['order', 'table=documents&q=pipeline&order=id', 400, 'ORDER_NOT_SUPPORTED'],
      ['limit too large', 'table=documents&q=pipeline&limit=1000', 400, 'LIMIT_TOO_LARGE'],
      ['tampered cursor', 'table=documents&q=pipeline&cursor=abc.def', 400, 'INVALID_CURSOR'],
    ];
    it.each(cases)('%s', async (_name, qs, status, code) => {
      const before = await t.db.adminQuery('SELECT (SELECT count(*) FROM documents)::int AS d, (SELECT count(*) FROM strata.search_indexes)::int AS s');
      const res = await get(qs);
      expect(res.statusCode).toBe(status);
      expect(res.json().error.code).toBe(code);
      const after = await t.db.adminQuery('SELECT (SELECT count(*) FROM documents)::int AS d, (SELECT count(*) FROM strata.search_indexes)::int AS s');
      expect(after.rows).toEqual(before.rows);
    });

    it('refuses a cursor of another query', async () => {
      const first = await get('table=documents&q=pipeline&limit=1');
      const res = await get(`table=documents&q=cache&limit=1&cursor=${encodeURIComponent(first.json().next_cursor as string)}`);
      expect(res.statusCode).toBe(400);
      expect(res.json().error.code).toBe('INVALID_CURSOR');
    });

    const bodies: Array<[string, unknown, string]> = [
      ['vector of the wrong dimension', { table: 'documents', vector: [1, 2, 3] }, 'VECTOR_DIMENSION_MISMATCH'],
      ['zero vector', { table: 'documents', vector: new Array(DIMS).fill(0) }, 'ZERO_VECTOR'],
      ['vector on a table without one', { table: 'run_logs', vector: [1] }, 'NO_VECTOR_COLUMN'],
      ['k out of range', { table: 'documents', vector: QUERY_VECTOR, k: 0 }, 'INVALID_K'],
      ['hybrid without a vector', { table: 'documents', q: 'pipeline', hybrid: true }, 'HYBRID_NEEDS_QUERY_AND_VECTOR'],
      ['q and vector without hybrid', { table: 'documents', q: 'pipeline', vector: QUERY_VECTOR }, 'AMBIGUOUS_SEARCH'],
      ['neither q nor vector', { table: 'documents' }, 'EMPTY_QUERY'],
      ['a vector with a string', { table: 'documents', vector: ['x'] }, 'VALIDATION_FAILED'],
      ['unknown body field', { table: 'documents', q: 'x', nope: 1 }, 'VALIDATION_FAILED'],
    ];
    it.each(bodies)('POST: %s', async (_name, body, code) => {
      const res = await post(body);
      expect(res.statusCode).toBe(400);
      expect(res.json().error.code).toBe(code);
    });
  });
});
