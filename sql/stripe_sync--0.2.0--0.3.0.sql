-- stripe_sync 0.2.0 -> 0.3.0
--
-- Every materialized table records the Stripe API version each row's attrs were
-- rendered in (_api_version), as add_source creates them from 0.3.0 on. Rows
-- written by 0.2.0 keep NULL until they are written again.

DO $tables$
DECLARE
    src record;
    t record;
BEGIN
    FOR src IN SELECT server_name, schema_name, table_prefix FROM stripe_sync._sources LOOP
        FOR t IN
            SELECT (SELECT pg_catalog.split_part(o, '=', 2) FROM pg_catalog.unnest(ft.ftoptions) o WHERE o LIKE 'resource=%') AS resource
            FROM pg_catalog.pg_foreign_table ft
            JOIN pg_catalog.pg_foreign_server s ON s.oid = ft.ftserver
            WHERE s.srvname = src.server_name
        LOOP
            IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', src.schema_name, src.table_prefix || t.resource)) IS NOT NULL THEN
                EXECUTE pg_catalog.format('ALTER TABLE %I.%I ADD COLUMN IF NOT EXISTS _api_version text',
                                          src.schema_name, src.table_prefix || t.resource);
                EXECUTE pg_catalog.format('COMMENT ON COLUMN %I.%I._api_version IS %L',
                                          src.schema_name, src.table_prefix || t.resource,
                                          'The Stripe API version the row''s attrs are rendered in: the source''s (an event rendered in another version is fetched again in it). NULL for rows written before stripe_sync 0.3.0.');
            END IF;
        END LOOP;
    END LOOP;
END
$tables$;
