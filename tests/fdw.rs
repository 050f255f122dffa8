//! Foreign tables against the fake Stripe: counts, field-by-field equality,
//! pushdown proven by the fake's request log, the LIMIT bug of peers, memory,
//! permissions and errors.

use e2e::{Cluster, ClusterConfig, Fake, Faults, SeedSpec, TEST_KEY, add_source, fake_objects, start_fake};
use serde_json::Value;
use std::time::{Duration, Instant};
use stripe_core::resources::{ColType, RESOURCES, value_at};

fn setup(seed: SeedSpec) -> (Cluster, postgres::Client, Fake) {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let fake = start_fake(Some(seed), Faults::default());
    add_source(&mut c, &fake, "default", TEST_KEY);
    (cluster, c, fake)
}

/// What the API answers for one object (nested lists truncated like Stripe does).
fn api_object(fake: &Fake, resource: &str, obj: &Value) -> Value {
    let id = obj["id"].as_str().unwrap();
    let path = match resource {
        "customer_balance_transaction" => {
            format!("/v1/customers/{}/balance_transactions/{id}", obj["customer"].as_str().unwrap())
        }
        "customer_payment_method" => {
            format!("/v1/customers/{}/payment_methods/{id}", obj["customer"].as_str().unwrap())
        }
        r => {
            let res = stripe_core::lookup(r).unwrap();
            res.retrieve_url_path(id, None)
        }
    };
    let (status, v) = fake.call("GET", &path, "");
    assert_eq!(status, 200, "{path}: {v}");
    v
}

fn expected_text(v: Option<&Value>, ty: ColType) -> Option<String> {
    let v = v?;
    Some(match (v, ty) {
        (Value::String(s), _) => s.clone(),
        (Value::Object(o), _) => o["id"].as_str().unwrap_or_default().to_string(),
        (other, _) => other.to_string(),
    })
}

#[test]
fn every_foreign_table_counts_what_the_fake_holds_and_rows_match_field_by_field() {
    let (_cluster, mut c, fake) = setup(SeedSpec::scaled(120));
    for r in RESOURCES {
        let expected = fake_objects(&fake, r.name);
        let n: i64 = c.query_one(&format!("SELECT count(*) FROM stripe_api.{}", r.name), &[]).unwrap().get(0);
        assert_eq!(n as usize, expected.len(), "count of {}", r.name);
        assert!(n > 0, "{} is seeded", r.name);
        // a sample of rows, field by field
        let mut exprs = vec!["extract(epoch FROM created)::bigint::text".to_string()];
        exprs.extend(r.columns.iter().map(|col| match col.ty {
            ColType::Timestamp => format!("extract(epoch FROM {})::bigint::text", col.name),
            _ => format!("{}::text", col.name),
        }));
        let sql = format!("SELECT attrs, ARRAY[{}] FROM stripe_api.{} WHERE id = $1", exprs.join(", "), r.name);
        for obj in expected.iter().step_by((expected.len() / 3).max(1)).take(3) {
            let id = obj["id"].as_str().unwrap();
            let row = c.query_one(&sql, &[&id]).unwrap_or_else(|e| panic!("{}: {e}", r.name));
            let attrs: Value = row.get(0);
            assert_eq!(attrs, api_object(&fake, r.name, obj), "{} {id}: attrs", r.name);
            let values: Vec<Option<String>> = row.get(1);
            assert_eq!(values[0], expected_text(obj.get(r.created_field), ColType::Timestamp), "{} created", r.name);
            for (col, got) in r.columns.iter().zip(&values[1..]) {
                assert_eq!(*got, expected_text(value_at(obj, col.path), col.ty), "{}.{} of {id}", r.name, col.name);
            }
        }
    }
}

