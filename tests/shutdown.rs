//! Shutdown: no wait for Stripe outlives a SIGTERM, and no row lock is held
//! while Stripe is asked.

use e2e::chaos::hooked;
use e2e::{Faults, SeedSpec, wait_for};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use stripe_core::signature;

/// A server that accepts connections and never answers: Stripe unreachable in
/// the worst way (a request waits for its whole timeout, then retries).
fn black_hole() -> (String, Arc<AtomicUsize>) {
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", hole.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hole.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (url, accepted)
}

/// The webhook worker waits for Stripe (an event rendered in another API version
/// is fetched again) and a detached refresh waits for it too, when the cluster
/// is stopped with `-m fast`: both workers end their waits at once.
#[test]
fn a_fast_shutdown_with_stripe_unreachable_completes_in_under_5_seconds() {
    let mut h = hooked(SeedSpec::scaled(5), Faults::default());
    let (url, accepted) = black_hole();
    let server: String =
        h.c.query_one("SELECT server_name FROM stripe_sync._sources WHERE name = 'default'", &[]).unwrap().get(0);
    h.c.batch_execute(&format!("ALTER SERVER {server} OPTIONS (SET api_url '{url}')")).unwrap();

    // 1. the webhook worker: applying this event needs a request
    let secret: String = h.c.query_one("SELECT secrets[1] FROM stripe_sync._webhooks", &[]).unwrap().get(0);
    let customer = h.fake.objects("customers")[0].clone();
    let body = serde_json::json!({
        "id": "evt_into_the_hole", "object": "event", "type": "customer.updated", "created": signature::unix_now(),
        "api_version": "2020-08-27", "data": {"object": customer},
    })
    .to_string();
    let sig = signature::header_for(body.as_bytes(), &secret, signature::unix_now());
    let said: String = h.c.query_one("SELECT stripe_sync.receive_webhook($1, $2)", &[&body, &sig]).unwrap().get(0);
    assert_eq!(said, "stored");
    wait_for(Duration::from_secs(30), "the webhook worker asking Stripe", || {
        (accepted.load(Ordering::SeqCst) >= 1).then_some(())
    });
    // the event was written before Stripe was asked, in a transaction that ended:
    // no lock is held on the row while the worker waits
    let mut other = h.cluster.connect();
    other.batch_execute("SET lock_timeout = '2s'").unwrap();
    let id = customer["id"].as_str().unwrap();
    let updated = other.execute("UPDATE stripe.customer SET name = name WHERE id = $1", &[&id]).unwrap();
    assert_eq!(updated, 1, "the row is not locked while the worker waits for Stripe");

    // 2. a detached refresh
    let before = accepted.load(Ordering::SeqCst);
    h.c.query("SELECT * FROM stripe_sync.refresh('customer', 'full', wait => false)", &[]).unwrap();
    wait_for(Duration::from_secs(30), "the refresh worker asking Stripe", || {
        (accepted.load(Ordering::SeqCst) > before).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let waiting: i64 = h
        .c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('stripe_sync webhook worker', 'stripe_sync refresh')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(waiting, 2, "both workers are running");

    let t = Instant::now();
    h.cluster.stop_fast();
    let took = t.elapsed();
    println!(
        "pg_ctl stop -m fast with the webhook worker and a refresh waiting for an unanswering Stripe ({} connections held): {:.2} s",
        accepted.load(Ordering::SeqCst),
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(5), "the fast shutdown took {took:?}");
    let log = h.cluster.log();
    assert!(!log.contains("terminated by signal"), "a process crashed:\n{log}");
}
