//! The HTTP client: authentication, pinned API version, Connect account header,
//! retries with backoff that obey Stripe's headers, and a client-side rate limit.

use crate::error::{StripeError, redact};
use crate::ratelimit::TokenBucket;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The Stripe API version every request is pinned to (sent as `Stripe-Version`).
pub const API_VERSION: &str = "2026-06-24.dahlia";
pub const DEFAULT_API_URL: &str = "https://api.stripe.com";

/// An API key. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Accepts secret (`sk_`) and restricted (`rk_`) keys.
    pub fn new(key: &str) -> Result<ApiKey, StripeError> {
        let key = key.trim();
        if !(key.starts_with("sk_") || key.starts_with("rk_")) || key.len() < 8 {
            return Err(StripeError::Config {
                message: "the API key must be a secret key (sk_...) or a restricted key (rk_...)".into(),
            });
        }
        if key.chars().any(|c| !(c.is_ascii_alphanumeric() || c == '_')) {
            return Err(StripeError::Config { message: "the API key has characters a Stripe key never has".into() });
        }
        Ok(ApiKey(key.to_string()))
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", redact(&self.0))
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub api_key: ApiKey,
    /// Base URL without `/v1` (`https://api.stripe.com`, or a fake's `http://127.0.0.1:port`).
    pub base_url: String,
    pub api_version: String,
    /// Sent as `Stripe-Account` (Connect).
    pub account: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff; doubles each retry, with jitter, capped by `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Client-side limit, requests per second (0 = unlimited).
    pub max_requests_per_second: f64,
}

impl ClientConfig {
    pub fn new(api_key: ApiKey) -> ClientConfig {
        ClientConfig {
            api_key,
            base_url: DEFAULT_API_URL.to_string(),
            api_version: API_VERSION.to_string(),
            account: None,
            timeout: Duration::from_secs(60),
            max_retries: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_requests_per_second: 25.0,
        }
    }
}

/// Validates a base URL: http(s), a host, no path beyond `/`, no credentials.
pub fn validate_base_url(url: &str) -> Result<String, StripeError> {
    let parsed =
        url::Url::parse(url).map_err(|e| StripeError::Config { message: format!("api_url is not a URL: {e}") })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(StripeError::Config {
            message: "api_url must start with https:// (or http:// for a local fake)".into(),
        });
    }
    if parsed.host_str().is_none() || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(StripeError::Config { message: "api_url must name a host and carry no credentials".into() });
    }
    let path = parsed.path().trim_end_matches('/');
    if !(path.is_empty() || path == "/v1") {
        return Err(StripeError::Config {
            message: format!("api_url must be the API's root, like https://api.stripe.com, not a path ({path})"),
        });
    }
    let mut base = format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or_default());
    if let Some(port) = parsed.port() {
        base.push_str(&format!(":{port}"));
    }
    Ok(base)
}

/// A time at or before Stripe read the data of an answer, on Stripe's clock: the
/// `Date` header is when the answer was made (after the read), truncated to the
/// second, and the read came after the request was sent, at most `elapsed`
/// before the answer.
pub fn read_no_later_than(date: i64, elapsed: Duration) -> i64 {
    date - elapsed.as_secs_f64().ceil() as i64
}

/// Whether `id` looks like a Stripe account id: `acct_` and letters, digits or `_`.
pub fn valid_account_id(id: &str) -> bool {
    id.strip_prefix("acct_").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Counters of what a client did, shared by its clones.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// HTTP requests sent, retries included.
    pub requests: AtomicU64,
    /// Of those, retries.
    pub retries: AtomicU64,
}

/// Numbers the idempotency keys this process makes.
static IDEMPOTENCY_SEQ: AtomicU64 = AtomicU64::new(0);

/// A Stripe API client. Cheap to clone; clones share the rate limit and counters.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    cfg: Arc<ClientConfig>,
    bucket: Arc<TokenBucket>,
    pub stats: Arc<ClientStats>,
    seq: Arc<AtomicU64>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("base_url", &self.cfg.base_url).finish()
    }
}

enum Method {
    Get,
    Post(Vec<(String, String)>, String),
    Delete,
}

impl Client {
    pub fn new(mut cfg: ClientConfig) -> Result<Client, StripeError> {
        cfg.base_url = validate_base_url(&cfg.base_url)?;
        if let Some(acct) = &cfg.account
            && !valid_account_id(acct)
        {
            return Err(StripeError::Config { message: "account must be a connected account id (acct_...)".into() });
        }
        if !(cfg.max_requests_per_second >= 0.0 && cfg.max_requests_per_second.is_finite()) {
            return Err(StripeError::Config { message: "max_requests_per_second must be a positive number".into() });
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("stripe_sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StripeError::Config { message: format!("cannot build the HTTP client: {e}") })?;
        let bucket = Arc::new(TokenBucket::new(cfg.max_requests_per_second));
        Ok(Client { http, cfg: Arc::new(cfg), bucket, stats: Arc::default(), seq: Arc::default() })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// This client acting as another account: its requests carry `Stripe-Account:
    /// account` (`None`: the key's own account). It shares this client's rate
    /// limit, counters and connections.
    pub fn acting_as(&self, account: Option<&str>) -> Result<Client, StripeError> {
        if self.cfg.account.as_deref() == account {
            return Ok(self.clone());
        }
        if let Some(a) = account
            && !valid_account_id(a)
        {
            return Err(StripeError::Config { message: "account must be a connected account id (acct_...)".into() });
        }
        let mut cfg = (*self.cfg).clone();
        cfg.account = account.map(str::to_string);
        Ok(Client { cfg: Arc::new(cfg), ..self.clone() })
    }

    /// This client with counters of its own (from zero), still sharing the rate
    /// limit and connections: what one account's refresh sends, when several
    /// accounts are read at once.
    pub fn with_own_counters(&self) -> Client {
        Client { stats: Arc::default(), ..self.clone() }
    }

    /// Requests sent so far by this client and its clones.
    pub fn requests_sent(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    /// `GET path?query`.
    pub async fn get(&self, path: &str, query: &[(String, String)]) -> Result<Value, StripeError> {
        self.send(Method::Get, path, query).await.map(|(v, _)| v)
    }

    /// `GET path?query`, with Stripe's clock at the answer (its `Date` header, in
    /// unix seconds; our clock if absent). Rows written from the answer are stamped
    /// with it, on the same clock as event `created` times.
    pub async fn get_dated(&self, path: &str, query: &[(String, String)]) -> Result<(Value, i64), StripeError> {
        self.send(Method::Get, path, query).await
    }

    /// Form-encoded `POST` with an `Idempotency-Key` (generated when `None`); the
    /// same key is reused on retries so a retried create happens once.
    pub async fn post(
        &self,
        path: &str,
        form: &[(String, String)],
        idempotency_key: Option<&str>,
    ) -> Result<Value, StripeError> {
        let key = match idempotency_key {
            Some(k) => k.to_string(),
            // unique in the process (not per client: two clients of one backend
            // posting in the same second must not share a key)
            None => format!(
                "stripe_sync-{}-{}-{}",
                std::process::id(),
                crate::signature::unix_now(),
                IDEMPOTENCY_SEQ.fetch_add(1, Ordering::Relaxed)
            ),
        };
        self.send(Method::Post(form.to_vec(), key), path, &[]).await.map(|(v, _)| v)
    }

    pub async fn delete(&self, path: &str) -> Result<Value, StripeError> {
        self.send(Method::Delete, path, &[]).await.map(|(v, _)| v)
    }

    /// Retrieves one object; `Ok(None)` only on Stripe's `resource_missing` 404
    /// (and for deleted-object stubs), any other failure is an error.
    pub async fn retrieve(&self, path: &str) -> Result<Option<Value>, StripeError> {
        match self.get(path, &[]).await {
            Ok(v) if v.get("deleted").and_then(Value::as_bool) == Some(true) => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(StripeError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn send(&self, method: Method, path: &str, query: &[(String, String)]) -> Result<(Value, i64), StripeError> {
        let url = format!("{}{}", self.cfg.base_url, path);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            self.bucket.acquire(self.cfg.account.as_deref()).await;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let mut req = match &method {
                Method::Get => self.http.get(&url).query(query),
                Method::Post(form, key) => self.http.post(&url).header("Idempotency-Key", key).form(form),
                Method::Delete => self.http.delete(&url),
            };
            let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.cfg.api_key.expose()))
                .map_err(|_| StripeError::Config { message: "the API key is not a valid header value".into() })?;
            auth.set_sensitive(true);
            req = req.header(reqwest::header::AUTHORIZATION, auth).header("Stripe-Version", &self.cfg.api_version);
            if let Some(acct) = &self.cfg.account {
                req = req.header("Stripe-Account", acct);
            }
            let sent = std::time::Instant::now();
            let outcome = match req.send().await {
                Ok(resp) => self.read_response(resp, path, sent).await,
                Err(e) => Err(Failure::Retryable(
                    StripeError::Network { message: describe_reqwest(&e), attempts: attempt },
                    None,
                )),
            };
            match outcome {
                Ok(v) => return Ok(v),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retryable(e, retry_after)) => {
                    if attempt > self.cfg.max_retries {
                        return Err(with_attempts(e, attempt));
                    }
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(self.backoff(attempt, retry_after)).await;
                }
            }
        }
    }

    /// Exponential backoff with full jitter in [d/2, d], honouring `Retry-After`.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self.cfg.initial_backoff.saturating_mul(1u32 << (attempt - 1).min(16));
        let capped = exp.min(self.cfg.max_backoff);
        let jitter = jitter_fraction(self.seq.fetch_add(1, Ordering::Relaxed));
        let d = capped.mul_f64(0.5 + 0.5 * jitter);
        match retry_after {
            Some(ra) => ra.min(Duration::from_secs(60)).max(d),
            None => d,
        }
    }

    async fn read_response(
        &self,
        resp: reqwest::Response,
        path: &str,
        sent: std::time::Instant,
    ) -> Result<(Value, i64), Failure> {
        let status = resp.status().as_u16();
        let server_time = resp
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or_else(crate::signature::unix_now);
        let server_time = read_no_later_than(server_time, sent.elapsed());
        let should_retry = resp
            .headers()
            .get("Stripe-Should-Retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.eq_ignore_ascii_case("true"));
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Err(Failure::Retryable(
                    StripeError::Network { message: describe_reqwest(&e), attempts: 0 },
                    None,
                ));
            }
        };
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body)
                .map(|v| (v, server_time))
                .map_err(|e| Failure::Final(StripeError::Decode { message: format!("{path}: {e}") }));
        }
        let (message, code, param) = parse_error_body(&body, status);
        let err = match status {
            401 => StripeError::Authentication { message },
            403 if code.as_deref() == Some("account_invalid") => StripeError::AccountInvalid { message },
            403 => StripeError::Permission { message, path: path.to_string() },
            404 => StripeError::NotFound { message, param },
            429 => StripeError::RateLimited { message, attempts: 0 },
            s if s >= 500 => StripeError::Server { status: s, message, attempts: 0 },
            s => StripeError::InvalidRequest { status: s, code, param, message },
        };
        // Stripe-Should-Retry decides first; then 409, 429 and 5xx are retried.
        let retry = should_retry.unwrap_or(matches!(status, 409 | 429) || status >= 500);
        if retry { Err(Failure::Retryable(err, retry_after)) } else { Err(Failure::Final(err)) }
    }
}

