//! Events and webhook delivery: every mutation records an Event; each event is
//! POSTed to every enabled endpoint that subscribed to its type, signed like
//! Stripe signs (`Stripe-Signature: t=...,v1=...,v0=...`), retried with backoff
//! on non-2xx or connection failure. Faults can delay, shuffle and duplicate.

use crate::Inner;
use crate::api::{ApiErr, Caller, error_body};
use crate::form::{list_param, str_param};
use crate::objects::API_VERSION;
use crate::store::Store;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

/// Event types Stripe accepts in `enabled_events` (besides `*`), for the resources
/// the fake models. Wildcards like `customer.*` are refused, as Stripe does.
pub const KNOWN_EVENT_TYPES: &[&str] = &[
    "account.updated",
    "account.application.authorized",
    "account.application.deauthorized",
    "balance.available",
    "charge.captured",
    "charge.expired",
    "charge.failed",
    "charge.pending",
    "charge.refunded",
    "charge.succeeded",
    "charge.updated",
    "charge.refund.updated",
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_reinstated",
    "charge.dispute.funds_withdrawn",
    "credit_note.created",
    "credit_note.updated",
    "credit_note.voided",
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "customer.discount.created",
    "customer.discount.updated",
    "customer.discount.deleted",
    "customer.source.created",
    "customer.source.updated",
    "customer.source.deleted",
    "customer.source.expiring",
    "customer.tax_id.created",
    "customer.tax_id.updated",
    "customer.tax_id.deleted",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "customer.subscription.trial_will_end",
    "invoice.created",
    "invoice.deleted",
    "invoice.finalization_failed",
    "invoice.finalized",
    "invoice.marked_uncollectible",
    "invoice.overdue",
    "invoice.overpaid",
    "invoice.paid",
    "invoice.payment_action_required",
    "invoice.payment_attempt_required",
    "invoice.payment_failed",
    "invoice.payment_succeeded",
    "invoice.sent",
    "invoice.upcoming",
    "invoice.updated",
    "invoice.voided",
    "invoice.will_be_due",
    "invoiceitem.created",
    "invoiceitem.deleted",
    "payment_method.attached",
    "payment_method.detached",
    "payment_method.updated",
    "payment_method.automatically_updated",
    "payout.canceled",
    "payout.created",
    "payout.failed",
    "payout.paid",
    "payout.reconciliation_completed",
    "payout.updated",
    "plan.created",
    "plan.updated",
    "plan.deleted",
    "price.created",
    "price.updated",
    "price.deleted",
    "product.created",
    "product.updated",
    "product.deleted",
    "refund.created",
    "refund.updated",
    "refund.failed",
    "payment_intent.succeeded",
    "payment_intent.created",
    "payment_intent.payment_failed",
];

/// At most this many endpoints per account, as Stripe documents.
pub const MAX_ENDPOINTS: usize = 16;

/// One delivery of one event to one endpoint.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: String,
    pub url: String,
    pub secret: String,
    pub payload: Arc<String>,
}

