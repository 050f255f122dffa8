//! `stripe-fake`: run the fake Stripe API on loopback.

use clap::{CommandFactory, FromArgMatches, Parser};
use stripe_fake::objects::SeedSpec;
use stripe_fake::{Fake, Faults};

/// A stateful fake of the Stripe API on 127.0.0.1, for tests, demos and benchmarks.
///
/// Any sk_test_/rk_test_ key is accepted unless listed with --bad-key; restricted
/// keys given with --restricted-key have only the permissions listed. Seeded
/// objects are deterministic for a given --seed. Faults can be changed while it
/// runs: POST /_fake/faults with a JSON object of the fault fields (latency_ms,
/// rate_limit, error_rate, rate_limited_rate, drop_rate, bad_keys,
/// restricted_denied, restricted_keys, unsupported_paths, webhook_delay_ms, webhook_shuffle_ms,
/// webhook_duplicate_rate, webhook_retry_base_ms, webhook_retry_max_ms,
/// webhook_max_attempts, webhook_concurrency). GET /_fake/stats counts API
/// requests by path, GET /_fake/counts objects per collection,
/// GET /_fake/objects/{collection} lists them complete, GET /_fake/deliveries
/// shows webhook delivery counters, POST /_fake/history with {"events": n,
/// "from": unix, "to": unix} writes past customer.updated events (a catch-up's
/// backlog).
#[derive(Parser, Debug)]
#[command(name = "stripe-fake", version)]
struct Args {
    /// Port on 127.0.0.1 (0 = any free port; the chosen one is printed).
    #[arg(long, default_value_t = 12111)]
    port: u16,
    /// Seed of the deterministic data generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Customers to seed; the other resources are scaled from it (0 = empty account).
    #[arg(long, default_value_t = 100)]
    customers: usize,
    /// Seed only customers (no other objects).
    #[arg(long)]
    only_customers: bool,
    /// Override a resource's seeded count: NAME=N, NAME one of products, subscriptions,
    /// invoices, invoice_items, charges, refunds, disputes, payouts,
    /// balance_transactions, credit_notes, customer_balance_transactions,
    /// payment_methods, accounts. Repeatable.
    #[arg(long = "count", value_name = "NAME=N")]
    counts: Vec<String>,
    /// Connect: a connected account with its own objects, scaled from N customers
    /// like the platform's (repeatable; reached with `Stripe-Account`).
    #[arg(long = "connected", value_name = "N")]
    connected: Vec<usize>,
    /// Most line items per seeded invoice (drawn in 1..=N).
    #[arg(long, default_value_t = 4)]
    max_lines: usize,
    /// Unix time the seeded history ends at (objects spread over 4 years before it).
    #[arg(long, default_value_t = 1_767_225_600)]
    anchor: i64,
    /// Milliseconds added to every API answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Requests per second before 429 rate_limit (0 = unlimited).
    #[arg(long, default_value_t = 0.0)]
    rate_limit: f64,
    /// Fraction of API requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Fraction of API requests answered 429 regardless of rate.
    #[arg(long, default_value_t = 0.0)]
    rate_limited_rate: f64,
    /// Fraction of API requests whose connection is dropped without an answer.
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// A key answered 401 (repeatable).
    #[arg(long = "bad-key")]
    bad_keys: Vec<String>,
    /// A collection (customers, webhook_endpoints, ...) restricted keys may not use (repeatable).
    #[arg(long = "restricted-deny")]
    restricted_denied: Vec<String>,
    /// A restricted key and its permissions: rk_test_...=customer_read,invoice_read
    /// (repeatable). Requests outside the set get Stripe's 403; the permission each
    /// path needs is listed at the end of --help. Write includes read.
    #[arg(long = "restricted-key", value_name = "KEY=PERM,...")]
    restricted_keys: Vec<String>,
    /// A path prefix answered 400 "Unrecognized request URL" (repeatable), like a
    /// Stripe-compatible server without that endpoint (for example /v1/events).
    #[arg(long = "unsupported-path", value_name = "PATH")]
    unsupported_paths: Vec<String>,
    /// Delay before each webhook delivery, ms.
    #[arg(long, default_value_t = 0)]
    webhook_delay_ms: u64,
    /// Random extra delay per delivery in [0, N) ms, so deliveries arrive shuffled.
    #[arg(long, default_value_t = 0)]
    webhook_shuffle_ms: u64,
    /// Fraction of deliveries sent twice.
    #[arg(long, default_value_t = 0.0)]
    webhook_duplicate_rate: f64,
    /// First retry delay of a failed delivery, ms (doubles per attempt).
    #[arg(long, default_value_t = 200)]
    webhook_retry_base_ms: u64,
    /// Attempts per delivery before giving up.
    #[arg(long, default_value_t = 30)]
    webhook_max_attempts: u32,
}

