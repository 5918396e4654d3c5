/**
 * Tenant sandboxes (SPEC 13, issue 16): one tenant's rows copied into a throwaway database of their
 * own, which Strata serves when a request names it (X-Strata-Sandbox header or a `sandbox` token
 * claim, always checked against the request's tenant). Created as a job with progress, dropped on
 * DELETE or when expired (the sweep). docs/testing.md#tenant-sandboxes.
 */
export {
  createSandboxService,
  databaseFor,
  dropSandboxDatabase,
  SANDBOX_HEADER,
  SANDBOX_NAME,
  type CreateSandboxInput,
  type SandboxService,
  type SandboxStatus,
  type SandboxView,
} from './sandboxes.js';
export { copySandbox, type CopyOutcome, type CopyProgress } from './copy.js';
export { SANDBOX_ROUTES, sandboxRouteAllowed } from './routes.js';
