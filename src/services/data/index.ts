/** The data capability's public face: what the API layer, jobs and other capabilities import. */
export * from './pg-parser.js';
export * from './rest-query/build.js';
export * from './rest-query/cursor.js';
export * from './rest-query/parse.js';
export * from './rows.js';
export * from './schema-registry.js';
export * from './sql-guard.js';
export * from './sql.js';
export * from './transactions.js';
export * from './response-bounds.js';
export * from './rest-query/relations.js';
export * from './rest-rows.js';
export * from './rest-functions.js';
