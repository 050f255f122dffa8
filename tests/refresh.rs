//! Materialized tables and `stripe_sync.refresh` against the fake Stripe.

use e2e::{
    Cluster, ClusterConfig, Fake, Faults, SeedSpec, TEST_KEY, add_source, call, compare, id, mutate, start_fake,
};
use std::time::{Duration, Instant};
use stripe_core::resources::RESOURCES;

/// The tests of this file run one at a time: the speed test compares a parallel
/// and a sequential pass by wall-clock time, which a neighbour's CPU load would skew.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn setup(seed: SeedSpec, faults: Faults) -> (Cluster, postgres::Client, Fake) {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let fake = start_fake(Some(seed), faults);
    add_source(&mut c, &fake, "default", TEST_KEY);
    (cluster, c, fake)
}

fn refresh(c: &mut postgres::Client, resource: &str, mode: &str) -> (i64, i64, i64, i64) {
    let row = c
        .query_one(
            "SELECT rows_inserted, rows_updated, rows_deleted, api_requests FROM stripe_sync.refresh($1, $2)",
            &[&resource, &mode],
        )
        .unwrap_or_else(|e| panic!("refresh({resource}, {mode}): {e:?}"));
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

fn assert_equal(c: &mut postgres::Client, fake: &Fake, resource: &str, when: &str) {
    let d = compare(c, fake, "stripe", resource);
    if !d.is_empty() {
        // what the table knows of the rows that differ, for the failure message
        let ids: Vec<String> = d.extra.iter().chain(&d.stale).cloned().collect();
        let rows: Vec<String> = c
            .query(
                &format!(
                    "SELECT id || ' stamp ' || _stamp || ' by ' || _synced_by FROM stripe.{resource} WHERE id = ANY($1)"
                ),
                &[&ids],
            )
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        panic!(
            "{resource} after {when}: {} {d:?}; rows: {rows:?}; now {}",
            d.summary(),
            stripe_core::signature::unix_now()
        );
    }
}

#[test]
fn every_resource_follows_the_fake_in_full_incremental_and_events_modes() {
    let _serial = serial();
    let (_cluster, mut c, fake) = setup(SeedSpec::scaled(40), Faults::default());
    let rows = c.query("SELECT resource, rows_inserted FROM stripe_sync.refresh('all', 'full')", &[]).unwrap();
    assert_eq!(rows.len(), 15);
    for r in RESOURCES {
        assert_equal(&mut c, &fake, r.name, "the first full refresh");
    }
    // an events refresh now has a cursor and nothing to do
    for r in RESOURCES {
        refresh(&mut c, r.name, "events");
    }

    mutate(&fake, 1);

    // incremental: exactly the new objects; updated and deleted ones stay stale (documented)
    let before: i64 = c.query_one("SELECT count(*) FROM stripe.customer", &[]).unwrap().get(0);
    let (ins, upd, del, _) = refresh(&mut c, "customer", "incremental");
    assert_eq!((ins, upd, del), (1, 0, 0), "one new customer");
    let after: i64 = c.query_one("SELECT count(*) FROM stripe.customer", &[]).unwrap().get(0);
    assert_eq!(after, before + 1);
    let d = compare(&mut c, &fake, "stripe", "customer");
    // the deleted customer is still there; the renamed one and the one whose balance changed are stale
    assert_eq!((d.missing.len(), d.extra.len(), d.stale.len()), (0, 1, 2), "{d:?}");
    for r in RESOURCES {
        refresh(&mut c, r.name, "incremental");
    }

    // events: every table equals the fake again
    for r in RESOURCES {
        refresh(&mut c, r.name, "events");
        assert_equal(&mut c, &fake, r.name, "an events refresh");
    }

    mutate(&fake, 2);
    // full: equal again, deletions included
    for r in RESOURCES {
        refresh(&mut c, r.name, "full");
        assert_equal(&mut c, &fake, r.name, "a full refresh");
    }
    // a second full refresh of unchanged data writes nothing
    let (ins, upd, del, _) = refresh(&mut c, "invoice", "full");
    assert_eq!((ins, upd, del), (0, 0, 0));
    let notes: i64 =
        c.query_one("SELECT count(*) FROM stripe_sync.sync_status WHERE status <> 'succeeded'", &[]).unwrap().get(0);
    assert_eq!(notes, 0);
}

/// A small account (every resource under a page) costs few requests per
/// resource: one page per list variant, and one `/v1/events` request for the
/// events cursor where events cover the resource; no probes. Per-customer
/// resources list each customer's objects (one request per customer).
#[test]
fn a_full_refresh_of_a_small_account_costs_a_page_per_list_variant_and_an_events_cursor() {
    let _serial = serial();
    let (_cluster, mut c, fake) = setup(SeedSpec::scaled(20), Faults::default());
    let mut total = 0;
    for r in RESOURCES {
        let (_, _, _, requests) = refresh(&mut c, r.name, "full");
        assert_equal(&mut c, &fake, r.name, "a full refresh of a small account");
        total += requests;
        let pages = r.list_variants.len().max(1) as i64;
        let expected = pages + i64::from(r.events_complete);
        println!("full refresh of {:<28} {requests:>3} requests (expected {expected})", r.name);
        if r.scope == stripe_core::resources::Scope::Account {
            assert!(requests <= expected, "{}: {requests} requests, expected at most {expected}", r.name);
        }
    }
    println!("full refresh of all 15 resources of a 20-customer account: {total} requests");
}

#[test]
fn an_invoice_with_35_line_items_has_all_of_them() {
    let _serial = serial();
    let (_cluster, mut c, fake) = setup(SeedSpec::scaled(5), Faults::default());
    let cus = id(&fake.objects("customers")[0]);
    let inv = call(&fake, "POST", "/v1/invoices", &format!("customer={cus}"));
    for i in 0..35 {
        call(&fake, "POST", "/v1/invoiceitems", &format!("customer={cus}&amount={}&invoice={}", 100 + i, id(&inv)));
    }
    refresh(&mut c, "invoice", "full");
    let n: i32 = c
        .query_one("SELECT jsonb_array_length(attrs->'lines'->'data') FROM stripe.invoice WHERE id = $1", &[&id(&inv)])
        .unwrap()
        .get(0);
    assert_eq!(n, 35);
    // and through events
    call(&fake, "POST", &format!("/v1/invoices/{}", id(&inv)), "description=More");
    refresh(&mut c, "invoice", "events");
    let row = c.query_one("SELECT jsonb_array_length(attrs->'lines'->'data'), attrs->>'description' FROM stripe.invoice WHERE id = $1", &[&id(&inv)]).unwrap();
    assert_eq!(row.get::<_, i32>(0), 35);
    assert_eq!(row.get::<_, String>(1), "More");
}

#[test]
fn a_full_refresh_at_stripes_rate_limit_is_at_least_6x_faster_than_one_sequential_pass() {
    let _serial = serial();
    let faults = Faults { latency_ms: 200, rate_limit: 100.0, ..Faults::default() };
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let fake = start_fake(Some(SeedSpec::only_customers(50_000)), faults);
    for (name, schema) in [("par", "par"), ("seq", "seq")] {
        c.execute(
            "SELECT stripe_sync.add_source($1, name => $2, schema => $3, api_url => $4, max_requests_per_second => 95)",
            &[&TEST_KEY, &name, &schema, &fake.url()],
        )
        .unwrap();
    }
    let t = Instant::now();
    c.batch_execute("SET stripe_sync.max_parallel_requests = 32").unwrap();
    c.query("SELECT * FROM stripe_sync.refresh('customer', 'full', 'par')", &[]).unwrap();
    let parallel = t.elapsed().as_secs_f64();
    let t = Instant::now();
    c.batch_execute("SET stripe_sync.max_parallel_requests = 1").unwrap();
    c.query("SELECT * FROM stripe_sync.refresh('customer', 'full', 'seq')", &[]).unwrap();
    let sequential = t.elapsed().as_secs_f64();
    for s in ["par", "seq"] {
        let n: i64 = c.query_one(&format!("SELECT count(*) FROM {s}.customer"), &[]).unwrap().get(0);
        assert_eq!(n, 50_000);
    }
    let ratio = sequential / parallel;
    println!(
        "full refresh of 50000 customers (200 ms latency, 100 requests/s): parallel {parallel:.1} s ({:.0} objects/s), sequential {sequential:.1} s ({:.0} objects/s), speed-up {ratio:.1}x",
        50_000.0 / parallel,
        50_000.0 / sequential
    );
    assert!(ratio >= 6.0, "speed-up {ratio:.1}x");
}

#[test]
fn a_refresh_killed_halfway_resumes_from_its_checkpoint() {
    let _serial = serial();
    let faults = Faults { latency_ms: 150, ..Faults::default() };
    let (cluster, mut c, fake) = setup(SeedSpec::only_customers(20_000), faults);
    // a first full pass to know what one costs
    let (_, _, _, one_pass) = refresh(&mut c, "customer", "full");
    c.batch_execute("TRUNCATE stripe.customer; UPDATE stripe_sync._sync_state SET checkpoint = NULL").unwrap();
    for o in fake.objects("customers").iter().take(50) {
        call(&fake, "POST", &format!("/v1/customers/{}", id(o)), "description=changed");
    }
    fake.reset_stats();
    c.batch_execute("SET stripe_sync.max_parallel_requests = 4").unwrap();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let mut watcher = cluster.connect();
    let killer = std::thread::spawn(move || {
        // kill the calling backend once about a third is written
        e2e::wait_for(Duration::from_secs(120), "refresh progress", || {
            let n: Option<i64> = watcher
                .query_one(
                    "SELECT (progress->>'objects')::bigint FROM stripe_sync.sync_status WHERE resource = 'customer'",
                    &[],
                )
                .ok()
                .and_then(|r| r.get(0));
            n.filter(|n| *n >= 6_000)
        });
        watcher.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
        // the worker notices and stops, keeping its checkpoint
        e2e::wait_for(Duration::from_secs(30), "the worker to stop", || {
            let n: i64 = watcher
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stripe_sync refresh'", &[])
                .unwrap()
                .get(0);
            (n == 0).then_some(())
        });
        let resumable: bool = watcher
            .query_one("SELECT resumable FROM stripe_sync.sync_status WHERE resource = 'customer'", &[])
            .unwrap()
            .get(0);
        resumable
    });
    let err = c.query("SELECT * FROM stripe_sync.refresh('customer', 'full')", &[]);
    assert!(err.is_err(), "the backend was terminated");
    assert!(killer.join().unwrap(), "a checkpoint was kept");
    let mut c = cluster.connect();
    let (_, _, _, resumed) = refresh(&mut c, "customer", "full");
    let total = fake.stats().requests_total as i64;
    assert_equal(&mut c, &fake, "customer", "a resumed full refresh");
    println!("one full pass: {one_pass} requests; interrupted + resumed: {total} requests (resumed part {resumed})");
    assert!(total < 2 * one_pass, "{total} requests is not fewer than two passes ({})", 2 * one_pass);
}

#[test]
fn bad_arguments_fail_with_the_valid_choices_and_change_nothing() {
    let _serial = serial();
    let (_cluster, mut c, fake) = setup(SeedSpec::scaled(10), Faults::default());
    let err = c.query("SELECT * FROM stripe_sync.refresh('nope', 'full')", &[]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "22023");
    for r in RESOURCES {
        assert!(db.message().contains(r.name), "{db:?}");
    }
    let err = c.query("SELECT * FROM stripe_sync.refresh('invoice', 'fast')", &[]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert!(db.message().contains("fast") && db.hint().unwrap().contains("full, incremental, events"), "{db:?}");
    let err = c.query("SELECT * FROM stripe_sync.refresh('invoice', 'full', 'elsewhere')", &[]).unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42704");
    // CamelCase names work
    refresh(&mut c, "InvoiceItem", "full");

    // a revoked key: the refresh fails and the table is unchanged
    refresh(&mut c, "customer", "full");
    let snapshot = |c: &mut postgres::Client| -> (i64, String) {
        let r = c
            .query_one("SELECT count(*), md5(string_agg(attrs::text, '' ORDER BY id)) FROM stripe.customer", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    let before = snapshot(&mut c);
    call(&fake, "POST", "/v1/customers", "email=late%40example.com");
    fake.set_faults(Faults { bad_keys: vec![TEST_KEY.to_string()], ..Faults::default() });
    let err = c.query("SELECT * FROM stripe_sync.refresh('customer', 'full')", &[]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "HV00N", "{db:?}");
    assert!(!format!("{db:?}").contains(&TEST_KEY[10..]), "{db:?}");
    assert_eq!(snapshot(&mut c), before);
    let status: String =
        c.query_one("SELECT status FROM stripe_sync.sync_status WHERE resource = 'customer'", &[]).unwrap().get(0);
    assert_eq!(status, "failed");
}

#[test]
fn the_same_refresh_never_runs_twice_at_once_but_different_ones_do() {
    let _serial = serial();
    let faults = Faults { latency_ms: 300, ..Faults::default() };
    let (cluster, mut c, _fake) = setup(SeedSpec::only_customers(3_000), faults);
    c.batch_execute("SET stripe_sync.max_parallel_requests = 1").unwrap();
    let mut other = cluster.connect();
    let long =
        std::thread::spawn(move || c.query("SELECT * FROM stripe_sync.refresh('customer', 'full')", &[]).map(|_| ()));
    // progress is visible from other sessions while it runs
    e2e::wait_for(Duration::from_secs(30), "live progress", || {
        let r = other.query_opt("SELECT status, (progress->>'objects')::bigint FROM stripe_sync.sync_status WHERE resource = 'customer'", &[]).unwrap()?;
        let (status, objects): (String, Option<i64>) = (r.get(0), r.get(1));
        (status == "running" && objects.unwrap_or(0) > 0).then_some(())
    });
    let t = Instant::now();
    let err = other.query("SELECT * FROM stripe_sync.refresh('customer', 'full')", &[]).unwrap_err();
    assert_eq!(err.code().unwrap().code(), "55P03", "{err:?}");
    assert!(err.as_db_error().unwrap().message().contains("already running"));
    assert!(t.elapsed() < Duration::from_secs(10));
    // another resource runs meanwhile
    other.query("SELECT * FROM stripe_sync.refresh('product', 'full')", &[]).unwrap();
    long.join().unwrap().unwrap();
}

#[test]
fn pg_cron_runs_a_scheduled_refresh() {
    let _serial = serial();
    let (_cluster, mut c, fake) = setup(SeedSpec::scaled(30), Faults::default());
    c.batch_execute("CREATE EXTENSION pg_cron").unwrap();
    c.execute("SELECT cron.schedule('stripe-customers', '* * * * *', $$SELECT * FROM stripe_sync.refresh('customer', 'full')$$)", &[]).unwrap();
    let n = e2e::wait_for(Duration::from_secs(100), "the cron job to refresh", || {
        let n: i64 = c.query_one("SELECT count(*) FROM stripe.customer", &[]).unwrap().get(0);
        (n == 30).then_some(n)
    });
    assert_eq!(n, 30);
    // the rows are committed by the refresh worker before the job's own
    // transaction ends: its run record comes a moment later
    e2e::wait_for(Duration::from_secs(30), "the job's run record", || {
        let ok: i64 =
            c.query_one("SELECT count(*) FROM cron.job_run_details WHERE status = 'succeeded'", &[]).unwrap().get(0);
        (ok >= 1).then_some(())
    });
    c.execute("SELECT cron.unschedule('stripe-customers')", &[]).unwrap();
    assert_equal(&mut c, &fake, "customer", "a pg_cron refresh");
}

#[test]
fn a_deletion_right_after_a_full_refresh_is_seen_by_the_next_one() {
    let _serial = serial();
    let (_cluster, mut c, fake) = setup(SeedSpec::only_customers(50), Faults::default());
    refresh(&mut c, "customer", "full");
    // Stripe's clock has whole seconds: most rounds fall in the second of the previous read
    for round in 0..5 {
        let gone = id(&fake.objects("customers")[round]);
        call(&fake, "DELETE", &format!("/v1/customers/{gone}"), "");
        let (_, _, deleted, _) = refresh(&mut c, "customer", "full");
        assert_eq!(deleted, 1, "round {round}");
        assert_equal(&mut c, &fake, "customer", &format!("deletion round {round}"));
    }
}

#[test]
fn a_full_refresh_over_unchanged_rows_rewrites_none_without_webhooks_and_moves_their_stamps_with_them() {
    let _serial = serial();
    let (_cluster, mut c, _fake) = setup(SeedSpec::only_customers(2_000), Faults::default());
    let updates = |c: &mut postgres::Client, at_least: i64| {
        e2e::wait_for(Duration::from_secs(20), "the refresh worker's statistics", || {
            let r = c
                .query_one(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'stripe.customer'::regclass",
                    &[],
                )
                .unwrap();
            let (upd, hot): (i64, i64) = (r.get(0), r.get(1));
            (upd >= at_least).then_some((upd, hot))
        })
    };
    refresh(&mut c, "customer", "full");
    std::thread::sleep(Duration::from_millis(1_100));
    // no webhook: nothing can deliver an older version late, so nothing is rewritten
    for _ in 0..2 {
        let (ins, upd, del, _) = refresh(&mut c, "customer", "full");
        assert_eq!((ins, upd, del), (0, 0, 0));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (upd, _) = updates(&mut c, 0);
    println!("two full refreshes over 2000 unchanged customers, no webhook: {upd} row versions rewritten");
    assert_eq!(upd, 0);
    // with a webhook, what each row knows moves to the read, one row version each
    c.query_one("SELECT stripe_sync.set_webhook_secret('whsec_restamptest0000000000')", &[]).unwrap();
    std::thread::sleep(Duration::from_millis(1_100));
    let second_started = stripe_core::signature::unix_now();
    let (ins, upd, del, _) = refresh(&mut c, "customer", "full");
    assert_eq!((ins, upd, del), (0, 0, 0), "nothing changed at Stripe");
    let oldest: i64 = c.query_one("SELECT min(_stamp) FROM stripe.customer", &[]).unwrap().get(0);
    assert!(oldest >= second_started - 2, "{oldest} < {second_started}");
    let (upd, hot) = updates(&mut c, 2_000);
    println!("a full refresh over 2000 unchanged customers, with a webhook: {upd} row versions rewritten, {hot} HOT");
    assert_eq!(upd, 2_000);
}

#[test]
fn events_mode_reaches_edits_of_invoice_items_that_stripe_sends_no_event_for() {
    let _serial = serial();
    let (_cluster, mut c, fake) = setup(SeedSpec::scaled(20), Faults::default());
    refresh(&mut c, "invoice_item", "events");
    refresh(&mut c, "invoice_item", "events");
    let item = id(&fake.objects("invoiceitems")[0]);
    call(&fake, "POST", &format!("/v1/invoiceitems/{item}"), "description=Edited+quietly&amount=4242");
    refresh(&mut c, "invoice_item", "events");
    let row = c.query_one("SELECT description, amount FROM stripe.invoice_item WHERE id = $1", &[&item]).unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, i64>(1)), ("Edited quietly".to_string(), 4242));
    assert_equal(&mut c, &fake, "invoice_item", "an edit Stripe sends no event for");
    let note: String =
        c.query_one("SELECT note FROM stripe_sync.sync_status WHERE resource = 'invoice_item'", &[]).unwrap().get(0);
    assert!(note.contains("no complete events"), "{note}");
}

#[test]
fn a_per_customer_pass_resumes_after_its_checkpoint_customer_was_deleted() {
    let _serial = serial();
    let (_cluster, mut c, fake) = setup(SeedSpec::scaled(300), Faults::default());
    refresh(&mut c, "customer_balance_transaction", "full");
    // an interrupted pass left this checkpoint: customers up to `mark` are done
    let customers = fake.objects("customers");
    let mark = customers.iter().find(|cu| cu["created"].as_i64().is_some()).unwrap().clone();
    let cp = serde_json::json!({"started": stripe_core::signature::unix_now(), "hi": 0, "done": [],
        "after": mark["id"], "after_created": mark["created"], "events_cursor": null});
    c.execute(
        "UPDATE stripe_sync._sync_state SET checkpoint = $1 WHERE resource = 'customer_balance_transaction'",
        &[&cp],
    )
    .unwrap();
    // ... and that customer is deleted before the next run
    call(&fake, "DELETE", &format!("/v1/customers/{}", id(&mark)), "");
    call(
        &fake,
        "POST",
        &format!("/v1/customers/{}/balance_transactions", id(&customers[5])),
        "amount=-700&currency=usd",
    );
    refresh(&mut c, "customer_balance_transaction", "full");
    let resumable: bool = c
        .query_one("SELECT resumable FROM stripe_sync.sync_status WHERE resource = 'customer_balance_transaction'", &[])
        .unwrap()
        .get(0);
    assert!(!resumable, "the pass completed");
    // a full pass from the start leaves the table equal to the fake
    refresh(&mut c, "customer_balance_transaction", "full");
    assert_equal(&mut c, &fake, "customer_balance_transaction", "a resume past a deleted customer");
}
