/**
 * A deterministic snapshot of the database schema from the catalogs (schemas, tables, columns,
 * constraints, indexes, policies, triggers, functions, types, sequences, extensions, grants), used
 * to prove migrations reversible: up, down, up must leave the same snapshot. The bookkeeping table
 * is left out; its rows change by design. ACLs are compared as effective (NULL = the default
 * privileges), so `REVOKE ALL ... FROM PUBLIC` on a schema that never granted PUBLIC is no change.
 */
import type pg from 'pg';

/** Object key ("table public.pipelines") -> its definition. */
export type SchemaSnapshot = Map<string, string>;

const USER_SCHEMA = `n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'`;
const NOT_BOOKKEEPING = `to_regclass('strata.schema_migrations')`;

const SNAPSHOT_SQL = `
SELECT 'schema ' || n.nspname AS key,
       concat_ws(' ', 'owner=' || pg_get_userbyid(n.nspowner), 'acl=' || coalesce(n.nspacl, acldefault('n', n.nspowner))::text) AS def
  FROM pg_namespace n WHERE ${USER_SCHEMA}
UNION ALL
SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'matview'
                      WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign-table' ELSE 'relation' END
         || ' ' || n.nspname || '.' || c.relname,
       concat_ws(' ', 'kind=' || c.relkind::text, 'persistence=' || c.relpersistence::text, 'owner=' || pg_get_userbyid(c.relowner),
                 'rls=' || c.relrowsecurity, 'force_rls=' || c.relforcerowsecurity, 'acl=' || coalesce(c.relacl, acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", c.relowner))::text,
                 'options=' || c.reloptions::text, 'comment=' || obj_description(c.oid, 'pg_class'),
                 CASE WHEN c.relkind IN ('v', 'm') THEN 'def=' || pg_get_viewdef(c.oid) END,
                 CASE WHEN c.relkind = 'p' THEN 'partition_by=' || pg_get_partkeydef(c.oid) END,
                 CASE WHEN c.relispartition THEN 'partition_of=' || pg_get_expr(c.relpartbound, c.oid) END,
                 CASE WHEN c.relkind = 'S' THEN (SELECT concat_ws(' ', 'seqtype=' || format_type(s.seqtypid, NULL),
                   'start=' || s.seqstart, 'inc=' || s.seqincrement, 'min=' || s.seqmin, 'max=' || s.seqmax,
                   'cache=' || s.seqcache, 'cycle=' || s.seqcycle) FROM pg_sequence s WHERE s.seqrelid = c.oid) END)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE ${USER_SCHEMA} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND c.oid IS DISTINCT FROM ${NOT_BOOKKEEPING}
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.refobjid = ${NOT_BOOKKEEPING})
UNION ALL
SELECT 'column ' || n.nspname || '.' || c.relname || '.' || a.attname,
       concat_ws(' ', 'pos=' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
                 'type=' || format_type(a.atttypid, a.atttypmod), 'notnull=' || a.attnotnull,
                 'default=' || pg_get_expr(ad.adbin, ad.adrelid), 'identity=' || nullif(a.attidentity::text, ''),
                 'generated=' || nullif(a.attgenerated::text, ''), 'collation=' || nullif(a.attcollation, 0)::regcollation::text,
                 'acl=' || a.attacl::text, 'comment=' || col_description(c.oid, a.attnum))
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
 WHERE ${USER_SCHEMA} AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
   AND c.oid IS DISTINCT FROM ${NOT_BOOKKEEPING}
UNION ALL
SELECT 'constraint ' || n.nspname || '.' || coalesce(c.relname, t.typname) || '.' || co.conname,
       pg_get_constraintdef(co.oid) || coalesce(' deferrable=' || co.condeferrable, '')
  FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
  LEFT JOIN pg_class c ON c.oid = co.conrelid LEFT JOIN pg_type t ON t.oid = co.contypid
 WHERE ${USER_SCHEMA} AND co.conrelid IS DISTINCT FROM ${NOT_BOOKKEEPING}
UNION ALL
SELECT 'index ' || n.nspname || '.' || c.relname, pg_get_indexdef(c.oid) || coalesce(' valid=' || i.indisvalid, '')
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE ${USER_SCHEMA} AND i.indrelid IS DISTINCT FROM ${NOT_BOOKKEEPING}
UNION ALL
SELECT 'policy ' || n.nspname || '.' || c.relname || '.' || p.polname,
       concat_ws(' ', 'cmd=' || p.polcmd::text, 'permissive=' || p.polpermissive,
                 'roles=' || (SELECT string_agg(CASE r WHEN 0 THEN 'public' ELSE pg_get_userbyid(r) END, ',' ORDER BY 1)
                                FROM unnest(p.polroles) r),
                 'using=' || pg_get_expr(p.polqual, p.polrelid), 'check=' || pg_get_expr(p.polwithcheck, p.polrelid))
  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE ${USER_SCHEMA}
UNION ALL
SELECT 'trigger ' || n.nspname || '.' || c.relname || '.' || tg.tgname,
       pg_get_triggerdef(tg.oid) || ' enabled=' || tg.tgenabled::text
  FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE ${USER_SCHEMA} AND NOT tg.tgisinternal
UNION ALL
SELECT 'function ' || n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       concat_ws(' ', 'owner=' || pg_get_userbyid(p.proowner), 'acl=' || coalesce(p.proacl, acldefault('f', p.proowner))::text,
                 'md5=' || md5(CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) ELSE p.prosrc END))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE ${USER_SCHEMA} AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
UNION ALL
SELECT 'type ' || n.nspname || '.' || t.typname,
       concat_ws(' ', 'typtype=' || t.typtype::text, 'owner=' || pg_get_userbyid(t.typowner), 'acl=' || coalesce(t.typacl, acldefault('T', t.typowner))::text,
                 'base=' || nullif(t.typbasetype, 0)::regtype::text,
                 'labels=' || (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid))
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE ${USER_SCHEMA} AND t.typtype IN ('e', 'd', 'r', 'm')
    OR (${USER_SCHEMA} AND t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
UNION ALL
SELECT 'extension ' || x.extname, 'version=' || x.extversion || ' schema=' || x.extnamespace::regnamespace::text
  FROM pg_extension x
UNION ALL
SELECT 'default-acl ' || pg_get_userbyid(d.defaclrole) || '.' || coalesce(d.defaclnamespace::regnamespace::text, '*') || '.' || d.defaclobjtype::text,
       d.defaclacl::text
  FROM pg_default_acl d
ORDER BY 1`;

/** Takes a snapshot of every user schema of the connected database. */
export async function snapshotSchema(client: pg.ClientBase): Promise<SchemaSnapshot> {
  const { rows } = await client.query<{ key: string; def: string | null }>(SNAPSHOT_SQL);
  return new Map(rows.map((r) => [r.key, r.def ?? '']));
}

/** Human-readable differences from `before` to `after` ('-' gone, '+' new, '~' changed); [] if equal. */
export function diffSnapshots(before: SchemaSnapshot, after: SchemaSnapshot): string[] {
  const out: string[] = [];
  for (const [key, def] of before) {
    const now = after.get(key);
    if (now === undefined) out.push(`- ${key}: ${def}`);
    else if (now !== def) out.push(`~ ${key}: ${def}  ->  ${now}`);
  }
  for (const [key, def] of after) if (!before.has(key)) out.push(`+ ${key}: ${def}`);
  return out.sort((a, b) => (a.slice(2) < b.slice(2) ? -1 : 1));
}
