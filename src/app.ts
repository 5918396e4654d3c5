/**
 * build(): the Fastify app factory. It wires plugins, services and routes around already-created
 * infrastructure (database, Redis) and never listens; src/server.ts does.
 */
import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyServerOptions } from 'fastify';
import type { Redis } from 'ioredis';
import { Registry } from 'prom-client';
import type { Config } from './config.js';
import type { Database } from './db/database.js';
import { createKysely } from './db/kysely.js';
import type { Migrator } from './db/migrations/index.js';
import { createAuthenticator } from './services/identity/index.js';
import { createTenantService, type TenantService } from './services/identity/index.js';
import { createApiKeyService, type ApiKeyService } from './services/identity/index.js';
import errorsPlugin from './plugins/errors.js';
import authPlugin from './plugins/auth.js';
import limitsPlugin from './plugins/limits.js';
import { createLimits } from './services/limits/index.js';
import requestContextPlugin from './plugins/request-context.js';
import metricsPlugin from './plugins/metrics.js';
import swaggerPlugin from './plugins/swagger.js';
import healthRoutes from './api/rest/health/index.js';
import tenantRoutes from './api/rest/tenants/index.js';
import apiKeyRoutes from './api/rest/api-keys/index.js';
import tableRoutes from './api/rest/tables/index.js';
import graphqlPlugin from './plugins/graphql.js';
import jobsPlugin from './plugins/jobs.js';
import type { JobsService } from './jobs/queues.js';
import { createRegistryService, type SchemaRegistry } from './services/data/index.js';
import { createRowsService, type RowsService } from './services/data/index.js';
import { createCursorCodec } from './services/data/index.js';
import { createTransactionService, type TransactionService } from './services/data/index.js';
import transactionRoutes from './api/rest/transactions/index.js';
import { createMigrationService, type MigrationService } from './services/migrations/index.js';
import migrationRoutes from './api/rest/migrations/index.js';
import sqlRoutes from './api/rest/sql/index.js';
import { createBackupServices, type BackupServices } from './services/backups/index.js';
import backupRoutes, { restoreRoutes } from './api/rest/backups/index.js';
import maintenancePlugin from './plugins/maintenance.js';
import idempotencyPlugin from './plugins/idempotency.js';
import { createQueryInsightService, type QueryInsightService } from './services/query-insight/index.js';
import queryInsightRoutes from './api/rest/query-insight/index.js';
import { createResultCache, type ResultCache } from './services/analytics/index.js';
import { createWriteHooks, type WriteHooks } from './services/analytics/index.js';
import { createAuditLog, createDeclarations, createEnforcement, createSubjectFields, createEventMasking, createTenantKeys, parseMasterKeys, type AuditLog, type Declarations, type Enforcement, type MasterKeys, type TenantKeys } from './services/compliance/index.js';
import complianceRoutes from './api/rest/compliance/index.js';
import complianceOpsRoutes from './api/rest/compliance/ops.js';
import subjectRoutes from './api/rest/subjects/index.js';
import { createComplianceOps, type ComplianceOps } from './services/compliance/index.js';
import { createTimeseriesService, type TimeseriesService } from './services/analytics/index.js';
import { createViewsService, type ViewsService } from './services/analytics/index.js';
import viewAdminRoutes, { viewReadRoutes } from './api/rest/views/index.js';
import timeseriesRoutes from './api/rest/timeseries/index.js';
import cacheRoutes from './api/rest/cache/index.js';
import exportRoutes from './api/rest/exports/index.js';
import { createChangeFeed, type ChangeFeed } from './services/changes/index.js';
import { createChangeService, type ChangeService } from './services/changes/index.js';
import { createWebhookService, type WebhookService } from './services/changes/index.js';
import changeRoutes, { rowHistoryRoutes } from './api/rest/changes/index.js';
import webhookRoutes from './api/rest/webhooks/index.js';
import { createSearchService, type SearchService } from './services/search/index.js';
import searchRoutes from './api/rest/search/index.js';
import searchIndexRoutes from './api/rest/search-indexes/index.js';
import { createTestingService, type TestingService } from './services/testing/index.js';
import testingRoutes from './api/rest/testing/index.js';
import postgrestRoutes from './api/postgrest/index.js';
import { createRestFunctionsService, createRestRowsService, type RestFunctionsService, type RestRowsService } from './services/data/index.js';
import clusterRoutes from './api/rest/cluster/index.js';
import partitionRoutes from './api/rest/partitions/index.js';
import clusterGuard from './plugins/cluster-guard.js';
import { createClusterService, type ClusterService } from './services/cluster/index.js';
import { createSandboxService, type SandboxService } from './services/sandboxes/index.js';
import sandboxRoutes from './api/rest/sandboxes/index.js';
import sandboxPlugin from './plugins/sandbox.js';
import { createPartitionService, type PartitionService } from './services/partitions/index.js';