#[test]
fn subscriptions_include_canceled_ones_and_prices_include_inactive_ones() {
    let (_cluster, mut c, fake) = setup(SeedSpec::scaled(150));
    let canceled = fake_objects(&fake, "subscription").iter().filter(|s| s["status"] == "canceled").count() as i64;
    let inactive = fake_objects(&fake, "price").iter().filter(|p| p["active"] == false).count() as i64;
    assert!(canceled > 0 && inactive > 0);
    let got: i64 =
        c.query_one("SELECT count(*) FROM stripe_api.subscription WHERE status = 'canceled'", &[]).unwrap().get(0);
    assert_eq!(got, canceled);
    let got: i64 = c.query_one("SELECT count(*) FROM stripe_api.price WHERE NOT active", &[]).unwrap().get(0);
    assert_eq!(got, inactive);
}

#[test]
fn pushdown_is_proven_by_the_fakes_request_log() {
    let (_cluster, mut c, fake) = setup(SeedSpec::scaled(400));
    let customers = fake_objects(&fake, "customer");
    let id = customers[17]["id"].as_str().unwrap().to_string();

    fake.reset_stats();
    let rows = c.query("SELECT email FROM stripe_api.customer WHERE id = $1", &[&id]).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(fake.stats().log, vec![format!("GET /v1/customers/{id}")]);

    fake.reset_stats();
    let rows = c.query("SELECT id FROM stripe_api.customer WHERE id = 'cus_doesnotexist'", &[]).unwrap();
    assert!(rows.is_empty());
    assert_eq!(fake.stats().requests_total, 1);

    fake.reset_stats();
    let other = customers[200]["id"].as_str().unwrap().to_string();
    let rows = c.query("SELECT id FROM stripe_api.customer WHERE id IN ($1, $2)", &[&id, &other]).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(fake.stats().requests_total, 2);

    // created >= X: only the pages of that range (150 customers: 2 pages)
    let mut created: Vec<i64> = customers.iter().map(|o| o["created"].as_i64().unwrap()).collect();
    created.sort_unstable_by(|a, b| b.cmp(a));
    let x = created[149];
    let in_range = created.iter().filter(|t| **t >= x).count() as i64;
    fake.reset_stats();
    let n: i64 = c
        .query_one("SELECT count(*) FROM stripe_api.customer WHERE created >= to_timestamp($1::bigint)", &[&x])
        .unwrap()
        .get(0);
    assert_eq!(n, in_range);
    let log = fake.stats().log;
    assert_eq!(log.len() as i64, (in_range + 99) / 100, "{log:?}");
    assert!(log.iter().all(|l| l.contains(&format!("created[gte]={x}"))), "{log:?}");

    // BETWEEN becomes both bounds
    fake.reset_stats();
    let _ = c
        .query(
            "SELECT id FROM stripe_api.customer WHERE created BETWEEN to_timestamp($1::bigint) AND to_timestamp($2::bigint)",
            &[&created[300], &created[100]],
        )
        .unwrap();
    let log = fake.stats().log;
    assert!(log.iter().all(|l| l.contains("created[gte]=") && l.contains("created[lte]=")), "{log:?}");

    // customer = 'cus_x' on charges is the list filter
    let charge = fake_objects(&fake, "charge").into_iter().find(|ch| ch["customer"].is_string()).unwrap();
    let cus = charge["customer"].as_str().unwrap().to_string();
    fake.reset_stats();
    let rows = c.query("SELECT id FROM stripe_api.charge WHERE customer = $1", &[&cus]).unwrap();
    let expected = fake_objects(&fake, "charge").iter().filter(|ch| ch["customer"] == cus.as_str()).count();
    assert_eq!(rows.len(), expected);
    let log = fake.stats().log;
    assert!(
        !log.is_empty()
            && log.iter().all(|l| l.starts_with("GET /v1/charges?") && l.contains(&format!("customer={cus}"))),
        "{log:?}"
    );

    // per-customer resources read only that customer's list
    let pm = fake_objects(&fake, "customer_payment_method")[0].clone();
    let owner = pm["customer"].as_str().unwrap().to_string();
    fake.reset_stats();
    let rows = c.query("SELECT id FROM stripe_api.customer_payment_method WHERE customer = $1", &[&owner]).unwrap();
    assert!(rows.iter().any(|r| r.get::<_, String>(0) == pm["id"].as_str().unwrap()));
    let log = fake.stats().log;
    assert!(log.iter().all(|l| l.starts_with(&format!("GET /v1/customers/{owner}/payment_methods"))), "{log:?}");
}

