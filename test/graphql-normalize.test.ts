import { buildSchema } from 'graphql/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { normalizeLiterals } from '../src/api/graphql/normalize.js';
import { createTestApp, type TestApp } from './helpers/app.js';

const schema = buildSchema(`
  scalar BigInt
  type Item { id: BigInt! name: String }
  input ItemFilter { name: String }
  type Query { item(id: BigInt!): Item, items(first: Int, where: ItemFilter, flag: Boolean): [Item] }
`);

describe('GraphQL literal normalisation', () => {
  it('turns direct scalar arguments into typed variables and keeps everything else', () => {
    const a = normalizeLiterals(schema, '{ item(id: "7") { id name } }', undefined);
    const b = normalizeLiterals(schema, '{ item(id: "8") { id name } }', undefined);
    expect(a?.query).toBe(b?.query);
    expect(a?.query).toContain('$_l0: BigInt!');
    expect(a?.variables).toEqual({ _l0: '7' });
    const c = normalizeLiterals(schema, 'query Q($w: ItemFilter) { items(first: 5, where: $w, flag: true) { id } }', { w: { name: 'x' } });
    expect(c?.variables).toEqual({ w: { name: 'x' }, _l0: true });
    expect(c?.query).toContain('first: 5');
  });

  it('leaves alone what it cannot type, several operations, and text that does not parse', () => {
    expect(normalizeLiterals(schema, '{ item(nope: "7") { id } }', undefined)).toBeUndefined();
    expect(normalizeLiterals(schema, '{ nope(id: "7") { id } }', undefined)).toBeUndefined();
    expect(normalizeLiterals(schema, '{ item(id: "1") { id } } query B { item(id: "2") { id } }', undefined)).toBeUndefined();
    expect(normalizeLiterals(schema, '{ item(id: ', undefined)).toBeUndefined();
    expect(normalizeLiterals(schema, '{ items(where: { name: "x" }) { id } }', undefined)).toBeUndefined();
  });

  it('keeps integers beyond 2^53 exact', () => {
    expect(normalizeLiterals(schema, '{ item(id: 9007199254740993) { id } }', undefined)?.variables).toEqual({ _l0: '9007199254740993' });
  });
});

describe('GraphQL over HTTP with normalised literals', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ seed: true });
  });
  afterAll(() => t.close());

  const gql = async (query: string) => {
    const res = await t.app.inject({ method: 'POST', url: '/graphql', headers: await t.auth('reader', 'acme'), payload: { query } });
    return res.json<{ data: Record<string, { id: string; name: string } | null> | null; errors?: Array<{ extensions: { code: string } }> }>();
  };

  it('answers each literal with its own row (and another tenant row stays null)', async () => {
    const mine = (await t.db.adminQuery<{ id: string; name: string }>("SELECT id::text, name FROM pipelines WHERE tenant_id = 'acme' ORDER BY id LIMIT 3")).rows;
    for (const row of mine) expect((await gql(`{ pipelines_by_pk(id: "${row.id}") { id name } }`)).data?.['pipelines_by_pk']).toEqual(row);
    const theirs = (await t.db.adminQuery<{ id: string }>("SELECT id::text FROM pipelines WHERE tenant_id = 'globex' LIMIT 1")).rows[0]!;
    expect((await gql(`{ pipelines_by_pk(id: "${theirs.id}") { id name } }`)).data?.['pipelines_by_pk']).toBeNull();
  });

  it('still reports validation errors on what the client sent', async () => {
    const res = await gql('{ pipelines_by_pk(id: "1") { id nope } }');
    expect(res.errors?.[0]?.extensions.code).toBe('GRAPHQL_VALIDATION_FAILED');
  });
});
