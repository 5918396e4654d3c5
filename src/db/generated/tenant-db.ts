/**
 * Kysely types of the database, generated from the migrations by scripts/gen-db-types.ts.
 * Do not edit: run `npm run db:types` after changing a migration (CI runs `npm run db:types:check`).
 *
 * - TenantDB: the tenant tables of schema public (read and written through tenant sessions, under RLS).
 * - PlatformDB: the platform tables of schema strata (admin connection only).
 */
import type { ColumnType, GeneratedAlways, InsertType, SelectType, UpdateType } from 'kysely';

/** bigint: read as a string (node-postgres keeps all 64 bits). */
export type Int8 = ColumnType<string, bigint | number | string, bigint | number | string>;

export type Timestamp = ColumnType<Date, Date | string, Date | string>;

export type JsonPrimitive = boolean | number | string | null;
export type JsonArray = JsonValue[];
export type JsonObject = { [key: string]: JsonValue | undefined };
export type JsonValue = JsonArray | JsonObject | JsonPrimitive;
/** json/jsonb: parsed on read; written as JSON text (JSON.stringify), since arrays would bind as PostgreSQL arrays. */
export type Json = ColumnType<JsonValue, string, string>;

/** interval, as node-postgres parses it. */
export interface IntervalValue { years?: number; months?: number; days?: number; hours?: number; minutes?: number; seconds?: number; milliseconds?: number }
export type Interval = ColumnType<IntervalValue, IntervalValue | number | string, IntervalValue | number | string>;

/** Kysely's Generated, unwrapping a ColumnType such as Timestamp so that selects stay Date. */
export type Defaulted<T> = ColumnType<SelectType<T>, InsertType<T> | undefined, UpdateType<T>>;

export interface Customers {
  id: Defaulted<Int8>;
  tenant_id: Defaulted<string>;
  pipeline_id: Int8 | null;
  name: string;
  email: string | null;
  email_bidx: string | null;
  phone: string | null;
  birth_date: Timestamp | null;
  credit_limit: number | null;
  notes: string | null;
}

export interface Documents {
  id: Defaulted<Int8>;
  tenant_id: Defaulted<string>;
  title: string;
  body: string | null;
  kind: Defaulted<'article' | 'note' | 'faq'>;
  status: Defaulted<'draft' | 'published' | 'archived'>;
  embedding: number[] | null;
  created_at: Defaulted<Timestamp>;
  search_tsv: GeneratedAlways<string | null>;
}

export interface PipelineRuns {
  id: Defaulted<Int8>;
  tenant_id: Defaulted<string>;
  pipeline_id: Int8;
  status: Defaulted<'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled'>;
  params: Defaulted<Json>;
  started_at: Timestamp | null;
  finished_at: Timestamp | null;
}

export interface Pipelines {
  id: Defaulted<Int8>;
  tenant_id: Defaulted<string>;
  name: string;
  description: string | null;
  status: Defaulted<'active' | 'paused' | 'archived'>;
  created_at: Defaulted<Timestamp>;
  search_tsv: GeneratedAlways<string | null>;
}

export interface RunLogs {
  id: Defaulted<Int8>;
  tenant_id: Defaulted<string>;
  run_id: Int8;
  level: Defaulted<'debug' | 'info' | 'warn' | 'error'>;
  message: string;
  at: Defaulted<Timestamp>;
  search_tsv: GeneratedAlways<string | null>;
}

export interface RunSteps {
  id: Defaulted<Int8>;
  tenant_id: Defaulted<string>;
  run_id: Int8;
  parent_step_id: Int8 | null;
  name: string;
  status: Defaulted<'pending' | 'running' | 'succeeded' | 'failed' | 'skipped'>;
  duration_ms: number | null;
}

export interface StrataApiKeys {
  id: Defaulted<string>;
  tenant_id: string;
  role: 'reader' | 'writer' | 'analyst' | 'admin' | 'platform_admin';
  name: string;
  key_hash: Buffer;
  created_by: string;
  created_at: Defaulted<Timestamp>;
  expires_at: Timestamp | null;
  revoked_at: Timestamp | null;
  last_used_at: Timestamp | null;
}

export interface StrataCacheTables {
  table_name: string;
  enabled_by: string;
  enabled_at: Defaulted<Timestamp>;
}

