-- Who may do what: PUBLIC, a reader (granted stripe_sync_reader) and an operator
-- (granted stripe_sync_admin, not a superuser), with SET ROLE.
\pset null '(null)'
\set VERBOSITY default
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_nobody;
DROP ROLE IF EXISTS regress_reader;
DROP ROLE IF EXISTS regress_operator;
RESET client_min_messages;
CREATE ROLE regress_nobody;
CREATE ROLE regress_reader IN ROLE stripe_sync_reader;
CREATE ROLE regress_operator IN ROLE stripe_sync_admin;
-- a source whose key Stripe refuses, so that sync_status holds an error text
SELECT stripe_sync.add_source('sk_test_regress_revoked_00000000', name => 'regress_revoked', schema => 'regress_revoked',
                              api_url => 'http://127.0.0.1:12199');
SELECT resource FROM stripe_sync.refresh('customer', 'full', source => 'regress_revoked');
\echo :LAST_ERROR_SQLSTATE
-- outcome of one statement for one role: ok, or the SQLSTATE and message
CREATE FUNCTION pg_temp.try_as(who text, stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text; msg text; shown text;
BEGIN
    EXECUTE format('SET ROLE %I', who);
    BEGIN
        EXECUTE stmt INTO shown;
        RESET ROLE;
        RETURN 'ok' || coalesce(': ' || left(shown, 60), '');
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
        RESET ROLE;
        RETURN st || ' ' || msg;
    END;
END $$;
GRANT EXECUTE ON FUNCTION pg_temp.try_as(text, text) TO PUBLIC;
CREATE TEMP TABLE matrix (n serial, stmt text);
GRANT SELECT ON matrix TO PUBLIC;
INSERT INTO matrix (stmt) VALUES
  ('SELECT stripe_sync.version()'),
  ('SELECT count(*)::text FROM stripe_sync.sources WHERE name LIKE ''regress%'''),
  ('SELECT count(*)::text FROM stripe_sync.sync_status WHERE source LIKE ''regress%'''),
  ('SELECT coalesce(last_error, ''(hidden)'') FROM stripe_sync.sync_status WHERE source = ''regress_revoked'''),
  ('SELECT count(*)::text FROM regress.customer'),
  ('SELECT count(*)::text FROM regress_api.product'),
  ('SELECT umoptions::text FROM pg_user_mappings WHERE srvname = ''stripe_sync_regress'''),
  ('SELECT count(*)::text FROM stripe_sync._webhooks WHERE source LIKE ''regress%'''),
  ('SELECT count(*)::text FROM stripe_sync._inbox WHERE source LIKE ''regress%'''),
  ('SELECT count(*)::text FROM stripe_sync._sync_state WHERE source LIKE ''regress%'''),
  ('SELECT stripe_sync.webhook_status(''regress'')->>''received'''),
  ('SELECT rows_inserted::text FROM stripe_sync.refresh(''product'', ''incremental'', source => ''regress'')'),
  ('SELECT stripe_sync.apply_inbox()::text'),
  ('SELECT stripe_sync.retry_failed(''regress'')::text'),
  ('SELECT stripe_sync.skip_event(''evt_none'', ''regress'')::text'),
  ('SELECT stripe_sync.receive_webhook(''{}'', '''', ''regress'')'),
  ('SELECT stripe_sync.set_webhook_secret(''whsec_regress_other'', ''regress'')::text'),
  ('SELECT stripe_sync.delete_webhook(''regress'')::text'),
  ('SELECT stripe_sync.add_source(''sk_test_regress_0000000000000000'', name => ''regress_priv'', schema => ''regress_priv'', api_url => ''http://127.0.0.1:12199'')'),
  ('SELECT stripe_sync.drop_source(''regress_priv'', drop_tables => true)::text');
\x on
SELECT m.stmt,
       pg_temp.try_as('regress_nobody', m.stmt) AS public,
       pg_temp.try_as('regress_reader', m.stmt) AS reader,
       pg_temp.try_as('regress_operator', m.stmt) AS operator
FROM matrix m ORDER BY m.n;
\x off
-- the operator runs the whole story: connect, refresh, query, webhooks, status, disconnect
SET ROLE regress_operator;
SELECT stripe_sync.add_source('sk_test_regress_0000000000000000', name => 'regress_op', schema => 'regress_op',
                              api_url => 'http://127.0.0.1:12199');
SELECT resource, rows_inserted > 0 AS inserted FROM stripe_sync.refresh('all', 'full', source => 'regress_op') ORDER BY resource;
SELECT count(*) > 0 AS paid_invoices FROM regress_op.invoice i JOIN regress_op.customer c ON c.id = i.customer WHERE i.status = 'paid';
SELECT stripe_sync.create_webhook('http://127.0.0.1:9/webhook/regress_op', 'regress_op') LIKE 'we\_%' AS endpoint_created;
SELECT (stripe_sync.webhook_status('regress_op')->>'managed')::boolean AS managed;
SELECT count(*) AS resources, count(*) FILTER (WHERE status = 'succeeded') AS succeeded FROM stripe_sync.sync_status WHERE source = 'regress_op';
-- what the operator can read of the key and secrets: nothing
SELECT umoptions FROM pg_user_mappings WHERE srvname = 'stripe_sync_regress_op';
SELECT secrets FROM stripe_sync._webhooks WHERE source = 'regress_op';
\echo :LAST_ERROR_SQLSTATE
SELECT stripe_sync.drop_source('regress_op', drop_tables => true);
RESET ROLE;
SELECT stripe_sync.drop_source('regress_revoked', drop_tables => true);
DROP ROLE regress_nobody;
DROP ROLE regress_reader;
DROP ROLE regress_operator;
