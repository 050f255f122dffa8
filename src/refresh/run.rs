//! The refresh worker: reads from Stripe on a thread of its own (stripe_core's
//! passes) and writes batches in its own committed transactions, with live
//! progress and a checkpoint in `stripe_sync._sync_state`.

use crate::apply::{Account, Counts, EventEffects, Target, Version, table_of};
use crate::error::SyncError;
use crate::{source, threads};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode, PgTryBuilder};
use serde_json::{Value, json};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant};
use stripe_core::resources::{self, Resource, Scope};
use stripe_core::sync::{self, FullPass, Msg, MsgResult};
use stripe_core::{Client, StripeError};

/// Objects written per transaction.
const BATCH: usize = 1000;
/// Events older than this are gone from Stripe (30 days), with a margin.
const EVENT_RETENTION_SECS: i64 = 30 * 86_400 - 3_600;

/// What a worker is asked to do (passed in bgw_extra).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub db: u32,
    pub user: u32,
    pub caller: i32,
    pub source: String,
    pub resource: String,
    pub mode: String,
    /// The caller's stripe_sync.max_parallel_requests.
    pub parallelism: usize,
    /// Connect: the account to refresh (`Some("")`: the source's own; `None`:
    /// every account of the source). Within a run, the account being refreshed.
    pub account: Option<String>,
}

impl Job {
    /// The key of the account being refreshed in `_sync_state` (`''`: the source's own).
    pub fn key(&self) -> &str {
        self.account.as_deref().unwrap_or("")
    }
}

impl Job {
    pub fn encode(&self) -> String {
        let account = match self.account.as_deref() {
            None => "*",
            Some("") => "-",
            Some(a) => a,
        };
        format!(
            "{} {} {} {} {} {} {} {account}",
            self.db, self.user, self.caller, self.source, self.resource, self.mode, self.parallelism
        )
    }

    pub fn decode(s: &str) -> Option<Job> {
        let mut it = s.split(' ');
        Some(Job {
            db: it.next()?.parse().ok()?,
            user: it.next()?.parse().ok()?,
            caller: it.next()?.parse().ok()?,
            source: it.next()?.to_string(),
            resource: it.next()?.to_string(),
            mode: it.next()?.to_string(),
            parallelism: it.next()?.parse().ok()?,
            account: match it.next()? {
                "*" => None,
                "-" => Some(String::new()),
                a => Some(a.to_string()),
            },
        })
    }
}

/// How a refresh ended early.
#[derive(Debug)]
enum Stop {
    Failed(SyncError),
    /// SIGTERM or the caller went away: the checkpoint stays for the next call.
    Interrupted(&'static str),
}

impl From<SyncError> for Stop {
    fn from(e: SyncError) -> Stop {
        Stop::Failed(e)
    }
}

impl From<StripeError> for Stop {
    fn from(e: StripeError) -> Stop {
        Stop::Failed(e.into())
    }
}

/// SQLSTATE text of a code (`HV00N`).
pub fn sqlstate_text(code: PgSqlErrorCode) -> String {
    let n = code as i32;
    (0..5).map(|i| char::from(b'0' + ((n >> (6 * i)) & 0x3f) as u8)).collect()
}

fn tx<R>(f: impl FnOnce() -> R) -> R {
    BackgroundWorker::transaction(AssertUnwindSafe(f))
}

fn spi_err(e: pgrx::spi::Error) -> SyncError {
    SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string())
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn stripe_sync_refresh_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let Some(job) = Job::decode(BackgroundWorker::get_extra()) else {
        log!("stripe_sync refresh worker: bad job description");
        return;
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(job.db)), Some(pg_sys::Oid::from(job.user)));
    if job.resource == super::ALL {
        // one resource after the other, each locked only while it runs
        for r in resources::RESOURCES {
            if crate::worker::stopping() {
                break;
            }
            run_resource(&Job { resource: r.name.to_string(), ..job.clone() });
            tx(|| Spi::run("SELECT pg_advisory_unlock_all()")).unwrap_or_else(|e| log!("stripe_sync refresh: {e}"));
        }
    } else {
        run_resource(&job);
    }
}

