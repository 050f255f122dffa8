-- stripe_sync 0.5.0 -> 0.6.0
-- Connect: a connected account's grant or revocation of access heard by webhook shows in sync_status
-- (statuses connected and revoked); forget_account removes a revoked account's rows.

COMMENT ON COLUMN stripe_sync._sync_state.status IS 'running, succeeded, failed, interrupted; for a connected account of a Connect source also revoked (it revoked the platform''s access: reported, skipped by refreshes, its rows kept) or connected (access granted, heard by webhook; not refreshed since).';
COMMENT ON COLUMN stripe_sync.sync_status.status IS 'running, succeeded, failed, interrupted; for a connected account of a Connect source also revoked (it revoked the platform''s access: reported, skipped by refreshes, its rows kept) or connected (access granted, heard by webhook; not refreshed since).';

CREATE FUNCTION stripe_sync.forget_account("account" text, "source" text DEFAULT 'default')
    RETURNS bigint STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'forget_account_wrapper';
COMMENT ON FUNCTION stripe_sync.forget_account(text, text) IS
  'Connect: removes a connected account''s rows from every materialized table of a source, with its sync state and tombstones, and skips its events waiting in the inbox: forget_account(account, source). For an account that revoked access; one still connected comes back with the next refresh. Returns the rows removed.';
REVOKE ALL ON FUNCTION stripe_sync.forget_account(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION stripe_sync.forget_account(text, text) TO stripe_sync_admin;
ALTER FUNCTION stripe_sync.forget_account(text, text) SECURITY DEFINER SET search_path = pg_catalog, stripe_sync, pg_temp;