#[test]
fn limit_with_an_unpushed_filter_finds_the_row_on_a_late_page() {
    let (_cluster, mut c, fake) = setup(SeedSpec::scaled(300));
    // charges are listed newest first: the oldest charge with a description is on the last page
    let charges = fake_objects(&fake, "charge");
    let (pos, target) = charges.iter().enumerate().rfind(|(_, ch)| ch["description"].is_string()).unwrap();
    assert!(pos >= 400, "the row is on page {} or later", pos / 100 + 1);
    let description = target["description"].as_str().unwrap();
    let row = c.query_one("SELECT id FROM stripe_api.charge WHERE description = $1 LIMIT 1", &[&description]).unwrap();
    assert_eq!(row.get::<_, String>(0), target["id"].as_str().unwrap());
    // a condition the framework cannot even see (a function call) with LIMIT
    let row = c
        .query_one("SELECT id FROM stripe_api.charge WHERE lower(description) = lower($1) LIMIT 1", &[&description])
        .unwrap();
    assert_eq!(row.get::<_, String>(0), target["id"].as_str().unwrap());
}

#[test]
fn limit_on_a_join_of_two_foreign_tables_returns_correct_rows() {
    let (_cluster, mut c, fake) = setup(SeedSpec::scaled(200));
    // the oldest customer that has charges: its rows are far from the first page
    let charges = fake_objects(&fake, "charge");
    let customers = fake_objects(&fake, "customer");
    let target = customers.iter().rev().find(|cu| charges.iter().any(|ch| ch["customer"] == cu["id"])).unwrap();
    let email = target["email"].as_str().unwrap();
    let rows = c
        .query(
            "SELECT c.id, ch.id, ch.customer FROM stripe_api.charge ch JOIN stripe_api.customer c ON c.id = ch.customer WHERE c.email = $1 LIMIT 2",
            &[&email],
        )
        .unwrap();
    let expected = charges.iter().filter(|ch| ch["customer"] == target["id"]).count().min(2);
    assert_eq!(rows.len(), expected);
    for r in rows {
        assert_eq!(r.get::<_, String>(0), target["id"].as_str().unwrap());
        assert_eq!(r.get::<_, String>(2), target["id"].as_str().unwrap());
    }
}

#[test]
fn a_scan_of_100000_objects_keeps_backend_memory_flat_whatever_columns_it_reads() {
    let (_cluster, mut c, _fake) = setup(SeedSpec::only_customers(100_000));
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    // warm up (libraries, catalogs), then measure each query's own peak
    c.query_one("SELECT count(*) FROM stripe_api.customer WHERE id = 'cus_nothing'", &[]).unwrap();
    for sql in [
        "SELECT count(*) FROM stripe_api.customer",
        "SELECT count(*), sum(length(attrs::text)) FROM stripe_api.customer",
        "SELECT * FROM stripe_api.customer ORDER BY created LIMIT 1",
    ] {
        e2e::reset_peak_memory(pid);
        let (rss_before, _) = e2e::memory_kb(pid);
        let t = Instant::now();
        let rows = c.query(sql, &[]).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let (_, peak) = e2e::memory_kb(pid);
        assert_eq!(rows.len(), 1);
        let growth_mb = (peak.saturating_sub(rss_before)) as f64 / 1024.0;
        println!("{sql} over 100000 customers: {secs:.1} s, backend peak memory (VmHWM) growth {growth_mb:.1} MB");
        assert!(growth_mb < 50.0, "{sql}: backend memory grew {growth_mb:.1} MB");
    }
}

