//! `make bench`: stripe_sync's speed and memory against fixed limits, measured in
//! one run on this machine: Stripe's rate limit, COPY of the same rows, and a
//! webhook load. Prints one table (benchmark, setting, figure, limit, ratio) and
//! writes it as Markdown and CSV, plus the data of the throughput plot.

use e2e::{Cluster, ClusterConfig, Faults, SeedSpec, TEST_KEY, free_port, private_kb, start_fake, wait_for};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stripe_core::signature;

/// A minimal HTTP/1.1 client on one kept-alive connection, as light as the C
/// load generators webhook servers are measured with: a request is one write
/// and its answer one or two reads, on the calling thread (no runtime beside it).
struct KeepAlive {
    addr: String,
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    fn connect(addr: &str) -> KeepAlive {
        let stream = std::net::TcpStream::connect(addr).expect("connect to the listener");
        stream.set_nodelay(true).unwrap();
        KeepAlive { addr: addr.to_string(), stream, buf: Vec::with_capacity(4096) }
    }

    /// POSTs a signed body; returns the status (0 when the connection failed).
    fn post(&mut self, path: &str, signature: &str, body: &str) -> u16 {
        use std::io::Read;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nStripe-Signature: {signature}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body.as_bytes());
        if self.stream.write_all(&req).is_err() {
            return 0;
        }
        // the head, then as much body as Content-Length says
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return 0,
                Ok(n) => n,
            };
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
            let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while self.buf.len() < end + 4 + len {
                match self.stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return 0,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
            return status;
        }
    }
}

struct Row {
    bench: String,
    setting: String,
    figure: f64,
    unit: String,
    limit: f64,
    goal: String,
}

impl Row {
    fn ratio(&self) -> f64 {
        if self.limit > 0.0 { self.figure / self.limit } else { 0.0 }
    }
}

struct Args {
    customers: usize,
    seq_customers: usize,
    invoices: usize,
    events: usize,
    clients: usize,
    memory_objects: usize,
    incremental_objects: usize,
    catchup_events: usize,
    vacuum_minutes: usize,
    connect_accounts: usize,
    connect_customers: usize,
    out: String,
    /// Only these sections (limit, engine, connect, webhooks, memory, incremental, catchup, vacuum); empty = all
    /// but vacuum, which takes `vacuum_minutes` on its own.
    only: Vec<String>,
}

impl Args {
    fn runs(&self, section: &str) -> bool {
        (self.only.is_empty() && section != "vacuum") || self.only.iter().any(|s| s == section)
    }
}