/// Runs one resource's refresh for each account the job covers, one after
/// another under the resource's lock: the source's own account, then (for a
/// Connect source) every connected account `/v1/accounts` lists. One account's
/// failure is recorded in its own `_sync_state` row and never stops the others.
fn run_resource(job: &Job) {
    let locked = match lock_for_the_run(job) {
        Ok(l) => l,
        Err(e) => return record(job, Err(e)),
    };
    if !locked {
        log!("stripe_sync refresh of {}/{}: another refresh of it is running; not started", job.source, job.resource);
        return;
    }
    let base = tx(|| -> Result<(Client, bool), SyncError> {
        Ok((source::client_for_source(&job.source)?, source::is_connect(&job.source)?))
    });
    let rt = threads::Runtime::new("stripe_sync refresh")
        .map(std::sync::Arc::new)
        .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
    let ((client, connect), rt) = match base.and_then(|b| Ok((b, rt?))) {
        Ok(b) => b,
        Err(e) => return record(&Job { account: Some(job.key().to_string()), ..job.clone() }, Err(e.into())),
    };
    let own = Job { account: Some(String::new()), ..job.clone() };
    let accounts: Vec<String> = match job.account.as_deref() {
        // a connected account has no list of accounts of its own
        Some(a) if job.resource == resources::CONNECTED_ACCOUNTS && !a.is_empty() => return,
        Some(a) => vec![a.to_string()],
        // a connected account has no connected accounts of its own
        None if !connect || job.resource == resources::CONNECTED_ACCOUNTS => vec![String::new()],
        None => {
            // the platform's own account, then every account it lists
            let c = client.clone();
            match rt.block_on(async move { sync::connected_accounts(&c).await }, crate::worker::stopping) {
                Ok(Ok(list)) => std::iter::once(String::new()).chain(list).collect(),
                listed => {
                    record(&own, run_account(&own, &client, &rt, None));
                    let e = match listed {
                        Ok(Err(e)) => SyncError::from(e),
                        Err(e) => SyncError::from(e),
                        Ok(Ok(_)) => unreachable!("handled above"),
                    };
                    let e = SyncError::new(e.code, format!("listing the connected accounts: {}", e.message));
                    return record(&own, Err(e.into()));
                }
            }
        }
    };
    // each account's pass starts reading up to AHEAD accounts before its turn
    // to be written, so that many small accounts are read at once
    // (within the source's one rate budget) instead of one request at a time
    let ahead_ok = accounts.len() > 1;
    let mut waiting: std::collections::VecDeque<String> = accounts.into();
    let mut reading: std::collections::VecDeque<(String, Option<Ahead>)> = std::collections::VecDeque::new();
    loop {
        while ahead_ok && reading.len() < AHEAD && !crate::worker::stopping() {
            let Some(a) = waiting.pop_front() else { break };
            let one = Job { account: Some(a.clone()), ..job.clone() };
            let ahead = start_ahead(&one, &client, &rt).unwrap_or_else(|e| {
                log!("stripe_sync refresh of {}/{}: {a} is read in its turn: {}", job.source, job.resource, e.message);
                None
            });
            reading.push_back((a, ahead));
        }
        // the first account whose reading is over goes first: a large account
        // still reading never holds back the small ones read behind it
        let ready = reading.iter().position(|(_, ahead)| ahead.as_ref().is_none_or(Ahead::read));
        let next = reading.remove(ready.unwrap_or(0));
        let Some((a, ahead)) = next.or_else(|| waiting.pop_front().map(|a| (a, None))) else { break };
        if crate::worker::stopping() {
            break;
        }
        let one = Job { account: Some(a), ..job.clone() };
        record(&one, run_account(&one, &client, &rt, ahead));
    }
}

/// Accounts whose full pass is read ahead of its turn, at most.
const AHEAD: usize = 64;