#[test]
fn a_role_granted_select_can_query_but_never_read_the_key() {
    let (cluster, mut c, fake) = setup(SeedSpec::scaled(20));
    c.batch_execute(
        "CREATE ROLE reader LOGIN; GRANT USAGE ON SCHEMA stripe_api TO reader; GRANT SELECT ON ALL TABLES IN SCHEMA stripe_api TO reader;",
    )
    .unwrap();
    let mut r = cluster.connect_as("reader");
    let n: i64 = r.query_one("SELECT count(*) FROM stripe_api.customer", &[]).unwrap().get(0);
    assert_eq!(n, 20);
    let secret = &TEST_KEY[8..];
    let mut seen = String::new();
    for sql in [
        "SELECT coalesce(umoptions::text, '') FROM pg_user_mappings",
        "SELECT coalesce(srvoptions::text, '') FROM pg_foreign_server",
        "SELECT coalesce(ftoptions::text, '') FROM pg_foreign_table",
        "SELECT coalesce(current_setting('stripe_sync.webhook_listen', true), '')",
    ] {
        for row in r.query(sql, &[]).unwrap() {
            seen.push_str(&row.get::<_, String>(0));
        }
    }
    assert!(!seen.contains(secret), "{seen}");
    for sql in [
        "SELECT * FROM pg_user_mapping",
        "SELECT * FROM stripe_sync._sources",
        // the status views are for stripe_sync_reader; a direct grant on the foreign tables is not enough
        "SELECT * FROM stripe_sync.sources",
        "SELECT stripe_sync.add_source('sk_test_xxxxxxxxxxxx', 'mine')",
    ] {
        let err = r.query(sql, &[]).unwrap_err();
        assert_eq!(err.code().unwrap().code(), "42501", "{sql}: {err}");
    }
    // errors a reader sees do not carry the key either
    fake.set_faults(Faults { bad_keys: vec![TEST_KEY.to_string()], ..Faults::default() });
    let err = r.query("SELECT count(*) FROM stripe_api.charge", &[]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "HV00N", "{db:?}");
    assert!(!format!("{db:?}").contains(secret), "{db:?}");
    assert!(db.message().contains("401"), "{db:?}");
    assert!(!cluster.log().contains(secret), "the server log has the key");
}

#[test]
fn errors_say_what_to_do() {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let faults = Faults { restricted_denied: vec!["charges".into()], ..Faults::default() };
    let fake = start_fake(Some(SeedSpec::scaled(10)), faults);
    add_source(&mut c, &fake, "restricted", "rk_test_51RestrictedKey000000000");
    let err = c.query("SELECT count(*) FROM stripe_api.charge", &[]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert!(db.message().contains("/v1/charges") && db.message().contains("rak_charge_read"), "{db:?}");
    assert!(db.hint().unwrap_or_default().contains("Read"), "{db:?}");
    assert!(!format!("{db:?}").contains("RestrictedKey000"), "{db:?}");
    let ok: i64 = c.query_one("SELECT count(*) FROM stripe_api.customer", &[]).unwrap().get(0);
    assert_eq!(ok, 10);

    // add_source twice with the same name
    let err = c
        .execute("SELECT stripe_sync.add_source($1, 'restricted', api_url => $2)", &[&TEST_KEY, &fake.url()])
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42710", "{err}");
    // bad arguments change nothing
    let err = c.execute("SELECT stripe_sync.add_source('pk_test_nope12345', 'x')", &[]).unwrap_err();
    assert!(!err.to_string().contains("nope12345"), "{err}");
    let err = c.execute("SELECT stripe_sync.add_source($1, 'Bad Name')", &[&TEST_KEY]).unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22023", "{err}");
    let n: i64 = c.query_one("SELECT count(*) FROM stripe_sync.sources", &[]).unwrap().get(0);
    assert_eq!(n, 1);

    // a network failure (nothing listens there) is an error, not an empty table
    c.execute(
        "SELECT stripe_sync.add_source($1, 'nowhere', schema => 'nowhere', api_url => 'http://127.0.0.1:9')",
        &[&TEST_KEY],
    )
    .unwrap();
    c.batch_execute("ALTER SERVER stripe_sync_nowhere OPTIONS (ADD max_requests_per_second '1000')").unwrap();
    let err = c.query("SELECT count(*) FROM nowhere_api.customer", &[]).unwrap_err();
    assert_eq!(err.code().unwrap().code(), "HV00N", "{err}");

    // drop_source removes the server, its mapping and tables
    assert!(c.query_one("SELECT stripe_sync.drop_source('nowhere')", &[]).unwrap().get::<_, bool>(0));
    let left: i64 = c
        .query_one("SELECT count(*) FROM pg_foreign_server WHERE srvname = 'stripe_sync_nowhere'", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let err = c.query("SELECT stripe_sync.drop_source('nowhere')", &[]).unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42704", "{err}");
    assert!(err.as_db_error().unwrap().hint().unwrap_or_default().contains("restricted"), "{err:?}");
}

#[test]
fn a_long_scan_stops_promptly_on_cancel() {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let fake = start_fake(Some(SeedSpec::only_customers(2_000)), Faults { latency_ms: 3_000, ..Faults::default() });
    add_source(&mut c, &fake, "default", TEST_KEY);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let mut other = cluster.connect();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        other.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
        t
    });
    let err = c.query("SELECT count(*) FROM stripe_api.customer", &[]).unwrap_err();
    let cancelled_at = canceller.join().unwrap();
    let took = cancelled_at.elapsed();
    assert_eq!(err.code().unwrap().code(), "57014", "{err}");
    println!("scan cancelled {:.0} ms after pg_cancel_backend (request latency 3000 ms)", took.as_secs_f64() * 1000.0);
    assert!(took < Duration::from_secs(3), "cancel waited for the request");
}

