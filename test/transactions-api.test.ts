import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';

type Json = Record<string, unknown>;

describe('POST /v1/transactions: atomic batches', () => {
  let t: TestApp;
  let writer: Record<string, string>;
  beforeAll(async () => {
    t = await createTestApp({ seed: true });
    writer = await t.auth('writer', 'acme');
  });
  afterAll(() => t.close());

  const post = async (payload: unknown, headers = writer) => {
    const res = await t.app.inject({ method: 'POST', url: '/v1/transactions', headers, payload: payload as never });
    return { status: res.statusCode, body: res.json<Json>() };
  };
  const sql = async <R extends Json>(text: string, values: unknown[] = []) => (await t.db.adminQuery<R>(text, values)).rows;
  const names = async (prefix: string) => (await sql<{ name: string }>('SELECT name FROM pipelines WHERE name LIKE $1 ORDER BY name', [`${prefix}%`])).map((r) => r.name);
  const snapshot = () => sql('SELECT * FROM pipelines ORDER BY id');

  it('runs operations all-or-nothing and returns each result and the attempt count', async () => {
    const { status, body } = await post({
      isolation: 'repeatable read',
      operations: [
        { op: 'insert', table: 'pipelines', rows: { name: 'tx-a' } },
        { op: 'insert', table: 'pipelines', rows: [{ name: 'tx-b' }, { name: 'tx-c' }], select: 'name' },
        { op: 'update', table: 'pipelines', filters: { name: 'eq.tx-b' }, set: { status: 'paused' }, select: 'name,status' },
        { op: 'delete', table: 'pipelines', filters: { name: 'eq.tx-c' }, select: 'name' },
      ],
    });
    expect(status).toBe(200);
    const data = body['data'] as { attempts: number; results: Array<Json> };
    expect(data.attempts).toBe(1);
    expect(data.results.map((r) => [r['index'], r['status'], r['count']])).toEqual([
      [0, 'ok', 1],
      [1, 'ok', 2],
      [2, 'ok', 1],
      [3, 'ok', 1],
    ]);
    expect(data.results[2]!['data']).toEqual([{ name: 'tx-b', status: 'paused' }]);
    expect(await names('tx-')).toEqual(['tx-a', 'tx-b']);
  });

  it('commits nothing when the third operation fails, naming it', async () => {
    const before = await snapshot();
    const { status, body } = await post({
      operations: [
        { op: 'insert', table: 'pipelines', rows: { name: 'fail-a' } },
        { op: 'insert', table: 'pipelines', rows: { name: 'fail-b' } },
        { op: 'insert', table: 'pipelines', rows: { name: 'fail-c', status: 'exploded' } },
        { op: 'insert', table: 'pipelines', rows: { name: 'fail-d' } },
      ],
    });
    expect(status).toBe(400);
    const error = body['error'] as Json;
    expect(error['code']).toBe('INVALID_ENUM_VALUE');
    expect((error['details'] as Json)['operation']).toBe(2);
    expect(String(error['message'])).toContain('operation 2');
    expect(await snapshot()).toEqual(before);
  });

  it('rolls back only a failing operation inside its savepoint with on_error: rollback_to_savepoint', async () => {
    const { status, body } = await post({
      operations: [
        { op: 'insert', table: 'pipelines', rows: { name: 'sp-a' } },
        { op: 'insert', table: 'pipelines', rows: { id: 1, name: 'sp-duplicate' }, savepoint: 'dup', on_error: 'rollback_to_savepoint' },
        { op: 'insert', table: 'pipelines', rows: { name: 'sp-c' } },
      ],
    });
    expect(status).toBe(200);
    const results = (body['data'] as { results: Array<Json> }).results;
    expect(results.map((r) => r['status'])).toEqual(['ok', 'rolled_back', 'ok']);
    expect((results[1]!['error'] as Json)['code']).toBe('UNIQUE_VIOLATION');
    expect(await names('sp-')).toEqual(['sp-a', 'sp-c']);
  });

  it('retries a serialization conflict and reports the attempts', async () => {
    const [row] = await sql<{ id: number }>("INSERT INTO pipelines (tenant_id, name) VALUES ('acme', 'counter-0') RETURNING id::int");
    // Run concurrent serializable read-modify-write batches on the same row: some must conflict and be retried.
    const batch = () =>
      post({
        isolation: 'serializable',
        operations: [
          { op: 'update', table: 'pipelines', pk: row!.id, set: { description: `touched ${Math.random()}` } },
          { op: 'insert', table: 'run_logs', rows: { run_id: runId, message: 'counter touched' } },
          { op: 'update', table: 'pipelines', pk: row!.id, set: { status: 'active' } },
        ],
      });
    const [run] = await sql<{ id: number }>("SELECT id::int FROM pipeline_runs WHERE tenant_id = 'acme' LIMIT 1");
    const runId = run!.id;
    const results = await Promise.all(Array.from({ length: 8 }, batch));
    expect(results.every((r) => r.status === 200 || (r.status === 409 && (r.body['error'] as Json)['code'] === 'TRANSACTION_CONFLICT'))).toBe(true);
    const ok = results.filter((r) => r.status === 200).map((r) => (r.body['data'] as { attempts: number }).attempts);
    expect(ok.length).toBeGreaterThan(0);
    // overlapping serializable writers of one row conflict (40001); Strata retried them instead of failing
    expect(Math.max(...ok)).toBeGreaterThan(1);
  });

  it('cannot write another tenant rows inside a batch', async () => {
    const before = await sql("SELECT * FROM pipelines WHERE tenant_id = 'globex' ORDER BY id");
    const { status, body } = await post({
      operations: [
        { op: 'insert', table: 'pipelines', rows: { name: 'cross-a' } },
        { op: 'insert', table: 'pipelines', rows: { name: 'cross-b', tenant_id: 'globex' } },
      ],
    });
    expect(status).toBe(403);
    expect((body['error'] as Json)['code']).toBe('FORBIDDEN_BY_DATABASE');
    expect(await names('cross-')).toEqual([]);
    const upd = await post({ operations: [{ op: 'update', table: 'pipelines', filters: { tenant_id: 'eq.globex' }, set: { name: 'x' } }] });
    expect(upd.status).toBe(200);
    expect((upd.body['data'] as { results: Array<Json> }).results[0]!['count']).toBe(0);
    expect(await sql("SELECT * FROM pipelines WHERE tenant_id = 'globex' ORDER BY id")).toEqual(before);
  });

  describe('bad input', () => {
    it.each<[string, unknown, number, string]>([
      ['no operations', { operations: [] }, 400, 'VALIDATION_FAILED'],
      ['an unknown op', { operations: [{ op: 'truncate', table: 'pipelines' }] }, 400, 'VALIDATION_FAILED'],
      ['an unknown isolation level', { isolation: 'chaos', operations: [{ op: 'delete', table: 'pipelines', pk: 1 }] }, 400, 'VALIDATION_FAILED'],
      ['an unknown table', { operations: [{ op: 'insert', table: 'nope', rows: { a: 1 } }] }, 404, 'TABLE_NOT_FOUND'],
      ['an upsert without on_conflict', { operations: [{ op: 'upsert', table: 'pipelines', rows: { name: 'x' } }] }, 400, 'INVALID_OPERATION'],
      ['an unfiltered delete', { operations: [{ op: 'insert', table: 'pipelines', rows: { name: 'bad-x' } }, { op: 'delete', table: 'pipelines' }] }, 400, 'UNFILTERED_MASS_WRITE'],
      ['a bad savepoint name', { operations: [{ op: 'delete', table: 'pipelines', pk: 1, savepoint: 'x; ROLLBACK' }] }, 400, 'VALIDATION_FAILED'],
      ['too many operations', { operations: Array.from({ length: 101 }, () => ({ op: 'delete', table: 'pipelines', pk: 1 })) }, 400, 'VALIDATION_FAILED'],
    ])('%s -> %i %s, nothing written', async (_what, payload, status, code) => {
      const before = await snapshot();
      const r = await post(payload);
      expect(r.status).toBe(status);
      expect((r.body['error'] as Json)['code']).toBe(code);
      expect(await snapshot()).toEqual(before);
    });

    it('refuses a reader with 403', async () => {
      const before = await snapshot();
      const r = await post({ operations: [{ op: 'insert', table: 'pipelines', rows: { name: 'reader' } }] }, await t.auth('reader'));
      expect(r.status).toBe(403);
      expect(await snapshot()).toEqual(before);
    });
  });
});
