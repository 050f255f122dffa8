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
    created_at   timestamptz NOT NULL DEFAULT now(),
    connected_accounts boolean NOT NULL DEFAULT false,
    account_id   text
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
COMMENT ON COLUMN stripe_sync._sources.connected_accounts IS 'Connect: the source covers the platform''s own account and every connected account it lists.';
COMMENT ON COLUMN stripe_sync._sources.account_id IS 'Id of the account the key acts as (GET /v1/account), which the source''s own rows carry in their account column; NULL until the first refresh or webhook learns it.';

CREATE VIEW stripe_sync.sources AS
    SELECT name, schema_name AS schema, schema_name || '_api' AS api_schema, table_prefix, account, api_url,
           api_version, created_at, connected_accounts, account_id
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
COMMENT ON COLUMN stripe_sync.sources.connected_accounts IS 'Connect: the source covers the platform and every connected account (add_source(..., connected_accounts => true)).';
COMMENT ON COLUMN stripe_sync.sources.account_id IS 'Id of the account the key acts as: the account column of the source''s own rows (NULL until first learned).';

CREATE TABLE stripe_sync._sync_state (
    source                text NOT NULL REFERENCES stripe_sync._sources (name) ON DELETE CASCADE,
    resource              text NOT NULL,
    last_mode             text,
    status                text,
    started_at            timestamptz,
    finished_at           timestamptz,
    rows_inserted         bigint NOT NULL DEFAULT 0,
    rows_updated          bigint NOT NULL DEFAULT 0,
    rows_deleted          bigint NOT NULL DEFAULT 0,
    api_requests          bigint NOT NULL DEFAULT 0,
    incremental_cursor    bigint,
    events_cursor_created bigint,
    events_cursor_id      text,
    checkpoint            jsonb,
    progress              jsonb,
    running_pid           integer,
    note                  text,
    last_error            text,
    last_error_code       text,
    last_error_hint       text,
    last_error_at         timestamptz,
    newest_stamp          bigint,
    account               text NOT NULL DEFAULT '',
    PRIMARY KEY (source, resource, account)
);
SELECT pg_catalog.pg_extension_config_dump('stripe_sync._sync_state', '');
REVOKE ALL ON stripe_sync._sync_state FROM PUBLIC;
COMMENT ON TABLE stripe_sync._sync_state IS 'Internal: per source and resource, the last refresh, its cursors, checkpoint and live progress (see stripe_sync.sync_status).';
COMMENT ON COLUMN stripe_sync._sync_state.source IS 'Source name.';
COMMENT ON COLUMN stripe_sync._sync_state.resource IS 'Resource name.';
COMMENT ON COLUMN stripe_sync._sync_state.last_mode IS 'Mode of the last refresh: full, incremental or events.';
COMMENT ON COLUMN stripe_sync._sync_state.status IS 'running, succeeded, failed, interrupted; for a connected account of a Connect source also revoked (it revoked the platform''s access: reported, skipped by refreshes, its rows kept) or connected (access granted, heard by webhook; not refreshed since).';
COMMENT ON COLUMN stripe_sync._sync_state.started_at IS 'When the last refresh started.';
COMMENT ON COLUMN stripe_sync._sync_state.finished_at IS 'When the last refresh finished.';
COMMENT ON COLUMN stripe_sync._sync_state.rows_inserted IS 'Rows inserted by the last refresh.';
COMMENT ON COLUMN stripe_sync._sync_state.rows_updated IS 'Rows updated by the last refresh.';
COMMENT ON COLUMN stripe_sync._sync_state.rows_deleted IS 'Rows deleted by the last refresh.';
COMMENT ON COLUMN stripe_sync._sync_state.api_requests IS 'Stripe API requests of the last refresh.';
COMMENT ON COLUMN stripe_sync._sync_state.incremental_cursor IS 'Newest created time (unix s) read by incremental refreshes.';
COMMENT ON COLUMN stripe_sync._sync_state.events_cursor_created IS 'Created time (unix s) of the last event applied by events refreshes.';
COMMENT ON COLUMN stripe_sync._sync_state.events_cursor_id IS 'Id of the last event applied by events refreshes.';
COMMENT ON COLUMN stripe_sync._sync_state.checkpoint IS 'Where an interrupted full refresh resumes.';
COMMENT ON COLUMN stripe_sync._sync_state.progress IS 'Live progress of a running refresh (pages, rows, rate).';
COMMENT ON COLUMN stripe_sync._sync_state.running_pid IS 'Process doing the refresh while it runs.';
COMMENT ON COLUMN stripe_sync._sync_state.note IS 'What the last refresh decided on its own (e.g. a full refresh instead of events).';
COMMENT ON COLUMN stripe_sync._sync_state.last_error IS 'Message of the last failure.';
COMMENT ON COLUMN stripe_sync._sync_state.last_error_code IS 'SQLSTATE of the last failure.';
COMMENT ON COLUMN stripe_sync._sync_state.last_error_hint IS 'Hint of the last failure.';
COMMENT ON COLUMN stripe_sync._sync_state.last_error_at IS 'When the last failure happened.';
COMMENT ON COLUMN stripe_sync._sync_state.newest_stamp IS 'Newest Stripe time (unix s) of a change applied to the table.';
COMMENT ON COLUMN stripe_sync._sync_state.account IS 'Connect: the connected account (acct_...) of this row; empty for the source''s own account.';

