/** The identity capability's public face: what the API layer, jobs and other capabilities import. */
export * from './api-keys.js';
export * from './auth.js';
export * from './tenants.js';
