/**
 * The PostgREST face (/rest/v1) driven by the real clients, @supabase/postgrest-js and
 * @supabase/supabase-js, against a listening app over the fixture schema in
 * test/fixtures/postgrest-schema.sql. Headers the clients hide are checked with fetch.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { PostgrestClient } from '@supabase/postgrest-js';
import { createClient, type SupabaseClient } from '@supabase/supabase-js';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';

type Json = Record<string, unknown>;
const FIXTURE = readFileSync(path.join(import.meta.dirname, 'fixtures', 'postgrest-schema.sql'), 'utf8');

const SEED = `
INSERT INTO authors (id, tenant_id, name, mood, meta, active) VALUES
  (1, 'acme', 'Ann', 'happy', '{"city":"Oslo","n":1,"tags":["a","b"]}', '[1,10)'),
  (2, 'acme', 'Bob', 'sad', '{"city":"Rome","n":2}', '[20,30)'),
  (3, 'acme', 'Cid', NULL, NULL, NULL),
  (11, 'globex', 'Gail', 'calm', '{"city":"Oslo"}', '[1,10)');
INSERT INTO author_profiles (author_id, tenant_id, bio) VALUES (1, 'acme', 'writes about fjords'), (11, 'globex', 'secret bio');
INSERT INTO books (id, tenant_id, author_id, title, pages, tags) VALUES
  (1, 'acme', 1, 'Alpha', 350, '{x,y}'), (2, 'acme', 1, 'Beta', 120, '{y}'),
  (3, 'acme', 2, 'Gamma', 500, '{z}'), (4, 'acme', 2, 'Delta', NULL, '{}'),
  (11, 'globex', 11, 'Globex secrets', 400, '{x}');
INSERT INTO genres (id, tenant_id, name) VALUES (1, 'acme', 'sf'), (2, 'acme', 'drama'), (11, 'globex', 'spy');
INSERT INTO book_genres (tenant_id, book_id, genre_id) VALUES ('acme', 1, 1), ('acme', 1, 2), ('acme', 3, 2), ('globex', 11, 11);
INSERT INTO editions (tenant_id, book_id, edition_no, published) VALUES ('acme', 1, 1, '2020-01-01'), ('acme', 1, 2, '2021-06-01');
INSERT INTO reviews (id, tenant_id, reviewer_id, subject_id, stars) VALUES (1, 'acme', 2, 1, 5);
SELECT setval(pg_get_serial_sequence('public.authors', 'id'), 100), setval(pg_get_serial_sequence('public.books', 'id'), 100),
       setval(pg_get_serial_sequence('public.reviews', 'id'), 100), setval(pg_get_serial_sequence('public.genres', 'id'), 100);
`;

describe('PostgREST face (/rest/v1) with postgrest-js and supabase-js', () => {
  let t: TestApp;
  let base: string;
  let readerJwt: string;
  let writerJwt: string;
  let globexWriterJwt: string;
  /** postgrest-js as an acme writer. */
  let pg: PostgrestClient;
  /** supabase-js with an acme reader token as its key. */
  let sb: SupabaseClient;
  /** supabase-js as a globex writer. */
  let globex: SupabaseClient;

  const supabase = (key: string) =>
    createClient(base, key, { auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false }, realtime: { transport: WebSocket as never } });
  const rest = (token: string) => new PostgrestClient(`${base}/rest/v1`, { headers: { Authorization: `Bearer ${token}` } });
  const sql = async <R extends Json>(text: string, values: unknown[] = []) => (await t.db.adminQuery<R>(text, values)).rows;
  const raw = async (p: string, init: { method?: string; headers?: Record<string, string>; body?: string; token?: string } = {}) => {
    const res = await fetch(`${base}/rest/v1${p}`, {
      method: init.method ?? 'GET',
      headers: { authorization: `Bearer ${init.token ?? writerJwt}`, ...(init.body !== undefined ? { 'content-type': 'application/json' } : {}), ...init.headers },
      body: init.body,
    });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      /* CSV and the like stay text */
    }
    return { status: res.status, headers: res.headers, body: body as never, text };
  };

  beforeAll(async () => {
    t = await createTestApp();
    await t.db.adminQuery(FIXTURE);
    await t.db.adminQuery(SEED);
    await t.app.services.schema.refresh();
    await t.app.listen({ host: '127.0.0.1', port: 0 });
    const addr = t.app.server.address();
    base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
    readerJwt = await t.token('reader', 'acme');
    writerJwt = await t.token('writer', 'acme');
    globexWriterJwt = await t.token('writer', 'globex');
    pg = rest(writerJwt);
    sb = supabase(readerJwt);
    globex = supabase(globexWriterJwt);
  });
  afterAll(async () => {
    await sb?.removeAllChannels();
    await t?.close();
  });

  describe('reads', () => {
    it('answers a bare JSON array of the tenant rows only (supabase-js .from().select())', async () => {
      const { data, error, status } = await sb.from('authors').select('id,name').order('id');
      expect(error).toBeNull();
      expect(status).toBe(200);
      expect(data).toEqual([
        { id: 1, name: 'Ann' },
        { id: 2, name: 'Bob' },
        { id: 3, name: 'Cid' },
      ]);
      const r = await raw('/authors?select=id&order=id');
      expect(r.headers.get('content-type')).toMatch(/^application\/json/);
      expect(r.headers.get('content-range')).toBe('0-2/*');
    });

    it('counts exactly in Content-Range and answers 206 for a partial range, */0 for none, 416 past the end', async () => {
      const page = await sb.from('books').select('id', { count: 'exact' }).order('id').range(0, 1);
      expect(page.status).toBe(206);
      expect(page.count).toBe(4);
      expect(page.data).toEqual([{ id: 1 }, { id: 2 }]);
      const r = await raw('/books?select=id&order=id&limit=2', { headers: { prefer: 'count=exact' } });
      expect(r.status).toBe(206);
      expect(r.headers.get('content-range')).toBe('0-1/4');
      expect(r.headers.get('preference-applied')).toBe('count=exact');
      const all = await raw('/books?select=id', { headers: { prefer: 'count=exact' } });
      expect(all.status).toBe(200);
      expect(all.headers.get('content-range')).toBe('0-3/4');
      const none = await raw('/books?id=eq.999', { headers: { prefer: 'count=exact' } });
      expect(none.status).toBe(200);
      expect(none.headers.get('content-range')).toBe('*/0');
      expect(none.body).toEqual([]);
      const past = await raw('/books?offset=10', { headers: { prefer: 'count=exact' } });
      expect(past.status).toBe(416);
      expect(past.body).toMatchObject({ code: 'PGRST103', message: 'Requested range not satisfiable' });
      const head = await sb.from('books').select('*', { count: 'exact', head: true });
      expect(head.count).toBe(4);
      expect(head.data).toBeNull();
    });

    it('answers planned and estimated counts with a tenant-only (capped exact) count', async () => {
      for (const method of ['planned', 'estimated'] as const) {
        const r = await sb.from('books').select('id', { count: method });
        expect(r.count).toBe(4);
      }
    });

    it('pages with limit/offset, the Range header, and limit(0)', async () => {
      const { data } = await sb.from('books').select('id').order('id').range(1, 2);
      expect(data).toEqual([{ id: 2 }, { id: 3 }]);
      const r = await raw('/books?select=id&order=id', { headers: { range: '2-3', 'range-unit': 'items' } });
      expect(r.body).toEqual([{ id: 3 }, { id: 4 }]);
      expect(r.headers.get('content-range')).toBe('2-3/*');
      const zero = await sb.from('books').select('id').limit(0);
      expect(zero.status).toBe(200);
      expect(zero.data).toEqual([]);
    });

    it('returns one object for .single() and 406 PGRST116 when not exactly one row', async () => {
      const one = await sb.from('books').select('title').eq('id', 1).single();
      expect(one.data).toEqual({ title: 'Alpha' });
      const many = await sb.from('books').select('title').single();
      expect(many.status).toBe(406);
      expect(many.error).toMatchObject({ code: 'PGRST116', details: 'The result contains 4 rows' });
      const maybe = await sb.from('books').select('title').eq('id', 999).maybeSingle();
      expect(maybe.error).toBeNull();
      expect(maybe.data).toBeNull();
    });

    it('answers text/csv and nulls=stripped', async () => {
      const csv = await sb.from('books').select('id,title,pages').order('id').csv();
      expect(csv.data).toBe('id,title,pages\n1,Alpha,350\n2,Beta,120\n3,Gamma,500\n4,Delta,');
      const stripped = await raw('/books?select=id,pages&id=eq.4', { headers: { accept: 'application/vnd.pgrst.array+json;nulls=stripped' } });
      expect(stripped.body).toEqual([{ id: 4 }]);
      const bad = await raw('/books', { headers: { accept: 'text/xml' } });
      expect(bad.status).toBe(406);
      expect(bad.body).toMatchObject({ code: 'PGRST107' });
    });

    it('selects aliases, casts and JSON paths', async () => {
      const { data, error } = await sb.from('authors').select('ident:id::text,name,city:meta->>city,n:meta->n,meta->tags->0,mood').eq('id', 1).single();
      expect(error).toBeNull();
      expect(data).toEqual({ ident: '1', name: 'Ann', city: 'Oslo', n: 1, '0': 'a', mood: 'happy' });
    });

    it('embeds many-to-one as an object, one-to-many as an array, one-to-one as an object, many-to-many through the join table', async () => {
      const books = await sb.from('books').select('title,authors(name),genres(name),editions(edition_no)').eq('id', 1).single();
      expect(books.error).toBeNull();
      expect(books.data).toEqual({ title: 'Alpha', authors: { name: 'Ann' }, genres: [{ name: 'sf' }, { name: 'drama' }], editions: [{ edition_no: 1 }, { edition_no: 2 }] });
      const authors = await sb.from('authors').select('name,author_profiles(bio),books(title)').order('id').limit(2);
      expect(authors.data).toEqual([
        { name: 'Ann', author_profiles: { bio: 'writes about fjords' }, books: [{ title: 'Alpha' }, { title: 'Beta' }] },
        { name: 'Bob', author_profiles: null, books: [{ title: 'Gamma' }, { title: 'Delta' }] },
      ]);
    });

    it('filters embedded resources, keeps only matching parents with !inner, spreads a to-one embed', async () => {
      const left = await sb.from('authors').select('name,books(title)').gt('books.pages', 400).order('id');
      expect(left.data).toEqual([
        { name: 'Ann', books: [] },
        { name: 'Bob', books: [{ title: 'Gamma' }] },
        { name: 'Cid', books: [] },
      ]);
      const inner = await sb.from('authors').select('name,books!inner(title)').gt('books.pages', 400);
      expect(inner.data).toEqual([{ name: 'Bob', books: [{ title: 'Gamma' }] }]);
      const spread = await sb.from('books').select('title,...authors(author_name:name)').eq('id', 3).single();
      expect(spread.data).toEqual({ title: 'Gamma', author_name: 'Bob' });
      const withBooks = await raw('/authors?select=name,books(id)&books=not.is.null&order=id');
      expect((withBooks.body as Json[]).map((a) => a['name'])).toEqual(['Ann', 'Bob']);
    });

    it('orders by JSON paths and by a to-one embedded column', async () => {
      const byCity = await sb.from('authors').select('id').not('meta', 'is', null).order('meta->>city', { ascending: false });
      expect(byCity.data).toEqual([{ id: 2 }, { id: 1 }]);
      const byAuthor = await raw('/books?select=id,authors(name)&order=authors(name).desc,id.asc');
      expect((byAuthor.body as Json[]).map((b) => b['id'])).toEqual([3, 4, 1, 2]);
      const toMany = await raw('/authors?select=id,books(title)&order=books(title)');
      expect(toMany.status).toBe(400);
      expect(toMany.body).toMatchObject({ code: 'PGRST118' });
    });

    it('answers 300 PGRST201 for an ambiguous embed and resolves it with a hint', async () => {
      const amb = await sb.from('reviews').select('stars,authors(name)');
      expect(amb.status).toBe(300);
      expect(amb.error).toMatchObject({ code: 'PGRST201' });
      expect(amb.error?.hint).toContain('authors!reviews_reviewer_fk');
      const hinted = await sb.from('reviews').select('stars,reviewer:authors!reviews_reviewer_fk(name),subject:authors!subject_id(name)').single();
      expect(hinted.data).toEqual({ stars: 5, reviewer: { name: 'Bob' }, subject: { name: 'Ann' } });
    });

    it('reads a view under the caller tenant, with relationships inferred from its base table', async () => {
      const { data } = await sb.from('long_books').select('title').order('id');
      expect(data).toEqual([{ title: 'Alpha' }, { title: 'Gamma' }]);
      const up = await sb.from('long_books').select('title,authors(name),genres(name)').order('id');
      expect(up.error).toBeNull();
      expect(up.data).toEqual([
        { title: 'Alpha', authors: { name: 'Ann' }, genres: [{ name: 'sf' }, { name: 'drama' }] },
        { title: 'Gamma', authors: { name: 'Bob' }, genres: [{ name: 'drama' }] },
      ]);
      const down = await sb.from('authors').select('name,long_books(title)').order('id');
      expect(down.data).toEqual([
        { name: 'Ann', long_books: [{ title: 'Alpha' }] },
        { name: 'Bob', long_books: [{ title: 'Gamma' }] },
        { name: 'Cid', long_books: [] },
      ]);
    });
  });

  describe('filters', () => {
    const ids = async (q: PromiseLike<{ data: unknown; error: unknown }>) => {
      const { data, error } = await q;
      expect(error).toBeNull();
      return (data as Array<{ id: number }>).map((r) => r.id);
    };
    it('has every comparison, pattern, list, null and distinctness operator', async () => {
      const b = () => sb.from('books').select('id').order('id');
      expect(await ids(b().eq('title', 'Beta'))).toEqual([2]);
      expect(await ids(b().neq('title', 'Beta'))).toEqual([1, 3, 4]);
      expect(await ids(b().gt('pages', 350))).toEqual([3]);
      expect(await ids(b().gte('pages', 350))).toEqual([1, 3]);
      expect(await ids(b().lt('pages', 350))).toEqual([2]);
      expect(await ids(b().lte('pages', 350))).toEqual([1, 2]);
      expect(await ids(b().like('title', '*ta'))).toEqual([2, 4]);
      expect(await ids(b().ilike('title', 'a*'))).toEqual([1]);
      expect(await ids(b().filter('title', 'match', '^[AB]'))).toEqual([1, 2]);
      expect(await ids(b().filter('title', 'imatch', '^g'))).toEqual([3]);
      expect(await ids(b().in('id', [2, 3, 999]))).toEqual([2, 3]);
      expect(await ids(b().is('pages', null))).toEqual([4]);
      expect(await ids(b().not('pages', 'is', null))).toEqual([1, 2, 3]);
      expect(await ids(b().isDistinct('pages', 350))).toEqual([2, 3, 4]);
      expect(await ids(b().likeAnyOf('title', ['A*', 'G*']))).toEqual([1, 3]);
      expect(await ids(b().likeAllOf('title', ['*l*', '*a']))).toEqual([1, 4]);
      expect(await ids(b().filter('id', 'eq(any)', '{1,4}'))).toEqual([1, 4]);
      expect(await ids(b().or('pages.gt.400,title.eq.Beta'))).toEqual([2, 3]);
      expect(await ids(b().or('and(pages.gte.100,pages.lte.200),id.eq.4'))).toEqual([2, 4]);
      expect(await ids(b().not('title', 'in', '(Alpha,Beta)'))).toEqual([3, 4]);
    });

    it('has array, range, full-text and JSON path operators', async () => {
      const b = () => sb.from('books').select('id').order('id');
      expect(await ids(b().contains('tags', ['x']))).toEqual([1]);
      expect(await ids(b().containedBy('tags', ['y', 'z']))).toEqual([2, 3, 4]);
      expect(await ids(b().overlaps('tags', ['x', 'z']))).toEqual([1, 3]);
      expect(await ids(b().textSearch('title', 'gamma'))).toEqual([3]);
      expect(await ids(b().textSearch('title', 'alpha beta', { type: 'websearch' }))).toEqual([]);
      expect(await ids(b().textSearch('title', 'delta', { type: 'plain', config: 'english' }))).toEqual([4]);
      const a = () => sb.from('authors').select('id').order('id');
      expect(await ids(a().rangeLt('active', '[15,16)'))).toEqual([1]);
      expect(await ids(a().rangeGt('active', '[15,16)'))).toEqual([2]);
      // postgrest-js: rangeGte is nxl (&<, does not extend to the right), rangeLte is nxr (&>)
      expect(await ids(a().rangeGte('active', '[15,16)'))).toEqual([1]);
      expect(await ids(a().rangeLte('active', '[15,16)'))).toEqual([2]);
      expect(await ids(a().rangeAdjacent('active', '[10,20)'))).toEqual([1, 2]);
      expect(await ids(a().overlaps('active', '[5,25)'))).toEqual([1, 2]);
      expect(await ids(a().contains('active', '[2,3)'))).toEqual([1]);
      expect(await ids(a().eq('meta->>city', 'Oslo'))).toEqual([1]);
      expect(await ids(a().gt('meta->n', 1))).toEqual([2]);
      expect(await ids(a().contains('meta', { city: 'Rome' }))).toEqual([2]);
      expect(await ids(a().eq('mood', 'sad'))).toEqual([2]);
    });

    it('refuses unknown syntax, columns, tables and aggregates with PostgREST codes, never dropping them', async () => {
      const cases: Array<[string, number, string]> = [
        ['/books?title=nope.x', 400, 'PGRST100'],
        ['/books?title=eq', 400, 'PGRST100'],
        ['/books?select=id,(', 400, 'PGRST100'],
        ['/books?or=(id.eq.1', 400, 'PGRST100'],
        ['/books?limit=-1', 400, 'PGRST100'],
        ['/books?order=id.sideways', 400, 'PGRST100'],
        ['/books?nope=eq.1', 400, '42703'],
        ['/books?select=nope', 400, '42703'],
        ['/books?pages=eq.abc', 400, '22P02'],
        ['/nope', 404, 'PGRST205'],
        ['/books?select=count()', 400, 'PGRST123'],
        ['/books?select=id,nope(id)', 400, 'PGRST200'],
        ['/books?genres.name=eq.sf', 400, 'PGRST108'],
        ['/books?title=fts(nope).x', 400, '42704'],
      ];
      for (const [url, status, code] of cases) {
        const r = await raw(url);
        expect([url, r.status]).toEqual([url, status]);
        expect(r.body).toMatchObject({ code });
        expect(Object.keys(r.body as Json).sort()).toEqual(['code', 'details', 'hint', 'message']);
      }
    });
  });

  describe('writes', () => {
    it('inserts one row (201, no body by default) and answers the representation when asked', async () => {
      const minimal = await pg.from('genres').insert({ name: 'poetry' });
      expect(minimal.status).toBe(201);
      expect(minimal.data).toBeNull();
      const rep = await pg.from('genres').insert({ name: 'essays' }).select('name,tenant_id');
      expect(rep.status).toBe(201);
      expect(rep.data).toEqual([{ name: 'essays', tenant_id: 'acme' }]);
      const headersOnly = await raw('/genres', { method: 'POST', body: '{"id":50,"name":"saga"}', headers: { prefer: 'return=headers-only' } });
      expect(headersOnly.status).toBe(201);
      expect(headersOnly.headers.get('location')).toBe('/genres?id=eq.50');
      expect(headersOnly.text).toBe('');
      const single = await pg.from('genres').insert({ name: 'myth' }).select('name').single();
      expect(single.data).toEqual({ name: 'myth' });
      expect((await sql("SELECT count(*)::int AS n FROM genres WHERE name IN ('poetry','essays','myth') AND tenant_id='acme'"))[0]).toEqual({ n: 3 });
    });

    it('inserts arrays: columns= takes only those keys, missing keys are NULL or, with missing=default, the default', async () => {
      const r = await pg.from('books').insert([{ author_id: 3, title: 'C1', pages: 10 }, { author_id: 3, title: 'C2' }], { defaultToNull: true }).select('title,pages,status');
      expect(r.error).toBeNull();
      expect(r.data).toEqual([
        { title: 'C1', pages: 10, status: 'draft' },
        { title: 'C2', pages: null, status: 'draft' },
      ]);
      const d = await raw('/books?columns=author_id,title,status&select=title,status', {
        method: 'POST',
        body: JSON.stringify([{ author_id: 3, title: 'C3', status: 'final', ignored: 1 }, { author_id: 3, title: 'C4' }]),
        headers: { prefer: 'return=representation,missing=default' },
      });
      expect(d.status).toBe(201);
      expect(d.body).toEqual([
        { title: 'C3', status: 'final' },
        { title: 'C4', status: 'draft' },
      ]);
      expect(d.headers.get('preference-applied')).toContain('missing=default');
      const nulls = await raw('/books?columns=author_id,title,status', { method: 'POST', body: JSON.stringify([{ author_id: 3, title: 'C5' }]) });
      expect(nulls.status).toBe(400);
      expect(nulls.body).toMatchObject({ code: '23502' });
      const mismatch = await raw('/books', { method: 'POST', body: JSON.stringify([{ author_id: 3, title: 'X' }, { title: 'Y' }]) });
      expect(mismatch.status).toBe(400);
      expect(mismatch.body).toMatchObject({ code: 'PGRST102', message: 'All object keys must match' });
      const empty = await raw('/books', { method: 'POST', body: '[]', headers: { prefer: 'return=representation' } });
      expect(empty.status).toBe(201);
      expect(empty.body).toEqual([]);
      expect((await sql("SELECT count(*)::int AS n FROM books WHERE title IN ('C5','X','Y')"))[0]).toEqual({ n: 0 });
    });

    it('upserts on the primary key or on_conflict, merging or ignoring duplicates', async () => {
      const merged = await pg.from('genres').upsert({ id: 1, name: 'science fiction' }).select('id,name');
      expect(merged.status).toBe(201);
      expect(merged.data).toEqual([{ id: 1, name: 'science fiction' }]);
      const ignored = await pg.from('genres').upsert({ id: 2, name: 'ignored' }, { ignoreDuplicates: true }).select('id,name');
      expect(ignored.data).toEqual([]);
      expect((await sql('SELECT name FROM genres WHERE id = 2'))[0]).toEqual({ name: 'drama' });
      const onConflict = await pg.from('editions').upsert({ book_id: 1, edition_no: 2, published: '2022-02-02' }, { onConflict: 'tenant_id,book_id,edition_no' }).select('edition_no,published');
      expect(onConflict.error).toBeNull();
      expect(onConflict.data).toEqual([{ edition_no: 2, published: '2022-02-02' }]);
    });

    it('updates and deletes by filter with PostgREST statuses (204, 200 with representation)', async () => {
      const upd = await pg.from('books').update({ status: 'final' }).eq('author_id', 3);
      expect(upd.status).toBe(204);
      const rep = await pg.from('books').update({ pages: 11 }).eq('title', 'C1').select('title,pages');
      expect(rep.status).toBe(200);
      expect(rep.data).toEqual([{ title: 'C1', pages: 11 }]);
      const del = await pg.from('books').delete().eq('title', 'C4');
      expect(del.status).toBe(204);
      expect((await sql("SELECT count(*)::int AS n FROM books WHERE title = 'C4'"))[0]).toEqual({ n: 0 });
      const bodiless = await raw('/books?title=eq.C3', { method: 'DELETE' });
      expect(bodiless.status).toBe(204);
      const delRep = await pg.from('books').delete().eq('title', 'C2').select('title');
      expect(delRep.data).toEqual([{ title: 'C2' }]);
    });

    it('refuses an unfiltered update or delete (400 21000) and writes nothing', async () => {
      const before = await sql('SELECT count(*)::int AS n FROM books');
      const r = await raw('/books', { method: 'DELETE' });
      expect(r.status).toBe(400);
      expect(r.body).toMatchObject({ code: '21000' });
      const u = await raw('/books', { method: 'PATCH', body: '{"status":"x"}' });
      expect(u.status).toBe(400);
      expect(await sql('SELECT count(*)::int AS n FROM books')).toEqual(before);
      expect((await sql("SELECT count(*)::int AS n FROM books WHERE status = 'x'"))[0]).toEqual({ n: 0 });
    });

    it('rolls back with tx=rollback and enforces max-affected with handling=strict', async () => {
      const rb = await raw('/books?id=eq.2&select=id,title', { method: 'PATCH', body: '{"title":"Rolled"}', headers: { prefer: 'return=representation,tx=rollback' } });
      expect(rb.status).toBe(200);
      expect(rb.body).toEqual([{ id: 2, title: 'Rolled' }]);
      expect(rb.headers.get('preference-applied')).toContain('tx=rollback');
      expect((await sql('SELECT title FROM books WHERE id = 2'))[0]).toEqual({ title: 'Beta' });
      const max = await raw('/books?author_id=in.(1,2)', { method: 'PATCH', body: '{"status":"many"}', headers: { prefer: 'handling=strict,max-affected=1' } });
      expect(max.status).toBe(400);
      expect(max.body).toMatchObject({ code: 'PGRST124' });
      expect((await sql("SELECT count(*)::int AS n FROM books WHERE status = 'many'"))[0]).toEqual({ n: 0 });
      const ok = await raw('/books?id=eq.2', { method: 'PATCH', body: '{"status":"one"}', headers: { prefer: 'handling=strict,max-affected=1' } });
      expect(ok.status).toBe(204);
      const strict = await raw('/books?id=eq.2', { method: 'PATCH', body: '{"status":"x"}', headers: { prefer: 'handling=strict,bogus=1' } });
      expect(strict.status).toBe(400);
      expect(strict.body).toMatchObject({ code: 'PGRST122' });
      expect((await sql('SELECT status FROM books WHERE id = 2'))[0]).toEqual({ status: 'one' });
    });

    it('maps database and payload errors to PostgREST codes and statuses, writing nothing', async () => {
      const dup = await pg.from('genres').insert({ id: 1, name: 'dup' });
      expect(dup.status).toBe(409);
      expect(dup.error).toMatchObject({ code: '23505' });
      expect(dup.error?.message).toContain('duplicate key value violates unique constraint');
      const fk = await pg.from('books').insert({ author_id: 999, title: 'orphan' });
      expect(fk.status).toBe(409);
      expect(fk.error).toMatchObject({ code: '23503' });
      const unknown = await pg.from('genres').insert({ name: 'x', nope: 1 } as never);
      expect(unknown.status).toBe(400);
      expect(unknown.error).toMatchObject({ code: 'PGRST204' });
      const badJson = await raw('/genres', { method: 'POST', body: '{"name": ' });
      expect(badJson.status).toBe(400);
      expect(badJson.body).toMatchObject({ code: 'PGRST102' });
      expect((await sql("SELECT count(*)::int AS n FROM genres WHERE name IN ('dup','x')"))[0]).toEqual({ n: 0 });
      expect((await sql("SELECT count(*)::int AS n FROM books WHERE title = 'orphan'"))[0]).toEqual({ n: 0 });
    });
  });

  describe('tenant isolation and authentication', () => {
    it('keeps other tenants rows out of reads, embeds, counts and writes exactly as /v1 does', async () => {
      const read = await globex.from('books').select('id,title').eq('id', 1);
      expect(read.data).toEqual([]);
      const mine = await globex.from('authors').select('name,author_profiles(bio),books(title)');
      expect(mine.data).toEqual([{ name: 'Gail', author_profiles: { bio: 'secret bio' }, books: [{ title: 'Globex secrets' }] }]);
      const counted = await globex.from('books').select('id', { count: 'estimated', head: true });
      expect(counted.count).toBe(1);
      const upd = await globex.from('books').update({ title: 'stolen' }).eq('id', 1).select('id');
      expect(upd.data).toEqual([]);
      const del = await globex.from('books').delete().eq('id', 1).select('id');
      expect(del.data).toEqual([]);
      const ins = await globex.from('genres').insert({ name: 'planted', tenant_id: 'acme' });
      expect(ins.status).toBe(403);
      expect(ins.error).toMatchObject({ code: '42501' });
      expect((await sql('SELECT title FROM books WHERE id = 1'))[0]).toEqual({ title: 'Alpha' });
      expect((await sql("SELECT count(*)::int AS n FROM genres WHERE name = 'planted'"))[0]).toEqual({ n: 0 });
      const v1 = await t.app.inject({ url: '/v1/tables/books/rows/1', headers: { authorization: `Bearer ${globexWriterJwt}` } });
      expect(v1.statusCode).toBe(404);
      const rpc = await globex.rpc('book_count');
      expect(rpc.data).toBe(1);
    });

    it('refuses anonymous requests, tenantless tokens and readers writing, in PostgREST shape', async () => {
      const anon = await fetch(`${base}/rest/v1/books`);
      expect(anon.status).toBe(401);
      expect(await anon.json()).toMatchObject({ code: 'PGRST302' });
      const platform = await raw('/books', { token: await t.token('platform_admin', null) });
      expect(platform.status).toBe(401);
      expect(platform.body).toMatchObject({ code: 'PGRST301' });
      const expired = await raw('/books', { token: await t.token('reader', 'acme', { expiresIn: -10 }) });
      expect(expired.status).toBe(401);
      const reader = await sb.from('genres').insert({ name: 'reader-write' });
      expect(reader.status).toBe(403);
      expect(reader.error).toMatchObject({ code: '42501' });
      const sneaky = await raw('/genres?name=eq./rpc/x', { method: 'POST', body: '{"name":"reader-write"}', token: readerJwt });
      expect(sneaky.status).toBe(403);
      expect((await sql("SELECT count(*)::int AS n FROM genres WHERE name = 'reader-write'"))[0]).toEqual({ n: 0 });
    });

    it('accepts a Strata API key as the supabase-js key (apikey and Bearer headers)', async () => {
      const key = await t.app.services.apiKeys.create({ requestId: 'test', tenantId: 'acme', actor: 'test', role: 'reader' }, { name: 'pgrst', role: 'reader' });
      const client = supabase(key.key);
      const { data, error } = await client.from('genres').select('id').eq('id', 1);
      expect(error).toBeNull();
      expect(data).toEqual([{ id: 1 }]);
      const viaHeader = await fetch(`${base}/rest/v1/genres?select=id&id=eq.1`, { headers: { apikey: key.key } });
      expect(await viaHeader.json()).toEqual([{ id: 1 }]);
    });

    it('only serves the exposed schema (406 PGRST106)', async () => {
      const r = await raw('/books', { headers: { 'accept-profile': 'strata' } });
      expect(r.status).toBe(406);
      expect(r.body).toMatchObject({ code: 'PGRST106', message: 'The schema must be one of the following: public' });
      expect((await sb.schema('public').from('genres').select('id').eq('id', 1)).data).toEqual([{ id: 1 }]);
    });
  });

  describe('rpc', () => {
    it('calls scalar functions by GET and POST, choosing the overload by argument names', async () => {
      const post = await sb.rpc('add_them', { a: 1, b: 2 });
      expect(post).toMatchObject({ status: 200, data: 3 });
      const three = await sb.rpc('add_them', { a: 1, b: 2, c: 3 });
      expect(three.data).toBe(6);
      const get = await sb.rpc('add_them', { a: 4, b: 5 }, { get: true });
      expect(get.data).toBe(9);
      const missing = await sb.rpc('add_them', { a: 1 });
      expect(missing.status).toBe(404);
      expect(missing.error).toMatchObject({ code: 'PGRST202' });
    });

    it('returns set-returning functions as arrays under RLS, void as 204', async () => {
      const books = await sb.rpc('books_by', { author: 2 });
      expect((books.data as Json[]).map((b) => b['title'])).toEqual(['Gamma', 'Delta']);
      expect((await globex.rpc('books_by', { author: 2 })).data).toEqual([]);
      const v = await pg.rpc('rename_author', { author: 3, new_name: 'Cyd' });
      expect(v.status).toBe(204);
      expect((await sql('SELECT name FROM authors WHERE id = 3'))[0]).toEqual({ name: 'Cyd' });
      const asReader = await sb.rpc('rename_author', { author: 3, new_name: 'Reader' });
      expect(asReader.status).toBe(405);
      expect((await sql('SELECT name FROM authors WHERE id = 3'))[0]).toEqual({ name: 'Cyd' });
    });

    it('reads a set-returning function of a table type like the table: select, filters, order, counts, embeds', async () => {
      const r = await sb.rpc('books_by', { author: 1 }, { count: 'exact' }).select('title,authors(name)').gt('pages', 200).order('title', { ascending: false });
      expect(r.error).toBeNull();
      expect(r.count).toBe(1);
      expect(r.data).toEqual([{ title: 'Alpha', authors: { name: 'Ann' } }]);
      const get = await raw('/rpc/books_by?author=2&select=id&order=id.desc&limit=1');
      expect(get.body).toEqual([{ id: 4 }]);
      const scalar = await raw('/rpc/add_them?a=1&b=2&select=x');
      expect(scalar.status).toBe(400);
      expect(scalar.body).toMatchObject({ code: 'PGRST100' });
    });

    it('refuses SECURITY DEFINER functions', async () => {
      const r = await sb.rpc('all_books_count');
      expect(r.status).toBe(403);
      expect(r.error).toMatchObject({ code: '42501' });
      expect(r.error?.message).toContain('SECURITY DEFINER');
    });

    it('exposes request.jwt.claims, request.method, request.path and request.headers without credentials', async () => {
      const r = await raw('/rpc/request_info', { method: 'POST', body: '{}', headers: { apikey: 'should-not-leak', 'x-trace': 'abc' } });
      expect(r.status).toBe(200);
      const info = r.body as { claims: Json; method: string; path: string; headers: Record<string, string> };
      expect(info.claims).toMatchObject({ role: 'writer', tenant_id: 'acme' });
      expect(info.method).toBe('POST');
      expect(info.path).toBe('/rpc/request_info');
      expect(info.headers['x-trace']).toBe('abc');
      expect(info.headers['authorization']).toBeUndefined();
      expect(info.headers['apikey']).toBeUndefined();
    });
  });

  // Cases ported from postgrest-js's own suite (test/basic, transforms, filters, resource-embedding),
  // run unmodified through the client against Strata over this fixture schema.
  describe("postgrest-js's own cases (a port)", () => {
    it('orders, limits, ranges and filters an embedded resource with referencedTable', async () => {
      const r = await sb
        .from('authors')
        .select('name,books(title)')
        .in('id', [1, 2])
        .order('id')
        .order('title', { referencedTable: 'books', ascending: false })
        .limit(1, { referencedTable: 'books' });
      expect(r.error).toBeNull();
      expect(r.data).toEqual([
        { name: 'Ann', books: [{ title: 'Beta' }] },
        { name: 'Bob', books: [{ title: 'Gamma' }] },
      ]);
      const ranged = await sb.from('authors').select('name,books(title)').eq('id', 1).order('title', { referencedTable: 'books' }).range(1, 1, { referencedTable: 'books' }).single();
      expect(ranged.data).toEqual({ name: 'Ann', books: [{ title: 'Beta' }] });
      const ored = await sb.from('authors').select('name,books(title)').eq('id', 2).or('pages.gt.400,pages.is.null', { referencedTable: 'books' }).single();
      expect(ored.data).toEqual({ name: 'Bob', books: [{ title: 'Gamma' }, { title: 'Delta' }] });
    });

    it('matches several columns at once and filters with the raw filter() form', async () => {
      const m = await sb.from('books').select('id').match({ author_id: 1, title: 'Beta' });
      expect(m.data).toEqual([{ id: 2 }]);
      const f = await sb.from('books').select('id').filter('id', 'in', '(1,3)').order('id');
      expect(f.data).toEqual([{ id: 1 }, { id: 3 }]);
      const n = await sb.from('books').select('id').not('pages', 'is', null).lt('pages', 400).lte('id', 4).order('id');
      expect(n.data).toEqual([{ id: 1 }, { id: 2 }]);
    });

    it('rejects with throwOnError(), errors maybeSingle() on several rows, and refuses explain() and geojson() with 406', async () => {
      await expect(sb.from('no_such_table').select().throwOnError()).rejects.toMatchObject({ code: 'PGRST205' });
      const several = await sb.from('books').select('id').maybeSingle();
      expect(several.error).toMatchObject({ code: 'PGRST116' });
      const plan = await sb.from('books').select('id').explain();
      expect(plan.status).toBe(406);
      expect(plan.error).toMatchObject({ code: 'PGRST107' });
      const geo = await sb.from('books').select('id').geojson();
      expect(geo.status).toBe(406);
    });

    it('counts inserts and deletes, updates with a single() representation, and keeps max-affected', async () => {
      const ins = await pg.from('genres').insert([{ name: 'port-a' }, { name: 'port-b' }], { count: 'exact' }).select('name');
      expect(ins.status).toBe(201);
      expect(ins.count).toBe(2);
      const upd = await pg.from('genres').update({ name: 'port-c' }).eq('name', 'port-a').select('name').single();
      expect(upd).toMatchObject({ status: 200, data: { name: 'port-c' } });
      const capped = await (pg.from('genres').delete().like('name', 'port-%') as unknown as { maxAffected(n: number): PromiseLike<{ status: number; error: unknown }> }).maxAffected(1);
      expect(capped.status).toBe(400);
      expect(capped.error).toMatchObject({ code: 'PGRST124' });
      expect(await sql("SELECT name FROM genres WHERE name LIKE 'port-%' ORDER BY name")).toEqual([{ name: 'port-b' }, { name: 'port-c' }]);
      const del = await pg.from('genres').delete({ count: 'exact' }).like('name', 'port-%');
      expect(del.status).toBe(204);
      expect(del.count).toBe(2);
      expect(await sql("SELECT name FROM genres WHERE name LIKE 'port-%'")).toEqual([]);
    });

    it('counts a set-returning rpc with head: true, and stops on abortSignal() while the server carries on', async () => {
      const head = await sb.rpc('page_counts', undefined, { head: true, count: 'exact' });
      expect(head.error).toBeNull();
      const [expected] = await sql<{ n: number }>("SELECT count(*)::int AS n FROM books WHERE tenant_id = 'acme' AND pages IS NOT NULL");
      expect(head.count).toBe(expected!.n);
      expect(head.data).toBeNull();
      const ac = new AbortController();
      ac.abort();
      const aborted = await sb.from('books').select('id').abortSignal(ac.signal);
      expect(aborted.error).toMatchObject({ message: expect.stringContaining('AbortError') });
      expect((await sb.from('books').select('id').eq('id', 1)).data).toEqual([{ id: 1 }]);
    });
  });

  describe('function arguments and results beyond SETOF a table', () => {
    it('passes the whole body to a single unnamed json argument, and to a json argument with Prefer: params=single-object', async () => {
      const echo = await pg.rpc('echo_json', { any: 'keys', n: [1, 2] });
      expect(echo.error).toBeNull();
      expect(echo.data).toEqual({ any: 'keys', n: [1, 2] });
      const arr = await raw('/rpc/echo_json', { method: 'POST', body: '[1,{"a":2}]' });
      expect(arr.status).toBe(200);
      expect(arr.body).toEqual([1, { a: 2 }]);
      const single = await raw('/rpc/sum_object', { method: 'POST', body: '{"a":2,"b":3.5}', headers: { prefer: 'params=single-object' } });
      expect(single.status).toBe(200);
      expect(single.body).toBe(5.5);
      expect(single.headers.get('preference-applied')).toBe('params=single-object');
      // without the preference the keys are argument names: sum_object has no argument a
      const named = await raw('/rpc/sum_object', { method: 'POST', body: '{"a":2,"b":3.5}' });
      expect(named.status).toBe(404);
      expect(named.body).toMatchObject({ code: 'PGRST202' });
      const byName = await raw('/rpc/sum_object', { method: 'POST', body: '{"payload":{"a":1,"b":1}}' });
      expect(byName.body).toBe(2);
      const none = await raw('/rpc/add_them', { method: 'POST', body: '{"a":1}', headers: { prefer: 'params=single-object' } });
      expect(none.status).toBe(404);
      expect(none.body).toMatchObject({ code: 'PGRST202' });
      const notObject = await raw('/rpc/add_them', { method: 'POST', body: '[1,2]' });
      expect(notObject.status).toBe(400);
      expect(notObject.body).toMatchObject({ code: 'PGRST102' });
    });

    it('reads TABLE(...), SETOF composite and SETOF scalar results with select, filters, order, paging and counts, under RLS', async () => {
      const stats = await sb.rpc('author_stats', undefined, { count: 'exact' }).select('author_id,books').gte('books', 2).order('author_id', { ascending: false });
      expect(stats.error).toBeNull();
      expect(stats.count).toBe(2);
      expect(stats.data).toEqual([
        { author_id: 2, books: 2 },
        { author_id: 1, books: 2 },
      ]);
      const globexStats = await globex.rpc('author_stats').select('author_id');
      expect(globexStats.data).toEqual([{ author_id: 11 }]);
      const lengths = await raw('/rpc/title_lengths?select=t:title,len&len=eq.5&order=title&limit=1');
      expect(lengths.status).toBe(200);
      expect(lengths.body).toEqual([{ t: 'Alpha', len: 5 }]);
      const pages = await raw('/rpc/page_counts?page_counts=gt.200&order=page_counts.desc');
      expect(pages.body).toEqual([500, 350]);
      const csv = await raw('/rpc/page_counts?page_counts=gt.1000', { headers: { accept: 'text/csv' } });
      expect(csv.text).toBe('page_counts');
      const unknown = await raw('/rpc/author_stats?nope=eq.1');
      expect(unknown.status).toBe(400);
      expect(unknown.body).toMatchObject({ code: '42703' });
      const embed = await raw('/rpc/author_stats?select=author_id,authors(name)');
      expect(embed.status).toBe(400);
      expect(embed.body).toMatchObject({ code: 'PGRST200' });
    });

    it('filters a one-row result (OUT parameters, a scalar): the value, or null when filtered out', async () => {
      expect((await raw('/rpc/first_book')).body).toEqual({ id: 1, title: 'Alpha' });
      expect((await raw('/rpc/first_book?select=title&title=eq.Alpha')).body).toEqual({ title: 'Alpha' });
      expect((await raw('/rpc/first_book?title=eq.Nope')).body).toBeNull();
      expect((await raw('/rpc/add_them?a=1&b=2&add_them=gt.2')).body).toBe(3);
      expect((await raw('/rpc/add_them?a=1&b=2&add_them=gt.5')).body).toBeNull();
    });
  });

  describe('views over several tables', () => {
    it('embeds through the view\'s source tables, renamed columns included, in both directions and many-to-many', async () => {
      const r = await sb.from('book_details').select('title,author_name,authors(name),editions(edition_no),genres(id)').eq('id', 1).single();
      expect(r.error).toBeNull();
      expect(r.data).toEqual({ title: 'Alpha', author_name: 'Ann', authors: { name: 'Ann' }, editions: [{ edition_no: 1 }, { edition_no: 2 }], genres: [{ id: 1 }, { id: 2 }] });
      const down = await sb.from('authors').select('name,book_details(title)').eq('id', 2).single();
      expect(down.data).toEqual({ name: 'Bob', book_details: [{ title: 'Gamma' }, { title: 'Delta' }] });
      const inner = await sb.from('book_details').select('id,editions!inner(edition_no)').order('id');
      expect(inner.data).toEqual([{ id: 1, editions: [{ edition_no: 1 }, { edition_no: 2 }] }]);
      // a hint may name the view's own column for the key (writer_id is books.author_id)
      const hinted = await sb.from('book_details').select('id,authors!writer_id(name)').eq('id', 3).single();
      expect(hinted.data).toEqual({ id: 3, authors: { name: 'Bob' } });
    });

    it('keeps other tenants rows out of a view and its embeds', async () => {
      const g = await globex.from('book_details').select('title,authors(name),genres(name)');
      expect(g.data).toEqual([{ title: 'Globex secrets', authors: { name: 'Gail' }, genres: [{ name: 'spy' }] }]);
      const a = await sb.from('authors').select('name,book_details(title)').eq('id', 11);
      expect(a.data).toEqual([]);
    });
  });

  describe('views that would run past row-level security', () => {
    it('refuses views without security_invoker, views over them and materialized views on /rest/v1 and /v1, for every tenant', async () => {
      for (const view of ['leaky_books', 'wrapped_leak', 'book_snapshot']) {
        for (const token of [readerJwt, globexWriterJwt]) {
          const r = await raw(`/${view}?select=title`, { token });
          expect(r.status).toBe(403);
          expect(r.body).toMatchObject({ code: '42501' });
          expect(JSON.stringify(r.body)).not.toContain('Globex secrets');
          expect(JSON.stringify(r.body)).not.toContain('Alpha');
          const v1 = await t.app.inject({ method: 'GET', url: `/v1/tables/${view}/rows`, headers: { authorization: `Bearer ${token}` } });
          expect(v1.statusCode).toBe(403);
          expect(v1.json()).toMatchObject({ error: { code: 'VIEW_NOT_SECURITY_INVOKER' } });
          expect(v1.body).not.toContain('Globex secrets');
        }
        const embed = await raw(`/authors?select=name,${view}(title)`);
        expect(embed.status).toBe(400);
        expect(embed.body).toMatchObject({ code: 'PGRST200' });
      }
      const doc = (await raw('/')).body as { paths: Json };
      expect(Object.keys(doc.paths)).toContain('/book_details');
      expect(Object.keys(doc.paths)).not.toEqual(expect.arrayContaining(['/leaky_books']));
      expect(Object.keys(doc.paths)).not.toContain('/book_snapshot');
      // the view itself does leak when read past the API: the refusal is what protects the tenant
      const direct = await sql<{ n: string }>("SELECT count(*)::text AS n FROM leaky_books WHERE tenant_id = 'globex'");
      expect(direct[0]!.n).toBe('1');
    });
  });

  describe('Prefer: timezone and CSV headers', () => {
    it('answers timestamptz values in the asked time zone for that request only, and ignores an unknown zone unless handling=strict', async () => {
      await pg.from('events').insert({ id: 1, at: '2024-01-01T12:00:00Z' });
      const la = await raw('/events?select=at&id=eq.1', { headers: { prefer: 'timezone=America/Los_Angeles' } });
      expect(la.body).toEqual([{ at: '2024-01-01T04:00:00-08:00' }]);
      expect(la.headers.get('preference-applied')).toBe('timezone=America/Los_Angeles');
      const utc = await raw('/events?select=at&id=eq.1', { headers: { prefer: 'timezone=utc' } });
      expect(utc.body).toEqual([{ at: '2024-01-01T12:00:00+00:00' }]);
      const after = await raw('/events?select=at&id=eq.1');
      expect(after.headers.get('preference-applied')).toBeNull();
      const bogus = await raw('/events?select=at&id=eq.1', { headers: { prefer: 'timezone=Mars/Olympus' } });
      expect(bogus.status).toBe(200);
      expect(bogus.headers.get('preference-applied')).toBeNull();
      const strict = await raw('/events?select=at&id=eq.1', { headers: { prefer: 'handling=strict, timezone=Mars/Olympus' } });
      expect(strict.status).toBe(400);
      expect(strict.body).toMatchObject({ code: 'PGRST122' });
      const rpc = await raw('/rpc/request_info', { method: 'POST', body: '{}', headers: { prefer: 'timezone=Asia/Tokyo' } });
      expect(rpc.status).toBe(200);
    });

    it('answers the header line alone for an empty CSV result', async () => {
      const empty = await sb.from('books').select('id,name:title,...authors(author:name)').eq('id', 999).csv();
      expect(empty.error).toBeNull();
      expect(empty.data).toBe('id,name,author');
      const star = await raw('/genres?id=eq.999', { headers: { accept: 'text/csv' } });
      expect(star.status).toBe(200);
      expect(star.headers.get('content-type')).toMatch(/^text\/csv/);
      expect(star.text).toBe('id,tenant_id,name');
    });
  });

  it('serves an OpenAPI description at the root', async () => {
    const r = await raw('/');
    expect(r.status).toBe(200);
    const doc = r.body as { swagger: string; paths: Json; definitions: Json };
    expect(doc.swagger).toBe('2.0');
    expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(['/books', '/authors', '/long_books', '/rpc/add_them']));
    expect(Object.keys(doc.paths)).not.toContain('/rpc/all_books_count');
    expect(doc.definitions['books']).toMatchObject({ type: 'object' });
  });

  it('never answers 5xx to hostile input and writes nothing (sweep)', async () => {
    const before = await sql("SELECT (SELECT count(*) FROM books)::int AS b, (SELECT count(*) FROM genres)::int AS g, (SELECT count(*) FROM authors)::int AS a");
    const queries = [
      'select=(((&order=id.sideways',
      "title=eq.%27%3B%20DROP%20TABLE%20books%3B--",
      'id=in.(1,2&or=(id.eq.1',
      `select=${'id,'.repeat(500)}id`,
      'select=id::text;drop,title',
      'select=meta->>a->b',
      'pages=gt.99999999999999999999999',
      'tags=cs.notanarray',
      'id=adj.[1,2)',
      'title=match.(((',
      'title=like.%5C',
      'limit=1e9&offset=-3',
      'select=*,authors!nope!inner(*)',
      'select=...books(title)',
      'title=fts.%26%26%26',
      'meta->>x=eq.1&meta->9999999999999=eq.1',
      'and=(title.eq.a,or(pages.gt.1)',
      'not.or=(id.eq.1)',
      'select=id&select=title',
      'title=eq.%00',
    ];
    const bodies = ['{"title": ', '"just a string"', '[1,2,3]', '{"author_id":"abc","title":"x"}', '{"pages":1e400,"author_id":1,"title":"t"}', '{"tags":{"a":1},"author_id":1,"title":"t"}', '{"title":"\\u0000","author_id":1}', `[${'{},'.repeat(50)}{}]`];
    const failures: string[] = [];
    for (const table of ['books', 'authors', 'nope', 'rpc/add_them', 'rpc/nope']) {
      for (const q of queries) {
        for (const method of ['GET', 'DELETE', 'PATCH']) {
          const r = await raw(`/${table}?${q}`, { method, ...(method === 'PATCH' ? { body: '{"title":"swept"}' } : {}) });
          if (r.status >= 500 || (r.status >= 400 && typeof (r.body as Json | null)?.['code'] !== 'string')) failures.push(`${method} ${table}?${q} -> ${r.status} ${r.text.slice(0, 120)}`);
        }
      }
      for (const body of bodies) {
        for (const method of ['POST', 'PATCH']) {
          const r = await raw(`/${table}${method === 'PATCH' ? '?id=eq.999' : ''}`, { method, body });
          if (r.status >= 500) failures.push(`${method} ${table} ${body.slice(0, 40)} -> ${r.status} ${r.text.slice(0, 120)}`);
        }
      }
    }
    expect(failures).toEqual([]);
    expect(await sql("SELECT (SELECT count(*) FROM books)::int AS b, (SELECT count(*) FROM genres)::int AS g, (SELECT count(*) FROM authors)::int AS a")).toEqual(before);
  });
});

describe('PostgREST face: planned and estimated counts are capped exact counts', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ env: { POSTGREST_COUNT_CAP: '2' } });
    await t.db.adminQuery(FIXTURE);
    await t.db.adminQuery(SEED);
    await t.app.services.schema.refresh();
  });
  afterAll(() => t?.close());

  it('counts at most POSTGREST_COUNT_CAP rows for planned/estimated, exactly for exact', async () => {
    const headers = { authorization: `Bearer ${await t.token('reader', 'acme')}` };
    const count = async (method: string) => (await t.app.inject({ url: '/rest/v1/books?select=id&limit=1', headers: { ...headers, prefer: `count=${method}` } })).headers['content-range'];
    expect(await count('exact')).toBe('0-0/4');
    expect(await count('planned')).toBe('0-0/2');
    expect(await count('estimated')).toBe('0-0/2');
  });
});
