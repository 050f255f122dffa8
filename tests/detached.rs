//! Long runs without held-back vacuum: `refresh(..., wait => false)` returns as
//! soon as the run started and holds no snapshot, so VACUUM cleans an unrelated
//! table during it (while the waiting form, which holds its statement's
//! snapshot for the whole run, keeps those tuples); each resource is locked only
//! while it runs, also within `refresh('all')`.

use e2e::{
    Cluster, ClusterConfig, Faults, SeedSpec, TEST_KEY, add_source, compare, connect_collecting_notices, start_fake,
    wait_for,
};
use std::time::{Duration, Instant};

/// `VACUUM (VERBOSE)` of a table whose 500 rows were all just updated: the dead
/// tuples it could not remove yet.
fn not_yet_removable(cluster: &Cluster) -> i64 {
    let (mut c, notices) = connect_collecting_notices(cluster);
    c.batch_execute("UPDATE unrelated SET v = v + 1").unwrap();
    c.batch_execute("VACUUM (VERBOSE) unrelated").unwrap();
    let said = notices.lock().unwrap().join("\n");
    let line = said.lines().find(|l| l.contains("are dead but not yet removable")).unwrap_or_else(|| panic!("{said}"));
    // "tuples: 500 removed, 500 remain, 0 are dead but not yet removable"
    let before = line.split(" are dead but not yet removable").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

fn status(c: &mut postgres::Client, resource: &str) -> String {
    c.query_one(
        "SELECT coalesce(status, '') FROM stripe_sync.sync_status WHERE source = 'default' AND resource = $1",
        &[&resource],
    )
    .map(|r| r.get(0))
    .unwrap_or_default()
}

#[test]
fn a_detached_refresh_returns_at_once_and_holds_back_no_vacuum() {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    // 1,000 customers, one request at a time at 1.5 s each: a run of about 15 s
    let fake = start_fake(Some(SeedSpec::only_customers(1_000)), Faults { latency_ms: 1_500, ..Faults::default() });
    add_source(&mut c, &fake, "default", TEST_KEY);
    c.batch_execute(
        "CREATE TABLE unrelated (id int PRIMARY KEY, v int) WITH (autovacuum_enabled = off);
         INSERT INTO unrelated SELECT g, 0 FROM generate_series(1, 500) g;
         ALTER ROLE postgres SET stripe_sync.max_parallel_requests = 1;",
    )
    .unwrap();
    let mut c = cluster.connect();
    let t = Instant::now();
    let row = c
        .query_one(
            "SELECT resource, finished_at IS NULL FROM stripe_sync.refresh('customer', 'full', wait => false)",
            &[],
        )
        .unwrap();
    let returned_after = t.elapsed();
    assert_eq!((row.get::<_, String>(0).as_str(), row.get::<_, bool>(1)), ("customer", true));
    assert!(returned_after < Duration::from_secs(5), "returned after {returned_after:?}");
    assert_eq!(status(&mut c, "customer"), "running");
    // the same resource is busy: a waiting call fails, a detached one skips it with a NOTICE
    let err = c.query("SELECT * FROM stripe_sync.refresh('customer', 'incremental')", &[]).unwrap_err();
    assert_eq!(err.code().unwrap().code(), "55P03", "{err}");
    let (mut n, notices) = connect_collecting_notices(&cluster);
    let rows = n.query("SELECT * FROM stripe_sync.refresh('customer', 'incremental', wait => false)", &[]).unwrap();
    assert!(rows.is_empty());
    let said = notices.lock().unwrap().join("\n");
    assert!(said.contains("already running") && said.contains("skips it"), "{said}");
    // nothing holds a snapshot: VACUUM removes every dead tuple of another table
    let detached = not_yet_removable(&cluster);
    assert_eq!(status(&mut c, "customer"), "running", "measured while the run was going on");
    wait_for(Duration::from_secs(120), "the detached run to end", || {
        let s = status(&mut c, "customer");
        (s != "running").then_some(())
    });
    assert_eq!(status(&mut c, "customer"), "succeeded");
    let d = compare(&mut c, &fake, "stripe", "customer");
    assert!(d.is_empty(), "{}", d.summary());
    // the waiting form holds its statement's snapshot while the run goes on
    let mut waiting = cluster.connect();
    let waiter = std::thread::spawn(move || {
        waiting
            .query("SELECT * FROM stripe_sync.refresh('customer', 'full')", &[])
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    wait_for(Duration::from_secs(20), "the waiting run to start", || {
        (status(&mut c, "customer") == "running").then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let waited = not_yet_removable(&cluster);
    waiter.join().unwrap().unwrap();
    println!(
        "VACUUM of a table with 500 rows just updated, during a 15 s full refresh: {detached} dead tuples kept with wait => false, {waited} with the waiting form (returned after {:.0} ms)",
        returned_after.as_secs_f64() * 1000.0
    );
    assert_eq!(detached, 0, "a detached run holds back vacuum");
    assert!(waited >= 500, "the waiting form keeps the snapshot of its statement ({waited})");
}

#[test]
fn refresh_all_locks_each_resource_only_while_it_runs() {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let fake = start_fake(Some(SeedSpec::scaled(20)), Faults { latency_ms: 400, ..Faults::default() });
    add_source(&mut c, &fake, "default", TEST_KEY);
    let mut all = cluster.connect();
    let runner = std::thread::spawn(move || {
        all.query("SELECT * FROM stripe_sync.refresh('all', 'full')", &[]).map(|r| r.len()).map_err(|e| e.to_string())
    });
    // account is first: once it is done and the run is on another resource, account is free
    wait_for(Duration::from_secs(60), "account refreshed while the run goes on", || {
        let done = status(&mut c, "account") == "succeeded";
        let running: i64 =
            c.query_one("SELECT count(*) FROM stripe_sync.sync_status WHERE status = 'running'", &[]).unwrap().get(0);
        (done && running > 0).then_some(())
    });
    let t = Instant::now();
    let rows = c.query("SELECT * FROM stripe_sync.refresh('account', 'incremental')", &[]);
    let still_running: i64 =
        c.query_one("SELECT count(*) FROM stripe_sync.sync_status WHERE status = 'running'", &[]).unwrap().get(0);
    assert!(rows.is_ok(), "a finished resource of a running refresh('all') is free: {:?}", rows.err());
    println!(
        "refresh('account') during refresh('all'): ran in {:.0} ms, {still_running} resource(s) of the other run still running",
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(runner.join().unwrap(), Ok(15));
    // and a detached 'all' runs every resource in one worker, one after the other
    let row =
        c.query_one("SELECT resource FROM stripe_sync.refresh('all', 'incremental', wait => false)", &[]).unwrap();
    assert_eq!(row.get::<_, String>(0), "all");
    wait_for(Duration::from_secs(120), "every resource refreshed by the detached run", || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM stripe_sync.sync_status WHERE last_mode = 'incremental' AND status = 'succeeded'",
                &[],
            )
            .unwrap()
            .get(0);
        (n == 15).then_some(())
    });
}
