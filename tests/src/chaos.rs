//! Fault scenarios, shared by `make chaos` (long) and the test command (short):
//! each injects faults, then compares every affected table with the fake.

use crate::{
    Cluster, ClusterConfig, Diff, Fake, Faults, SeedSpec, TEST_KEY, add_source, compare, free_port, start_fake,
};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use stripe_core::resources::RESOURCES;
use stripe_core::signature;

/// What a scenario did and found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: String,
    pub injected: String,
    pub diff: Diff,
    /// Events Stripe got a 2xx for that are not in the inbox.
    pub lost: usize,
    pub notes: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.diff.is_empty() && self.lost == 0
    }

    pub fn line(&self) -> String {
        let mut line = format!(
            "{:<28} | {:<70} | {} | lost acknowledged events: {} | {}",
            self.scenario,
            self.injected,
            self.diff.summary(),
            self.lost,
            self.notes
        );
        // which rows, when something differs (a few of each)
        for (what, ids) in [("missing", &self.diff.missing), ("extra", &self.diff.extra), ("stale", &self.diff.stale)] {
            if !ids.is_empty() {
                line.push_str(&format!(" | {what}: {:?}", ids.iter().take(5).collect::<Vec<_>>()));
            }
        }
        line
    }
}

fn merge(into: &mut Diff, d: Diff) {
    into.missing.extend(d.missing);
    into.extra.extend(d.extra);
    into.stale.extend(d.stale);
}

/// A cluster with a listening worker, a source on the fake, full tables and an endpoint.
pub struct Hooked {
    pub cluster: Cluster,
    pub c: postgres::Client,
    pub fake: Fake,
    pub port: u16,
}

/// A cluster whose webhook worker listens on a free port: (cluster, port).
pub fn listening_cluster() -> (Cluster, u16) {
    let port = free_port();
    let cluster = Cluster::start(ClusterConfig {
        settings: vec![
            ("stripe_sync.webhook_listen".into(), format!("'127.0.0.1:{port}'")),
            ("stripe_sync.database".into(), "'postgres'".into()),
        ],
        ..Default::default()
    });
    (cluster, port)
}

pub fn hooked(seed: SeedSpec, faults: Faults) -> Hooked {
    let (cluster, port) = listening_cluster();
    let mut c = cluster.connect_with_extension();
    let fake = start_fake(Some(seed), faults);
    add_source(&mut c, &fake, "default", TEST_KEY);
    c.query("SELECT * FROM stripe_sync.refresh('all', 'full')", &[]).expect("first full refresh");
    let url = format!("http://127.0.0.1:{port}/webhook/default");
    c.query_one("SELECT stripe_sync.create_webhook($1)", &[&url]).expect("create_webhook");
    std::thread::sleep(Duration::from_millis(1500));
    Hooked { cluster, c, fake, port }
}

