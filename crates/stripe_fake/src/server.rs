//! HTTP: connections, authentication, fault injection, request counters, and the
//! `/_fake/...` admin endpoints tests use to steer the fake while it runs.

use crate::api::{self, Caller, error_body};
use crate::{Faults, Inner, permissions};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Returned by the service to make hyper close the connection without an answer.
#[derive(Debug)]
pub struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

pub async fn serve(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(inner.clone(), req));
            let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn respond(status: u16, body: String, request_id: &str) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Request-Id", request_id)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response");
    if status == 429 || status >= 500 {
        r.headers_mut().insert("Stripe-Should-Retry", "true".parse().expect("header"));
    }
    r
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Dropped> {
    let method = req.method().as_str().to_string();
    let path_q = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let path = req.uri().path().to_string();
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let auth = header("authorization");
    let idem = header("idempotency-key");
    let stripe_account = header("stripe-account");
    let body = match Limited::new(req.into_body(), 4 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(respond(
                413,
                error_body("invalid_request_error", None, "Request body too large", None),
                "req_fake",
            ));
        }
    };
    let body = String::from_utf8_lossy(&body).to_string();

    if let Some(admin) = path.strip_prefix("/_fake/") {
        let (status, text) = admin_call(&inner, &method, admin, &body);
        return Ok(respond(status, text, "req_admin"));
    }

    let faults = inner.faults();
    let request_id = format!("req_{:014}", inner.roll().to_bits() % 100_000_000_000_000);
    let status = api_status(&inner, &faults, auth.as_deref()).await;
    let counted = |inner: &Inner, status: u16| {
        let mut s = inner.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.requests_total += 1;
        *s.by_path.entry(format!("{method} {path}")).or_default() += 1;
        *s.by_status.entry(status).or_default() += 1;
        if s.log.len() < crate::Stats::LOG_MAX {
            s.log.push(format!("{method} {}", percent_decode(&path_q)));
        }
    };
    match status {
        Gate::Drop => {
            counted(&inner, 0);
            Err(Dropped)
        }
        Gate::Answer(code, text) => {
            counted(&inner, code);
            Ok(respond(code, text, &request_id))
        }
        Gate::Pass(key) => {
            let caller = Caller {
                restricted: key.starts_with("rk_"),
                idempotency_key: idem,
                request_id: request_id.clone(),
                key_tail: tail(&key),
                stripe_account,
            };
            if let Some(denied) = restricted_denial(&faults, &key, &caller, &method, &path) {
                counted(&inner, 403);
                return Ok(respond(403, denied, &request_id));
            }
            if faults.unsupported_paths.iter().any(|p| path.starts_with(p.as_str())) {
                let msg = format!("Unrecognized request URL ({method}: {path}).");
                counted(&inner, 400);
                return Ok(respond(400, error_body("invalid_request_error", None, &msg, None), &request_id));
            }
            let (code, text) = api::handle(&inner, &method, &path_q, &body, &caller);
            counted(&inner, code);
            Ok(respond(code, text, &request_id))
        }
    }
}

enum Gate {
    Drop,
    Answer(u16, String),
    Pass(String),
}

/// `%5B` → `[` (for readable request logs).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn tail(key: &str) -> String {
    key.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect()
}

/// Latency, then authentication, then the fault dice and the rate limit.
async fn api_status(inner: &Inner, f: &Faults, auth: Option<&str>) -> Gate {
    if f.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
    }
    if f.drop_rate > 0.0 && inner.roll() < f.drop_rate {
        return Gate::Drop;
    }
    let key = match auth.and_then(parse_auth) {
        Some(k) => k,
        None => {
            return Gate::Answer(
                401,
                error_body(
                    "invalid_request_error",
                    None,
                    "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
                    None,
                ),
            );
        }
    };
    let valid_shape =
        ["sk_test_", "sk_live_", "rk_test_", "rk_live_"].iter().any(|p| key.starts_with(p)) && key.len() > 10;
    if !valid_shape || f.bad_keys.contains(&key) {
        let masked = format!("{}****{}", &key[..key.len().min(8)], tail(&key));
        return Gate::Answer(
            401,
            error_body(
                "invalid_request_error",
                Some("api_key_invalid"),
                &format!("Invalid API Key provided: {masked}"),
                None,
            ),
        );
    }
    if f.rate_limit > 0.0 && !take_token(inner, f.rate_limit) {
        return Gate::Answer(
            429,
            error_body(
                "invalid_request_error",
                Some("rate_limit"),
                "Request rate limit exceeded. You can learn more about rate limits here https://stripe.com/docs/rate-limits.",
                None,
            ),
        );
    }
    if f.rate_limited_rate > 0.0 && inner.roll() < f.rate_limited_rate {
        return Gate::Answer(
            429,
            error_body("invalid_request_error", Some("rate_limit"), "Request rate limit exceeded.", None),
        );
    }
    if f.error_rate > 0.0 && inner.roll() < f.error_rate {
        return Gate::Answer(500, error_body("api_error", None, "Something went wrong on Stripe's end.", None));
    }
    Gate::Pass(key)
}

