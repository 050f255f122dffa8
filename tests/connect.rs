//! Stripe Connect: one source covering a platform and every connected account
//! (`add_source(..., connected_accounts => true)`), in one set of tables keyed
//! by `(id, account)`.

use e2e::{
    Cluster, ClusterConfig, Fake, Faults, SeedSpec, TEST_KEY, compare_connect, connect_collecting_notices, id,
    start_fake, wait_for,
};
use std::time::{Duration, Instant};
use stripe_core::resources::RESOURCES;
use stripe_fake::connect::PLATFORM_ID;

/// The resource whose rows are the platform's connected accounts (the
/// platform's only).
const ACCOUNTS: &str = "account";

/// A platform with 50 connected accounts: 3 with thousands of objects
/// (`SeedSpec::scaled(200)`: about 2,500 each), the rest tiny (1 to 3 customers).
fn platform(faults: Faults) -> Fake {
    let mut seed = SeedSpec::scaled(10);
    seed.accounts = 0;
    seed.connected = (0..50).map(|i| if i < 3 { 200 } else { 1 + i % 3 }).collect();
    start_fake(Some(seed), faults)
}

fn add_connect_source(c: &mut postgres::Client, fake: &Fake, rps: f64) {
    c.execute(
        "SELECT stripe_sync.add_source($1, api_url => $2, max_requests_per_second => $3, connected_accounts => true)",
        &[&TEST_KEY, &fake.url(), &rps],
    )
    .expect("add a Connect source");
}

/// Every table equals the fake, account by account: the platform's rows carry
/// its own id; each connected account's rows carry the account's.
fn assert_equal_per_account(c: &mut postgres::Client, fake: &Fake, skip: &[String], when: &str) {
    for r in RESOURCES {
        let d = compare_connect(c, fake, None, PLATFORM_ID, "stripe", r.name);
        assert!(d.is_empty(), "platform {} after {when}: {}", r.name, d.summary());
    }
    for a in fake.connected_accounts().iter().filter(|a| !skip.contains(a)) {
        for r in RESOURCES.iter().filter(|r| r.name != ACCOUNTS) {
            let d = compare_connect(c, fake, Some(a), a, "stripe", r.name);
            assert!(d.is_empty(), "{a} {} after {when}: {}", r.name, d.summary());
        }
    }
}

/// Changes objects in a connected account the way its owner does: a customer
/// renamed, one created, one deleted (with its payment methods), a product
/// renamed.
fn mutate_account(fake: &Fake, account: &str, round: u32) {
    let ok = |(status, v): (u16, serde_json::Value)| {
        assert_eq!(status, 200, "{account}: {v}");
        v
    };
    let customers = fake.objects_of(account, "customers");
    let first = id(&customers[0]);
    ok(fake.call_as(account, "POST", &format!("/v1/customers/{first}"), &format!("name=Renamed{round}")));
    ok(fake.call_as(account, "POST", "/v1/customers", &format!("email=new{round}@example.com")));
    if customers.len() > 1 {
        let last = id(&customers[customers.len() - 1]);
        ok(fake.call_as(account, "DELETE", &format!("/v1/customers/{last}"), ""));
    }
    if let Some(p) = fake.objects_of(account, "products").first() {
        ok(fake.call_as(account, "POST", &format!("/v1/products/{}", id(p)), &format!("name=Product{round}")));
    }
}

/// The README's row-level-security recipe, run as written.
const RLS_RECIPE: &str = "
DO $$
DECLARE t regclass;
BEGIN
  FOR t IN SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'stripe' AND c.relkind = 'r' LOOP
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON %s FOR SELECT
                    USING (account = current_setting(''app.stripe_account'', true))', t);
  END LOOP;
END $$;";

