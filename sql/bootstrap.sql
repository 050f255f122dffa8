-- stripe_sync: objects created before the generated functions.
COMMENT ON SCHEMA stripe_sync IS 'stripe_sync: keeps a Stripe account''s data in PostgreSQL. Public functions are short verbs (stripe_sync.refresh, stripe_sync.add_source); names starting with _ are internal.';