export interface StrataCapturedTables {
  table_name: string | null;
}

export interface StrataChangeCounters {
  tenant_id: string;
  last_id: Int8;
}

export interface StrataChanges {
  id: Defaulted<Int8>;
  txid: unknown;
  tenant_id: string;
  table_name: string;
  op: 'insert' | 'update' | 'delete';
  pk: Json;
  before: Json | null;
  after: Json | null;
  actor: string | null;
  at: Timestamp;
}

export interface StrataComplianceAudit {
  id: Defaulted<Int8>;
  tenant_id: string;
  at: Defaulted<Timestamp>;
  actor: string;
  role: string;
  api_key_id: string | null;
  table_name: string;
  columns: string[];
  row_count: number;
  request_id: string | null;
  path: string | null;
}

export interface StrataComplianceColumns {
  table_name: string;
  column_name: string;
  encrypted: Defaulted<boolean>;
  searchable: Defaulted<boolean>;
  pii: 'email' | 'phone' | 'name' | 'address' | 'card' | 'iban' | 'national_id' | 'date_of_birth' | 'ip_address' | 'free_text' | 'other' | null;
  masks: Defaulted<Json>;
  plaintext_roles: Defaulted<string[]>;
  declared_by: string;
  declared_at: Defaulted<Timestamp>;
  subject_column: string | null;
}

export interface StrataComplianceConversions {
  id: string;
  table_name: string;
  column_name: string;
  state: Defaulted<'running' | 'completed' | 'failed'>;
  position: Defaulted<Json>;
  done: Defaulted<Int8>;
  job_id: string | null;
  requested_by: string;
  started_at: Defaulted<Timestamp>;
  finished_at: Timestamp | null;
}

export interface StrataComplianceErasures {
  id: string;
  tenant_id: string;
  subject_hash: string;
  requested_by: string;
  request_id: string | null;
  requested_at: Defaulted<Timestamp>;
  outcome: string;
  report: Json;
}

export interface StrataComplianceScans {
  job_id: string;
  tenant_id: string | null;
  requested_by: string;
  finished_at: Defaulted<Timestamp>;
  findings: Json;
}

export interface StrataComplianceSubjects {
  table_name: string;
  columns: string[];
  action: 'delete' | 'anonymize';
  declared_by: string;
  declared_at: Defaulted<Timestamp>;
}

export interface StrataIdempotencyKeys {
  tenant_id: string;
  key: string;
  fingerprint: string;
  state: 'running' | 'done';
  status: number | null;
  headers: Json | null;
  body: string | null;
  created_at: Defaulted<Timestamp>;
  updated_at: Defaulted<Timestamp>;
  expires_at: Timestamp;
}

export interface StrataKeyRotations {
  id: string;
  kind: 'master' | 'data';
  tenant_id: string | null;
  target: string;
  state: Defaulted<'running' | 'completed' | 'failed'>;
  position: Defaulted<Json>;
  done: Defaulted<Int8>;
  job_id: string | null;
  requested_by: string;
  started_at: Defaulted<Timestamp>;
  finished_at: Timestamp | null;
}

export interface StrataSandboxRevoked {
  fn: string;
  grantees: string[];
}

export interface StrataSandboxes {
  id: Defaulted<string>;
  tenant_id: string;
  name: string;
  database: string;
  status: Defaulted<'creating' | 'ready' | 'failed'>;
  anonymized: Defaulted<boolean>;
  job_id: string | null;
  error: string | null;
  tables: number | null;
  rows: Int8 | null;
  created_by: string;
  created_at: Defaulted<Timestamp>;
  ready_at: Timestamp | null;
  expires_at: Timestamp;
}

export interface StrataSearchIndexes {
  table_name: string;
  columns: Json;
  language: Defaulted<string>;
  tsv_column: Defaulted<string>;
  maintenance: Defaulted<'generated' | 'trigger'>;
  vector_column: string | null;
  vector_dimensions: number | null;
  status: Defaulted<'building' | 'ready' | 'failed' | 'dropping'>;
  job_id: string | null;
  error: string | null;
  created_by: string;
  created_at: Defaulted<Timestamp>;
  updated_at: Defaulted<Timestamp>;
}

