-- drop_source keeps the materialized tables by default and removes everything else of the source.
\pset null '(null)'
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT stripe_sync.drop_source('regress');
SELECT count(*) AS foreign_tables_left FROM pg_class WHERE relnamespace = 'regress_api'::regnamespace;
SELECT count(*) AS tables_kept FROM pg_class WHERE relnamespace = 'regress'::regnamespace AND relkind = 'r';
SELECT (SELECT count(*) FROM stripe_sync._sync_state WHERE source = 'regress') AS sync_state,
       (SELECT count(*) FROM stripe_sync._inbox WHERE source = 'regress') AS inbox,
       (SELECT count(*) FROM stripe_sync._webhooks WHERE source = 'regress') AS webhooks,
       (SELECT count(*) FROM pg_foreign_server WHERE srvname = 'stripe_sync_regress') AS servers;
SELECT stripe_sync.drop_source('regress');
\echo :LAST_ERROR_SQLSTATE
SET client_min_messages = warning;
DROP SCHEMA regress CASCADE;
DROP SCHEMA regress_api;
