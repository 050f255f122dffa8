//! Validation of the FDW's options on servers, user mappings and foreign tables.

use crate::error::SyncError;
use pgrx::PgSqlErrorCode;
use stripe_core::client::validate_base_url;
use stripe_core::{ApiKey, resources};

/// Options a `stripe_sync_fdw` server accepts.
pub const SERVER_OPTIONS: &[&str] = &["api_url", "api_version", ACCOUNT_OPTION, "max_requests_per_second", "api_key"];
/// The server option naming a connected account (sent as `Stripe-Account`).
pub const ACCOUNT_OPTION: &str = "account"; // not a resource: the server option
/// Options a user mapping accepts.
pub const USER_MAPPING_OPTIONS: &[&str] = &["api_key"];
/// Options a foreign table accepts.
pub const TABLE_OPTIONS: &[&str] = &["resource", "startup_cost"];

/// Where an option list comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Wrapper,
    Server,
    UserMapping,
    Table,
}

/// Checks one `name=value` option; the message never includes a key's value.
pub fn check(target: Target, name: &str, value: &str) -> Result<(), SyncError> {
    let allowed: &[&str] = match target {
        Target::Wrapper => &[],
        Target::Server => SERVER_OPTIONS,
        Target::UserMapping => USER_MAPPING_OPTIONS,
        Target::Table => TABLE_OPTIONS,
    };
    if !allowed.contains(&name) {
        let what = match target {
            Target::Wrapper => "the foreign data wrapper",
            Target::Server => "a stripe_sync_fdw server",
            Target::UserMapping => "a user mapping",
            Target::Table => "a stripe_sync_fdw foreign table",
        };
        let valid = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
        return Err(SyncError::new(
            PgSqlErrorCode::ERRCODE_FDW_INVALID_OPTION_NAME,
            format!("invalid option \"{name}\" for {what}"),
        )
        .hint(format!("Valid options: {valid}.")));
    }
    let bad = |msg: String| SyncError::new(PgSqlErrorCode::ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE, msg);
    match name {
        "api_key" => ApiKey::new(value).map(|_| ()).map_err(|e| {
            bad(e.to_string()).hint("Use a secret key (sk_...) or a restricted key (rk_...) from the Stripe Dashboard.")
        }),
        "api_url" => validate_base_url(value).map(|_| ()).map_err(|e| bad(e.to_string())),
        "api_version" => check_api_version(value).map_err(bad),
        ACCOUNT_OPTION => {
            if stripe_core::client::valid_account_id(value) {
                Ok(())
            } else {
                Err(bad(format!("account must be a connected account id like acct_1A2b3C, not \"{value}\"")))
            }
        }
        "max_requests_per_second" => match value.parse::<f64>() {
            Ok(v) if v > 0.0 && v <= 10_000.0 => Ok(()),
            _ => Err(bad(format!("max_requests_per_second must be a number in (0, 10000], not \"{value}\""))
                .hint("Stripe allows about 100 requests/s in live mode and 25 in test mode.")),
        },
        "resource" => resources::lookup(value).map(|_| ()).map_err(|e| bad(e.to_string())),
        "startup_cost" => match value.parse::<f64>() {
            Ok(v) if (0.0..=1e9).contains(&v) => Ok(()),
            _ => Err(bad(format!("startup_cost must be a number in [0, 1e9], not \"{value}\""))
                .hint("It is the planner's cost of starting a scan (one Stripe request); the default is 100.")),
        },
        _ => Ok(()),
    }
}

/// `YYYY-MM-DD` optionally followed by `.<release train>`.
pub fn check_api_version(v: &str) -> Result<(), String> {
    let (date, train) = v.split_once('.').unwrap_or((v, "basil"));
    let b = date.as_bytes();
    let date_ok = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() });
    if date_ok && !train.is_empty() && train.chars().all(|c| c.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(format!("api_version must look like 2026-06-24.dahlia, not \"{v}\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        assert!(check_api_version("2026-06-24.dahlia").is_ok());
        assert!(check_api_version("2023-10-16").is_ok());
        assert!(check_api_version("2023-10-1").is_err());
        assert!(check_api_version("latest").is_err());
        assert!(check_api_version("2026-06-24.").is_err());
    }
}
