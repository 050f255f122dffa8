//! `stripe_sync.refresh(resource, mode, source)`: brings a materialized table up
//! to date with Stripe.
//!
//! The work runs in a dynamic background worker ([`run`]) that commits as it
//! goes: progress is visible to other sessions, and an interrupted full refresh
//! (cancel, lost connection, restart, exhausted retries) resumes from its
//! checkpoint on the next call. The calling session waits for the worker, stops
//! it if the call is cancelled, and returns what it did.
//!
//! Two refreshes of the same source and resource never run at once: the calling
//! session holds a transaction-level advisory lock while its worker runs; a
//! second call waits up to 2 seconds for it, then fails with SQLSTATE 55P03.

pub mod run;

use crate::error::SyncError;
use pgrx::bgworkers::BackgroundWorkerBuilder;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, PgTryBuilder};
use stripe_core::resources;

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

/// Refreshes one resource (or `'all'`) of a source; one row per resource.
#[allow(clippy::type_complexity)]
#[pg_extern]
fn refresh(
    resource: &str,
    mode: default!(&str, "'incremental'"),
    source: default!(&str, "'default'"),
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
    match refresh_all(resource, mode, source) {
        Ok(rows) => TableIterator::new(rows),
        Err(e) => e.raise(),
    }
}

fn refresh_all(resource: &str, mode: &str, source: &str) -> Result<Vec<Row>, SyncError> {
    if !MODES.contains(&mode) {
        return Err(SyncError::invalid(format!("unknown refresh mode \"{mode}\"")).hint(format!(
            "Valid modes: {} (full re-reads everything, incremental appends new objects, events follows every change).",
            MODES.join(", ")
        )));
    }
    let targets: Vec<&'static resources::Resource> = if resource == "all" {
        resources::RESOURCES.iter().collect()
    } else {
        vec![resources::lookup(resource).map_err(|e| {
            SyncError::invalid(format!("{e}, or all")).hint(
                "Names are also accepted in CamelCase (InvoiceItem); stripe_sync.sync_status lists what was refreshed.",
            )
        })?]
    };
    crate::source::require(source)?;
    // One resource's failure never stops the others: each is recorded in
    // sync_status as it happens, and one error at the end lists them all.
    let mut rows = Vec::new();
    let mut failed: Vec<(&'static str, SyncError)> = Vec::new();
    let mut notices = std::collections::HashSet::new();
    for r in targets {
        match refresh_one(r, mode, source, &mut notices) {
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

fn lock(source: &str, resource: &str) -> Result<(), SyncError> {
    let key = lock_key(source, resource);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let got =
            Spi::get_one_with_args::<bool>("SELECT pg_try_advisory_xact_lock(hashtext($1))", &[key.as_str().into()])
                .ok()
                .flatten()
                .unwrap_or(false);
        if got {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let pid = Spi::get_one_with_args::<i32>(
                "SELECT running_pid FROM stripe_sync._sync_state WHERE source = $1 AND resource = $2",
                &[source.into(), resource.into()],
            )
            .ok()
            .flatten();
            return Err(SyncError::new(
                PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                format!(
                    "a refresh of {source}/{resource} is already running{}",
                    pid.map(|p| format!(" (worker pid {p})")).unwrap_or_default()
                ),
            )
            .hint("Wait for it to finish (see stripe_sync.sync_status), or schedule refreshes further apart."));
        }
        pgrx::check_for_interrupts!();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Starts a refresh worker without waiting for it (no lock is taken).
pub fn launch(
    source: &str,
    resource: &str,
    mode: &str,
    caller: i32,
) -> Result<pgrx::bgworkers::DynamicBackgroundWorker, SyncError> {
    let (db, user) = unsafe { (pg_sys::MyDatabaseId, pg_sys::GetUserId()) };
    let job = run::Job {
        db: db.to_u32(),
        user: user.to_u32(),
        caller,
        source: source.to_string(),
        resource: resource.to_string(),
        mode: mode.to_string(),
        parallelism: crate::guc::MAX_PARALLEL_REQUESTS.get().max(1) as usize,
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

fn clock() -> i64 {
    Spi::get_one::<f64>("SELECT extract(epoch FROM clock_timestamp())::float8").ok().flatten().unwrap_or(0.0) as i64
}

fn refresh_one(
    r: &'static resources::Resource,
    mode: &str,
    source: &str,
    notices: &mut std::collections::HashSet<String>,
) -> Result<Row, SyncError> {
    lock(source, r.name)?;
    let launched = clock();
    let pid = unsafe { pg_sys::MyProcPid };
    let worker = launch(source, r.name, mode, pid)?;
    let worker_pid = worker.wait_for_startup().map_err(|s| {
        SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("the refresh worker did not start ({s:?})"))
    })?;
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
    read_result(source, r.name, mode, launched, notices)
}

fn read_result(
    source: &str,
    resource: &str,
    mode: &str,
    launched: i64,
    notices: &mut std::collections::HashSet<String>,
) -> Result<Row, SyncError> {
    let row = Spi::connect(|c| {
        let t = c.select(
            "SELECT status, rows_inserted, rows_updated, rows_deleted, api_requests, started_at, finished_at,
                    last_error, last_error_code, last_error_hint, note
             FROM stripe_sync._sync_state WHERE source = $1 AND resource = $2 AND started_at >= to_timestamp($3)",
            Some(1),
            &[source.into(), resource.into(), launched.into()],
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
        )))
    })
    .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))?;
    let Some((status, (ins, upd, del, req), (started, finished), (err, code, hint), note)) = row else {
        return Err(SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "the refresh worker recorded no result")
            .hint("See the server log for the refresh worker's messages."));
    };
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
