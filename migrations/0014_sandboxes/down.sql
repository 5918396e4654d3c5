-- The sandbox databases themselves are not dropped here (DROP DATABASE cannot run in a transaction):
-- DELETE /v1/admin/sandboxes/{id} or the sweep drops them before the table goes.
DROP TABLE IF EXISTS strata.sandboxes;
