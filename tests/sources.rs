//! The keys and accounts users really have: a read-only restricted key, a key
//! missing one permission, a Stripe-compatible server without `/v1/events`, and
//! two sources side by side (one fake Stripe account each), and a source per
//! Connect connected account (`account =>`, sent as `Stripe-Account`).

use e2e::{
    Cluster, ClusterConfig, Fake, Faults, SeedSpec, compare, compare_account, connect_collecting_notices, id, mutate,
    start_fake, wait_for,
};
use std::time::Duration;
use stripe_core::resources::RESOURCES;
use stripe_core::signature;
use stripe_fake::permissions::DATA_TOOL_READ;

/// A restricted key made the way Stripe data tools tell their users to make one.
const READ_ONLY_KEY: &str = "rk_test_51ReadOnlyDataToolKey0000aa";

/// The fake, knowing `READ_ONLY_KEY` with `permissions`.
fn fake_with_key(seed: SeedSpec, permissions: &[&str]) -> Fake {
    let mut faults = Faults::default();
    faults.restricted_keys.insert(READ_ONLY_KEY.into(), permissions.iter().map(|p| p.to_string()).collect());
    start_fake(Some(seed), faults)
}

fn add(c: &mut postgres::Client, fake: &Fake, key: &str, name: &str, schema: &str) -> Result<(), postgres::Error> {
    c.execute(
        "SELECT stripe_sync.add_source($1, name => $2, schema => $3, api_url => $4, max_requests_per_second => 1000)",
        &[&key, &name, &schema, &fake.url()],
    )
    .map(|_| ())
}

fn assert_all_equal(c: &mut postgres::Client, fake: &Fake, schema: &str, except: &[&str], when: &str) {
    for r in RESOURCES.iter().filter(|r| !except.contains(&r.name)) {
        let d = compare(c, fake, schema, r.name);
        assert!(d.is_empty(), "{schema}.{} after {when}: {} {d:?}", r.name, d.summary());
    }
}

