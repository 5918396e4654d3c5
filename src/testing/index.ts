/**
 * strata/testing: what Strata's own suite uses, for applications built on Strata.
 * - createTestDatabase / withTestDatabase: a migrated template cloned per test, dropped after;
 * - factory(table): schema-generated factories with traits, overrides and associations;
 * - snapshots, state diffs and row assertions; a sweep of databases left by crashed runs;
 * - probeExtensions: which optional PostgreSQL extensions a server offers.
 * See docs/testing.md.
 */
export { createTestDatabase, withTestDatabase, cloneDatabase, dropDatabase, fillTestDatabasePool, drainTestDatabasePool, TestDatabase } from './database.js';
export { defaultPoolSize, settlePools } from './pool.js';
export type { CloneStrategy, TestDatabaseOptions } from './database.js';
export { ensureTemplate, templateKey, dropTemplates } from './template.js';
export type { TemplateOptions } from './template.js';
export { sweepTestDatabases, DEFAULT_CLONE_PREFIX } from './sweep.js';
export type { SweepOptions, SweptDatabase } from './sweep.js';
export { factory, Factory, FactoryError, createFactoryRuntime, insertRows, defaultSeed } from './factory.js';
export type { FactoryContext, FactoryRuntime, Overrides, Row, ValueContext } from './factory.js';
export { UnsupportedColumnError } from './values.js';
export { loadFactorySchema, rulesFromChecks } from './schema.js';
export type { FactorySchema, FactoryTable, FactoryColumn, QueryFn } from './schema.js';
export { TenantSession, txContext } from './session.js';
export type { TenantSessionOptions } from './session.js';
export { captureState, diffStates } from './state.js';
export type { DbState, StateDiff, TableDiff } from './state.js';
export { expectRows, RowAssertionError } from './expect-rows.js';
export type { RowExpectation } from './expect-rows.js';
export { probeExtensions, describeExtensions, OPTIONAL_EXTENSIONS } from './extensions.js';
export type { ExtensionReport, ExtensionPresence, OptionalExtension } from './extensions.js';
export { urlFor, defaultServerUrl, closeServerPools } from './server.js';
