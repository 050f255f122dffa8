//! `stripe_sync.refresh(resource, mode, source)`: brings a materialized table up
//! to date with Stripe.
//!
//! The work runs in a dynamic background worker ([`run`]) that commits as it
//! goes: progress is visible to other sessions, and an interrupted full refresh
//! (cancel, lost connection, restart, exhausted retries) resumes from its
//! checkpoint on the next call. The calling session waits for the worker, stops
//! it if the call is cancelled, and returns what it did.
//!
//! Two refreshes of the same source and resource never run at once: the worker
//! holds a session-level advisory lock on the resource for its whole run (so a
//! detached run, `refresh('all')` and the webhook worker's catch-up are covered
//! alike, and each resource is locked only while it runs). A call for a busy
//! resource waits up to 2 seconds for it, then fails with SQLSTATE 55P03.

pub mod run;

use crate::error::SyncError;
use pgrx::bgworkers::BackgroundWorkerBuilder;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, PgTryBuilder};
use stripe_core::resources;

/// The resource name that means every resource.
pub const ALL: &str = "all";

/// The modes of a refresh.
pub const MODES: &[&str] = &["full", "incremental", "events"];

/// Between the notes a refresh records in `sync_status.note`.
pub const NOTE_SEPARATOR: &str = "\n";

/// `backend_type` of refresh workers.
pub const WORKER_TYPE: &str = "stripe_sync refresh";

/// One result row: resource, mode, inserted, updated, deleted, API requests, started, finished.
type Row = (
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    Option<pgrx::datum::TimestampWithTimeZone>,
    Option<pgrx::datum::TimestampWithTimeZone>,
);

/// A required argument of an SQL function.
fn not_null<'a>(v: Option<&'a str>, what: &str) -> Result<&'a str, SyncError> {
    v.ok_or_else(|| {
        SyncError::new(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{what} must not be NULL")).hint(
            "refresh(resource or 'all', mode => 'full' | 'incremental' | 'events', source => 'default', wait => true)",
        )
    })
}

