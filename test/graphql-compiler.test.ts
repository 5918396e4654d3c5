import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, type OperationDefinitionNode } from 'graphql/index.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { compileOperation } from '../src/api/graphql/compile.js';
import { boundedText } from '../src/api/graphql/compiled.js';
import { slotVariables } from '../src/api/graphql/template.js';

type Row = Record<string, unknown>;
const pluck = (list: unknown, key: string) => (list as Row[]).map((x) => x[key]);

/**
 * The one-statement compiler against the resolver path: the same operations, answered both ways by
 * the same app (the compiler switched off in between), must give the same JSON; the compiled one in
 * one statement. Then backward paging (last/before), the plan cache, and the limits on `last`.
 */
describe('GraphQL compiler: one statement per query operation', () => {
  let t: TestApp;
  let reader: Record<string, string>;
  let globexReader: Record<string, string>;

  const gql = async (headers: Record<string, string>, query: string, variables?: Record<string, unknown>) => {
    const res = await t.app.inject({ method: 'POST', url: '/graphql', headers, payload: { query, variables } });
    const timing = /desc="(\d+) queries"/.exec(String(res.headers['server-timing'] ?? ''));
    return { status: res.statusCode, body: res.json(), queries: timing ? Number(timing[1]) : 0 };
  };
  const sql = async <R extends Record<string, unknown>>(text: string, values?: unknown[]) => (await t.db.adminQuery<R>(text, values)).rows;
  /** The same request through the resolvers (compiler off). */
  const viaResolvers = async (query: string, variables?: Record<string, unknown>) => {
    t.app.graphqlCompiler.enabled = false;
    try {
      return await gql(reader, query, variables);
    } finally {
      t.app.graphqlCompiler.enabled = true;
    }
  };

  beforeAll(async () => {
    t = await createTestApp({ seed: true, env: { GRAPHQL_PLAN_CACHE_MAX: '4' } });
    reader = await t.auth('reader', 'acme');
    globexReader = await t.auth('reader', 'globex');
  });
  afterAll(() => t.close());

  const cases: Array<[string, string, Record<string, unknown>?]> = [
    ['aliases, fragments, inline fragments and __typename', `
      fragment Run on pipeline_runs { id status params started_at __typename }
      query { __typename
        a: pipelines(first: 3, order_by: [{ id: asc }]) { __typename totalCount nodes { id ... on pipelines { name } tenant_id } pageInfo { __typename hasNextPage hasPreviousPage startCursor endCursor } }
        b: pipelines(first: 2, order_by: [{ name: desc }], where: { status: { _eq: "active" } }) { edges { cursor node { name runs: pipeline_runs(first: 2, order_by: [{ id: desc }]) { ...Run } } } }
      }`],
    ['many-to-one both ways, nulls, nested lists and connections', `
      { run_steps(first: 12, order_by: [{ parent_step_id: asc_nulls_first }, { id: asc }]) {
          nodes { id run_id parent_step_id duration_ms parent_step { id name } pipeline_runs { id pipelines { id name description } } } } }`],
    ['nested connections with totalCount, edges and pageInfo, forward and backward', `
      { pipelines(first: 3, order_by: [{ id: asc }]) { nodes { id
          fwd: pipeline_runs_connection(first: 2, order_by: [{ id: desc }]) { totalCount nodes { id } edges { cursor node { id status } } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } }
          back: pipeline_runs_connection(last: 2, where: { status: { _neq: "queued" } }) { totalCount nodes { id } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } }
          only: pipeline_runs_connection { totalCount } } } }`],
    ['a lookup by key with relationships, a missing one, aggregates', `
      query($id: ID!) { p: pipelines_by_pk(id: $id) { id name created_at pipeline_runs(first: 3) { id run_steps(first: 2) { id name } } }
        none: pipelines_by_pk(id: "987654321") { id }
        g: run_steps_aggregate(where: { duration_ms: { _gt: 100 } }, group_by: [status]) { groups { key count sum { duration_ms } avg { duration_ms } min { duration_ms name } max { d: duration_ms } } }
        all: pipeline_runs_aggregate { groups { key count min { started_at } } } }`, { id: '1' }],
    ['@skip and @include with variables, first: 0, an empty page', `
      query($yes: Boolean!, $no: Boolean!) {
        pipelines(first: 0) { nodes { id } pageInfo { hasNextPage endCursor } }
        empty: pipelines(where: { name: { _eq: "no such pipeline" } }) { totalCount nodes { id } edges { cursor } pageInfo { hasNextPage startCursor endCursor } }
        pipeline_runs(first: 2, order_by: [{ id: asc }]) { nodes { id status @include(if: $yes) params @skip(if: $yes) pipelines @include(if: $no) { id } } } }`, { yes: true, no: false }],
    ['backward root pages with before', `
      query($b: String) { pipelines(last: 4, order_by: [{ name: desc }], before: $b) { nodes { id name } pageInfo { hasPreviousPage startCursor endCursor } } }`, { b: null }],
  ];

  for (const [name, query, variables] of cases) {
    it(`answers like the resolvers: ${name}`, async () => {
      const compiled = await gql(reader, query, variables);
      const resolved = await viaResolvers(query, variables);
      expect(resolved.body.errors).toBeUndefined();
      expect(compiled.status).toBe(200);
      expect(compiled.queries).toBe(1);
      expect(resolved.queries).toBeGreaterThan(0);
      expect(compiled.body).toEqual(resolved.body);
    });
  }

  it('pages backward with last/before through every row, in order, both paths alike', async () => {
    const expected = (await sql<{ id: string }>("SELECT id::text FROM pipelines p WHERE tenant_id = 'acme' ORDER BY p.name DESC, p.id")).map((r) => r.id);
    const query = `query($b: String) { pipelines(last: 3, order_by: [{ name: desc }], before: $b) { nodes { id } pageInfo { hasPreviousPage hasNextPage startCursor } } }`;
    for (const run of [(v: Record<string, unknown>) => gql(reader, query, v), (v: Record<string, unknown>) => viaResolvers(query, v)]) {
      const seen: string[] = [];
      let before: string | null = null;
      for (let i = 0; i < 50; i++) {
        const r = await run({ b: before });
        expect(r.body.errors).toBeUndefined();
        const conn = r.body.data.pipelines;
        expect(conn.pageInfo.hasNextPage).toBe(false);
        seen.unshift(...(pluck(conn.nodes, 'id') as string[]));
        if (!conn.pageInfo.hasPreviousPage) break;
        before = conn.pageInfo.startCursor;
      }
      expect(seen).toEqual(expected);
    }
  });

  it('pages a one-to-many connection backward with a cursor of the same ordering', async () => {
    const [p] = await sql<{ id: string }>("SELECT pipeline_id::text AS id FROM pipeline_runs WHERE tenant_id = 'acme' GROUP BY pipeline_id HAVING count(*) > 3 ORDER BY 1 LIMIT 1");
    const expected = (await sql<{ id: string }>('SELECT id::text FROM pipeline_runs r WHERE pipeline_id = $1 ORDER BY r.id', [p!.id])).map((r) => r.id);
    const query = `query($id: ID!, $b: String) { pipelines_by_pk(id: $id) { pipeline_runs_connection(last: 2, before: $b) { nodes { id } pageInfo { hasPreviousPage startCursor } } } }`;
    const seen: string[] = [];
    let before: string | null = null;
    for (let i = 0; i < 50; i++) {
      const r = await gql(reader, query, { id: p!.id, b: before });
      expect(r.queries).toBe(1);
      const conn = r.body.data.pipelines_by_pk.pipeline_runs_connection;
      seen.unshift(...(pluck(conn.nodes, 'id') as string[]));
      if (!conn.pageInfo.hasPreviousPage) break;
      before = conn.pageInfo.startCursor;
    }
    expect(seen).toEqual(expected);
  });

  it('sees only the caller tenant rows, nested, aggregated and by key, in the compiled statement', async () => {
    const q = `query($id: ID!) { pipelines(last: 100) { totalCount nodes { tenant_id pipeline_runs_connection(last: 5) { nodes { tenant_id run_steps { tenant_id } } } } }
      pipeline_runs_aggregate(group_by: [tenant_id]) { groups { key count } } pipelines_by_pk(id: $id) { id } }`;
    const [acmeRow] = await sql<{ id: string }>("SELECT id::text FROM pipelines WHERE tenant_id = 'acme' ORDER BY id LIMIT 1");
    const r = await gql(globexReader, q, { id: acmeRow!.id });
    expect(r.queries).toBe(1);
    const [{ n }] = (await sql<{ n: number }>("SELECT count(*)::int AS n FROM pipelines WHERE tenant_id = 'globex'")) as [{ n: number }];
    expect(r.body.data.pipelines.totalCount).toBe(n);
    const tenants = new Set<unknown>();
    for (const p of r.body.data.pipelines.nodes) {
      tenants.add(p.tenant_id);
      for (const run of p.pipeline_runs_connection.nodes) {
        tenants.add(run.tenant_id);
        for (const s of run.run_steps) tenants.add(s.tenant_id);
      }
    }
    expect([...tenants]).toEqual(['globex']);
    expect(pluck(r.body.data.pipeline_runs_aggregate.groups, 'key')).toEqual([{ tenant_id: 'globex' }]);
    expect(r.body.data.pipelines_by_pk).toBeNull();
  });

  it('refuses bad last/before with a code before any SQL runs, and counts last in the cost limit', async () => {
    const bad = async (query: string, status: number, code: string) => {
      const r = await gql(reader, query);
      expect(r.status).toBe(status);
      expect(r.body.errors[0].extensions.code).toBe(code);
      expect(r.queries).toBe(0);
    };
    await bad('{ pipelines(last: -1) { nodes { id } } }', 400, 'INVALID_ARGUMENT');
    await bad('{ pipelines(last: 1001) { nodes { id } } }', 400, 'LIMIT_TOO_LARGE');
    await bad('{ pipelines(first: 2, last: 2) { nodes { id } } }', 400, 'INVALID_ARGUMENT');
    await bad('{ pipelines(last: 2, before: "bm90LWEtY3Vyc29y") { nodes { id } } }', 400, 'INVALID_CURSOR');
    await bad('{ pipelines(last: 1000) { nodes { pipeline_runs_connection(last: 1000) { nodes { id } } } } }', 400, 'QUERY_TOO_COSTLY');
  });

  it('caches plans per document, bounded, and drops them when the schema changes', async () => {
    const c = t.app.graphqlCompiler;
    const q = '{ pipelines(first: 1) { nodes { id } } }';
    await gql(reader, q);
    const hits = c.hits;
    await gql(reader, q);
    expect(c.hits).toBe(hits + 1);
    for (let i = 0; i < 6; i++) await gql(reader, `{ pipelines(first: ${i + 1}) { totalCount } }`);
    expect(c.size).toBeLessThanOrEqual(4);
    await t.app.services.schema.refresh();
    await gql(reader, q); // the schema was rebuilt (or not): the answer is still right
    const r = await gql(reader, q);
    expect(r.body.data.pipelines.nodes).toHaveLength(1);
  });

  it('runs the compiled statement once per request: the byte-bound wrapper does not duplicate it (one scan per table level)', async () => {
    const op = parse('{ pipelines(first: 5) { nodes { id pipeline_runs(first: 3) { id } } } }').definitions[0] as OperationDefinitionNode;
    const statement = compileOperation(t.app.graphql.schema, op, {}, {});
    const plan = await t.db.adminQuery<{ 'QUERY PLAN': string }>(`EXPLAIN (COSTS OFF) ${boundedText(statement)}`, [...statement.values, 1_000_000]);
    const text = plan.rows.map((r) => r['QUERY PLAN']).join('\n');
    expect(text.match(/Scan[^\n]* on pipelines /g) ?? [], text).toHaveLength(1);
    expect(text.match(/Scan[^\n]* on pipeline_runs /g) ?? [], text).toHaveLength(1);
  });

  it('reuses the statement of a document sent again with the same variable values, and answers each value set with its own rows', async () => {
    const c = t.app.graphqlCompiler;
    const doc = 'query P($like: String!, $n: Int!) { pipelines(where: { name: { _like: $like } }, first: $n, order_by: [{ name: asc }]) { totalCount nodes { name } } }';
    const ask = async (variables: Record<string, unknown>) => {
      const r = await t.app.inject({ method: 'POST', url: '/graphql', headers: reader, payload: { query: doc, variables } });
      expect(r.statusCode, r.body).toBe(200);
      return r.json().data.pipelines;
    };
    const first = await ask({ like: 'stmt-%', n: 2 });
    const compiles = c.compiles;
    expect(await ask({ like: 'stmt-%', n: 2 })).toEqual(first);
    expect(c.compiles).toBe(compiles); // same values: no costing, no compilation
    // the statement is kept, not the answer: a new row shows
    const w = await t.app.inject({ method: 'POST', url: '/v1/tables/pipelines/rows', headers: await t.auth('writer', 'acme'), payload: { name: 'stmt-a' } });
    expect(w.statusCode).toBe(201);
    const again = await ask({ like: 'stmt-%', n: 2 });
    expect(again.totalCount).toBe(first.totalCount + 1);
    expect(again.nodes.map((x: { name: string }) => x.name)).toContain('stmt-a');
    // other values compile their own statement: a different page size is a different LIMIT
    const one = await ask({ like: 'stmt-%', n: 1 });
    expect(c.compiles).toBe(compiles + 1);
    expect(one.nodes).toHaveLength(1);
    expect(await ask({ like: 'nothing-%', n: 2 })).toEqual({ totalCount: 0, nodes: [] });
    // a value past the limit is still refused, cached statements or not
    const big = await t.app.inject({ method: 'POST', url: '/graphql', headers: reader, payload: { query: doc, variables: { like: 'stmt-%', n: 100_000 } } });
    expect(big.json().errors[0].extensions.code).toBe('LIMIT_TOO_LARGE');
  });

  it('serves a by-key read with a new literal every request from one template: no compile, each its own row, as the resolvers answer', async () => {
    const c = t.app.graphqlCompiler;
    const ids = (await sql<{ id: string }>("SELECT id::text FROM pipelines WHERE tenant_id = 'acme' ORDER BY id LIMIT 5")).map((r) => r.id);
    expect(ids.length).toBeGreaterThan(2);
    const q = (id: string) => `{ pipelines_by_pk(id: "${id}") { id name tenant_id pipeline_runs(first: 2, order_by: [{ id: asc }]) { id } } }`;
    await gql(reader, q(ids[0]!));
    const compiles = c.compiles;
    const hits = c.templateHits;
    for (const id of ids) {
      const r = await gql(reader, q(id));
      expect(r.queries).toBe(1);
      expect(r.body.data.pipelines_by_pk.id).toBe(id);
      expect(r.body).toEqual((await viaResolvers(q(id))).body);
    }
    expect(c.compiles).toBe(compiles);
    expect(c.templateHits).toBe(hits + ids.length);
    // the same template for another tenant: RLS, not the template, decides what is seen
    const other = await gql(globexReader, q(ids[1]!));
    expect(other.body.data.pipelines_by_pk).toBeNull();
    expect(c.compiles).toBe(compiles);
  });

  it('binds slot variables of where comparisons through one template, and leaves values it cannot bind to the full path', async () => {
    const c = t.app.graphqlCompiler;
    const doc = 'query($name: String!, $id: BigInt!) { pipelines(where: { name: { _eq: $name }, id: { _gte: $id } }, first: 5) { totalCount nodes { id name } } }';
    const [a, b] = await sql<{ id: string; name: string }>("SELECT id::text, name FROM pipelines WHERE tenant_id = 'acme' ORDER BY id LIMIT 2");
    await gql(reader, doc, { name: a!.name, id: '0' });
    const compiles = c.compiles;
    for (const row of [a!, b!]) {
      const r = await gql(reader, doc, { name: row.name, id: row.id });
      expect(r.body.data.pipelines.nodes.map((n: { name: string }) => n.name)).toEqual([row.name]);
      expect(r.body).toEqual((await viaResolvers(doc, { name: row.name, id: row.id })).body);
    }
    expect(c.compiles).toBe(compiles);
    // a value its scalar refuses, or null: the full path reports it as before, and nothing is templated wrongly
    const bad = await gql(reader, doc, { name: { not: 'a string' }, id: '1' });
    expect(bad.status).toBe(400);
    expect(bad.body.errors[0].extensions.code).toBeDefined();
    expect(bad.body).toEqual((await viaResolvers(doc, { name: { not: 'a string' }, id: '1' })).body);
    const notBigInt = await gql(reader, doc, { name: a!.name, id: 'abc' });
    expect(notBigInt.status).toBe(400);
    expect(notBigInt.body).toEqual((await viaResolvers(doc, { name: a!.name, id: 'abc' })).body);
    // a value PostgreSQL refuses (an ID that is not a number) in a template: the resolvers report it on its field
    const byKey = '{ pipelines_by_pk(id: "not-a-number") { id } }';
    await gql(reader, '{ pipelines_by_pk(id: "1") { id } }');
    const refused = await gql(reader, byKey);
    expect(refused.body.errors?.length).toBeGreaterThan(0);
    expect(refused.body).toEqual((await viaResolvers(byKey)).body);
  });

  it('keeps variables the compiler reads (first, _in, _is_null, directives, defaults) out of templates', async () => {
    const schema = t.app.graphql.schema;
    const slotsOf = (text: string) => {
      const doc = parse(text);
      return [...slotVariables(schema, doc, doc.definitions[0] as OperationDefinitionNode).keys()].sort();
    };
    expect(slotsOf('query($id: ID!) { pipelines_by_pk(id: $id) { id } }')).toEqual(['id']);
    expect(slotsOf('query($n: String, $s: String) { pipelines(where: { name: { _like: $n }, _or: [{ status: { _neq: $s } }] }) { nodes { id } } }')).toEqual(['n', 's']);
    expect(slotsOf('query($n: Int) { pipelines(first: $n) { nodes { id } } }')).toEqual([]);
    expect(slotsOf('query($a: ID!) { pipelines(where: { id: { _in: [$a] } }) { nodes { id } } }')).toEqual([]);
    expect(slotsOf('query($b: Boolean!) { pipelines(where: { name: { _is_null: $b } }) { nodes { id } } }')).toEqual([]);
    expect(slotsOf('query($b: Boolean!, $id: ID!) { pipelines_by_pk(id: $id) { id name @include(if: $b) } }')).toEqual(['id']);
    expect(slotsOf('query($id: ID! = "1") { pipelines_by_pk(id: $id) { id } }')).toEqual([]);
    expect(slotsOf('query($constructor: ID!) { pipelines_by_pk(id: $constructor) { id } }')).toEqual([]);
    // used in a bound position and another: not a slot
    expect(slotsOf('query($id: ID!) { pipelines_by_pk(id: $id) { id } pipelines(where: { id: { _in: [$id] } }) { nodes { id } } }')).toEqual([]);
    expect(slotsOf('query($c: String) { pipelines(after: $c, where: { name: { _eq: $c } }) { nodes { id } } }')).toEqual([]);
  });

  it('sends search, views and introspection to the resolvers, and mixes nothing up', async () => {
    const r = await gql(reader, '{ __schema { queryType { name } } pipelines(first: 1) { totalCount } }');
    expect(r.status).toBe(200);
    expect(r.body.data.__schema.queryType.name).toBe('Query');
    expect(r.body.data.pipelines.totalCount).toBeGreaterThan(0);
  });
});
