//! Webhooks: the endpoint at Stripe (`create_webhook`, `set_webhook_secret`,
//! `delete_webhook`), the SQL ingress (`receive_webhook`), applying the inbox
//! without the worker (`apply_inbox`), and `webhook_status`.

pub mod access;
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
/// A Connect source gets a second endpoint at the same URL, `connect=true`,
/// which delivers its connected accounts' events (with `account` set); its
/// secret is accepted too.
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
    let known: Option<(Option<String>, Option<String>, Vec<String>)> = Spi::connect(|c| {
        let t = c.select(
            "SELECT endpoint_id, connect_endpoint_id, secrets FROM stripe_sync._webhooks WHERE source = $1 AND url = $2",
            None,
            &[source.into(), url.into()],
        )?;
        Ok::<_, pgrx::spi::Error>(t.into_iter().next().map(|r| {
            (
                r.get::<String>(1).ok().flatten(),
                r.get::<String>(2).ok().flatten(),
                r.get::<Vec<String>>(3).ok().flatten().unwrap_or_default(),
            )
        }))
    })
    .map_err(spi)?;
    let connect = source::is_connect(source)?;
    let events: Vec<String> = event_types().into_iter().map(str::to_string).collect();
    let (url_s, source_s) = (url.to_string(), source.to_string());
    let with_secrets = |id: Option<String>| id.filter(|_| known.as_ref().is_some_and(|k| !k.2.is_empty()));
    let known_ids = (
        with_secrets(known.as_ref().and_then(|k| k.0.clone())),
        with_secrets(known.as_ref().and_then(|k| k.1.clone())),
    );
    let endpoints = http(async move {
        let e = Endpoint { url: &url_s, source: &source_s, api_version: &api_version, events: &events };
        let own = create_at_stripe(&client, &e, false, known_ids.0).await?;
        let connected = if connect { Some(create_at_stripe(&client, &e, true, known_ids.1).await?) } else { None };
        Ok((own, connected))
    })
    .map_err(permission_hint)?;
    let ((id, secret), connected) = endpoints;
    let (connect_id, connect_secret) = connected.unzip();
    // the new secrets replace the old ones; an endpoint that was kept keeps its secrets
    let fresh: Vec<String> = [secret, connect_secret.flatten()].into_iter().flatten().collect();
    Spi::run_with_args(
        "INSERT INTO stripe_sync._webhooks AS w (source, endpoint_id, url, secrets, managed, enabled_events, connect_endpoint_id)
         VALUES ($1, $2, $3, $4, true, $5, $6)
         ON CONFLICT (source) DO UPDATE SET endpoint_id = $2, url = $3, managed = true, enabled_events = $5,
             connect_endpoint_id = $6,
             secrets = CASE WHEN cardinality($4) = 0 THEN w.secrets ELSE $4 END",
        &[
            source.into(),
            id.as_str().into(),
            url.into(),
            fresh.into(),
            event_types().iter().map(|s| s.to_string()).collect::<Vec<_>>().into(),
            connect_id.into(),
        ],
    )
    .map_err(spi)?;
    crate::worker::reload_secrets_at_commit();
    Ok(id)
}

/// What an endpoint of a source is made with.
struct Endpoint<'a> {
    url: &'a str,
    source: &'a str,
    api_version: &'a str,
    events: &'a [String],
}

/// The metadata key that marks stripe_sync's Connect endpoints (`connect=true`):
/// Stripe's endpoint object does not say which endpoints are Connect ones.
const CONNECT_MARK: &str = "stripe_sync_connect";

fn is_connect_endpoint(e: &Value) -> bool {
    e.get("metadata").and_then(|m| m.get(CONNECT_MARK)).and_then(Value::as_str) == Some("true")
        || e.get("connect").and_then(Value::as_bool) == Some(true)
}

/// Creates the endpoint (or reuses/replaces one with the same URL); returns its
/// id and, when created, its secret.
async fn create_at_stripe(
    client: &Client,
    ep: &Endpoint<'_>,
    connect: bool,
    known_id: Option<String>,
) -> Result<(String, Option<String>), StripeError> {
    let Endpoint { url, source, api_version, events } = *ep;
    let existing = stripe_core::Pager::new(client.clone(), stripe_core::ListQuery::new(WEBHOOK_ENDPOINTS_PATH))
        .collect_all()
        .await?;
    let mut form: Vec<(String, String)> = events.iter().map(|e| ("enabled_events[]".to_string(), e.clone())).collect();
    let same = |e: &&Value| e.get("url").and_then(Value::as_str) == Some(url) && is_connect_endpoint(e) == connect;
    for e in existing.iter().filter(same) {
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
    if connect {
        form.push(("connect".into(), "true".into()));
        form.push((format!("metadata[{CONNECT_MARK}]"), "true".into()));
    }
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
    let row = Spi::get_three_with_args::<String, bool, String>(
        "SELECT endpoint_id, managed, connect_endpoint_id FROM stripe_sync._webhooks WHERE source = $1",
        &[source.into()],
    )
    .unwrap_or((None, None, None));
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
    if let (Some(id), Some(true), connect_id) = row {
        let client = source::client_for_source(source)?;
        http(async move {
            for id in std::iter::once(id).chain(connect_id) {
                match client.delete(&format!("{WEBHOOK_ENDPOINTS_PATH}/{id}")).await {
                    Ok(_) | Err(StripeError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
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
            'endpoint_id', w.endpoint_id, 'connect_endpoint_id', w.connect_endpoint_id, 'url', w.url, 'managed', w.managed, 'enabled_events', w.enabled_events,
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
    for (key, status) in [("endpoint_id", "stripe_status"), ("connect_endpoint_id", "connect_stripe_status")] {
        let Some(id) = out.get(key).and_then(Value::as_str).map(str::to_string) else { continue };
        let client = source::client_for_source(source)?;
        let remote = http(async move { client.retrieve(&format!("{WEBHOOK_ENDPOINTS_PATH}/{id}")).await });
        out[status] = match remote {
            Ok(Some(ep)) => ep.get("status").cloned().unwrap_or(Value::Null),
            Ok(None) => json!("missing at Stripe"),
            Err(e) => json!(format!("unknown: {}", e.message)),
        };
    }
    Ok(JsonB(out))
}
