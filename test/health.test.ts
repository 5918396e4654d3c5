import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';

describe('health, readiness, metrics and docs', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp();
  });
  afterAll(() => t.close());

  it('answers /healthz with ok and an X-Request-Id', async () => {
    const res = await t.app.inject({ url: '/healthz' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ status: 'ok' });
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('echoes a well-formed caller X-Request-Id and replaces a malformed one', async () => {
    const good = await t.app.inject({ url: '/healthz', headers: { 'x-request-id': 'abc-123' } });
    expect(good.headers['x-request-id']).toBe('abc-123');
    const bad = await t.app.inject({ url: '/healthz', headers: { 'x-request-id': 'has spaces <script>' } });
    expect(bad.headers['x-request-id']).not.toBe('has spaces <script>');
  });

  it('reports ready when the database, Redis and migrations are in order', async () => {
    const res = await t.app.inject({ url: '/readyz' });
    expect(res.json()).toEqual({ status: 'ready', checks: { database: { ok: true }, redis: { ok: true }, migrations: { ok: true } } });
    expect(res.statusCode).toBe(200);
  });

  it('reports not ready with 503 when a migration is pending', async () => {
    await t.db.adminQuery("DELETE FROM strata.schema_migrations WHERE id = '0002_demo_schema'");
    try {
      const res = await t.app.inject({ url: '/readyz' });
      expect(res.statusCode).toBe(503);
      expect(res.json().checks.migrations.ok).toBe(false);
    } finally {
      await t.migrator.up().catch(() => undefined);
    }
  });

  it('exposes pool and query metrics in Prometheus format', async () => {
    await t.app.inject({ url: '/v1/tables/pipelines/rows', headers: await t.auth('reader') });
    const res = await t.app.inject({ url: '/metrics' });
    expect(res.statusCode).toBe(200);
    for (const name of [
      'strata_db_pool_total',
      'strata_db_pool_idle',
      'strata_db_pool_waiting',
      'strata_db_pool_acquire_seconds_bucket',
      'strata_db_query_seconds_bucket',
      'strata_db_pool_leaked_clients_total',
      'strata_http_request_seconds_bucket',
    ]) {
      expect(res.body).toContain(name);
    }
  });

  it('serves Swagger UI at /docs and the OpenAPI document', async () => {
    const ui = await t.app.inject({ url: '/docs/' });
    expect(ui.statusCode).toBe(200);
    expect(ui.body).toContain('swagger');
    const doc = await t.app.inject({ url: '/docs/json' });
    expect(doc.json().paths['/v1/admin/tenants/']).toBeDefined();
  });

  it('answers an unknown route with 404 ROUTE_NOT_FOUND', async () => {
    const res = await t.app.inject({ url: '/nope' });
    expect(res.statusCode).toBe(404);
    expect(res.json().error.code).toBe('ROUTE_NOT_FOUND');
  });
});
