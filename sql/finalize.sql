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

-- connecting accounts is for administrators; errors inside must not log the call (it carries the key)
REVOKE ALL ON FUNCTION stripe_sync.add_source(text, text, text, text, text, text, text, double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION stripe_sync.drop_source(text, boolean) FROM PUBLIC;
ALTER FUNCTION stripe_sync.add_source(text, text, text, text, text, text, text, double precision) SET log_min_error_statement = 'panic';
COMMENT ON FUNCTION stripe_sync.add_source(text, text, text, text, text, text, text, double precision) IS
  'Connects a Stripe account: add_source(api_key, name, schema, table_prefix, account, api_url, api_version, max_requests_per_second). Creates server stripe_sync_<name>, a user mapping for PUBLIC holding the key, the 15 foreign tables in <schema>_api and the 15 materialized tables in <schema>. Refuses tables that belong to another source or that it did not create.';
COMMENT ON FUNCTION stripe_sync.drop_source(text, boolean) IS 'Removes a source: drop_source(name, drop_tables => false). Drops its server, user mapping, foreign tables, sync state, tombstones, webhook endpoint (also at Stripe), inbox and counters; nothing of any other source. The materialized tables are kept unless drop_tables.';
COMMENT ON FUNCTION stripe_sync.refresh(text, text, text) IS
  'Brings materialized tables up to date: refresh(resource or ''all'', mode full|incremental|events, source). Runs in a background worker that commits as it goes; an interrupted full refresh resumes. Returns one row per resource.';
REVOKE ALL ON FUNCTION stripe_sync.create_webhook(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION stripe_sync.set_webhook_secret(text, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION stripe_sync.delete_webhook(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION stripe_sync.webhook_status(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION stripe_sync.apply_inbox(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION stripe_sync.retry_failed(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION stripe_sync.skip_event(text, text) FROM PUBLIC;
COMMENT ON FUNCTION stripe_sync.retry_failed(text) IS 'Makes failed webhook events of a source (NULL: every source) pending again, to be applied at once; returns how many.';
COMMENT ON FUNCTION stripe_sync.skip_event(text, text) IS 'Gives up on one stored webhook event (pending or failed): skip_event(event_id, source). It is marked skipped, with who skipped it, and never applied.';
ALTER FUNCTION stripe_sync.set_webhook_secret(text, text, boolean) SET log_min_error_statement = 'panic';
ALTER FUNCTION stripe_sync.receive_webhook(text, text, text) SET log_min_error_statement = 'panic';
ALTER FUNCTION stripe_sync.receive_webhook(text, text, text) SECURITY DEFINER;
ALTER FUNCTION stripe_sync.receive_webhook(text, text, text) SET search_path = pg_catalog, pg_temp;
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
