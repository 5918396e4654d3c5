import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getIntrospectionQuery } from 'graphql';
import { createTestApp, type TestApp } from './helpers/app.js';


type Row = Record<string, unknown>;
/** One property of every element of a (loosely typed) JSON list. */
const pluck = (list: unknown, key: string) => (list as Row[]).map((x) => x[key]);

describe('GraphQL API generated from the schema registry', () => {
  let t: TestApp;
  let reader: Record<string, string>;
  let writer: Record<string, string>;

  const gql = async (headers: Record<string, string>, query: string, variables?: Record<string, unknown>) => {
    const res = await t.app.inject({ method: 'POST', url: '/graphql', headers, payload: { query, variables } });
    const timing = /desc="(\d+) queries"/.exec(String(res.headers['server-timing'] ?? ''));
    // queries: data statements counted for Server-Timing (`desc="N queries"`); BEGIN, tenant settings and COMMIT are not counted
    return { status: res.statusCode, body: res.json(), queries: timing ? Number(timing[1]) : -1 };
  };
  const sql = async <R extends Record<string, unknown>>(text: string, values?: unknown[]) => (await t.db.adminQuery<R>(text, values)).rows;

  beforeAll(async () => {
    t = await createTestApp({ seed: true });
    reader = await t.auth('reader', 'acme');
    writer = await t.auth('writer', 'acme');
  });
  afterAll(() => t.close());

  describe('lists', () => {
    it('filters, orders and pages with keyset cursors through every matching row', async () => {
      const expected = await sql<{ id: string; name: string }>(
        "SELECT p.id::text, p.name FROM pipelines p WHERE p.tenant_id = 'acme' AND p.status IN ('active', 'paused') ORDER BY p.name DESC, p.id",
      );
      const query = `query($after: String) {
        pipelines(where: { status: { _in: ["active", "paused"] } }, order_by: [{ name: desc }], first: 4, after: $after) {
          totalCount nodes { id name status } edges { cursor node { id } } pageInfo { hasNextPage endCursor }
        }
      }`;
      const seen: Array<{ id: string; name: string }> = [];
      let after: string | null = null;
      for (let page = 0; page < 20; page++) {
        const r = await gql(reader, query, { after });
        expect(r.status).toBe(200);
        const conn = r.body.data.pipelines;
        expect(conn.totalCount).toBe(expected.length);
        expect(pluck(conn.edges, 'node').map((n) => (n as Row).id)).toEqual(pluck(conn.nodes, 'id'));
        if (conn.nodes.length) expect(conn.edges.at(-1).cursor).toBe(conn.pageInfo.endCursor);
        seen.push(...(conn.nodes as Array<{ id: string; name: string }>).map((n) => ({ id: n.id, name: n.name })));
        if (!conn.pageInfo.hasNextPage) break;
        after = conn.pageInfo.endCursor;
      }
      expect(seen).toEqual(expected);
    });

    it('pages over a nullable column with nulls first, matching PostgreSQL order exactly', async () => {
      const expected = await sql<{ id: string }>(
        "SELECT s.id::text FROM run_steps s WHERE s.tenant_id = 'acme' AND s.run_id <= 3 ORDER BY s.parent_step_id ASC NULLS FIRST, s.id",
      );
      const query = `query($after: String) {
        run_steps(where: { run_id: { _lte: 3 } }, order_by: [{ parent_step_id: asc_nulls_first }], first: 5, after: $after) {
          nodes { id parent_step_id } pageInfo { hasNextPage endCursor }
        }
      }`;
      const ids: string[] = [];
      let after: string | null = null;
      do {
        const r = await gql(reader, query, { after });
        ids.push(...(pluck(r.body.data.run_steps.nodes, 'id') as string[]));
        after = r.body.data.run_steps.pageInfo.hasNextPage ? r.body.data.run_steps.pageInfo.endCursor : null;
      } while (after);
      expect(ids).toEqual(expected.map((e) => e.id));
      expect(ids.length).toBeGreaterThan(10);
    });

    it('combines _and, _or, _not, _ilike and _is_null as PostgreSQL would', async () => {
      const expected = await sql<{ id: string }>(
        `SELECT p.id::text FROM pipelines p WHERE p.tenant_id = 'acme'
           AND ((p.name ILIKE '%-1%' AND p.status <> 'archived') OR p.id <= 2) AND NOT (p.description IS NULL) ORDER BY p.id`,
      );
      const r = await gql(
        reader,
        `{ pipelines(first: 100, where: {
             _or: [{ _and: [{ name: { _ilike: "%-1%" } }, { status: { _neq: "archived" } }] }, { id: { _lte: 2 } }],
             _not: { description: { _is_null: true } } }) { nodes { id } } }`,
      );
      expect(r.body.errors).toBeUndefined();
      expect(pluck(r.body.data.pipelines.nodes, 'id')).toEqual(expected.map((e) => e.id));
    });

    it('serves only totalCount without fetching rows, and reads a row by primary key', async () => {
      const [{ n }] = (await sql<{ n: number }>("SELECT count(*)::int AS n FROM pipeline_runs WHERE tenant_id = 'acme' AND status = 'failed'")) as [{ n: number }];
      const count = await gql(reader, '{ pipeline_runs(where: { status: { _eq: "failed" } }) { totalCount } }');
      expect(count.body.data.pipeline_runs.totalCount).toBe(n);
      expect(count.queries).toBe(1);
      const [row] = await sql<{ id: string; name: string }>("SELECT p.id::text, p.name FROM pipelines p WHERE p.tenant_id = 'acme' ORDER BY p.id LIMIT 1");
      const byPk = await gql(reader, 'query($id: ID!) { pipelines_by_pk(id: $id) { id name created_at } }', { id: row!.id });
      expect(byPk.body.data.pipelines_by_pk).toMatchObject({ id: row!.id, name: row!.name });
      expect(byPk.body.data.pipelines_by_pk.created_at).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d+\+00:00$/);
      expect(byPk.queries).toBe(1);
      const missing = await gql(reader, '{ pipelines_by_pk(id: "987654321") { id } }');
      expect(missing.body).toEqual({ data: { pipelines_by_pk: null } });
    });
  });

  describe('relationships', () => {
    const tree = `query($n: Int) {
      pipelines(first: $n, order_by: [{ id: asc }]) {
        nodes { id name pipeline_runs(first: 10, order_by: [{ id: asc }]) { id pipeline_id run_steps(first: 10, order_by: [{ id: asc }]) { id run_id name } } }
      }
    }`;

    it('loads 20 pipelines, their runs and each run’s steps in one compiled statement, at any row count', async () => {
      for (const n of [20, 20, 5, 1]) {
        // the same text twice: the second run goes through the JIT-compiled query
        const r = await gql(reader, tree, { n });
        expect(r.status).toBe(200);
        expect(r.body.errors).toBeUndefined();
        expect(r.queries).toBe(1); // one compiled statement (the resolver path takes 3: graphql-compiler.test.ts)
        expect(r.body.data.pipelines.nodes).toHaveLength(n);
      }
      const r = await gql(reader, tree, { n: 20 });
      const runs = await sql<{ id: string; pipeline_id: string }>(
        `SELECT r.id::text, r.pipeline_id::text FROM pipeline_runs r
           WHERE r.tenant_id = 'acme' AND r.pipeline_id IN (SELECT id FROM pipelines WHERE tenant_id = 'acme' ORDER BY id LIMIT 20) ORDER BY r.id`,
      );
      const steps = await sql<{ id: string; run_id: string }>(
        `SELECT s.id::text, s.run_id::text FROM run_steps s WHERE s.tenant_id = 'acme' AND s.run_id = ANY($1::bigint[]) ORDER BY s.id`,
        [runs.map((x) => x.id)],
      );
      for (const p of r.body.data.pipelines.nodes) {
        const mine = runs.filter((x) => x.pipeline_id === p.id).slice(0, 10);
        expect(pluck(p.pipeline_runs, 'id')).toEqual(mine.map((x) => x.id));
        for (const run of p.pipeline_runs) {
          expect(run.pipeline_id).toBe(p.id);
          expect(pluck(run.run_steps, 'id')).toEqual(steps.filter((s) => s.run_id === run.id).slice(0, 10).map((s) => s.id));
        }
      }
    });

    it('applies where, order_by and first per parent on one-to-many lists', async () => {
      const r = await gql(
        reader,
        `{ pipelines(first: 3, order_by: [{ id: asc }]) { nodes { id pipeline_runs(where: { status: { _eq: "succeeded" } }, order_by: [{ id: desc }], first: 2) { id status } } } }`,
      );
      expect(r.queries).toBe(1);
      for (const p of r.body.data.pipelines.nodes) {
        const expected = await sql<{ id: string }>(
          "SELECT r.id::text FROM pipeline_runs r WHERE r.pipeline_id = $1 AND r.status = 'succeeded' ORDER BY r.id DESC LIMIT 2",
          [p.id],
        );
        expect(pluck(p.pipeline_runs, 'id')).toEqual(expected.map((e) => e.id));
      }
    });


    it('pages a one-to-many relationship as a cursor connection per parent (<rel>_connection), with totalCount, in one statement', async () => {
      const query = `query($after: String) {
        pipelines(first: 3, order_by: [{ id: asc }]) {
          nodes { id pipeline_runs_connection(where: { status: { _neq: "queued" } }, order_by: [{ id: desc }], first: 3, after: $after) {
            totalCount nodes { id status } edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }
        }
      }`;
      const first = await gql(reader, query, { after: null });
      expect(first.status).toBe(200);
      expect(first.body.errors).toBeUndefined();
      expect(first.queries).toBe(1); // pipelines, the runs of all three and their counts: one compiled statement
      for (const p of first.body.data.pipelines.nodes) {
        const expected = await sql<{ id: string }>(
          "SELECT r.id::text FROM pipeline_runs r WHERE r.tenant_id = 'acme' AND r.pipeline_id = $1 AND r.status <> 'queued' ORDER BY r.id DESC",
          [p.id],
        );
        const conn = p.pipeline_runs_connection;
        expect(conn.totalCount).toBe(expected.length);
        expect(pluck(conn.edges, 'node').map((n) => (n as Row).id)).toEqual(pluck(conn.nodes, 'id'));
        // follow this parent's cursor to the end: every run once, in order
        const seen: string[] = [...(pluck(conn.nodes, 'id') as string[])];
        let page = conn;
        while (page.pageInfo.hasNextPage) {
          const next = await gql(
            reader,
            `query($after: String, $id: BigInt_comparison_exp) { pipelines(where: { id: $id }) { nodes { pipeline_runs_connection(where: { status: { _neq: "queued" } }, order_by: [{ id: desc }], first: 3, after: $after) { nodes { id } pageInfo { hasNextPage endCursor } } } } }`,
            { after: page.pageInfo.endCursor, id: { _eq: p.id } },
          );
          expect(next.body.errors).toBeUndefined();
          page = next.body.data.pipelines.nodes[0].pipeline_runs_connection;
          seen.push(...(pluck(page.nodes, 'id') as string[]));
        }
        expect(seen).toEqual(expected.map((e) => e.id));
      }
    });

    it('refuses a nested connection cursor of another ordering with INVALID_CURSOR', async () => {
      const r = await gql(reader, `{ pipelines(first: 1) { nodes { id pipeline_runs_connection(first: 1) { pageInfo { endCursor } } } } }`);
      const cursor = r.body.data.pipelines.nodes[0].pipeline_runs_connection.pageInfo.endCursor as string;
      const bad = await gql(reader, `query($c: String) { pipelines(first: 1) { nodes { pipeline_runs_connection(first: 1, order_by: [{ status: asc }], after: $c) { nodes { id } } } } }`, { c: cursor });
      expect(bad.body.errors[0].extensions.code).toBe('INVALID_CURSOR');
      expect(bad.body.data).toBeNull();
    });
    it('follows many-to-one links (runs to their pipeline, steps to their parent step) in one statement', async () => {
      const r = await gql(
        reader,
        `{ run_steps(first: 30, where: { parent_step_id: { _is_null: false } }, order_by: [{ id: asc }]) {
             nodes { id parent_step_id parent_step { id name } pipeline_runs { id pipelines { id name } } } } }`,
      );
      expect(r.body.errors).toBeUndefined();
      expect(r.queries).toBe(1);
      const nodes = r.body.data.run_steps.nodes;
      expect(nodes).toHaveLength(30);
      for (const s of nodes) {
        expect(s.parent_step.id).toBe(s.parent_step_id);
        expect(s.pipeline_runs.pipelines.name).toMatch(/^pipeline-/);
      }
    });
  });

  describe('aggregates', () => {
    it('counts per group_by value as SQL does', async () => {
      const expected = await sql<{ status: string; n: number }>(
        "SELECT status, count(*)::int AS n FROM pipeline_runs WHERE tenant_id = 'acme' GROUP BY status ORDER BY status",
      );
      const r = await gql(reader, '{ pipeline_runs_aggregate(group_by: [status]) { groups { key count } } }');
      expect(r.body.data.pipeline_runs_aggregate.groups).toEqual(expected.map((e) => ({ key: { status: e.status }, count: e.n })));
    });

    it('computes sum, avg, min and max per group with a filter', async () => {
      const expected = await sql<{ status: string; n: number; sum: string; avg: number; min: number; max: number; min_name: string; max_name: string }>(
        `SELECT status, count(*)::int AS n, sum(duration_ms)::text AS sum, avg(duration_ms)::float8 AS avg, min(duration_ms) AS min, max(duration_ms) AS max,
                min(name) AS min_name, max(name) AS max_name
           FROM run_steps WHERE tenant_id = 'acme' AND duration_ms > 150 GROUP BY status ORDER BY status`,
      );
      const r = await gql(
        reader,
        `{ run_steps_aggregate(where: { duration_ms: { _gt: 150 } }, group_by: [status]) {
             groups { key count sum { duration_ms } avg { duration_ms } min { duration_ms name } max { duration_ms name } } } }`,
      );
      expect(r.body.errors).toBeUndefined();
      expect(r.queries).toBe(1);
      const groups = r.body.data.run_steps_aggregate.groups;
      expect(groups).toHaveLength(expected.length);
      expected.forEach((e, i) => {
        const g = groups[i];
        expect(g.key).toEqual({ status: e.status });
        expect(g.count).toBe(e.n);
        expect(g.sum.duration_ms).toBe(e.sum);
        expect(g.avg.duration_ms).toBeCloseTo(e.avg, 9);
        expect(g.min).toEqual({ duration_ms: e.min, name: e.min_name });
        expect(g.max).toEqual({ duration_ms: e.max, name: e.max_name });
      });
    });

    it('returns one group over the whole (tenant) table without group_by, and min/max of timestamps', async () => {
      const [e] = await sql<{ n: number; min: string }>(
        "SELECT count(*)::int AS n, to_json(min(started_at)) #>> '{}' AS min FROM pipeline_runs WHERE tenant_id = 'acme'",
      );
      const r = await gql(reader, '{ pipeline_runs_aggregate { groups { key count min { started_at } } } }');
      expect(r.body.data.pipeline_runs_aggregate.groups).toEqual([{ key: {}, count: e!.n, min: { started_at: e!.min } }]);
    });
  });

  describe('mutations', () => {
    it('inserts rows (one and many) with defaults and tenant from the session', async () => {
      const many = await gql(
        writer,
        `mutation { insert_pipelines(objects: [{ name: "gql-a", status: "paused" }, { name: "gql-b", description: "b" }]) { id name status tenant_id pipeline_runs { id } } }`,
      );
      expect(many.body.errors).toBeUndefined();
      expect(many.body.data.insert_pipelines).toMatchObject([
        { name: 'gql-a', status: 'paused', tenant_id: 'acme', pipeline_runs: [] },
        { name: 'gql-b', status: 'active', tenant_id: 'acme', pipeline_runs: [] },
      ]);
      const one = await gql(writer, 'mutation($o: pipelines_insert_input!) { insert_pipelines_one(object: $o) { id name } }', { o: { name: 'gql-c' } });
      const rows = await sql<{ name: string; tenant_id: string }>("SELECT name, tenant_id FROM pipelines WHERE name LIKE 'gql-%' ORDER BY name");
      expect(rows).toEqual([
        { name: 'gql-a', tenant_id: 'acme' },
        { name: 'gql-b', tenant_id: 'acme' },
        { name: 'gql-c', tenant_id: 'acme' },
      ]);
      expect(one.body.data.insert_pipelines_one.name).toBe('gql-c');
    });

    it('inserts children with jsonb and timestamps, visible to nested reads in the same transaction', async () => {
      const [p] = await sql<{ id: string }>("SELECT id::text FROM pipelines WHERE name = 'gql-a'");
      const r = await gql(
        writer,
        `mutation($o: pipeline_runs_insert_input!) { insert_pipeline_runs_one(object: $o) { id params started_at pipelines { name pipeline_runs { id } } } }`,
        { o: { pipeline_id: p!.id, params: { region: 'eu', tags: ['x', 1] }, started_at: '2024-05-01T10:00:00.123456Z' } },
      );
      expect(r.body.errors).toBeUndefined();
      const run = r.body.data.insert_pipeline_runs_one;
      expect(run.params).toEqual({ region: 'eu', tags: ['x', 1] });
      expect(run.started_at).toBe('2024-05-01T10:00:00.123456+00:00');
      expect(run.pipelines.name).toBe('gql-a');
      expect(pluck(run.pipelines.pipeline_runs, 'id')).toEqual([run.id]);
    });

    it('updates by primary key and by filter, and deletes both ways', async () => {
      const [a] = await sql<{ id: string }>("SELECT id::text FROM pipelines WHERE name = 'gql-a'");
      const up = await gql(writer, 'mutation($id: ID!) { update_pipelines_by_pk(pk_columns: { id: $id }, _set: { description: "changed", status: "archived" }) { id description status } }', {
        id: a!.id,
      });
      expect(up.body.data.update_pipelines_by_pk).toEqual({ id: a!.id, description: 'changed', status: 'archived' });
      const many = await gql(writer, 'mutation { update_pipelines(where: { name: { _like: "gql-%" } }, _set: { description: "bulk" }) { affected_rows returning { name } } }');
      expect(many.body.data.update_pipelines.affected_rows).toBe(3);
      expect((await sql("SELECT 1 FROM pipelines WHERE name LIKE 'gql-%' AND description = 'bulk'")).length).toBe(3);
      const del = await gql(writer, `mutation { delete_pipelines_by_pk(id: "${a!.id}") { id name } }`);
      expect(del.body.data.delete_pipelines_by_pk).toEqual({ id: a!.id, name: 'gql-a' });
      const delMany = await gql(writer, 'mutation { delete_pipelines(where: { name: { _in: ["gql-b", "gql-c"] } }) { affected_rows } }');
      expect(delMany.body.data.delete_pipelines.affected_rows).toBe(2);
      expect(await sql("SELECT 1 FROM pipelines WHERE name LIKE 'gql-%'")).toHaveLength(0);
      const gone = await gql(writer, `mutation { delete_pipelines_by_pk(id: "${a!.id}") { id } }`);
      expect(gone.body).toEqual({ data: { delete_pipelines_by_pk: null } });
    });

    it('runs all mutation fields of a request in one transaction: a failing 3rd field rolls back the first two', async () => {
      const mutation = `mutation {
        a: insert_pipelines_one(object: { name: "tx-a" }) { id }
        b: update_pipelines(where: { name: { _eq: "pipeline-1" } }, _set: { description: "tx-b" }) { affected_rows }
        c: insert_pipeline_runs_one(object: { pipeline_id: "987654321" }) { id }
        d: insert_pipelines_one(object: { name: "tx-d" }) { id }
      }`;
      for (let i = 0; i < 2; i++) {
        // twice: the second execution is JIT-compiled and must run fields serially too
        const r = await gql(writer, mutation);
        expect(r.status).toBe(409);
        expect(r.body.data).toBeNull();
        expect((r.body.errors as Array<{ extensions: { code: string } }>).map((e) => e.extensions.code)).toEqual(['FOREIGN_KEY_VIOLATION', 'MUTATION_ABORTED']);
        expect(await sql("SELECT 1 FROM pipelines WHERE name IN ('tx-a', 'tx-d')")).toHaveLength(0);
        expect(await sql("SELECT 1 FROM pipelines WHERE description = 'tx-b'")).toHaveLength(0);
      }
      expect(t.db.borrowedCount()).toBe(0);
    });

    it('rolls back earlier fields when a later one fails validation before SQL (VALUE_TOO_LONG names the field)', async () => {
      const r = await gql(
        writer,
        `mutation($long: String!) { a: insert_pipelines_one(object: { name: "tx-v" }) { id } b: insert_pipelines(objects: [{ name: "ok" }, { name: $long }]) { id } }`,
        { long: 'x'.repeat(201) },
      );
      expect(r.status).toBe(400);
      expect(r.body.errors![0]!.extensions).toMatchObject({ code: 'VALUE_TOO_LONG', details: { field: 'objects[1].name' } });
      expect(await sql("SELECT 1 FROM pipelines WHERE name IN ('tx-v', 'ok')")).toHaveLength(0);
    });

    it('commits a successful multi-field mutation as one unit', async () => {
      const r = await gql(writer, 'mutation { a: insert_pipelines_one(object: { name: "tx-ok-1" }) { id } b: insert_pipelines_one(object: { name: "tx-ok-2" }) { id } }');
      expect(r.status).toBe(200);
      expect(await sql("SELECT 1 FROM pipelines WHERE name LIKE 'tx-ok-%'")).toHaveLength(2);
      await sql("DELETE FROM pipelines WHERE name LIKE 'tx-ok-%'");
    });
  });

  describe('schema and tooling', () => {
    it('answers the full introspection query (GraphiQL) despite its depth', async () => {
      const r = await gql(reader, getIntrospectionQuery());
      expect(r.status).toBe(200);
      const names = pluck(r.body.data.__schema.types, 'name');
      expect(names).toEqual(expect.arrayContaining(['pipelines', 'pipelines_connection', 'pipelines_bool_exp', 'pipelines_aggregate', 'BigInt', 'JSON', 'DateTime']));
    });

    it('serves GraphiQL publicly at /graphiql', async () => {
      const res = await t.app.inject({ url: '/graphiql' });
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toMatch(/html/);
    });

    it('rebuilds the schema when the registry changes (a new table appears)', async () => {
      await sql('CREATE TABLE public.gadgets (id int PRIMARY KEY, label text NOT NULL)');
      await sql("INSERT INTO public.gadgets VALUES (1, 'one')");
      await sql('GRANT SELECT ON public.gadgets TO strata_tenant');
      const before = await gql(reader, '{ gadgets { nodes { id label } } }');
      expect(before.body.errors![0]!.extensions.code).toBe('GRAPHQL_VALIDATION_FAILED');
      await t.app.services.schema.refresh();
      const after = await gql(reader, '{ gadgets { nodes { id label } } }');
      expect(after.body).toEqual({ data: { gadgets: { nodes: [{ id: 1, label: 'one' }] } } });
    });
  });
});