fn count(c: &mut postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

#[test]
fn a_read_only_restricted_key_refreshes_every_resource_in_every_mode() {
    let cluster = Cluster::start(ClusterConfig::default());
    cluster.connect_with_extension();
    let (mut c, notices) = connect_collecting_notices(&cluster);
    let fake = fake_with_key(SeedSpec::scaled(40), DATA_TOOL_READ);
    add(&mut c, &fake, READ_ONLY_KEY, "default", "stripe").unwrap();

    let rows = c.query("SELECT * FROM stripe_sync.refresh('all', 'full')", &[]).expect("full refresh of everything");
    assert_eq!(rows.len(), 15);
    assert_all_equal(&mut c, &fake, "stripe", &[], "refresh('all', 'full') with a read-only key");
    // the key really is restricted: Stripe refused /v1/events
    let refused = fake.stats().by_status.get(&403).copied().unwrap_or(0);
    assert!(refused > 0, "no request was refused: {:?}", fake.stats().by_status);
    let note: String =
        c.query_one("SELECT note FROM stripe_sync.sync_status WHERE resource = 'customer'", &[]).unwrap().get(0);
    assert!(note.contains("Events: Read"), "{note}");
    let said: Vec<String> = notices.lock().unwrap().clone();
    assert_eq!(said.iter().filter(|n| n.contains("Events: Read")).count(), 1, "said once per call: {said:?}");

    // events mode without Events: a full refresh, and a NOTICE naming the permission
    mutate(&fake, 1);
    notices.lock().unwrap().clear();
    c.query("SELECT * FROM stripe_sync.refresh('customer', 'events')", &[]).expect("events refresh");
    let said: Vec<String> = notices.lock().unwrap().clone();
    assert!(said.iter().any(|n| n.starts_with("NOTICE") && n.contains("Core → Events: Read")), "{said:?}");
    let d = compare(&mut c, &fake, "stripe", "customer");
    assert!(d.is_empty(), "customer after an events refresh without Events: {}", d.summary());

    c.query("SELECT * FROM stripe_sync.refresh('all', 'incremental')", &[]).expect("incremental refresh");
    let failed = count(&mut c, "SELECT count(*) FROM stripe_sync.sync_status WHERE status <> 'succeeded'");
    assert_eq!(failed, 0);

    // webhooks need a write permission this key does not have: the hint says which
    let err = c.query_one("SELECT stripe_sync.create_webhook('https://example.com/hook')", &[]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42501", "{db:?}");
    assert!(db.hint().unwrap_or_default().contains("Webhook Endpoints: Write"), "{db:?}");
    assert!(!format!("{db:?}").contains("ReadOnlyDataToolKey"), "{db:?}");
}

#[test]
fn a_missing_resource_permission_fails_that_resource_and_not_the_run() {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let without_credit_notes: Vec<&str> = DATA_TOOL_READ.iter().copied().filter(|p| *p != "credit_note_read").collect();
    let fake = fake_with_key(SeedSpec::scaled(30), &without_credit_notes);
    add(&mut c, &fake, READ_ONLY_KEY, "default", "stripe").unwrap();

    let err = c.query("SELECT * FROM stripe_sync.refresh('all', 'full')", &[]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42501", "{db:?}");
    assert!(db.message().contains("credit_note") && db.message().contains("1 of 15"), "{db:?}");
    assert!(db.hint().unwrap_or_default().contains("Billing → Credit notes: Read"), "{db:?}");
    // the other 14 were refreshed and committed
    assert_all_equal(&mut c, &fake, "stripe", &["credit_note"], "a run where credit notes are refused");
    assert_eq!(count(&mut c, "SELECT count(*) FROM stripe.credit_note"), 0);
    let row = c
        .query_one("SELECT status, last_error FROM stripe_sync.sync_status WHERE resource = 'credit_note'", &[])
        .unwrap();
    let (status, error): (String, String) = (row.get(0), row.get(1));
    assert_eq!(status, "failed");
    assert!(error.contains("403") && error.contains("/v1/credit_notes"), "{error}");
    assert_eq!(count(&mut c, "SELECT count(*) FROM stripe_sync.sync_status WHERE status = 'succeeded'"), 14);

    // a single resource fails alone, with its own message
    let err = c.query("SELECT * FROM stripe_sync.refresh('credit_note', 'full')", &[]).unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");
    assert!(err.as_db_error().unwrap().message().starts_with("refresh of credit_note failed"), "{err:?}");

    // any other per-resource failure is contained the same way: a server without disputes
    let mut faults = fake.faults();
    faults.unsupported_paths = vec!["/v1/disputes".into()];
    fake.set_faults(faults);
    let err = c.query("SELECT * FROM stripe_sync.refresh('all', 'full')", &[]).unwrap_err();
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("2 of 15") && msg.contains("credit_note: ") && msg.contains("dispute: "), "{msg}");
    assert!(msg.contains("400"), "{msg}");
    assert_all_equal(&mut c, &fake, "stripe", &["credit_note", "dispute"], "a run with two failing resources");

    // a scheduled job shows the failure in pg_cron's run details
    c.batch_execute("CREATE EXTENSION pg_cron").unwrap();
    c.execute(
        "SELECT cron.schedule('stripe-all', '* * * * *', $$SELECT * FROM stripe_sync.refresh('all', 'full')$$)",
        &[],
    )
    .unwrap();
    let message = wait_for(Duration::from_secs(130), "a failed pg_cron run", || {
        c.query_opt("SELECT return_message FROM cron.job_run_details WHERE status = 'failed' LIMIT 1", &[])
            .unwrap()
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
    });
    c.execute("SELECT cron.unschedule('stripe-all')", &[]).unwrap();
    assert!(message.contains("credit_note") && message.contains("dispute"), "{message}");
}

#[test]
fn a_server_without_the_events_endpoint_still_refreshes_fully() {
    let cluster = Cluster::start(ClusterConfig::default());
    cluster.connect_with_extension();
    let (mut c, notices) = connect_collecting_notices(&cluster);
    let faults = Faults { unsupported_paths: vec!["/v1/events".into()], ..Faults::default() };
    let fake = start_fake(Some(SeedSpec::scaled(20)), faults);
    add(&mut c, &fake, e2e::TEST_KEY, "default", "stripe").unwrap();
    c.query("SELECT * FROM stripe_sync.refresh('all', 'full')", &[]).expect("full refresh without /v1/events");
    assert_all_equal(&mut c, &fake, "stripe", &[], "refresh('all', 'full') without /v1/events");
    mutate(&fake, 1);
    c.query("SELECT * FROM stripe_sync.refresh('invoice', 'events')", &[]).expect("events refresh");
    let d = compare(&mut c, &fake, "stripe", "invoice");
    assert!(d.is_empty(), "invoice: {}", d.summary());
    let said = notices.lock().unwrap().clone();
    assert!(said.iter().any(|n| n.contains("Unrecognized request URL")), "{said:?}");
}

#[test]
fn two_sources_never_touch_each_others_tables() {
    let cluster = Cluster::start(ClusterConfig::default());
    cluster.connect_with_extension();
    let (mut c, notices) = connect_collecting_notices(&cluster);
    let fake_a = start_fake(Some(SeedSpec { seed: 1, ..SeedSpec::scaled(25) }), Faults::default());
    let fake_b = start_fake(Some(SeedSpec { seed: 2, ..SeedSpec::scaled(15) }), Faults::default());
    let key = e2e::TEST_KEY;
    add(&mut c, &fake_a, key, "default", "stripe").unwrap();
    let state = |c: &mut postgres::Client| {
        (
            count(c, "SELECT count(*) FROM stripe_sync.sources"),
            count(c, "SELECT count(*) FROM pg_foreign_server"),
            count(c, "SELECT count(*) FROM pg_namespace"),
            count(c, "SELECT count(*) FROM pg_class"),
        )
    };
    let before = state(&mut c);
    notices.lock().unwrap().clear();

    // the default schema again: refused, naming the other source; nothing made, nothing said
    let err = add(&mut c, &fake_b, key, "b", "stripe").unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42710", "{db:?}");
    assert!(db.message().contains("source \"default\""), "{db:?}");
    let hint = db.hint().unwrap_or_default();
    assert!(hint.contains("schema =>") && hint.contains("table_prefix =>"), "{hint}");
    // a prefix whose table names land on the other source's (customer_ + balance_transaction)
    let err = c
        .execute(
            "SELECT stripe_sync.add_source($1, name => 'c', table_prefix => 'customer_', api_url => $2)",
            &[&key, &fake_b.url()],
        )
        .unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("customer_balance_transaction"), "{err:?}");
    // tables stripe_sync did not create are never adopted
    c.batch_execute("CREATE SCHEMA mine; CREATE TABLE mine.customer (id text PRIMARY KEY)").unwrap();
    let before_mine = state(&mut c);
    let err = add(&mut c, &fake_b, key, "m", "mine").unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42P07", "{db:?}");
    assert!(db.message().contains("\"mine\".\"customer\""), "{db:?}");
    assert_eq!(state(&mut c), before_mine);
    assert_eq!(notices.lock().unwrap().clone(), Vec::<String>::new(), "a refused add_source says nothing");
    c.batch_execute("DROP TABLE mine.customer; DROP SCHEMA mine").unwrap();
    assert_eq!(state(&mut c), before);

    // each source in its own schema: both refresh fully, each equal to its own account
    add(&mut c, &fake_b, key, "b", "b").unwrap();
    c.query("SELECT * FROM stripe_sync.refresh('all', 'full')", &[]).unwrap();
    c.query("SELECT * FROM stripe_sync.refresh('all', 'full', source => 'b')", &[]).unwrap();
    assert_all_equal(&mut c, &fake_a, "stripe", &[], "both sources refreshed");
    assert_all_equal(&mut c, &fake_b, "b", &[], "both sources refreshed");
    mutate(&fake_b, 1);
    c.query("SELECT * FROM stripe_sync.refresh('all', 'full', source => 'b')", &[]).unwrap();
    c.query("SELECT * FROM stripe_sync.refresh('all', 'events')", &[]).unwrap();
    assert_all_equal(&mut c, &fake_a, "stripe", &[], "b changed and refreshed");
    assert_all_equal(&mut c, &fake_b, "b", &[], "b changed and refreshed");

    // b has webhook state too: a secret, an inbox row, counters
    let secret = "whsec_sourcebsecret0000000000";
    c.query_one("SELECT stripe_sync.set_webhook_secret($1, 'b')", &[&secret]).unwrap();
    let cus = id(&fake_b.objects("customers")[0]);
    let body = format!(
        r#"{{"id":"evt_b1","object":"event","api_version":"2026-06-24.dahlia","created":{},"type":"customer.updated","data":{{"object":{{"id":"{cus}","object":"customer","name":"B"}}}}}}"#,
        signature::unix_now()
    );
    let sig = signature::header_for(body.as_bytes(), secret, signature::unix_now());
    let stored: String = c.query_one("SELECT stripe_sync.receive_webhook($1, $2, 'b')", &[&body, &sig]).unwrap().get(0);
    assert_eq!(stored, "stored");
    assert_eq!(count(&mut c, "SELECT count(*) FROM stripe_sync._inbox WHERE source = 'b'"), 1);

    // dropping b leaves nothing of b and everything of default
    let default_state = count(&mut c, "SELECT count(*) FROM stripe_sync._sync_state WHERE source = 'default'");
    c.query_one("SELECT stripe_sync.drop_source('b')", &[]).unwrap();
    for table in ["_inbox", "_sync_state", "_webhooks", "_webhook_stats", "_deleted"] {
        let n = count(&mut c, &format!("SELECT count(*) FROM stripe_sync.{table} WHERE source = 'b'"));
        assert_eq!(n, 0, "{table} keeps rows of the dropped source");
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM pg_foreign_server WHERE srvname = 'stripe_sync_b'"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM pg_user_mappings WHERE srvname = 'stripe_sync_b'"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM pg_namespace WHERE nspname = 'b_api'"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM stripe_sync._sync_state WHERE source = 'default'"), default_state);
    assert_eq!(count(&mut c, "SELECT count(*) FROM pg_user_mappings WHERE srvname = 'stripe_sync_default'"), 1);
    assert_all_equal(&mut c, &fake_a, "stripe", &[], "b was dropped");
    let live: i64 = c.query_one("SELECT count(*) FROM stripe_api.customer", &[]).unwrap().get(0);
    assert_eq!(live as usize, fake_a.objects("customers").len());
    // b's materialized tables are kept, and so cannot be adopted by a new source
    let err = add(&mut c, &fake_b, key, "b2", "b").unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P07", "{err:?}");
}

