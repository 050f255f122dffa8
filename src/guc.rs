//! Settings (GUCs). Read them on the backend's or worker's main thread only.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// `host:port` the webhook worker listens on; empty = off.
pub static WEBHOOK_LISTEN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"127.0.0.1:8787"));
/// Database the webhook worker connects to.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Largest webhook body accepted, in bytes.
pub static WEBHOOK_MAX_BODY: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
/// Webhook connections the worker serves at once.
pub static WEBHOOK_MAX_CONNECTIONS: GucSetting<i32> = GucSetting::<i32>::new(256);
/// Seconds a webhook request's body may take to arrive.
pub static WEBHOOK_BODY_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(10);
/// How long applied and skipped webhook events stay in the inbox, in seconds.
pub static INBOX_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(7 * 86_400);
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
        c"stripe_sync.webhook_max_connections",
        c"Webhook connections the stripe_sync worker serves at once (more wait to be accepted).",
        c"Stripe keeps a few connections open; the cap keeps slow or idle clients from tying up the worker.",
        &WEBHOOK_MAX_CONNECTIONS,
        1,
        10_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"stripe_sync.webhook_body_timeout",
        c"Seconds a webhook request's body may take to arrive (408 beyond).",
        c"Headers have 10 s; a client that stops sending frees its connection after this.",
        &WEBHOOK_BODY_TIMEOUT,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"stripe_sync.inbox_retention",
        c"How long applied and skipped webhook events stay in stripe_sync._inbox.",
        c"The webhook worker (and apply_inbox) deletes them after this; pending and failed events are kept until dealt with.",
        &INBOX_RETENTION,
        60,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
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
