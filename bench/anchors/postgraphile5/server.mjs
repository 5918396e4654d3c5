// C5: PostGraphile 5 (Grafast planner; library mode, plain node http server) over Strata's own
// benchmark database (pipelines -> pipeline_runs -> run_steps), as Strata's tenant sessions run:
// logged in as Strata's app role (a member of strata_tenant, no BYPASSRLS), the tenant set per
// request through pgSettings (`strata.tenant_id`, from the x-tenant-id header), so the same RLS
// policies apply. PostGraphile then wraps each request in BEGIN; select set_config(...); ...; COMMIT.
// Installed from npm (postgraphile 5.1.5) in this folder only (the parent folder holds 4.14.1).
import http from 'node:http';
import { postgraphile } from 'postgraphile';
import { PostGraphileAmberPreset } from 'postgraphile/presets/amber';
import { makePgService } from 'postgraphile/adaptors/pg';
import { grafserv } from 'postgraphile/grafserv/node';

// PostGraphile 5 asks for Node 22; on Node 20 it needs only Promise.withResolvers (Node 22), added here.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

const PORT = Number(process.env.PORT || 3104);
const connectionString = process.env.DATABASE_URL;
if (!connectionString) throw new Error('DATABASE_URL is required (Strata app role)');

const preset = {
  extends: [PostGraphileAmberPreset],
  pgServices: [makePgService({ connectionString, schemas: ['public'], poolConfig: { max: 16 } })],
  grafast: {
    explain: false,
    context(requestContext) {
      const req = requestContext.node?.req;
      return { pgSettings: { 'strata.tenant_id': String(req?.headers['x-tenant-id'] ?? '') } };
    },
  },
  grafserv: { graphiql: false, watch: false },
};

const pgl = postgraphile(preset);
const serv = pgl.createServ(grafserv);
const server = http.createServer();
server.keepAliveTimeout = 72000;
serv.addTo(server).then(
  () => server.listen(PORT, '127.0.0.1', () => console.log(`postgraphile 5 listening on ${PORT}`)),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => server.close(() => pgl.release().then(() => process.exit(0))));