/// The result rows of `refresh`.
type Rows = TableIterator<
    'static,
    (
        name!(resource, String),
        name!(mode, String),
        name!(rows_inserted, i64),
        name!(rows_updated, i64),
        name!(rows_deleted, i64),
        name!(api_requests, i64),
        name!(started_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(finished_at, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
>;

/// The C symbol of 0.1.0's three-argument `refresh` (no SQL of its own): a
/// database not yet updated to this library's version gets the version check's
/// error (55000, with the `ALTER EXTENSION` hint) rather than a failed call.
#[pg_extern(sql = false)]
fn refresh(_resource: Option<&str>, _mode: Option<&str>, _source: Option<&str>) -> Rows {
    crate::require_updated()
        .and_then(|_| {
            Err(SyncError::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "refresh has a new definition",
            )
            .hint("Run ALTER EXTENSION stripe_sync UPDATE;"))
        })
        .unwrap_or_else(|e| e.raise())
}

/// Refreshes one resource (or `'all'`) of a source; one row per resource.
#[allow(clippy::type_complexity)]
#[pg_extern(name = "refresh")]
fn refresh_resources(
    // Options, checked below: a NULL gets a clear error (22004), not a failed unboxing
    resource: Option<&str>,
    mode: default!(Option<&str>, "'incremental'"),
    source: default!(Option<&str>, "'default'"),
    wait: default!(Option<bool>, "true"),
    account: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(resource, String),
        name!(mode, String),
        name!(rows_inserted, i64),
        name!(rows_updated, i64),
        name!(rows_deleted, i64),
        name!(api_requests, i64),
        name!(started_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(finished_at, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    let rows = (|| {
        crate::require_updated()?;
        let (resource, mode, source) =
            (not_null(resource, "resource")?, not_null(mode, "mode")?, not_null(source, "source")?);
        let account = account_of(source, account)?;
        let account = account.as_deref();
        if account.is_some_and(|a| !a.is_empty())
            && resources::lookup(resource).is_ok_and(|r| r.name == resources::CONNECTED_ACCOUNTS)
        {
            return Err(SyncError::invalid(format!(
                "the {} table is the platform's list of its connected accounts; a connected account has none",
                resources::CONNECTED_ACCOUNTS
            ))
            .hint("Refresh it without account =>."));
        }
        if wait.unwrap_or(true) {
            refresh_all(resource, mode, source, account)
        } else {
            start_detached(resource, mode, source, account)
        }
    })();
    match rows {
        Ok(rows) => TableIterator::new(rows),
        Err(e) => e.raise(),
    }
}

/// The account a call names (`account => ...`), as a job's key: `None` for
/// every account of the source, `Some("")` for the source's own.
fn account_of(source: &str, account: Option<&str>) -> Result<Option<String>, SyncError> {
    let Some(a) = account else { return Ok(None) };
    crate::source::require(source)?;
    if !stripe_core::client::valid_account_id(a) {
        return Err(SyncError::invalid(format!("\"{a}\" is not a Stripe account id"))
            .hint("Name an account as acct_..., as stripe_sync.sync_status and the account column show it."));
    }
    if crate::source::known_account_id(source)?.as_deref() == Some(a) {
        return Ok(Some(String::new()));
    }
    if !crate::source::is_connect(source)? {
        return Err(SyncError::invalid(format!(
            "source \"{source}\" covers one account, not the connected account {a}"
        ))
        .hint(
            "account => names a connected account of a source made with add_source(..., connected_accounts => true).",
        ));
    }
    Ok(Some(a.to_string()))
}

/// The resources a call names (`all`, or one name in any accepted spelling).
fn targets(resource: &str, mode: &str) -> Result<Vec<&'static resources::Resource>, SyncError> {
    if !MODES.contains(&mode) {
        return Err(SyncError::invalid(format!("unknown refresh mode \"{mode}\"")).hint(format!(
            "Valid modes: {} (full re-reads everything, incremental appends new objects, events follows every change).",
            MODES.join(", ")
        )));
    }
    if resource == ALL {
        return Ok(resources::RESOURCES.iter().collect());
    }
    Ok(vec![resources::lookup(resource).map_err(|e| {
        SyncError::invalid(format!("{e}, or all")).hint(
            "Names are also accepted in CamelCase (InvoiceItem); stripe_sync.sync_status lists what was refreshed.",
        )
    })?])
}

/// Starts the run in a background worker and returns once it runs (one row,
/// counts zero, `finished_at` NULL); progress and the outcome are in
/// `sync_status`. `all` runs the resources one after another in one worker.
/// The call holds no snapshot or lock once it returns. A resource whose refresh
/// is running is skipped with a NOTICE (no row).
fn start_detached(resource: &str, mode: &str, source: &str, account: Option<&str>) -> Result<Vec<Row>, SyncError> {
    let targets = targets(resource, mode)?;
    crate::source::require(source)?;
    let name = if targets.len() == 1 { targets[0].name } else { ALL };
    let first = targets[0].name;
    // a busy resource is skipped with a NOTICE: a scheduled job that overlaps its
    // previous run succeeds and changes nothing (the running refresh covers it)
    let skipped = |e: SyncError| {
        pgrx::notice!("{}; this call skips it", e.message);
        Ok(Vec::new())
    };
    if let Err(e) = wait_until_free(source, first) {
        return skipped(e);
    }
    let launched = clock();
    let worker = launch(source, name, mode, unsafe { pg_sys::MyProcPid }, true, account)?;
    // an ended worker (pid 0) is found by its row below, or skipped
    let worker_pid = started(&worker)?.unwrap_or(0);
    // it runs once it has the lock and says so; or it ended (quickly, or refused)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let started = Spi::get_one_with_args::<pgrx::datum::TimestampWithTimeZone>(
            "SELECT max(started_at) FROM stripe_sync._sync_state
             WHERE source = $1 AND resource = $2 AND started_at >= to_timestamp($3) AND (running_pid = $4 OR status <> 'running')",
            &[source.into(), first.into(), launched.into(), worker_pid.into()],
        )
        .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))?;
        if let Some(at) = started {
            return Ok(vec![(name.to_string(), mode.to_string(), 0, 0, 0, 0, Some(at), None)]);
        }
        if worker.pid().is_err() || std::time::Instant::now() > deadline {
            return skipped(already_running(source, first));
        }
        pgrx::check_for_interrupts!();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn refresh_all(resource: &str, mode: &str, source: &str, account: Option<&str>) -> Result<Vec<Row>, SyncError> {
    let targets = targets(resource, mode)?;
    crate::source::require(source)?;
    // One resource's failure never stops the others: each is recorded in
    // sync_status as it happens, and one error at the end lists them all.
    let mut rows = Vec::new();
    let mut failed: Vec<(&'static str, SyncError)> = Vec::new();
    let mut notices = std::collections::HashSet::new();
    // a connected account has no list of accounts of its own
    let connected = account.is_some_and(|a| !a.is_empty());
    for r in targets.into_iter().filter(|r| !(connected && r.name == resources::CONNECTED_ACCOUNTS)) {
        match refresh_one(r, mode, source, account, &mut notices) {
            Ok(row) => rows.push(row),
            Err(e) => failed.push((r.name, e)),
        }
    }
    match failed.len() {
        0 => Ok(rows),
        1 if rows.is_empty() => Err(failed.remove(0).1),
        n => Err(combined(n + rows.len(), failed)),
    }
}

/// One error for the resources of a run that failed: the first failure's
/// SQLSTATE, every resource with its cause, and each distinct hint once.
fn combined(total: usize, failed: Vec<(&'static str, SyncError)>) -> SyncError {
    let names: Vec<&str> = failed.iter().map(|(r, _)| *r).collect();
    let causes: Vec<String> = failed.iter().map(|(r, e)| format!("{r}: {}", e.message)).collect();
    let mut hints: Vec<String> = Vec::new();
    for (r, e) in &failed {
        if let Some(h) = &e.hint
            && !hints.iter().any(|x| x.ends_with(h.as_str()))
        {
            hints.push(format!("{r}: {h}"));
        }
    }
    hints.push(
        "The other resources were refreshed and committed; every failure is in stripe_sync.sync_status (status, last_error)."
            .into(),
    );
    SyncError::new(
        failed[0].1.code,
        format!(
            "refresh failed for {} of {total} resources ({}): {}",
            failed.len(),
            names.join(", "),
            causes.join("; ")
        ),
    )
    .hint(hints.join(" "))
}

/// The advisory lock key of a source's resource: held by whoever refreshes it
/// (the calling session for `refresh`, the webhook worker for its catch-up).
pub fn lock_key(source: &str, resource: &str) -> String {
    format!("stripe_sync:{source}:{resource}")
}

/// Whether the resource's lock is free now (taken and given back at once: the
/// refresh worker takes it for its run).
pub fn lock_is_free(source: &str, resource: &str) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT pg_try_advisory_lock(hashtext($1)) AND pg_advisory_unlock(hashtext($1))",
        &[lock_key(source, resource).as_str().into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Waits up to 2 seconds for a running refresh of the resource to end.
fn wait_until_free(source: &str, resource: &str) -> Result<(), SyncError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        if lock_is_free(source, resource) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(already_running(source, resource));
        }
        pgrx::check_for_interrupts!();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn already_running(source: &str, resource: &str) -> SyncError {
    let pid = Spi::get_one_with_args::<i32>(
        "SELECT max(running_pid) FROM stripe_sync._sync_state WHERE source = $1 AND resource = $2",
        &[source.into(), resource.into()],
    )
    .ok()
    .flatten();
    SyncError::new(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        format!(
            "a refresh of {source}/{resource} is already running{}",
            pid.map(|p| format!(" (worker pid {p})")).unwrap_or_default()
        ),
    )
    .hint("Wait for it to finish (see stripe_sync.sync_status), or schedule refreshes further apart.")
}

/// Starts a refresh worker without waiting for it (it takes the resource's lock
/// itself). `caller` is told when it starts and stops; unless `detached`, the run
/// stops when the caller's session ends.
pub fn launch(
    source: &str,
    resource: &str,
    mode: &str,
    caller: i32,
    detached: bool,
    account: Option<&str>,
) -> Result<pgrx::bgworkers::DynamicBackgroundWorker, SyncError> {
    let (db, user) = unsafe { (pg_sys::MyDatabaseId, pg_sys::GetUserId()) };
    let job = run::Job {
        db: db.to_u32(),
        user: user.to_u32(),
        caller: if detached { 0 } else { caller },
        source: source.to_string(),
        resource: resource.to_string(),
        mode: mode.to_string(),
        parallelism: crate::guc::MAX_PARALLEL_REQUESTS.get().max(1) as usize,
        account: account.map(str::to_string),
    };
    BackgroundWorkerBuilder::new(&format!("stripe_sync refresh {source}/{resource}"))
        .set_type(WORKER_TYPE)
        .set_library("stripe_sync")
        .set_function("stripe_sync_refresh_main")
        .set_extra(&job.encode())
        .enable_spi_access()
        .set_notify_pid(caller)
        .load_dynamic()
        .map_err(|_| {
            SyncError::new(
                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                "no background worker slot is free for the refresh",
            )
            .hint("Raise max_worker_processes (refreshes run in background workers), or run fewer refreshes at once.")
        })
}

/// Now, to the microsecond (a run that ended earlier in the same second is not ours).
fn clock() -> f64 {
    Spi::get_one::<f64>("SELECT extract(epoch FROM clock_timestamp())::float8").ok().flatten().unwrap_or(0.0)
}

fn refresh_one(
    r: &'static resources::Resource,
    mode: &str,
    source: &str,
    account: Option<&str>,
    notices: &mut std::collections::HashSet<String>,
) -> Result<Row, SyncError> {
    wait_until_free(source, r.name)?;
    let launched = clock();
    let pid = unsafe { pg_sys::MyProcPid };
    let worker = launch(source, r.name, mode, pid, false, account)?;
    match started(&worker)? {
        Some(worker_pid) => {
            // If this call is cancelled, stop the worker: its committed work stays and
            // the next call resumes from its checkpoint.
            PgTryBuilder::new(move || {
                let _ = worker.wait_for_shutdown();
            })
            .catch_others(move |e| {
                unsafe { libc::kill(worker_pid, libc::SIGTERM) };
                e.rethrow()
            })
            .execute();
        }
        // ended already: a run leaves its row; a worker that never ran leaves none
        None if !ran_since(source, r.name, launched)? => {
            return Err(SyncError::new(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("the refresh worker of {} ended without running it", r.name),
            )
            .hint("Another refresh of it may have begun meanwhile (see stripe_sync.sync_status), or see the server log; then call stripe_sync.refresh again."));
        }
        None => {}
    }
    read_result(source, r.name, mode, launched, notices)
}

/// Waits for a launched worker to start: its pid, or None when it has ended
/// already. Postgres says `Stopped` both for a worker that never ran and for a
/// short run that ended before this backend looked (seen in CI: a refresh of a
/// resource with few objects); the run's row in `_sync_state` tells them apart.
fn started(worker: &pgrx::bgworkers::DynamicBackgroundWorker) -> Result<Option<libc::pid_t>, SyncError> {
    match worker.wait_for_startup() {
        Ok(pid) => Ok(Some(pid)),
        Err(pgrx::bgworkers::BackgroundWorkerStatus::Stopped) => Ok(None),
        Err(s) => Err(SyncError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("the refresh worker did not start ({s:?})"),
        )
        .hint("See the server log; then call stripe_sync.refresh again.")),
    }
}

/// Whether a run of the resource began since `launched` (its row in `_sync_state`).
fn ran_since(source: &str, resource: &str, launched: f64) -> Result<bool, SyncError> {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM stripe_sync._sync_state WHERE source = $1 AND resource = $2 AND started_at >= to_timestamp($3))",
        &[source.into(), resource.into(), launched.into()],
    )
    .map(|b| b.unwrap_or(false))
    .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))
}

