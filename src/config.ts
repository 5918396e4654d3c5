/**
 * Configuration: read from environment variables only, validated once at boot, frozen.
 * A wrong value fails the boot with a message naming the variable (ConfigError).
 */
import { join } from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { CONFIG_DESCRIPTIONS } from './config-descriptions.js';

const Int = (def: number, min: number, max = Number.MAX_SAFE_INTEGER, description?: string) =>
  Type.Integer({ default: def, minimum: min, maximum: max, ...(description ? { description } : {}) });

const Url = (protocols: string[]) =>
  Type.String({ pattern: `^(${protocols.join('|')})://`, minLength: 4 });

export const EnvSchema = Type.Object({
  NODE_ENV: Type.Union([Type.Literal('development'), Type.Literal('production'), Type.Literal('test')], {
    default: 'development',
  }),
  /** Owner/admin connection: migrations and platform tables. Absent: embedded PostgreSQL. */
  DATABASE_URL: Type.Optional(Url(['postgres', 'postgresql'])),
  /** Connection for tenant sessions (non-owner, no BYPASSRLS). Absent: the role DB_APP_ROLE is managed by Strata. */
  APP_DATABASE_URL: Type.Optional(Url(['postgres', 'postgresql'])),
  DB_APP_ROLE: Type.String({ default: 'strata_app', pattern: '^[a-z_][a-z0-9_]{0,62}$' }),
  DB_APP_PASSWORD: Type.Optional(Type.String({ minLength: 8 })),
  REDIS_URL: Type.String({ default: 'redis://127.0.0.1:6379', pattern: '^rediss?://' }),
  JWT_SECRET: Type.Optional(Type.String({ minLength: 32 })),
  JWT_JWKS_URL: Type.Optional(Url(['https', 'http'])),
  JWT_ISSUER: Type.Optional(Type.String({ minLength: 1 })),
  JWT_AUDIENCE: Type.Optional(Type.String({ minLength: 1 })),
  JWT_MAX_AGE_S: Int(0, 0, 31_536_000),
  STREAM_AUTH_RECHECK_MS: Int(10_000, 50, 25_000),
  PORT: Int(3000, 0, 65535),
  HOST: Type.String({ default: '0.0.0.0', minLength: 1 }),
  LOG_LEVEL: Type.Union(
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
    { default: 'info' },
  ),
  /** Log line format: `pretty` (pino-pretty, for a terminal), `json`, or `auto` (pretty in development, JSON otherwise). */
  /** Master key ring for encrypted columns: `id:base64key,...` (32-byte keys); the first is active. */
  ENCRYPTION_MASTER_KEYS: Type.Optional(Type.String({ minLength: 1 })),
  LOG_FORMAT: Type.Union([Type.Literal('auto'), Type.Literal('json'), Type.Literal('pretty')], { default: 'auto' }),
  DB_POOL_MAX: Int(10, 1, 1000),
  DB_POOL_MIN: Int(2, 0, 1000),
  DB_ACQUIRE_TIMEOUT_MS: Int(2000, 1, 600_000),
  DB_IDLE_TIMEOUT_MS: Int(30_000, 0, 86_400_000),
  DB_MAX_LIFETIME_MS: Int(1_800_000, 0, 86_400_000),
  DB_LEAK_THRESHOLD_MS: Int(10_000, 0, 86_400_000),
  DB_LEAK_STACK_SAMPLE: Int(64, 1, 1_000_000),
  /** Most bytes of JSON one `POST /v1/sql` answer carries, counted by PostgreSQL; rows past it are cut (`truncated_by: "bytes"`). */
  SQL_MAX_RESULT_BYTES: Int(8_388_608, 1024, 1_073_741_824),
  /**
   * Most bytes of JSON one answer of the rows API, GraphQL, time series, search or change history may
   * carry, counted by PostgreSQL before anything is sent; past it: 413 RESPONSE_TOO_LARGE (change
   * history: a shorter page with next_cursor). Must stay far below V8's ~512 MB string limit.
   */
  RESPONSE_MAX_BYTES: Int(16_777_216, 1024, 268_435_456),
  /** Override of RESPONSE_MAX_BYTES for the rows API (GET /v1/tables/{table}/rows, views' rows); 0: RESPONSE_MAX_BYTES. */
  ROWS_MAX_RESPONSE_BYTES: Int(0, 0, 268_435_456),
  /** Override of RESPONSE_MAX_BYTES for one GraphQL request (all its fields together); 0: RESPONSE_MAX_BYTES. */
  GRAPHQL_MAX_RESPONSE_BYTES: Int(0, 0, 268_435_456),
  DB_STATEMENT_TIMEOUT_MS: Int(15_000, 0, 86_400_000),
  DB_LOCK_TIMEOUT_MS: Int(5_000, 0, 86_400_000),
  DB_HEALTHCHECK_INTERVAL_MS: Int(10_000, 0, 3_600_000),
  DB_VALIDATE_AFTER_IDLE_MS: Int(5_000, 0, 3_600_000),
  DB_TX_MAX_RETRIES: Int(5, 0, 100),
  SLOW_QUERY_MS: Int(500, 0, 3_600_000),
  /** Query insight: slow-query log (a capped Redis stream shared by API and workers), N+1, EXPLAIN. */
  SLOW_QUERY_LOG_KEY: Type.String({ default: 'strata:slow-queries', minLength: 1, maxLength: 200 }),
  SLOW_QUERY_LOG_MAX: Int(1000, 10, 100_000),
  N_PLUS_ONE_THRESHOLD: Int(10, 0, 100_000),
  EXPLAIN_LARGE_TABLE_ROWS: Int(10_000, 0, Number.MAX_SAFE_INTEGER),
  /** Estimated counts a tenant sees are exact counts stopped at this cap (planner statistics span every tenant). */
  COUNT_ESTIMATE_CAP: Int(10_000, 1, 10_000_000),
  /** Rows per page when no limit is given, and the largest limit accepted (more -> 400 LIMIT_TOO_LARGE). */
  ROWS_DEFAULT_LIMIT: Int(50, 1, 100_000),
  ROWS_MAX_LIMIT: Int(1000, 1, 100_000),
  /** PostgREST face (/rest/v1): the most rows one read returns (PostgREST's db-max-rows), also the cap of each embedded list. */
  POSTGREST_MAX_ROWS: Int(1000, 1, 100_000),
  /**
   * PostgREST face: `Prefer: count=planned|estimated` answer an exact count capped at this many rows
   * (planner statistics are table-wide and would describe other tenants' rows).
   */
  POSTGREST_COUNT_CAP: Int(10_000, 1, 10_000_000),
  /** Search (SPEC 10): fuzzy fallback when the text query finds fewer hits than this. */
  SEARCH_FUZZY_THRESHOLD: Int(10, 0, 10_000),
  SEARCH_MAX_QUERY_LENGTH: Int(256, 1, 10_000),
  /** GraphQL: serve query operations with one compiled SQL statement (false: every field through the resolvers). */
  GRAPHQL_COMPILER: Type.Boolean({ default: true, description: 'Compile each GraphQL query operation into one SQL statement that builds the response JSON' }),
  /** GraphQL plan cache: documents kept parsed, validated (and, without variables, compiled) per (document, operation, role). */
  GRAPHQL_PLAN_CACHE_MAX: Int(1000, 1, 1_000_000),
  GRAPHQL_LIVE_MAX_PER_TENANT: Int(200, 1, 100_000, 'Live queries (subscription { live { ... } }) one tenant may hold open per API process; more are refused with 429 LIVE_QUERY_LIMIT'),
  GRAPHQL_LIVE_DEBOUNCE_MS: Int(20, 0, 60_000, 'How long a live query waits after a change event touching its tables before running again (events within it are folded into one re-run)'),
  /** pg_trgm word_similarity a fuzzy match needs (pg_trgm.word_similarity_threshold for the query). */
  SEARCH_FUZZY_SIMILARITY: Type.Number({ default: 0.5, minimum: 0.05, maximum: 1 }),
  BODY_LIMIT_BYTES: Int(1_048_576, 1024, 1_073_741_824),
  OTEL_EXPORTER_OTLP_ENDPOINT: Type.Optional(Url(['http', 'https'])),
  OTEL_SERVICE_NAME: Type.String({ default: 'strata' }),
  /** Where the embedded PostgreSQL keeps its data (embedded default only). */
  DATA_DIR: Type.String({ default: './.data', minLength: 1 }),
  EMBEDDED_PG_PORT: Int(54329, 1, 65535),
  /** Apply pending migrations at boot (default: on in the embedded default, off otherwise). */
  MIGRATE_ON_BOOT: Type.Optional(Type.Boolean()),
  /** Seed the demo dataset when the demo tables are empty (default: on in the embedded default). */
  SEED_DEMO: Type.Optional(Type.Boolean()),
  /** Run BullMQ workers inside the API process (default: on in the embedded default). */
  RUN_WORKERS: Type.Optional(Type.Boolean()),
  MIGRATION_LOCK_TIMEOUT_MS: Int(10_000, 0, 3_600_000),
  API_KEY_SWEEP_CRON: Type.String({ default: '*/5 * * * *', minLength: 9 }),
  WORKER_CONCURRENCY: Int(4, 1, 256),
  /** The worker process serves /healthz, /readyz and /metrics on this port (0: none). */
  WORKER_HEALTH_PORT: Int(3001, 0, 65535),
  /** Backups (SPEC 8): directory store (default DATA_DIR/backups), optional S3-compatible store. */
  BACKUP_DIR: Type.Optional(Type.String({ minLength: 1 })),
  /** Comma-separated schemas to dump; empty: the whole database. */
  BACKUP_SCHEMAS: Type.Optional(Type.String({ pattern: '^[a-z_][a-z0-9_]*(,[a-z_][a-z0-9_]*)*$' })),
  /** Cron pattern of the scheduled full backup (BullMQ repeatable job); empty: no schedule. */
  BACKUP_CRON: Type.Optional(Type.String({ minLength: 9 })),
  BACKUP_KEEP_FULL: Int(7, 1, 10_000),
  BACKUP_KEEP_DAYS: Int(14, 0, 36_500),
  /** A directory holding pg_dump/pg_restore, tried before the usual places. */
  BACKUP_PG_BIN_DIR: Type.Optional(Type.String({ minLength: 1 })),
  BACKUP_S3_BUCKET: Type.Optional(Type.String({ minLength: 3 })),
  BACKUP_S3_PREFIX: Type.String({ default: 'strata-backups' }),
  BACKUP_S3_REGION: Type.String({ default: 'us-east-1', minLength: 1 }),
  BACKUP_S3_ENDPOINT: Type.Optional(Url(['http', 'https'])),
  BACKUP_S3_ACCESS_KEY_ID: Type.Optional(Type.String({ minLength: 1 })),
  BACKUP_S3_SECRET_ACCESS_KEY: Type.Optional(Type.String({ minLength: 1 })),
  BACKUP_S3_FORCE_PATH_STYLE: Type.Boolean({ default: false }),
  /** Result cache (Redis) for rows-API reads of opted-in tables: on/off, entry TTL, tables opted in by configuration. */
  CACHE_ENABLED: Type.Boolean({ default: true }),
  CACHE_TTL_S: Int(300, 1, 86_400),
  CACHE_TABLES: Type.String({ default: '', pattern: '^[A-Za-z0-9_$, ]*$' }),
  /** Redis key prefix of the cache (deployments sharing a Redis need their own). */
  CACHE_PREFIX: Type.String({ default: 'strata:cache', minLength: 1, maxLength: 100 }),
  /** Largest number of buckets a time-series request may produce (more -> 400 TOO_MANY_BUCKETS). */
  TIMESERIES_MAX_BUCKETS: Int(10_000, 1, 1_000_000),
  /** Largest number of points (groups x buckets, gap-filled ones included) one time series may answer: more -> 400 TOO_MANY_POINTS. */
  TIMESERIES_MAX_POINTS: Int(100_000, 1, 10_000_000),
  /** Statement timeout of a materialized view refresh (admin connection). */
  VIEW_REFRESH_TIMEOUT_MS: Int(600_000, 1000, 86_400_000),
  /** Where export jobs write their files (default: <DATA_DIR>/exports). */
  EXPORT_DIR: Type.Optional(Type.String({ minLength: 1 })),
  /** statement_timeout of a streamed export when the request gives no timeout_ms (0: off). */
  EXPORT_TIMEOUT_MS: Int(300_000, 0, 86_400_000),
  /** The largest timeout_ms an export request may ask for; also the timeout of export jobs. */
  EXPORT_MAX_TIMEOUT_MS: Int(3_600_000, 1, 86_400_000),
  /** Change data capture: days of change events kept (0: forever); partitions created this many days ahead. */
  CHANGES_RETENTION_DAYS: Int(30, 0, 36_500),
  CHANGES_PARTITIONS_AHEAD: Int(7, 1, 366),
  CHANGES_MAINTENANCE_CRON: Type.String({ default: '7 * * * *', minLength: 9 }),
  /** SSE heartbeat comment interval; how often each process polls the change-id sequence to wake its readers. */
  CHANGES_HEARTBEAT_MS: Int(15_000, 100, 3_600_000),
  CHANGES_POLL_MS: Int(50, 5, 60_000),
  /** Webhook delivery: attempts per event before it is dead-lettered, backoff base/cap, request timeout. */
  WEBHOOK_MAX_ATTEMPTS: Int(8, 1, 100),
  WEBHOOK_BACKOFF_BASE_MS: Int(1_000, 1, 3_600_000),
  WEBHOOK_BACKOFF_MAX_MS: Int(300_000, 1, 86_400_000),
  WEBHOOK_TIMEOUT_MS: Int(10_000, 100, 300_000),
  /** Lanes (rows, or tables) a webhook's delivery loop sends at once; events read per batch. */
  WEBHOOK_CONCURRENCY: Int(16, 1, 256),
  WEBHOOK_BATCH_SIZE: Int(200, 1, 10_000),
  /** How long a delivery loop holds a webhook without renewing (a killed worker's webhook resumes after it). */
  WEBHOOK_LEASE_MS: Int(30_000, 500, 3_600_000),
  /** Allow webhook URLs resolving to private, loopback or link-local addresses (tests, trusted networks). */
  WEBHOOK_ALLOW_PRIVATE: Type.Boolean({ default: false }),
  /** Fair shares per tenant (docs/limits.md): per-tenant request rate and concurrency caps; defaults of every tenant. */
  LIMITS_ENABLED: Type.Boolean({ default: true, description: 'Enforce the per-tenant limits (rate limit, connection, export and job caps); false turns them all off' }),
  LIMIT_REQUESTS_PER_SECOND: Int(1000, 1, 10_000_000, 'Requests per second one tenant may make, counted across every API process sharing REDIS_URL (fixed one-second windows); more answer 429 RATE_LIMITED with Retry-After'),
  LIMIT_APP_CONNECTIONS: Type.Optional(
    Type.Integer({ minimum: 1, maximum: 1000, description: 'Connections of the tenant-session pool one tenant may hold at once (default: half of DB_POOL_MAX, rounded up); more wait their turn up to DB_ACQUIRE_TIMEOUT_MS, then 429 TENANT_CONCURRENCY_LIMIT' }),
  ),
  LIMIT_STREAM_CONNECTIONS: Type.Optional(
    Type.Integer({ minimum: 1, maximum: 1000, description: 'Connections of the streaming pool (exports, cursors) one tenant may hold at once (default: half of that pool, rounded up)' }),
  ),
  DB_CLIENT_GRACE_MS: Int(5_000, 0, 600_000, 'How long past DB_STATEMENT_TIMEOUT_MS a tenant-session statement may go unanswered before the client gives up on a server that stopped answering and drops the connection (503 DB_UNRESPONSIVE); 0 turns the client-side limit off'),
  DB_TENANT_MAX_PARALLEL_WORKERS: Int(0, 0, 64, 'max_parallel_workers_per_gather of tenant sessions: 0 (default) runs each query in one backend, so the per-tenant connection caps also cap the database CPUs one tenant can take; raise it for a deployment with few tenants and many cores'),
  LIMIT_HEAVY_MS: Int(100, 1, 3_600_000, 'A tenant whose sessions on a pool lately took longer than this on average (moving average of the connection hold time) is a heavy tenant there: it may hold only LIMIT_HEAVY_CONNECTIONS of that pool at once, so slow work of one tenant cannot fill the database\'s CPUs while others wait'),
  LIMIT_HEAVY_CONNECTIONS: Int(2, 1, 1000, 'Connections of a pool a heavy tenant (see LIMIT_HEAVY_MS) may hold at once while another tenant has used that pool within the last second (a tenant alone keeps its whole share); more wait their turn up to DB_ACQUIRE_TIMEOUT_MS, then 429 TENANT_CONCURRENCY_LIMIT'),
  LIMIT_HEAVY_DB_MS_PER_SECOND: Int(250, 0, 1_000_000, 'Database time budget of a heavy tenant on each pool (see LIMIT_HEAVY_MS, here weighted by time): while another tenant whose sessions are short has started one within the last second, the heavy tenant\'s sessions on a pool may hold its connections for at most this many ms per second in total (250: a quarter of one connection); more wait their turn up to DB_ACQUIRE_TIMEOUT_MS, then 429 TENANT_CONCURRENCY_LIMIT (resource "database time", Retry-After). 0 turns the budget off'),
  LIMIT_EXPORTS: Int(2, 1, 1000, 'Streamed exports (GET /v1/tables/{table}/export, POST /v1/sql/export) one tenant may run at once per API process; more answer 429 TENANT_CONCURRENCY_LIMIT at once'),
  LIMIT_JOBS: Int(2, 1, 1000, 'Jobs of one tenant running at once across all workers; a job over the limit is put back as delayed (not failed) and retried shortly'),
  LIMITS_CACHE_TTL_MS: Int(5_000, 0, 3_600_000, 'How long a process keeps a tenant\'s limits before reading them again (a PATCH is seen at once by the process that served it, by the others within this time)'),
  RATE_LIMIT_PREFIX: Type.String({ default: 'strata:ratelimit', minLength: 1, maxLength: 100, description: 'Redis key prefix of the request counters (deployments sharing a Redis need their own)' }),
  RATE_LIMIT_SYNC_MS: Int(50, 5, 10_000, 'How often a process adds its local request counts to the shared counters in Redis (the rate limit may overshoot by what other processes served in this time)'),
  RATE_LIMIT_REDIS_TIMEOUT_MS: Int(100, 5, 10_000, 'Longest wait for Redis to answer an add to the shared counters; past it (or while Redis is down) the counts stay local (fail open). No request ever waits for Redis'),
  /**
   * Testing mode: the /v1/testing endpoints (factories, tenant snapshots, wiping a tenant's rows) for
   * end-to-end suites. Off by default; refused together with NODE_ENV=production.
   */
  TESTING_MODE: Type.Boolean({ default: false, description: 'Enable the /v1/testing endpoints (factories, snapshots, DELETE data) for end-to-end test suites; never with NODE_ENV=production' }),
  /** Testing mode: most rows one tenant snapshot may hold (more -> 413 SNAPSHOT_TOO_LARGE), and how long snapshots are kept. */
  TESTING_SNAPSHOT_MAX_ROWS: Type.Integer({ default: 100_000, minimum: 1, maximum: 10_000_000, description: "Testing mode: most rows one tenant snapshot may hold (more: 413 SNAPSHOT_TOO_LARGE)" }),
  TESTING_SNAPSHOT_TTL_S: Type.Integer({ default: 86_400, minimum: 60, maximum: 2_592_000, description: "Testing mode: seconds a tenant snapshot is kept (in Redis)" }),
  /** Tenant sandboxes (docs/testing.md#tenant-sandboxes): lifetime, how many per tenant, the largest copy, pool per sandbox. */
  SANDBOX_TTL_S: Type.Integer({ default: 86_400, minimum: 60, maximum: 2_592_000, description: 'Tenant sandboxes: seconds a sandbox lives when POST /v1/admin/sandboxes gives no ttl_s; expired sandboxes are refused at once and dropped by the sweep (SWEEP_CRON)' }),
  SANDBOX_MAX_PER_TENANT: Type.Integer({ default: 3, minimum: 1, maximum: 100, description: 'Tenant sandboxes: how many one tenant may have at once, creating or ready (more: 409 SANDBOX_LIMIT_REACHED)' }),
  SANDBOX_MAX_ROWS: Type.Integer({ default: 1_000_000, minimum: 1, maximum: 1_000_000_000, description: 'Tenant sandboxes: most rows one sandbox may copy (a larger tenant: the job fails with SANDBOX_TOO_LARGE and the database is dropped)' }),
  SANDBOX_POOL_MAX: Type.Integer({ default: 4, minimum: 1, maximum: 100, description: 'Tenant sandboxes: connections per API process to one sandbox database (its streaming pool gets half, at least one)' }),
  /** BullMQ slots of the webhooks queue per worker process (delivery loops wait on the network): at least WORKER_CONCURRENCY. */
  WEBHOOK_WORKER_CONCURRENCY: Int(16, 1, 1024),
  /** Webhooks a tenant may have (more -> 409 WEBHOOK_LIMIT_REACHED). */
  WEBHOOK_TENANT_MAX: Int(50, 1, 100_000),
  /** Delivery loops of one tenant running at once across all workers (the rest wait; other tenants do not). */
  WEBHOOK_TENANT_SLOTS: Int(4, 1, 1000),
  /** Of those, how many may serve webhooks that are failing (breaker open or retrying): healthy ones keep the rest. */
  WEBHOOK_TENANT_FAILING_SLOTS: Int(1, 1, 1000),
  /** Circuit breaker per webhook endpoint: consecutive failed attempts that open it, and how long it stays open before a probe. */
  WEBHOOK_BREAKER_THRESHOLD: Int(3, 1, 1000),
  WEBHOOK_BREAKER_COOLDOWN_MS: Int(30_000, 100, 86_400_000),
  /** Redis bounds (request path): a command unanswered after this fails (ioredis commandTimeout); connect timeout. */
  REDIS_COMMAND_TIMEOUT_MS: Int(1_000, 50, 600_000),
  REDIS_CONNECT_TIMEOUT_MS: Int(2_000, 50, 600_000),
  /** Reconnect backoff cap of every Redis connection (API, workers, dispatcher): resumes within this after Redis answers. */
  REDIS_RECONNECT_MAX_MS: Int(500, 10, 60_000),
  /** The longest a write waits for the maintenance flag; a flag read failing within this falls back to the last known value. */
  MAINTENANCE_CHECK_TIMEOUT_MS: Int(250, 10, 60_000),
  /** How long a last known maintenance flag is trusted when Redis cannot answer (after that: fail open, writes pass). */
  MAINTENANCE_STALE_MS: Int(60_000, 0, 3_600_000),
  /** /readyz: the longest each dependency check may take before it counts as failed. */
  READYZ_TIMEOUT_MS: Int(1_000, 10, 60_000),
  /** Idempotency-Key: how long a key and its first answer are kept per tenant (seconds). */
  IDEMPOTENCY_TTL_S: Int(86_400, 60, 2_592_000),
  /** BullMQ: lock of an active job, and how often lapsed locks are looked for: a dead worker's job is taken over within lock + interval. */
  JOB_LOCK_DURATION_MS: Int(10_000, 1000, 3_600_000),
  JOB_STALLED_INTERVAL_MS: Int(5_000, 500, 3_600_000),
  /** Sweeper of orphaned export/backup temporaries: schedule, and the age a temporary must reach before it is removed. */
  SWEEP_CRON: Type.String({ default: '*/15 * * * *', minLength: 9 }),
  PARTITIONS_MAINTENANCE_CRON: Type.String({ default: '23 * * * *', minLength: 9 }),
  SWEEP_MIN_AGE_MS: Int(3_600_000, 0, 31_536_000_000),
});

