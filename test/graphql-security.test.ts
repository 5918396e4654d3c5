import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';


/** Every bad-input test asserts the code and that nothing was written (row counts and a content hash per tenant and table). */
describe('GraphQL security: authentication, roles, tenant isolation, limits and bad input', () => {
  let t: TestApp;
  let acmeReader: Record<string, string>;
  let acmeWriter: Record<string, string>;
  let globexIds: string[];
  let snapshot: string;

  const gql = async (headers: Record<string, string>, query: string, variables?: Record<string, unknown>) => {
    const res = await t.app.inject({ method: 'POST', url: '/graphql', headers, payload: { query, variables } });
    const timing = /desc="(\d+) queries"/.exec(String(res.headers['server-timing'] ?? ''));
    return { status: res.statusCode, body: res.json(), queries: timing ? Number(timing[1]) : 0 };
  };
  const sql = async <R extends Record<string, unknown>>(text: string, values?: unknown[]) => (await t.db.adminQuery<R>(text, values)).rows;
  const state = async () =>
    JSON.stringify(
      await sql(
        `SELECT tbl, tenant_id, count(*)::int AS n, md5(string_agg(h, ',' ORDER BY h)) AS h FROM (
           SELECT 'pipelines' AS tbl, tenant_id, md5(p::text) AS h FROM pipelines p
           UNION ALL SELECT 'pipeline_runs', tenant_id, md5(r::text) FROM pipeline_runs r
           UNION ALL SELECT 'run_steps', tenant_id, md5(s::text) FROM run_steps s) x GROUP BY 1, 2 ORDER BY 1, 2`,
      ),
    );
  const expectError = (r: Awaited<ReturnType<typeof gql>>, status: number, code: string) => {
    expect(r.status).toBe(status);
    expect(r.body.errors?.[0]?.extensions?.code).toBe(code);
  };

  beforeAll(async () => {
    t = await createTestApp({ seed: true });
    acmeReader = await t.auth('reader', 'acme');
    acmeWriter = await t.auth('writer', 'acme');
    globexIds = (await sql<{ id: string }>("SELECT id::text FROM pipelines WHERE tenant_id = 'globex' ORDER BY id LIMIT 3")).map((r) => r.id);
  });
  beforeEach(async () => {
    snapshot = await state();
  });
  afterAll(() => t.close());

  const nothingWritten = async () => expect(await state()).toBe(snapshot);

  describe('authentication and roles', () => {
    it('answers 401 with an error body to a request without a token, and runs nothing', async () => {
      const res = await t.app.inject({ method: 'POST', url: '/graphql', payload: { query: 'mutation { delete_pipelines(where: { id: { _gt: 0 } }) { affected_rows } }' } });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe('AUTH_REQUIRED');
      await nothingWritten();
    });

    it('answers 401 to a forged token and to GET /graphql without one', async () => {
      const forged = await t.token('admin', 'acme', { secret: 'y'.repeat(40) });
      const res = await t.app.inject({ method: 'POST', url: '/graphql', headers: { authorization: `Bearer ${forged}` }, payload: { query: '{ pipelines { totalCount } }' } });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toMatch(/^TOKEN_/);
      const get = await t.app.inject({ url: '/graphql?query=%7B%20pipelines%20%7B%20totalCount%20%7D%20%7D' });
      expect(get.statusCode).toBe(401);
    });

    it('refuses every mutation to a reader with ROLE_FORBIDDEN before anything runs', async () => {
      const r = await gql(acmeReader, 'mutation { a: insert_pipelines_one(object: { name: "by-reader" }) { id } b: delete_pipelines(where: { id: { _gt: 0 } }) { affected_rows } }');
      expectError(r, 403, 'ROLE_FORBIDDEN');
      expect(r.body.data).toBeNull();
      expect(r.queries).toBe(0);
      await nothingWritten();
    });

    it('refuses a mutation sent with GET', async () => {
      const q = encodeURIComponent('mutation { insert_pipelines_one(object: { name: "by-get" }) { id } }');
      const res = await t.app.inject({ url: `/graphql?query=${q}`, headers: acmeWriter });
      expect(res.statusCode).toBe(405);
      expect(res.json().errors[0].extensions.code).toBe('METHOD_NOT_ALLOWED');
      await nothingWritten();
    });
  });

  describe('tenant isolation (enforced by RLS under every resolver)', () => {
    it('lists, nests and counts only the caller tenant rows', async () => {
      const [{ n }] = (await sql<{ n: number }>("SELECT count(*)::int AS n FROM pipelines WHERE tenant_id = 'acme'")) as [{ n: number }];
      const r = await gql(acmeReader, '{ pipelines(first: 100) { totalCount nodes { tenant_id pipeline_runs(first: 20) { tenant_id run_steps(first: 10) { tenant_id } } } } }');
      expect(r.body.errors).toBeUndefined();
      expect(r.body.data.pipelines.totalCount).toBe(n);
      expect(r.body.data.pipelines.nodes).toHaveLength(n);
      const tenants = new Set<string>();
      for (const p of r.body.data.pipelines.nodes) {
        tenants.add(p.tenant_id);
        for (const run of p.pipeline_runs) {
          tenants.add(run.tenant_id);
          for (const s of run.run_steps) tenants.add(s.tenant_id);
        }
      }
      expect([...tenants]).toEqual(['acme']);
    });

    it('returns null for another tenant row by primary key', async () => {
      const r = await gql(acmeReader, 'query($id: ID!) { pipelines_by_pk(id: $id) { id tenant_id } }', { id: globexIds[0] });
      expect(r.body).toEqual({ data: { pipelines_by_pk: null } });
    });

    it('aggregates only the caller tenant rows', async () => {
      const expected = await sql<{ status: string; n: number }>("SELECT status, count(*)::int AS n FROM pipeline_runs WHERE tenant_id = 'acme' GROUP BY 1 ORDER BY 1");
      const r = await gql(acmeReader, '{ pipeline_runs_aggregate(group_by: [status, tenant_id]) { groups { key count } } }');
      expect(r.body.data.pipeline_runs_aggregate.groups).toEqual(expected.map((e) => ({ key: { status: e.status, tenant_id: 'acme' }, count: e.n })));
    });

    it('updates and deletes nothing of another tenant, by primary key or by filter', async () => {
      const r = await gql(
        acmeWriter,
        `mutation($id: ID!, $ids: [BigInt!]) {
           u: update_pipelines_by_pk(pk_columns: { id: $id }, _set: { name: "hijacked" }) { id }
           d: delete_pipelines_by_pk(id: $id) { id }
           um: update_pipelines(where: { id: { _in: $ids } }, _set: { name: "hijacked" }) { affected_rows }
           dm: delete_pipelines(where: { tenant_id: { _eq: "globex" } }) { affected_rows }
         }`,
        { id: globexIds[0], ids: globexIds },
      );
      expect(r.status).toBe(200);
      expect(r.body).toEqual({ data: { u: null, d: null, um: { affected_rows: 0 }, dm: { affected_rows: 0 } } });
      await nothingWritten();
    });

    it('refuses an insert naming another tenant with FORBIDDEN_BY_DATABASE, and writes nothing', async () => {
      const r = await gql(acmeWriter, 'mutation { insert_pipelines_one(object: { name: "smuggled", tenant_id: "globex" }) { id } }');
      expectError(r, 403, 'FORBIDDEN_BY_DATABASE');
      expect(r.body.data).toBeNull();
      await nothingWritten();
    });

    it('refuses a child pointing at another tenant parent (foreign key includes tenant_id)', async () => {
      const r = await gql(acmeWriter, 'mutation($p: BigInt!) { insert_pipeline_runs_one(object: { pipeline_id: $p }) { id } }', { p: globexIds[0] });
      expectError(r, 409, 'FOREIGN_KEY_VIOLATION');
      await nothingWritten();
    });
  });

  describe('limits', () => {
    it('refuses a query nested too deep with QUERY_TOO_DEEP before running it', async () => {
      let inner = 'id';
      for (let i = 0; i < 10; i++) inner = `parent_step { ${inner} }`;
      const r = await gql(acmeReader, `{ run_steps(first: 1) { nodes { ${inner} } } }`);
      expectError(r, 400, 'QUERY_TOO_DEEP');
      expect(r.queries).toBe(0);
    });

    it('maps mercurius’ own depth backstop (which lets 15-level introspection through) to QUERY_TOO_DEEP as well', async () => {
      let inner = 'id';
      for (let i = 0; i < 20; i++) inner = `parent_step { ${inner} }`;
      const r = await gql(acmeReader, `{ run_steps(first: 1) { nodes { ${inner} } } }`);
      expectError(r, 400, 'QUERY_TOO_DEEP');
      expect(r.queries).toBe(0);
    });

    it('refuses a query whose estimated rows exceed the cost limit with QUERY_TOO_COSTLY', async () => {
      const r = await gql(acmeReader, '{ pipelines(first: 1000) { nodes { pipeline_runs(first: 1000) { id } } } }');
      expectError(r, 400, 'QUERY_TOO_COSTLY');
      expect(r.queries).toBe(0);
      const defaults = await gql(acmeReader, '{ pipelines { nodes { pipeline_runs { run_steps { id } } } } }');
      expectError(defaults, 400, 'QUERY_TOO_COSTLY'); // 50 x 50 x 50 with the default first
    });

    it('refuses first above 1000 with LIMIT_TOO_LARGE, and a negative one with INVALID_ARGUMENT', async () => {
      expectError(await gql(acmeReader, '{ pipelines(first: 1001) { nodes { id } } }'), 400, 'LIMIT_TOO_LARGE');
      expectError(await gql(acmeReader, 'query($n: Int) { pipelines { nodes { pipeline_runs(first: $n) { id } } } }', { n: 5000 }), 400, 'LIMIT_TOO_LARGE');
      expectError(await gql(acmeReader, '{ pipelines(first: -1) { nodes { id } } }'), 400, 'INVALID_ARGUMENT');
    });
  });

  describe('bad input', () => {
    it('maps a malformed query to GRAPHQL_PARSE_FAILED and an unknown field to GRAPHQL_VALIDATION_FAILED', async () => {
      expectError(await gql(acmeWriter, 'mutation { insert_pipelines_one(object: { name: "x" }) { id }'), 400, 'GRAPHQL_PARSE_FAILED');
      const unknown = await gql(acmeWriter, 'mutation { insert_pipelines_one(object: { name: "x", owner: "me" }) { id } }');
      expectError(unknown, 400, 'GRAPHQL_VALIDATION_FAILED');
      expectError(await gql(acmeReader, '{ pipelines { nodes { password } } }'), 400, 'GRAPHQL_VALIDATION_FAILED');
      expectError(await gql(acmeReader, '{ secrets { nodes { id } } }'), 400, 'GRAPHQL_VALIDATION_FAILED');
      await nothingWritten();
    });

    it('maps wrong value types (literal or variable) to GRAPHQL_VALIDATION_FAILED, writing nothing', async () => {
      expectError(await gql(acmeWriter, 'mutation { insert_pipelines_one(object: { name: 5 }) { id } }'), 400, 'GRAPHQL_VALIDATION_FAILED');
      expectError(
        await gql(acmeWriter, 'mutation($o: pipeline_runs_insert_input!) { insert_pipeline_runs_one(object: $o) { id } }', { o: { pipeline_id: 'one' } }),
        400,
        'GRAPHQL_VALIDATION_FAILED',
      );
      expectError(
        await gql(acmeWriter, 'mutation($o: pipeline_runs_insert_input!) { insert_pipeline_runs_one(object: $o) { id } }', { o: { pipeline_id: 1, started_at: 'yesterday' } }),
        400,
        'GRAPHQL_VALIDATION_FAILED',
      );
      expectError(await gql(acmeWriter, 'mutation { insert_pipelines(objects: [{ description: "no name" }]) { id } }'), 400, 'GRAPHQL_VALIDATION_FAILED');
      await nothingWritten();
    });

    it('refuses an over-long string with VALUE_TOO_LONG naming the field, and a value outside the CHECK list with INVALID_VALUE', async () => {
      const long = await gql(acmeWriter, 'mutation($n: String!) { insert_pipelines_one(object: { name: $n }) { id } }', { n: 'é'.repeat(201) });
      expectError(long, 400, 'VALUE_TOO_LONG');
      expect(long.body.errors[0].extensions.details.field).toBe('object.name');
      expect(long.queries).toBe(0);
      const id = (await sql<{ id: string }>("SELECT id::text FROM pipelines WHERE tenant_id = 'acme' LIMIT 1"))[0]!.id;
      const status = await gql(acmeWriter, `mutation { update_pipelines_by_pk(pk_columns: { id: "${id}" }, _set: { status: "bogus" }) { id } }`);
      expectError(status, 400, 'INVALID_VALUE');
      expect(status.body.errors[0].extensions.details.field).toBe('_set.status');
      const nul = await gql(acmeWriter, `mutation { update_pipelines_by_pk(pk_columns: { id: "${id}" }, _set: { name: null }) { id } }`);
      expectError(nul, 400, 'NOT_NULL_VIOLATION');
      await nothingWritten();
    });

    it('refuses unfiltered update and delete with UNFILTERED_MASS_WRITE, changing nothing', async () => {
      for (const where of ['{}', '{ _and: [] }', '{ _or: [{}] }', '{ name: {} }']) {
        expectError(await gql(acmeWriter, `mutation { update_pipelines(where: ${where}, _set: { description: "all" }) { affected_rows } }`), 400, 'UNFILTERED_MASS_WRITE');
        expectError(await gql(acmeWriter, `mutation { delete_run_steps(where: ${where}) { affected_rows } }`), 400, 'UNFILTERED_MASS_WRITE');
      }
      await nothingWritten();
    });

    it('refuses malformed, tampered and foreign cursors with INVALID_CURSOR', async () => {
      const page = await gql(acmeReader, '{ pipelines(first: 2, order_by: [{ name: asc }]) { pageInfo { endCursor } } }');
      const cursor: string = page.body.data.pipelines.pageInfo.endCursor;
      const decoded = JSON.parse(Buffer.from(cursor, 'base64url').toString());
      const forge = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
      const bad = [
        'not-a-cursor',
        '!!!',
        forge({ ...decoded, v: ["1'; DROP TABLE pipelines; --", '2'] }).replace(/^/, ''), // wrong value for a bigint key is caught below
        forge({ ...decoded, t: 'run_steps' }),
        forge({ ...decoded, v: [decoded.v[0]] }),
        forge({ ...decoded, v: [decoded.v[0], 'abc'] }),
        forge([1, 2]),
      ];
      for (const after of bad) {
        const r = await gql(acmeReader, 'query($a: String) { pipelines(first: 2, order_by: [{ name: asc }], after: $a) { nodes { id } } }', { a: after });
        if (after === bad[2]) {
          // the name value is free text (any string sorts); the id value is checked
          expect(r.status).toBe(200);
          continue;
        }
        expectError(r, 400, 'INVALID_CURSOR');
      }
      // a valid cursor of another ordering is refused too
      const other = await gql(acmeReader, 'query($a: String) { pipelines(first: 2, order_by: [{ name: desc }], after: $a) { nodes { id } } }', { a: cursor });
      expectError(other, 400, 'INVALID_CURSOR');
      expect(await sql("SELECT 1 FROM pg_tables WHERE tablename = 'pipelines'")).toHaveLength(1);
    });

    it('treats SQL in values as data', async () => {
      const r = await gql(acmeReader, `{ pipelines(where: { name: { _eq: "x' OR 1=1; DROP TABLE pipelines; --" } }) { totalCount } }`);
      expect(r.body).toEqual({ data: { pipelines: { totalCount: 0 } } });
      await nothingWritten();
    });

    it('answers a body without a query, and malformed JSON, with 400 and a code', async () => {
      const empty = await t.app.inject({ method: 'POST', url: '/graphql', headers: acmeWriter, payload: {} });
      expect(empty.statusCode).toBe(400);
      expect(empty.json().errors[0].extensions.code).toBe('GRAPHQL_BAD_REQUEST');
      const bad = await t.app.inject({ method: 'POST', url: '/graphql', headers: { ...acmeWriter, 'content-type': 'application/json' }, payload: '{"query": "mutation {' });
      expect(bad.statusCode).toBe(400);
      expect(bad.json().errors[0].extensions.code).toBe('MALFORMED_JSON');
      await nothingWritten();
    });
  });
});
