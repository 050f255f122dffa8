//! Webhooks: the endpoint at Stripe (`create_webhook`, `set_webhook_secret`,
//! `delete_webhook`), the SQL ingress (`receive_webhook`), applying the inbox
//! without the worker (`apply_inbox`), and `webhook_status`.

pub mod inbox;

use crate::error::SyncError;
use crate::{source, threads};
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::{Value, json};
use stripe_core::resources::{RESOURCES, WEBHOOK_ENDPOINTS_PATH};
use stripe_core::{Client, StripeError};

/// The concrete event types a source's tables need (Stripe takes no wildcards but `*`).
pub fn event_types() -> Vec<&'static str> {
    let mut t: Vec<&'static str> = RESOURCES.iter().flat_map(|r| r.event_types()).collect();
    t.sort_unstable();
    t.dedup();
    t
}

fn http<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, StripeError>> + Send + 'static,
) -> Result<T, SyncError> {
    threads::block_on(fut, || {
        pgrx::check_for_interrupts!();
        false
    })?
    .map_err(SyncError::from)
}

fn permission_hint(e: SyncError) -> SyncError {
    if e.message.contains("403") {
        SyncError::new(e.code, e.message).hint(format!(
            "Give the restricted key the \"{}\" permission in the Stripe Dashboard, or create the endpoint by hand (Developers > Webhooks) and call stripe_sync.set_webhook_secret('whsec_...').",
            stripe_core::resources::WEBHOOK_PERMISSION
        ))
    } else {
        e
    }
}

fn spi(e: pgrx::spi::Error) -> SyncError {
    SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string())
}

/// Registers `url` at Stripe for the events every table of the source needs and
/// stores the signing secret. An endpoint for the same URL is reused when
/// stripe_sync knows its secret, replaced otherwise. Returns the endpoint id.
#[pg_extern]
fn create_webhook(url: &str, source: default!(&str, "'default'")) -> String {
    create(url, source).unwrap_or_else(|e| e.raise())
}

fn create(url: &str, source: &str) -> Result<String, SyncError> {
    source::require(source)?;
    let parsed = url::Url::parse(url).map_err(|e| SyncError::invalid(format!("invalid webhook URL: {e}")))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(SyncError::invalid("the webhook URL must be https:// (Stripe requires HTTPS in live mode)"));
    }
    let client = source::client_for_source(source)?;
    let api_version = client.config().api_version.clone();
    let known: Option<(Option<String>, Vec<String>)> =
        Spi::connect(|c| {
            let t = c.select(
                "SELECT endpoint_id, secrets FROM stripe_sync._webhooks WHERE source = $1 AND url = $2",
                None,
                &[source.into(), url.into()],
            )?;
            Ok::<_, pgrx::spi::Error>(t.into_iter().next().map(|r| {
                (r.get::<String>(1).ok().flatten(), r.get::<Vec<String>>(2).ok().flatten().unwrap_or_default())
            }))
        })
        .map_err(spi)?;
    let events: Vec<String> = event_types().into_iter().map(str::to_string).collect();
    let url_s = url.to_string();
    let source_s = source.to_string();
    let known_id = known.as_ref().and_then(|(id, secrets)| id.clone().filter(|_| !secrets.is_empty()));
    let (id, secret) =
        http(async move { create_at_stripe(&client, &url_s, &source_s, &api_version, &events, known_id).await })
            .map_err(permission_hint)?;
    Spi::run_with_args(
        "INSERT INTO stripe_sync._webhooks AS w (source, endpoint_id, url, secrets, managed, enabled_events)
         VALUES ($1, $2, $3, CASE WHEN $4::text IS NULL THEN '{}'::text[] ELSE ARRAY[$4::text] END, true, $5)
         ON CONFLICT (source) DO UPDATE SET endpoint_id = $2, url = $3, managed = true, enabled_events = $5,
             secrets = CASE WHEN $4::text IS NULL THEN w.secrets ELSE ARRAY[$4::text] END",
        &[
            source.into(),
            id.as_str().into(),
            url.into(),
            secret.as_deref().into(),
            event_types().iter().map(|s| s.to_string()).collect::<Vec<_>>().into(),
        ],
    )
    .map_err(spi)?;
    crate::worker::reload_secrets_at_commit();
    Ok(id)
}

