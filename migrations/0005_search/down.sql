-- Undo 0005: the demo search columns and indexes, the documents table, the registry, the extensions.
-- Indexes created at run time by the search-index job on other tables are dropped with their table
-- or by DELETE /v1/admin/search-indexes/{table} before rolling back.
DROP TABLE IF EXISTS public.documents;
ALTER TABLE public.pipelines DROP COLUMN IF EXISTS search_tsv;
DROP INDEX IF EXISTS public.pipelines_name_trgm_idx;
DROP INDEX IF EXISTS public.pipelines_description_trgm_idx;
ALTER TABLE public.run_logs DROP COLUMN IF EXISTS search_tsv;
DROP INDEX IF EXISTS public.run_logs_message_trgm_idx;
DROP TABLE IF EXISTS strata.search_indexes;
DO $$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    ALTER FUNCTION pg_catalog.ts_match_vq(tsvector, tsquery) NOT LEAKPROOF;
  END IF;
END
$$;
DROP EXTENSION IF EXISTS btree_gin;
DROP EXTENSION IF EXISTS pg_trgm;