fn read_result(
    source: &str,
    resource: &str,
    mode: &str,
    launched: f64,
    notices: &mut std::collections::HashSet<String>,
) -> Result<Row, SyncError> {
    let row = Spi::connect(|c| {
        // one row per account the run covered (one for a single-account source):
        // summed, and the failures (of connected accounts: named) listed
        let t = c.select(
            "SELECT CASE WHEN bool_or(status = 'running') THEN 'running'
                         WHEN bool_or(status NOT IN ('succeeded', 'revoked')) THEN 'failed' ELSE 'succeeded' END,
                    sum(rows_inserted)::bigint, sum(rows_updated)::bigint, sum(rows_deleted)::bigint,
                    sum(api_requests)::bigint, min(started_at), max(finished_at),
                    string_agg(CASE WHEN account = '' THEN last_error ELSE account || ': ' || last_error END, '; ' ORDER BY account)
                        FILTER (WHERE status NOT IN ('succeeded', 'revoked', 'running')),
                    (array_agg(last_error_code ORDER BY account) FILTER (WHERE status NOT IN ('succeeded', 'revoked', 'running')))[1],
                    (array_agg(last_error_hint ORDER BY account) FILTER (WHERE status NOT IN ('succeeded', 'revoked', 'running')))[1],
                    string_agg(DISTINCT note, $4),
                    string_agg(account || ' (' || last_error || ')', ', ' ORDER BY account) FILTER (WHERE status = 'revoked')
             FROM stripe_sync._sync_state WHERE source = $1 AND resource = $2 AND started_at >= to_timestamp($3)
             HAVING count(*) > 0",
            Some(1),
            &[source.into(), resource.into(), launched.into(), NOTE_SEPARATOR.into()],
        )?;
        let Some(row) = t.into_iter().next() else { return Ok::<_, pgrx::spi::Error>(None) };
        Ok(Some((
            row.get::<String>(1)?.unwrap_or_default(),
            (
                row.get::<i64>(2)?.unwrap_or(0),
                row.get::<i64>(3)?.unwrap_or(0),
                row.get::<i64>(4)?.unwrap_or(0),
                row.get::<i64>(5)?.unwrap_or(0),
            ),
            (row.get::<pgrx::datum::TimestampWithTimeZone>(6)?, row.get::<pgrx::datum::TimestampWithTimeZone>(7)?),
            (row.get::<String>(8)?, row.get::<String>(9)?, row.get::<String>(10)?),
            row.get::<String>(11)?,
            row.get::<String>(12)?,
        )))
    })
    .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))?;
    // no run of ours: another refresh took the resource between the check and our
    // worker's start (ours then leaves without touching anything)
    let Some((status, (ins, upd, del, req), (started, finished), (err, code, hint), note, revoked)) = row else {
        return Err(already_running(source, resource));
    };
    if status == "running" {
        return Err(already_running(source, resource));
    }
    if let Some(r) = revoked {
        pgrx::notice!(
            "{resource}: skipped connected accounts that refused access (revoked?): {r}; see stripe_sync.sync_status"
        );
    }
    // a note is said once per call (refresh('all') would repeat the same one per resource)
    for n in note.iter().flat_map(|n| n.split(NOTE_SEPARATOR)) {
        if notices.insert(n.to_string()) {
            pgrx::notice!("{n}");
        }
    }
    if status != "succeeded" {
        let code = code.as_deref().and_then(sqlstate).unwrap_or(PgSqlErrorCode::ERRCODE_FDW_ERROR);
        let mut e =
            SyncError::new(code, format!("refresh of {resource} failed: {}", err.unwrap_or_else(|| status.clone())));
        if let Some(h) = hint {
            e = e.hint(h);
        }
        return Err(e);
    }
    Ok((resource.to_string(), mode.to_string(), ins, upd, del, req, started, finished))
}

/// The error codes a refresh records, back from their SQLSTATE text.
fn sqlstate(code: &str) -> Option<PgSqlErrorCode> {
    use PgSqlErrorCode::*;
    [
        ERRCODE_FDW_ERROR,
        ERRCODE_INSUFFICIENT_PRIVILEGE,
        ERRCODE_INVALID_PARAMETER_VALUE,
        ERRCODE_FDW_UNABLE_TO_ESTABLISH_CONNECTION,
        ERRCODE_FDW_TABLE_NOT_FOUND,
        ERRCODE_FDW_INVALID_DATA_TYPE,
        ERRCODE_FDW_INVALID_OPTION_NAME,
        ERRCODE_FDW_OPTION_NAME_NOT_FOUND,
        ERRCODE_LOCK_NOT_AVAILABLE,
        ERRCODE_QUERY_CANCELED,
        ERRCODE_UNDEFINED_OBJECT,
        ERRCODE_UNDEFINED_TABLE,
        ERRCODE_INTERNAL_ERROR,
        ERRCODE_ADMIN_SHUTDOWN,
    ]
    .into_iter()
    .find(|c| run::sqlstate_text(*c) == code)
}