fn take_token(inner: &Inner, rate: f64) -> bool {
    let mut g = inner.limiter.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let (tokens, last) = &mut *g;
    *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate.max(1.0));
    *last = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        false
    }
}

fn parse_auth(h: &str) -> Option<String> {
    let h = h.trim();
    if let Some(k) = h.strip_prefix("Bearer ") {
        return Some(k.trim().to_string());
    }
    let b = h.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(b.trim()).ok()?;
    let s = String::from_utf8(decoded).ok()?;
    Some(s.split(':').next().unwrap_or_default().to_string())
}

/// Stripe's 403 when a restricted key lacks the permission for this request.
fn restricted_denial(f: &Faults, key: &str, caller: &Caller, method: &str, path: &str) -> Option<String> {
    if !caller.restricted {
        return None;
    }
    let needed = permissions::needed(method, path)?;
    let collection = path.strip_prefix("/v1/")?.split('/').next()?;
    let denied = f.restricted_denied.iter().any(|d| d == collection)
        || f.restricted_keys.get(key).is_some_and(|granted| !permissions::grants(granted, &needed));
    denied.then(|| {
        error_body("invalid_request_error", None, &permissions::denial_message(&caller.key_tail, &needed), None)
    })
}

fn admin_call(inner: &Inner, method: &str, path: &str, body: &str) -> (u16, String) {
    let ok = |v: Value| (200, v.to_string());
    match (method, path.trim_end_matches('/')) {
        ("GET", "stats") => ok(serde_json::to_value(inner.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()),
        ("POST", "stats/reset") => {
            *inner.stats.lock().unwrap_or_else(|p| p.into_inner()) = Default::default();
            ok(json!({"reset": true}))
        }
        ("GET", "faults") => ok(serde_json::to_value(inner.faults()).unwrap_or_default()),
        ("POST", "faults") => {
            let patch: Value = match serde_json::from_str(body) {
                Ok(v @ Value::Object(_)) => v,
                _ => return (400, json!({"error": "body must be a JSON object of fault fields"}).to_string()),
            };
            let mut current = serde_json::to_value(inner.faults()).unwrap_or_default();
            if let (Value::Object(cur), Value::Object(p)) = (&mut current, patch) {
                for (k, v) in p {
                    cur.insert(k, v);
                }
            }
            match serde_json::from_value::<Faults>(current) {
                Ok(f) => {
                    *inner.faults.write().unwrap_or_else(|p| p.into_inner()) = f.clone();
                    ok(serde_json::to_value(f).unwrap_or_default())
                }
                Err(e) => (400, json!({"error": e.to_string()}).to_string()),
            }
        }
        ("GET", "deliveries") => ok(serde_json::to_value(inner.deliveries.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()),
        ("GET", p) if p.starts_with("objects/") => {
            let col = &p["objects/".len()..];
            let store = inner.store.lock().unwrap_or_else(|p| p.into_inner());
            match store.collections.get(col) {
                Some(c) => ok(Value::Array(c.values().cloned().collect())),
                None => (404, json!({"error": format!("no collection {col}")}).to_string()),
            }
        }
        ("POST", "history") => {
            // {"events": n, "from": unix, "to": unix}: customer.updated events in the past
            let v: Value = serde_json::from_str(body).unwrap_or_default();
            let (Some(n), Some(from), Some(to)) = (v["events"].as_u64(), v["from"].as_i64(), v["to"].as_i64()) else {
                return (400, json!({"error": "body must be {\"events\": n, \"from\": unix, \"to\": unix}"}).to_string());
            };
            let mut store = inner.store.lock().unwrap_or_else(|p| p.into_inner());
            ok(json!({"events": crate::webhooks::backfill_updates(inner, &mut store, n as usize, from, to)}))
        }
        ("POST", p) if p.starts_with("accounts/") && p.ends_with("/deauthorize") => {
            let id = &p["accounts/".len()..p.len() - "/deauthorize".len()];
            let mut store = inner.store.lock().unwrap_or_else(|p| p.into_inner());
            if crate::connect::deauthorize(inner, &mut store, id) {
                ok(json!({"deauthorized": id}))
            } else {
                (404, json!({"error": format!("{id} is not a connected account")}).to_string())
            }
        }
        ("GET", "counts") => {
            let store = inner.store.lock().unwrap_or_else(|p| p.into_inner());
            let m: serde_json::Map<String, Value> = store.collections.iter().map(|(k, c)| (k.to_string(), json!(c.len()))).collect();
            ok(Value::Object(m))
        }
        _ => (404, json!({"error": "unknown admin endpoint; try GET /_fake/stats, /_fake/faults, /_fake/counts, /_fake/objects/{collection}, /_fake/deliveries, POST /_fake/history, POST /_fake/accounts/{id}/deauthorize"}).to_string()),
    }
}
