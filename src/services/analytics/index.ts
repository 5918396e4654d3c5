/** The analytics capability's public face: what the API layer, jobs and other capabilities import. */
export * from './result-cache.js';
export * from './timeseries.js';
export * from './view-refresh.js';
export * from './views.js';
export * from './write-hooks.js';
