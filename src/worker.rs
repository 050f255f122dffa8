//! The webhook worker, started when stripe_sync is in shared_preload_libraries.
//!
//! The HTTP listener (stripe_core, on its own threads with signals blocked)
//! verifies each delivery and hands it over a channel; this main thread stores
//! the batch in the inbox, applying at once what needs no API call, commits, and
//! only then lets the listener answer 2xx. What is left pending (ties to fetch,
//! truncated lists, failures) it applies from the inbox in batches, in its own
//! transactions: a crash between storing and applying loses nothing. At start it catches up on events missed
//! while it was down (an events refresh per followed resource). It reloads
//! settings on SIGHUP, exits promptly on SIGTERM, and is restarted after a crash
//! or pg_terminate_backend.

use crate::webhooks::inbox;
use crate::{guc, refresh, threads};
use pgrx::PgTryBuilder;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use stripe_core::signature;
use stripe_core::webhook::{Delivery, Listener, ListenerConfig, Secrets};

/// `backend_type` of the worker in pg_stat_activity.
pub const WORKER_NAME: &str = "stripe_sync webhook worker";
/// Deliveries stored per transaction, at most.
const STORE_BATCH: usize = 2000;
/// How often the worker deletes events past `stripe_sync.inbox_retention` and old tombstones.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Events applied per transaction, at most.
const APPLY_BATCH: i64 = 2000;

static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this background worker (webhook or refresh) was asked to stop. Unlike
/// pgrx's `sigterm_received`, which clears the flag it reads, the answer stays
/// true once SIGTERM came: every wait that checks it ends, and so does the loop
/// around it.
pub fn stopping() -> bool {
    use std::sync::atomic::Ordering;
    if BackgroundWorker::sigterm_received() {
        STOPPING.store(true, Ordering::SeqCst);
    }
    STOPPING.load(Ordering::SeqCst)
}