/// A tenant role that sets `app.stripe_account` sees that account's rows only,
/// in all 15 tables; without the setting it sees none. The writers (the table
/// owner) are not held back: a refresh still writes every account.
fn tenant_isolation(cluster: &Cluster, c: &mut postgres::Client, connected: &[String]) {
    c.batch_execute(RLS_RECIPE).expect("the RLS recipe");
    c.batch_execute("CREATE ROLE tenant_app LOGIN IN ROLE stripe_sync_reader").unwrap();
    let mut t = cluster.connect_as("tenant_app");
    for a in [&connected[0], &connected[7], &PLATFORM_ID.to_string()] {
        t.batch_execute(&format!("SET app.stripe_account = '{a}'")).unwrap();
        for r in RESOURCES {
            let table = format!("stripe.{}", r.name);
            let theirs = count(c, &format!("SELECT count(*) FROM {table} WHERE account = '{a}'"));
            let seen = count(&mut t, &format!("SELECT count(*) FROM {table}"));
            let others = count(&mut t, &format!("SELECT count(*) FROM {table} WHERE account <> '{a}'"));
            assert_eq!((seen, others), (theirs, 0), "{table} as tenant {a}");
        }
    }
    t.batch_execute("RESET app.stripe_account").unwrap();
    for r in RESOURCES {
        assert_eq!(count(&mut t, &format!("SELECT count(*) FROM stripe.{}", r.name)), 0, "{} without a tenant", r.name);
    }
    let before = count(c, &format!("SELECT count(*) FROM stripe.customer WHERE account = '{}'", connected[3]));
    c.batch_execute(&format!("SELECT * FROM stripe_sync.refresh('customer', 'full', account => '{}')", connected[3]))
        .unwrap();
    assert_eq!(count(c, &format!("SELECT count(*) FROM stripe.customer WHERE account = '{}'", connected[3])), before);
}

fn count(c: &mut postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

#[test]
fn a_connect_source_keeps_the_platform_and_50_connected_accounts_in_one_set_of_tables() {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let fake = platform(Faults::default());
    add_connect_source(&mut c, &fake, 1000.0);
    let connected = fake.connected_accounts();
    assert_eq!(connected.len(), 50);

    let t = Instant::now();
    let requests: i64 = count(&mut c, "SELECT sum(api_requests)::bigint FROM stripe_sync.refresh('all', 'full')");
    println!("refresh('all', 'full') of the platform and 50 accounts: {requests} requests, {:.1?}", t.elapsed());
    assert_equal_per_account(&mut c, &fake, &[], "refresh('all', 'full')");
    // the source learned its own id; every row carries an account
    let own: String = c.query_one("SELECT account_id FROM stripe_sync.sources", &[]).unwrap().get(0);
    assert_eq!(own, PLATFORM_ID);
    for r in RESOURCES {
        let blank =
            count(&mut c, &format!("SELECT count(*) FROM stripe.{} WHERE account IS NULL OR account = ''", r.name));
        assert_eq!(blank, 0, "{}", r.name);
    }
    // sync_status: a row per account and resource (connected accounts have no
    // account table of their own), each succeeded
    let rows = count(&mut c, "SELECT count(*) FROM stripe_sync.sync_status WHERE status = 'succeeded'");
    assert_eq!(rows, 15 + 14 * 50);
    let accounts = count(&mut c, "SELECT count(DISTINCT account) FROM stripe_sync.sync_status");
    assert_eq!(accounts, 51);

    tenant_isolation(&cluster, &mut c, &connected);

    // one account alone
    let small = &connected[10];
    let n =
        count(&mut c, &format!("SELECT count(*) FROM stripe_sync.refresh('customer', 'full', account => '{small}')"));
    assert_eq!(n, 1);
    let err = c.query("SELECT * FROM stripe_sync.refresh('customer', 'full', account => 'cus_nope')", &[]).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "22023", "{err:?}");

    // changes in 10 accounts (the three large ones among them), then an events refresh
    for (i, a) in connected.iter().step_by(5).enumerate() {
        mutate_account(&fake, a, i as u32);
    }
    mutate_account(&fake, &connected[1], 90);
    let t = Instant::now();
    let requests: i64 = count(&mut c, "SELECT sum(api_requests)::bigint FROM stripe_sync.refresh('all', 'events')");
    println!("refresh('all', 'events') after changes in 11 accounts: {requests} requests, {:.1?}", t.elapsed());
    assert_equal_per_account(&mut c, &fake, &[], "changes in 11 accounts and refresh('all', 'events')");
}

