-- The extension, its roles and every object it owns, with comments and privileges.
-- Runs on a fresh database (make installcheck) and on one upgraded from 0.1.0
-- (tests/upgrade.rs): both must print the same.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS stripe_sync;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
RESET client_min_messages;
\pset null '(null)'
SELECT stripe_sync.version() ~ '^\d+\.\d+\.\d+$' AS version_is_semver,
       stripe_sync.version() = (SELECT extversion FROM pg_extension WHERE extname = 'stripe_sync') AS library_matches_schema;
-- the roles and their membership
SELECT rolname, rolcanlogin, pg_catalog.shobj_description(oid, 'pg_authid') AS comment
FROM pg_roles WHERE rolname LIKE 'stripe_sync%' ORDER BY 1;
SELECT pg_has_role('stripe_sync_admin', 'stripe_sync_reader', 'MEMBER') AS admin_is_a_reader;
-- every function: arguments, result, security, settings, who may call it, and its comment
SELECT p.oid::regprocedure AS function,
       pg_get_function_result(p.oid) AS returns,
       p.prosecdef AS security_definer,
       p.proconfig AS settings,
       CASE WHEN p.proacl IS NULL THEN 'PUBLIC=EXECUTE (default)'
            ELSE array_to_string(ARRAY(SELECT CASE WHEN grantee = 0 THEN 'PUBLIC' ELSE grantee::regrole::text END
                                              || '=' || privilege_type
                                       FROM aclexplode(p.proacl) a
                                       WHERE grantee <> p.proowner
                                       ORDER BY 1), ', ') END AS grants,
       obj_description(p.oid, 'pg_proc') IS NOT NULL AS commented
FROM pg_proc p
WHERE p.pronamespace = 'stripe_sync'::regnamespace
ORDER BY p.oid::regprocedure::text;
\x on
SELECT p.proname, pg_get_function_arguments(p.oid) AS arguments, obj_description(p.oid, 'pg_proc') AS comment
FROM pg_proc p
WHERE p.pronamespace = 'stripe_sync'::regnamespace AND p.proname NOT LIKE '\_%' AND p.proname NOT LIKE 'stripe_sync_fdw%'
ORDER BY p.proname;
\x off
-- tables and views: who may read them, and whether everything is commented
SELECT c.oid::regclass AS relation, c.relkind,
       coalesce(array_to_string(ARRAY(SELECT grantee::regrole::text || '=' || privilege_type
                                      FROM aclexplode(c.relacl) a
                                      WHERE grantee <> c.relowner
                                      ORDER BY 1), ', '), '') AS grants,
       obj_description(c.oid, 'pg_class') IS NOT NULL AS commented,
       (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          AND col_description(c.oid, a.attnum) IS NULL) AS uncommented_columns
FROM pg_class c
WHERE c.relnamespace = 'stripe_sync'::regnamespace AND c.relkind IN ('r', 'v')
ORDER BY c.oid::regclass::text;
\d stripe_sync._inbox
\d+ stripe_sync.sync_status
-- the tables whose rows pg_dump keeps
SELECT c::regclass AS dumped FROM pg_extension, unnest(extconfig) c WHERE extname = 'stripe_sync' ORDER BY c::regclass::text;
\dew+ stripe_sync_fdw