export interface AppServices extends BackupServices {
  tenants: TenantService;
  apiKeys: ApiKeyService;
  schema: SchemaRegistry;
  rows: RowsService;
  transactions: TransactionService;
  migrations: MigrationService;
  insight: QueryInsightService;
  cache: ResultCache;
  hooks: WriteHooks;
  timeseries: TimeseriesService;
  views: ViewsService;
  changeFeed: ChangeFeed;
  changes: ChangeService;
  webhooks: WebhookService;
  search: SearchService;
  compliance: { declarations: Declarations; keys: TenantKeys; masterKeys: MasterKeys | null; enforcement: Enforcement; audit: AuditLog };
  /** Scan, anonymized copies, subject erasure, key rotation, the report (issue 15's operations). */
  complianceOps: ComplianceOps;
  testing: TestingService;
  /** The PostgREST face's core: reads/writes and functions (/rest/v1). */
  restRows: RestRowsService;
  restFunctions: RestFunctionsService;
  cluster: ClusterService;
  sandboxes: SandboxService;
  partitions: PartitionService;
}

declare module 'fastify' {
  interface FastifyInstance {
    config: Config;
    db: Database;
    redis: Redis;
    migrator: Migrator | undefined;
    metricsRegistry: Registry;
    services: AppServices;
  }
}

