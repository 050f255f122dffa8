//! Events catch-up after a long downtime: streamed in created slices, with
//! bounded memory, checkpointed as it goes, at the rate budget.

use e2e::{Cluster, ClusterConfig, Faults, SeedSpec, compare, private_kb, start_fake, wait_for};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use stripe_core::signature;

const KEY: &str = "sk_test_catchup_0000000000000000";

/// Events in the backlog (`STRIPE_SYNC_CATCHUP_EVENTS` to change).
fn backlog() -> usize {
    std::env::var("STRIPE_SYNC_CATCHUP_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000)
}

/// Samples the private memory of every refresh worker until stopped; the peak in kB.
fn watch_memory(cluster: &Cluster, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let connstr = cluster.connstr("postgres");
    std::thread::spawn(move || {
        let peak = AtomicU64::new(0);
        let mut c: Option<postgres::Client> = None;
        while !stop.load(Ordering::SeqCst) {
            if c.is_none() {
                c = postgres::Client::connect(&connstr, postgres::NoTls).ok();
            }
            let pids: Vec<i32> = match c
                .as_mut()
                .map(|c| c.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'stripe_sync refresh'", &[]))
            {
                Some(Ok(rows)) => rows.iter().map(|r| r.get(0)).collect(),
                _ => {
                    c = None;
                    Vec::new()
                }
            };
            for pid in pids {
                peak.fetch_max(private_kb(pid), Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        peak.load(Ordering::SeqCst)
    })
}

fn events_requests(fake: &e2e::Fake) -> u64 {
    fake.stats().by_path.get("GET /v1/events").copied().unwrap_or(0)
}

/// 200,000 `customer.updated` events over a week, more than 2,000 pages, read at
/// 100 ms per request with a budget of 80 requests/s: the worker's memory stays
/// flat, a worker killed (SIGKILL) halfway leaves a cursor from which the next
/// run re-reads little, and the rate is near the budget's ceiling.
#[test]
fn a_week_of_events_catches_up_in_bounded_memory_resumes_after_a_kill_and_runs_at_the_rate_budget() {
    let n = backlog();
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let fake = start_fake(Some(SeedSpec::only_customers(1_000)), Faults::default());
    c.execute("SELECT stripe_sync.add_source($1, api_url => $2, max_requests_per_second => 80)", &[&KEY, &fake.url()])
        .unwrap();
    c.query("SELECT * FROM stripe_sync.refresh('customer', 'full')", &[]).unwrap();
    // the worker was down for a week: the last refresh and the cursor are a week
    // old, and the backlog is every change since
    let now = signature::unix_now();
    let since = now - 7 * 86_400;
    c.execute(
        "UPDATE stripe_sync._sync_state SET events_cursor_created = $1, events_cursor_id = NULL WHERE resource = 'customer'",
        &[&since],
    )
    .unwrap();
    c.execute("UPDATE stripe.customer SET _stamp = $1", &[&since]).unwrap();
    assert_eq!(fake.backfill_updates(n, since + 1, now - 60), n);
    fake.set_faults(Faults { latency_ms: 100, ..Faults::default() });
    fake.reset_stats();
    let pages = n.div_ceil(100) as u64;

    // 1. a detached run, killed once the cursor is past half the window
    let stop = Arc::new(AtomicBool::new(false));
    let memory = watch_memory(&cluster, stop.clone());
    let started = Instant::now();
    c.query("SELECT * FROM stripe_sync.refresh('customer', 'events', wait => false)", &[]).unwrap();
    let half = since + 7 * 86_400 / 2;
    let pid: i32 = wait_for(Duration::from_secs(600), "the cursor past half the window", || {
        let r = c
            .query_one(
                "SELECT s.events_cursor_created, (SELECT pid FROM pg_stat_activity WHERE backend_type = 'stripe_sync refresh')
                 FROM stripe_sync._sync_state s WHERE resource = 'customer'",
                &[],
            )
            .ok()?;
        let (cursor, pid): (Option<i64>, Option<i32>) = (r.get(0), r.get(1));
        (cursor? > half).then_some(pid?)
    });
    let first_secs = started.elapsed().as_secs_f64();
    let log_before = cluster.log().len();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let first_pages = events_requests(&fake);
    // the postmaster resets every backend after a crash, then accepts connections again
    wait_for(Duration::from_secs(60), "the cluster back after the kill", || {
        cluster.log()[log_before..].contains("database system is ready to accept connections").then_some(())
    });
    let cursor_at_kill: i64 = wait_for(Duration::from_secs(60), "the cursor after the kill", || {
        let mut c = cluster.connect_opt()?;
        c.query_one("SELECT events_cursor_created FROM stripe_sync._sync_state WHERE resource = 'customer'", &[])
            .ok()
            .map(|r| r.get(0))
    });

    // 2. the next run goes on from the checkpointed cursor
    let mut c = cluster.connect();
    fake.reset_stats();
    let t = Instant::now();
    c.query("SELECT * FROM stripe_sync.refresh('customer', 'events')", &[]).unwrap();
    let second_secs = t.elapsed().as_secs_f64();
    let second_pages = events_requests(&fake);
    stop.store(true, Ordering::SeqCst);
    let peak_kb = memory.join().unwrap();

    let d = compare(&mut c, &fake, "stripe", "customer");
    assert!(d.is_empty(), "the table equals the fake after the catch-up: {}", d.summary());
    let done_in_first = (cursor_at_kill - since) as f64 / (7.0 * 86_400.0);
    let reread = (first_pages + second_pages).saturating_sub(pages);
    let rate = n as f64 * (1.0 - done_in_first) / second_secs;
    let ceiling = 80.0 * 100.0;
    println!(
        "events catch-up of {n} customer.updated events over 7 days ({pages} pages of 100 at 100 ms, budget 80 requests/s):\n  \
         run 1: {first_pages} pages in {first_secs:.1} s, SIGKILLed with the cursor {:.0}% through the window\n  \
         run 2: {second_pages} pages in {second_secs:.1} s, {rate:.0} events/s = {:.2} of the ceiling ({ceiling:.0} events/s)\n  \
         pages read beyond the {pages} needed: {reread} ({:.1}%)\n  \
         refresh worker peak private memory (RssAnon, sampled every 50 ms): {:.1} MB",
        done_in_first * 100.0,
        rate / ceiling,
        reread as f64 * 100.0 / pages as f64,
        peak_kb as f64 / 1024.0
    );
    assert!(first_pages + second_pages > 2_000 || n < 200_000, "more than 2,000 pages were read");
    assert!(peak_kb > 0, "the worker's memory was sampled");
    assert!(peak_kb < 100 * 1024, "the refresh worker stays under 100 MB: {peak_kb} kB");
    assert!((reread as f64) < 0.2 * pages as f64, "fewer than 20% of the pages are read again: {reread}");
}
