-- stripe_sync 0.1.0 -> 0.2.0
-- Released scripts never change (see sql/released.sha256); CHANGELOG.md says what each version brings.
\echo Use "ALTER EXTENSION stripe_sync UPDATE" to load this file. \quit

-- Failed webhook events are retried with backoff instead of stalling the inbox.
ALTER TABLE stripe_sync._inbox
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at timestamptz;
CREATE INDEX _inbox_failed_idx ON stripe_sync._inbox (next_attempt_at) WHERE status = 'failed';
-- acknowledged events not yet applied, and the counters, survive a dump and restore
SELECT pg_catalog.pg_extension_config_dump('stripe_sync._inbox', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_sync._webhook_stats', '');
UPDATE stripe_sync._inbox SET attempts = 1, next_attempt_at = pg_catalog.clock_timestamp() WHERE status = 'failed';
COMMENT ON TABLE stripe_sync._inbox IS 'Internal: verified webhook events, stored before Stripe gets its 2xx, then applied (idempotent on event id); applied and skipped ones are deleted after stripe_sync.inbox_retention.';
COMMENT ON TABLE stripe_sync._deleted IS 'Internal: ids deleted at Stripe, so that an older version arriving late never brings a row back; kept 35 days (Stripe keeps events 30 days and retries webhooks for 3).';
COMMENT ON COLUMN stripe_sync._inbox.status IS 'pending, applied, skipped (type not synced, source gone, or skipped by skip_event) or failed (tried again at next_attempt_at).';
COMMENT ON COLUMN stripe_sync._inbox.error IS 'Why applying failed, or why it was skipped.';
COMMENT ON COLUMN stripe_sync._inbox.attempts IS 'Failed attempts to apply it.';
COMMENT ON COLUMN stripe_sync._inbox.next_attempt_at IS 'When a failed event is tried again (backoff doubling per attempt, at most an hour).';

-- drop_source(name, drop_tables => false)
DROP FUNCTION stripe_sync.drop_source(text);
CREATE FUNCTION stripe_sync.drop_source("name" text, "drop_tables" boolean DEFAULT false) RETURNS boolean
    STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'drop_source_wrapper';
CREATE FUNCTION stripe_sync.retry_failed("source" text DEFAULT NULL) RETURNS bigint
    LANGUAGE c AS 'MODULE_PATHNAME', 'retry_failed_wrapper';
CREATE FUNCTION stripe_sync.skip_event("event_id" text, "source" text DEFAULT 'default') RETURNS boolean
    STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'skip_event_wrapper';

-- refresh(..., wait => false): detached runs
DROP FUNCTION stripe_sync.refresh(text, text, text);
CREATE FUNCTION stripe_sync.refresh("resource" text, "mode" text DEFAULT 'incremental', "source" text DEFAULT 'default',
                                    "wait" boolean DEFAULT true)
    RETURNS TABLE ("resource" text, "mode" text, "rows_inserted" bigint, "rows_updated" bigint, "rows_deleted" bigint,
                   "api_requests" bigint, "started_at" timestamp with time zone, "finished_at" timestamp with time zone)
    LANGUAGE c AS 'MODULE_PATHNAME', 'refresh_resources_wrapper';
COMMENT ON FUNCTION stripe_sync.refresh(text, text, text, boolean) IS
  'Brings materialized tables up to date: refresh(resource or ''all'', mode full|incremental|events, source, wait). Runs in a background worker that commits as it goes; an interrupted full refresh resumes. Returns one row per resource; wait => false returns as soon as the run started (progress in sync_status) and holds no snapshot.';

COMMENT ON FUNCTION stripe_sync.add_source(text, text, text, text, text, text, text, double precision) IS
  'Connects a Stripe account: add_source(api_key, name, schema, table_prefix, account, api_url, api_version, max_requests_per_second). Creates server stripe_sync_<name>, a user mapping for PUBLIC holding the key, the 15 foreign tables in <schema>_api and the 15 materialized tables in <schema>. Refuses tables that belong to another source or that it did not create.';
COMMENT ON FUNCTION stripe_sync.drop_source(text, boolean) IS 'Removes a source: drop_source(name, drop_tables => false). Drops its server, user mapping, foreign tables, sync state, tombstones, webhook endpoint (also at Stripe), inbox and counters; nothing of any other source. The materialized tables are kept unless drop_tables.';
COMMENT ON FUNCTION stripe_sync.retry_failed(text) IS 'Makes failed webhook events of a source (NULL: every source) pending again, to be applied at once; returns how many.';
COMMENT ON FUNCTION stripe_sync.skip_event(text, text) IS 'Gives up on one stored webhook event (pending or failed): skip_event(event_id, source). It is marked skipped, with who skipped it, and never applied.';
COMMENT ON FUNCTION stripe_sync.webhook_status(text) IS
  'A source''s webhook: endpoint id, URL, enabled events, Stripe-side status, counts received / duplicates / applied / skipped / rejected, pending and failed events, the last failed event, lag, last error.';

-- sync_status hides error texts from roles without stripe_sync_admin
CREATE OR REPLACE VIEW stripe_sync.sync_status AS
    SELECT source, resource, last_mode, status, started_at, finished_at, rows_inserted, rows_updated, rows_deleted,
           api_requests,
           to_timestamp(incremental_cursor) AS incremental_cursor,
           events_cursor_id, to_timestamp(events_cursor_created) AS events_cursor_at,
           checkpoint IS NOT NULL AS resumable,
           progress, note,
           CASE WHEN pg_catalog.pg_has_role('stripe_sync_admin', 'USAGE') THEN last_error END AS last_error,
           last_error_at,
           now() - to_timestamp(newest_stamp) AS freshness
    FROM stripe_sync._sync_state;
COMMENT ON COLUMN stripe_sync.sync_status.last_error IS 'Message of the last failure (NULL for roles without stripe_sync_admin: it may quote Stripe).';

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
        'stripe_sync.add_source(text, text, text, text, text, text, text, double precision)',
        'stripe_sync.drop_source(text, boolean)',
        'stripe_sync.refresh(text, text, text, boolean)',
        'stripe_sync.create_webhook(text, text)',
        'stripe_sync.set_webhook_secret(text, text, boolean)',
        'stripe_sync.delete_webhook(text)',
        'stripe_sync.webhook_status(text)',
        'stripe_sync.receive_webhook(text, text, text)',
        'stripe_sync.apply_inbox(bigint)',
        'stripe_sync.retry_failed(text)',
        'stripe_sync.skip_event(text, text)']::regprocedure[]
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

