//! Errors raised to SQL: each carries an SQLSTATE and a hint a DBA can act on.
//! Messages never contain an API key or webhook secret.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use stripe_core::StripeError;
use stripe_core::error::redact;

/// An error stripe_sync reports to the client.
#[derive(Debug)]
pub struct SyncError {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub hint: Option<String>,
    /// Stripe refused a connected account itself (`account_invalid`): it revoked
    /// the platform's access. A refresh reports the account and goes on.
    pub revoked: bool,
}

impl SyncError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> SyncError {
        SyncError { code, message: redact(&message.into()), hint: None, revoked: false }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> SyncError {
        self.hint = Some(redact(&hint.into()));
        self
    }

    /// Invalid argument to a stripe_sync function.
    pub fn invalid(message: impl Into<String>) -> SyncError {
        SyncError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
    }

    /// Raises the error (does not return).
    pub fn raise(self) -> ! {
        let report: ErrorReport = self.into();
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

impl From<crate::threads::Wait> for SyncError {
    fn from(w: crate::threads::Wait) -> SyncError {
        let code = match w {
            crate::threads::Wait::Stopped => PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            crate::threads::Wait::Failed(_) => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        };
        SyncError::new(code, w.to_string())
    }
}

/// The message of an ERROR (or panic) caught with `PgTryBuilder`.
pub fn caught_message(e: &pgrx::pg_sys::panic::CaughtError) -> String {
    use pgrx::pg_sys::panic::CaughtError;
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => redact(r.message()),
        CaughtError::RustPanic { ereport, .. } => redact(ereport.message()),
    }
}

/// Runs `f` in a subtransaction of the current transaction: its writes stay if
/// it returns `Ok`, and are rolled back if it returns `Err` or raises an ERROR,
/// whose message comes back as the `Err`. The transaction goes on either way.
pub fn in_subtransaction<R>(f: impl FnOnce() -> Result<R, SyncError>) -> Result<R, String> {
    use pgrx::pg_sys;
    unsafe {
        let mcx = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(mcx);
        let r = pgrx::PgTryBuilder::new(std::panic::AssertUnwindSafe(|| f().map_err(|e| e.message)))
            .catch_others(|e| Err(caught_message(&e)))
            .execute();
        match r {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(mcx);
        pg_sys::CurrentResourceOwner = owner;
        r
    }
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<SyncError> for ErrorReport {
    fn from(e: SyncError) -> ErrorReport {
        let mut r = ErrorReport::new(e.code, e.message, "stripe_sync");
        if let Some(h) = e.hint {
            r = r.set_hint(h);
        }
        r
    }
}

impl From<StripeError> for SyncError {
    fn from(e: StripeError) -> SyncError {
        use PgSqlErrorCode::*;
        let permission_hint;
        let (code, hint) = match &e {
            StripeError::Authentication { .. } => (
                ERRCODE_FDW_UNABLE_TO_ESTABLISH_CONNECTION,
                "Check the source's API key; replace a rolled or revoked key with ALTER USER MAPPING FOR PUBLIC SERVER stripe_sync_<source> OPTIONS (SET api_key '...').",
            ),
            StripeError::Permission { path, .. } => {
                permission_hint = match stripe_core::resources::permission_for_path(path) {
                    Some(p) => format!(
                        "In the Stripe Dashboard (Developers → API keys), give the restricted key the \"{p}\" permission."
                    ),
                    None => "In the Stripe Dashboard (Developers → API keys), give the restricted key the permission named in the message.".to_string(),
                };
                (ERRCODE_INSUFFICIENT_PRIVILEGE, permission_hint.as_str())
            }
            StripeError::AccountInvalid { .. } => (
                ERRCODE_INSUFFICIENT_PRIVILEGE,
                "The connected account revoked the platform's access, or is not connected to it: see the account's rows in stripe_sync.sync_status; a refresh of the source skips accounts Stripe no longer lists as connected.",
            ),
            StripeError::NotFound { .. } => {
                (ERRCODE_FDW_TABLE_NOT_FOUND, "The object does not exist in this Stripe account.")
            }
            StripeError::InvalidRequest { .. } => {
                (ERRCODE_FDW_ERROR, "Stripe refused the request; check the options of the source.")
            }
            StripeError::RateLimited { .. } => (
                ERRCODE_FDW_ERROR,
                "Lower the source's max_requests_per_second, or run fewer scans and refreshes at the same time.",
            ),
            StripeError::Server { .. } => (ERRCODE_FDW_ERROR, "Stripe had trouble answering; try again later."),
            StripeError::Network { .. } => (
                ERRCODE_FDW_UNABLE_TO_ESTABLISH_CONNECTION,
                "Check that this server can reach the source's api_url (DNS, firewall, proxy).",
            ),
            StripeError::Decode { .. } => {
                (ERRCODE_FDW_INVALID_DATA_TYPE, "Check the source's api_url: it should be Stripe's API root.")
            }
            StripeError::Config { .. } => (ERRCODE_FDW_INVALID_OPTION_NAME, "Fix the option named in the message."),
            StripeError::Cancelled => (ERRCODE_QUERY_CANCELED, "The query was cancelled."),
            StripeError::Unfinished { .. } => (
                ERRCODE_INTERNAL_ERROR,
                "Nothing was decided on the incomplete read; see the server log, and run the statement again.",
            ),
        };
        let revoked = e.is_account_invalid();
        SyncError { revoked, ..SyncError::new(code, e.to_string()).hint(hint) }
    }
}
