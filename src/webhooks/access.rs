//! Connect: what a platform's webhooks say of its connected accounts' access.
//! An account that revoked it (`account.application.deauthorized`) is `revoked`
//! in `sync_status` at once, and one that granted it
//! (`account.application.authorized`) is `connected` until its first refresh.
//! The platform's `account` row of it changes through the apply pipeline like
//! any other row (the registry maps the two events to a deletion and a fetch);
//! this records what the source's state says of the account, in the same
//! transaction as that row, and by the same order: a revocation older than the
//! row's version, or a grant not newer than the account's tombstone, changes
//! nothing.

use crate::apply::table_of;
use crate::ddl::ident;
use crate::error::SyncError;
use pgrx::spi::SpiClient;
use stripe_core::{StripeError, resources};

fn spi_err(e: pgrx::spi::Error) -> SyncError {
    SyncError::new(pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string())
}

/// Whether an event type grants or revokes a platform's access to an account.
pub fn is_access_event(kind: &str) -> bool {
    kind == resources::ACCOUNT_AUTHORIZED_EVENT || kind == resources::ACCOUNT_DEAUTHORIZED_EVENT
}

/// Records a grant or revocation of `account`'s access in the source's state:
/// one row per resource the source keeps state for (the platform's `account`
/// list excepted: it is the platform's own). Runs after the event's rows were
/// written. `own` is the platform's account id, `stamp` the event's time.
pub fn record(
    c: &mut SpiClient,
    source: &str,
    own: &str,
    account: &str,
    (kind, event_id, stamp): (&str, &str, i64),
) -> Result<(), SyncError> {
    let accounts = resources::lookup(resources::CONNECTED_ACCOUNTS).map_err(|e| SyncError::invalid(e.to_string()))?;
    let when = format!("{kind}, event {event_id}");
    // the resources the source keeps state for
    let known = "SELECT DISTINCT resource FROM stripe_sync._sync_state WHERE source = $1 AND resource <> $3";
    if kind == resources::ACCOUNT_DEAUTHORIZED_EVENT {
        // revoked unless the platform's row of the account is newer than the
        // event (access granted again since)
        let (schema, table) = table_of(source, accounts)?;
        let refused = SyncError::from(StripeError::AccountInvalid {
            message: format!("the account revoked the platform's access ({when}); its rows are kept"),
        });
        c.update(
            &format!(
                "INSERT INTO stripe_sync._sync_state AS s (source, resource, account, status, last_error, last_error_code,
                        last_error_hint, last_error_at)
                 SELECT $1, known.resource, $2, 'revoked', $4, $5, $6, now() FROM ({known}) known
                 WHERE NOT EXISTS (SELECT 1 FROM {}.{} t WHERE t.id = $2 AND t.account = $7 AND t._stamp > $8)
                 ON CONFLICT (source, resource, account) DO UPDATE SET status = 'revoked', last_error = $4,
                        last_error_code = $5, last_error_hint = $6, last_error_at = now()
                 WHERE s.status IS DISTINCT FROM 'running'",
                ident(&schema),
                ident(&table)
            ),
            None,
            &[
                source.into(),
                account.into(),
                accounts.name.into(),
                refused.message.as_str().into(),
                crate::refresh::run::sqlstate_text(refused.code).as_str().into(),
                refused.hint.as_deref().into(),
                own.into(),
                stamp.into(),
            ],
        )
        .map_err(spi_err)?;
    } else {
        // connected unless a revocation as new or newer removed the platform's row
        // of it (in the same second the revocation wins: Stripe's clock cannot
        // order them, and a revoked account's next refresh says what is true)
        c.update(
            &format!(
                "INSERT INTO stripe_sync._sync_state AS s (source, resource, account, status, note)
                 SELECT $1, known.resource, $2, 'connected', $4 FROM ({known}) known
                 WHERE NOT EXISTS (SELECT 1 FROM stripe_sync._deleted d
                                   WHERE d.source = $1 AND d.resource = $3 AND d.account = '' AND d.id = $2 AND d.stamp >= $5)
                 ON CONFLICT (source, resource, account) DO UPDATE SET status = 'connected', note = $4,
                        last_error = NULL, last_error_code = NULL, last_error_hint = NULL, last_error_at = NULL
                 WHERE s.status IS NULL OR s.status = 'revoked'"
            ),
            None,
            &[
                source.into(),
                account.into(),
                accounts.name.into(),
                format!("the account granted the platform access ({when}); its rows come with the next refresh").into(),
                stamp.into(),
            ],
        )
        .map_err(spi_err)?;
    }
    Ok(())
}
