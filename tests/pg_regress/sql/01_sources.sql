-- add_source and drop_source: success, every refusal (SQLSTATE and hint), the
-- generated tables. The fake Stripe of scripts/installcheck listens on port 12199.
\pset null '(null)'
\set VERBOSITY default
\set SHOW_CONTEXT never
-- refusals change nothing
SELECT stripe_sync.add_source('pk_test_publishable', name => 'regress', api_url => 'http://127.0.0.1:12199');
\echo :LAST_ERROR_SQLSTATE
SELECT stripe_sync.add_source('sk_test_regress_0000000000000000', name => 'Bad Name', api_url => 'http://127.0.0.1:12199');
\echo :LAST_ERROR_SQLSTATE
SELECT stripe_sync.add_source('sk_test_regress_0000000000000000', name => 'regress', schema => 'pg_catalog', api_url => 'http://127.0.0.1:12199');
\echo :LAST_ERROR_SQLSTATE
SELECT stripe_sync.add_source('sk_test_regress_0000000000000000', name => 'regress', api_url => 'ftp://127.0.0.1:12199');
\echo :LAST_ERROR_SQLSTATE
SELECT stripe_sync.add_source('sk_test_regress_0000000000000000', name => 'regress', api_url => 'http://127.0.0.1:12199', api_version => 'yesterday');
\echo :LAST_ERROR_SQLSTATE
SELECT stripe_sync.add_source('sk_test_regress_0000000000000000', name => 'regress', api_url => 'http://127.0.0.1:12199', max_requests_per_second => -1);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS sources_named_regress FROM stripe_sync.sources WHERE name LIKE 'regress%';
-- a source: server, user mapping, foreign tables in regress_api, tables in regress
SELECT stripe_sync.add_source('sk_test_regress_0000000000000000', name => 'regress', schema => 'regress',
                              api_url => 'http://127.0.0.1:12199', max_requests_per_second => 50);
SELECT name, schema, api_schema, table_prefix, account, api_url, api_version FROM stripe_sync.sources WHERE name = 'regress';
-- the key is in the user mapping only, never in a view or a comment
SELECT count(*) AS views_showing_the_key FROM pg_views WHERE definition LIKE '%sk_test_regress%';
SELECT srvname, srvoptions FROM pg_foreign_server WHERE srvname = 'stripe_sync_regress';
SELECT relname, relkind FROM pg_class WHERE relnamespace IN ('regress'::regnamespace, 'regress_api'::regnamespace) AND relkind IN ('r', 'f') ORDER BY relkind, relname;
\d+ regress_api.invoice
\d+ regress.invoice
-- the same names again, or names another source holds
SELECT stripe_sync.add_source('sk_test_regress_0000000000000000', name => 'regress', api_url => 'http://127.0.0.1:12199');
\echo :LAST_ERROR_SQLSTATE
SELECT stripe_sync.add_source('sk_test_regress_0000000000000000', name => 'regress_b', schema => 'regress', api_url => 'http://127.0.0.1:12199');
\echo :LAST_ERROR_SQLSTATE
SELECT stripe_sync.add_source('sk_test_regress_0000000000000000', name => 'regress_b', schema => 'regress', table_prefix => 'customer_', api_url => 'http://127.0.0.1:12199');
\echo :LAST_ERROR_SQLSTATE
-- side by side: another schema
SELECT stripe_sync.add_source('sk_test_regress_0000000000000000', name => 'regress_b', schema => 'regress_b', api_url => 'http://127.0.0.1:12199');
SELECT name, schema FROM stripe_sync.sources WHERE name LIKE 'regress%' ORDER BY 1;
SELECT stripe_sync.drop_source('regress_b', drop_tables => true);
SELECT stripe_sync.drop_source('regress_b');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS regress_b_relations FROM pg_class WHERE relnamespace::regnamespace::text IN ('regress_b', 'regress_b_api');
-- live reads through the foreign tables (the fake's seeded account)
SELECT count(*) AS customers FROM regress_api.customer;
SELECT id, email FROM regress_api.customer ORDER BY created, id LIMIT 3;
EXPLAIN (COSTS OFF) SELECT id FROM regress_api.invoice WHERE customer = 'cus_x' AND status = 'paid';
SELECT id FROM regress_api.customer WHERE id = 'cus_does_not_exist';