impl Hooked {
    /// Waits for every delivery to end and the inbox to be applied.
    pub fn settle(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let settled = self.fake.deliveries().settled();
            let pending: Option<i64> = self
                .c
                .query_one("SELECT count(*) FROM stripe_sync._inbox WHERE status = 'pending'", &[])
                .ok()
                .map(|r| r.get(0));
            if settled && pending == Some(0) {
                return;
            }
            if pending.is_none() {
                // the connection died with a restart: reconnect
                std::thread::sleep(Duration::from_millis(500));
                self.c = self.cluster.connect();
            }
            assert!(Instant::now() < deadline, "deliveries did not settle");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Acknowledged events missing from the inbox.
    pub fn lost(&mut self) -> usize {
        let acked: HashSet<String> = self.fake.deliveries().acknowledged.into_iter().collect();
        let stored: HashSet<String> =
            self.c.query("SELECT event_id FROM stripe_sync._inbox", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        acked.difference(&stored).count()
    }

    pub fn worker_pid(&mut self) -> Option<i32> {
        self.c
            .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'stripe_sync webhook worker'", &[])
            .ok()
            .flatten()
            .map(|r| r.get(0))
    }
}

/// Mutates customers (creates, updates, deletes, balance changes) `n` times.
pub fn churn(fake: &Fake, n: usize, tag: &str) {
    let customers: Vec<String> =
        fake.objects("customers").iter().map(|o| o["id"].as_str().unwrap().to_string()).collect();
    let mut created: Vec<String> = Vec::new();
    for i in 0..n {
        match i % 10 {
            0 => {
                let (_, v) = fake.call("POST", "/v1/customers", &format!("email={tag}{i}%40example.com"));
                if let Some(id) = v["id"].as_str() {
                    created.push(id.to_string());
                }
            }
            7 => {
                let _ = fake.call(
                    "POST",
                    &format!("/v1/customers/{}/balance_transactions", customers[i % customers.len()]),
                    "amount=-100&currency=usd",
                );
            }
            9 => {
                if let Some(v) = created.pop() {
                    let _ = fake.call("DELETE", &format!("/v1/customers/{v}"), "");
                }
            }
            k => {
                let target = if k % 2 == 0 && !created.is_empty() {
                    created[i % created.len()].clone()
                } else {
                    customers[i % customers.len()].clone()
                };
                let _ =
                    fake.call("POST", &format!("/v1/customers/{target}"), &format!("name={tag}{i}&metadata[i]={i}"));
            }
        }
    }
}

/// Full refreshes of every resource while Stripe answers 20% 500s, 10% 429s and
/// drops 5% of connections.
pub fn refresh_under_faults(customers: usize) -> Outcome {
    let cluster = Cluster::start(ClusterConfig::default());
    let mut c = cluster.connect_with_extension();
    let faults = Faults { error_rate: 0.2, rate_limited_rate: 0.1, drop_rate: 0.05, ..Faults::default() };
    let fake = start_fake(Some(SeedSpec::scaled(customers)), faults);
    add_source(&mut c, &fake, "default", TEST_KEY);
    let t = Instant::now();
    c.query("SELECT * FROM stripe_sync.refresh('all', 'full')", &[]).expect("refresh under faults");
    let mut diff = Diff::default();
    for r in RESOURCES {
        merge(&mut diff, compare(&mut c, &fake, "stripe", r.name));
    }
    let st = fake.stats();
    Outcome {
        scenario: "refresh under faults".into(),
        injected: format!("20% 500s, 10% 429s, 5% dropped connections; {} customers, all 15 resources", customers),
        diff,
        lost: 0,
        notes: format!(
            "{} requests, {} answered 500, {} answered 429, {} dropped; {:.1} s",
            st.requests_total,
            st.by_status.get(&500).copied().unwrap_or(0),
            st.by_status.get(&429).copied().unwrap_or(0),
            st.by_status.get(&0).copied().unwrap_or(0),
            t.elapsed().as_secs_f64()
        ),
    }
}

/// Deliveries shuffled, duplicated and delayed, with Postgres restarted
/// (`-m immediate`) twice while changes stream in.
pub fn webhooks_with_restarts(changes: usize) -> Outcome {
    let faults = Faults {
        webhook_delay_ms: 50,
        webhook_shuffle_ms: 300,
        webhook_duplicate_rate: 0.5,
        webhook_retry_base_ms: 200,
        webhook_retry_max_ms: 2_000,
        ..Faults::default()
    };
    let mut h = hooked(SeedSpec::scaled(100), faults);
    let fake = h.fake.clone();
    let burst = std::thread::spawn(move || {
        for part in 0..3 {
            churn(&fake, changes / 3, &format!("w{part}x"));
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1200));
        h.cluster.restart_immediate();
    }
    burst.join().unwrap();
    h.c = h.cluster.connect();
    h.settle(Duration::from_secs(300));
    let diff = compare(&mut h.c, &h.fake, "stripe", "customer");
    let lost = h.lost();
    let d = h.fake.deliveries();
    Outcome {
        scenario: "webhooks + 2 restarts".into(),
        injected: format!(
            "{changes} changes; deliveries delayed 50 ms, shuffled 300 ms, 50% duplicated; 2 x pg_ctl restart -m immediate"
        ),
        diff,
        lost,
        notes: format!("{} deliveries, {} failed attempts retried", d.queued, d.failed_attempts),
    }
}

/// The webhook worker killed with SIGKILL while it stores and applies.
pub fn worker_sigkill(changes: usize) -> Outcome {
    let faults = Faults { webhook_retry_base_ms: 200, webhook_retry_max_ms: 2_000, ..Faults::default() };
    let mut h = hooked(SeedSpec::scaled(100), faults);
    let fake = h.fake.clone();
    let burst = std::thread::spawn(move || churn(&fake, changes, "k"));
    std::thread::sleep(Duration::from_millis(800));
    let pid = h.worker_pid().expect("the worker runs");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    burst.join().unwrap();
    // the postmaster resets every backend after a crash: reconnect
    std::thread::sleep(Duration::from_secs(2));
    h.c = h.cluster.connect();
    h.settle(Duration::from_secs(300));
    let diff = compare(&mut h.c, &h.fake, "stripe", "customer");
    let lost = h.lost();
    let new_pid = h.worker_pid();
    Outcome {
        scenario: "worker SIGKILL mid-batch".into(),
        injected: format!("{changes} changes; kill -9 of the webhook worker (pid {pid})"),
        diff,
        lost,
        notes: format!(
            "worker back as pid {:?}; {} failed delivery attempts retried",
            new_pid,
            h.fake.deliveries().failed_attempts
        ),
    }
}

fn attack(port: u16, kind: usize, seed: u64, secret: &str, replay: &str) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let now = signature::unix_now();
    let req = match kind % 6 {
        // random bytes
        0 => (0..256).map(|i| ((seed.wrapping_mul(6364136223846793005).wrapping_add(i) >> 24) & 0xff) as u8).collect::<Vec<u8>>(),
        // a forged signature
        1 => {
            let body = r#"{"id":"evt_forged","object":"event","type":"customer.updated","created":1,"data":{"object":{"id":"cus_x","object":"customer"}}}"#;
            format!("POST /webhook/default HTTP/1.1\r\nhost: x\r\nstripe-signature: t={now},v1={}\r\ncontent-length: {}\r\n\r\n{body}", "ab".repeat(32), body.len()).into_bytes()
        }
        // a replay of a real delivery, long after it was signed
        2 => {
            let header = signature::header_for(replay.as_bytes(), secret, now - 7200);
            format!("POST /webhook/default HTTP/1.1\r\nhost: x\r\nstripe-signature: {header}\r\ncontent-length: {}\r\n\r\n{replay}", replay.len()).into_bytes()
        }
        // a huge header
        3 => format!("POST /webhook/default HTTP/1.1\r\nhost: x\r\nx-junk: {}\r\ncontent-length: 2\r\n\r\n{{}}", "a".repeat(200_000)).into_bytes(),
        // a truncated body
        4 => b"POST /webhook/default HTTP/1.1\r\nhost: x\r\nstripe-signature: t=1,v1=00\r\ncontent-length: 5000\r\n\r\n{\"id\":".to_vec(),
        // a slow client: a few header bytes, then silence
        _ => {
            let _ = s.write_all(b"POST /webhook/default HT");
            std::thread::sleep(Duration::from_millis(1500));
            return;
        }
    };
    let _ = s.write_all(&req);
    let mut buf = [0u8; 512];
    let _ = s.read(&mut buf);
}

/// Random and adversarial requests at the webhook port while normal traffic flows.
pub fn adversarial(secs: u64, changes: usize) -> Outcome {
    let mut h = hooked(SeedSpec::scaled(50), Faults::default());
    let pid_before = h.worker_pid();
    let secret: String = h.c.query_one("SELECT secrets[1] FROM stripe_sync._webhooks", &[]).unwrap().get(0);
    let replay = r#"{"id":"evt_replayed","object":"event","type":"customer.updated","created":1,"data":{"object":{"id":"cus_x","object":"customer","name":"Replayed"}}}"#.to_string();
    let port = h.port;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let attackers: Vec<_> = (0..6)
        .map(|k| {
            let (secret, replay) = (secret.clone(), replay.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    attack(port, k + n as usize, n, &secret, &replay);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let fake = h.fake.clone();
    let normal = std::thread::spawn(move || {
        let per = (changes / (secs.max(1) as usize)).max(1);
        while Instant::now() < deadline {
            churn(&fake, per, "adv");
            std::thread::sleep(Duration::from_millis(1000));
        }
    });
    let sent: u64 = attackers.into_iter().map(|a| a.join().unwrap()).sum();
    normal.join().unwrap();
    h.settle(Duration::from_secs(120));
    let diff = compare(&mut h.c, &h.fake, "stripe", "customer");
    let lost = h.lost();
    let replayed: i64 =
        h.c.query_one("SELECT count(*) FROM stripe_sync._inbox WHERE event_id IN ('evt_forged', 'evt_replayed')", &[])
            .unwrap()
            .get(0);
    let pid_after = h.worker_pid();
    let crashed = pid_before != pid_after || h.cluster.log().contains("terminated by signal");
    let mut diff = diff;
    if replayed > 0 || crashed {
        diff.extra.push(format!("forged/replayed stored: {replayed}, worker crashed: {crashed}"));
    }
    Outcome {
        scenario: "adversarial requests".into(),
        injected: format!(
            "{secs} s of random bytes, forged signatures, replays, 200 kB headers, truncated bodies, slow clients (6 threads)"
        ),
        diff,
        lost,
        notes: format!("{sent} hostile requests; worker pid {pid_before:?} -> {pid_after:?}"),
    }
}

/// Mixed changes for `secs`, with events refreshes every few seconds; reports the
/// worker's RSS trend.
pub fn soak(secs: u64) -> Outcome {
    let faults = Faults { webhook_shuffle_ms: 200, webhook_duplicate_rate: 0.2, ..Faults::default() };
    let mut h = hooked(SeedSpec::scaled(100), faults);
    let worker = h.worker_pid().expect("worker");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let fake = h.fake.clone();
    let load = std::thread::spawn(move || {
        let mut round = 0;
        while Instant::now() < deadline {
            churn(&fake, 200, &format!("soak{round}x"));
            round += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut rss = Vec::new();
    let mut refreshes = 0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(3));
        let _ = h.c.query("SELECT * FROM stripe_sync.refresh('customer', 'events')", &[]);
        refreshes += 1;
        rss.push(crate::private_kb(worker));
    }
    load.join().unwrap();
    h.settle(Duration::from_secs(120));
    let diff = compare(&mut h.c, &h.fake, "stripe", "customer");
    let lost = h.lost();
    let q = (rss.len() / 4).max(1);
    let first: f64 = rss.iter().take(q).sum::<u64>() as f64 / q as f64;
    let last: f64 = rss.iter().rev().take(q).sum::<u64>() as f64 / q as f64;
    Outcome {
        scenario: "soak".into(),
        injected: format!(
            "{secs} s of mixed changes, 20% duplicated, shuffled; events refresh every 3 s ({refreshes} runs)"
        ),
        diff,
        lost,
        notes: format!(
            "worker private memory (RssAnon) first quarter {:.1} MB, last quarter {:.1} MB",
            first / 1024.0,
            last / 1024.0
        ),
    }
}

/// A small seeded generator (xorshift64*), so a failing seed replays the same choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() { None } else { Some(&v[self.below(v.len() as u64) as usize]) }
    }
}

/// One account of the fake as its owner reaches it: the platform's own (`None`)
/// or a connected one.
#[derive(Clone, Copy)]
pub struct At<'a> {
    pub fake: &'a Fake,
    pub account: Option<&'a str>,
}

impl At<'_> {
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        match self.account {
            Some(a) => self.fake.call_as(a, method, path, body),
            None => self.fake.call(method, path, body),
        }
    }

