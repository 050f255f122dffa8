-- stripe_sync 0.4.0 -> 0.5.0
--
-- Connect: a source may cover a platform and all its connected accounts
-- (add_source(..., connected_accounts => true)), so every materialized table
-- gets the column account and the key (id, account), as add_source creates
-- them from 0.5.0 on; sync state and tombstones are kept per account.
--
-- Rows of existing sources carry the account of their source's account option,
-- or '' until the source's first refresh or webhook learns its own account id
-- (GET /v1/account) and sets it on them.

ALTER TABLE stripe_sync._sources
    ADD COLUMN connected_accounts boolean NOT NULL DEFAULT false,
    ADD COLUMN account_id text;
UPDATE stripe_sync._sources SET account_id = account WHERE account IS NOT NULL;
COMMENT ON COLUMN stripe_sync._sources.connected_accounts IS 'Connect: the source covers the platform''s own account and every connected account it lists.';
COMMENT ON COLUMN stripe_sync._sources.account_id IS 'Id of the account the key acts as (GET /v1/account), which the source''s own rows carry in their account column; NULL until the first refresh or webhook learns it.';

CREATE OR REPLACE VIEW stripe_sync.sources AS
    SELECT name, schema_name AS schema, schema_name || '_api' AS api_schema, table_prefix, account, api_url,
           api_version, created_at, connected_accounts, account_id
    FROM stripe_sync._sources;
COMMENT ON COLUMN stripe_sync.sources.connected_accounts IS 'Connect: the source covers the platform and every connected account (add_source(..., connected_accounts => true)).';
COMMENT ON COLUMN stripe_sync.sources.account_id IS 'Id of the account the key acts as: the account column of the source''s own rows (NULL until first learned).';

ALTER TABLE stripe_sync._sync_state ADD COLUMN account text NOT NULL DEFAULT '';
ALTER TABLE stripe_sync._sync_state DROP CONSTRAINT _sync_state_pkey;
ALTER TABLE stripe_sync._sync_state ADD PRIMARY KEY (source, resource, account);
COMMENT ON COLUMN stripe_sync._sync_state.account IS 'Connect: the connected account (acct_...) of this row; empty for the source''s own account.';

ALTER TABLE stripe_sync._deleted ADD COLUMN account text NOT NULL DEFAULT '';
ALTER TABLE stripe_sync._deleted DROP CONSTRAINT _deleted_pkey;
ALTER TABLE stripe_sync._deleted ADD PRIMARY KEY (source, resource, account, id);
COMMENT ON COLUMN stripe_sync._deleted.account IS 'Connect: the connected account (acct_...) the object was in; empty for the source''s own account.';

CREATE OR REPLACE VIEW stripe_sync.sync_status AS
    SELECT source, resource, last_mode, status, started_at, finished_at, rows_inserted, rows_updated, rows_deleted,
           api_requests,
           to_timestamp(incremental_cursor) AS incremental_cursor,
           events_cursor_id, to_timestamp(events_cursor_created) AS events_cursor_at,
           checkpoint IS NOT NULL AS resumable,
           progress, note,
           CASE WHEN pg_catalog.pg_has_role('stripe_sync_admin', 'USAGE') THEN last_error END AS last_error,
           last_error_at,
           now() - to_timestamp(newest_stamp) AS freshness,
           CASE WHEN s.account <> '' THEN s.account ELSE (SELECT account_id FROM stripe_sync._sources WHERE name = s.source) END AS account
    FROM stripe_sync._sync_state s;
COMMENT ON COLUMN stripe_sync.sync_status.account IS 'The Stripe account of the row: the source''s own account id, or a connected account of a Connect source (one row per account and resource).';

ALTER TABLE stripe_sync._webhooks ADD COLUMN connect_endpoint_id text;
COMMENT ON COLUMN stripe_sync._webhooks.connect_endpoint_id IS 'Connect sources: the Stripe id of the second endpoint (connect=true), which delivers the connected accounts'' events; its secret is among secrets.';

DO $tables$
DECLARE
    src record;
    t record;
    rel text;
