DROP TABLE IF EXISTS public.run_logs;
DROP TABLE IF EXISTS public.run_steps;
DROP TABLE IF EXISTS public.pipeline_runs;
DROP TABLE IF EXISTS public.pipelines;
REVOKE USAGE ON SCHEMA public FROM strata_tenant;
