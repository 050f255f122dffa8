//! Verification of Stripe's `Stripe-Signature` webhook header.
//!
//! Format: `t=<unix seconds>,v1=<hex hmac>[,v1=...][,v0=...]`. The signed payload is
//! `"{t}.{raw body}"`, the key is the endpoint secret's bytes as-is (`whsec_...`
//! included). Any matching `v1` is accepted (several appear while a secret rolls),
//! other schemes (`v0`) are ignored, comparison is constant-time, and the timestamp
//! must lie within `tolerance` seconds of now, in either direction.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Stripe's default tolerance, in seconds.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;
/// Headers longer than this are refused before parsing.
pub const MAX_HEADER_LEN: usize = 8192;

/// Why a signature was refused. The message never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// No header, or an empty one.
    Missing,
    /// Longer than [`MAX_HEADER_LEN`].
    TooLong,
    /// No usable `t=` timestamp.
    NoTimestamp,
    /// No `v1=` signature at all.
    NoV1Signature,
    /// No secret configured to check against.
    NoSecret,
    /// Signatures present, none matches any secret.
    Mismatch,
    /// The timestamp is more than the tolerance in the past.
    TooOld { age_secs: i64, tolerance_secs: i64 },
    /// The timestamp is more than the tolerance in the future.
    InFuture { ahead_secs: i64, tolerance_secs: i64 },
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::Missing => write!(f, "missing Stripe-Signature header"),
            SignatureError::TooLong => {
                write!(f, "Stripe-Signature header longer than {MAX_HEADER_LEN} bytes")
            }
            SignatureError::NoTimestamp => {
                write!(f, "Stripe-Signature header has no valid timestamp (t=)")
            }
            SignatureError::NoV1Signature => {
                write!(f, "Stripe-Signature header has no signature with scheme v1")
            }
            SignatureError::NoSecret => write!(f, "no webhook signing secret is configured"),
            SignatureError::Mismatch => write!(
                f,
                "no v1 signature matches the payload for any configured secret (wrong secret, or the body was changed)"
            ),
            SignatureError::TooOld { age_secs, tolerance_secs } => write!(
                f,
                "signature timestamp is {age_secs} s old, outside the tolerance of {tolerance_secs} s (replayed or delayed delivery)"
            ),
            SignatureError::InFuture { ahead_secs, tolerance_secs } => write!(
                f,
                "signature timestamp is {ahead_secs} s in the future, outside the tolerance of {tolerance_secs} s (check the clock)"
            ),
        }
    }
}

impl std::error::Error for SignatureError {}

/// A parsed header: the timestamp and the decoded `v1` signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHeader {
    pub timestamp: i64,
    pub v1: Vec<[u8; 32]>,
}

/// Parses a `Stripe-Signature` header. Never panics, whatever the input.
/// Pairs without `=`, unknown schemes and `v1` values that are not 64 hex digits
/// are skipped, like Stripe's libraries do; the first `t` counts.
pub fn parse_header(header: &str) -> Result<ParsedHeader, SignatureError> {
    if header.trim().is_empty() {
        return Err(SignatureError::Missing);
    }
    if header.len() > MAX_HEADER_LEN {
        return Err(SignatureError::TooLong);
    }
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            continue;
        };
        match key.trim() {
            "t" if timestamp.is_none() => {
                timestamp = value.trim().parse::<i64>().ok();
                if timestamp.is_none() {
                    return Err(SignatureError::NoTimestamp);
                }
            }
            "v1" => {
                let mut sig = [0u8; 32];
                if hex::decode_to_slice(value.trim(), &mut sig).is_ok() {
                    v1.push(sig);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::NoTimestamp)?;
    if v1.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    Ok(ParsedHeader { timestamp, v1 })
}

fn mac(secret: &str, timestamp: i64, payload: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// Verifies `payload` (the raw body) against the header with any of `secrets`.
/// `tolerance_secs = 0` disables the timestamp check. Returns the header's timestamp.
pub fn verify<S: AsRef<str>>(
    payload: &[u8],
    header: &str,
    secrets: &[S],
    tolerance_secs: i64,
    now: i64,
) -> Result<i64, SignatureError> {
    let parsed = parse_header(header)?;
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let mut matched = false;
    for secret in secrets {
        let expected = mac(secret.as_ref(), parsed.timestamp, payload).finalize().into_bytes();
        for sig in &parsed.v1 {
            // constant-time comparison (subtle) over the whole digest
            matched |= bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_slice(), sig.as_slice()));
        }
    }
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    if tolerance_secs > 0 {
        let age = now.saturating_sub(parsed.timestamp);
        if age > tolerance_secs {
            return Err(SignatureError::TooOld { age_secs: age, tolerance_secs });
        }
        let ahead = parsed.timestamp.saturating_sub(now);
        if ahead > tolerance_secs {
            return Err(SignatureError::InFuture { ahead_secs: ahead, tolerance_secs });
        }
    }
    Ok(parsed.timestamp)
}

