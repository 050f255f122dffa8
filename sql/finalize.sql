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
REVOKE ALL ON FUNCTION stripe_sync.drop_source(text) FROM PUBLIC;
ALTER FUNCTION stripe_sync.add_source(text, text, text, text, text, text, text, double precision) SET log_min_error_statement = 'panic';
COMMENT ON FUNCTION stripe_sync.add_source(text, text, text, text, text, text, text, double precision) IS
  'Connects a Stripe account: add_source(api_key, name, schema, table_prefix, account, api_url, api_version, max_requests_per_second). Creates server stripe_sync_<name>, a user mapping for PUBLIC holding the key, and the 15 foreign tables in <schema>_api.';
COMMENT ON FUNCTION stripe_sync.drop_source(text) IS 'Removes a source: its server, user mapping and foreign tables.';
COMMENT ON FUNCTION stripe_sync.refresh(text, text, text) IS
  'Brings materialized tables up to date: refresh(resource or ''all'', mode full|incremental|events, source). Runs in a background worker that commits as it goes; an interrupted full refresh resumes. Returns one row per resource.';
