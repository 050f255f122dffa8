//! Receiving Stripe webhooks: verifying a delivery and reading the event
//! envelope ([`verify_event`], shared by the worker's listener and the SQL
//! ingress), and the HTTP listener itself ([`Listener`]), which runs on its own
//! thread and hands verified events to the caller over a channel, answering 2xx
//! only once the caller says the event is stored.

use crate::signature::{self, SignatureError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming as Body;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// A verified event, as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub id: String,
    pub event_type: String,
    pub created: i64,
    /// The body exactly as signed.
    pub raw: String,
}

/// Why a delivery was refused. Never contains a secret.
#[derive(Debug, Clone, PartialEq)]
pub enum Reject {
    Signature(SignatureError),
    /// Signed, but not a Stripe event envelope.
    Malformed(String),
    TooLarge {
        limit: usize,
    },
    /// No source with that name has a signing secret.
    UnknownSource(String),
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::Signature(e) => write!(f, "signature check failed: {e}"),
            Reject::Malformed(m) => write!(f, "not a Stripe event: {m}"),
            Reject::TooLarge { limit } => write!(f, "body larger than {limit} bytes"),
            Reject::UnknownSource(s) => write!(f, "no webhook secret is configured for source \"{s}\""),
        }
    }
}

impl Reject {
    /// The HTTP status a receiver answers.
    pub fn status(&self) -> u16 {
        match self {
            Reject::TooLarge { .. } => 413,
            Reject::UnknownSource(_) => 404,
            _ => 400,
        }
    }
}

/// Verifies the signature over the raw body first, then reads the envelope.
pub fn verify_event<S: AsRef<str>>(
    body: &[u8],
    header: Option<&str>,
    secrets: &[S],
    tolerance_secs: i64,
    now: i64,
) -> Result<Incoming, Reject> {
    signature::verify(body, header.unwrap_or(""), secrets, tolerance_secs, now).map_err(Reject::Signature)?;
    let raw = std::str::from_utf8(body).map_err(|_| Reject::Malformed("the body is not UTF-8".into()))?;
    let v: Value = serde_json::from_str(raw).map_err(|e| Reject::Malformed(format!("invalid JSON: {e}")))?;
    if v.get("object").and_then(Value::as_str) != Some("event") {
        return Err(Reject::Malformed("object is not \"event\" (thin v2 events are not supported)".into()));
    }
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .filter(|i| i.starts_with("evt_"))
        .ok_or_else(|| Reject::Malformed("no evt_ id".into()))?;
    let event_type = v.get("type").and_then(Value::as_str).ok_or_else(|| Reject::Malformed("no type".into()))?;
    let created =
        v.get("created").and_then(Value::as_i64).ok_or_else(|| Reject::Malformed("no created time".into()))?;
    Ok(Incoming { id: id.to_string(), event_type: event_type.to_string(), created, raw: raw.to_string() })
}

/// A verified delivery waiting to be stored; answer with the HTTP status.
pub struct Delivery {
    pub source: String,
    pub event: Incoming,
    pub reply: oneshot::Sender<u16>,
}

/// Signing secrets per source, kept current by the owner of the listener.
pub type Secrets = Arc<RwLock<HashMap<String, Vec<String>>>>;

/// Deliveries the listener refused, per source (the owner counts the rest).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub rejected: std::sync::Mutex<HashMap<String, u64>>,
}

