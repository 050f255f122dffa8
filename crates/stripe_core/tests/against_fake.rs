//! The client, paginator and verifier against the fake Stripe on loopback.

use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;
use stripe_core::paginate::{CreatedRange, ListQuery, Pager};
use stripe_core::{ApiKey, Client, ClientConfig, StripeError, signature};
use stripe_fake::objects::SeedSpec;
use stripe_fake::{Fake, Faults};

const KEY: &str = "sk_test_4eC39HqLyjWDarjtT1zdp7dc";

fn client(fake: &Fake, key: &str) -> Client {
    let mut cfg = ClientConfig::new(ApiKey::new(key).unwrap());
    cfg.base_url = fake.url();
    cfg.max_requests_per_second = 0.0;
    cfg.initial_backoff = Duration::from_millis(1);
    cfg.max_backoff = Duration::from_millis(20);
    cfg.max_retries = 12;
    Client::new(cfg).unwrap()
}

fn ids(objs: &[Value]) -> Vec<String> {
    objs.iter().map(|o| o["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_through_10000_objects_returns_each_exactly_once() {
    let fake = Fake::start(0, Some(&SeedSpec::only_customers(10_000)), Faults::default()).await.unwrap();
    let c = client(&fake, KEY);
    let all = Pager::new(c.clone(), ListQuery::new("/v1/customers")).collect_all().await.unwrap();
    let got = ids(&all);
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(got.len(), 10_000);
    assert_eq!(unique.len(), 10_000);
    let expected: HashSet<String> = ids(&fake.objects("customers")).into_iter().collect();
    assert_eq!(unique.into_iter().cloned().collect::<HashSet<_>>(), expected);
    // newest first, like Stripe
    let created: Vec<i64> = all.iter().map(|o| o["created"].as_i64().unwrap()).collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]));
    assert_eq!(c.requests_sent(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_500s_429s_and_dropped_connections_to_completion() {
    let faults = Faults { error_rate: 0.2, rate_limited_rate: 0.2, drop_rate: 0.05, ..Faults::default() };
    let fake = Fake::start(0, Some(&SeedSpec::only_customers(3_000)), faults).await.unwrap();
    let c = client(&fake, KEY);
    let all = Pager::new(c.clone(), ListQuery::new("/v1/customers")).collect_all().await.unwrap();
    let unique: HashSet<String> = ids(&all).into_iter().collect();
    assert_eq!(all.len(), 3_000);
    assert_eq!(unique.len(), 3_000);
    let stats = fake.stats();
    let failed = stats.by_status.get(&500).copied().unwrap_or(0) + stats.by_status.get(&429).copied().unwrap_or(0);
    assert!(failed > 0, "faults were injected: {stats:?}");
    let retries = c.stats.retries.load(std::sync::atomic::Ordering::Relaxed);
    assert!(retries >= failed, "every failed answer was retried: {retries} < {failed}");
}

#[tokio::test]
async fn a_bad_key_gives_an_authentication_error_without_the_key() {
    let bad = "sk_test_REVOKEDKEY0000000000000001";
    let faults = Faults { bad_keys: vec![bad.to_string()], ..Faults::default() };
    let fake = Fake::start(0, Some(&SeedSpec::only_customers(5)), faults).await.unwrap();
    let err = client(&fake, bad).get("/v1/customers", &[]).await.unwrap_err();
    assert!(matches!(err, StripeError::Authentication { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("REVOKEDKEY000000000"), "{shown}");
    // not retried
    assert_eq!(fake.stats().requests_total, 1);
}

#[tokio::test]
async fn a_restricted_key_without_permission_names_the_resource() {
    let faults = Faults { restricted_denied: vec!["charges".into()], ..Faults::default() };
    let fake = Fake::start(0, Some(&SeedSpec::scaled(5)), faults).await.unwrap();
    let c = client(&fake, "rk_test_51RestrictedKey00000000aa");
    let err = c.get("/v1/charges", &[]).await.unwrap_err();
    assert!(matches!(&err, StripeError::Permission { path, .. } if path == "/v1/charges"), "{err:?}");
    assert!(err.to_string().contains("rak_charge_read"), "{err}");
    assert!(!err.to_string().contains("RestrictedKey00000000"), "{err}");
    assert!(c.get("/v1/customers", &[]).await.is_ok());
}

#[tokio::test]
async fn a_restricted_key_has_exactly_its_named_permissions() {
    let key = "rk_test_51NamedPermissions0000aa";
    let mut faults = Faults::default();
    let granted = ["customer_read", "invoice_read", "webhook_write"];
    faults.restricted_keys.insert(key.into(), granted.iter().map(|p| p.to_string()).collect());
    let fake = Fake::start(0, Some(&SeedSpec::scaled(5)), faults).await.unwrap();
    let c = client(&fake, key);
    // granted: reads, and read through write
    assert!(c.get("/v1/customers", &[]).await.is_ok());
    assert!(c.get("/v1/invoiceitems", &[]).await.is_ok());
    assert!(c.get("/v1/webhook_endpoints", &[]).await.is_ok());
    let cus = fake.objects("customers")[0]["id"].as_str().unwrap().to_string();
    assert!(c.get(&format!("/v1/customers/{cus}/balance_transactions"), &[]).await.is_ok());
    // outside the set: Stripe's 403, naming the rak_ permission; the registry names the Dashboard one
    for (path, rak, dashboard) in [
        ("/v1/credit_notes", "rak_credit_note_read", "Billing → Credit notes: Read"),
        ("/v1/events", "rak_event_read", "Core → Events: Read"),
        (&format!("/v1/customers/{cus}/payment_methods"), "rak_payment_method_read", "Core → Payment methods: Read"),
        ("/v1/refunds", "rak_charge_read", "Core → Charges and refunds: Read"),
    ] {
        let err = c.get(path, &[]).await.unwrap_err();
        let StripeError::Permission { message, path: p } = &err else { panic!("{path}: {err:?}") };
        assert!(message.contains("does not have the required permissions for this endpoint"), "{message}");
        assert!(message.contains(&format!("Having the '{rak}' permission would allow this request to continue")));
        assert!(!message.contains("NamedPermissions0000"), "{message}");
        assert_eq!(stripe_core::resources::permission_for_path(p), Some(dashboard), "{path}");
    }
    // read is not write
    let err = c.post("/v1/customers", &[("name".into(), "x".into())], None).await.unwrap_err();
    assert!(err.to_string().contains("rak_customer_write"), "{err}");
    // other restricted keys keep every permission
    assert!(client(&fake, "rk_test_51SomeOtherKey00000000aa").get("/v1/credit_notes", &[]).await.is_ok());
}

#[tokio::test]
async fn a_server_without_an_endpoint_answers_400() {
    let faults = Faults { unsupported_paths: vec!["/v1/events".into()], ..Faults::default() };
    let fake = Fake::start(0, Some(&SeedSpec::scaled(5)), faults).await.unwrap();
    let err = client(&fake, KEY).get("/v1/events", &[]).await.unwrap_err();
    assert!(matches!(&err, StripeError::InvalidRequest { status: 400, .. }) && err.is_refused(), "{err:?}");
}

#[tokio::test]
async fn retrieve_is_none_only_for_resource_missing() {
    let fake = Fake::start(0, Some(&SeedSpec::only_customers(3)), Faults::default()).await.unwrap();
    let c = client(&fake, KEY);
    let id = ids(&fake.objects("customers"))[0].clone();
    assert_eq!(c.retrieve(&format!("/v1/customers/{id}")).await.unwrap().unwrap()["id"], id.as_str());
    assert!(c.retrieve("/v1/customers/cus_doesnotexist").await.unwrap().is_none());
    // a wrong path is a 404 without resource_missing: still "not found", but on a
    // URL that is not an object path; a 400 is an error, and not retried
    let err = c.get("/v1/customers", &[("limit".into(), "1000".into())]).await.unwrap_err();
    assert!(matches!(&err, StripeError::InvalidRequest { status: 400, param: Some(p), .. } if p == "limit"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_created_slices_return_the_same_set_as_one_sequential_pass() {
    let fake = Fake::start(0, Some(&SeedSpec::only_customers(5_000)), Faults::default()).await.unwrap();
    let c = client(&fake, KEY);
    let sequential: HashSet<String> =
        ids(&Pager::new(c.clone(), ListQuery::new("/v1/customers")).collect_all().await.unwrap()).into_iter().collect();
    let spec = SeedSpec::only_customers(0);
    let slices = CreatedRange::split(spec.anchor - spec.years * 365 * 86_400 - 10, spec.anchor + 10, 8);
    let tasks: Vec<_> = slices
        .into_iter()
        .map(|r| tokio::spawn(Pager::new(c.clone(), ListQuery::new("/v1/customers").created(r)).collect_all()))
        .collect();
    let mut concurrent = Vec::new();
    for t in tasks {
        concurrent.extend(ids(&t.await.unwrap().unwrap()));
    }
    let unique: HashSet<String> = concurrent.iter().cloned().collect();
    assert_eq!(concurrent.len(), unique.len(), "no object twice");
    assert_eq!(unique, sequential);
}

#[tokio::test]
async fn a_created_range_query_returns_exactly_the_objects_in_range() {
    let fake = Fake::start(0, Some(&SeedSpec::only_customers(2_000)), Faults::default()).await.unwrap();
    let c = client(&fake, KEY);
    let all = fake.objects("customers");
    let mut created: Vec<i64> = all.iter().map(|o| o["created"].as_i64().unwrap()).collect();
    created.sort();
    let (lo, hi) = (created[500], created[1200]);
    let range = CreatedRange { gt: Some(lo), lte: Some(hi), ..Default::default() };
    let got: HashSet<String> =
        ids(&Pager::new(c, ListQuery::new("/v1/customers").created(range)).collect_all().await.unwrap())
            .into_iter()
            .collect();
    let expected: HashSet<String> = all
        .iter()
        .filter(|o| {
            let t = o["created"].as_i64().unwrap();
            t > lo && t <= hi
        })
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, expected);
    assert!(!got.is_empty());
}

#[tokio::test]
async fn posts_are_idempotent_under_one_key() {
    let fake = Fake::start(0, None, Faults::default()).await.unwrap();
    let c = client(&fake, KEY);
    let form = vec![("email".to_string(), "a@example.com".to_string())];
    let a = c.post("/v1/customers", &form, Some("key-1")).await.unwrap();
    let b = c.post("/v1/customers", &form, Some("key-1")).await.unwrap();
    assert_eq!(a["id"], b["id"]);
    assert_eq!(fake.count("customers"), 1);
    let other = vec![("email".to_string(), "b@example.com".to_string())];
    let err = c.post("/v1/customers", &other, Some("key-1")).await.unwrap_err();
    assert!(err.to_string().contains("same parameters"), "{err}");
}

#[tokio::test]
async fn the_client_rate_limit_keeps_the_fake_from_answering_429() {
    let faults = Faults { rate_limit: 40.0, ..Faults::default() };
    let fake = Fake::start(0, Some(&SeedSpec::only_customers(3_000)), faults).await.unwrap();
    let mut cfg = ClientConfig::new(ApiKey::new(KEY).unwrap());
    cfg.base_url = fake.url();
    cfg.max_requests_per_second = 30.0;
    let c = Client::new(cfg).unwrap();
    let pages = ListQuery { limit: 50, ..ListQuery::new("/v1/customers") };
    let all = Pager::new(c, pages).collect_all().await.unwrap();
    assert_eq!(all.len(), 3_000);
    let stats = fake.stats();
    assert_eq!(stats.by_status.get(&429), None, "{stats:?}");
    assert_eq!(stats.requests_total, 60);
}

/// Reads one HTTP request from a raw socket: (headers, body).
async fn read_request(stream: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
            }
            return (head, buf[end + 4..end + 4 + len].to_vec());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_delivered_by_the_fake_verifies_with_the_core_verifier() {
    use tokio::io::AsyncWriteExt;
    let fake = Fake::start(0, None, Faults::default()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook/default", listener.local_addr().unwrap());
    let c = client(&fake, KEY);
    let form = vec![
        ("url".to_string(), url),
        ("enabled_events[]".to_string(), "customer.created".to_string()),
        ("enabled_events[]".to_string(), "customer.updated".to_string()),
    ];
    let ep = c.post("/v1/webhook_endpoints", &form, None).await.unwrap();
    let secret = ep["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    // the secret is only shown at creation
    let again = c.get(&format!("/v1/webhook_endpoints/{}", ep["id"].as_str().unwrap()), &[]).await.unwrap();
    assert!(again.get("secret").is_none());
    // product events are not subscribed: only the customer event arrives
    c.post("/v1/products", &[("name".into(), "Widget".into())], None).await.unwrap();
    let cus = c.post("/v1/customers", &[("email".into(), "hook@example.com".into())], None).await.unwrap();

    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
    let (head, body) = read_request(&mut stream).await;
    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.unwrap();
    let sig = head
        .lines()
        .find_map(|l| l.strip_prefix("Stripe-Signature: ").or_else(|| l.strip_prefix("stripe-signature: ")))
        .expect("signed")
        .to_string();
    assert!(sig.contains(",v0="), "test-mode noise signature present: {sig}");
    let t = signature::verify(&body, &sig, &[secret.as_str()], 300, signature::unix_now()).unwrap();
    assert!((signature::unix_now() - t).abs() < 60);
    assert!(signature::verify(&body, &sig, &["whsec_wrong"], 300, signature::unix_now()).is_err());
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["type"], "customer.created");
    assert_eq!(event["data"]["object"]["id"], cus["id"]);
    assert_eq!(event["object"], "event");
    // and the same event is in /v1/events
    let events = c.get("/v1/events", &[("type".into(), "customer.*".into())]).await.unwrap();
    assert_eq!(events["data"][0]["id"], event["id"]);
}

#[tokio::test]
async fn create_endpoint_refuses_wildcards_other_than_star() {
    let fake = Fake::start(0, None, Faults::default()).await.unwrap();
    let c = client(&fake, KEY);
    let form = vec![
        ("url".to_string(), "http://127.0.0.1:1/x".to_string()),
        ("enabled_events[]".to_string(), "customer.*".to_string()),
    ];
    let err = c.post("/v1/webhook_endpoints", &form, None).await.unwrap_err();
    assert!(matches!(&err, StripeError::InvalidRequest { param: Some(p), .. } if p == "enabled_events"), "{err:?}");
}

mod sync_passes {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use stripe_core::sync::{self, FullPass, Msg};

    fn drain(rx: std::sync::mpsc::Receiver<sync::MsgResult>) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Ok(m) = rx.recv() {
            out.push(m.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_pass_in_split_ranges_lists_every_object_once_and_covers_the_whole_range() {
        let fake = Fake::start(0, Some(&SeedSpec::only_customers(6_000)), Faults::default()).await.unwrap();
        let c = client(&fake, KEY);
        let r = stripe_core::lookup("customer").unwrap();
        // a bound ahead of the clock, as the refresh sets it
        let hi = signature::unix_now() + 86_400;
        let (tx, rx) = sync_channel(8);
        let pass = FullPass { resource: r, lo: 0, hi, done: vec![], parallelism: 8 };
        let producer = tokio::spawn(sync::full_pass(c.clone(), pass, tx));
        let msgs = tokio::task::spawn_blocking(move || drain(rx)).await.unwrap();
        producer.await.unwrap();
        let mut listed = Vec::new();
        let mut ranges = Vec::new();
        // a complete pass says so, last
        assert!(matches!(msgs.last(), Some(Msg::End)), "the pass ends with its end marker");
        for m in msgs {
            match m {
                Msg::Objects { objects, .. } => listed.extend(ids(&objects)),
                Msg::RangeDone { lo, hi, seen, .. } => ranges.push((lo, hi, seen)),
                Msg::End => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let unique: HashSet<String> = listed.iter().cloned().collect();
        let expected: HashSet<String> = ids(&fake.objects("customers")).into_iter().collect();
        assert_eq!(unique, expected);
        assert!(listed.len() < expected.len() + 50, "few duplicates: {}", listed.len());
        assert!(ranges.len() > 4, "the pass was split: {} ranges", ranges.len());
        ranges.sort_by_key(|r| r.0);
        assert_eq!(ranges.first().unwrap().0, 0);
        assert_eq!(ranges.last().unwrap().1, hi);
        for w in ranges.windows(2) {
            assert_eq!(w[0].1 + 1, w[1].0, "ranges are contiguous and disjoint");
        }
        // every object is in the seen set of the range holding its created time
        for o in fake.objects("customers") {
            let t = o["created"].as_i64().unwrap();
            let r = ranges.iter().find(|r| r.0 <= t && t <= r.1).unwrap();
            assert!(r.2.iter().any(|id| id == o["id"].as_str().unwrap()));
        }
        println!("{} requests for 60 pages of customers in {} ranges", c.requests_sent(), ranges.len());
    }

    /// A resource with no more objects than a page costs one request per list
    /// variant (no probes): 5 customers, and 100 (a full page, no more), each in
    /// one request; 101 take the split path and still list each object.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_pass_over_at_most_a_page_of_objects_is_one_request() {
        for (n, at_most) in [(5usize, 1u64), (100, 1), (101, 40)] {
            let fake = Fake::start(0, Some(&SeedSpec::only_customers(n)), Faults::default()).await.unwrap();
            let c = client(&fake, KEY);
            let r = stripe_core::lookup("customer").unwrap();
            let hi = signature::unix_now() + 86_400;
            let (tx, rx) = sync_channel(8);
            let pass = FullPass { resource: r, lo: 0, hi, done: vec![], parallelism: 8 };
            let producer = tokio::spawn(sync::full_pass(c.clone(), pass, tx));
            let msgs = tokio::task::spawn_blocking(move || drain(rx)).await.unwrap();
            producer.await.unwrap();
            assert!(matches!(msgs.last(), Some(Msg::End)), "the pass ends with its end marker");
            let mut listed = HashSet::new();
            let mut covered = Vec::new();
            for m in msgs {
                match m {
                    Msg::Objects { objects, .. } => listed.extend(ids(&objects)),
                    Msg::RangeDone { lo, hi, seen, .. } => {
                        covered.push((lo, hi));
                        for id in seen {
                            assert!(listed.contains(&id), "{id} seen but not sent");
                        }
                    }
                    Msg::End => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            let expected: HashSet<String> = ids(&fake.objects("customers")).into_iter().collect();
            assert_eq!(listed, expected, "{n} customers");
            covered.sort_unstable();
            assert_eq!((covered.first().unwrap().0, covered.last().unwrap().1), (0, hi));
            let requests = c.requests_sent();
            println!("full pass over {n} customers: {requests} requests, {} ranges", covered.len());
            assert!(requests <= at_most, "{n} customers: {requests} requests");
            if n <= 100 {
                assert_eq!(covered, vec![(0, hi)], "one range, the whole one");
            }
        }
    }

    /// A catch-up over 30,000 events, most of them packed in one hour of a
    /// seven-day window (with a busy second of 700): every event arrives once,
    /// oldest first in Stripe's order, in messages of at most 250, with about
    /// one request per 100 events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_events_catch_up_streams_every_event_once_oldest_first_whatever_their_density() {
        let fake = Fake::start(0, Some(&SeedSpec::only_customers(200)), Faults::default()).await.unwrap();
        let now = signature::unix_now();
        let since = now - 7 * 86_400;
        fake.backfill_updates(5_000, since, now - 3_600);
        fake.backfill_updates(24_300, now - 3_600, now - 60);
        fake.backfill_updates(700, now - 30, now - 30);
        let c = client(&fake, KEY);
        let r = stripe_core::lookup("customer").unwrap();
        // Stripe's order, oldest first: the list reversed
        let mut expected: Vec<String> = fake
            .objects("events")
            .into_iter()
            .filter(|e| e["created"].as_i64().unwrap() >= since)
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        expected.reverse();
        assert_eq!(expected.len(), 30_000);
        let (tx, rx) = sync_channel(8);
        let pass = sync::EventsPass { resource: r, types: vec!["customer.updated".into()], since, parallelism: 8 };
        let producer = tokio::spawn(sync::events_since(c.clone(), pass, tx));
        let msgs = tokio::task::spawn_blocking(move || drain(rx)).await.unwrap();
        producer.await.unwrap();
        assert!(matches!(msgs.last(), Some(Msg::End)), "the pass ends with its end marker");
        let mut got = Vec::new();
        let mut largest = 0;
        for m in msgs {
            match m {
                Msg::Events(events) => {
                    largest = largest.max(events.len());
                    got.extend(ids(&events));
                }
                Msg::End => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(largest <= 250, "messages of at most 250 events: {largest}");
        assert_eq!(got.len(), expected.len(), "each event once");
        assert!(got == expected, "oldest first, in Stripe's order within a second");
        let requests = c.requests_sent();
        println!("30,000 events in {requests} requests (300 pages of 100 at least)");
        assert!(requests < 300 + 150, "about one request per 100 events: {requests}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_pass_has_no_end_marker_and_a_scan_without_one_is_an_error() {
        let fake = Fake::start(0, Some(&SeedSpec::only_customers(300)), Faults::default()).await.unwrap();
        let c = client(&fake, KEY);
        let r = stripe_core::lookup("customer").unwrap();
        fake.set_faults(Faults { unsupported_paths: vec!["/v1/customers".into()], ..Faults::default() });
        let (tx, rx) = sync_channel(8);
        let pass = FullPass { resource: r, lo: 0, hi: 2_000_000_000, done: vec![], parallelism: 4 };
        tokio::spawn(sync::full_pass(c.clone(), pass, tx));
        let msgs: Vec<sync::MsgResult> =
            tokio::task::spawn_blocking(move || std::iter::from_fn(|| rx.recv().ok()).collect()).await.unwrap();
        assert!(msgs.iter().any(|m| m.is_err()));
        assert!(!msgs.iter().any(|m| matches!(m, Ok(Msg::End))));
        // a scan whose reading thread goes away without finishing is an error, not fewer rows
        fake.set_faults(Faults::default());
        let sel = stripe_core::plan::Selection::all(r);
        let mut stream = stripe_core::listing::ObjectStream::start(c.clone(), sel, 1, None, |job| {
            std::thread::spawn(move || {
                // the job is dropped unrun: its channel closes with no end marker
                drop(job);
            });
            Ok(())
        })
        .unwrap();
        let got = tokio::task::spawn_blocking(move || stream.next(Duration::from_millis(10), || {})).await.unwrap();
        assert!(matches!(got, Err(StripeError::Unfinished { .. })), "{got:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resumed_pass_lists_only_the_ranges_not_done() {
        let fake = Fake::start(0, Some(&SeedSpec::only_customers(2_000)), Faults::default()).await.unwrap();
        let c = client(&fake, KEY);
        let r = stripe_core::lookup("customer").unwrap();
        // a bound ahead of the clock, as the refresh sets it
        let hi = signature::unix_now() + 86_400;
        let mid = fake.objects("customers")[1000]["created"].as_i64().unwrap();
        let (tx, rx) = sync_channel(8);
        let pass = FullPass { resource: r, lo: 0, hi, done: vec![(mid, hi)], parallelism: 4 };
        tokio::spawn(sync::full_pass(c.clone(), pass, tx));
        let msgs = tokio::task::spawn_blocking(move || drain(rx)).await.unwrap();
        let listed: HashSet<String> = msgs
            .iter()
            .filter_map(|m| if let Msg::Objects { objects, .. } = m { Some(ids(objects)) } else { None })
            .flatten()
            .collect();
        let expected: HashSet<String> = fake
            .objects("customers")
            .iter()
            .filter(|o| o["created"].as_i64().unwrap() < mid)
            .map(|o| o["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(listed, expected);
    }

    #[tokio::test]
    async fn truncated_nested_lists_are_completed() {
        let fake = Fake::start(0, None, Faults::default()).await.unwrap();
        let c = client(&fake, KEY);
        let cus = c.post("/v1/customers", &[], None).await.unwrap();
        let cid = cus["id"].as_str().unwrap().to_string();
        let inv = c.post("/v1/invoices", &[("customer".into(), cid.clone())], None).await.unwrap();
        let iid = inv["id"].as_str().unwrap().to_string();
        for i in 0..35 {
            let form = vec![
                ("customer".into(), cid.clone()),
                ("amount".into(), (100 + i).to_string()),
                ("invoice".into(), iid.clone()),
            ];
            c.post("/v1/invoiceitems", &form, None).await.unwrap();
        }
        let mut got = c.get(&format!("/v1/invoices/{iid}"), &[]).await.unwrap();
        assert_eq!(got["lines"]["data"].as_array().unwrap().len(), 10);
        sync::complete_nested(&c, stripe_core::lookup("invoice").unwrap(), &mut got).await.unwrap();
        assert_eq!(got["lines"]["data"].as_array().unwrap().len(), 35);
        assert_eq!(got["lines"]["has_more"], false);
        let unique: HashSet<&str> =
            got["lines"]["data"].as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap()).collect();
        assert_eq!(unique.len(), 35);
    }
}
