/** The changes capability's public face: what the API layer, jobs and other capabilities import. */
export * from './change-feed.js';
export * from './changes.js';
export * from './webhook-delivery.js';
export * from './webhook-url.js';
export * from './webhooks.js';
