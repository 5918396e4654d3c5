-- The analyst sandbox closed in PostgreSQL itself (issue 13, item 5). strata_analyst (migration 0003)
-- inherits every function PUBLIC may EXECUTE. Take from PUBLIC the built-in and extension functions
-- that write, lock, notify, keep session state on a pooled connection, reach other backends or run
-- SQL given as text, and give them back only to the platform's own roles:
--   * the role running the migrations (it owns the tables: migration runner lock, change capture's
--     SECURITY DEFINER trigger, backups with pg_dump/pg_restore, export cancellation);
--   * strata_tenant, for the two it calls itself: pg_current_xact_id() (the change log reads its own
--     transaction's events) and pg_advisory_unlock_all() (analyst connections are returned clean).
-- strata_analyst is NOINHERIT and a member of nothing, so a grant to strata_tenant never reaches it.
-- Function ACLs live in this database's pg_proc (other databases of the cluster are unaffected);
-- roles are cluster-wide. What was revoked is recorded in strata.sandbox_revoked so the down
-- migration gives back exactly that. pg_sleep* stay callable: statement_timeout bounds them.
-- set_config is revoked by 0003. The service refuses /v1/sql (503 SQL_SANDBOX_UNAVAILABLE) while
-- strata_analyst may still EXECUTE any function of this list.

CREATE TABLE strata.sandbox_revoked (
  fn       text PRIMARY KEY,          -- regprocedure text, e.g. pg_catalog.lo_creat(integer)
  grantees text[] NOT NULL            -- roles EXECUTE was given back to
);

DO $$
DECLARE
  f record;
  tenant_fns constant text[] := ARRAY['pg_current_xact_id()', 'pg_advisory_unlock_all()'];
  owner_role text := quote_ident(current_user);
  grantees text[];
BEGIN
  IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    RAISE NOTICE 'strata_analyst sandbox incomplete: % is not a superuser and may not revoke EXECUTE on built-in functions from PUBLIC; run this migration as a superuser to enable POST /v1/sql', current_user;
    RETURN;
  END IF;
  -- regprocedure text is then schema-qualified for everything outside pg_catalog
  PERFORM set_config('search_path', 'pg_catalog', true);
  FOR f IN
    SELECT p.oid::regprocedure AS sig
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE (n.nspname = 'pg_catalog'
            OR EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'))
       AND p.prokind = 'f'
       AND (p.proname ~ ('^(pg_(try_)?advisory_|lo_|lo(read|write)$|(query|cursor|table|schema|database)_to_xml|txid_current'
                         '|pg_current_xact_id|dblink|postgres_fdw_|http|pg_ls_|pg_file_|pg_stat_reset|pg_stat_statements_reset'
                         '|pg_replication_origin_|pg_logical_slot_|pg_wal_replay_|pg_(create|drop|copy)_\w*replication_slot$)')
            OR p.proname IN ('ts_stat', 'ts_rewrite', 'pg_notify', 'pg_current_snapshot', 'pg_export_snapshot', 'set_limit', 'setseed',
                             'pg_cancel_backend', 'pg_terminate_backend', 'pg_logical_emit_message', 'pg_replication_slot_advance',
                             'pg_import_system_collations', 'pg_read_file', 'pg_read_binary_file', 'pg_stat_file', 'pg_logdir_ls',
                             'pg_reload_conf', 'pg_rotate_logfile', 'pg_promote', 'pg_switch_wal', 'pg_create_restore_point',
                             'pg_log_backend_memory_contexts', 'pg_backup_start', 'pg_backup_stop', 'pg_start_backup', 'pg_stop_backup',
                             'brin_summarize_new_values', 'brin_summarize_range', 'brin_desummarize_range', 'gin_clean_pending_list'))
       AND EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                    WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
     ORDER BY 2::text
  LOOP
    grantees := ARRAY[current_user::text];
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f.sig);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', f.sig, owner_role);
    IF f.sig::text = ANY (tenant_fns) THEN
      EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO strata_tenant', f.sig);
      grantees := grantees || 'strata_tenant'::text;
    END IF;
    INSERT INTO strata.sandbox_revoked (fn, grantees) VALUES (f.sig::text, grantees);
  END LOOP;
END
$$;