    fn objects(&self, collection: &str) -> Vec<serde_json::Value> {
        match self.account {
            Some(a) => self.fake.objects_of(a, collection),
            None => self.fake.objects(collection),
        }
    }
}

fn ids_of(at: At, collection: &str, keep: impl Fn(&serde_json::Value) -> bool) -> Vec<String> {
    at.objects(collection).iter().filter(|o| keep(o)).filter_map(|o| o["id"].as_str().map(str::to_string)).collect()
}

/// One random change at the fake, the way a Stripe user makes them; returns what it did.
fn random_change(at: At, rng: &mut Rng, step: usize) -> String {
    let post = |path: &str, body: &str| at.call("POST", path, body).1;
    let customers = ids_of(at, "customers", |_| true);
    let Some(cus) = rng.pick(&customers).cloned() else {
        post("/v1/customers", &format!("name=c{step}"));
        return "create a customer".into();
    };
    match rng.below(12) {
        0 => {
            post("/v1/customers", &format!("email=d{step}%40example.com&name=New+{step}"));
            "create a customer".into()
        }
        1 => {
            // A, B, A: the newest version has the content of an older one
            let a = format!("Flip+{step}");
            post(&format!("/v1/customers/{cus}"), &format!("name={a}"));
            post(&format!("/v1/customers/{cus}"), &format!("name=Flop+{step}"));
            post(&format!("/v1/customers/{cus}"), &format!("name={a}"));
            format!("rename {cus} A, B, A")
        }
        2 => {
            // an identical re-update (no change at Stripe), then a real one
            let name = at.objects("customers").into_iter().find(|c| c["id"] == cus.as_str()).map(|c| c["name"].clone());
            let same = name.and_then(|n| n.as_str().map(str::to_string)).unwrap_or_default();
            post(&format!("/v1/customers/{cus}"), &format!("name={}", same.replace(' ', "+")));
            post(&format!("/v1/customers/{cus}"), &format!("metadata[step]={step}"));
            format!("re-update {cus} identically, then change its metadata")
        }
        3 => {
            // preferably a customer with payment methods: they go with it
            let with_pm = ids_of(at, "payment_methods", |p| p["customer"].is_string());
            let victim = rng
                .pick(&with_pm)
                .and_then(|pm| at.objects("payment_methods").into_iter().find(|p| p["id"] == pm.as_str()))
                .and_then(|p| p["customer"].as_str().map(str::to_string))
                .unwrap_or(cus);
            at.call("DELETE", &format!("/v1/customers/{victim}"), "");
            format!("delete customer {victim} (with its payment methods)")
        }
        4 => {
            // attach, detach, attach, detach: stops after a random number of moves
            let pm = post("/v1/payment_methods", "type=card&card[number]=4242424242424242");
            let pm = pm["id"].as_str().unwrap_or_default().to_string();
            let moves = 1 + rng.below(4);
            for k in 0..moves {
                if k % 2 == 0 {
                    post(&format!("/v1/payment_methods/{pm}/attach"), &format!("customer={cus}"));
                } else {
                    post(&format!("/v1/payment_methods/{pm}/detach"), "");
                }
            }
            format!("payment method {pm}: {moves} attach/detach moves on {cus}")
        }
        5 => {
            let products = ids_of(at, "products", |_| true);
            match rng.pick(&products) {
                Some(p) if rng.below(2) == 0 => {
                    post(&format!("/v1/products/{p}"), &format!("description=d{step}"));
                    format!("update product {p}")
                }
                _ => {
                    let p = post("/v1/products", &format!("name=P{step}"));
                    let pid = p["id"].as_str().unwrap_or_default().to_string();
                    post("/v1/prices", &format!("product={pid}&unit_amount={}&currency=usd", 100 + step));
                    format!("create product {pid} with a price")
                }
            }
        }
        6 => {
            let prices = ids_of(at, "prices", |_| true);
            let Some(p) = rng.pick(&prices) else { return "no price".into() };
            let active = if rng.below(2) == 0 { "true" } else { "false" };
            post(&format!("/v1/prices/{p}"), &format!("active={active}"));
            format!("set price {p} active={active}")
        }
        7 => {
            let subs = ids_of(at, "subscriptions", |s| s["status"] == "active");
            match (rng.below(3), rng.pick(&subs)) {
                (0, Some(s)) => {
                    at.call("DELETE", &format!("/v1/subscriptions/{s}"), "");
                    format!("cancel subscription {s}")
                }
                (1, Some(s)) => {
                    post(&format!("/v1/subscriptions/{s}"), &format!("metadata[step]={step}"));
                    format!("update subscription {s}")
                }
                _ => {
                    let prices = ids_of(at, "prices", |p| p["active"] == true && p["recurring"].is_object());
                    let Some(price) = rng.pick(&prices) else { return "no recurring price".into() };
                    let s = post("/v1/subscriptions", &format!("customer={cus}&items[0][price]={price}"));
                    format!("subscribe {cus}: {}", s["id"])
                }
            }
        }
        8 => {
            // an invoice with more than 10 lines, then paid or deleted as a draft
            let inv = post("/v1/invoices", &format!("customer={cus}"));
            let iid = inv["id"].as_str().unwrap_or_default().to_string();
            for i in 0..12 {
                post("/v1/invoiceitems", &format!("customer={cus}&amount={}&currency=usd&invoice={iid}", 100 + i));
            }
            if rng.below(2) == 0 {
                at.call("DELETE", &format!("/v1/invoices/{iid}"), "");
                format!("invoice {iid} with 12 lines deleted as a draft")
            } else {
                post(&format!("/v1/invoices/{iid}/finalize"), "");
                post(&format!("/v1/invoices/{iid}/pay"), "");
                format!("invoice {iid} with 12 lines paid")
            }
        }
        9 => {
            let ch = post("/v1/charges", &format!("amount={}&currency=usd&customer={cus}", 1000 + step));
            let chid = ch["id"].as_str().unwrap_or_default().to_string();
            if rng.below(2) == 0 {
                post("/v1/refunds", &format!("charge={chid}&amount=100"));
            }
            format!("charge {chid} (maybe refunded)")
        }
        10 => {
            let items = ids_of(at, "invoiceitems", |i| i["invoice"].is_null());
            match (rng.below(3), rng.pick(&items)) {
                (0, Some(i)) => {
                    at.call("DELETE", &format!("/v1/invoiceitems/{i}"), "");
                    format!("delete pending invoice item {i}")
                }
                (1, Some(i)) => {
                    post(&format!("/v1/invoiceitems/{i}"), &format!("description=d{step}"));
                    format!("update pending invoice item {i}")
                }
                _ => {
                    post("/v1/invoiceitems", &format!("customer={cus}&amount=700&currency=usd"));
                    format!("pending invoice item for {cus}")
                }
            }
        }
        _ => {
            post(&format!("/v1/customers/{cus}/balance_transactions"), "amount=-250&currency=usd");
            format!("balance transaction of {cus}")
        }
    }
}

