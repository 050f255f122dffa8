-- refresh in its three modes, its refusals, and the status it leaves.
\pset null '(null)'
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT resource, mode, rows_inserted, rows_updated, rows_deleted, api_requests > 0 AS asked_stripe,
       finished_at >= started_at AS finished
FROM stripe_sync.refresh('customer', 'full', source => 'regress');
SELECT count(*) AS customers, count(*) FILTER (WHERE email IS NULL) AS without_email FROM regress.customer;
SELECT resource, mode, rows_inserted, rows_updated, rows_deleted FROM stripe_sync.refresh('customer', 'incremental', source => 'regress');
SELECT resource, mode, rows_inserted, rows_updated, rows_deleted FROM stripe_sync.refresh('customer', 'events', source => 'regress');
SELECT resource, mode, rows_inserted, rows_deleted FROM stripe_sync.refresh('all', 'full', source => 'regress') ORDER BY resource;
SELECT (SELECT count(*) FROM regress.invoice) = (SELECT count(*) FROM regress_api.invoice) AS invoices_match,
       (SELECT count(*) FROM regress.price) = (SELECT count(*) FROM regress_api.price) AS prices_match;
-- detached: returns once the run started; the outcome shows in sync_status
SELECT resource, mode, rows_inserted, started_at IS NOT NULL AS started, finished_at IS NULL AS running
FROM stripe_sync.refresh('product', 'full', source => 'regress', wait => false);
CREATE FUNCTION pg_temp.within_10s(q text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE ok boolean;
BEGIN
    FOR i IN 1..100 LOOP
        EXECUTE q INTO ok;
        IF ok THEN RETURN true; END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RETURN false;
END $$;
SELECT pg_temp.within_10s($$SELECT status = 'succeeded' FROM stripe_sync.sync_status
                            WHERE source = 'regress' AND resource = 'product'$$) AS detached_run_succeeded;
-- refusals
SELECT * FROM stripe_sync.refresh('customers_and_more', 'full', source => 'regress');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM stripe_sync.refresh('customer', 'sometimes', source => 'regress');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM stripe_sync.refresh('customer', 'full', source => 'nowhere');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM stripe_sync.refresh(NULL, 'full', source => 'regress');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM stripe_sync.refresh('customer', 'full', source => 'regress', account => 'cus_123');
\echo :LAST_ERROR_SQLSTATE
-- forget_account is for connected accounts of a Connect source; refusals change nothing
SELECT stripe_sync.forget_account('cus_123', source => 'regress');
\echo :LAST_ERROR_SQLSTATE
SELECT stripe_sync.forget_account('acct_1Regress', source => 'regress');
\echo :LAST_ERROR_SQLSTATE
SELECT stripe_sync.forget_account('acct_1Regress', source => 'nowhere');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) > 0 AS customers_kept FROM regress.customer;
-- the status view, per resource
SELECT resource, last_mode, status, rows_inserted > 0 AS inserted, events_cursor_id IS NOT NULL AS has_events_cursor,
       resumable, note, last_error, freshness IS NOT NULL AS has_freshness
FROM stripe_sync.sync_status WHERE source = 'regress' ORDER BY resource;