export type Env = Static<typeof EnvSchema>;

// Every variable's meaning becomes the `description` of its schema property (docs/configuration.md).
for (const [name, description] of Object.entries(CONFIG_DESCRIPTIONS)) {
  const prop = (EnvSchema.properties as Record<string, { description?: string }>)[name];
  if (prop) prop.description ??= description;
}

export interface Config extends Env {
  /** True when no DATABASE_URL was given and the embedded PostgreSQL is used. */
  readonly embedded: boolean;
  readonly migrateOnBoot: boolean;
  readonly seedDemo: boolean;
  readonly runWorkers: boolean;
  /** EXPORT_DIR, or <DATA_DIR>/exports. */
  readonly exportDir: string;
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`invalid configuration: ${variable} ${message}`);
  }
}

/** Parse and validate an environment (process.env by default). Throws ConfigError naming the variable. */
export function loadConfig(source: NodeJS.ProcessEnv = process.env): Readonly<Config> {
  const raw: Record<string, unknown> = {};
  for (const key of Object.keys(EnvSchema.properties)) {
    const v = source[key];
    if (v !== undefined && v !== '') raw[key] = v;
  }
  // TypeBox's conversion reads "1e3" as 1, "3000.5" as 3000 and "0x10" as 16: insist on plain digits.
  for (const [key, schema] of Object.entries(EnvSchema.properties)) {
    const given = raw[key];
    if ((schema as { type?: unknown }).type === 'integer' && typeof given === 'string' && !/^\s*-?\d+\s*$/.test(given)) {
      throw new ConfigError(key, `expected a whole number (got ${JSON.stringify(given)})`);
    }
  }
  const converted = Value.Convert(EnvSchema, Value.Default(EnvSchema, raw));
  const first = Value.Errors(EnvSchema, converted).First();
  if (first) {
    const variable = first.path.replace(/^\//, '') || 'environment';
    const given = raw[variable];
    const shown = given === undefined ? '' : ` (got ${JSON.stringify(redact(variable, typeof given === 'string' ? given : JSON.stringify(given)))})`;
    throw new ConfigError(variable, `${first.message.toLowerCase()}${shown}`);
  }
  const env = converted as Env;
  if (env.DB_POOL_MIN > env.DB_POOL_MAX) {
    throw new ConfigError('DB_POOL_MIN', `must not exceed DB_POOL_MAX (${env.DB_POOL_MAX})`);
  }
  if (env.TESTING_MODE && env.NODE_ENV === 'production') {
    throw new ConfigError('TESTING_MODE', 'must not be true with NODE_ENV=production (it lets tenants wipe and forge their data)');
  }
  const embedded = env.DATABASE_URL === undefined;
  if (!embedded && !env.JWT_SECRET && !env.JWT_JWKS_URL) {
    throw new ConfigError('JWT_SECRET', 'is required when DATABASE_URL is set (or set JWT_JWKS_URL)');
  }
  return Object.freeze({
    ...env,
    embedded,
    migrateOnBoot: env.MIGRATE_ON_BOOT ?? embedded,
    seedDemo: env.SEED_DEMO ?? embedded,
    runWorkers: env.RUN_WORKERS ?? embedded,
    exportDir: env.EXPORT_DIR ?? join(env.DATA_DIR, 'exports'),
  });
}

function redact(variable: string, value: string): string {
  if (/SECRET|PASSWORD/.test(variable)) return '***';
  // The whole userinfo goes: `redis://:pw@h` has no user, and a password may itself contain '@'.
  if (/URL|ENDPOINT/.test(variable)) return value.replace(/\/\/[^/?#]*@/, '//***@');
  return value;
}