/// The differential runs' deliveries: delayed, shuffled within 400 ms, 30%
/// duplicated, retried quickly.
fn shuffled_deliveries() -> Faults {
    Faults {
        webhook_delay_ms: 20,
        webhook_shuffle_ms: 400,
        webhook_duplicate_rate: 0.3,
        webhook_retry_base_ms: 200,
        webhook_retry_max_ms: 2_000,
        ..Faults::default()
    }
}

/// The seeded randomized differential run: random changes at the fake (identical
/// re-updates, A-B-A renames, attach/detach cycles, invoices of 12 lines paid or
/// deleted, customers deleted with their payment methods, ...), webhook
/// deliveries delayed, shuffled and duplicated, refreshes of random resources in
/// all three modes, the webhook worker SIGKILLed and Postgres restarted at random
/// steps. Then, once deliveries settle: every table that webhooks keep complete
/// equals the fake and no event is pending or failed; after a final
/// `refresh('all', 'events')`, all 15 tables equal the fake. Replay a failing
/// seed with `make chaos ARGS="--seed N"`.
pub fn differential(seed: u64, steps: usize) -> Outcome {
    let faults = shuffled_deliveries();
    let mut h = hooked(SeedSpec { seed, ..SeedSpec::scaled(30) }, faults);
    let mut rng = Rng::new(seed);
    let modes = ["full", "incremental", "events"];
    let (mut changes, mut refreshes, mut kills, mut restarts) = (0, 0, 0, 0);
    let mut last = String::new();
    for step in 0..steps {
        match rng.below(100) {
            0..=64 => {
                last = random_change(At { fake: &h.fake, account: None }, &mut rng, step);
                changes += 1;
            }
            65..=84 => {
                let r = &RESOURCES[rng.below(RESOURCES.len() as u64) as usize];
                let mode = modes[rng.below(3) as usize];
                // a refresh may find the worker's catch-up running (55P03), or
                // lose its connection to a restart: both are fine here
                if h.c.query("SELECT * FROM stripe_sync.refresh($1, $2)", &[&r.name, &mode]).is_err() {
                    h.c = reconnect(&h.cluster);
                }
                refreshes += 1;
            }
            85..=93 => std::thread::sleep(Duration::from_millis(rng.below(400))),
            94..=96 => {
                if let Some(pid) = h.worker_pid() {
                    let log_before = h.cluster.log().len();
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    crate::wait_for(Duration::from_secs(60), "the cluster back after the kill", || {
                        h.cluster.log()[log_before..].contains("ready to accept connections").then_some(())
                    });
                    h.c = reconnect(&h.cluster);
                    kills += 1;
                }
            }
            _ => {
                h.cluster.restart_immediate();
                h.c = reconnect(&h.cluster);
                restarts += 1;
            }
        }
    }
    h.settle(Duration::from_secs(300));
    let mut diff = Diff::default();
    let stuck: i64 =
        h.c.query_one("SELECT count(*) FROM stripe_sync._inbox WHERE status IN ('pending', 'failed')", &[])
            .unwrap()
            .get(0);
    let mut tag = |d: Diff, r: &str, when: &str| {
        let name = |ids: Vec<String>| ids.into_iter().map(|i| format!("{r}:{i} ({when})")).collect::<Vec<_>>();
        diff.missing.extend(name(d.missing));
        diff.extra.extend(name(d.extra));
        diff.stale.extend(name(d.stale));
    };
    // what webhooks alone keep complete
    let mut why = String::new();
    for r in RESOURCES.iter().filter(|r| r.events_complete) {
        let d = compare(&mut h.c, &h.fake, "stripe", r.name);
        if let Some(id) = d.stale.first().or(d.extra.first()).or(d.missing.first()) {
            why = explain_stale(&mut h.c, &h.fake, r.name, id);
        }
        tag(d, r.name, "webhooks");
    }
    h.c.query("SELECT * FROM stripe_sync.refresh('all', 'events')", &[]).expect("the final events refresh");
    for r in RESOURCES {
        tag(compare(&mut h.c, &h.fake, "stripe", r.name), r.name, "after refresh('all','events')");
    }
    if stuck > 0 {
        diff.extra.push(format!("{stuck} inbox events still pending or failed"));
    }
    let lost = h.lost();
    Outcome {
        scenario: format!("differential seed {seed}"),
        injected: format!(
            "{steps} steps: {changes} changes, {refreshes} refreshes, {kills} worker SIGKILLs, {restarts} restarts; deliveries shuffled 400 ms, 30% duplicated"
        ),
        diff,
        lost,
        notes: format!(
            "deliveries: {} queued, {} given up; last change: {last}; replay: make chaos ARGS=\"--seed {seed} --steps {steps}\"{why}",
            h.fake.deliveries().queued,
            h.fake.deliveries().gave_up
        ),
    }
}

