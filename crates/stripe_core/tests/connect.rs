//! Connect: connected accounts read at once through one client share its rate
//! budget fairly.

use std::sync::mpsc::sync_channel;
use std::time::Duration;
use stripe_core::sync::{self, FullPass, Msg};
use stripe_core::{ApiKey, Client, ClientConfig, signature};
use stripe_fake::objects::SeedSpec;
use stripe_fake::{Fake, Faults};

const KEY: &str = "sk_test_4eC39HqLyjWDarjtT1zdp7dc";

/// Lists an account's customers in a full pass; the number of objects listed.
async fn pass(c: Client, parallelism: usize) -> usize {
    let r = stripe_core::lookup("customer").unwrap();
    let hi = signature::unix_now() + 86_400;
    let (tx, rx) = sync_channel(8);
    let p = FullPass { resource: r, lo: 0, hi, done: vec![], parallelism };
    let producer = tokio::spawn(sync::full_pass(c, p, tx));
    let listed = tokio::task::spawn_blocking(move || {
        let mut n = 0;
        while let Ok(m) = rx.recv() {
            match m.expect("the pass") {
                Msg::Objects { objects, .. } => n += objects.len(),
                Msg::End => break,
                _ => {}
            }
        }
        n
    })
    .await
    .unwrap();
    producer.await.unwrap();
    listed
}

/// One huge account (6,000 customers, read by 32 fetchers, the default) and 30
/// small ones (one page each), read at once through one client at 20
/// requests/s: the accounts waiting take turns at the bucket, one request each,
/// so every small account is done while the huge one has made a small part of
/// its requests, not after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_account_does_not_starve_small_ones_sharing_the_rate_budget() {
    let mut seed = SeedSpec::only_customers(1);
    seed.connected = std::iter::once(6_000).chain(std::iter::repeat_n(1, 30)).collect();
    let fake = Fake::start(0, Some(&seed), Faults::default()).await.unwrap();
    let mut cfg = ClientConfig::new(ApiKey::new(KEY).unwrap());
    cfg.base_url = fake.url();
    cfg.max_requests_per_second = 20.0;
    let base = Client::new(cfg).unwrap();
    let mut accounts = fake.connected_accounts();
    accounts.sort_by_key(|a| fake.objects_of(a, "customers").len());
    let huge = accounts.pop().unwrap();
    assert_eq!(fake.objects_of(&huge, "customers").len(), 6_000);
    let huge_client = base.acting_as(Some(&huge)).unwrap().with_own_counters();
    let big = tokio::spawn(pass(huge_client.clone(), 32));
    // the huge account starts first, with its 8 fetchers
    tokio::time::sleep(Duration::from_millis(200)).await;
    let small: Vec<_> = accounts
        .iter()
        .map(|a| {
            let c = base.acting_as(Some(a)).unwrap().with_own_counters();
            let h = huge_client.clone();
            let expected = fake.objects_of(a, "customers").len();
            tokio::spawn(async move {
                let n = pass(c, 32).await;
                (n, expected, h.requests_sent())
            })
        })
        .collect();
    let mut huge_when_small_done = 0;
    for s in small {
        let (n, expected, huge_requests) = s.await.unwrap();
        assert_eq!(n, expected);
        huge_when_small_done = huge_when_small_done.max(huge_requests);
    }
    assert_eq!(big.await.unwrap(), 6_000);
    let huge_total = huge_client.requests_sent();
    println!(
        "30 small accounts done when the huge one had made {huge_when_small_done} of its {huge_total} requests (20 requests/s shared)"
    );
    assert!(
        huge_when_small_done * 2 < huge_total,
        "the small accounts waited for the huge one: {huge_when_small_done} of {huge_total}"
    );
}