BEGIN
    FOR src IN SELECT server_name, schema_name, table_prefix, account FROM stripe_sync._sources LOOP
        FOR t IN
            SELECT (SELECT pg_catalog.split_part(o, '=', 2) FROM pg_catalog.unnest(ft.ftoptions) o WHERE o LIKE 'resource=%') AS resource
            FROM pg_catalog.pg_foreign_table ft
            JOIN pg_catalog.pg_foreign_server s ON s.oid = ft.ftserver
            WHERE s.srvname = src.server_name
        LOOP
            rel := pg_catalog.format('%I.%I', src.schema_name, src.table_prefix || t.resource);
            IF pg_catalog.to_regclass(rel) IS NOT NULL THEN
                EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS account text NOT NULL DEFAULT %L',
                                          rel, coalesce(src.account, ''));
                EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN account DROP DEFAULT', rel);
                EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', rel,
                                          src.table_prefix || t.resource || '_pkey');
                EXECUTE pg_catalog.format('ALTER TABLE %s ADD PRIMARY KEY (id, account)', rel);
                EXECUTE pg_catalog.format('COMMENT ON COLUMN %s.account IS %L', rel,
                    'The Stripe account the object is in: the source''s own account id, or a connected account of a Connect source. The key is (id, account).');
            END IF;
        END LOOP;
    END LOOP;
END
$tables$;

-- add_source(..., connected_accounts => false)
DROP FUNCTION stripe_sync.add_source(text, text, text, text, text, text, text, double precision);
CREATE FUNCTION stripe_sync.add_source("api_key" text, "name" text DEFAULT 'default', "schema" text DEFAULT 'stripe',
                                       "table_prefix" text DEFAULT '', "account" text DEFAULT NULL,
                                       "api_url" text DEFAULT 'https://api.stripe.com', "api_version" text DEFAULT NULL,
                                       "max_requests_per_second" double precision DEFAULT NULL,
                                       "connected_accounts" boolean DEFAULT false)
    RETURNS text LANGUAGE c AS 'MODULE_PATHNAME', 'add_source_wrapper';
ALTER FUNCTION stripe_sync.add_source(text, text, text, text, text, text, text, double precision, boolean) SET log_min_error_statement = 'panic';
COMMENT ON FUNCTION stripe_sync.add_source(text, text, text, text, text, text, text, double precision, boolean) IS
  'Connects a Stripe account: add_source(api_key, name, schema, table_prefix, account, api_url, api_version, max_requests_per_second, connected_accounts). connected_accounts => true covers a Connect platform and every connected account in one set of tables (column account). Creates server stripe_sync_<name>, a user mapping for PUBLIC holding the key, the 15 foreign tables in <schema>_api and the 15 materialized tables in <schema>. Refuses tables that belong to another source or that it did not create.';

-- refresh(..., account => NULL)
DROP FUNCTION stripe_sync.refresh(text, text, text, boolean);
CREATE FUNCTION stripe_sync.refresh("resource" text, "mode" text DEFAULT 'incremental', "source" text DEFAULT 'default',
                                    "wait" boolean DEFAULT true, "account" text DEFAULT NULL)
    RETURNS TABLE ("resource" text, "mode" text, "rows_inserted" bigint, "rows_updated" bigint, "rows_deleted" bigint,
                   "api_requests" bigint, "started_at" timestamp with time zone, "finished_at" timestamp with time zone)
    LANGUAGE c AS 'MODULE_PATHNAME', 'refresh_resources_wrapper';
COMMENT ON FUNCTION stripe_sync.refresh(text, text, text, boolean, text) IS
  'Brings materialized tables up to date: refresh(resource or ''all'', mode full|incremental|events, source, wait, account). A Connect source''s run covers every account (or the one named). Runs in a background worker that commits as it goes; an interrupted full refresh resumes. Returns one row per resource; wait => false returns as soon as the run started (progress in sync_status) and holds no snapshot.';

DO $grants$
DECLARE
    f regprocedure;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'stripe_sync.add_source(text, text, text, text, text, text, text, double precision, boolean)',
        'stripe_sync.refresh(text, text, text, boolean, text)']::regprocedure[]
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO stripe_sync_admin', f);
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, stripe_sync, pg_temp', f);
    END LOOP;
END
$grants$;