CREATE TABLE stripe_sync._deleted (
    source   text NOT NULL,
    resource text NOT NULL,
    id       text NOT NULL,
    stamp    bigint NOT NULL,
    account  text NOT NULL DEFAULT '',
    PRIMARY KEY (source, resource, account, id)
);
SELECT pg_catalog.pg_extension_config_dump('stripe_sync._deleted', '');
REVOKE ALL ON stripe_sync._deleted FROM PUBLIC;
COMMENT ON TABLE stripe_sync._deleted IS 'Internal: ids deleted at Stripe, so that an older version arriving late never brings a row back; kept 35 days (Stripe keeps events 30 days and retries webhooks for 3).';
COMMENT ON COLUMN stripe_sync._deleted.source IS 'Source name.';
COMMENT ON COLUMN stripe_sync._deleted.resource IS 'Resource name.';
COMMENT ON COLUMN stripe_sync._deleted.id IS 'Stripe id of the deleted object.';
COMMENT ON COLUMN stripe_sync._deleted.stamp IS 'Stripe time (unix s) of the deletion.';
COMMENT ON COLUMN stripe_sync._deleted.account IS 'Connect: the connected account (acct_...) the object was in; empty for the source''s own account.';

CREATE VIEW stripe_sync.sync_status AS
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
GRANT SELECT ON stripe_sync.sync_status TO PUBLIC;
COMMENT ON VIEW stripe_sync.sync_status IS 'Per source and resource: the last refresh, its cursors, live progress, last error and freshness.';
COMMENT ON COLUMN stripe_sync.sync_status.source IS 'Source name.';
COMMENT ON COLUMN stripe_sync.sync_status.resource IS 'Resource name.';
COMMENT ON COLUMN stripe_sync.sync_status.last_mode IS 'Mode of the last refresh.';
COMMENT ON COLUMN stripe_sync.sync_status.status IS 'running, succeeded, failed, interrupted; for a connected account of a Connect source also revoked (it revoked the platform''s access: reported, skipped by refreshes, its rows kept) or connected (access granted, heard by webhook; not refreshed since).';
COMMENT ON COLUMN stripe_sync.sync_status.started_at IS 'When the last refresh started.';
COMMENT ON COLUMN stripe_sync.sync_status.finished_at IS 'When it finished.';
COMMENT ON COLUMN stripe_sync.sync_status.rows_inserted IS 'Rows inserted by it.';
COMMENT ON COLUMN stripe_sync.sync_status.rows_updated IS 'Rows updated by it.';
COMMENT ON COLUMN stripe_sync.sync_status.rows_deleted IS 'Rows deleted by it.';
COMMENT ON COLUMN stripe_sync.sync_status.api_requests IS 'Stripe API requests it made.';
COMMENT ON COLUMN stripe_sync.sync_status.incremental_cursor IS 'Newest created time read by incremental refreshes.';
COMMENT ON COLUMN stripe_sync.sync_status.events_cursor_id IS 'Last event applied by events refreshes.';
COMMENT ON COLUMN stripe_sync.sync_status.events_cursor_at IS 'Created time of that event.';
COMMENT ON COLUMN stripe_sync.sync_status.resumable IS 'An interrupted full refresh will resume from its checkpoint.';
COMMENT ON COLUMN stripe_sync.sync_status.progress IS 'Live progress while running: pages, rows, objects per second, API requests.';
COMMENT ON COLUMN stripe_sync.sync_status.note IS 'What the refresh decided on its own.';
COMMENT ON COLUMN stripe_sync.sync_status.last_error IS 'Message of the last failure (NULL for roles without stripe_sync_admin: it may quote Stripe).';
COMMENT ON COLUMN stripe_sync.sync_status.last_error_at IS 'When it happened.';
COMMENT ON COLUMN stripe_sync.sync_status.freshness IS 'Age of the newest change applied to the table.';
COMMENT ON COLUMN stripe_sync.sync_status.account IS 'The Stripe account of the row: the source''s own account id, or a connected account of a Connect source (one row per account and resource).';