-- Sources added by 0.1.0: their foreign tables get the planner's startup cost, and
-- stripe_sync_reader reads their tables, as add_source does for new sources.
DO $sources$
DECLARE
    src record;
    t record;
BEGIN
    FOR src IN SELECT name, server_name, schema_name, table_prefix FROM stripe_sync._sources LOOP
        EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %I, %I TO stripe_sync_reader', src.schema_name, src.schema_name || '_api');
        FOR t IN
            SELECT c.oid::regclass AS foreign_table,
                   (SELECT pg_catalog.split_part(o, '=', 2) FROM pg_catalog.unnest(ft.ftoptions) o WHERE o LIKE 'resource=%') AS resource,
                   EXISTS (SELECT FROM pg_catalog.unnest(ft.ftoptions) o WHERE o LIKE 'startup_cost=%') AS has_cost
            FROM pg_catalog.pg_foreign_table ft
            JOIN pg_catalog.pg_class c ON c.oid = ft.ftrelid
            JOIN pg_catalog.pg_foreign_server s ON s.oid = ft.ftserver
            WHERE s.srvname = src.server_name
        LOOP
            IF NOT t.has_cost THEN
                EXECUTE pg_catalog.format('ALTER FOREIGN TABLE %s OPTIONS (ADD startup_cost %L)', t.foreign_table, '100');
            END IF;
            EXECUTE pg_catalog.format('GRANT SELECT ON %s TO stripe_sync_reader', t.foreign_table);
            IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', src.schema_name, src.table_prefix || t.resource)) IS NOT NULL THEN
                EXECUTE pg_catalog.format('GRANT SELECT ON %I.%I TO stripe_sync_reader', src.schema_name, src.table_prefix || t.resource);
            END IF;
        END LOOP;
    END LOOP;
END
$sources$;
