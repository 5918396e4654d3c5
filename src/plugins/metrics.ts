/** `/metrics` in Prometheus text format, and an HTTP request duration histogram by route. */
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';
import { Histogram, collectDefaultMetrics, type Registry } from 'prom-client';

export default fp(
  async function metricsPlugin(app: FastifyInstance, opts: { registry: Registry }) {
    const { registry } = opts;
    collectDefaultMetrics({ register: registry, prefix: 'strata_' });
    const http = new Histogram({
      name: 'strata_http_request_seconds',
      help: 'HTTP request duration by route and status',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
      registers: [registry],
    });
    // label-bound children per (method, route, status): prom-client hashes a label object on every
    // observe otherwise
    const children = new Map<string, { observe(v: number): void }>();
    app.addHook('onResponse', (request, reply, done) => {
      const route = request.routeOptions.url ?? 'unmatched';
      const status = reply.statusCode;
      const key = `${request.method} ${status} ${route}`;
      let child = children.get(key);
      if (!child) children.set(key, (child = http.labels({ method: request.method, route, status: String(status) })));
      child.observe(reply.elapsedTime / 1000);
      done();
    });
    app.get('/metrics', { schema: { hide: true } }, async (_request, reply) => {
      void reply.type(registry.contentType);
      return registry.metrics();
    });
  },
  { name: 'strata-metrics' },
);