/// Creates the endpoint (or reuses/replaces one with the same URL); returns its
/// id and, when created, its secret.
async fn create_at_stripe(
    client: &Client,
    url: &str,
    source: &str,
    api_version: &str,
    events: &[String],
    known_id: Option<String>,
) -> Result<(String, Option<String>), StripeError> {
    let existing = stripe_core::Pager::new(client.clone(), stripe_core::ListQuery::new(WEBHOOK_ENDPOINTS_PATH))
        .collect_all()
        .await?;
    let mut form: Vec<(String, String)> = events.iter().map(|e| ("enabled_events[]".to_string(), e.clone())).collect();
    for e in existing.iter().filter(|e| e.get("url").and_then(Value::as_str) == Some(url)) {
        let id = e.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        if known_id.as_deref() == Some(id.as_str()) {
            // ours, and we hold its secret: bring its events up to date
            client.post(&format!("{WEBHOOK_ENDPOINTS_PATH}/{id}"), &form, None).await?;
            return Ok((id, None));
        }
        // an endpoint we cannot read the secret of: replace it
        client.delete(&format!("{WEBHOOK_ENDPOINTS_PATH}/{id}")).await?;
    }
    form.push(("url".into(), url.into()));
    form.push(("api_version".into(), api_version.into()));
    form.push(("description".into(), format!("stripe_sync source {source}")));
    form.push(("metadata[stripe_sync_source]".into(), source.into()));
    let created = client.post(WEBHOOK_ENDPOINTS_PATH, &form, None).await?;
    let id = created.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let secret = created.get("secret").and_then(Value::as_str).map(str::to_string);
    Ok((id, secret))
}

/// Adds a signing secret for an endpoint created by hand (several can be active
/// while a secret rolls: pass `replace => true` to keep only this one).
#[pg_extern]
fn set_webhook_secret(secret: &str, source: default!(&str, "'default'"), replace: default!(bool, "false")) -> bool {
    set_secret(secret, source, replace).unwrap_or_else(|e| e.raise())
}

fn set_secret(secret: &str, source: &str, replace: bool) -> Result<bool, SyncError> {
    source::require(source)?;
    let s = secret.trim();
    if !s.starts_with("whsec_") || s.len() < 10 || s.chars().any(|c| !(c.is_ascii_alphanumeric() || c == '_')) {
        return Err(SyncError::invalid("a webhook signing secret starts with whsec_")
            .hint("Copy it from the endpoint's page in the Stripe Dashboard (Signing secret)."));
    }
    Spi::run_with_args(
        "INSERT INTO stripe_sync._webhooks AS w (source, secrets) VALUES ($1, ARRAY[$2])
         ON CONFLICT (source) DO UPDATE SET secrets = CASE WHEN $3 THEN ARRAY[$2]
             ELSE (SELECT array_agg(DISTINCT x) FROM unnest(w.secrets || $2) x) END",
        &[source.into(), s.into(), replace.into()],
    )
    .map_err(spi)?;
    crate::worker::reload_secrets_at_commit();
    Ok(true)
}

/// Deletes the source's endpoint at Stripe (when stripe_sync created it) and locally.
#[pg_extern]
fn delete_webhook(source: default!(&str, "'default'")) -> bool {
    delete(source).unwrap_or_else(|e| e.raise())
}