#[test]
fn import_foreign_schema_honours_limit_to_and_except() {
    let cluster = Cluster::start(ClusterConfig { preload: vec![], ..Default::default() });
    let mut c = cluster.connect_with_extension();
    c.batch_execute(
        "CREATE SERVER s FOREIGN DATA WRAPPER stripe_sync_fdw OPTIONS (api_url 'http://127.0.0.1:9');
         CREATE SCHEMA a; CREATE SCHEMA b; CREATE SCHEMA d;
         IMPORT FOREIGN SCHEMA stripe FROM SERVER s INTO a;
         IMPORT FOREIGN SCHEMA stripe LIMIT TO (customer, invoice) FROM SERVER s INTO b;
         IMPORT FOREIGN SCHEMA stripe EXCEPT (customer) FROM SERVER s INTO d;",
    )
    .unwrap();
    let count = |c: &mut postgres::Client, s: &str| -> i64 {
        c.query_one("SELECT count(*) FROM pg_foreign_table ft JOIN pg_class k ON k.oid = ft.ftrelid JOIN pg_namespace n ON n.oid = k.relnamespace WHERE n.nspname = $1", &[&s]).unwrap().get(0)
    };
    assert_eq!(count(&mut c, "a"), 15);
    assert_eq!(count(&mut c, "b"), 2);
    assert_eq!(count(&mut c, "d"), 14);
    let err = c.batch_execute("IMPORT FOREIGN SCHEMA nope FROM SERVER s INTO a").unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("no remote schema"), "{err:?}");
}

