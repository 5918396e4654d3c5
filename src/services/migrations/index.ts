/** The migrations capability's public face: what the API layer, jobs and other capabilities import. */
export * from './migrations.js';