/// Waits on the latch for up to `timeout`; false when the worker must stop
/// (SIGTERM, or the postmaster died).
pub fn wait(timeout: Duration) -> bool {
    let alive = BackgroundWorker::wait_latch(Some(timeout));
    if !alive {
        STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    alive && !stopping()
}

/// Makes the webhook workers reload their signing secrets as soon as the calling
/// transaction commits (a SIGHUP each, sent from the commit callback: before the
/// commit they would read the old secrets), instead of within their 1-second
/// poll: a new secret takes effect within milliseconds.
pub fn reload_secrets_at_commit() {
    let pids: Vec<i32> = Spi::get_one_with_args::<Vec<i32>>(
        "SELECT coalesce(array_agg(pid), '{}') FROM pg_catalog.pg_stat_activity WHERE backend_type = $1",
        &[WORKER_NAME.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    if pids.is_empty() {
        return;
    }
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        for pid in pids {
            // a worker that exited meanwhile has nothing to reload
            unsafe { libc::kill(pid, libc::SIGHUP) };
        }
    });
}

/// Registers the worker; only possible while loading from shared_preload_libraries.
pub fn register() {
    BackgroundWorkerBuilder::new(WORKER_NAME)
        .set_type(WORKER_NAME)
        .set_function("stripe_sync_worker_main")
        .set_library("stripe_sync")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

fn tx<R>(f: impl FnOnce() -> R) -> R {
    BackgroundWorker::transaction(AssertUnwindSafe(f))
}

/// Runs `f` in a transaction; an ERROR inside is logged and returned as text,
/// and the worker goes on.
fn guarded<R>(what: &str, f: impl FnOnce() -> R) -> Result<R, String> {
    let r = PgTryBuilder::new(AssertUnwindSafe(|| Ok(tx(f))))
        .catch_others(|e| Err(crate::error::caught_message(&e)))
        .execute();
    if let Err(m) = &r {
        unsafe { pg_sys::AbortCurrentTransaction() };
        log!("{WORKER_NAME}: {what} failed: {m}");
    }
    r
}

struct State {
    listen: String,
    /// max_body, max_connections, body_timeout seconds: a change restarts the listener
    limits: (usize, usize, u64),
    listener: Option<Listener>,
    rx: Option<Receiver<Delivery>>,
    secrets: Secrets,
    catchup: VecDeque<(String, String)>,
    catching_up: Option<DynamicBackgroundWorker>,
}

impl State {
    fn start_listener(&mut self) {
        self.listener = None;
        self.rx = None;
        if self.listen.trim().is_empty() {
            log!("{WORKER_NAME}: stripe_sync.webhook_listen is empty: not listening");
            return;
        }
        let addr: SocketAddr = match self.listen.parse() {
            Ok(a) => a,
            Err(_) => {
                log!(
                    "{WORKER_NAME}: stripe_sync.webhook_listen \"{}\" is not host:port (like 127.0.0.1:8787)",
                    self.listen
                );
                return;
            }
        };
        let (dtx, drx) = sync_channel(STORE_BATCH * 2);
        let cfg = ListenerConfig {
            addr,
            max_body: self.limits.0,
            tolerance_secs: signature::DEFAULT_TOLERANCE_SECS,
            store_timeout: Duration::from_secs(10),
            max_connections: self.limits.1,
            body_timeout: Duration::from_secs(self.limits.2),
        };
        match Listener::start(cfg, self.secrets.clone(), dtx, |job| threads::spawn_blocked("stripe_sync webhooks", job))
        {
            Ok(l) => {
                log!("{WORKER_NAME}: listening on http://{}/webhook/<source>", l.addr);
                self.listener = Some(l);
                self.rx = Some(drx);
            }
            Err(e) => log!("{WORKER_NAME}: cannot listen on {addr}: {e}"),
        }
    }

    fn reload_settings(&mut self) {
        let listen = guc::string(&guc::WEBHOOK_LISTEN);
        let limits = (
            guc::WEBHOOK_MAX_BODY.get().max(1024) as usize,
            guc::WEBHOOK_MAX_CONNECTIONS.get().max(1) as usize,
            guc::WEBHOOK_BODY_TIMEOUT.get().max(1) as u64,
        );
        if listen != self.listen || limits != self.limits || self.listener.is_none() {
            self.listen = listen;
            self.limits = limits;
            self.start_listener();
        }
    }

    fn reload_secrets(&mut self) {
        if let Ok(Ok(map)) = guarded("reading the webhook secrets", inbox::secrets) {
            *self.secrets.write().unwrap_or_else(|p| p.into_inner()) = map;
        }
    }

    /// Stores a batch of deliveries, then answers them; returns whether events
    /// were left pending (or the store failed), for the inbox's apply.
    fn store(&mut self, batch: Vec<Delivery>) -> bool {
        // in name order: each source's writes take its turn (a lock) for the rest
        // of the transaction, and every writer of several sources takes them in
        // that order
        let mut by_source: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, d) in batch.iter().enumerate() {
            by_source.entry(d.source.clone()).or_default().push(i);
        }
        // stored and, when no API call is needed, applied in the same transaction
        let ok = guarded("storing webhook events", || {
            let mut pending = 0;
            for (source, idx) in &by_source {
                let events: Vec<&stripe_core::webhook::Incoming> = idx.iter().map(|i| &batch[*i].event).collect();
                pending += inbox::store_and_apply(source, &events)?;
            }
            Ok::<i64, crate::error::SyncError>(pending)
        });
        // 2xx only after the commit; a failure answers 500 and Stripe retries
        let (status, left_pending) = match ok {
            Ok(Ok(pending)) => (200, pending > 0),
            Ok(Err(e)) => {
                log!("{WORKER_NAME}: storing webhook events failed: {}", e.message);
                (500, true)
            }
            Err(_) => (500, true),
        };
        for d in batch {
            let _ = d.reply.send(status);
        }
        left_pending
    }

    /// Applies the inbox until it is empty or `budget` runs out.
    fn apply(&mut self, budget: Duration) {
        let until = Instant::now() + budget;
        loop {
            // each step commits on its own: no row lock is held while Stripe is asked,
            // and a SIGTERM ends any wait for Stripe at once
            let r = inbox::apply_pending(APPLY_BATCH, stopping, |step| {
                guarded("applying webhook events", step).unwrap_or_else(|msg| {
                    Err(crate::error::SyncError::new(pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, msg))
                })
            });
            if stopping() {
                return;
            }
            match r {
                Ok((applied, skipped)) if applied + skipped > 0 && Instant::now() < until => continue,
                Err(e) => {
                    let msg = e.message.clone();
                    log!("{WORKER_NAME}: applying webhook events failed: {msg}");
                    let _ = guarded("recording the error", || {
                        Spi::run_with_args(
                            "UPDATE stripe_sync._webhook_stats SET last_error = $1, last_error_at = now()",
                            &[msg.as_str().into()],
                        )
                    });
                    return;
                }
                _ => return,
            }
        }
    }

    fn count_rejections(&mut self) {
        let Some(l) = &self.listener else { return };
        let taken = l.stats.take();
        if taken.is_empty() {
            return;
        }
        let _ = guarded("counting rejected deliveries", || {
            Spi::connect_mut(|c| {
                for (source, n) in &taken {
                    inbox::count_rejected(c, source, *n)?;
                }
                Ok::<(), crate::error::SyncError>(())
            })
        });
    }

    /// One events refresh at a time, for every followed resource of every source
    /// with a webhook: what happened while the worker was down.
    ///
    /// A catch-up is a refresh like any other: its worker holds the resource's
    /// lock for its run, so it never runs beside a user's refresh of that resource;
    /// while one runs, the catch-up waits for it.
    fn step_catchup(&mut self) {
        if let Some(w) = &self.catching_up {
            if w.pid().is_ok() {
                return;
            }
            self.catching_up = None;
        }
        let Some((source, resource)) = self.catchup.pop_front() else { return };
        let free = guarded("checking a catch-up's lock", || refresh::lock_is_free(&source, &resource));
        if free != Ok(true) {
            self.catchup.push_back((source, resource));
            return;
        }
        match refresh::launch(&source, &resource, "events", unsafe { pg_sys::MyProcPid }, false, None) {
            Ok(w) => self.catching_up = Some(w),
            Err(e) => log!("{WORKER_NAME}: cannot start the catch-up of {source}/{resource}: {}", e.message),
        }
    }
}

/// Whether the extension exists in the worker's database at this library's
/// version (after new binaries, the tables take their new shape only with
/// `ALTER EXTENSION stripe_sync UPDATE`; until then the worker waits).
fn extension_ready(said: &mut bool) -> bool {
    let installed = guarded("checking for the extension", || {
        Spi::get_one::<String>("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'stripe_sync'")
            .ok()
            .flatten()
    })
    .ok()
    .flatten();
    match installed {
        Some(v) if v == env!("CARGO_PKG_VERSION") => true,
        Some(v) => {
            if !*said {
                log!(
                    "{WORKER_NAME}: waiting for ALTER EXTENSION stripe_sync UPDATE (the library is version {}, the extension in this database {v})",
                    env!("CARGO_PKG_VERSION")
                );
                *said = true;
            }
            false
        }
        None => false,
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn stripe_sync_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = guc::string(&guc::DATABASE);
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    log!("{WORKER_NAME} started in database \"{db}\"");
    // the extension may not be created (or updated) yet
    let mut said = false;
    while !extension_ready(&mut said) {
        if !wait(Duration::from_secs(1)) {
            log!("{WORKER_NAME} stopping");
            unsafe { pg_sys::proc_exit(1) };
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
    // freed memory stays in this process (up to 32 MB): each batch allocates and
    // frees about the same, and handing it back to the kernel and faulting it in
    // again was 6% of the worker's time under load
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
    // write statements planned once (a failure here only costs speed)
    if let Ok(Err(e)) = guarded("keeping write plans", crate::apply::keep_plans) {
        log!("{WORKER_NAME}: write statements are planned on each run: {}", e.message);
    }
    let mut st = State {
        listen: String::new(),
        limits: (0, 0, 0),
        listener: None,
        rx: None,
        secrets: Arc::new(RwLock::new(HashMap::new())),
        catchup: VecDeque::new(),
        catching_up: None,
    };
    st.reload_secrets();
    st.reload_settings();
    // catch up on what happened while we were down
    if let Ok(list) = guarded("planning the catch-up", || {
        Spi::connect(|c| {
            let mut out = Vec::new();
            for r in c.select(
                "SELECT DISTINCT s.source, s.resource FROM stripe_sync._sync_state s JOIN stripe_sync._webhooks w ON w.source = s.source
                 WHERE s.events_cursor_created IS NOT NULL ORDER BY 1, 2",
                None,
                &[],
            )? {
                if let (Some(a), Some(b)) = (r.get::<String>(1)?, r.get::<String>(2)?) {
                    out.push((a, b));
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    }) {
        st.catchup = list.unwrap_or_default().into();
    }
    let mut last_secrets = Instant::now();
    let mut last_prune: Option<Instant> = None;
    st.apply(Duration::from_secs(5));
    loop {
        if !wait(Duration::ZERO) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            st.reload_settings();
            st.reload_secrets();
        }
        if last_secrets.elapsed() > Duration::from_secs(1) {
            st.reload_secrets();
            st.count_rejections();
            st.step_catchup();
            last_secrets = Instant::now();
            if last_prune.is_none_or(|t| t.elapsed() > PRUNE_EVERY) {
                let retention = guc::INBOX_RETENTION.get() as i64;
                if let Ok(Ok((events, tombstones))) = guarded("pruning the inbox", || {
                    // a prune reads a whole table's worth of old rows: the planner's
                    // usual choices, for this transaction only (see apply::keep_plans)
                    Spi::run("SET LOCAL enable_seqscan = on; SET LOCAL enable_hashjoin = on; SET LOCAL enable_mergejoin = on")
                        .map_err(|e| crate::error::SyncError::new(pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))?;
                    inbox::prune(retention)
                }) && events + tombstones > 0
                {
                    log!("{WORKER_NAME}: pruned {events} applied or skipped events and {tombstones} old tombstones");
                }
                last_prune = Some(Instant::now());
            }
        }
        // gather what arrived: wait briefly for the first, then take what is queued
        let mut batch = Vec::new();
        if let Some(rx) = &st.rx {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(d) => {
                    batch.push(d);
                    while batch.len() < STORE_BATCH {
                        match rx.try_recv() {
                            Ok(d) => batch.push(d),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => st.start_listener(),
            }
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
        // what a batch leaves pending is applied right away; the rest of the inbox
        // (retries, events stored by receive_webhook) now and then
        let left_pending = !batch.is_empty() && st.store(batch);
        if left_pending || last_secrets.elapsed() < Duration::from_millis(30) {
            st.apply(Duration::from_millis(200));
        }
    }
    log!("{WORKER_NAME} stopping");
    drop(st);
    // Exit code 1: the postmaster starts the worker again after its restart time
    // (pg_terminate_backend restarts it); during shutdown it is not restarted.
    unsafe { pg_sys::proc_exit(1) };
}
