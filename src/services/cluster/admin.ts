export function createClusterService() {
  return {};
}
export type ClusterService = ReturnType<typeof createClusterService>;