/// A connected account's call at the fake that must succeed.
fn call_as(fake: &Fake, account: &str, method: &str, path: &str, body: &str) -> serde_json::Value {
    let (status, v) = fake.call_as(account, method, path, body);
    assert_eq!(status, 200, "{account} {method} {path} {body}: {v}");
    v
}

fn assert_account_equal(c: &mut postgres::Client, fake: &Fake, account: Option<&str>, schema: &str, when: &str) {
    for r in RESOURCES {
        let d = compare_account(c, fake, account, schema, r.name);
        assert!(d.is_empty(), "{schema}.{} ({account:?}) after {when}: {} {d:?}", r.name, d.summary());
    }
}

#[test]
fn a_source_per_connected_account_reads_and_follows_only_that_account() {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let fake = start_fake(Some(SeedSpec { connected: vec![20, 8], ..SeedSpec::scaled(15) }), Faults::default());
    let with_data: Vec<String> =
        fake.connected_accounts().into_iter().filter(|a| !fake.objects_of(a, "customers").is_empty()).collect();
    assert_eq!(with_data.len(), 2);
    let (a, b) = (&with_data[0], &with_data[1]);
    let key = e2e::TEST_KEY;
    add(&mut c, &fake, key, "default", "stripe").unwrap();
    for (name, acct) in [("a", a), ("b", b)] {
        c.execute(
            "SELECT stripe_sync.add_source($1, name => $2, schema => $2, account => $3, api_url => $4, max_requests_per_second => 1000)",
            &[&key, &name, acct, &fake.url()],
        )
        .unwrap();
    }
    for source in ["default", "a", "b"] {
        c.query("SELECT * FROM stripe_sync.refresh('all', 'full', source => $1)", &[&source]).unwrap();
    }
    assert_account_equal(&mut c, &fake, None, "stripe", "full refreshes");
    assert_account_equal(&mut c, &fake, Some(a), "a", "full refreshes");
    assert_account_equal(&mut c, &fake, Some(b), "b", "full refreshes");
    let live: i64 = c.query_one("SELECT count(*) FROM a_api.customer", &[]).unwrap().get(0);
    assert_eq!(live as usize, fake.objects_of(a, "customers").len(), "a's foreign table reads a's customers");

    // a changes: created, renamed, deleted; the events refresh of a follows a only
    let customers = fake.objects_of(a, "customers");
    call_as(&fake, a, "POST", "/v1/customers", "name=New+in+a");
    call_as(&fake, a, "POST", &format!("/v1/customers/{}", id(&customers[0])), "name=Renamed+in+a");
    call_as(&fake, a, "DELETE", &format!("/v1/customers/{}", id(&customers[1])), "");
    mutate(&fake, 1); // and the platform changes too
    let res: Vec<(String, String)> = c
        .query("SELECT resource, mode FROM stripe_sync.refresh('all', 'events', source => 'a')", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(res.iter().any(|(r, m)| r == "customer" && m == "events"), "{res:?}");
    assert_account_equal(&mut c, &fake, Some(a), "a", "a changed, events refresh of a");
    assert_account_equal(&mut c, &fake, Some(b), "b", "a changed, events refresh of a");
    c.query("SELECT * FROM stripe_sync.refresh('all', 'events')", &[]).unwrap();
    assert_account_equal(&mut c, &fake, None, "stripe", "the platform changed, events refresh of default");

    // a revokes the platform's access: a's refresh fails with Stripe's reason and
    // keeps a's rows; the platform's and b's refreshes go on
    assert!(fake.deauthorize(a));
    let before: i64 = c.query_one("SELECT count(*) FROM a.customer", &[]).unwrap().get(0);
    let err = c.query("SELECT * FROM stripe_sync.refresh('customer', 'full', source => 'a')", &[]).unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("does not have access to account"), "{text}");
    assert!(!text.contains(key), "the key is never shown: {text}");
    let after: i64 = c.query_one("SELECT count(*) FROM a.customer", &[]).unwrap().get(0);
    assert_eq!(before, after, "a failed refresh changes nothing");
    let failed: Option<String> = c
        .query_one("SELECT last_error FROM stripe_sync.sync_status WHERE source = 'a' AND resource = 'customer'", &[])
        .unwrap()
        .get(0);
    assert!(failed.unwrap_or_default().contains("does not have access to account"), "sync_status shows why");
    call_as(&fake, b, "POST", "/v1/customers", "name=New+in+b");
    c.query("SELECT * FROM stripe_sync.refresh('all', 'events', source => 'b')", &[]).unwrap();
    assert_account_equal(&mut c, &fake, Some(b), "b", "a deauthorized, events refresh of b");
    c.query("SELECT * FROM stripe_sync.refresh('all', 'full')", &[]).unwrap();
    assert_account_equal(&mut c, &fake, None, "stripe", "a deauthorized, full refresh of default");
}
