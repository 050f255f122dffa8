//! Coverage-guided fuzzing of the Stripe-Signature parser and verifier:
//! `cargo fuzz run signature_header` (needs cargo-fuzz; on a stable toolchain set
//! RUSTC_BOOTSTRAP=1). The same body runs over random inputs in stripe_core's
//! unit tests (`random_headers_never_panic`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stripe_core::signature::{parse_header, verify};

fuzz_target!(|data: &[u8]| {
    // first byte splits the input into header and body
    let split = data.first().map(|b| *b as usize).unwrap_or(0).min(data.len().saturating_sub(1));
    let (header, body) = data.split_at(split.max(1).min(data.len()));
    if let Ok(h) = std::str::from_utf8(header) {
        let _ = parse_header(h);
        let _ = verify(body, h, &["whsec_fuzz"], 300, 1_700_000_000);
        let _ = verify(body, h, &["whsec_fuzz", "whsec_other"], 0, i64::MAX);
    }
});