fn parse() -> Args {
    let mut a = Args {
        customers: 100_000,
        seq_customers: 20_000,
        invoices: 100_000,
        events: 200_000,
        clients: 64,
        memory_objects: 1_000_000,
        incremental_objects: 100_000,
        catchup_events: 200_000,
        vacuum_minutes: 10,
        connect_accounts: 1_000,
        connect_customers: 10,
        out: "bench/out".into(),
        only: Vec::new(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        let n = || v.replace('_', "").parse::<usize>().unwrap_or_else(|_| panic!("{} takes a number", argv[i]));
        match argv[i].as_str() {
            "--customers" => a.customers = n(),
            "--seq-customers" => a.seq_customers = n(),
            "--invoices" => a.invoices = n(),
            "--events" => a.events = n(),
            "--clients" => a.clients = n(),
            "--memory-objects" => a.memory_objects = n(),
            "--incremental-objects" => a.incremental_objects = n(),
            "--catchup-events" => a.catchup_events = n(),
            "--vacuum-minutes" => a.vacuum_minutes = n(),
            "--connect-accounts" => a.connect_accounts = n(),
            "--connect-customers" => a.connect_customers = n(),
            "--out" => a.out = v.clone(),
            "--only" => a.only = v.split(',').map(str::to_string).collect(),
            "--help" | "-h" => {
                println!(
                    "bench [--customers 100000] [--seq-customers 20000] [--invoices 100000] [--events 200000] [--clients 64] [--memory-objects 1000000] [--incremental-objects 100000] [--catchup-events 200000] [--vacuum-minutes 10] [--connect-accounts 1000] [--connect-customers 10] [--out bench/out] [--only limit,engine,connect,webhooks,memory,incremental,catchup,vacuum]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown option {other} (see --help)"),
        }
        i += 2;
    }
    a
}

fn source(c: &mut postgres::Client, url: &str, name: &str, rps: f64) {
    c.execute(
        "SELECT stripe_sync.add_source($1, name => $2, schema => $2, api_url => $3, max_requests_per_second => $4)",
        &[&TEST_KEY, &name, &url, &rps],
    )
    .expect("add_source");
}

fn refresh(c: &mut postgres::Client, resource: &str, mode: &str, source: &str) -> (f64, i64) {
    let t = Instant::now();
    let row = c
        .query_one("SELECT api_requests FROM stripe_sync.refresh($1, $2, $3)", &[&resource, &mode, &source])
        .expect("refresh");
    (t.elapsed().as_secs_f64(), row.get(0))
}

/// Single-row upserts per second, one transaction each, from `clients` pgbench
/// clients for `secs` seconds: the naive path the webhook path must beat. Rows
/// like a webhook's `customer.created` go into a copy of a materialized table.
fn single_row_floor(cluster: &Cluster, c: &mut postgres::Client, clients: usize, secs: u64) -> f64 {
    c.batch_execute("DROP TABLE IF EXISTS public.floor_customer; CREATE TABLE public.floor_customer (LIKE hooks.customer INCLUDING ALL)")
        .unwrap();
    let script = std::env::temp_dir().join(format!("stripe_sync_floor_{}.sql", std::process::id()));
    std::fs::write(
        &script,
        r#"\set n random(1, 1000000000)
INSERT INTO public.floor_customer AS t (id, created, email, name, attrs, _synced_at, _synced_by, _stamp, account)
VALUES ('cus_f' || :n, now(), 'b' || :n || '@example.com', 'Bench ' || :n,
        format('{"id":"cus_f%s","object":"customer","created":%s,"email":"b%s@example.com","name":"Bench %s","balance":0,"delinquent":false,"metadata":{}}',
               :n, extract(epoch FROM now())::bigint, :n, :n)::jsonb,
        now(), 'event:evt_f' || :n, extract(epoch FROM now())::bigint, 'acct_1FakePlatform0000')
ON CONFLICT (id, account) DO UPDATE SET attrs = EXCLUDED.attrs, _synced_at = EXCLUDED._synced_at,
    _synced_by = EXCLUDED._synced_by, _stamp = EXCLUDED._stamp
WHERE t._stamp < EXCLUDED._stamp;
"#,
    )
    .unwrap();
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/pgbench")
        .args(["-n", "-c", &clients.to_string(), "-j", "2", "-T", &secs.to_string(), "-f"])
        .arg(&script)
        .args(["-h", "127.0.0.1", "-p", &cluster.port.to_string(), "-U", "postgres", "postgres"])
        .output()
        .expect("pgbench");
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = ").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("pgbench printed no tps: {text}{}", String::from_utf8_lossy(&out.stderr)))
}

/// A detached refresh (`wait => false`, as the README advises for long runs: the
/// caller holds no snapshot, so VACUUM and pruning go on), timed until
/// `sync_status` shows it finished: (seconds, API requests).
fn refresh_detached(c: &mut postgres::Client, resource: &str, mode: &str, source: &str) -> (f64, i64) {
    let t = Instant::now();
    c.query("SELECT * FROM stripe_sync.refresh($1, $2, $3, wait => false)", &[&resource, &mode, &source])
        .expect("refresh");
    loop {
        let r = c
            .query_one(
                "SELECT status, api_requests FROM stripe_sync.sync_status WHERE source = $1 AND resource = $2",
                &[&source, &resource],
            )
            .expect("sync_status");
        match r.get::<_, Option<String>>(0).as_deref() {
            Some("running") | None => std::thread::sleep(Duration::from_millis(20)),
            Some("succeeded") => return (t.elapsed().as_secs_f64(), r.get::<_, Option<i64>>(1).unwrap_or(0)),
            Some(other) => panic!("the detached {mode} refresh of {resource} ended {other}"),
        }
    }
}

/// Peak growth of the refresh worker's private memory (kB, RssAnon sampled every 50 ms) while `f` runs.
fn with_worker_peak<T>(cluster: &Cluster, f: impl FnOnce() -> T + Send) -> (T, u64) {
    let mut watcher = cluster.connect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0u64;
        let mut base = 0u64;
        let mut pid = None;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            if pid.is_none()
                && let Ok(Some(r)) = watcher
                    .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'stripe_sync refresh'", &[])
            {
                pid = Some(r.get::<_, i32>(0));
            }
            if let Some(p) = pid {
                let anon = private_kb(p);
                if base == 0 && anon > 0 {
                    base = anon;
                }
                peak = peak.max(anon);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (base, peak)
    });
    let out = f();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (base, peak) = sampler.join().unwrap();
    (out, peak.saturating_sub(base))
}

fn main() {
    let a = parse();
    std::fs::create_dir_all(&a.out).expect("output folder");
    let mut rows: Vec<Row> = Vec::new();
    let mut sweep: Vec<(usize, f64)> = Vec::new();
    let cluster = Cluster::start(ClusterConfig {
        settings: vec![
            ("stripe_sync.webhook_listen".into(), format!("'127.0.0.1:{}'", free_port())),
            ("shared_buffers".into(), "'1GB'".into()),
            ("max_wal_size".into(), "'4GB'".into()),
        ],
        ..Default::default()
    });
    let mut c = cluster.connect_with_extension();

    // 1. refresh at Stripe's limit: 250 ms per request, 100 requests/s
    if a.runs("limit") {
        eprintln!("== refresh at Stripe's limit");
        let limited = Faults { latency_ms: 250, rate_limit: 100.0, ..Faults::default() };
        let big = start_fake(Some(SeedSpec::only_customers(a.customers)), limited.clone());
        let small = start_fake(Some(SeedSpec::only_customers(a.seq_customers)), limited);
        for p in [1usize, 4, 8, 16, 32] {
            let (fake, n) = if p < 8 { (&small, a.seq_customers) } else { (&big, a.customers) };
            let name = format!("lim{p}");
            source(&mut c, &fake.url(), &name, 100.0);
            c.batch_execute(&format!("SET stripe_sync.max_parallel_requests = {p}")).unwrap();
            let (secs, req) = refresh(&mut c, "customer", "full", &name);
            let rate = n as f64 / secs;
            eprintln!("   parallelism {p}: {n} customers in {secs:.1} s = {rate:.0} objects/s ({req} requests)");
            sweep.push((p, rate));
            if p == 32 || p == 1 {
                rows.push(Row {
                    bench: "refresh at Stripe's limit".into(),
                    setting: format!(
                        "{} customers, 250 ms latency, 100 req/s, parallelism {p}{}",
                        n,
                        if p == 1 { " (one sequential pass, like peer FDWs)" } else { "" }
                    ),
                    figure: rate,
                    unit: "objects/s".into(),
                    limit: 10_000.0,
                    goal: if p == 32 { ">= 0.8".into() } else { "(comparison)".into() },
                });
            }
        }
        c.batch_execute("RESET stripe_sync.max_parallel_requests").unwrap();
        drop((big, small));
    }

    // 2. engine speed vs COPY of the same rows
    if a.runs("engine") {
        eprintln!("== refresh engine speed");
        let spec = SeedSpec { invoices: a.invoices, max_lines: 6, ..SeedSpec::scaled(a.invoices / 2) };
        let fast = start_fake(Some(spec), Faults::default());
        c.batch_execute("SET stripe_sync.max_parallel_requests = 8").unwrap();
        // three runs, each into a new source's empty tables, each against COPY of its rows
        for run in 1..=3 {
            let name = format!("engine{run}");
            source(&mut c, &fast.url(), &name, 10_000.0);
            let (secs, _) = refresh(&mut c, "invoice", "full", &name);
            let n: i64 = c.query_one(&format!("SELECT count(*) FROM {name}.invoice"), &[]).unwrap().get(0);
            let refresh_rate = n as f64 / secs;
            let mut dump = Vec::new();
            {
                let mut r = c.copy_out(&format!("COPY (SELECT * FROM {name}.invoice) TO STDOUT")).unwrap();
                std::io::copy(&mut r, &mut dump).unwrap();
            }
            c.batch_execute(&format!("CREATE TABLE {name}.invoice_copy (LIKE {name}.invoice INCLUDING ALL)")).unwrap();
            let t = Instant::now();
            {
                let mut w = c.copy_in(&format!("COPY {name}.invoice_copy FROM STDIN")).unwrap();
                w.write_all(&dump).unwrap();
                w.finish().unwrap();
            }
            let copy_rate = n as f64 / t.elapsed().as_secs_f64();
            eprintln!(
                "   run {run}: refresh {n} invoices: {refresh_rate:.0} objects/s; COPY of the same rows: {copy_rate:.0} rows/s ({:.0} MB)",
                dump.len() as f64 / 1e6
            );
            rows.push(Row {
                bench: format!("refresh engine speed, run {run}/3"),
                setting: format!("{n} invoices with 1-6 line items, no latency, no rate limit, into empty tables"),
                figure: refresh_rate,
                unit: "objects/s".into(),
                limit: copy_rate,
                goal: ">= 0.5 (limit: COPY of the same rows, same run)".into(),
            });
        }
        drop(fast);
    }

    // 2b. Connect: many small connected accounts at Stripe's limit
    if a.runs("connect") {
        eprintln!("== Connect: {} connected accounts of {} customers", a.connect_accounts, a.connect_customers);
        let mut spec = SeedSpec::only_customers(a.connect_customers);
        spec.accounts = 0;
        spec.connected = vec![a.connect_customers; a.connect_accounts];
        let limited = Faults { latency_ms: 250, rate_limit: 100.0, ..Faults::default() };
        let fake = start_fake(Some(spec), limited);
        c.execute(
            "SELECT stripe_sync.add_source($1, name => 'platform', schema => 'platform', api_url => $2,
                    max_requests_per_second => 100, connected_accounts => true)",
            &[&TEST_KEY, &fake.url()],
        )
        .expect("add_source");
        let (secs, requests) = refresh(&mut c, "customer", "full", "platform");
        let accounts = a.connect_accounts as f64 + 1.0;
        // every request at 100 per second: the fewest requests (a page and the
        // newest event per account, and /v1/accounts) at the rate limit
        let fewest = 2.0 * accounts + (a.connect_accounts as f64 / 100.0).ceil();
        let ceiling = fewest / 100.0;
        let stats = fake.stats();
        eprintln!(
            "   {requests} requests ({:.2} per account) in {secs:.1} s; at 100 requests/s the fewest take {ceiling:.1} s; the fake answered {:?} by status",
            requests as f64 / accounts,
            stats.by_status
        );
        let mut paths: Vec<(&String, &u64)> = stats.by_path.iter().collect();
        paths.sort_by(|a, b| b.1.cmp(a.1));
        eprintln!("   by path: {:?}", &paths[..paths.len().min(6)]);
        let n: i64 = c.query_one("SELECT count(*) FROM platform.customer", &[]).unwrap().get(0);
        assert_eq!(n as usize, (a.connect_accounts + 1) * a.connect_customers, "every account's customers");
        let setting = format!(
            "refresh('customer', 'full') of a platform and {} connected accounts of {} customers, 250 ms latency, 100 req/s",
            a.connect_accounts, a.connect_customers
        );
        rows.push(Row {
            bench: "Connect: requests per account".into(),
            setting: setting.clone(),
            figure: requests as f64 / accounts,
            unit: "requests per account".into(),
            limit: 2.0,
            goal: "<= 1 (at most 2 per account and resource)".into(),
        });
        rows.push(Row {
            bench: "Connect: wall time".into(),
            setting,
            figure: secs,
            unit: "s".into(),
            limit: ceiling,
            goal: "<= 1.25 (within 80% of the rate-limit ceiling)".into(),
        });
        // then an incremental run: one list of what was created since, per account
        let (secs, requests) = refresh(&mut c, "customer", "incremental", "platform");
        let fewest = accounts + (a.connect_accounts as f64 / 100.0).ceil();
        let ceiling = fewest / 100.0;
        eprintln!(
            "   incremental after it: {requests} requests ({:.2} per account) in {secs:.1} s; at 100 requests/s the fewest take {ceiling:.1} s",
            requests as f64 / accounts
        );
        rows.push(Row {
            bench: "Connect: incremental wall time".into(),
            setting: format!(
                "refresh('customer', 'incremental') after it (nothing new), {} connected accounts, 250 ms latency, 100 req/s",
                a.connect_accounts
            ),
            figure: secs,
            unit: "s".into(),
            limit: ceiling,
            goal: "<= 1.25 (within 80% of the rate-limit ceiling)".into(),
        });
        drop(fake);

        // every resource of 100 such accounts: the requests each costs per account
        let small = 100;
        let mut spec = SeedSpec::only_customers(a.connect_customers);
        spec.accounts = 0;
        spec.connected = vec![a.connect_customers; small];
        let fake = start_fake(Some(spec), Faults { latency_ms: 250, rate_limit: 100.0, ..Faults::default() });
        c.execute(
            "SELECT stripe_sync.add_source($1, name => 'platform_all', schema => 'platform_all', api_url => $2,
                    max_requests_per_second => 100, connected_accounts => true)",
            &[&TEST_KEY, &fake.url()],
        )
        .expect("add_source");
        let t = Instant::now();
        let total: i64 = c
            .query_one("SELECT sum(api_requests)::bigint FROM stripe_sync.refresh('all', 'full', 'platform_all')", &[])
            .expect("refresh all")
            .get(0);
        let secs = t.elapsed().as_secs_f64();
        let per: Vec<(String, f64)> = c
            .query(
                "SELECT resource, avg(api_requests)::float8 FROM stripe_sync.sync_status
                  WHERE source = 'platform_all' GROUP BY 1 ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        eprintln!("   refresh('all', 'full') of the platform and {small} accounts: {total} requests in {secs:.1} s");
        for (r, n) in &per {
            eprintln!("     {r}: {n:.2} requests per account");
        }
        let over: Vec<String> = per.iter().filter(|(_, n)| *n > 2.0).map(|(r, n)| format!("{r} {n:.1}")).collect();
        rows.push(Row {
            bench: "Connect: every resource".into(),
            setting: format!(
                "refresh('all', 'full') of a platform and {small} connected accounts ({} customers each), 250 ms latency, 100 req/s; over 2 requests per account: {}",
                a.connect_customers,
                if over.is_empty() { "none".to_string() } else { over.join(", ") }
            ),
            figure: total as f64 / ((small + 1) * 15) as f64,
            unit: "requests per account and resource".into(),
            limit: 2.0,
            goal: "<= 1 (at most 2 per account and resource)".into(),
        });
        drop(fake);
    }

    // 3. webhook throughput and lag
    if a.runs("webhooks") {
        eprintln!("== webhook throughput and lag");
        let hook_fake = start_fake(None, Faults::default());
        source(&mut c, &hook_fake.url(), "hooks", 100.0);
        let secret = "whsec_benchmarksecret000000000000";
        c.execute("SELECT stripe_sync.set_webhook_secret($1, 'hooks')", &[&secret]).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let listen: String = c.query_one("SHOW stripe_sync.webhook_listen", &[]).unwrap().get(0);
        let worker: i32 = c
            .query_one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'stripe_sync webhook worker'", &[])
            .unwrap()
            .get(0);
        let anon0 = private_kb(worker);
        let stop_w = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sw = stop_w.clone();
        let wsampler = std::thread::spawn(move || {
            let mut peak = 0;
            while !sw.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(private_kb(worker));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let per = a.events.div_ceil(a.clients);
        let start = Instant::now();
        let epoch0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let threads: Vec<_> = (0..a.clients)
        .map(|k| {
            let listen = listen.clone();
            std::thread::spawn(move || {
                let mut http = KeepAlive::connect(&listen);
                let mut sent = Vec::with_capacity(per);
                for i in 0..per {
                    let n = k * per + i;
                    let now = signature::unix_now();
                    let body = format!(
                        r#"{{"id":"evt_bench{n:08}","object":"event","api_version":"2026-06-24.dahlia","created":{now},"type":"customer.created","data":{{"object":{{"id":"cus_bench{n:08}","object":"customer","created":{now},"email":"b{n}@example.com","name":"Bench {n}","balance":0,"delinquent":false,"metadata":{{}}}}}}}}"#
                    );
                    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
                    let status = http.post("/webhook/hooks", &signature::header_for(body.as_bytes(), secret, now), &body);
                    assert_eq!(status, 200, "delivery failed");
                    sent.push((format!("evt_bench{n:08}"), t));
                }
                sent
            })
        })
        .collect();
        let sent: Vec<(String, f64)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let total = sent.len() as i64;
        wait_for(Duration::from_secs(120), "every event applied", || {
            let n: i64 = c
                .query_one("SELECT count(*) FROM stripe_sync._inbox WHERE source = 'hooks' AND status = 'applied'", &[])
                .unwrap()
                .get(0);
            (n >= total).then_some(())
        });
        let _ = start;
        // applied means written: every customer is in the table
        let written: i64 =
            c.query_one("SELECT count(*) FROM hooks.customer WHERE id LIKE 'cus_bench%'", &[]).unwrap().get(0);
        assert_eq!(written, total, "customers written by the webhook load");
        let applied: std::collections::HashMap<String, f64> = c
        .query("SELECT event_id, extract(epoch FROM applied_at)::float8 FROM stripe_sync._inbox WHERE source = 'hooks'", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, f64>(1)))
        .collect();
        let mut lags: Vec<f64> = sent.iter().map(|(id, t)| (applied[id] - t) * 1000.0).collect();
        lags.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let last = applied.values().cloned().fold(0.0, f64::max);
        let rate = total as f64 / (last - epoch0);
        let p = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize];
        stop_w.store(true, std::sync::atomic::Ordering::Relaxed);
        let hwm = wsampler.join().unwrap();
        eprintln!(
            "   {total} events from {} clients: {rate:.0} events/s applied, lag p50 {:.0} ms p99 {:.0} ms",
            a.clients,
            p(0.5),
            p(0.99)
        );
        rows.push(Row {
            bench: "webhook throughput".into(),
            setting: format!("{total} signed events, {} concurrent clients", a.clients),
            figure: rate,
            unit: "events/s applied".into(),
            limit: 7_000.0,
            goal: ">= 1 (goal 7000/s)".into(),
        });
        let floor = single_row_floor(&cluster, &mut c, 32, 10);
        eprintln!("   single-row floor: {floor:.0} upserts/s (pgbench, 32 clients, one transaction per row)");
        rows.push(Row {
            bench: "single-row floor".into(),
            setting:
                "pgbench, 32 clients, 10 s: one INSERT ... ON CONFLICT DO UPDATE of a customer row per transaction"
                    .into(),
            figure: floor,
            unit: "rows/s".into(),
            limit: rate,
            goal: "(the webhook path's rate is the limit column)".into(),
        });
        rows.push(Row {
            bench: "webhooks vs floor".into(),
            setting: "webhook events/s applied / single-row upserts/s, same run".into(),
            figure: rate / floor,
            unit: "x".into(),
            limit: 1.0,
            goal: ">= 1 (aim 2)".into(),
        });
        rows.push(Row {
            bench: "webhook lag p50".into(),
            setting: "receipt to committed row".into(),
            figure: p(0.5),
            unit: "ms".into(),
            limit: 200.0,
            goal: "(p99 goal 200 ms)".into(),
        });
        rows.push(Row {
            bench: "webhook lag p99".into(),
            setting: "receipt to committed row".into(),
            figure: p(0.99),
            unit: "ms".into(),
            limit: 200.0,
            goal: "<= 1".into(),
        });
        rows.push(Row {
            bench: "memory: webhook worker".into(),
            setting: format!("peak private memory (RssAnon) growth during {total} events"),
            figure: hwm.saturating_sub(anon0) as f64 / 1024.0,
            unit: "MB".into(),
            limit: 100.0,
            goal: "<= 1".into(),
        });
        drop(hook_fake);
    }

    // 4. memory of a big full refresh
    if a.runs("memory") {
        eprintln!("== memory of a {}-object full refresh", a.memory_objects);
        let mem_fake = start_fake(Some(SeedSpec::only_customers(a.memory_objects)), Faults::default());
        source(&mut c, &mem_fake.url(), "mem", 10_000.0);
        c.batch_execute("SET stripe_sync.max_parallel_requests = 8").unwrap();
        let ((secs, _), growth_kb) = with_worker_peak(&cluster, || refresh(&mut c, "customer", "full", "mem"));
        eprintln!(
            "   {} customers in {secs:.1} s, refresh worker peak private memory growth {:.1} MB",
            a.memory_objects,
            growth_kb as f64 / 1024.0
        );
        rows.push(Row {
            bench: "memory: refresh worker".into(),
            setting: format!(
                "peak private memory (RssAnon) growth, full refresh of {} customers ({:.0} objects/s)",
                a.memory_objects,
                a.memory_objects as f64 / secs
            ),
            figure: growth_kb as f64 / 1024.0,
            unit: "MB".into(),
            limit: 100.0,
            goal: "<= 1".into(),
        });
        drop(mem_fake);
        // foreign-table scans of the same account: backend peak memory per query
        let mut scan = cluster.connect();
        let pid: i32 = scan.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        scan.query("SELECT id FROM mem_api.customer WHERE id = 'cus_warmup'", &[]).unwrap();
        // A scan of 1,000,000 rows costs enough for JIT: the backend then loads LLVM
        // once (about 75 MB, whatever the query). Loaded first, so the figures are the
        // scans' own (each still includes compiling its expressions).
        scan.batch_execute("SET jit_above_cost = 0; SELECT sum(x) FROM generate_series(1, 10) x; RESET jit_above_cost")
            .unwrap();
        for (what, sql) in [
            ("count(*)", "SELECT count(*) FROM mem_api.customer"),
            ("sum(length(attrs::text))", "SELECT count(*), sum(length(attrs::text)) FROM mem_api.customer"),
            ("SELECT * ORDER BY created LIMIT 1", "SELECT * FROM mem_api.customer ORDER BY created LIMIT 1"),
        ] {
            e2e::reset_peak_memory(pid);
            let (rss0, _) = e2e::memory_kb(pid);
            let t = Instant::now();
            scan.query(sql, &[]).unwrap();
            let secs = t.elapsed().as_secs_f64();
            let (_, peak) = e2e::memory_kb(pid);
            let growth = peak.saturating_sub(rss0) as f64 / 1024.0;
            eprintln!(
                "   foreign scan {what} of {} customers: {secs:.1} s, backend peak growth {growth:.1} MB",
                a.memory_objects
            );
            rows.push(Row {
                bench: "memory: foreign scan".into(),
                setting: format!(
                    "backend peak (VmHWM) growth, `{sql}` over {} customers ({secs:.0} s)",
                    a.memory_objects
                ),
                figure: growth,
                unit: "MB".into(),
                limit: 50.0,
                goal: "<= 1".into(),
            });
        }
    }

    // 5. incremental cost: events vs full after 1% changed
    if a.runs("incremental") {
        eprintln!("== incremental cost");
        let inc_fake = start_fake(Some(SeedSpec::only_customers(a.incremental_objects)), Faults::default());
        source(&mut c, &inc_fake.url(), "inc", 10_000.0);
        refresh(&mut c, "customer", "full", "inc");
        let ids: Vec<String> =
            inc_fake.objects("customers").iter().map(|o| o["id"].as_str().unwrap().to_string()).collect();
        for id in ids.iter().step_by(100) {
            inc_fake.call("POST", &format!("/v1/customers/{id}"), "name=Changed");
        }
        let (_, events_req) = refresh(&mut c, "customer", "events", "inc");
        let (_, full_req) = refresh(&mut c, "customer", "full", "inc");
        eprintln!(
            "   after {} changes: events refresh {events_req} requests, full refresh {full_req} requests",
            ids.len() / 100
        );
        rows.push(Row {
            bench: "incremental cost".into(),
            setting: format!(
                "API requests to catch up after 1% of {} customers changed: events vs full",
                a.incremental_objects
            ),
            figure: events_req as f64,
            unit: "requests (events mode)".into(),
            limit: full_req as f64,
            goal: "(lower is better)".into(),
        });
    }

    // 6. events catch-up after a week of downtime: 100 ms per request, 80 requests/s
    if a.runs("catchup") {
        eprintln!("== events catch-up");
        let n = a.catchup_events;
        let fake = start_fake(Some(SeedSpec::only_customers(1_000)), Faults::default());
        source(&mut c, &fake.url(), "catchup", 80.0);
        refresh(&mut c, "customer", "full", "catchup");
        let now = signature::unix_now();
        let since = now - 7 * 86_400;
        c.execute(
            "UPDATE stripe_sync._sync_state SET events_cursor_created = $1, events_cursor_id = NULL
             WHERE source = 'catchup' AND resource = 'customer'",
            &[&since],
        )
        .unwrap();
        // the last refresh was a week ago too
        c.execute("UPDATE catchup.customer SET _stamp = $1", &[&since]).unwrap();
        fake.backfill_updates(n, since + 1, now - 60);
        fake.set_faults(Faults { latency_ms: 100, ..Faults::default() });
        fake.reset_stats();
        let ((secs, requests), peak_kb) = with_worker_peak(&cluster, || {
            let mut c = cluster.connect();
            refresh_detached(&mut c, "customer", "events", "catchup")
        });
        let rate = n as f64 / secs;
        eprintln!("   {n} events in {secs:.1} s, {requests} requests, worker memory growth {} kB", peak_kb);
        rows.push(Row {
            bench: "events catch-up".into(),
            setting: format!(
                "{n} customer.updated events of 1000 customers over 7 days, 100 ms per request, 80 requests/s, refresh('customer', 'events', wait => false) ({requests} requests)"
            ),
            figure: rate,
            unit: "events/s".into(),
            limit: 80.0 * 100.0,
            goal: ">= 0.8 of the rate-limit ceiling".into(),
        });
        rows.push(Row {
            bench: "catch-up memory".into(),
            setting: format!("growth of the refresh worker's private memory (RssAnon) during the {n}-event catch-up"),
            figure: peak_kb as f64 / 1024.0,
            unit: "MB".into(),
            limit: 100.0,
            goal: "< 100 MB (ratio < 1)".into(),
        });
    }

    // 7. vacuum during a long detached refresh (only with --only vacuum: it takes minutes)
    if a.runs("vacuum") {
        let minutes = a.vacuum_minutes.max(1);
        eprintln!("== VACUUM during a {minutes}-minute detached full refresh");
        // one request at a time, every 10 s: 60 pages of customers take 10 minutes
        let fake = start_fake(
            Some(SeedSpec::only_customers(minutes * 600)),
            Faults { latency_ms: 10_000, ..Faults::default() },
        );
        source(&mut c, &fake.url(), "vac", 1000.0);
        c.batch_execute(
            "SET stripe_sync.max_parallel_requests = 1;
             CREATE TABLE bench_unrelated (id int PRIMARY KEY, v int);
             INSERT INTO bench_unrelated SELECT g, 0 FROM generate_series(1, 1000) g",
        )
        .unwrap();
        let t = Instant::now();
        c.query("SELECT * FROM stripe_sync.refresh('customer', 'full', 'vac', wait => false)", &[]).unwrap();
        c.batch_execute("RESET stripe_sync.max_parallel_requests").unwrap();
        let (mut v, notices) = e2e::connect_collecting_notices(&cluster);
        let (mut made, mut removed, mut kept_max, mut rounds) = (0i64, 0i64, 0i64, 0);
        let running = |c: &mut postgres::Client| -> bool {
            c.query_one(
                "SELECT finished_at IS NULL FROM stripe_sync.sync_status WHERE source = 'vac' AND resource = 'customer'",
                &[],
            )
            .map(|r| r.get(0))
            .unwrap_or(false)
        };
        while t.elapsed() < Duration::from_secs(minutes as u64 * 60) && running(&mut c) {
            std::thread::sleep(Duration::from_secs(30));
            notices.lock().unwrap().clear();
            v.batch_execute("UPDATE bench_unrelated SET v = v + 1").unwrap();
            v.batch_execute("VACUUM (VERBOSE) bench_unrelated").unwrap();
            let said = notices.lock().unwrap().join("\n");
            // "tuples: 1000 removed, 1000 remain, 0 are dead but not yet removable"
            let line = said.lines().find(|l| l.contains("are dead but not yet removable")).unwrap_or_default();
            let num = |before: &str| -> i64 {
                line.split(before).next().and_then(|x| x.rsplit(' ').next()).and_then(|x| x.parse().ok()).unwrap_or(-1)
            };
            let (r, k) = (num(" removed,"), num(" are dead but not yet removable"));
            made += 1000;
            removed += r.max(0);
            kept_max = kept_max.max(k);
            rounds += 1;
            eprintln!("   {:>4.0} s: VACUUM removed {r}, kept {k} dead tuples", t.elapsed().as_secs_f64());
        }
        let lasted = t.elapsed().as_secs_f64();
        let still = running(&mut c);
        eprintln!(
            "   the refresh ran {lasted:.0} s (still running: {still}); {rounds} rounds, at most {kept_max} kept"
        );
        rows.push(Row {
            bench: "vacuum during refresh".into(),
            setting: format!(
                "dead tuples VACUUM removed from a 1,000-row table updated every 30 s, {rounds} rounds during a detached full refresh that ran {lasted:.0} s (at most {kept_max} kept)"
            ),
            figure: removed as f64,
            unit: "tuples removed".into(),
            limit: made as f64,
            goal: "1.00 (every dead tuple removed)".into(),
        });
    }

    // the table
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mut md = format!(
        "Run {date} on {cpus} cores (release build, fake Stripe on loopback).\n\n| benchmark | setting | figure | limit | ratio | goal |\n| --- | --- | --- | --- | --- | --- |\n"
    );
    let mut csv = String::from("benchmark,setting,figure,unit,limit,ratio,goal\n");
    println!("{:<26} {:<90} {:>12} {:>10} {:>7}  goal", "benchmark", "setting", "figure", "limit", "ratio");
    for r in &rows {
        println!(
            "{:<26} {:<90} {:>12.1} {:>10.1} {:>7.2}  {} [{}]",
            r.bench,
            r.setting,
            r.figure,
            r.limit,
            r.ratio(),
            r.goal,
            r.unit
        );
        md.push_str(&format!(
            "| {} | {} | {:.1} {} | {:.1} | {:.2} | {} |\n",
            r.bench,
            r.setting,
            r.figure,
            r.unit,
            r.limit,
            r.ratio(),
            r.goal
        ));
        csv.push_str(&format!(
            "\"{}\",\"{}\",{:.2},\"{}\",{:.2},{:.3},\"{}\"\n",
            r.bench,
            r.setting,
            r.figure,
            r.unit,
            r.limit,
            r.ratio(),
            r.goal
        ));
    }
    // a run of some sections never overwrites the full run's results
    let name = if a.only.is_empty() { "results".to_string() } else { format!("results-{}", a.only.join("-")) };
    std::fs::write(format!("{}/{name}.md", a.out), md).unwrap();
    std::fs::write(format!("{}/{name}.csv", a.out), csv).unwrap();
    eprintln!("wrote {0}/{name}.md, {0}/{name}.csv", a.out);
    if !sweep.is_empty() {
        let mut s = String::from("parallelism,objects_per_second,ceiling\n");
        for (p, r) in sweep {
            s.push_str(&format!("{p},{r:.1},10000\n"));
        }
        std::fs::write(format!("{}/refresh_sweep.csv", a.out), s).unwrap();
        eprintln!("wrote {}/refresh_sweep.csv", a.out);
    }
}