export interface BuildOptions {
  config: Config;
  db: Database;
  redis: Redis;
  /** The JWT_SECRET in force (generated in development when not configured). */
  jwtSecret?: string;
  migrator?: Migrator;
  /** Prometheus registry; the database layer's metrics must live on the same one. */
  registry?: Registry;
  logger?: FastifyServerOptions['logger'];
  /** An existing pino logger (the server's), instead of logger options. */
  loggerInstance?: FastifyBaseLogger;
  /** The job system (shared with in-process workers and tests); created from REDIS_URL when absent. */
  jobs?: JobsService;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const MAX_PARAM_LENGTH = 1024;

import { createLogger, loggerOptions } from './logger.js';

export { createLogger, loggerOptions };

export async function build(opts: BuildOptions): Promise<FastifyInstance> {
  const { config, db } = opts;
  const app = Fastify({
    ...(opts.loggerInstance ? { loggerInstance: opts.loggerInstance } : { logger: opts.logger ?? loggerOptions(config) }),
    bodyLimit: config.BODY_LIMIT_BYTES,
    requestIdHeader: false, // genReqId reads and validates X-Request-Id itself
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: false } },
    // the drain answers 503 in Strata's error shape (SHUTTING_DOWN, src/plugins/errors.ts), not Fastify's
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    // a path parameter longer than this is refused before routing (414 PARAM_TOO_LONG)
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    // errors raised by the router itself, before any handler: the same error shape as every other
    frameworkErrors: (err, request, reply) => {
      const [status, code, message] =
        err.code === 'FST_ERR_MAX_PARAM_LENGTH'
          ? [414, 'PARAM_TOO_LONG', `a path parameter is longer than ${MAX_PARAM_LENGTH} characters`]
          : err.code === 'FST_ERR_BAD_URL'
            ? [400, 'BAD_URL', 'the URL has a malformed percent-encoded component']
            : [400, 'BAD_REQUEST', err.message];
      request.log.info({ code, status }, message);
      // the PostgREST face answers in PostgREST's flat shape (its code for a request it cannot read)
      const body = request.url.startsWith('/rest/v1/') ? { code: 'PGRST100', message, details: { code }, hint: null } : { error: { code, message } };
      void (reply as unknown as FastifyReply).code(status).header('x-request-id', request.id).send(body);
    },
  });
  const registry = opts.registry ?? new Registry();
  const kysely = createKysely(db.admin);
  const authenticator = createAuthenticator({ config, db, jwtSecret: opts.jwtSecret ?? config.JWT_SECRET });
  const schema = createRegistryService({ db });
  const masterKeys = parseMasterKeys(config.ENCRYPTION_MASTER_KEYS);
  const declarations = createDeclarations({ db, schema });
  const tenantKeys = createTenantKeys({ db, keys: masterKeys });
  const audit = createAuditLog({ db, log: app.log });
  const enforcement = createEnforcement({ db, declarations, keys: tenantKeys, audit, subjects: createSubjectFields({ db, keys: masterKeys }) });
  const cache = createResultCache({
    redis: opts.redis,
    db,
    schema,
    log: app.log,
    enabled: config.CACHE_ENABLED,
    ttlS: config.CACHE_TTL_S,
    prefix: config.CACHE_PREFIX,
    registry,
    staticTables: config.CACHE_TABLES.split(',').map((s) => s.trim()).filter(Boolean),
    compliance: { tag: (tables) => enforcement.policyTag(tables), audit },
  });
  const hooks = createWriteHooks({ cache, schema, listeners: () => [services.views], log: app.log });
  const cursors = createCursorCodec(opts.jwtSecret ?? config.JWT_SECRET ?? randomUUID());
  const rows = createRowsService({
    db,
    schema,
    cursors,
    defaultLimit: config.ROWS_DEFAULT_LIMIT,
    maxLimit: config.ROWS_MAX_LIMIT,
    countCap: config.COUNT_ESTIMATE_CAP,
    maxResponseBytes: config.ROWS_MAX_RESPONSE_BYTES || config.RESPONSE_MAX_BYTES,
    afterCommit: hooks.afterCommit,
    compliance: enforcement,
  });
  const timeseries = createTimeseriesService({
    db,
    schema,
    maxBuckets: config.TIMESERIES_MAX_BUCKETS,
    maxPoints: config.TIMESERIES_MAX_POINTS,
    maxBytes: config.RESPONSE_MAX_BYTES,
    maxLimit: config.ROWS_MAX_LIMIT,
  });
  const limits = createLimits({ db, config, log: app.log });
  const services: AppServices = {
    tenants: createTenantService({
      kysely,
      onChange: (id) => {
        authenticator.forgetTenant(id);
        limits.forget(id);
      },
    }),
    apiKeys: createApiKeyService({ kysely }),
    schema,
    rows,
    transactions: createTransactionService({ db, rows, afterCommit: hooks.afterCommit }),
    migrations: createMigrationService({ migrator: opts.migrator, schema }),
    ...createBackupServices(db, app.log),
    insight: createQueryInsightService({ db, redis: opts.redis, config, log: app.log, registry, rows }),
    cache,
    hooks,
    timeseries,
    views: createViewsService({ db, schema, rows, timeseries, jobs: () => app.jobs, log: app.log, compliance: enforcement }),
    ...changeServices(config, db, schema, app.log, enforcement),
    compliance: { declarations, keys: tenantKeys, masterKeys, enforcement, audit },
    complianceOps: createComplianceOps({ db, schema, keys: tenantKeys, masterKeys, backups: { completed: () => services.backups.completed() } }),
    testing: createTestingService({ db, schema, redis: opts.redis, enabled: config.TESTING_MODE, snapshotMaxRows: config.TESTING_SNAPSHOT_MAX_ROWS, snapshotTtlS: config.TESTING_SNAPSHOT_TTL_S, afterCommit: hooks.afterCommit }),
    restRows: createRestRowsService({ db, schema, maxRows: config.POSTGREST_MAX_ROWS, countCap: config.POSTGREST_COUNT_CAP, maxResponseBytes: config.ROWS_MAX_RESPONSE_BYTES || config.RESPONSE_MAX_BYTES, afterCommit: hooks.afterCommit, compliance: enforcement }),
    restFunctions: createRestFunctionsService({ db, schema }),
    search: createSearchService({ db, schema, cursors, compliance: enforcement, fuzzyThreshold: config.SEARCH_FUZZY_THRESHOLD, fuzzySimilarity: config.SEARCH_FUZZY_SIMILARITY, maxQueryLength: config.SEARCH_MAX_QUERY_LENGTH, maxResponseBytes: config.RESPONSE_MAX_BYTES }),
    cluster: createClusterService({ db }),
    sandboxes: createSandboxService({ db, log: app.log, ttlS: config.SANDBOX_TTL_S, maxPerTenant: config.SANDBOX_MAX_PER_TENANT }),
    partitions: createPartitionService({ db }),
  };
  db.observe(services.insight.observer);
  app.addHook('onClose', async () => db.observe(undefined));
  app.addHook('onClose', async () => cache.close());
  app.addHook('onClose', async () => audit.close());
  app.decorate('config', config);
  app.decorate('db', db);
  app.decorate('redis', opts.redis);
  app.decorate('migrator', opts.migrator);
  app.decorate('metricsRegistry', registry);
  app.decorate('services', services);

  await app.register(errorsPlugin);
  await app.register(requestContextPlugin);
  await app.register(metricsPlugin, { registry });
  await app.register(swaggerPlugin);
  await app.register(authPlugin, { authenticator });
  await app.register(limitsPlugin, { limits, redis: opts.redis });
  await app.register(maintenancePlugin);
  await app.register(idempotencyPlugin);
  await app.register(clusterGuard);
  await app.register(sandboxPlugin);

  await app.register(healthRoutes);
  await app.register(tenantRoutes, { prefix: '/v1/admin/tenants' });
  await app.register(apiKeyRoutes, { prefix: '/v1/admin/api-keys' });
  await app.register(tableRoutes, { prefix: '/v1/tables' });
  await app.register(graphqlPlugin);
  await app.register(migrationRoutes, { prefix: '/v1/admin/migrations' });
  await app.register(transactionRoutes, { prefix: '/v1/transactions' });
  await app.register(sqlRoutes, { prefix: '/v1/sql' });
  await app.register(timeseriesRoutes, { prefix: '/v1/tables' });
  await app.register(viewAdminRoutes, { prefix: '/v1/admin/views' });
  await app.register(viewReadRoutes, { prefix: '/v1/views' });
  await app.register(cacheRoutes, { prefix: '/v1/admin/cache' });
  await app.register(jobsPlugin, { jobs: opts.jobs });
  await app.register(backupRoutes, { prefix: '/v1/admin/backups' });
  await app.register(restoreRoutes, { prefix: '/v1/admin/restores' });
  await app.register(queryInsightRoutes, { prefix: '/v1/admin' });
  await app.register(exportRoutes);
  await app.register(changeRoutes, { prefix: '/v1/changes' });
  await app.register(rowHistoryRoutes, { prefix: '/v1/tables' });
  await app.register(webhookRoutes, { prefix: '/v1/webhooks' });
  app.addHook('onClose', () => services.changeFeed.close());
  await app.register(searchRoutes, { prefix: '/v1/search' });
  await app.register(searchIndexRoutes, { prefix: '/v1/admin/search-indexes' });
  await app.register(complianceRoutes, { prefix: '/v1/admin/compliance' });
  await app.register(complianceOpsRoutes, { prefix: '/v1/admin/compliance' });
  await app.register(subjectRoutes, { prefix: '/v1/subjects' });
  await app.register(testingRoutes, { prefix: '/v1/testing' });
  await app.register(postgrestRoutes, { prefix: '/rest/v1', rows: services.restRows, functions: services.restFunctions });
  await app.register(clusterRoutes, { prefix: '/v1/admin' });
  await app.register(sandboxRoutes, { prefix: '/v1/admin/sandboxes' });
  await app.register(partitionRoutes, { prefix: '/v1/admin/partitions' });
  return app;
}

/** Change data capture: the process's LISTEN connection, the change log and webhooks. */
function changeServices(config: Config, db: Database, schema: SchemaRegistry, log: FastifyBaseLogger, compliance: Enforcement) {
  const changeFeed = createChangeFeed({ connectionString: db.admin.options.connectionString, log, pollMs: config.CHANGES_POLL_MS });
  const changes = createChangeService({ db, schema, feed: changeFeed, defaultLimit: config.ROWS_DEFAULT_LIMIT, maxLimit: config.ROWS_MAX_LIMIT, maxResponseBytes: config.RESPONSE_MAX_BYTES, masking: createEventMasking({ db }), compliance });
  const webhooks = createWebhookService({ db, changes, allowPrivate: config.WEBHOOK_ALLOW_PRIVATE, maxLimit: config.ROWS_MAX_LIMIT, maxPerTenant: config.WEBHOOK_TENANT_MAX });
  return { changeFeed, changes, webhooks };
}