export interface StrataSubjectKeys {
  tenant_id: string;
  subject_id: string;
  master_key_id: string;
  wrapped: Buffer;
  created_at: Defaulted<Timestamp>;
  key_ref: Defaulted<string>;
}

export interface StrataTenantKeys {
  tenant_id: string;
  kind: 'data' | 'index';
  version: number;
  master_key_id: string;
  wrapped: Buffer;
  created_at: Defaulted<Timestamp>;
  retired_at: Timestamp | null;
}

export interface StrataTenants {
  id: string;
  name: string;
  status: Defaulted<'active' | 'suspended'>;
  created_at: Defaulted<Timestamp>;
  updated_at: Defaulted<Timestamp>;
  limits: Defaulted<Json>;
}

export interface StrataTimePartitions {
  table_name: string;
  column_name: string;
  engine: 'pg_partman' | 'citus';
  part_interval: Interval;
  premake: number;
  retention: Interval | null;
  created_at: Defaulted<Timestamp>;
  maintained_at: Timestamp | null;
  last_error: string | null;
}

export interface StrataViews {
  name: string;
  sql: string;
  refresh_cron: string | null;
  after_writes_to: Defaulted<string[]>;
  debounce_ms: Defaulted<number>;
  unique_key: string[] | null;
  created_by: string;
  created_at: Defaulted<Timestamp>;
  last_refreshed_at: Timestamp | null;
  last_refresh_ms: number | null;
  last_refresh_mode: 'concurrently' | 'plain' | null;
  last_job_id: string | null;
  last_error: string | null;
  last_write_at: Timestamp | null;
  refresh_count: Defaulted<number>;
}

export interface StrataWebhookDeliveries {
  id: GeneratedAlways<Int8>;
  webhook_id: string;
  tenant_id: string;
  change_id: Int8;
  attempt: number;
  status: 'succeeded' | 'failed' | 'dead';
  http_status: number | null;
  error: string | null;
  duration_ms: number;
  replay: Defaulted<boolean>;
  at: Defaulted<Timestamp>;
}

export interface StrataWebhooks {
  id: Defaulted<string>;
  tenant_id: Defaulted<string>;
  url: string;
  tables: Defaulted<string[]>;
  ops: Defaulted<string[]>;
  ordering: Defaulted<'row' | 'table' | 'webhook'>;
  secret: string;
  active: Defaulted<boolean>;
  cursor: Defaulted<Int8>;
  attempt: Defaulted<number>;
  next_attempt_at: Defaulted<Timestamp>;
  lease_owner: string | null;
  lease_until: Timestamp | null;
  created_by: Defaulted<string>;
  created_at: Defaulted<Timestamp>;
  updated_at: Defaulted<Timestamp>;
  failures: Defaulted<number>;
  last_success_at: Timestamp | null;
}

export interface TenantDB {
  customers: Customers;
  documents: Documents;
  pipeline_runs: PipelineRuns;
  pipelines: Pipelines;
  run_logs: RunLogs;
  run_steps: RunSteps;
}

export interface PlatformDB {
  'strata.api_keys': StrataApiKeys;
  'strata.cache_tables': StrataCacheTables;
  'strata.captured_tables': StrataCapturedTables;
  'strata.change_counters': StrataChangeCounters;
  'strata.changes': StrataChanges;
  'strata.compliance_audit': StrataComplianceAudit;
  'strata.compliance_columns': StrataComplianceColumns;
  'strata.compliance_conversions': StrataComplianceConversions;
  'strata.compliance_erasures': StrataComplianceErasures;
  'strata.compliance_scans': StrataComplianceScans;
  'strata.compliance_subjects': StrataComplianceSubjects;
  'strata.idempotency_keys': StrataIdempotencyKeys;
  'strata.key_rotations': StrataKeyRotations;
  'strata.sandbox_revoked': StrataSandboxRevoked;
  'strata.sandboxes': StrataSandboxes;
  'strata.search_indexes': StrataSearchIndexes;
  'strata.subject_keys': StrataSubjectKeys;
  'strata.tenant_keys': StrataTenantKeys;
  'strata.tenants': StrataTenants;
  'strata.time_partitions': StrataTimePartitions;
  'strata.views': StrataViews;
  'strata.webhook_deliveries': StrataWebhookDeliveries;
  'strata.webhooks': StrataWebhooks;
}
