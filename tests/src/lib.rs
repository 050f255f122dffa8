//! End-to-end harness: a throwaway PostgreSQL 15 cluster, run as user `postgres`
//! on a free port with stripe_sync (and pg_cron) preloaded, plus the fake Stripe
//! on loopback. Everything is torn down when the handles drop, also when a test
//! fails (panics unwind through Drop).
//!
//! The extension must be installed into Debian's PostgreSQL 15 first
//! (`cargo pgrx install`; the README's test command does it).

use serde_json::Value;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use stripe_fake::objects::SeedSpec;
pub use stripe_fake::{Fake, Faults};

/// Debian's PostgreSQL 15 binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The key tests give to stripe_sync (any sk_test_ key works against the fake).
pub const TEST_KEY: &str = "sk_test_51E2eTestKey0000000000000000";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command as user `postgres` (Postgres refuses to run as root).
fn as_postgres(program: &str, args: &[&str]) -> Output {
    let path = format!("{PG_BIN}/{program}");
    let out = if is_root() {
        Command::new("runuser").arg("-u").arg("postgres").arg("--").arg(&path).args(args).output()
    } else {
        Command::new(&path).args(args).output()
    };
    out.unwrap_or_else(|e| panic!("cannot run {path}: {e}"))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn check(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// shared_preload_libraries; empty = nothing preloaded.
    pub preload: Vec<&'static str>,
    /// Extra `name = value` lines for postgresql.conf.
    pub settings: Vec<(String, String)>,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig { preload: vec!["stripe_sync", "pg_cron"], settings: Vec::new() }
    }
}