/// A fresh full pass of one account, reading on a thread of its own before the
/// account's turn: first the newest event (where events refreshes will go on;
/// read before the listing, so no change between them is missed), then the
/// pass. Its channels hold a few pages at most: a large account waits for its
/// turn, which comes once no account read after it is complete.
pub struct Ahead {
    client: Client,
    started: i64,
    hi: i64,
    events: Receiver<Result<Option<(i64, String)>, StripeError>>,
    /// What `events` said, once received (an events refresh that runs a full
    /// one asks twice).
    newest: Option<Result<Option<(i64, String)>, StripeError>>,
    pass: Receiver<MsgResult>,
    /// Events mode: the cursor (created) the events are read from.
    since: Option<i64>,
    /// Set once the whole pass is read (and waits in its channel).
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Ahead {
    /// The newest event, as read ahead.
    fn newest_event(&mut self, ctx: &Ctx) -> Result<Result<Option<(i64, String)>, String>, Stop> {
        if self.newest.is_none() {
            self.newest = Some(ctx.wait_for(&self.events)?);
        }
        events_answer(self.newest.clone().unwrap_or(Ok(None)))
    }

    /// Whether the whole pass has been read.
    fn read(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Starts reading an account's pass ahead of its turn: a fresh full pass, the
/// events since the account's events cursor, or (incremental) the objects
/// created after its cursor. `None` (read in its turn) for
/// a full pass with a checkpoint (it resumes as the checkpoint says) and for an
/// events refresh that will run a full one instead (no cursor, or too old).
fn start_ahead(job: &Job, base: &Client, rt: &threads::Runtime) -> Result<Option<Ahead>, SyncError> {
    let r = resources::lookup(&job.resource).map_err(|e| SyncError::invalid(e.to_string()))?;
    // events since the cursor; or, where an events refresh runs a full one
    // instead (no cursor, one too old, no complete events), a full pass
    let since = match job.mode.as_str() {
        "events" => tx(|| state_value::<i64>(job, "events_cursor_created"))?
            .filter(|t| r.events_complete && *t >= stripe_core::signature::unix_now() - EVENT_RETENTION_SECS),
        _ => None,
    };
    let incremental = job.mode == "incremental";
    let cursor = if incremental { tx(|| state_value::<i64>(job, "incremental_cursor"))? } else { None };
    if !incremental && since.is_none() && tx(|| state_value::<JsonB>(job, "checkpoint"))?.is_some() {
        return Ok(None);
    }
    let client = Account::connected(job.key()).client(base)?.with_own_counters();
    let started = stripe_core::signature::unix_now();
    let hi = started + CLOCK_AHEAD_MARGIN_SECS;
    let (ev_tx, events) = sync_channel(1);
    let (tx, pass) = sync_channel(8);
    let (c, parallelism) = (client.clone(), job.parallelism.max(1));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = done.clone();
    rt.spawn(async move {
        let read = async move {
            // incremental: the objects created after the cursor, no events
            if incremental {
                drop(ev_tx);
                return sync::created_after(c, r, cursor, parallelism, tx).await;
            }
            if r.events_complete {
                let types: Vec<&'static str> = r.event_types().collect();
                let newest = sync::newest_event(&c, &types).await;
                // a full pass goes on without /v1/events (a restricted key); events
                // cannot, nor can anything with an account Stripe refuses
                let stop = newest.as_ref().is_err_and(|e| since.is_some() || !e.is_refused() || e.is_account_invalid());
                let _ = ev_tx.send(newest);
                if stop {
                    return;
                }
            }
            if let Some(since) = since {
                let pass = sync::EventsPass { resource: r, types: events_followed(r), since, parallelism };
                return sync::events_since(c, pass, tx).await;
            }
            match r.scope {
                Scope::Account => {
                    let p = FullPass { resource: r, lo: 0, hi, done: Vec::new(), parallelism };
                    sync::full_pass(c, p, tx).await
                }
                _ => sync::per_customer_pass(c, r, None, Default::default(), parallelism, tx).await,
            }
        };
        read.await;
        finished.store(true, std::sync::atomic::Ordering::Release);
    });
    Ok(Some(Ahead { client, started, hi, events, newest: None, pass, since, done }))
}

/// Runs one account's refresh of a resource, catching Postgres errors too.
fn run_account(
    job: &Job,
    client: &Client,
    rt: &std::sync::Arc<threads::Runtime>,
    ahead: Option<Ahead>,
) -> Result<(), Stop> {
    let (job2, client, rt) = (job.clone(), client.clone(), rt.clone());
    PgTryBuilder::new(AssertUnwindSafe(move || run(&job2, &client, rt, ahead)))
        .catch_others(|e| {
            Err(Stop::Failed(SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, crate::error::caught_message(&e))))
        })
        .execute()
}

/// Records how one account's refresh of a resource ended in `_sync_state`. A
/// connected account of a Connect source that revoked the platform's access is
/// `revoked`, with Stripe's message: reported, and no failure of the run.
fn record(job: &Job, outcome: Result<(), Stop>) {
    let (status, err) = match outcome {
        Ok(()) => return,
        // a source's own account (one made with `account =>`) fails as it is: it is all there is
        Err(Stop::Failed(e)) if e.revoked && !job.key().is_empty() => ("revoked", e),
        Err(Stop::Interrupted(why)) => (
            "interrupted",
            SyncError::new(PgSqlErrorCode::ERRCODE_QUERY_CANCELED, format!("interrupted ({why})"))
                .hint("Call stripe_sync.refresh again: a full refresh resumes from its checkpoint."),
        ),
        Err(Stop::Failed(e)) => ("failed", e),
    };
    unsafe { pg_sys::AbortCurrentTransaction() };
    tx(|| {
        // the row exists unless the run failed before it began (no client, no lock)
        let r = Spi::run_with_args(
            "INSERT INTO stripe_sync._sync_state AS s (source, resource, account, last_mode, status, started_at, finished_at,
                    last_error, last_error_code, last_error_hint, last_error_at)
             VALUES ($1, $2, $7, $8, $3, now(), now(), $4, $5, $6, now())
             ON CONFLICT (source, resource, account) DO UPDATE SET status = $3, finished_at = now(), running_pid = NULL,
                    last_error = $4, last_error_code = $5, last_error_hint = $6, last_error_at = now(), progress = NULL",
            &[
                job.source.as_str().into(),
                job.resource.as_str().into(),
                status.into(),
                err.message.as_str().into(),
                sqlstate_text(err.code).as_str().into(),
                err.hint.as_deref().into(),
                job.key().into(),
                job.mode.as_str().into(),
            ],
        );
        if let Err(e) = r {
            log!("stripe_sync refresh worker: cannot record the failure: {e}");
        }
    });
}

/// Everything a refresh needs, loaded once.
struct Ctx {
    job: Job,
    r: &'static Resource,
    client: Client,
    target: Target,
    started: Instant,
    requests_at_start: u64,
    counts: Counts,
    objects: u64,
    parallelism: usize,
    /// The account's full pass, read ahead of its turn (see [`Ahead`]).
    ahead: Option<Ahead>,
    /// Where the run's HTTP runs.
    rt: std::sync::Arc<threads::Runtime>,
}

impl Ctx {
    fn interrupted(&self) -> Option<&'static str> {
        if crate::worker::stopping() {
            return Some("the worker was asked to stop");
        }
        // a detached run (caller 0) goes on without its caller
        if self.job.caller != 0 && unsafe { libc::kill(self.job.caller, 0) } != 0 {
            return Some("the calling session ended");
        }
        None
    }

    fn api_requests(&self) -> i64 {
        (self.client.requests_sent() - self.requests_at_start) as i64
    }

    /// Runs `f` in a transaction with an SPI connection, also recording progress.
    fn write<R>(
        &mut self,
        f: impl FnOnce(&mut Ctx, &mut pgrx::spi::SpiClient) -> Result<R, SyncError>,
    ) -> Result<R, SyncError> {
        tx(|| {
            Spi::connect_mut(|c| {
                let out = f(self, c)?;
                let secs = self.started.elapsed().as_secs_f64().max(0.001);
                let progress = json!({
                    "objects": self.objects,
                    "rows_inserted": self.counts.inserted,
                    "rows_updated": self.counts.updated,
                    "rows_deleted": self.counts.deleted,
                    "api_requests": self.api_requests(),
                    "objects_per_second": (self.objects as f64 / secs).round(),
                    "seconds": (secs * 10.0).round() / 10.0,
                });
                c.update(
                    "UPDATE stripe_sync._sync_state SET progress = $3, rows_inserted = $4, rows_updated = $5, rows_deleted = $6,
                            api_requests = $7 WHERE source = $1 AND resource = $2 AND account = $8",
                    None,
                    &[
                        self.job.source.as_str().into(),
                        self.r.name.into(),
                        JsonB(progress).into(),
                        self.counts.inserted.into(),
                        self.counts.updated.into(),
                        self.counts.deleted.into(),
                        self.api_requests().into(),
                        self.job.key().into(),
                    ],
                )
                .map_err(spi_err)?;
                Ok(out)
            })
        })
    }

