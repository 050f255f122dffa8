-- stripe_sync: objects created before the generated functions.
COMMENT ON SCHEMA stripe_sync IS 'stripe_sync: keeps a Stripe account''s data in PostgreSQL. Public functions are short verbs (stripe_sync.refresh, stripe_sync.add_source); names starting with _ are internal.';
GRANT USAGE ON SCHEMA stripe_sync TO PUBLIC;

CREATE TABLE stripe_sync._sources (
    name         text PRIMARY KEY,
    server_name  text NOT NULL UNIQUE,
    schema_name  text NOT NULL,
    table_prefix text NOT NULL DEFAULT '',
    account      text,
    api_url      text NOT NULL,
    api_version  text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('stripe_sync._sources', '');
REVOKE ALL ON stripe_sync._sources FROM PUBLIC;
COMMENT ON TABLE stripe_sync._sources IS 'Internal: connected Stripe accounts (the API key is not here: it lives in the user mapping of the source''s server).';
COMMENT ON COLUMN stripe_sync._sources.name IS 'Source name, as passed to add_source.';
COMMENT ON COLUMN stripe_sync._sources.server_name IS 'Foreign server of the source (stripe_sync_<name>).';
COMMENT ON COLUMN stripe_sync._sources.schema_name IS 'Schema of the materialized tables; foreign tables are in <schema>_api.';
COMMENT ON COLUMN stripe_sync._sources.table_prefix IS 'Prefix of the table names.';
COMMENT ON COLUMN stripe_sync._sources.account IS 'Connected account sent as Stripe-Account, if any.';
COMMENT ON COLUMN stripe_sync._sources.api_url IS 'Root of the Stripe API.';
COMMENT ON COLUMN stripe_sync._sources.api_version IS 'Stripe-Version sent, if not the pinned default.';
COMMENT ON COLUMN stripe_sync._sources.created_at IS 'When the source was added.';

CREATE VIEW stripe_sync.sources AS
    SELECT name, schema_name AS schema, schema_name || '_api' AS api_schema, table_prefix, account, api_url,
           api_version, created_at
    FROM stripe_sync._sources;
GRANT SELECT ON stripe_sync.sources TO PUBLIC;
COMMENT ON VIEW stripe_sync.sources IS 'Connected Stripe accounts, without their keys.';
COMMENT ON COLUMN stripe_sync.sources.name IS 'Source name.';
COMMENT ON COLUMN stripe_sync.sources.schema IS 'Schema of the materialized tables.';
COMMENT ON COLUMN stripe_sync.sources.api_schema IS 'Schema of the foreign tables (live API).';
COMMENT ON COLUMN stripe_sync.sources.table_prefix IS 'Prefix of the table names.';
COMMENT ON COLUMN stripe_sync.sources.account IS 'Connected account sent as Stripe-Account, if any.';
COMMENT ON COLUMN stripe_sync.sources.api_url IS 'Root of the Stripe API.';
COMMENT ON COLUMN stripe_sync.sources.api_version IS 'Stripe-Version sent, if not the pinned default.';
COMMENT ON COLUMN stripe_sync.sources.created_at IS 'When the source was added.';
