//! The background worker, started when stripe_sync is in shared_preload_libraries.
//! It will receive Stripe's webhooks; today it connects to its database, reloads
//! settings on SIGHUP, exits promptly on SIGTERM and is restarted after a crash or
//! pg_terminate_backend.

use crate::guc;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::Duration;

/// `backend_type` of the worker in pg_stat_activity.
pub const WORKER_NAME: &str = "stripe_sync webhook worker";

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

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn stripe_sync_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = guc::string(&guc::DATABASE);
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    log!("{WORKER_NAME} started in database \"{db}\"");
    while BackgroundWorker::wait_latch(Some(Duration::from_millis(500))) {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
    log!("{WORKER_NAME} stopping");
    // Exit code 1: the postmaster starts the worker again after its restart time
    // (pg_terminate_backend restarts it); during shutdown it is not restarted.
    unsafe { pg_sys::proc_exit(1) };
}