CREATE TABLE stripe_sync._webhooks (
    source         text PRIMARY KEY REFERENCES stripe_sync._sources (name) ON DELETE CASCADE,
    endpoint_id    text,
    url            text,
    secrets        text[] NOT NULL DEFAULT '{}',
    managed        boolean NOT NULL DEFAULT false,
    enabled_events text[],
    created_at     timestamptz NOT NULL DEFAULT now(),
    connect_endpoint_id text
);
SELECT pg_catalog.pg_extension_config_dump('stripe_sync._webhooks', '');
REVOKE ALL ON stripe_sync._webhooks FROM PUBLIC;
COMMENT ON TABLE stripe_sync._webhooks IS 'Internal: the webhook endpoint of each source and its signing secrets (readable by superusers only).';
COMMENT ON COLUMN stripe_sync._webhooks.source IS 'Source name.';
COMMENT ON COLUMN stripe_sync._webhooks.endpoint_id IS 'Stripe id of the endpoint (we_...), when known.';
COMMENT ON COLUMN stripe_sync._webhooks.url IS 'URL Stripe delivers to.';
COMMENT ON COLUMN stripe_sync._webhooks.secrets IS 'Signing secrets accepted (several while a secret rolls).';
COMMENT ON COLUMN stripe_sync._webhooks.managed IS 'Whether stripe_sync created the endpoint (and deletes it with the source).';
COMMENT ON COLUMN stripe_sync._webhooks.enabled_events IS 'Event types the endpoint was created with.';
COMMENT ON COLUMN stripe_sync._webhooks.created_at IS 'When it was set up.';
COMMENT ON COLUMN stripe_sync._webhooks.connect_endpoint_id IS 'Connect sources: the Stripe id of the second endpoint (connect=true), which delivers the connected accounts'' events; its secret is among secrets.';

