-- stripe_sync: objects created after the generated functions.
CREATE FOREIGN DATA WRAPPER stripe_sync_fdw
  HANDLER stripe_sync.stripe_sync_fdw_handler
  VALIDATOR stripe_sync.stripe_sync_fdw_validator;
COMMENT ON FOREIGN DATA WRAPPER stripe_sync_fdw IS 'Stripe API as foreign tables (stripe_sync).';

COMMENT ON FUNCTION stripe_sync.version() IS 'Version of the stripe_sync library.';
COMMENT ON FUNCTION stripe_sync._preloaded() IS 'Internal: whether stripe_sync is in shared_preload_libraries (the webhook worker needs it).';
COMMENT ON FUNCTION stripe_sync.stripe_sync_fdw_handler() IS 'Internal: handler of the stripe_sync_fdw foreign data wrapper.';
COMMENT ON FUNCTION stripe_sync.stripe_sync_fdw_validator(text[], oid) IS 'Internal: validates options of stripe_sync_fdw servers, user mappings and foreign tables.';
COMMENT ON FUNCTION stripe_sync.stripe_sync_fdw_meta() IS 'Internal: name, version, author and website of stripe_sync_fdw.';

-- errors inside must not log the call: it carries the key or secret
ALTER FUNCTION stripe_sync.add_source(text, text, text, text, text, text, text, double precision, boolean) SET log_min_error_statement = 'panic';
COMMENT ON FUNCTION stripe_sync.add_source(text, text, text, text, text, text, text, double precision, boolean) IS
  'Connects a Stripe account: add_source(api_key, name, schema, table_prefix, account, api_url, api_version, max_requests_per_second, connected_accounts). connected_accounts => true covers a Connect platform and every connected account in one set of tables (column account). Creates server stripe_sync_<name>, a user mapping for PUBLIC holding the key, the 15 foreign tables in <schema>_api and the 15 materialized tables in <schema>. Refuses tables that belong to another source or that it did not create.';
COMMENT ON FUNCTION stripe_sync.drop_source(text, boolean) IS 'Removes a source: drop_source(name, drop_tables => false). Drops its server, user mapping, foreign tables, sync state, tombstones, webhook endpoint (also at Stripe), inbox and counters; nothing of any other source. The materialized tables are kept unless drop_tables.';
COMMENT ON FUNCTION stripe_sync.refresh(text, text, text, boolean, text) IS
  'Brings materialized tables up to date: refresh(resource or ''all'', mode full|incremental|events, source, wait, account). A Connect source''s run covers every account (or the one named). Runs in a background worker that commits as it goes; an interrupted full refresh resumes. Returns one row per resource; wait => false returns as soon as the run started (progress in sync_status) and holds no snapshot.';
COMMENT ON FUNCTION stripe_sync.forget_account(text, text) IS
  'Connect: removes a connected account''s rows from every materialized table of a source, with its sync state and tombstones, and skips its events waiting in the inbox: forget_account(account, source). For an account that revoked access; one still connected comes back with the next refresh. Returns the rows removed.';
COMMENT ON FUNCTION stripe_sync.retry_failed(text) IS 'Makes failed webhook events of a source (NULL: every source) pending again, to be applied at once; returns how many.';
COMMENT ON FUNCTION stripe_sync.skip_event(text, text) IS 'Gives up on one stored webhook event (pending or failed): skip_event(event_id, source). It is marked skipped, with who skipped it, and never applied.';
ALTER FUNCTION stripe_sync.set_webhook_secret(text, text, boolean) SET log_min_error_statement = 'panic';
ALTER FUNCTION stripe_sync.receive_webhook(text, text, text) SET log_min_error_statement = 'panic';
COMMENT ON FUNCTION stripe_sync.create_webhook(text, text) IS
  'Registers url at Stripe for the events the source''s tables need (pinned API version), stores the signing secret (superuser-only) and returns the endpoint id. An endpoint for the same URL is reused when its secret is known, replaced otherwise.';
COMMENT ON FUNCTION stripe_sync.set_webhook_secret(text, text, boolean) IS
  'Adds the signing secret of an endpoint made by hand in the Dashboard (several may be active during a roll; replace => true keeps only this one).';
COMMENT ON FUNCTION stripe_sync.delete_webhook(text) IS 'Deletes the source''s endpoint at Stripe (if stripe_sync created it) and its secrets.';
COMMENT ON FUNCTION stripe_sync.receive_webhook(text, text, text) IS
  'SQL ingress for hosts that cannot open a port: receive_webhook(raw body, Stripe-Signature header, source) verifies and stores the event like the worker; returns stored or duplicate, or fails and stores nothing.';
COMMENT ON FUNCTION stripe_sync.apply_inbox(bigint) IS 'Applies stored webhook events now (the worker does this on its own); returns how many were applied.';
COMMENT ON FUNCTION stripe_sync.webhook_status(text) IS
  'A source''s webhook: endpoint id, URL, enabled events, Stripe-side status, counts received / duplicates / applied / skipped / rejected, pending and failed events, the last failed event, lag, last error.';

-- Privileges. Two roles, made once per cluster and kept when the extension is dropped:
--   stripe_sync_reader reads the synced tables, the foreign tables and the status views;
--   stripe_sync_admin (a member of stripe_sync_reader) also runs every function.
-- The functions run as their owner (SECURITY DEFINER, fixed search_path): the API key in
-- the user mapping and the webhook secrets stay unreadable to both roles, and PUBLIC gets
-- 42501 at the call.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'stripe_sync_reader') THEN
        CREATE ROLE stripe_sync_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'stripe_sync_admin') THEN
        CREATE ROLE stripe_sync_admin NOLOGIN;
    END IF;
    IF NOT pg_catalog.pg_has_role('stripe_sync_admin', 'stripe_sync_reader', 'MEMBER') THEN
        GRANT stripe_sync_reader TO stripe_sync_admin;
    END IF;
END
$roles$;
COMMENT ON ROLE stripe_sync_reader IS 'stripe_sync: reads the materialized tables, the foreign tables and the status views (sync_status without error texts).';
COMMENT ON ROLE stripe_sync_admin IS 'stripe_sync: adds and drops sources, refreshes, manages webhooks and reads every status, without seeing keys or secrets.';

DO $grants$
DECLARE
    f regprocedure;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'stripe_sync.add_source(text, text, text, text, text, text, text, double precision, boolean)',
        'stripe_sync.drop_source(text, boolean)',
        'stripe_sync.refresh(text, text, text, boolean, text)',
        'stripe_sync.create_webhook(text, text)',
        'stripe_sync.set_webhook_secret(text, text, boolean)',
        'stripe_sync.delete_webhook(text)',
        'stripe_sync.webhook_status(text)',
        'stripe_sync.receive_webhook(text, text, text)',
        'stripe_sync.apply_inbox(bigint)',
        'stripe_sync.retry_failed(text)',
        'stripe_sync.skip_event(text, text)',
        'stripe_sync.forget_account(text, text)']::regprocedure[]
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO stripe_sync_admin', f);
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, stripe_sync, pg_temp', f);
    END LOOP;
END
$grants$;
REVOKE ALL ON FUNCTION stripe_sync._preloaded() FROM PUBLIC;
REVOKE ALL ON stripe_sync.sources, stripe_sync.sync_status FROM PUBLIC;
GRANT SELECT ON stripe_sync.sources, stripe_sync.sync_status TO stripe_sync_reader;