/// A scan cancelled by statement_timeout frees its reader thread: after 50 of
/// them the backend has as many threads as before.
#[test]
fn scans_cancelled_by_statement_timeout_leave_no_thread_behind() {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let fake = start_fake(Some(SeedSpec::only_customers(500)), Faults { latency_ms: 600, ..Faults::default() });
    add_source(&mut c, &fake, "default", TEST_KEY);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let threads = || std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
    // one complete scan first: whatever lives for the whole session exists now
    let n: i64 = c.query_one("SELECT count(*) FROM stripe_api.customer", &[]).unwrap().get(0);
    assert_eq!(n, 500);
    let before = threads();
    c.batch_execute("SET statement_timeout = '150ms'").unwrap();
    for i in 0..50 {
        let err = c.query("SELECT count(*) FROM stripe_api.customer", &[]).unwrap_err();
        assert_eq!(err.code().unwrap().code(), "57014", "scan {i}: {err}");
    }
    let during = threads();
    // a reader thread ends when the request it waits on returns (600 ms latency)
    let after = e2e::wait_for(Duration::from_secs(20), "the cancelled scans' threads gone", || {
        let t = threads();
        (t <= before).then_some(t)
    });
    println!(
        "backend threads: {before} before 50 cancelled scans, {during} right after the last, {after} once they ended"
    );
    c.batch_execute("RESET statement_timeout").unwrap();
    let n: i64 = c.query_one("SELECT count(*) FROM stripe_api.customer", &[]).unwrap().get(0);
    assert_eq!(n, 500, "the backend still scans");
}