/// The seeded randomized differential run of a Connect platform: random changes
/// in the platform and in random connected accounts (as in [`differential`]),
/// accounts connected, updated and revoked while it runs, webhook deliveries of
/// both endpoints delayed, shuffled and duplicated, and refreshes of random
/// resources in all three modes, of every account or of one (a revoked one
/// too). Then, once deliveries settle: the tables webhooks keep complete, and
/// the platform's `account` list, equal the fake account by account; every
/// revoked account is `revoked` in `sync_status`; no event is pending or
/// failed. After a final `refresh('all', 'events')` all 15 tables equal the
/// fake, account by account, and no account is left `connected` (waiting for a
/// first refresh). Replay a failing seed with `make chaos ARGS="--connect-seed N"`.
pub fn connect_differential(seed: u64, steps: usize) -> Outcome {
    use stripe_fake::connect::PLATFORM_ID;
    let faults = shuffled_deliveries();
    let mut spec = SeedSpec { seed, ..SeedSpec::scaled(10) };
    spec.accounts = 0;
    spec.connected = vec![20, 1, 2, 3, 1, 2];
    let (cluster, port) = listening_cluster();
    let mut c = cluster.connect_with_extension();
    let fake = start_fake(Some(spec), faults);
    c.execute(
        "SELECT stripe_sync.add_source($1, api_url => $2, max_requests_per_second => 1000, connected_accounts => true)",
        &[&TEST_KEY, &fake.url()],
    )
    .expect("add a Connect source");
    c.query("SELECT * FROM stripe_sync.refresh('all', 'full')", &[]).expect("first full refresh");
    let url = format!("http://127.0.0.1:{port}/webhook/default");
    c.query_one("SELECT stripe_sync.create_webhook($1)", &[&url]).expect("create_webhook");
    std::thread::sleep(Duration::from_millis(1500));
    let mut h = Hooked { cluster, c, fake, port };
    let mut rng = Rng::new(seed);
    let modes = ["full", "incremental", "events"];
    let (mut changes, mut refreshes, mut connected, mut updated) = (0, 0, 0, 0);
    let mut revoked: Vec<String> = Vec::new();
    let mut last = String::new();
    for step in 0..steps {
        let accounts = h.fake.connected_accounts();
        match rng.below(100) {
            0..=59 => {
                // the platform a third of the time, else a connected account
                let account = if rng.below(3) == 0 { None } else { rng.pick(&accounts).map(String::as_str) };
                let did = random_change(At { fake: &h.fake, account }, &mut rng, step);
                last = format!("{}: {did}", account.unwrap_or("platform"));
                changes += 1;
            }
            60..=63 => {
                let (status, a) = h.fake.call("POST", "/v1/accounts", &format!("email=new{step}%40example.com"));
                last = format!("connect a new account ({status}): {}", a["id"]);
                connected += 1;
            }
            64..=66 if accounts.len() > 2 => {
                let a = rng.pick(&accounts).cloned().unwrap_or_default();
                h.fake.deauthorize(&a);
                last = format!("{a} revokes access");
                revoked.push(a);
            }
            67..=70 => {
                let Some(a) = rng.pick(&accounts).cloned() else { continue };
                h.fake.call("POST", &format!("/v1/accounts/{a}"), &format!("email=u{step}%40example.com"));
                last = format!("update account {a}");
                updated += 1;
            }
            71..=89 => {
                let r = &RESOURCES[rng.below(RESOURCES.len() as u64) as usize];
                let mode = modes[rng.below(3) as usize];
                let known: Vec<String> = accounts.iter().chain(&revoked).cloned().collect();
                let one = if rng.below(10) < 3 { rng.pick(&known).cloned() } else { None };
                // a refresh may find the worker's catch-up running (55P03): fine here
                let sql = "SELECT * FROM stripe_sync.refresh($1, $2, account => $3)";
                if h.c.query(sql, &[&r.name, &mode, &one]).is_err() {
                    h.c = reconnect(&h.cluster);
                }
                refreshes += 1;
            }
            _ => std::thread::sleep(Duration::from_millis(rng.below(400))),
        }
    }
    h.settle(Duration::from_secs(300));
    let mut diff = Diff::default();
    let stuck: i64 =
        h.c.query_one("SELECT count(*) FROM stripe_sync._inbox WHERE status IN ('pending', 'failed')", &[])
            .unwrap()
            .get(0);
    let accounts = h.fake.connected_accounts();
    fn tag(diff: &mut Diff, d: Diff, who: &str, r: &str, when: &str) {
        let name = |ids: Vec<String>| ids.into_iter().map(|i| format!("{who} {r}:{i} ({when})")).collect::<Vec<_>>();
        diff.missing.extend(name(d.missing));
        diff.extra.extend(name(d.extra));
        diff.stale.extend(name(d.stale));
    }
    let compare_all = |c: &mut postgres::Client, fake: &Fake, keep: &dyn Fn(&str) -> bool| {
        let mut out = Vec::new();
        for r in RESOURCES.iter().filter(|r| keep(r.name)) {
            out.push((
                PLATFORM_ID.to_string(),
                r.name,
                crate::compare_connect(c, fake, None, PLATFORM_ID, "stripe", r.name),
            ));
            for a in accounts.iter().filter(|_| r.name != stripe_core::resources::CONNECTED_ACCOUNTS) {
                out.push((a.clone(), r.name, crate::compare_connect(c, fake, Some(a), a, "stripe", r.name)));
            }
        }
        out
    };
    // what webhooks alone keep complete, and the platform's list of accounts
    let by_webhooks = |name: &str| {
        name == stripe_core::resources::CONNECTED_ACCOUNTS
            || RESOURCES.iter().any(|r| r.name == name && r.events_complete)
    };
    for (who, r, d) in compare_all(&mut h.c, &h.fake, &by_webhooks) {
        tag(&mut diff, d, &who, r, "webhooks");
    }
    let state = |c: &mut postgres::Client, sql: &str, who: &[String]| -> i64 {
        c.query_one(sql, &[&who]).map(|r| r.get(0)).unwrap_or(-1)
    };
    let not_revoked = "SELECT count(*) FROM stripe_sync.sync_status WHERE account = ANY($1) AND status <> 'revoked'";
    let missing_revoked = "SELECT count(*) FROM unnest($1::text[]) a
                           WHERE NOT EXISTS (SELECT 1 FROM stripe_sync.sync_status s WHERE s.account = a)";
    for (sql, what) in
        [(not_revoked, "rows of revoked accounts not revoked"), (missing_revoked, "revoked accounts absent")]
    {
        let n = state(&mut h.c, sql, &revoked);
        if n != 0 {
            diff.extra.push(format!("{n} {what} in sync_status (webhooks)"));
        }
    }
    h.c.query("SELECT * FROM stripe_sync.refresh('all', 'events')", &[]).expect("the final events refresh");
    for (who, r, d) in compare_all(&mut h.c, &h.fake, &|_| true) {
        tag(&mut diff, d, &who, r, "after refresh('all','events')");
    }
    let n = state(&mut h.c, not_revoked, &revoked);
    if n != 0 {
        diff.extra.push(format!("{n} rows of revoked accounts not revoked in sync_status (after refresh)"));
    }
    let waiting = "SELECT count(*) FROM stripe_sync.sync_status WHERE account = ANY($1) AND status <> 'succeeded'";
    let n = state(&mut h.c, waiting, &accounts);
    if n != 0 {
        diff.extra.push(format!("{n} rows of connected accounts not succeeded after refresh('all','events')"));
    }
    if stuck > 0 {
        let which: Vec<String> =
            h.c.query(
                "SELECT type || ' ' || status || ': ' || coalesce(error, '') FROM stripe_sync._inbox
                 WHERE status IN ('pending', 'failed') ORDER BY created LIMIT 3",
                &[],
            )
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        diff.extra.push(format!("{stuck} inbox events still pending or failed: {which:?}"));
    }
    let lost = h.lost();
    Outcome {
        scenario: format!("connect differential seed {seed}"),
        injected: format!(
            "{steps} steps: {changes} changes in 7+ accounts, {connected} connected, {} revoked, {updated} updated, {refreshes} refreshes; deliveries shuffled 400 ms, 30% duplicated",
            revoked.len()
        ),
        diff,
        lost,
        notes: format!(
            "deliveries: {} queued, {} given up; last step: {last}; replay: make chaos ARGS=\"--connect-seed {seed} --steps {steps}\"",
            h.fake.deliveries().queued,
            h.fake.deliveries().gave_up
        ),
    }
}

