//! stripe_fake: a stateful fake of the Stripe API, for tests and benchmarks.
//!
//! It serves the list/retrieve/mutation endpoints stripe_sync uses with Stripe's
//! envelopes and errors, records an Event for every mutation, delivers signed
//! webhooks, and injects faults (latency, rate limits, 500s, dropped connections,
//! shuffled/duplicated/delayed deliveries) that tests can change while it runs.
//! It binds loopback only.
//!
//! - [`store`] — ordered collections and list paging.
//! - [`objects`] — object shapes and deterministic seeding.
//! - [`api`] — the Stripe endpoints.
//! - [`permissions`] — restricted keys: the permission each path needs.
//! - [`server`] — HTTP, authentication, faults, request counters, admin endpoints.
//! - [`webhooks`] — signing and delivery.
//! - [`connect`] — connected accounts, each with its own store (`Stripe-Account`).
//! - [`form`] — Stripe's bracket form encoding.

pub mod api;
pub mod connect;
pub mod form;
pub mod objects;
pub mod permissions;
pub mod server;
pub mod store;
pub mod webhooks;

use objects::{Rng, SeedSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use store::Store;

/// Faults and behaviour switches; all can be changed while the fake runs
/// (`Fake::set_faults`, or `POST /_fake/faults` with a JSON object of fields).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every API response, in milliseconds.
    pub latency_ms: u64,
    /// Requests per second before answering 429 `rate_limit` (0 = no limit).
    pub rate_limit: f64,
    /// Fraction of API requests answered 500.
    pub error_rate: f64,
    /// Fraction of API requests answered 429 regardless of the rate.
    pub rate_limited_rate: f64,
    /// Fraction of API requests whose connection is closed without an answer.
    pub drop_rate: f64,
    /// Keys answered 401 (e.g. a revoked key).
    pub bad_keys: Vec<String>,
    /// Collections (`customers`, `webhook_endpoints`, ...) that restricted keys
    /// (`rk_...`) may not use: 403 naming the permission.
    pub restricted_denied: Vec<String>,
    /// Restricted keys with a named set of permissions (`customer_read`,
    /// `webhook_write`, ...; see [`permissions`]): a request outside the set gets
    /// Stripe's 403. Keys not listed here may do everything.
    pub restricted_keys: BTreeMap<String, Vec<String>>,
    /// Path prefixes (`/v1/events`) answered 400 "Unrecognized request URL", as a
    /// Stripe-compatible server without that endpoint does.
    pub unsupported_paths: Vec<String>,
    /// Every webhook delivery waits this long first, in milliseconds.
    pub webhook_delay_ms: u64,
    /// Extra random delay per delivery in [0, n) ms: deliveries arrive out of order.
    pub webhook_shuffle_ms: u64,
    /// Fraction of deliveries sent twice.
    pub webhook_duplicate_rate: f64,
    /// First retry delay after a failed delivery (doubles each time).
    pub webhook_retry_base_ms: u64,
    /// Longest retry delay.
    pub webhook_retry_max_ms: u64,
    /// Attempts per delivery before giving up.
    pub webhook_max_attempts: u32,
    /// Deliveries in flight at once.
    pub webhook_concurrency: usize,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            latency_ms: 0,
            rate_limit: 0.0,
            error_rate: 0.0,
            rate_limited_rate: 0.0,
            drop_rate: 0.0,
            bad_keys: Vec::new(),
            restricted_denied: Vec::new(),
            restricted_keys: BTreeMap::new(),
            unsupported_paths: Vec::new(),
            webhook_delay_ms: 0,
            webhook_shuffle_ms: 0,
            webhook_duplicate_rate: 0.0,
            webhook_retry_base_ms: 200,
            webhook_retry_max_ms: 5_000,
            webhook_max_attempts: 30,
            webhook_concurrency: 64,
        }
    }
}

/// Counters for tests.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// API requests answered or dropped, faults included.
    pub requests_total: u64,
    /// By `METHOD /path` (no query string).
    pub by_path: BTreeMap<String, u64>,
    /// By status code (0 = dropped connection).
    pub by_status: BTreeMap<u16, u64>,
    /// `METHOD /path?query` of the latest requests (at most [`Stats::LOG_MAX`]).
    pub log: Vec<String>,
}

impl DeliveryLog {
    /// No delivery is waiting or being retried.
    pub fn settled(&self) -> bool {
        self.succeeded + self.gave_up >= self.queued
    }
}

impl Stats {
    pub const LOG_MAX: usize = 100_000;

    /// Logged requests whose `METHOD /path?query` starts with `prefix`.
    pub fn matching(&self, prefix: &str) -> Vec<&String> {
        self.log.iter().filter(|l| l.starts_with(prefix)).collect()
    }
}

/// Webhook delivery counters and, per event id, whether a delivery got a 2xx.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DeliveryLog {
    /// Deliveries queued (duplicates included); each ends as succeeded or gave_up.
    pub queued: u64,
    pub attempts: u64,
    pub succeeded: u64,
    pub failed_attempts: u64,
    pub gave_up: u64,
    /// Event ids that received a 2xx from the endpoint at least once.
    pub acknowledged: Vec<String>,
}

/// Shared state of a running fake.
pub struct Inner {
    pub store: Mutex<Store>,
    pub faults: RwLock<Faults>,
    pub stats: Mutex<Stats>,
    pub rng: Mutex<Rng>,
    fault_seq: AtomicU64,
    pub limiter: Mutex<(f64, Instant)>,
    /// Idempotency-Key → (request fingerprint, status, body).
    pub idempotency: Mutex<HashMap<String, (String, u16, String)>>,
    pub deliveries: Mutex<DeliveryLog>,
    pub delivery_tx: tokio::sync::mpsc::UnboundedSender<webhooks::Delivery>,
    pub http: reqwest::Client,
    pub started: Instant,
}