/// `t=...,v1=...,v0=...` over `"{t}.{payload}"` with the secret's bytes.
pub fn signature_header(payload: &str, secret: &str, t: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.{payload}").as_bytes());
    let v1 = hex::encode(mac.finalize().into_bytes());
    // Stripe adds a fake v0 signature to test-mode events; receivers must ignore it.
    let mut noise = Hmac::<Sha256>::new_from_slice(b"v0-noise").expect("key");
    noise.update(payload.as_bytes());
    format!("t={t},v1={v1},v0={}", hex::encode(noise.finalize().into_bytes()))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Records an event and queues its deliveries.
///
/// `store` is the account the event happened in. For a connected account,
/// `connected` names it and carries the platform's Connect endpoints: the event
/// gets `account` and goes to those endpoints as well as to the account's own.
pub fn emit(
    inner: &Inner,
    store: &mut Store,
    connected: Option<(&str, &[Value])>,
    event_type: &str,
    object: Value,
    previous: Option<Value>,
    caller: &Caller,
) {
    let id = inner.rng.lock().unwrap_or_else(|p| p.into_inner()).id("evt_");
    let t = now();
    let mut data = json!({ "object": object });
    if let Some(p) = previous {
        data["previous_attributes"] = p;
    }
    let own = store.col("webhook_endpoints").values().filter(|e| e["_connect"] != true);
    let connect = connected.map(|(_, eps)| eps).unwrap_or_default().iter();
    let endpoints: Vec<(String, String)> = own
        .chain(connect)
        .filter(|e| e["status"] == "enabled")
        .filter(|e| e["enabled_events"].as_array().is_some_and(|a| a.iter().any(|x| x == "*" || x == event_type)))
        .map(|e| {
            (e["url"].as_str().unwrap_or_default().to_string(), e["_secret"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    let mut event = json!({
        "id": id, "object": "event", "api_version": API_VERSION, "created": t, "data": data,
        "livemode": false, "pending_webhooks": endpoints.len(),
        "request": {"id": if caller.request_id.is_empty() { Value::Null } else { json!(caller.request_id) }, "idempotency_key": caller.idempotency_key},
        "type": event_type
    });
    if let Some((account, _)) = connected {
        event["account"] = json!(account);
    }
    let payload = Arc::new(event.to_string());
    store.add(event);
    for (url, secret) in endpoints {
        // counted as queued at once, so a test never sees "settled" between the
        // change and its delivery
        inner.deliveries.lock().unwrap_or_else(|p| p.into_inner()).queued += 1;
        let _ = inner.delivery_tx.send(Delivery { event_id: id.clone(), url, secret, payload: payload.clone() });
    }
}

/// A history of `n` `customer.updated` events spread evenly over `[from, to]`
/// (unix seconds), as if customers had changed while nobody listened: each
/// event sets one customer's `metadata.rev` (customers taken in turn), and
/// every customer ends as its last event shows it. Nothing is delivered (the
/// events are in the past). Returns how many events were written.
pub fn backfill_updates(inner: &Inner, store: &mut Store, n: usize, from: i64, to: i64) -> usize {
    let ids: Vec<String> =
        store.col("customers").values().filter_map(|c| c["id"].as_str().map(str::to_string)).collect();
    if ids.is_empty() || n == 0 {
        return 0;
    }
    let span = (to - from).max(0) as f64;
    for i in 0..n {
        let t = from + (span * i as f64 / n as f64) as i64;
        let cid = &ids[i % ids.len()];
        let Some(mut obj) = store.col("customers").get(cid).cloned() else { continue };
        let rev = format!("{i}");
        let previous = json!({"metadata": obj["metadata"].clone()});
        obj["metadata"]["rev"] = json!(rev);
        store.col_mut("customers").replace(obj.clone());
        let id = inner.rng.lock().unwrap_or_else(|p| p.into_inner()).id("evt_");
        store.add(json!({
            "id": id, "object": "event", "api_version": API_VERSION, "created": t,
            "data": {"object": crate::api::render(&obj), "previous_attributes": previous},
            "livemode": false, "pending_webhooks": 0, "request": {"id": null, "idempotency_key": null},
            "type": "customer.updated"
        }));
    }
    n
}

fn validate_events(params: &Value) -> Result<Vec<String>, ApiErr> {
    let events = list_param(params, "enabled_events");
    if events.is_empty() {
        return Err(ApiErr(
            400,
            error_body(
                "invalid_request_error",
                None,
                "Missing required param: enabled_events.",
                Some("enabled_events"),
            ),
        ));
    }
    for e in &events {
        if e != "*" && !KNOWN_EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiErr(
                400,
                error_body(
                    "invalid_request_error",
                    None,
                    &format!("Invalid enabled_events: {e} is not a valid event type."),
                    Some("enabled_events"),
                ),
            ));
        }
    }
    Ok(events)
}

fn validate_url(url: &str) -> Result<(), ApiErr> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        _ => Err(ApiErr(
            400,
            error_body(
                "invalid_request_error",
                Some("url_invalid"),
                "Invalid URL: must be a valid http(s) URL.",
                Some("url"),
            ),
        )),
    }
}

pub fn create_endpoint(inner: &Inner, store: &mut Store, params: &Value) -> Result<Value, ApiErr> {
    let url = str_param(params, "url").ok_or_else(|| {
        ApiErr(400, error_body("invalid_request_error", None, "Missing required param: url.", Some("url")))
    })?;
    validate_url(url)?;
    let events = validate_events(params)?;
    if store.col("webhook_endpoints").len() >= MAX_ENDPOINTS {
        return Err(ApiErr(
            400,
            error_body(
                "invalid_request_error",
                None,
                &format!("You have reached the maximum of {MAX_ENDPOINTS} test webhook endpoints."),
                None,
            ),
        ));
    }
    let (id, secret) = {
        let mut rng = inner.rng.lock().unwrap_or_else(|p| p.into_inner());
        (rng.id("we_"), rng.id("whsec_"))
    };
    let ep = json!({
        "id": id, "object": "webhook_endpoint", "api_version": params.get("api_version").cloned().unwrap_or(Value::Null),
        "application": null, "created": now(), "description": params.get("description").cloned().unwrap_or(Value::Null),
        "enabled_events": events, "livemode": false, "metadata": params.get("metadata").cloned().unwrap_or(json!({})),
        "status": "enabled", "url": url, "_secret": secret,
        "_connect": str_param(params, "connect") == Some("true")
    });
    store.add(ep.clone());
    let mut shown = crate::api::render(&ep);
    shown["secret"] = json!(secret);
    Ok(shown)
}

pub fn update_endpoint(store: &mut Store, id: &str, params: &Value) -> Result<Value, ApiErr> {
    let mut ep = store.col("webhook_endpoints").get(id).cloned().ok_or_else(|| {
        ApiErr(
            404,
            error_body(
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such webhook_endpoint: '{id}'"),
                Some("id"),
            ),
        )
    })?;
    if let Some(url) = str_param(params, "url") {
        validate_url(url)?;
        ep["url"] = json!(url);
    }
    if params.get("enabled_events").is_some() {
        ep["enabled_events"] = json!(validate_events(params)?);
    }
    if let Some(d) = params.get("description") {
        ep["description"] = d.clone();
    }
    if let Some(d) = str_param(params, "disabled") {
        ep["status"] = json!(if d == "true" { "disabled" } else { "enabled" });
    }
    store.col_mut("webhook_endpoints").replace(ep.clone());
    Ok(crate::api::render(&ep))
}

/// Takes queued deliveries and runs each as its own task (bounded concurrency),
/// with the configured delay, shuffle, duplication and retries.
pub async fn deliver_loop(inner: Arc<Inner>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Delivery>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(inner.faults().webhook_concurrency.max(1)));
    while let Some(d) = rx.recv().await {
        let f = inner.faults();
        let copies = if f.webhook_duplicate_rate > 0.0 && inner.roll() < f.webhook_duplicate_rate { 2 } else { 1 };
        // the first copy was counted when the event was emitted
        inner.deliveries.lock().unwrap_or_else(|p| p.into_inner()).queued += copies - 1;
        for _ in 0..copies {
            let inner = inner.clone();
            let d = d.clone();
            let permits = permits.clone();
            let extra = if f.webhook_shuffle_ms > 0 { (inner.roll() * f.webhook_shuffle_ms as f64) as u64 } else { 0 };
            let delay = Duration::from_millis(f.webhook_delay_ms + extra);
            tokio::spawn(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let Ok(_p) = permits.acquire_owned().await else {
                    return;
                };
                deliver(&inner, &d).await;
            });
        }
    }
}

async fn deliver(inner: &Inner, d: &Delivery) {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let f = inner.faults();
        let header = signature_header(&d.payload, &d.secret, now());
        let result = inner
            .http
            .post(&d.url)
            .header("Content-Type", "application/json; charset=utf-8")
            .header("Stripe-Signature", header)
            .header("User-Agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)")
            .body(d.payload.as_ref().clone())
            .send()
            .await;
        let ok = matches!(&result, Ok(r) if r.status().is_success());
        {
            let mut log = inner.deliveries.lock().unwrap_or_else(|p| p.into_inner());
            log.attempts += 1;
            if ok {
                log.succeeded += 1;
                log.acknowledged.push(d.event_id.clone());
            } else {
                log.failed_attempts += 1;
            }
        }
        if ok {
            return;
        }
        if attempt >= f.webhook_max_attempts.max(1) {
            inner.deliveries.lock().unwrap_or_else(|p| p.into_inner()).gave_up += 1;
            return;
        }
        let backoff =
            f.webhook_retry_base_ms.saturating_mul(1u64 << (attempt - 1).min(20)).min(f.webhook_retry_max_ms.max(1));
        tokio::time::sleep(Duration::from_millis(backoff)).await;
    }
}