/// Deletes the endpoint of a source, if any (used by drop_source too).
pub fn delete(source: &str) -> Result<bool, SyncError> {
    let row = Spi::get_two_with_args::<String, bool>(
        "SELECT endpoint_id, managed FROM stripe_sync._webhooks WHERE source = $1",
        &[source.into()],
    )
    .unwrap_or((None, None));
    let exists = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM stripe_sync._webhooks WHERE source = $1)",
        &[source.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !exists {
        return Ok(false);
    }
    if let (Some(id), Some(true)) = row {
        let client = source::client_for_source(source)?;
        http(async move {
            match client.delete(&format!("{WEBHOOK_ENDPOINTS_PATH}/{id}")).await {
                Ok(_) | Err(StripeError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .map_err(permission_hint)?;
    }
    Spi::run_with_args("DELETE FROM stripe_sync._webhooks WHERE source = $1", &[source.into()]).map_err(spi)?;
    crate::worker::reload_secrets_at_commit();
    Ok(true)
}

/// The SQL ingress for hosts that cannot open a port (an Edge Function or
/// PostgREST in front): verifies and stores like the worker's listener.
/// Returns 'stored' or 'duplicate'; a refused delivery is an error and stores nothing.
/// The worker (or `stripe_sync.apply_inbox`) applies stored events.
#[pg_extern]
fn receive_webhook(payload: &str, signature: &str, source: default!(&str, "'default'")) -> String {
    receive(payload, signature, source).unwrap_or_else(|e| e.raise())
}

fn receive(payload: &str, signature: &str, source: &str) -> Result<String, SyncError> {
    source::require(source)?;
    let event = inbox::verify(source, payload.as_bytes(), Some(signature))?;
    let fresh = Spi::connect_mut(|c| inbox::store(c, source, &[&event]))?;
    Ok(if fresh.first().copied().unwrap_or(false) { "stored" } else { "duplicate" }.to_string())
}

/// Applies up to `max_events` stored events now (what the worker does on its own).
/// Returns the number applied (events of types no table follows are skipped).
#[pg_extern]
fn apply_inbox(max_events: default!(i64, "10000")) -> i64 {
    crate::require_updated().unwrap_or_else(|e| e.raise());
    let applied = inbox::apply_pending(
        max_events,
        || {
            pgrx::check_for_interrupts!();
            false
        },
        |step| step(),
    )
    .map(|(applied, _)| applied)
    .unwrap_or_else(|e| e.raise());
    // without the worker, this is what keeps the inbox from growing forever
    inbox::prune(crate::guc::INBOX_RETENTION.get() as i64).unwrap_or_else(|e| e.raise());
    applied
}

/// Makes failed events of a source (or of every source) pending again, to be
/// applied at once; returns how many.
#[pg_extern]
fn retry_failed(source: default!(Option<&str>, "NULL")) -> i64 {
    if let Some(s) = source {
        source::require(s).unwrap_or_else(|e| e.raise());
    }
    Spi::get_one_with_args::<i64>(
        "WITH r AS (UPDATE stripe_sync._inbox SET status = 'pending', next_attempt_at = NULL
                    WHERE status = 'failed' AND ($1::text IS NULL OR source = $1) RETURNING 1)
         SELECT count(*) FROM r",
        &[source.into()],
    )
    .map_err(spi)
    .unwrap_or_else(|e| e.raise())
    .unwrap_or(0)
}

/// Gives up on one stored event (pending or failed): it is marked skipped, with
/// who skipped it, and never applied.
#[pg_extern]
fn skip_event(event_id: &str, source: default!(&str, "'default'")) -> bool {
    source::require(source).unwrap_or_else(|e| e.raise());
    let done = Spi::get_one_with_args::<bool>(
        "WITH s AS (UPDATE stripe_sync._inbox SET status = 'skipped', applied_at = clock_timestamp(),
                           error = concat_ws('; ', error, 'skipped by ' || coalesce(nullif(current_setting('role'), 'none'), session_user))
                    WHERE source = $1 AND event_id = $2 AND status IN ('pending', 'failed') RETURNING 1)
         SELECT EXISTS (SELECT FROM s)",
        &[source.into(), event_id.into()],
    )
    .map_err(spi)
    .unwrap_or_else(|e| e.raise())
    .unwrap_or(false);
    if !done {
        SyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("no pending or failed event \"{event_id}\" of source \"{source}\""),
        )
        .hint("See stripe_sync.webhook_status(source) for the failed events; applied events cannot be skipped.")
        .raise();
    }
    true
}

/// Everything about a source's webhook: endpoint, Stripe-side status, counters, lag.
#[pg_extern]
fn webhook_status(source: default!(&str, "'default'")) -> JsonB {
    status(source).unwrap_or_else(|e| e.raise())
}

fn status(source: &str) -> Result<JsonB, SyncError> {
    source::require(source)?;
    let local: Value = Spi::get_one_with_args::<JsonB>(
        "SELECT jsonb_build_object(
            'endpoint_id', w.endpoint_id, 'url', w.url, 'managed', w.managed, 'enabled_events', w.enabled_events,
            'secrets', coalesce(array_length(w.secrets, 1), 0),
            'received', coalesce(s.received, 0), 'duplicates', coalesce(s.duplicates, 0), 'applied', coalesce(s.applied, 0),
            'skipped', coalesce(s.skipped, 0), 'rejected', coalesce(s.rejected, 0),
            'last_received_at', s.last_received_at, 'last_applied_at', s.last_applied_at,
            'pending', (SELECT count(*) FROM stripe_sync._inbox i WHERE i.source = $1 AND i.status = 'pending'),
            'failed', (SELECT count(*) FROM stripe_sync._inbox i WHERE i.source = $1 AND i.status = 'failed'),
            'last_failed_event', (SELECT jsonb_build_object('event_id', i.event_id, 'type', i.type, 'error', i.error,
                                          'attempts', i.attempts, 'next_attempt_at', i.next_attempt_at)
                                  FROM stripe_sync._inbox i WHERE i.source = $1 AND i.status = 'failed'
                                  ORDER BY i.next_attempt_at DESC LIMIT 1),
            'lag_seconds', (SELECT extract(epoch FROM clock_timestamp() - min(received_at)) FROM stripe_sync._inbox i WHERE i.source = $1 AND i.status = 'pending'),
            'last_error', s.last_error, 'last_error_at', s.last_error_at)
         FROM (SELECT $1::text AS source) x
         LEFT JOIN stripe_sync._webhooks w ON w.source = x.source
         LEFT JOIN stripe_sync._webhook_stats s ON s.source = x.source",
        &[source.into()],
    )
    .map_err(spi)?
    .map(|j| j.0)
    .unwrap_or(Value::Null);
    let mut out = local;
    if let Some(id) = out.get("endpoint_id").and_then(Value::as_str).map(str::to_string) {
        let client = source::client_for_source(source)?;
        let remote = http(async move { client.retrieve(&format!("{WEBHOOK_ENDPOINTS_PATH}/{id}")).await });
        out["stripe_status"] = match remote {
            Ok(Some(ep)) => ep.get("status").cloned().unwrap_or(Value::Null),
            Ok(None) => json!("missing at Stripe"),
            Err(e) => json!(format!("unknown: {}", e.message)),
        };
    }
    Ok(JsonB(out))
}