impl Inner {
    /// A uniform random number in [0, 1) for fault decisions.
    pub fn roll(&self) -> f64 {
        let n = self.fault_seq.fetch_add(1, Ordering::Relaxed);
        let mut r = Rng::new(n.wrapping_mul(0x2545_f491_4f6c_dd1d));
        (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn faults(&self) -> Faults {
        self.faults.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A running fake Stripe. Dropping the handle does not stop it; the runtime does.
#[derive(Clone)]
pub struct Fake {
    pub inner: Arc<Inner>,
    pub addr: SocketAddr,
}

impl Fake {
    /// Starts the fake on `127.0.0.1:port` (0 = any free port) inside the current
    /// tokio runtime, seeded as `seed` describes.
    pub async fn start(port: u16, seed: Option<&SeedSpec>, faults: Faults) -> std::io::Result<Fake> {
        let mut store = Store::new();
        if let Some(spec) = seed {
            objects::seed(&mut store, spec);
            connect::seed(&mut store, spec);
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            store: Mutex::new(store),
            faults: RwLock::new(faults),
            stats: Mutex::new(Stats::default()),
            rng: Mutex::new(Rng::new(seed.map(|s| s.seed).unwrap_or(7) ^ 0xfeed)),
            fault_seq: AtomicU64::new(1),
            limiter: Mutex::new((f64::INFINITY, Instant::now())),
            idempotency: Mutex::new(HashMap::new()),
            deliveries: Mutex::new(DeliveryLog::default()),
            delivery_tx: tx,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .pool_max_idle_per_host(128)
                .build()
                .map_err(std::io::Error::other)?,
            started: Instant::now(),
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(webhooks::deliver_loop(inner.clone(), rx));
        tokio::spawn(server::serve(inner.clone(), listener));
        Ok(Fake { inner, addr })
    }

    /// Starts the fake on its own thread with its own runtime (for callers that
    /// are not async, like Postgres end-to-end tests).
    pub fn start_background(port: u16, seed: Option<SeedSpec>, faults: Faults) -> std::io::Result<Fake> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("stripe-fake".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let r = Fake::start(port, seed.as_ref(), faults).await;
                let ok = r.is_ok();
                let _ = tx.send(r);
                if ok {
                    std::future::pending::<()>().await;
                }
            });
        })?;
        rx.recv().map_err(std::io::Error::other)?
    }

    /// `http://127.0.0.1:port`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_faults(&self, f: Faults) {
        *self.inner.faults.write().unwrap_or_else(|p| p.into_inner()) = f;
    }

    pub fn faults(&self) -> Faults {
        self.inner.faults()
    }

    pub fn stats(&self) -> Stats {
        self.inner.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn reset_stats(&self) {
        *self.inner.stats.lock().unwrap_or_else(|p| p.into_inner()) = Stats::default();
    }

    pub fn deliveries(&self) -> DeliveryLog {
        self.inner.deliveries.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Number of objects in a collection (`customers`).
    pub fn count(&self, collection: &str) -> usize {
        self.inner.store.lock().unwrap_or_else(|p| p.into_inner()).col(collection).len()
    }

    /// Every object of a collection, complete (nested lists not truncated), newest first.
    pub fn objects(&self, collection: &str) -> Vec<Value> {
        self.inner.store.lock().unwrap_or_else(|p| p.into_inner()).col(collection).values().cloned().collect()
    }

    /// Writes a history of `n` `customer.updated` events over `[from, to]` (see
    /// `POST /_fake/history`); returns how many.
    pub fn backfill_updates(&self, n: usize, from: i64, to: i64) -> usize {
        let mut store = self.inner.store.lock().unwrap_or_else(|p| p.into_inner());
        webhooks::backfill_updates(&self.inner, &mut store, n, from, to)
    }

    /// The connected accounts' ids (`/v1/accounts` lists the same), in id order.
    pub fn connected_accounts(&self) -> Vec<String> {
        self.inner.store.lock().unwrap_or_else(|p| p.into_inner()).connected.keys().cloned().collect()
    }

    /// Every object of a connected account's collection, complete, newest first
    /// (empty for an unknown account).
    pub fn objects_of(&self, account: &str, collection: &str) -> Vec<Value> {
        let store = self.inner.store.lock().unwrap_or_else(|p| p.into_inner());
        store.connected.get(account).map(|s| s.col(collection).values().cloned().collect()).unwrap_or_default()
    }

    /// The connected account revokes the platform's access (see
    /// [`connect::deauthorize`]); false if it is not connected.
    pub fn deauthorize(&self, account: &str) -> bool {
        let mut store = self.inner.store.lock().unwrap_or_else(|p| p.into_inner());
        connect::deauthorize(&self.inner, &mut store, account)
    }

    /// [`Fake::call`] with `Stripe-Account: account`.
    pub fn call_as(&self, account: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
        let caller = api::Caller { stripe_account: Some(account.to_string()), ..api::Caller::default() };
        let (status, text) = api::handle(&self.inner, method, path, body, &caller);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Runs one API call in-process, as if it came over HTTP with a valid key:
    /// handy for tests that mutate state (`("POST", "/v1/customers", "email=a@b.c")`).
    pub fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (status, text) = api::handle(&self.inner, method, path, body, &api::Caller::default());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}
