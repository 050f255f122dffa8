//! The foreign data wrapper `stripe_sync_fdw` (supabase-wrappers), over stripe_core.

pub mod options;

use crate::error::SyncError;
use options::Target;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use std::collections::HashMap;
use supabase_wrappers::prelude::*;

/// The FDW's state for one scan.
#[wrappers_fdw(
    version = "0.1.0",
    author = "stripe_sync",
    website = "https://github.com/stripe-sync/stripe_sync",
    error_type = "FdwError"
)]
pub struct StripeSyncFdw {
    server_options: HashMap<String, String>,
}

/// Errors of the FDW, reported with their SQLSTATE.
#[derive(Debug)]
pub struct FdwError(pub SyncError);

impl From<SyncError> for FdwError {
    fn from(e: SyncError) -> FdwError {
        FdwError(e)
    }
}

impl From<FdwError> for ErrorReport {
    fn from(e: FdwError) -> ErrorReport {
        e.0.into()
    }
}

impl ForeignDataWrapper<FdwError> for StripeSyncFdw {
    fn new(server: ForeignServer) -> Result<Self, FdwError> {
        Ok(StripeSyncFdw {
            server_options: server.options,
        })
    }

    fn begin_scan(
        &mut self,
        _quals: &[Qual],
        _columns: &[Column],
        _sorts: &[Sort],
        _limit: &Option<Limit>,
        _options: &HashMap<String, String>,
    ) -> Result<(), FdwError> {
        let _ = &self.server_options;
        Err(SyncError::new(
            pgrx::PgSqlErrorCode::ERRCODE_FDW_ERROR,
            "stripe_sync_fdw does not serve foreign tables in this version",
        )
        .into())
    }

    fn iter_scan(&mut self, _row: &mut Row) -> Result<Option<()>, FdwError> {
        Ok(None)
    }

    fn end_scan(&mut self) -> Result<(), FdwError> {
        Ok(())
    }

    fn validator(
        options: Vec<Option<String>>,
        catalog: Option<pg_sys::Oid>,
    ) -> Result<(), FdwError> {
        let target = match catalog {
            Some(pg_sys::ForeignServerRelationId) => Target::Server,
            Some(pg_sys::UserMappingRelationId) => Target::UserMapping,
            Some(pg_sys::ForeignTableRelationId) => Target::Table,
            _ => Target::Wrapper,
        };
        for opt in options.into_iter().flatten() {
            let (name, value) = opt.split_once('=').unwrap_or((opt.as_str(), ""));
            options::check(target, name, value)?;
        }
        Ok(())
    }
}