fn seed_spec(a: &Args) -> Result<SeedSpec, String> {
    let mut s = if a.only_customers { SeedSpec::only_customers(a.customers) } else { SeedSpec::scaled(a.customers) };
    s.seed = a.seed;
    s.anchor = a.anchor;
    s.max_lines = a.max_lines.max(1);
    s.connected = a.connected.clone();
    for c in &a.counts {
        let (name, n) = c.split_once('=').ok_or_else(|| format!("--count takes NAME=N, got {c}"))?;
        let n: usize = n.parse().map_err(|_| format!("--count {name}: {n} is not a number"))?;
        let slot = match name {
            "products" => &mut s.products,
            "subscriptions" => &mut s.subscriptions,
            "invoices" => &mut s.invoices,
            "invoice_items" => &mut s.invoice_items,
            "charges" => &mut s.charges,
            "refunds" => &mut s.refunds,
            "disputes" => &mut s.disputes,
            "payouts" => &mut s.payouts,
            "balance_transactions" => &mut s.balance_transactions,
            "credit_notes" => &mut s.credit_notes,
            "customer_balance_transactions" => &mut s.customer_balance_transactions,
            "payment_methods" => &mut s.payment_methods,
            "accounts" => &mut s.accounts,
            other => return Err(format!("--count: unknown resource {other}")),
        };
        *slot = n;
    }
    Ok(s)
}

fn restricted_keys(a: &Args) -> Result<std::collections::BTreeMap<String, Vec<String>>, String> {
    a.restricted_keys
        .iter()
        .map(|k| {
            let (key, perms) =
                k.split_once('=').ok_or_else(|| format!("--restricted-key takes KEY=PERM,..., got {k}"))?;
            if !key.starts_with("rk_") {
                return Err(format!("--restricted-key: {key} is not a restricted key (rk_...)"));
            }
            Ok((key.to_string(), perms.split(',').filter(|p| !p.is_empty()).map(str::to_string).collect()))
        })
        .collect()
}

fn main() {
    let help = format!(
        "Permissions of restricted keys (GET needs <area>_read, other methods <area>_write):\n{}",
        stripe_fake::permissions::describe()
    );
    let matches = Args::command().after_long_help(help.clone()).after_help(help).get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let keys = match restricted_keys(&args) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("stripe-fake: {e}");
            std::process::exit(2);
        }
    };
    let spec = match seed_spec(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stripe-fake: {e}");
            std::process::exit(2);
        }
    };
    let faults = Faults {
        latency_ms: args.latency_ms,
        rate_limit: args.rate_limit,
        error_rate: args.error_rate,
        rate_limited_rate: args.rate_limited_rate,
        drop_rate: args.drop_rate,
        bad_keys: args.bad_keys.clone(),
        restricted_denied: args.restricted_denied.clone(),
        restricted_keys: keys,
        unsupported_paths: args.unsupported_paths.clone(),
        webhook_delay_ms: args.webhook_delay_ms,
        webhook_shuffle_ms: args.webhook_shuffle_ms,
        webhook_duplicate_rate: args.webhook_duplicate_rate,
        webhook_retry_base_ms: args.webhook_retry_base_ms,
        webhook_max_attempts: args.webhook_max_attempts,
        ..Faults::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let seed = (args.customers > 0).then_some(&spec);
        let fake = match Fake::start(args.port, seed, faults).await {
            Ok(f) => f,
            Err(e) => {
                eprintln!("stripe-fake: cannot listen on 127.0.0.1:{}: {e}", args.port);
                std::process::exit(1);
            }
        };
        println!("stripe-fake listening on {}", fake.url());
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    });
}