impl ListenerStats {
    /// Takes the counts so far, leaving zeros.
    pub fn take(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.rejected.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub max_body: usize,
    pub tolerance_secs: i64,
    /// How long a delivery waits for the owner to store it before a 503.
    pub store_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept queue, so
    /// slow or idle clients cannot make the listener take on unbounded work.
    pub max_connections: usize,
    /// How long reading a request's body may take before a 408.
    pub body_timeout: Duration,
}

/// The key deliveries for sources without a signing secret are counted under:
/// one row, whatever paths a scanner tries.
pub const UNKNOWN_SOURCE: &str = "(unknown)";

/// A running listener; dropping it stops the server.
pub struct Listener {
    pub addr: SocketAddr,
    pub stats: Arc<ListenerStats>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn text(status: u16, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

impl Listener {
    /// Binds and serves on a thread created by `spawn` (with signals blocked, inside
    /// Postgres). Verified events go to `tx`; the answer waits for their reply.
    pub fn start(
        cfg: ListenerConfig,
        secrets: Secrets,
        tx: SyncSender<Delivery>,
        spawn: impl FnOnce(Box<dyn FnOnce() + Send>) -> std::io::Result<()>,
    ) -> std::io::Result<Listener> {
        let std_listener = std::net::TcpListener::bind(cfg.addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let stats = Arc::new(ListenerStats::default());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let st = stats.clone();
        spawn(Box::new(move || {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else { return };
                let permits = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
                let serve = async {
                    loop {
                        let Ok(permit) = permits.clone().acquire_owned().await else { return };
                        let Ok((stream, _)) = listener.accept().await else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let (cfg, secrets, tx, st) = (cfg.clone(), secrets.clone(), tx.clone(), st.clone());
                        tokio::spawn(async move {
                            let _permit = permit;
                            let svc = service_fn(move |req| {
                                handle(req, cfg.clone(), secrets.clone(), tx.clone(), st.clone())
                            });
                            let _ = http1::Builder::new()
                                .timer(hyper_util::rt::TokioTimer::new())
                                .header_read_timeout(Duration::from_secs(10))
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stop_rx => {}
                }
            });
        }))?;
        Ok(Listener { addr, stats, stop: Some(stop_tx) })
    }
}

async fn handle(
    req: Request<Body>,
    cfg: ListenerConfig,
    secrets: Secrets,
    tx: SyncSender<Delivery>,
    stats: Arc<ListenerStats>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if req.method() != hyper::Method::POST {
        return Ok(text(405, "POST Stripe events to /webhook/<source>"));
    }
    let Some(source) =
        req.uri().path().strip_prefix("/webhook/").map(str::to_string).filter(|s| !s.is_empty() && !s.contains('/'))
    else {
        return Ok(text(404, "POST Stripe events to /webhook/<source>"));
    };
    let reject = |r: Reject| {
        let key = if matches!(r, Reject::UnknownSource(_)) { UNKNOWN_SOURCE.to_string() } else { source.clone() };
        *stats.rejected.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default() += 1;
        Ok(text(r.status(), &r.to_string()))
    };
    let header = req.headers().get("stripe-signature").and_then(|v| v.to_str().ok()).map(str::to_string);
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = declared.is_some_and(|n| n > cfg.max_body);
    // read what was sent (a little past the limit, so the client can read our 413)
    let read_limit = if too_large { cfg.max_body.saturating_mul(4) } else { cfg.max_body };
    let body = match tokio::time::timeout(cfg.body_timeout, Limited::new(req.into_body(), read_limit).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return reject(Reject::TooLarge { limit: cfg.max_body });
        }
        Ok(Err(_)) => return Ok(text(400, "could not read the body")),
        Err(_) => return Ok(text(408, "the body did not arrive in time")),
    };
    if too_large || body.len() > cfg.max_body {
        return reject(Reject::TooLarge { limit: cfg.max_body });
    }
    let known = secrets.read().map(|m| m.get(&source).cloned()).unwrap_or_default();
    let Some(known) = known.filter(|k| !k.is_empty()) else {
        return reject(Reject::UnknownSource(source.clone()));
    };
    let event = match verify_event(&body, header.as_deref(), &known, cfg.tolerance_secs, signature::unix_now()) {
        Ok(e) => e,
        Err(r) => return reject(r),
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    let mut item = Delivery { source, event, reply: reply_tx };
    // hand over to the storing thread; a full queue waits briefly
    let deadline = tokio::time::Instant::now() + cfg.store_timeout;
    loop {
        match tx.try_send(item) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if tokio::time::Instant::now() < deadline => {
                item = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => return Ok(text(503, "busy: try again")),
        }
    }
    match tokio::time::timeout(cfg.store_timeout, reply_rx).await {
        Ok(Ok(status)) => Ok(text(status, if status < 300 { "ok" } else { "not stored" })),
        _ => Ok(text(503, "not stored in time: try again")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(body: &str, secret: &str) -> String {
        signature::header_for(body.as_bytes(), secret, signature::unix_now())
    }

    #[test]
    fn a_signed_event_is_read() {
        let body = r#"{"id":"evt_1","object":"event","type":"customer.created","created":1700000000,"data":{"object":{"id":"cus_1"}}}"#;
        let e = verify_event(body.as_bytes(), Some(&signed(body, "whsec_a")), &["whsec_a"], 300, signature::unix_now())
            .unwrap();
        assert_eq!((e.id.as_str(), e.event_type.as_str(), e.created), ("evt_1", "customer.created", 1_700_000_000));
        assert_eq!(e.raw, body);
    }

    /// One connection at a time, 300 ms for a body: a client that never sends its
    /// body holds the only slot until it gets its 408, then the next is served.
    #[test]
    fn a_slow_client_holds_a_connection_slot_only_until_its_body_timeout() {
        use std::io::{Read, Write};
        let (tx, _rx) = std::sync::mpsc::sync_channel(1);
        let cfg = ListenerConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            max_body: 1024,
            tolerance_secs: 300,
            store_timeout: Duration::from_secs(1),
            max_connections: 1,
            body_timeout: Duration::from_millis(300),
        };
        let l = Listener::start(cfg, Secrets::default(), tx, |job| {
            std::thread::spawn(job);
            Ok(())
        })
        .unwrap();
        let mut slow = std::net::TcpStream::connect(l.addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        slow.write_all(b"POST /webhook/a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let started = std::time::Instant::now();
        let mut next = std::net::TcpStream::connect(l.addr).unwrap();
        next.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        next.write_all(b"POST /webhook/nosuch HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            .unwrap();
        let mut answer = String::new();
        next.read_to_string(&mut answer).unwrap();
        let waited = started.elapsed();
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(waited >= Duration::from_millis(200), "served after {waited:?}, while the slow client held the slot");
        let mut slow_answer = [0u8; 64];
        let n = slow.read(&mut slow_answer).unwrap();
        assert!(String::from_utf8_lossy(&slow_answer[..n]).starts_with("HTTP/1.1 408"));
        // unknown sources are counted under one key, whatever the path
        let counted = l.stats.take();
        assert_eq!(counted.get(UNKNOWN_SOURCE), Some(&1), "{counted:?}");
        assert!(!counted.contains_key("nosuch"));
    }

    #[test]
    fn the_signature_is_checked_before_the_body_is_read() {
        let body = "not json at all";
        let r = verify_event(body.as_bytes(), Some("t=1,v1=00"), &["whsec_a"], 0, 1).unwrap_err();
        assert!(matches!(r, Reject::Signature(_)), "{r:?}");
        let r = verify_event(body.as_bytes(), Some(&signed(body, "whsec_a")), &["whsec_a"], 300, signature::unix_now())
            .unwrap_err();
        assert!(matches!(r, Reject::Malformed(_)));
        assert_eq!(r.status(), 400);
        let r = verify_event(b"{}", None, &["whsec_a"], 300, 0).unwrap_err();
        assert_eq!(r, Reject::Signature(SignatureError::Missing));
        let thin = r#"{"id":"evt_1","object":"v2.core.event","type":"x","created":"2024-01-01T00:00:00Z"}"#;
        let r = verify_event(thin.as_bytes(), Some(&signed(thin, "whsec_a")), &["whsec_a"], 300, signature::unix_now())
            .unwrap_err();
        assert!(matches!(r, Reject::Malformed(_)));
    }
}