#[test]
fn a_connected_account_that_revokes_access_mid_run_is_reported_and_the_others_complete() {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let fake = platform(Faults::default());
    add_connect_source(&mut c, &fake, 1000.0);
    c.batch_execute("SELECT * FROM stripe_sync.refresh('all', 'full')").unwrap();
    // the account the run reaches last: /v1/accounts lists newest first
    let (_, listed) = fake.call("GET", "/v1/accounts?limit=100", "");
    let order: Vec<String> =
        listed["data"].as_array().unwrap().iter().map(id).filter(|a| fake.connected_accounts().contains(a)).collect();
    let last = order.last().unwrap().clone();

    // 20 requests/s (a test key's default): the accounts of a resource, read at
    // once, wait seconds for their turns, the last one listed longest
    c.batch_execute("ALTER SERVER stripe_sync_default OPTIONS (SET max_requests_per_second '20')").unwrap();
    let (mut runner, notices) = connect_collecting_notices(&cluster);
    let run = std::thread::spawn(move || {
        runner.query("SELECT * FROM stripe_sync.refresh('balance_transaction', 'full')", &[]).map(|r| r.len())
    });
    wait_for(Duration::from_secs(60), "the run under way", || {
        let n = count(
            &mut c,
            "SELECT count(*) FROM stripe_sync.sync_status WHERE resource = 'balance_transaction' AND status = 'running'",
        );
        (n > 0).then_some(())
    });
    assert!(fake.deauthorize(&last));
    let rows = run.join().unwrap().expect("the run succeeds for the other accounts");
    assert_eq!(rows, 1);
    let row = c
        .query_one(
            "SELECT status, last_error FROM stripe_sync.sync_status WHERE account = $1 AND resource = 'balance_transaction'",
            &[&last],
        )
        .unwrap();
    let (status, error): (String, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(status, "revoked", "{error:?}");
    assert!(error.unwrap_or_default().contains("account_invalid"));
    let said = notices.lock().unwrap().join("\n");
    assert!(said.contains(&last), "a NOTICE names the account: {said}");
    // every other account of every resource succeeded, and equals the fake
    let bad = count(
        &mut c,
        &format!("SELECT count(*) FROM stripe_sync.sync_status WHERE status <> 'succeeded' AND account <> '{last}'"),
    );
    assert_eq!(bad, 0);
    // the platform's account table was read before the deauthorization: the
    // next run no longer lists the account
    c.batch_execute("SELECT * FROM stripe_sync.refresh('account', 'full')").unwrap();
    assert_equal_per_account(&mut c, &fake, std::slice::from_ref(&last), "a deauthorization mid-run");
}

#[test]
fn webhooks_of_a_connect_source_come_through_two_endpoints_and_land_in_their_accounts_rows() {
    let (cluster, port) = e2e::chaos::listening_cluster();
    let mut c = cluster.connect_with_extension();
    let faults = Faults { webhook_shuffle_ms: 300, webhook_duplicate_rate: 0.3, ..Faults::default() };
    let fake = platform(faults);
    add_connect_source(&mut c, &fake, 1000.0);
    c.batch_execute("SELECT * FROM stripe_sync.refresh('all', 'full')").unwrap();
    let url = format!("http://127.0.0.1:{port}/webhook/default");
    c.query_one("SELECT stripe_sync.create_webhook($1)", &[&url]).unwrap();
    // two endpoints of the platform at the same URL: its own, and the Connect one
    let endpoints = fake.objects("webhook_endpoints");
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    assert_eq!(endpoints.iter().filter(|e| e["_connect"] == true).count(), 1);
    let status: serde_json::Value = c.query_one("SELECT stripe_sync.webhook_status()::json", &[]).unwrap().get(0);
    assert!(status["connect_endpoint_id"].is_string(), "{status}");
    assert_eq!(status["secrets"], 2, "{status}");
    assert_eq!(status["connect_stripe_status"], "enabled", "{status}");
    // calling it again reuses both
    c.query_one("SELECT stripe_sync.create_webhook($1)", &[&url]).unwrap();
    assert_eq!(fake.objects("webhook_endpoints").len(), 2);
    std::thread::sleep(Duration::from_millis(1500));

    // changes in 10 connected accounts and in the platform, delivered shuffled and duplicated
    let connected = fake.connected_accounts();
    for (i, a) in connected.iter().step_by(5).enumerate() {
        mutate_account(&fake, a, 100 + i as u32);
    }
    let first = id(&fake.objects("customers")[0]);
    e2e::call(&fake, "POST", &format!("/v1/customers/{first}"), "name=Platform+change");
    // an account.updated of a connected account (delivered with its account set)
    // changes the platform's row of it
    e2e::call(&fake, "POST", &format!("/v1/accounts/{}", connected[2]), "email=changed%40example.com");
    let mut h = e2e::chaos::Hooked { cluster, c, fake, port };
    h.settle(Duration::from_secs(60));
    assert_equal_per_account(&mut h.c, &h.fake, &[], "webhooks of 10 connected accounts and the platform");
    let status: serde_json::Value = h.c.query_one("SELECT stripe_sync.webhook_status()::json", &[]).unwrap().get(0);
    assert_eq!(status["failed"], 0, "{status}");
    assert!(status["duplicates"].as_i64().unwrap() > 0, "deliveries were duplicated: {status}");
    // the rows were written by the worker from the events, not by a refresh
    let by_events = count(
        &mut h.c,
        &format!(
            "SELECT count(*) FROM stripe.customer WHERE account = '{}' AND _synced_by LIKE 'event:%'",
            connected[0]
        ),
    );
    assert!(by_events > 0);
    let email: Option<String> = h
        .c
        .query_one("SELECT email FROM stripe.account WHERE id = $1 AND account = $2", &[&connected[2], &PLATFORM_ID])
        .unwrap()
        .get(0);
    assert_eq!(email.as_deref(), Some("changed@example.com"));

    // access granted and revoked, heard through the Connect endpoint: a new
    // account's row comes (fetched: the event carries the application), and the
    // revoked account's row goes; sync_status says so before any refresh
    let new = id(&e2e::call(&h.fake, "POST", "/v1/accounts", "email=new%40example.com"));
    let gone = connected[4].clone();
    assert!(h.fake.deauthorize(&gone));
    h.settle(Duration::from_secs(60));
    assert_equal_per_account(&mut h.c, &h.fake, &[], "an account connected and one revoked, by webhooks");
    let state = |c: &mut postgres::Client, a: &str| -> Vec<(String, String, Option<String>, Option<String>)> {
        c.query(
            "SELECT resource, status, note, last_error FROM stripe_sync.sync_status WHERE account = $1 ORDER BY 1",
            &[&a],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
    };
    let revoked = state(&mut h.c, &gone);
    assert_eq!(revoked.len(), RESOURCES.len() - 1, "one row per resource but the platform's account list: {revoked:?}");
    for (r, status, _, error) in &revoked {
        assert_eq!(status, "revoked", "{gone} {r}");
        assert!(error.as_deref().is_some_and(|e| e.contains("account.application.deauthorized")), "{r}: {error:?}");
    }
    let fresh = state(&mut h.c, &new);
    assert_eq!(fresh.len(), RESOURCES.len() - 1, "{fresh:?}");
    for (r, status, note, _) in &fresh {
        assert_eq!(status, "connected", "{new} {r}");
        assert!(note.as_deref().is_some_and(|n| n.contains("account.application.authorized")), "{r}: {note:?}");
    }
    let status: serde_json::Value = h.c.query_one("SELECT stripe_sync.webhook_status()::json", &[]).unwrap().get(0);
    assert_eq!(status["failed"], 0, "{status}");
    // the next refresh covers the new account and skips the revoked one, which stays revoked
    assert_eq!(h.fake.call_as(&new, "POST", "/v1/customers", "email=theirs%40example.com").0, 200);
    h.settle(Duration::from_secs(60));
    h.c.batch_execute("SELECT * FROM stripe_sync.refresh('customer', 'events')")
        .expect("no error for the revoked account");
    assert_eq!(count(&mut h.c, &format!("SELECT count(*) FROM stripe.customer WHERE account = '{new}'")), 1);
    assert!(state(&mut h.c, &new).iter().any(|(r, s, _, _)| r == "customer" && s == "succeeded"));
    assert!(state(&mut h.c, &gone).iter().all(|(_, s, _, _)| s == "revoked"));

    // offboarding: the revoked account's rows, state and tombstones go; nothing of anyone else
    let kept: i64 = RESOURCES
        .iter()
        .map(|r| count(&mut h.c, &format!("SELECT count(*) FROM stripe.{} WHERE account = '{gone}'", r.name)))
        .sum();
    assert!(kept > 0, "a revoked account's rows are kept until forgotten");
    let others = |c: &mut postgres::Client| -> i64 {
        RESOURCES
            .iter()
            .map(|r| count(c, &format!("SELECT count(*) FROM stripe.{} WHERE account <> '{gone}'", r.name)))
            .sum()
    };
    let before = others(&mut h.c);
    let removed = count(&mut h.c, &format!("SELECT stripe_sync.forget_account('{gone}')"));
    assert_eq!(removed, kept);
    assert_eq!(others(&mut h.c), before, "no row of another account goes");
    for r in RESOURCES {
        assert_eq!(count(&mut h.c, &format!("SELECT count(*) FROM stripe.{} WHERE account = '{gone}'", r.name)), 0);
    }
    assert!(state(&mut h.c, &gone).is_empty());
    let tombstones = count(&mut h.c, &format!("SELECT count(*) FROM stripe_sync._deleted WHERE account = '{gone}'"));
    assert_eq!(tombstones, 0);
    assert_equal_per_account(&mut h.c, &h.fake, &[], "forget_account of a revoked account");
    // bad input changes nothing: no account id, the platform's own account
    for bad in ["cus_123", PLATFORM_ID] {
        let err = h.c.query_one("SELECT stripe_sync.forget_account($1)", &[&bad]).unwrap_err();
        let db = err.as_db_error().unwrap();
        assert_eq!(db.code().code(), "22023", "{bad}: {err:?}");
        assert!(db.hint().is_some(), "{bad}: a hint");
    }
    assert_eq!(others(&mut h.c), before);
    // an account still connected: forgotten, and a NOTICE says the next refresh brings it back
    let (mut n, notices) = connect_collecting_notices(&h.cluster);
    let still = &connected[1];
    n.query_one("SELECT stripe_sync.forget_account($1)", &[still]).unwrap();
    let said = notices.lock().unwrap().join("\n");
    assert!(said.contains("next refresh brings its rows back"), "{said}");
    n.batch_execute(&format!("SELECT * FROM stripe_sync.refresh('all', 'full', account => '{still}')")).unwrap();
    // the platform's list of accounts is the platform's: a connected account has none
    let err = n.query(&format!("SELECT * FROM stripe_sync.refresh('account', 'full', account => '{still}')"), &[]);
    assert_eq!(err.unwrap_err().as_db_error().unwrap().code().code(), "22023");
    assert!(state(&mut h.c, still).iter().all(|(r, s, _, _)| r != ACCOUNTS && s == "succeeded"));
    assert_equal_per_account(&mut h.c, &h.fake, &[], "a forgotten account still connected, refreshed again");

    // dropping the source deletes both endpoints at Stripe
    h.c.batch_execute("SELECT stripe_sync.drop_source('default')").unwrap();
    assert_eq!(h.fake.objects("webhook_endpoints").len(), 0);
}

#[test]
fn a_read_only_restricted_key_without_events_refreshes_every_account_of_a_platform() {
    const KEY: &str = "rk_test_51ConnectReadOnly000000000";
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let mut faults = Faults::default();
    let perms = stripe_fake::permissions::DATA_TOOL_READ.iter().map(|p| p.to_string()).collect();
    faults.restricted_keys.insert(KEY.into(), perms);
    let fake = platform(faults);
    c.execute(
        "SELECT stripe_sync.add_source($1, api_url => $2, max_requests_per_second => 1000, connected_accounts => true)",
        &[&KEY, &fake.url()],
    )
    .unwrap();
    // accounts read ahead go on without /v1/events, in both modes
    for mode in ["full", "events"] {
        c.batch_execute(&format!("SELECT * FROM stripe_sync.refresh('customer', '{mode}')")).unwrap();
        let ok = count(&mut c, "SELECT count(*) FROM stripe_sync.sync_status WHERE status = 'succeeded'");
        assert_eq!(ok, 51, "{mode}");
    }
    let note: String = c
        .query_one("SELECT note FROM stripe_sync.sync_status WHERE account = $1", &[&fake.connected_accounts()[0]])
        .unwrap()
        .get(0);
    assert!(note.contains("Events: Read"), "{note}");
    for a in fake.connected_accounts() {
        let d = compare_connect(&mut c, &fake, Some(&a), &a, "stripe", "customer");
        assert!(d.is_empty(), "{a}: {}", d.summary());
    }
}