enum Failure {
    Retryable(StripeError, Option<Duration>),
    Final(StripeError),
}

fn with_attempts(e: StripeError, n: u32) -> StripeError {
    match e {
        StripeError::RateLimited { message, .. } => StripeError::RateLimited { message, attempts: n },
        StripeError::Server { status, message, .. } => StripeError::Server { status, message, attempts: n },
        StripeError::Network { message, .. } => StripeError::Network { message, attempts: n },
        other => other,
    }
}

/// Turns Stripe's error envelope into (message, code, param); all redacted.
fn parse_error_body(body: &[u8], status: u16) -> (String, Option<String>, Option<String>) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let err = v.get("error");
    let field = |name: &str| err.and_then(|e| e.get(name)).and_then(Value::as_str).map(redact);
    let message = field("message").unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).to_string();
        if text.trim().is_empty() { format!("HTTP {status} with an empty body") } else { redact(&text) }
    });
    (message, field("code"), field("param"))
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    // reqwest's Display includes the URL, which never carries the key; the key lives
    // only in a sensitive header. Redact anyway.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "connection broken while reading the answer"
    } else {
        "request failed"
    };
    let mut source = String::new();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = cur {
        source = s.to_string();
        cur = s.source();
    }
    redact(&if source.is_empty() { kind.to_string() } else { format!("{kind}: {source}") })
}