/// Sorted ids of objects.
fn sorted_ids(objects: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = objects.iter().map(|o| o["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

/// `(account, id)` rows of a query, sorted.
fn account_rows(
    c: &mut postgres::Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Vec<(Option<String>, String)> {
    let mut rows: Vec<(Option<String>, String)> =
        c.query(sql, params).unwrap_or_else(|e| panic!("{sql}: {e}")).iter().map(|r| (r.get(0), r.get(1))).collect();
    rows.sort();
    rows
}

fn explain(c: &mut postgres::Client, sql: &str) -> String {
    let lines: Vec<String> =
        c.query(&format!("EXPLAIN (COSTS OFF) {sql}"), &[]).unwrap().iter().map(|r| r.get(0)).collect();
    lines.join("\n")
}

#[test]
fn account_conditions_read_connected_accounts_one_scan_each_and_explain_shows_the_header() {
    let (_cluster, mut c, fake) = setup(SeedSpec { connected: vec![12, 5], ..SeedSpec::scaled(10) });
    let with_data: Vec<String> =
        fake.connected_accounts().into_iter().filter(|a| !fake.objects_of(a, "customers").is_empty()).collect();
    let (a, b) = (with_data[0].clone(), with_data[1].clone());
    let (of_a, of_b) = (sorted_ids(&fake.objects_of(&a, "customers")), sorted_ids(&fake.objects_of(&b, "customers")));
    let tagged = |acct: &str, ids: &[String]| -> Vec<(Option<String>, String)> {
        ids.iter().map(|i| (Some(acct.to_string()), i.clone())).collect()
    };

    // one account: its rows, each tagged with it, in one request (one page)
    fake.reset_stats();
    let rows = account_rows(&mut c, "SELECT account, id FROM stripe_api.customer WHERE account = $1", &[&a]);
    assert_eq!(rows, tagged(&a, &of_a));
    assert_eq!(fake.stats().requests_total, 1, "one page of a's customers");

    // two accounts: one scan each, in turn
    fake.reset_stats();
    let rows = account_rows(
        &mut c,
        &format!("SELECT account, id FROM stripe_api.customer WHERE account IN ('{a}', '{b}', '{a}')"),
        &[],
    );
    let mut want = tagged(&a, &of_a);
    want.extend(tagged(&b, &of_b));
    want.sort();
    assert_eq!(rows, want);
    assert_eq!(fake.stats().requests_total, 2, "one page per account");

    // other pushed conditions apply within each account
    let one = &fake.objects_of(&b, "customers")[0];
    let by_id: i64 = c
        .query_one(
            "SELECT count(*) FROM stripe_api.customer WHERE account = ANY($1) AND id = $2",
            &[&vec![a.clone(), b.clone()], &one["id"].as_str().unwrap()],
        )
        .unwrap()
        .get(0);
    assert_eq!(by_id, 1, "b's customer is found in b, and a answers 404 for it");

    // no account condition: the key's own account, account NULL
    let rows = account_rows(&mut c, "SELECT account, id FROM stripe_api.customer", &[]);
    let platform: Vec<(Option<String>, String)> =
        sorted_ids(&fake.objects("customers")).into_iter().map(|i| (None, i)).collect();
    assert_eq!(rows, platform);

    // conditions no account meets: no request
    fake.reset_stats();
    let n: i64 = c
        .query_one("SELECT count(*) FROM stripe_api.customer WHERE account = $1 AND account = $2", &[&a, &b])
        .unwrap()
        .get(0);
    assert_eq!((n, fake.stats().requests_total), (0, 0));

    // a prepared statement, past the switch to a generic plan
    c.batch_execute("PREPARE per_account(text) AS SELECT count(*) FROM stripe_api.customer WHERE account = $1")
        .unwrap();
    for round in 0..7 {
        for (acct, ids) in [(&a, &of_a), (&b, &of_b)] {
            let n: i64 = c.query_one(&format!("EXECUTE per_account('{acct}')"), &[]).unwrap().get(0);
            assert_eq!(n as usize, ids.len(), "round {round}, {acct}");
        }
    }

    // what EXPLAIN says is the header that will be sent
    let plan = explain(&mut c, &format!("SELECT id FROM stripe_api.customer WHERE account = '{a}'"));
    assert!(
        plan.contains(&format!("Stripe-Account: {a}\n")) || plan.ends_with(&format!("Stripe-Account: {a}")),
        "{plan}"
    );
    let plan = explain(&mut c, &format!("SELECT id FROM stripe_api.customer WHERE account IN ('{a}', '{b}')"));
    assert!(plan.contains(&format!("Stripe-Account: {a}, {b} (one scan each, in turn)")), "{plan}");
    let plan = explain(&mut c, "SELECT id FROM stripe_api.customer");
    assert!(plan.contains("Stripe-Account: not sent: the key's own account"), "{plan}");
    c.batch_execute("SET plan_cache_mode = force_generic_plan").unwrap();
    let plan = explain(&mut c, &format!("EXECUTE per_account('{b}')"));
    assert!(plan.contains("Stripe-Account: <$1>"), "a parameter is shown as itself: {plan}");
    c.batch_execute("RESET plan_cache_mode").unwrap();

    // every connected account in one query: a LATERAL subquery pushes each outer
    // account as the scan's Stripe-Account (a nested loop, one scan per account)
    c.query("SELECT * FROM stripe_sync.refresh('account', 'full')", &[]).unwrap();
    let per_account: Vec<(String, i64)> = c
        .query(
            "SELECT a.id, n.customers FROM stripe.account a
               CROSS JOIN LATERAL (SELECT count(*) AS customers FROM stripe_api.customer c WHERE c.account = a.id) n
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(String, i64)> =
        fake.connected_accounts().iter().map(|a| (a.clone(), fake.objects_of(a, "customers").len() as i64)).collect();
    assert_eq!(per_account, want);

    // a source made for one connected account reads it, and its rows say so
    c.execute(
        "SELECT stripe_sync.add_source($1, name => 'b', schema => 'b', account => $2, api_url => $3)",
        &[&TEST_KEY, &b, &fake.url()],
    )
    .unwrap();
    let rows = account_rows(&mut c, "SELECT account, id FROM b_api.customer", &[]);
    assert_eq!(rows, tagged(&b, &of_b));
    let plan = explain(&mut c, "SELECT id FROM b_api.customer");
    assert!(plan.contains(&format!("Stripe-Account: {b} (the server's account option)")), "{plan}");

    // errors: Stripe's answer for an account the key cannot reach, ours for a value
    // that is no account id (and then no request)
    let err = c.query("SELECT id FROM stripe_api.customer WHERE account = 'acct_NotConnected'", &[]).unwrap_err();
    assert!(format!("{err:?}").contains("does not have access to account 'acct_NotConnected'"), "{err:?}");
    fake.reset_stats();
    let err = c.query("SELECT id FROM stripe_api.customer WHERE account = 'cus_123'", &[]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "22023", "{db:?}");
    assert!(db.hint().unwrap_or_default().contains("acct_"), "{db:?}");
    assert_eq!(fake.stats().requests_total, 0);
}