/// Computes the `v1` hex signature of a payload (for tests, benchmarks and tools
/// that sign events the way Stripe does).
pub fn sign_v1(payload: &[u8], secret: &str, timestamp: i64) -> String {
    hex::encode(mac(secret, timestamp, payload).finalize().into_bytes())
}

/// A complete `Stripe-Signature` header value for one secret.
pub fn header_for(payload: &[u8], secret: &str, timestamp: i64) -> String {
    format!("t={timestamp},v1={}", sign_v1(payload, secret, timestamp))
}

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vector from shared/reference/stripe-api.md §3.1, computed with Python's hmac module.
    const BODY: &str = r#"{"id":"evt_test_1","object":"event","type":"customer.created"}"#;
    const T: i64 = 1_700_000_000;
    const SIG_TEST: &str = "04d2bf28246c9193b661e604bfb64270a80020553d96d093a041ba547392c2cf";
    const SIG_OLD: &str = "109decdcd1da64cd0e3189f3808f365a4c64f0d13f6d8536d3a390225e190aa1";

    #[test]
    fn independent_vector_verifies() {
        let header = format!("t={T},v1={SIG_TEST}");
        assert_eq!(verify(BODY.as_bytes(), &header, &["whsec_test_secret"], 300, T + 10), Ok(T));
        assert_eq!(sign_v1(BODY.as_bytes(), "whsec_test_secret", T), SIG_TEST);
        assert_eq!(sign_v1(BODY.as_bytes(), "whsec_old_secret", T), SIG_OLD);
    }

    #[test]
    fn tampered_body_is_a_mismatch() {
        let header = format!("t={T},v1={SIG_TEST}");
        let tampered = BODY.replace("created", "deleted");
        assert_eq!(verify(tampered.as_bytes(), &header, &["whsec_test_secret"], 300, T), Err(SignatureError::Mismatch));
        // one byte of whitespace is enough
        let spaced = format!("{BODY} ");
        assert_eq!(verify(spaced.as_bytes(), &header, &["whsec_test_secret"], 300, T), Err(SignatureError::Mismatch));
    }

    #[test]
    fn wrong_secret_is_a_mismatch() {
        let header = format!("t={T},v1={SIG_TEST}");
        assert_eq!(verify(BODY.as_bytes(), &header, &["whsec_other"], 300, T), Err(SignatureError::Mismatch));
        assert_eq!(verify::<&str>(BODY.as_bytes(), &header, &[], 300, T), Err(SignatureError::NoSecret));
    }

    #[test]
    fn changed_timestamp_is_a_mismatch() {
        let header = format!("t={},v1={SIG_TEST}", T + 1);
        assert_eq!(verify(BODY.as_bytes(), &header, &["whsec_test_secret"], 0, T), Err(SignatureError::Mismatch));
    }

    #[test]
    fn stale_timestamp_is_refused_and_tolerance_zero_disables_the_check() {
        let header = format!("t={T},v1={SIG_TEST}");
        assert_eq!(
            verify(BODY.as_bytes(), &header, &["whsec_test_secret"], 300, T + 301),
            Err(SignatureError::TooOld { age_secs: 301, tolerance_secs: 300 })
        );
        assert_eq!(verify(BODY.as_bytes(), &header, &["whsec_test_secret"], 300, T + 300), Ok(T));
        assert_eq!(verify(BODY.as_bytes(), &header, &["whsec_test_secret"], 0, T + 100_000), Ok(T));
    }

    #[test]
    fn future_timestamp_is_refused() {
        let header = format!("t={T},v1={SIG_TEST}");
        assert_eq!(
            verify(BODY.as_bytes(), &header, &["whsec_test_secret"], 300, T - 301),
            Err(SignatureError::InFuture { ahead_secs: 301, tolerance_secs: 300 })
        );
        assert_eq!(verify(BODY.as_bytes(), &header, &["whsec_test_secret"], 300, T - 300), Ok(T));
    }

    #[test]
    fn any_of_several_v1_signatures_may_match() {
        let bogus = "00".repeat(32);
        let header = format!("t={T},v1={bogus},v1={SIG_OLD},v0=6ffbb5");
        assert_eq!(verify(BODY.as_bytes(), &header, &["whsec_old_secret"], 300, T), Ok(T));
        // the header of a rolling secret carries both; each secret alone verifies it
        let rolling = format!("t={T},v1={SIG_TEST},v1={SIG_OLD}");
        assert_eq!(verify(BODY.as_bytes(), &rolling, &["whsec_test_secret"], 300, T), Ok(T));
        assert_eq!(verify(BODY.as_bytes(), &rolling, &["whsec_old_secret"], 300, T), Ok(T));
        // and several configured secrets: one matching is enough
        assert_eq!(
            verify(BODY.as_bytes(), &format!("t={T},v1={SIG_OLD}"), &["whsec_x", "whsec_old_secret"], 300, T),
            Ok(T)
        );
    }

    #[test]
    fn v0_alone_is_never_accepted() {
        let header = format!("t={T},v0={SIG_TEST}");
        assert_eq!(
            verify(BODY.as_bytes(), &header, &["whsec_test_secret"], 300, T),
            Err(SignatureError::NoV1Signature)
        );
    }

    #[test]
    fn malformed_headers_get_the_right_error() {
        let check = |h: &str| verify(BODY.as_bytes(), h, &["whsec_test_secret"], 300, T);
        assert_eq!(check(""), Err(SignatureError::Missing));
        assert_eq!(check("   "), Err(SignatureError::Missing));
        assert_eq!(check(&format!("v1={SIG_TEST}")), Err(SignatureError::NoTimestamp));
        assert_eq!(check(&format!("t=abc,v1={SIG_TEST}")), Err(SignatureError::NoTimestamp));
        assert_eq!(check(&format!("t=,v1={SIG_TEST}")), Err(SignatureError::NoTimestamp));
        assert_eq!(check(&format!("t={T}")), Err(SignatureError::NoV1Signature));
        assert_eq!(check(&format!("t={T},v1=zz{}", &SIG_TEST[2..])), Err(SignatureError::NoV1Signature));
        assert_eq!(check(&format!("t={T},v1={}", &SIG_TEST[..63])), Err(SignatureError::NoV1Signature));
        assert_eq!(check(&format!("t={T},v1")), Err(SignatureError::NoV1Signature));
        assert_eq!(check(&format!("t={T},v1={SIG_TEST}{}", ",x".repeat(5000))), Err(SignatureError::TooLong));
        assert_eq!(check(&format!("t=99999999999999999999999,v1={SIG_TEST}")), Err(SignatureError::NoTimestamp));
        assert_eq!(check(",,,=,=="), Err(SignatureError::NoTimestamp));
        // upper-case hex still decodes (hex is case-insensitive)
        assert_eq!(check(&format!("t={T},v1={}", SIG_TEST.to_uppercase())), Ok(T));
        // spaces around pairs, as some proxies fold headers
        assert_eq!(check(&format!("t={T}, v1={SIG_TEST}")), Ok(T));
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let sig = sign_v1(BODY.as_bytes(), "whsec_test_secret", i64::MIN);
        let h = format!("t={},v1={sig}", i64::MIN);
        assert!(matches!(
            verify(BODY.as_bytes(), &h, &["whsec_test_secret"], 300, i64::MAX),
            Err(SignatureError::TooOld { .. })
        ));
        let sig = sign_v1(BODY.as_bytes(), "whsec_test_secret", i64::MAX);
        let h = format!("t={},v1={sig}", i64::MAX);
        assert!(matches!(
            verify(BODY.as_bytes(), &h, &["whsec_test_secret"], 300, i64::MIN + 1),
            Err(SignatureError::InFuture { .. })
        ));
    }

    #[test]
    fn error_messages_never_contain_the_secret() {
        let header = format!("t={T},v1={SIG_TEST}");
        let err = verify(BODY.as_bytes(), &header, &["whsec_supersecret"], 300, T).unwrap_err();
        assert!(!err.to_string().contains("supersecret"));
        assert!(!format!("{err:?}").contains("supersecret"));
    }

    /// A deterministic fuzz of the parser and verifier over random and mutated headers:
    /// no input panics. (`fuzz/` holds the coverage-guided libFuzzer target of the same body.)
    #[test]
    fn random_headers_never_panic() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let alphabet: Vec<char> = "t=v1,0a9f- \u{e9}\u{0}x\u{1F600}".chars().collect();
        let seed = format!("t={T},v1={SIG_TEST}");
        for i in 0..20_000 {
            let len = (next() % 120) as usize;
            let mut s: String = if i % 2 == 0 {
                (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect()
            } else {
                seed.clone()
            };
            if i % 2 == 1 && !s.is_empty() {
                let pos = (next() as usize) % s.len();
                if s.is_char_boundary(pos) {
                    s.insert(pos, alphabet[(next() % alphabet.len() as u64) as usize]);
                }
            }
            let _ = parse_header(&s);
            let _ = verify(BODY.as_bytes(), &s, &["whsec_test_secret"], 300, T);
        }
    }
}
