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
        format!(
            "{:<28} | {:<70} | {} | lost acknowledged events: {} | {}",
            self.scenario,
            self.injected,
            self.diff.summary(),
            self.lost,
            self.notes
        )
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

pub fn hooked(seed: SeedSpec, faults: Faults) -> Hooked {
    let port = free_port();
    let cluster = Cluster::start(ClusterConfig {
        settings: vec![
            ("stripe_sync.webhook_listen".into(), format!("'127.0.0.1:{port}'")),
            ("stripe_sync.database".into(), "'postgres'".into()),
        ],
        ..Default::default()
    });
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
