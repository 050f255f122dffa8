-- Webhooks through the SQL ingress: endpoint, secrets, verified and refused
-- deliveries, the inbox and what a DBA can do about a failed event.
\pset null '(null)'
\set VERBOSITY default
\set SHOW_CONTEXT never
-- a signed delivery as Stripe makes it: t=<unix time>,v1=HMAC-SHA256(secret, "<t>.<body>")
CREATE FUNCTION pg_temp.signed(body text, secret text, at bigint DEFAULT extract(epoch FROM now())::bigint)
RETURNS text LANGUAGE sql AS
$$ SELECT 't=' || at || ',v1=' || encode(hmac(at || '.' || body, secret, 'sha256'), 'hex') $$;
CREATE FUNCTION pg_temp.event(id text, type text, created bigint, object jsonb) RETURNS text LANGUAGE sql AS
$$ SELECT jsonb_build_object('id', id, 'object', 'event', 'type', type, 'created', created,
                             'api_version', '2026-06-24.dahlia', 'data', jsonb_build_object('object', object))::text $$;
-- nothing yet
SELECT key, value FROM jsonb_each(stripe_sync.webhook_status('regress'))
WHERE key IN ('endpoint_id', 'url', 'received', 'applied', 'pending', 'failed', 'last_error') ORDER BY key;
-- register the endpoint at Stripe (the fake), and add a secret of one made by hand
SELECT stripe_sync.create_webhook('http://127.0.0.1:9/webhook/regress', 'regress') LIKE 'we\_%' AS endpoint_created;
SELECT stripe_sync.set_webhook_secret('whsec_regress_by_hand', 'regress');
SELECT stripe_sync.set_webhook_secret('not_a_secret', 'regress');
\echo :LAST_ERROR_SQLSTATE
-- a verified customer.created is stored, then applied
SELECT stripe_sync.receive_webhook(pg_temp.event('evt_regress_1', 'customer.created', 1767225700,
         '{"id": "cus_regress_1", "object": "customer", "created": 1767225700, "email": "one@example.com", "name": "One"}'),
       pg_temp.signed(pg_temp.event('evt_regress_1', 'customer.created', 1767225700,
         '{"id": "cus_regress_1", "object": "customer", "created": 1767225700, "email": "one@example.com", "name": "One"}'),
         'whsec_regress_by_hand'), 'regress');
-- the same event again is a duplicate
SELECT stripe_sync.receive_webhook(pg_temp.event('evt_regress_1', 'customer.created', 1767225700,
         '{"id": "cus_regress_1", "object": "customer", "created": 1767225700, "email": "one@example.com", "name": "One"}'),
       pg_temp.signed(pg_temp.event('evt_regress_1', 'customer.created', 1767225700,
         '{"id": "cus_regress_1", "object": "customer", "created": 1767225700, "email": "one@example.com", "name": "One"}'),
         'whsec_regress_by_hand'), 'regress');
-- applied by apply_inbox, or by the worker when it came first
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
SELECT stripe_sync.apply_inbox() IN (0, 1) AS applied_at_most_one;
SELECT pg_temp.within_10s($$SELECT EXISTS (SELECT FROM regress.customer WHERE id = 'cus_regress_1')$$) AS applied;
SELECT id, email, name, _synced_by FROM regress.customer WHERE id = 'cus_regress_1';
-- refused: a wrong secret, a stale timestamp, a body changed after signing, no header, an unknown source
SELECT stripe_sync.receive_webhook(pg_temp.event('evt_regress_2', 'customer.updated', 1767225800, '{"id": "cus_regress_1", "object": "customer"}'),
       pg_temp.signed(pg_temp.event('evt_regress_2', 'customer.updated', 1767225800, '{"id": "cus_regress_1", "object": "customer"}'), 'whsec_wrong'), 'regress');
\echo :LAST_ERROR_SQLSTATE
-- (the age in the message is masked: it depends on the clock)
DO $$
BEGIN
    PERFORM stripe_sync.receive_webhook(pg_temp.event('evt_regress_2', 'customer.updated', 1767225800, '{"id": "cus_regress_1", "object": "customer"}'),
            pg_temp.signed(pg_temp.event('evt_regress_2', 'customer.updated', 1767225800, '{"id": "cus_regress_1", "object": "customer"}'),
                           'whsec_regress_by_hand', extract(epoch FROM now())::bigint - 3600), 'regress');
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE '% %', SQLSTATE, regexp_replace(SQLERRM, '\d+ s old', 'N s old');
END $$;
SELECT stripe_sync.receive_webhook(pg_temp.event('evt_regress_2', 'customer.updated', 1767225800, '{"id": "cus_regress_1", "object": "customer", "name": "Changed"}'),
       pg_temp.signed(pg_temp.event('evt_regress_2', 'customer.updated', 1767225800, '{"id": "cus_regress_1", "object": "customer"}'), 'whsec_regress_by_hand'), 'regress');
\echo :LAST_ERROR_SQLSTATE
SELECT stripe_sync.receive_webhook('{}', '', 'regress');
\echo :LAST_ERROR_SQLSTATE
SELECT stripe_sync.receive_webhook('{}', 't=1,v1=00', 'nowhere');
\echo :LAST_ERROR_SQLSTATE
-- a DBA's tools for failed events
SELECT stripe_sync.retry_failed('regress') AS retried;
SELECT stripe_sync.skip_event('evt_never_received', 'regress');
\echo :LAST_ERROR_SQLSTATE
-- the status: counters and shape
SELECT key, value FROM jsonb_each(stripe_sync.webhook_status('regress'))
WHERE key IN ('managed', 'received', 'duplicates', 'applied', 'pending', 'failed', 'secrets', 'stripe_status', 'last_failed_event') ORDER BY key;
SELECT array_agg(k ORDER BY k) AS webhook_status_keys FROM jsonb_object_keys(stripe_sync.webhook_status('regress')) k;
SELECT stripe_sync.delete_webhook('regress');
SELECT key, value FROM jsonb_each(stripe_sync.webhook_status('regress')) WHERE key IN ('endpoint_id', 'secrets') ORDER BY key;