fn jitter_fraction(n: u64) -> f64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_add(std::process::id() as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_debug_never_shows_the_key() {
        let k = ApiKey::new("sk_test_0123456789abcdefghijklmnop").unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(ApiKey::new("pk_test_123456789").is_err());
        assert!(ApiKey::new("sk_test_12 34").is_err());
        let e = ApiKey::new("nope_secret_value").unwrap_err().to_string();
        assert!(!e.contains("secret_value"));
    }

    #[test]
    fn account_ids() {
        assert!(valid_account_id("acct_1A2b3C"));
        for bad in ["acct_", "cus_123", "acct_1 2", "acct_1'; --", ""] {
            assert!(!valid_account_id(bad), "{bad}");
        }
        let c = Client::new(ClientConfig::new(ApiKey::new("sk_test_0123456789abcdefghijklmnop").unwrap())).unwrap();
        let a = c.acting_as(Some("acct_1A2b3C")).unwrap();
        assert_eq!(a.config().account.as_deref(), Some("acct_1A2b3C"));
        assert!(Arc::ptr_eq(&a.stats, &c.stats), "one set of counters");
        assert!(Arc::ptr_eq(&a.bucket, &c.bucket), "one rate limit");
        assert_eq!(a.acting_as(None).unwrap().config().account, None);
        assert!(c.acting_as(Some("cus_1")).is_err());
    }

    #[test]
    fn base_url_validation() {
        assert_eq!(validate_base_url("https://api.stripe.com").unwrap(), "https://api.stripe.com");
        assert_eq!(validate_base_url("https://api.stripe.com/").unwrap(), "https://api.stripe.com");
        assert_eq!(validate_base_url("https://api.stripe.com/v1/").unwrap(), "https://api.stripe.com");
        assert_eq!(validate_base_url("http://127.0.0.1:12111").unwrap(), "http://127.0.0.1:12111");
        assert!(validate_base_url("ftp://x").is_err());
        assert!(validate_base_url("https://api.stripe.com/other").is_err());
        assert!(validate_base_url("not a url").is_err());
        assert!(validate_base_url("https://user:pw@api.stripe.com").is_err());
    }

    #[test]
    fn a_page_is_stamped_no_later_than_stripe_read_it() {
        // answered at second 100 after 0.25 s: the read may have been at 99.8
        assert_eq!(read_no_later_than(100, Duration::from_millis(250)), 99);
        assert_eq!(read_no_later_than(100, Duration::from_millis(2_100)), 97);
        assert_eq!(read_no_later_than(100, Duration::ZERO), 100);
    }

    #[test]
    fn error_body_is_parsed_and_redacted() {
        let body = br#"{"error":{"type":"invalid_request_error","message":"Invalid API Key provided: sk_test_abcdefghijklmnopqrstuvwx","code":"api_key_invalid"}}"#;
        let (m, c, p) = parse_error_body(body, 401);
        assert!(!m.contains("abcdefghijklmnop"), "{m}");
        assert_eq!(c.as_deref(), Some("api_key_invalid"));
        assert_eq!(p, None);
        let (m, _, _) = parse_error_body(b"", 502);
        assert!(m.contains("502"));
    }

    #[test]
    fn backoff_grows_is_capped_and_obeys_retry_after() {
        let mut cfg = ClientConfig::new(ApiKey::new("sk_test_123456789").unwrap());
        cfg.initial_backoff = Duration::from_millis(100);
        cfg.max_backoff = Duration::from_millis(1000);
        let c = Client::new(cfg).unwrap();
        for attempt in 1..20 {
            let d = c.backoff(attempt, None);
            let cap = Duration::from_millis(100 * (1u64 << (attempt - 1).min(16))).min(Duration::from_millis(1000));
            assert!(d <= cap && d >= cap / 2, "attempt {attempt}: {d:?}");
        }
        assert_eq!(c.backoff(1, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(c.backoff(1, Some(Duration::from_secs(600))), Duration::from_secs(60));
    }
}
