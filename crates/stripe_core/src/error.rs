//! Typed Stripe API errors. Messages never contain an API key or webhook secret:
//! every text that came from the network goes through [`redact`].

use std::fmt;

/// An error from the Stripe API or the way to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StripeError {
    /// 401: the key is wrong, expired or revoked.
    Authentication { message: String },
    /// 403: a restricted key lacks a permission.
    Permission { message: String, path: String },
    /// 403 `account_invalid`: the key may not act as this connected account (it
    /// revoked the platform's access, or it is not connected).
    AccountInvalid { message: String },
    /// 404 `resource_missing`.
    NotFound { message: String, param: Option<String> },
    /// 400 and other 4xx request errors.
    InvalidRequest { status: u16, code: Option<String>, param: Option<String>, message: String },
    /// 429 that was still answered after every retry.
    RateLimited { message: String, attempts: u32 },
    /// 5xx that was still answered after every retry.
    Server { status: u16, message: String, attempts: u32 },
    /// Connection refused, reset, timed out... after every retry.
    Network { message: String, attempts: u32 },
    /// The answer was not the JSON we expected.
    Decode { message: String },
    /// Bad client settings (URL, version, ...).
    Config { message: String },
    /// The caller gave up (query cancel).
    Cancelled,
    /// A reading thread ended without saying it had finished (a panic, a runtime
    /// that did not start): what was read is incomplete.
    Unfinished { message: String },
}

impl fmt::Display for StripeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StripeError::Authentication { message } => write!(
                f,
                "Stripe rejected the API key (401): {message}; check the key, or roll it in the Dashboard and update the source"
            ),
            StripeError::Permission { message, path } => {
                write!(f, "the API key lacks a permission for {path} (403): {message}")
            }
            StripeError::AccountInvalid { message } => {
                write!(f, "Stripe refused access to the connected account (403 account_invalid): {message}")
            }
            StripeError::NotFound { message, .. } => {
                write!(f, "not found at Stripe (404): {message}")
            }
            StripeError::InvalidRequest { status, message, param, .. } => match param {
                Some(p) => write!(f, "Stripe refused the request ({status}, parameter {p}): {message}"),
                None => write!(f, "Stripe refused the request ({status}): {message}"),
            },
            StripeError::RateLimited { message, attempts } => write!(
                f,
                "Stripe's rate limit was still exceeded after {attempts} attempts: {message}; lower max_requests_per_second or run fewer refreshes at once"
            ),
            StripeError::Server { status, message, attempts } => {
                write!(f, "Stripe answered {status} after {attempts} attempts: {message}")
            }
            StripeError::Network { message, attempts } => {
                write!(f, "could not reach the Stripe API after {attempts} attempts: {message}")
            }
            StripeError::Decode { message } => {
                write!(f, "unexpected answer from the Stripe API: {message}")
            }
            StripeError::Config { message } => {
                write!(f, "invalid Stripe client setting: {message}")
            }
            StripeError::Cancelled => write!(f, "the Stripe request was cancelled"),
            StripeError::Unfinished { message } => {
                write!(f, "reading from Stripe ended before it was complete: {message}")
            }
        }
    }
}

impl std::error::Error for StripeError {}

impl StripeError {
    /// The API refused the request itself (403, 400, 404): asking again will not
    /// help, unlike a rate limit, a 5xx or a network failure.
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            StripeError::Permission { .. }
                | StripeError::AccountInvalid { .. }
                | StripeError::InvalidRequest { .. }
                | StripeError::NotFound { .. }
        )
    }

    /// True when Stripe refused the connected account itself (`account_invalid`):
    /// it revoked the platform's access, or is not connected to it.
    pub fn is_account_invalid(&self) -> bool {
        matches!(self, StripeError::AccountInvalid { .. })
    }

    /// True for Stripe's `resource_missing`.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StripeError::NotFound { .. })
    }
}

/// Replaces anything that looks like a Stripe secret (`sk_...`, `rk_...`,
/// `whsec_...`) with a masked form keeping the prefix and, for long tokens, the
/// last 4 characters (as Stripe's own messages do).
pub fn redact(text: &str) -> String {
    const PREFIXES: [&str; 3] = ["sk_", "rk_", "whsec_"];
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < text.len() {
        let at_boundary = i == 0 || !is_key_char(bytes[i - 1] as char);
        let prefix = PREFIXES.iter().find(|p| at_boundary && text[i..].starts_with(*p));
        match prefix {
            Some(p) => {
                let token_len = text[i..].find(|c: char| !is_key_char(c)).unwrap_or(text.len() - i);
                let token = &text[i..i + token_len];
                // keep the mode part (sk_test_) and the last 4 characters of long keys
                let keep = token.find("_test_").or_else(|| token.find("_live_")).map(|m| m + 6).unwrap_or(p.len());
                out.push_str(&token[..keep.min(token.len())]);
                if token.len() > keep {
                    out.push_str("***");
                    if token.len() >= keep + 16 {
                        out.push_str(&token[token.len() - 4..]);
                    }
                }
                i += token_len;
            }
            None => {
                let ch = text[i..].chars().next().expect("i is a char boundary");
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_masks_keys_and_secrets_anywhere_in_a_message() {
        let msg = "Invalid API Key provided: sk_test_51Habcdefghijklmnop1234 and whsec_abcdefghijklmnopqrstu";
        let r = redact(msg);
        assert!(!r.contains("51Habcdefghijklmnop"), "{r}");
        assert!(!r.contains("abcdefghijklmnopqrstu"), "{r}");
        assert!(r.contains("sk_test_***1234"), "{r}");
        assert_eq!(redact("no secrets here"), "no secrets here");
        assert_eq!(redact("task_test_x"), "task_test_x");
        assert!(!redact("rk_live_abc").contains("abc"));
        assert_eq!(redact("ünïcode sk_test_"), "ünïcode sk_test_");
    }

    #[test]
    fn display_of_every_variant_has_advice_and_no_key() {
        let e =
            StripeError::Authentication { message: redact("Invalid API Key provided: sk_test_aaaaaaaaaaaaaaaaaaaaaa") };
        assert!(!e.to_string().contains("aaaaaaaaaaaaaaaa"));
        assert!(e.to_string().contains("check the key"));
        let p = StripeError::Permission { message: "x".into(), path: "/v1/customers".into() };
        assert!(p.to_string().contains("/v1/customers"));
    }
}