/// A running throwaway cluster; stopped and deleted on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    pub fn start(cfg: ClusterConfig) -> Cluster {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("stripe_sync_e2e_{}_{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        if is_root() {
            check(Command::new("chown").arg("postgres:postgres").arg(&dir).output().expect("chown"), "chown");
        }
        let data = dir.join("data");
        check(
            as_postgres(
                "initdb",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale",
                    "C",
                ],
            ),
            "initdb",
        );
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nlogging_collector = off\nmax_worker_processes = 16\n",
            dir.display()
        );
        if !cfg.preload.is_empty() {
            conf.push_str(&format!("shared_preload_libraries = '{}'\n", cfg.preload.join(",")));
        }
        if cfg.preload.contains(&"pg_cron") {
            conf.push_str("cron.database_name = 'postgres'\ncron.use_background_workers = on\n");
        }
        for (k, v) in &cfg.settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let conf_path = data.join("postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).expect("write conf");
        let cluster = Cluster { dir, port };
        cluster.pg_ctl_start();
        cluster
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn pg_ctl_start(&self) {
        let data = self.data_dir();
        let log = self.log_path();
        check(
            as_postgres(
                "pg_ctl",
                &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"],
            ),
            "pg_ctl start",
        );
    }

    /// Stops with `-m immediate` (a crash, as far as Postgres knows) and starts again.
    pub fn restart_immediate(&self) {
        let data = self.data_dir();
        check(as_postgres("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]), "pg_ctl stop");
        self.pg_ctl_start();
    }

    /// Stops with `-m fast` (what a service manager's stop does) and waits for it.
    pub fn stop_fast(&self) {
        let data = self.data_dir();
        check(
            as_postgres("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "-t", "120", "stop"]),
            "pg_ctl stop",
        );
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn connstr(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=10", self.port)
    }

    /// A new connection as the superuser.
    pub fn connect(&self) -> postgres::Client {
        self.connect_as("postgres")
    }

    /// A connection, or None while the cluster does not accept one (restarting).
    pub fn connect_opt(&self) -> Option<postgres::Client> {
        postgres::Client::connect(&self.connstr("postgres"), postgres::NoTls).ok()
    }

    pub fn connect_as(&self, user: &str) -> postgres::Client {
        let s = format!("host=127.0.0.1 port={} user={user} dbname=postgres connect_timeout=10", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match postgres::Client::connect(&s, postgres::NoTls) {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot connect to the test cluster: {e}\n{}", self.log()),
            }
        }
    }

    /// A connection with `CREATE EXTENSION stripe_sync` done.
    pub fn connect_with_extension(&self) -> postgres::Client {
        let mut c = self.connect();
        c.batch_execute("CREATE EXTENSION IF NOT EXISTS stripe_sync").expect("CREATE EXTENSION stripe_sync");
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = as_postgres("pg_ctl", &["-D", data.to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"]);
        if std::env::var_os("STRIPE_SYNC_KEEP_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Starts the fake Stripe on a free loopback port in the background.
pub fn start_fake(seed: Option<SeedSpec>, faults: Faults) -> Fake {
    Fake::start_background(0, seed, faults).expect("fake Stripe starts")
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fake's collection holding a resource's objects: its Stripe `object` type
/// in the plural (`invoiceitem` → `invoiceitems`), from the registry.
pub fn fake_collection(resource: &str) -> String {
    let r = stripe_core::resources::lookup(resource).unwrap_or_else(|e| panic!("{e}"));
    format!("{}s", r.object)
}

/// The objects of a resource the fake holds (complete, as stored); per-customer
/// objects only while they have a customer (payment methods: while attached).
pub fn fake_objects(fake: &Fake, resource: &str) -> Vec<serde_json::Value> {
    fake_objects_of(fake, None, resource)
}

/// [`fake_objects`] of a connected account (`None`: the platform's own).
pub fn fake_objects_of(fake: &Fake, account: Option<&str>, resource: &str) -> Vec<serde_json::Value> {
    let parent = stripe_core::resources::lookup(resource).ok().and_then(|r| r.parent());
    let collection = fake_collection(resource);
    let all = match account {
        Some(a) => fake.objects_of(a, &collection),
        None => fake.objects(&collection),
    };
    all.into_iter().filter(|o| parent.is_none_or(|p| o[p.column].is_string())).collect()
}

/// Connects a source named `name` to the fake (schema `stripe`, foreign tables in `stripe_api`).
pub fn add_source(c: &mut postgres::Client, fake: &Fake, name: &str, key: &str) {
    c.execute(
        "SELECT stripe_sync.add_source($1, name => $2, api_url => $3, max_requests_per_second => 1000)",
        &[&key, &name, &fake.url()],
    )
    .expect("add_source");
}

/// Private (anonymous) memory of a process, in kB: RssAnon. Unlike VmRSS it
/// leaves out the shared buffers a backend touches, which would count Postgres'
/// shared_buffers as the process's own.
pub fn private_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:").map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

/// Resets a process's peak resident memory (VmHWM) to its current size, so the
/// next reading is the peak of what came after (Linux `clear_refs` 5).
pub fn reset_peak_memory(pid: i32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Resident and peak memory of a process, in kB (VmRSS, VmHWM).
pub fn memory_kb(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0)))
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// How a materialized table differs from the fake's objects.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    /// In the fake, not in the table.
    pub missing: Vec<String>,
    /// In the table, not in the fake.
    pub extra: Vec<String>,
    /// In both, with different attrs.
    pub stale: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.stale.is_empty()
    }

    pub fn summary(&self) -> String {
        format!("{} missing / {} extra / {} stale", self.missing.len(), self.extra.len(), self.stale.len())
    }
}

/// Compares `schema.resource` with the fake's complete objects.
pub fn compare(c: &mut postgres::Client, fake: &Fake, schema: &str, resource: &str) -> Diff {
    compare_account(c, fake, None, schema, resource)
}

/// [`compare`] with a connected account's objects (`None`: the platform's own).
pub fn compare_account(
    c: &mut postgres::Client,
    fake: &Fake,
    account: Option<&str>,
    schema: &str,
    resource: &str,
) -> Diff {
    compare_rows(c, fake, account, resource, &format!("SELECT id, attrs FROM {schema}.{resource}"), &[])
}

/// [`compare_account`] for a table of a Connect source, which holds every
/// account: its rows whose `account` column is `account_id` against the fake's
/// objects of `account` (`None`: the platform's own).
pub fn compare_connect(
    c: &mut postgres::Client,
    fake: &Fake,
    account: Option<&str>,
    account_id: &str,
    schema: &str,
    resource: &str,
) -> Diff {
    let sql = format!("SELECT id, attrs FROM {schema}.{resource} WHERE account = $1");
    compare_rows(c, fake, account, resource, &sql, &[&account_id])
}

/// The rows `sql` returns (`id`, `attrs`) against the fake's objects of
/// `resource` in `account`.
fn compare_rows(
    c: &mut postgres::Client,
    fake: &Fake,
    account: Option<&str>,
    resource: &str,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Diff {
    let mut expected: std::collections::HashMap<String, serde_json::Value> = fake_objects_of(fake, account, resource)
        .into_iter()
        .map(|o| (o["id"].as_str().unwrap_or_default().to_string(), o))
        .collect();
    let mut d = Diff::default();
    for row in c.query(sql, params).expect("read the table") {
        let id: String = row.get(0);
        let attrs: serde_json::Value = row.get(1);
        match expected.remove(&id) {
            None => d.extra.push(id),
            Some(o) if o != attrs => d.stale.push(id),
            Some(_) => {}
        }
    }
    d.missing = expected.into_keys().collect();
    d
}

/// A call to the fake's API that must succeed.
pub fn call(fake: &Fake, method: &str, path: &str, body: &str) -> Value {
    let (status, v) = fake.call(method, path, body);
    assert_eq!(status, 200, "{method} {path} {body}: {v}");
    v
}

/// The `id` of an object.
pub fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// Creates, updates and deletes objects of most resources the way a Stripe user does.
pub fn mutate(fake: &Fake, round: u32) {
    let customers = fake.objects("customers");
    let c0 = id(&customers[0]);
    let c1 = id(&customers[1]);
    let gone = id(&customers[customers.len() - 1]);
    let new_c = call(fake, "POST", "/v1/customers", &format!("email=new{round}%40example.com&name=New+{round}"));
    call(fake, "POST", &format!("/v1/customers/{c0}"), &format!("name=Renamed+{round}&metadata[round]={round}"));
    call(fake, "DELETE", &format!("/v1/customers/{gone}"), "");
    call(fake, "POST", &format!("/v1/customers/{c1}/balance_transactions"), "amount=-500&currency=usd");
    let prod = call(fake, "POST", "/v1/products", &format!("name=Widget+{round}"));
    let price = call(
        fake,
        "POST",
        "/v1/prices",
        &format!("product={}&unit_amount=1500&currency=usd&recurring[interval]=month", id(&prod)),
    );
    call(fake, "POST", &format!("/v1/products/{}", id(&prod)), "description=Updated");
    let old_price = fake.objects("prices").into_iter().find(|p| p["active"] == true && p["id"] != price["id"]).unwrap();
    call(fake, "POST", &format!("/v1/prices/{}", id(&old_price)), "active=false");
    let sub =
        call(fake, "POST", "/v1/subscriptions", &format!("customer={}&items[0][price]={}", id(&new_c), id(&price)));
    call(fake, "POST", &format!("/v1/subscriptions/{}", id(&sub)), "metadata[tier]=gold");
    let live_sub =
        fake.objects("subscriptions").into_iter().find(|s| s["status"] == "active" && s["id"] != sub["id"]).unwrap();
    call(fake, "DELETE", &format!("/v1/subscriptions/{}", id(&live_sub)), "");
    let inv = call(fake, "POST", "/v1/invoices", &format!("customer={c0}"));
    for i in 0..12 {
        call(fake, "POST", "/v1/invoiceitems", &format!("customer={c0}&amount={}&invoice={}", 100 + i, id(&inv)));
    }
    call(fake, "POST", &format!("/v1/invoices/{}/finalize", id(&inv)), "");
    call(fake, "POST", &format!("/v1/invoices/{}/pay", id(&inv)), "");
    let draft = call(fake, "POST", "/v1/invoices", &format!("customer={c1}"));
    call(fake, "DELETE", &format!("/v1/invoices/{}", id(&draft)), "");
    let pending = call(fake, "POST", "/v1/invoiceitems", &format!("customer={c1}&amount=700&currency=usd"));
    let doomed = call(fake, "POST", "/v1/invoiceitems", &format!("customer={c1}&amount=800&currency=usd"));
    call(fake, "DELETE", &format!("/v1/invoiceitems/{}", id(&doomed)), "");
    let _ = pending;
    let ch = call(fake, "POST", "/v1/charges", &format!("amount=2500&currency=usd&customer={c1}"));
    call(fake, "POST", &format!("/v1/charges/{}", id(&ch)), "description=Updated+charge");
    call(fake, "POST", "/v1/refunds", &format!("charge={}&amount=1000", id(&ch)));
    let pm = call(fake, "POST", "/v1/payment_methods", "type=card&card[number]=4242424242424242");
    call(fake, "POST", &format!("/v1/payment_methods/{}/attach", id(&pm)), &format!("customer={c1}"));
    let attached =
        fake.objects("payment_methods").into_iter().find(|p| p["customer"].is_string() && p["id"] != pm["id"]).unwrap();
    call(fake, "POST", &format!("/v1/payment_methods/{}/detach", id(&attached)), "");
}

/// A connection that keeps every NOTICE and WARNING the server sends, as
/// `SEVERITY: message`.
pub fn connect_collecting_notices(
    cluster: &Cluster,
) -> (postgres::Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = notices.clone();
    let mut cfg: postgres::Config = cluster.connstr("postgres").parse().expect("connection string");
    cfg.notice_callback(move |n| {
        sink.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{}: {}", n.severity(), n.message()))
    });
    let c = cfg.connect(postgres::NoTls).expect("connect");
    (c, notices)
}

pub mod chaos;