    /// Writes versions; ties are fetched from the API and written as `fetch:` versions.
    fn flush(&mut self, batch: &mut Vec<Version>) -> Result<(), Stop> {
        if batch.is_empty() {
            return Ok(());
        }
        let versions = std::mem::take(batch);
        self.objects += versions.len() as u64;
        let newest = versions.iter().map(|v| v.stamp).max();
        let target = self.target.clone();
        let up = self.write(|ctx, c| {
            let up = target.upsert(c, versions)?;
            ctx.counts += up.counts;
            set_newest(c, ctx, newest)?;
            Ok(up)
        })?;
        if !up.ties.is_empty() {
            self.settle(up.ties)?;
        }
        Ok(())
    }

    /// Adds a page to the batch (flushing when it is full); returns the newest created time in it.
    fn take(
        &mut self,
        batch: &mut Vec<Version>,
        objects: Vec<Value>,
        stamp: i64,
        by: &str,
    ) -> Result<Option<i64>, Stop> {
        let field = self.r.created_field;
        let newest = objects.iter().filter_map(|o| o.get(field).and_then(Value::as_i64)).max();
        batch.extend(objects.into_iter().map(|o| Version { object: o, stamp, by: by.to_string() }));
        if batch.len() >= BATCH {
            self.flush(batch)?;
        }
        Ok(newest)
    }

    /// Fetches objects whose version could not be decided and writes what Stripe has now.
    fn settle(&mut self, ties: Vec<crate::apply::Tie>) -> Result<(), Stop> {
        let client = self.client.clone();
        let r = self.r;
        let ids: Vec<String> = ties.iter().map(|(id, _)| id.clone()).collect();
        let fetched = self.http(async move { sync::fetch_current(&client, r, ids).await })??;
        let target = self.target.clone();
        self.write(|ctx, c| {
            ctx.counts += target.write_fetched(c, fetched, &ties, "fetch:tie")?;
            Ok(())
        })?;
        Ok(())
    }

    /// Runs HTTP work off the main thread; an interruption (SIGTERM, the caller
    /// gone) ends the wait at once, whatever the request still has to do.
    fn http<T: Send + 'static>(&self, fut: impl std::future::Future<Output = T> + Send + 'static) -> Result<T, Stop> {
        let mut why = None;
        match self.rt.block_on(fut, || {
            why = self.interrupted();
            why.is_some()
        }) {
            Ok(r) => Ok(r),
            Err(threads::Wait::Stopped) => Err(Stop::Interrupted(why.unwrap_or("asked to stop"))),
            Err(e) => Err(SyncError::from(e).into()),
        }
    }

    /// Waits for a value from a thread reading ahead, checking for interruption.
    fn wait_for<T>(&self, rx: &Receiver<T>) -> Result<T, Stop> {
        loop {
            if let Some(why) = self.interrupted() {
                return Err(Stop::Interrupted(why));
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(v) => return Ok(v),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(StripeError::Unfinished {
                        message: "the thread reading ahead stopped without an answer".into(),
                    }
                    .into());
                }
            }
        }
    }

    /// Starts a pass on its own thread; returns the receiving end.
    fn spawn_pass(
        &self,
        pass: impl FnOnce(
            Client,
            std::sync::mpsc::SyncSender<MsgResult>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + 'static,
    ) -> Result<Receiver<MsgResult>, Stop> {
        let (tx, rx) = sync_channel(8);
        let client = self.client.clone();
        self.rt.spawn(async move { pass(client, tx).await });
        Ok(rx)
    }

    /// Feeds every message of a pass to `on`, checking for interruption. The pass
    /// is complete only when its end marker arrives: a reading thread that ends
    /// without it (a panic, a runtime that did not start) fails the refresh, and
    /// nothing is decided on what it read.
    fn consume(
        &mut self,
        rx: Receiver<MsgResult>,
        mut on: impl FnMut(&mut Ctx, Msg) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        loop {
            if let Some(why) = self.interrupted() {
                return Err(Stop::Interrupted(why));
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(Msg::End)) => return Ok(()),
                Ok(Ok(msg)) => on(self, msg)?,
                Ok(Err(e)) => return Err(e.into()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(StripeError::Unfinished {
                        message: "the reading thread of the refresh stopped without finishing its pass".into(),
                    }
                    .into());
                }
            }
        }
    }
}

fn set_newest(c: &mut pgrx::spi::SpiClient, ctx: &Ctx, newest: Option<i64>) -> Result<(), SyncError> {
    crate::apply::record_newest(c, &ctx.job.source, &ctx.job.resource, &ctx.target.account, newest)
}

fn state_value<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    job: &Job,
    column: &str,
) -> Result<Option<T>, SyncError> {
    Spi::get_one_with_args::<T>(
        // one row, NULL when the account has no state yet
        &format!(
            "SELECT (SELECT {column} FROM stripe_sync._sync_state WHERE source = $1 AND resource = $2 AND account = $3)"
        ),
        &[job.source.as_str().into(), job.resource.as_str().into(), job.key().into()],
    )
    .map_err(spi_err)
}

