//! stripe_sync: a PostgreSQL extension that keeps a Stripe account's data in Postgres.
//!
//! This crate is the thin Postgres layer; everything about Stripe lives in
//! `crates/stripe_core`.
//! - [`fdw`] — the foreign data wrapper `stripe_sync_fdw`.
//! - [`source`] — `add_source` / `drop_source`: connected accounts.
//! - [`ddl`] — SQL generated from the resource registry.
//! - [`refresh`] — `stripe_sync.refresh` and its background worker.
//! - [`apply`] — writing objects into materialized tables (stamps, tombstones).
//! - [`threads`] — threads with signals blocked.
//! - [`worker`] — the background worker that receives webhooks.
//! - [`webhooks`] — webhook endpoints, the inbox, the SQL ingress.
//! - [`guc`] — settings.
//! - [`error`] — errors with SQLSTATEs and hints.

use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

pub mod apply;
pub mod ddl;
pub mod error;
pub mod fdw;
pub mod guc;
pub mod refresh;
pub mod source;
pub mod threads;
pub mod webhooks;
pub mod worker;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Set in the postmaster when loaded from shared_preload_libraries; backends
/// inherit it through fork.
static PRELOADED: AtomicBool = AtomicBool::new(false);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    guc::init(preloading);
    if preloading {
        PRELOADED.store(true, Ordering::Relaxed);
        worker::register();
    }
}

/// The version of stripe_sync's library.
#[pg_extern(immutable, parallel_safe)]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Refuses to work on a database whose extension is at another version than this
/// library: after new binaries are installed, `ALTER EXTENSION stripe_sync UPDATE`
/// brings the tables the library writes to the shape it expects.
pub fn require_updated() -> Result<(), error::SyncError> {
    let installed =
        Spi::get_one::<String>("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'stripe_sync'")
            .ok()
            .flatten();
    match installed {
        Some(v) if v != env!("CARGO_PKG_VERSION") => Err(error::SyncError::new(
            pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "the stripe_sync library is version {} but the extension in this database is version {v}",
                env!("CARGO_PKG_VERSION")
            ),
        )
        .hint("Run ALTER EXTENSION stripe_sync UPDATE; (it keeps every table, cursor and stored event).")),
        _ => Ok(()),
    }
}

/// Whether the library was loaded through shared_preload_libraries (needed for webhooks).
#[pg_extern]
fn _preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn version_matches_the_crate() {
        assert_eq!(
            Spi::get_one::<String>("SELECT stripe_sync.version()").unwrap(),
            Some(env!("CARGO_PKG_VERSION").to_string())
        );
    }

    #[pg_test]
    fn the_wrapper_reports_the_crate_version() {
        assert_eq!(
            Spi::get_one::<String>("SELECT version FROM stripe_sync.stripe_sync_fdw_meta()").unwrap(),
            Some(env!("CARGO_PKG_VERSION").to_string())
        );
    }

    #[pg_test]
    fn create_extension_makes_the_schema_and_the_wrapper() {
        assert_eq!(
            Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'stripe_sync')").unwrap(),
            Some(true)
        );
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT fdwhandler::regproc::text FROM pg_foreign_data_wrapper WHERE fdwname = 'stripe_sync_fdw'"
            )
            .unwrap(),
            Some("stripe_sync.stripe_sync_fdw_handler".to_string())
        );
    }

    #[pg_test]
    #[should_panic(expected = "invalid option \"nope\"")]
    fn server_rejects_unknown_options() {
        Spi::run("CREATE SERVER s_bad FOREIGN DATA WRAPPER stripe_sync_fdw OPTIONS (nope 'x')").unwrap();
    }

    #[pg_test]
    #[should_panic(expected = "max_requests_per_second must be a number")]
    fn server_rejects_bad_rate() {
        Spi::run("CREATE SERVER s_bad FOREIGN DATA WRAPPER stripe_sync_fdw OPTIONS (max_requests_per_second '-3')")
            .unwrap();
    }

    #[pg_test]
    fn server_accepts_valid_options() {
        Spi::run(
            "CREATE SERVER s_ok FOREIGN DATA WRAPPER stripe_sync_fdw OPTIONS (api_url 'http://127.0.0.1:1', api_version '2026-06-24.dahlia', account 'acct_123', max_requests_per_second '25')",
        )
        .unwrap();
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
