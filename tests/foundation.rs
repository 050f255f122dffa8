//! The extension installs, loads preloaded and not preloaded, and the harness
//! cleans up after itself.

use e2e::{Cluster, ClusterConfig};
use std::time::Duration;

#[test]
fn loads_preloaded_with_the_worker_running() {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let (version, installed): (String, String) = {
        let r = c
            .query_one("SELECT stripe_sync.version(), extversion FROM pg_extension WHERE extname = 'stripe_sync'", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(version, installed, "the library and the installed extension are the same version");
    let preloaded: bool = c.query_one("SELECT stripe_sync._preloaded()", &[]).unwrap().get(0);
    assert!(preloaded);
    let workers: i64 = e2e::wait_for(Duration::from_secs(20), "the webhook worker", || {
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stripe_sync webhook worker'", &[])
            .unwrap()
            .get(0);
        (n == 1).then_some(n)
    });
    assert_eq!(workers, 1);
    let fdw: i64 = c
        .query_one("SELECT count(*) FROM pg_foreign_data_wrapper WHERE fdwname = 'stripe_sync_fdw'", &[])
        .unwrap()
        .get(0);
    assert_eq!(fdw, 1);
    // pg_cron is preloaded beside it
    c.batch_execute("CREATE EXTENSION pg_cron").unwrap();
}

#[test]
fn loads_without_preload_and_has_no_worker() {
    let cluster = Cluster::start(ClusterConfig { preload: vec![], ..Default::default() });
    let mut c = cluster.connect_with_extension();
    let version: String = c.query_one("SELECT stripe_sync.version()", &[]).unwrap().get(0);
    assert!(version.split('.').count() == 3, "{version}");
    let preloaded: bool = c.query_one("SELECT stripe_sync._preloaded()", &[]).unwrap().get(0);
    assert!(!preloaded);
    c.batch_execute("LOAD 'stripe_sync'").unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stripe_sync webhook worker'", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[test]
fn the_worker_is_restarted_after_a_crash_and_stops_on_shutdown() {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect();
    let pid_of = |c: &mut postgres::Client| -> Option<i32> {
        c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'stripe_sync webhook worker'", &[])
            .unwrap()
            .map(|r| r.get(0))
    };
    let first = e2e::wait_for(Duration::from_secs(20), "the worker", || pid_of(&mut c));
    // SIGTERM ends it promptly; the postmaster starts it again after its restart time
    c.execute("SELECT pg_terminate_backend($1)", &[&first]).unwrap();
    let second =
        e2e::wait_for(Duration::from_secs(30), "the restarted worker", || pid_of(&mut c).filter(|p| *p != first));
    assert_ne!(first, second);
    assert!(!cluster.log().contains("PANIC"), "{}", cluster.log());
}

#[test]
fn dropping_a_cluster_removes_its_directory() {
    let dir = {
        let cluster = Cluster::start(ClusterConfig { preload: vec![], ..Default::default() });
        cluster.connect().batch_execute("SELECT 1").unwrap();
        cluster.dir.clone()
    };
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn a_bad_key_option_is_refused_without_echoing_it() {
    let cluster = Cluster::start(ClusterConfig { preload: vec![], ..Default::default() });
    let mut c = cluster.connect_with_extension();
    let err = c
        .batch_execute(
            "CREATE SERVER s FOREIGN DATA WRAPPER stripe_sync_fdw OPTIONS (api_key 'pk_test_SECRETVALUE1234567890')",
        )
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "HV024", "{db:?}"); // fdw_invalid_attribute_value
    let shown = format!("{db:?}");
    assert!(!shown.contains("SECRETVALUE"), "{shown}");
    assert!(db.hint().unwrap_or_default().contains("sk_"), "{db:?}");
    // Postgres itself logs the failing statement (log_min_error_statement); our
    // own messages must not carry the key
    let log = cluster.log();
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("SECRETVALUE") && !l.contains("STATEMENT:"))
        .map(|l| &l[..l.len().min(200)])
        .collect::<Vec<_>>();
    assert!(ours.is_empty(), "{ours:?}");
    let err =
        c.batch_execute("CREATE SERVER s FOREIGN DATA WRAPPER stripe_sync_fdw OPTIONS (colour 'red')").unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "HV00D"); // fdw_invalid_option_name
    assert!(db.hint().unwrap_or_default().contains("api_url"), "{db:?}");
}