fn set_state(job: &Job, assignments: &str, args: Vec<pgrx::datum::DatumWithOid>) -> Result<(), SyncError> {
    let n = args.len() + 3;
    let mut all: Vec<pgrx::datum::DatumWithOid> = vec![job.source.as_str().into(), job.resource.as_str().into()];
    all.extend(args);
    all.push(job.key().into());
    Spi::run_with_args(
        &format!(
            "UPDATE stripe_sync._sync_state SET {assignments} WHERE source = $1 AND resource = $2 AND account = ${n}"
        ),
        &all,
    )
    .map_err(spi_err)
}

/// Takes the per-resource lock for the worker's whole life (a session-level
/// advisory lock, released when the worker exits however it ends), waiting up to
/// 2 seconds. False: another refresh of the resource runs; nothing is touched.
fn lock_for_the_run(job: &Job) -> Result<bool, Stop> {
    let key = super::lock_key(&job.source, &job.resource);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got =
            tx(|| Spi::get_one_with_args::<bool>("SELECT pg_try_advisory_lock(hashtext($1))", &[key.as_str().into()]))
                .map_err(spi_err)?
                .unwrap_or(false);
        if got {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        if !crate::worker::wait(Duration::from_millis(100)) {
            // shutting down before it began: nothing to record
            return Ok(false);
        }
    }
}

/// One account's refresh of a resource (`job.account`), under the resource's
/// lock; `ahead`: its full pass, already reading.
fn run(job: &Job, base: &Client, rt: std::sync::Arc<threads::Runtime>, mut ahead: Option<Ahead>) -> Result<(), Stop> {
    let r = resources::lookup(&job.resource).map_err(|e| SyncError::invalid(e.to_string()))?;
    tx(|| -> Result<_, SyncError> {
        Spi::run_with_args(
            "INSERT INTO stripe_sync._sync_state AS s (source, resource, account, last_mode, status, started_at, finished_at,
                    running_pid, rows_inserted, rows_updated, rows_deleted, api_requests, note, last_error, progress)
             VALUES ($1, $2, $4, $3, 'running', now(), NULL, pg_backend_pid(), 0, 0, 0, 0, NULL, NULL, NULL)
             ON CONFLICT (source, resource, account) DO UPDATE SET last_mode = $3, status = 'running', started_at = now(), finished_at = NULL,
                    running_pid = pg_backend_pid(), rows_inserted = 0, rows_updated = 0, rows_deleted = 0, api_requests = 0,
                    note = NULL, last_error = NULL, last_error_code = NULL, last_error_hint = NULL, progress = NULL",
            &[job.source.as_str().into(), job.resource.as_str().into(), job.mode.as_str().into(), job.key().into()],
        )
        .map_err(spi_err)?;
        Ok(())
    })?;
    // the ids the rows carry: the source's own (learned once), or the connected account's
    let account = if job.key().is_empty() {
        Account::own(&tx(|| source::own_account(&job.source, base, crate::worker::stopping))?)
    } else {
        Account::connected(job.key())
    };
    let (client, target) = tx(|| -> Result<_, SyncError> {
        let client = match &ahead {
            Some(a) => a.client.clone(),
            None => account.client(base)?.with_own_counters(),
        };
        let (schema, table) = table_of(&job.source, r)?;
        // late webhook deliveries are the older versions a re-read must outrank
        let webhooks = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT FROM stripe_sync._webhooks WHERE source = $1 AND cardinality(secrets) > 0)",
            &[job.source.as_str().into()],
        )
        .map_err(spi_err)?
        .unwrap_or(true);
        let version = client.config().api_version.clone();
        Ok((client, Target::new(r, &job.source, &schema, &table, webhooks, &version, &account)))
    })?;
    let parallelism = job.parallelism.max(1);
    let mut ctx = Ctx {
        job: job.clone(),
        r,
        // a client of its own: its counters hold this account's requests only (also those read ahead)
        requests_at_start: 0,
        client,
        target,
        ahead: ahead.take(),
        rt,
        started: Instant::now(),
        counts: Counts::default(),
        objects: 0,
        parallelism,
    };
    match job.mode.as_str() {
        "full" => full(&mut ctx)?,
        "incremental" => incremental(&mut ctx)?,
        _ => events(&mut ctx)?,
    }
    let api = ctx.api_requests();
    let counts = ctx.counts;
    tx(|| {
        set_state(
            job,
            "status = 'succeeded', finished_at = now(), running_pid = NULL, rows_inserted = $3, rows_updated = $4,
             rows_deleted = $5, api_requests = $6, progress = NULL",
            vec![counts.inserted.into(), counts.updated.into(), counts.deleted.into(), api.into()],
        )
    })?;
    Ok(())
}

/// Adds a note to `sync_status.note` (once: a full refresh run by an events
/// refresh may find the same thing again).
fn note(ctx: &Ctx, text: &str) -> Result<(), SyncError> {
    tx(|| {
        set_state(
            &ctx.job,
            "note = CASE WHEN note IS NULL THEN $3 WHEN position($3 IN note) > 0 THEN note ELSE note || $4 || $3 END",
            vec![text.into(), super::NOTE_SEPARATOR.into()],
        )
    })
}

/// Why there is no events cursor when Stripe refuses `/v1/events` (a restricted
/// key without Events, or a Stripe-compatible server without the endpoint).
fn events_refused_note(e: &StripeError) -> String {
    let why = match e {
        StripeError::Permission { .. } => format!("the API key lacks \"{}\"", resources::EVENTS_PERMISSION),
        other => format!("Stripe refused {} ({other})", resources::EVENTS_PATH),
    };
    format!(
        "events mode needs \"{}\": {why}, so no events cursor was recorded and refresh(..., 'events') runs full refreshes; give the restricted key that permission to make events refreshes cheap",
        resources::EVENTS_PERMISSION
    )
}