CREATE TABLE stripe_sync._inbox (
    source      text NOT NULL,
    event_id    text NOT NULL,
    type        text NOT NULL,
    created     bigint NOT NULL,
    payload     jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    status      text NOT NULL DEFAULT 'pending',
    applied_at  timestamptz,
    error       text,
    attempts    integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    PRIMARY KEY (source, event_id)
);
CREATE INDEX _inbox_pending_idx ON stripe_sync._inbox (received_at) WHERE status = 'pending';
CREATE INDEX _inbox_failed_idx ON stripe_sync._inbox (next_attempt_at) WHERE status = 'failed';
-- acknowledged events not yet applied must survive a dump and restore
SELECT pg_catalog.pg_extension_config_dump('stripe_sync._inbox', '');
REVOKE ALL ON stripe_sync._inbox FROM PUBLIC;
COMMENT ON TABLE stripe_sync._inbox IS 'Internal: verified webhook events, stored before Stripe gets its 2xx, then applied (idempotent on event id); applied and skipped ones are deleted after stripe_sync.inbox_retention.';
COMMENT ON COLUMN stripe_sync._inbox.source IS 'Source the event was delivered for.';
COMMENT ON COLUMN stripe_sync._inbox.event_id IS 'Stripe event id.';
COMMENT ON COLUMN stripe_sync._inbox.type IS 'Event type.';
COMMENT ON COLUMN stripe_sync._inbox.created IS 'Event created time (unix s).';
COMMENT ON COLUMN stripe_sync._inbox.payload IS 'The verified event.';
COMMENT ON COLUMN stripe_sync._inbox.received_at IS 'When it was stored.';
COMMENT ON COLUMN stripe_sync._inbox.status IS 'pending, applied, skipped (type not synced, source gone, or skipped by skip_event) or failed (tried again at next_attempt_at).';
COMMENT ON COLUMN stripe_sync._inbox.applied_at IS 'When it was applied.';
COMMENT ON COLUMN stripe_sync._inbox.error IS 'Why applying failed, or why it was skipped.';
COMMENT ON COLUMN stripe_sync._inbox.attempts IS 'Failed attempts to apply it.';
COMMENT ON COLUMN stripe_sync._inbox.next_attempt_at IS 'When a failed event is tried again (backoff doubling per attempt, at most an hour).';

CREATE TABLE stripe_sync._webhook_stats (
    source           text PRIMARY KEY,
    received         bigint NOT NULL DEFAULT 0,
    duplicates       bigint NOT NULL DEFAULT 0,
    applied          bigint NOT NULL DEFAULT 0,
    skipped          bigint NOT NULL DEFAULT 0,
    rejected         bigint NOT NULL DEFAULT 0,
    last_received_at timestamptz,
    last_applied_at  timestamptz,
    last_error       text,
    last_error_at    timestamptz
);
SELECT pg_catalog.pg_extension_config_dump('stripe_sync._webhook_stats', '');
REVOKE ALL ON stripe_sync._webhook_stats FROM PUBLIC;
COMMENT ON TABLE stripe_sync._webhook_stats IS 'Internal: webhook counters per source (see stripe_sync.webhook_status).';
COMMENT ON COLUMN stripe_sync._webhook_stats.source IS 'Source name.';
COMMENT ON COLUMN stripe_sync._webhook_stats.received IS 'Verified events stored.';
COMMENT ON COLUMN stripe_sync._webhook_stats.duplicates IS 'Deliveries of events already stored.';
COMMENT ON COLUMN stripe_sync._webhook_stats.applied IS 'Events applied to tables.';
COMMENT ON COLUMN stripe_sync._webhook_stats.skipped IS 'Events of types no table follows (acknowledged, not applied).';
COMMENT ON COLUMN stripe_sync._webhook_stats.rejected IS 'Deliveries refused by the worker (bad signature, malformed, too large).';
COMMENT ON COLUMN stripe_sync._webhook_stats.last_received_at IS 'When the last event was stored.';
COMMENT ON COLUMN stripe_sync._webhook_stats.last_applied_at IS 'When the last event was applied.';
COMMENT ON COLUMN stripe_sync._webhook_stats.last_error IS 'Last error applying events.';
COMMENT ON COLUMN stripe_sync._webhook_stats.last_error_at IS 'When it happened.';