/// Which fields of a stale (or extra) row differ from the fake, how the row was
/// written, and the object's last events.
fn explain_stale(c: &mut postgres::Client, fake: &Fake, resource: &str, id: &str) -> String {
    let (attrs, stamp, by): (serde_json::Value, i64, String) = match c
        .query_one(&format!("SELECT attrs, _stamp, _synced_by FROM stripe.{resource} WHERE id = $1"), &[&id])
    {
        Ok(row) => (row.get(0), row.get(1), row.get(2)),
        // a missing row: its tombstone, if any
        Err(_) => {
            let tomb: Option<i64> = c
                .query_opt("SELECT stamp FROM stripe_sync._deleted WHERE resource = $1 AND id = $2", &[&resource, &id])
                .ok()
                .flatten()
                .map(|r| r.get(0));
            (serde_json::Value::Null, tomb.unwrap_or(0), "(no row; _stamp is its tombstone's)".into())
        }
    };
    let truth = crate::fake_objects(fake, resource).into_iter().find(|o| o["id"] == id).unwrap_or_default();
    let fields: Vec<String> = truth
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| attrs.get(k.as_str()) != Some(*v))
                .map(|(k, v)| format!("{k}: row {} fake {v}", attrs[k.as_str()]))
                .collect()
        })
        .unwrap_or_default();
    // the object's last events at the fake, and what the inbox did with them
    let mut events: Vec<serde_json::Value> =
        fake.objects("events").into_iter().filter(|e| e["data"]["object"]["id"] == id).take(6).collect();
    events.reverse();
    let history: Vec<String> = events
        .iter()
        .map(|e| {
            let eid = e["id"].as_str().unwrap_or_default();
            let inbox: Vec<String> = c
                .query(
                    "SELECT status || coalesce(' ' || error, '') FROM stripe_sync._inbox WHERE event_id = $1",
                    &[&eid],
                )
                .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                .unwrap_or_default();
            format!("{eid} {} created {} inbox {inbox:?}", e["type"], e["created"])
        })
        .collect();
    format!(
        " | {resource} {id}: _stamp {stamp}, _synced_by {by}; {}; events: {}",
        fields.join("; "),
        history.join(", ")
    )
}

fn reconnect(cluster: &Cluster) -> postgres::Client {
    crate::wait_for(Duration::from_secs(60), "a connection", || {
        let mut c = cluster.connect_opt()?;
        c.query_one("SELECT 1", &[]).ok().map(|_| c)
    })
}