/// The newest event of a resource's types, or `Err(note)` when Stripe refuses
/// `/v1/events`: events are optional for a full pass.
fn newest_event(ctx: &Ctx, r: &'static Resource) -> Result<Result<Option<(i64, String)>, String>, Stop> {
    let client = ctx.client.clone();
    let types: Vec<&'static str> = r.event_types().collect();
    events_answer(ctx.http(async move { sync::newest_event(&client, &types).await })?)
}

/// What `/v1/events` answered for the newest event: a refusal is a note (events
/// are optional for a full pass), unless it refused the account itself.
fn events_answer(
    answer: Result<Option<(i64, String)>, StripeError>,
) -> Result<Result<Option<(i64, String)>, String>, Stop> {
    match answer {
        Ok(e) => Ok(Ok(e)),
        Err(e) if e.is_refused() && !e.is_account_invalid() => Ok(Err(events_refused_note(&e))),
        Err(e) => Err(e.into()),
    }
}

/// How far ahead of this server's clock a full pass lists `created` (a day):
/// Stripe's clock may run ahead of ours, and learning by how much would cost a
/// request per resource.
const CLOCK_AHEAD_MARGIN_SECS: i64 = 86_400;

/// A full refresh: every object read again, changed rows written, rows of objects
/// that no longer exist deleted. Resumes from its checkpoint.
fn full(ctx: &mut Ctx) -> Result<(), Stop> {
    let checkpoint: Option<Value> = tx(|| state_value::<JsonB>(&ctx.job, "checkpoint"))?.map(|j| j.0);
    let r = ctx.r;
    let resuming = checkpoint.is_some();
    // a pass read ahead is used when there is no checkpoint to resume from
    let ahead = if checkpoint.is_none() { ctx.ahead.take() } else { None };
    let mut ahead_pass = None;
    let mut cp = match checkpoint {
        Some(cp) => cp,
        None => {
            let now = ahead.as_ref().map_or_else(stripe_core::signature::unix_now, |a| a.started);
            let hi = ahead.as_ref().map_or(now + CLOCK_AHEAD_MARGIN_SECS, |a| a.hi);
            let newest = match ahead {
                Some(mut a) => {
                    let got = if r.events_complete { Some(a.newest_event(ctx)?) } else { None };
                    ahead_pass = Some(a.pass);
                    got
                }
                None if r.events_complete => Some(newest_event(ctx, r)?),
                None => None,
            };
            // where events refreshes continue once this pass is done; without
            // access to /v1/events the pass goes on with no events cursor
            let events_cursor = if let Some(newest) = newest {
                match newest {
                    Ok(Some((t, id))) => json!([t, id]),
                    Ok(None) => json!([now, null]),
                    Err(why) => {
                        note(ctx, &why)?;
                        Value::Null
                    }
                }
            } else {
                Value::Null
            };
            // the pass covers everything created up to now, and a margin beyond
            // it for a Stripe clock ahead of ours (no request spent to learn it):
            // a row unseen in that range is gone, unless it was written after the
            // listing began (then it is fetched)
            let cp = json!({
                "started": now,
                "hi": hi,
                "newest": null,
                "done": [],
                "after": null,
                "events_cursor": events_cursor,
            });
            tx(|| set_state(&ctx.job, "checkpoint = $3", vec![JsonB(cp.clone()).into()]))?;
            cp
        }
    };
    let mut batch: Vec<Version> = Vec::new();
    let by = "refresh:full".to_string();
    // incremental refreshes continue after the newest object this pass saw
    let mut newest_created: Option<i64> = cp["newest"].as_i64().filter(|_| r.scope == Scope::Account);
    if r.scope == Scope::Account {
        let hi = cp["hi"].as_i64().unwrap_or(0);
        let done: Vec<(i64, i64)> = cp["done"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| Some((p[0].as_i64()?, p[1].as_i64()?))).collect())
            .unwrap_or_default();
        let pass = FullPass { resource: r, lo: 0, hi, done, parallelism: ctx.parallelism };
        let rx = match ahead_pass.take() {
            Some(rx) => rx,
            None => ctx.spawn_pass(move |client, tx| Box::pin(sync::full_pass(client, pass, tx)))?,
        };
        ctx.consume(rx, |ctx, msg| {
            match msg {
                Msg::Objects { objects, stamp } => {
                    newest_created = newest_created.max(ctx.take(&mut batch, objects, stamp, &by)?);
                }
                Msg::RangeDone { lo, hi, seen, since } => {
                    ctx.flush(&mut batch)?;
                    if let Some(done) = cp["done"].as_array_mut() {
                        done.push(json!([lo, hi]));
                    }
                    // a resumed pass does not list the done ranges again
                    cp["newest"] = json!(newest_created);
                    let target = ctx.target.clone();
                    let cp_now = cp.clone();
                    let recent = ctx.write(|ctx, c| {
                        let recent = target.unseen_recent_in_range(c, lo, hi, since, &seen)?;
                        ctx.counts += target.delete_unseen_in_range(c, lo, hi, since, seen)?;
                        c.update(
                            "UPDATE stripe_sync._sync_state SET checkpoint = $3
                             WHERE source = $1 AND resource = $2 AND account = $4",
                            None,
                            &[
                                ctx.job.source.as_str().into(),
                                ctx.job.resource.as_str().into(),
                                JsonB(cp_now).into(),
                                ctx.job.key().into(),
                            ],
                        )
                        .map_err(spi_err)?;
                        Ok(recent)
                    })?;
                    if !recent.is_empty() {
                        ctx.settle(recent)?;
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
    } else {
        let after = cp["after"].as_str().map(|id| (id.to_string(), cp["after_created"].as_i64()));
        let started = cp["started"].as_i64().unwrap_or(0);
        let parallelism = ctx.parallelism;
        let rx = match ahead_pass.take() {
            Some(rx) => rx,
            None => ctx.spawn_pass(move |client, tx| {
                Box::pin(sync::per_customer_pass(client, r, after, Default::default(), parallelism, tx))
            })?,
        };
        let mut customers: Vec<String> = Vec::new();
        ctx.consume(rx, |ctx, msg| {
            match msg {
                Msg::Objects { objects, stamp } => {
                    newest_created = newest_created.max(ctx.take(&mut batch, objects, stamp, &by)?);
                }
                Msg::CustomerDone { customer, seen, since } => {
                    ctx.flush(&mut batch)?;
                    let target = ctx.target.clone();
                    let cust = customer.clone();
                    let recent = ctx.write(|ctx, c| {
                        let recent = target.unseen_recent_of_customer(c, &cust, since, &seen)?;
                        ctx.counts += target.delete_unseen_of_customer(c, &cust, since, seen)?;
                        Ok(recent)
                    })?;
                    if !recent.is_empty() {
                        ctx.settle(recent)?;
                    }
                    customers.push(customer);
                }
                Msg::CustomersThrough { id, created } => {
                    ctx.flush(&mut batch)?;
                    cp["after"] = json!(id);
                    cp["after_created"] = json!(created);
                    let cp_now = cp.clone();
                    tx(|| set_state(&ctx.job, "checkpoint = $3", vec![JsonB(cp_now).into()]))?;
                }
                _ => {}
            }
            Ok(())
        })?;
        ctx.flush(&mut batch)?;
        // rows of customers that no longer exist; only known after an uninterrupted pass
        if !resuming {
            let target = ctx.target.clone();
            ctx.write(|ctx, c| {
                ctx.counts += target.delete_orphans(c, started, customers)?;
                Ok(())
            })?;
        }
    }
    ctx.flush(&mut batch)?;
    // the pass is complete: drop the checkpoint, move the cursors forward
    let cursor = cp["events_cursor"].clone();
    tx(|| {
        set_state(
            &ctx.job,
            "checkpoint = NULL, incremental_cursor = greatest(incremental_cursor, $3)",
            vec![newest_created.into()],
        )?;
        if let Some(t) = cursor.get(0).and_then(Value::as_i64) {
            Spi::run_with_args(
                "UPDATE stripe_sync._sync_state SET events_cursor_created = $3, events_cursor_id = $4
                 WHERE source = $1 AND resource = $2 AND account = $5
                   AND (events_cursor_created IS NULL OR events_cursor_created < $3)",
                &[
                    ctx.job.source.as_str().into(),
                    ctx.job.resource.as_str().into(),
                    t.into(),
                    cursor.get(1).and_then(Value::as_str).into(),
                    ctx.job.key().into(),
                ],
            )
            .map_err(spi_err)?;
        }
        Ok::<(), SyncError>(())
    })?;
    Ok(())
}

/// Only objects created after the cursor (append-only; misses updates and deletions).
fn incremental(ctx: &mut Ctx) -> Result<(), Stop> {
    let r = ctx.r;
    let cursor: Option<i64> = tx(|| state_value::<i64>(&ctx.job, "incremental_cursor"))?;
    let parallelism = ctx.parallelism;
    // read ahead from the same cursor (only this run moves it), or now
    let rx = match ctx.ahead.take() {
        Some(a) => a.pass,
        None => ctx.spawn_pass(move |client, tx| Box::pin(sync::created_after(client, r, cursor, parallelism, tx)))?,
    };
    let mut batch = Vec::new();
    let mut newest = cursor;
    let by = "refresh:incremental".to_string();
    ctx.consume(rx, |ctx, msg| {
        if let Msg::Objects { objects, stamp } = msg {
            newest = newest.max(ctx.take(&mut batch, objects, stamp, &by)?);
        }
        Ok(())
    })?;
    ctx.flush(&mut batch)?;
    // the list is newest first: the cursor moves only once it is complete
    tx(|| set_state(&ctx.job, "incremental_cursor = $3", vec![newest.into()]))?;
    Ok(())
}

/// Every change since the events cursor, applied in Stripe's order.
fn events(ctx: &mut Ctx) -> Result<(), Stop> {
    let r = ctx.r;
    if !r.events_complete {
        note(ctx, &format!("{} has no complete events at Stripe: ran a full refresh instead", r.name))?;
        return full(ctx);
    }
    // without access to /v1/events, a full refresh is the way to the truth
    let mut ahead = ctx.ahead.take();
    let access = match ahead.as_mut() {
        Some(a) => a.newest_event(ctx)?,
        None => newest_event(ctx, r)?,
    };
    // a full pass read ahead serves the full refresh this may run instead
    let (ahead, full_ahead): (Option<Ahead>, Option<Ahead>) = match ahead {
        Some(a) if a.since.is_none() => (None, Some(a)),
        a => (a, None),
    };
    ctx.ahead = full_ahead;
    if let Err(why) = access {
        note(ctx, &format!("{why} (ran a full refresh instead)"))?;
        tx(|| set_state(&ctx.job, "events_cursor_created = NULL, events_cursor_id = NULL", vec![]))?;
        return full(ctx);
    }
    let created: Option<i64> = tx(|| state_value::<i64>(&ctx.job, "events_cursor_created"))?;
    let cursor_id: Option<String> = tx(|| state_value::<String>(&ctx.job, "events_cursor_id"))?;
    let now = stripe_core::signature::unix_now();
    let since = match created {
        None => {
            note(
                ctx,
                &format!(
                    "no events cursor for {} yet: ran a full refresh; the next events refresh continues from Stripe's events",
                    r.name
                ),
            )?;
            return full(ctx);
        }
        Some(t) if t < now - EVENT_RETENTION_SECS => {
            note(
                ctx,
                &format!(
                    "the events cursor of {} is older than Stripe's 30-day event retention: ran a full refresh instead",
                    r.name
                ),
            )?;
            tx(|| set_state(&ctx.job, "events_cursor_created = NULL, events_cursor_id = NULL", vec![]))?;
            return full(ctx);
        }
        Some(t) => t,
    };
    let pass = sync::EventsPass { resource: r, types: events_followed(r), since, parallelism: ctx.parallelism };
    let rx = match ahead {
        Some(a) if a.since == Some(since) => a.pass,
        _ => ctx.spawn_pass(move |client, tx| Box::pin(sync::events_since(client, pass, tx)))?,
    };
    // events of the cursor's second up to the cursor itself were applied already
    let mut skipping = cursor_id.is_some();
    let mut held: Vec<Value> = Vec::new();
    // applied (and the cursor checkpointed) in transactions of up to
    // EVENTS_PER_TX events, collapsed to the newest version of each object
    let api_version = ctx.client.config().api_version.clone();
    let mut todo = EventEffects::default();
    ctx.consume(rx, |ctx, msg| {
        let Msg::Events(chunk) = msg else { return Ok(()) };
        for e in chunk {
            if skipping {
                let t = e.get("created").and_then(Value::as_i64).unwrap_or(0);
                if t == since && e.get("id").and_then(Value::as_str) == cursor_id.as_deref() {
                    skipping = false;
                    held.clear();
                    continue;
                }
                if t <= since {
                    held.push(e);
                    continue;
                }
                // the cursor event is gone: apply what was held back (duplicates are harmless)
                skipping = false;
                for h in held.drain(..) {
                    todo.add(r, h, &api_version);
                }
            }
            todo.add(r, e, &api_version);
            if todo.events >= EVENTS_PER_TX || todo.versions.len() >= VERSIONS_PER_TX {
                apply_events(ctx, std::mem::take(&mut todo))?;
            }
        }
        Ok(())
    })?;
    apply_events(ctx, todo)?;
    if skipping && !held.is_empty() {
        let mut rest = EventEffects::default();
        for h in held {
            rest.add(r, h, &api_version);
        }
        apply_events(ctx, rest)?;
    }
    Ok(())
}

/// The event types an events refresh of `r` reads.
fn events_followed(r: &'static Resource) -> Vec<String> {
    let mut types: Vec<String> = r.event_types().map(str::to_string).collect();
    if let Some(parent) = r.parent() {
        // a deleted customer takes its payment methods with it, without events of their own
        types.push(parent.deleted_event.into());
    }
    types
}

/// Events applied per transaction in events mode, at most; the cursor moves
/// with each transaction, so a run that stops re-reads fewer than this.
const EVENTS_PER_TX: usize = 5_000;

/// Objects written per transaction in events mode, at most: the events of a
/// transaction are collapsed to the newest version of each object, so an
/// object changed many times in a busy window is written once per transaction.
const VERSIONS_PER_TX: usize = 1_000;

/// Applies events (oldest first) and moves the events cursor, in one transaction.
fn apply_events(ctx: &mut Ctx, effects: EventEffects) -> Result<(), Stop> {
    let Some(cursor) = effects.last.clone() else { return Ok(()) };
    ctx.objects += effects.events as u64;
    let newest = effects.newest;
    let target = ctx.target.clone();
    let move_cursor = |c: &mut pgrx::spi::SpiClient, job: &Job| {
        c.update(
            "UPDATE stripe_sync._sync_state SET events_cursor_created = $3, events_cursor_id = $4
             WHERE source = $1 AND resource = $2 AND account = $5",
            None,
            &[
                job.source.as_str().into(),
                job.resource.as_str().into(),
                cursor.0.into(),
                cursor.1.as_str().into(),
                job.key().into(),
            ],
        )
        .map(|_| ())
        .map_err(spi_err)
    };
    let up = ctx.write(|ctx, c| {
        let (up, deleted) = target.apply_events(effects, c)?;
        ctx.counts += up.counts;
        ctx.counts += deleted;
        set_newest(c, ctx, newest)?;
        // with ties, the cursor moves once they are settled: a run that stops
        // before that applies these events again, and finds the ties again
        if up.ties.is_empty() {
            move_cursor(c, &ctx.job)?;
        }
        Ok(up)
    })?;
    if !up.ties.is_empty() {
        ctx.settle(up.ties)?;
        ctx.write(|ctx, c| move_cursor(c, &ctx.job))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip() {
        let j = Job {
            db: 5,
            user: 10,
            caller: 42,
            source: "default".into(),
            resource: "invoice_item".into(),
            mode: "full".into(),
            parallelism: 8,
            account: None,
        };
        assert_eq!(Job::decode(&j.encode()), Some(j.clone()));
        for a in [Some(String::new()), Some("acct_1Abc".to_string())] {
            let one = Job { account: a, ..j.clone() };
            assert_eq!(Job::decode(&one.encode()), Some(one));
        }
        assert_eq!(Job::decode("1 2"), None);
    }
}
