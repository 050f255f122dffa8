//! Settings (GUCs). Read them on the backend's or worker's main thread only.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// `host:port` the webhook worker listens on; empty = off.
pub static WEBHOOK_LISTEN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"127.0.0.1:8787"));
/// Database the webhook worker connects to.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Largest webhook body accepted, in bytes.
pub static WEBHOOK_MAX_BODY: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
/// Most concurrent API requests one refresh or scan makes.
pub static MAX_PARALLEL_REQUESTS: GucSetting<i32> = GucSetting::<i32>::new(32);

/// Registers every setting. `preloading` is true while loading from
/// shared_preload_libraries: only then can postmaster-level settings (the
/// worker's database) be defined.
pub fn init(preloading: bool) {
    GucRegistry::define_string_guc(
        c"stripe_sync.webhook_listen",
        c"host:port the stripe_sync webhook worker listens on (empty = off).",
        c"Stripe POSTs events to http://<host:port>/webhook/<source>. Binds loopback by default; put a TLS proxy in front for the Internet.",
        &WEBHOOK_LISTEN,
        GucContext::Sighup,
        GucFlags::default(),
    );
    if preloading {
        GucRegistry::define_string_guc(
            c"stripe_sync.database",
            c"Database the stripe_sync webhook worker connects to.",
            c"The database where CREATE EXTENSION stripe_sync was run.",
            &DATABASE,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"stripe_sync.webhook_max_body",
        c"Largest webhook request body accepted, in bytes (413 beyond).",
        c"Stripe events are a few kB; the default is 1 MB.",
        &WEBHOOK_MAX_BODY,
        1024,
        64 * 1024 * 1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"stripe_sync.max_parallel_requests",
        c"Most concurrent Stripe API requests one refresh or scan makes.",
        c"The source's max_requests_per_second still applies on top of this.",
        &MAX_PARALLEL_REQUESTS,
        1,
        256,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// A string setting's current value.
pub fn string(setting: &GucSetting<Option<CString>>) -> String {
    setting.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}
