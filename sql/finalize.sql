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
