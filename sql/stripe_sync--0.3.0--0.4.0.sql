-- stripe_sync 0.3.0 -> 0.4.0
--
-- Connect in the foreign tables: every foreign table of an existing source gets
-- the column account (text, after attrs), as add_source creates them from 0.4.0
-- on. account = 'acct_...' / account IN (...) is sent as Stripe-Account.

DO $tables$
DECLARE
    ft record;
BEGIN
    FOR ft IN
        SELECT t.ftrelid::pg_catalog.regclass AS rel
        FROM stripe_sync._sources src
        JOIN pg_catalog.pg_foreign_server s ON s.srvname = src.server_name
        JOIN pg_catalog.pg_foreign_table t ON t.ftserver = s.oid
    LOOP
        EXECUTE pg_catalog.format('ALTER FOREIGN TABLE %s ADD COLUMN IF NOT EXISTS account text', ft.rel);
        EXECUTE pg_catalog.format('COMMENT ON COLUMN %s.account IS %L', ft.rel,
            'Connect: the account the row was read from. account = ''acct_...'' or account IN (...) reads those connected accounts (sent as Stripe-Account, one scan each); without it the scan reads the server''s account option, or the key''s own account (account NULL).');
    END LOOP;
END
$tables$;
