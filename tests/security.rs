//! Keys and webhook secrets stay secret; the listener binds loopback by default.

use e2e::{Cluster, ClusterConfig, Faults, SeedSpec, TEST_KEY, add_source, free_port, start_fake};
use stripe_core::signature;

const SECRET: &str = "whsec_securitytestsecret0000000000";

#[test]
fn a_reader_cannot_read_keys_or_webhook_secrets_and_the_log_has_none() {
    let port = free_port();
    let cluster = Cluster::start(ClusterConfig {
        settings: vec![("stripe_sync.webhook_listen".into(), format!("'127.0.0.1:{port}'"))],
        ..Default::default()
    });
    let mut c = cluster.connect_with_extension();
    let fake = start_fake(Some(SeedSpec::scaled(10)), Faults::default());
    add_source(&mut c, &fake, "default", TEST_KEY);
    c.query("SELECT * FROM stripe_sync.refresh('customer', 'full')", &[]).unwrap();
    c.execute("SELECT stripe_sync.set_webhook_secret($1)", &[&SECRET]).unwrap();
    c.batch_execute("CREATE ROLE analyst LOGIN IN ROLE stripe_sync_reader;").unwrap();

    // errors on purpose, with the key and secret around
    let _ = c.execute("SELECT stripe_sync.add_source($1, 'default', api_url => $2)", &[&TEST_KEY, &fake.url()]);
    let _ = c.execute("SELECT stripe_sync.set_webhook_secret('whsec_short')", &[]);
    let _ = c.execute("SELECT stripe_sync.receive_webhook('{}', $1)", &[&format!("t=1,v1={}", "00".repeat(32))]);
    fake.set_faults(Faults { bad_keys: vec![TEST_KEY.to_string()], ..Faults::default() });
    let _ = c.query("SELECT * FROM stripe_sync.refresh('customer', 'full')", &[]);
    let _ = c.query("SELECT count(*) FROM stripe_api.customer", &[]);
    let body = "{\"id\":\"evt_1\"}";
    let _ = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhook/default"))
        .header(
            "Stripe-Signature",
            signature::header_for(body.as_bytes(), "whsec_wrongwrongwrong", signature::unix_now()),
        )
        .body(body)
        .send();

    let mut r = cluster.connect_as("analyst");
    let n: i64 = r.query_one("SELECT count(*) FROM stripe.customer", &[]).unwrap().get(0);
    assert_eq!(n, 10);
    let key_part = &TEST_KEY[8..];
    let secret_part = &SECRET[6..];
    let mut seen = String::new();
    for sql in [
        "SELECT coalesce(umoptions::text, '') FROM pg_user_mappings",
        "SELECT coalesce(srvoptions::text, '') FROM pg_foreign_server",
        "SELECT row_to_json(s)::text FROM stripe_sync.sources s",
        "SELECT row_to_json(s)::text FROM stripe_sync.sync_status s",
        "SELECT string_agg(prosrc || coalesce(array_to_string(proconfig, ','), ''), '') FROM pg_proc WHERE pronamespace = 'stripe_sync'::regnamespace",
    ] {
        for row in r.query(sql, &[]).unwrap() {
            seen.push_str(&row.get::<_, Option<String>>(0).unwrap_or_default());
        }
    }
    assert!(!seen.contains(key_part) && !seen.contains(secret_part), "a reader sees a secret");
    for sql in [
        "SELECT * FROM pg_user_mapping",
        "SELECT * FROM stripe_sync._webhooks",
        "SELECT * FROM stripe_sync._inbox",
        "SELECT * FROM stripe_sync._sources",
        "SELECT stripe_sync.webhook_status()",
        "SELECT stripe_sync.create_webhook('https://example.com/x')",
        "SELECT stripe_sync.set_webhook_secret('whsec_mine000000000')",
    ] {
        let err = r.query(sql, &[]).unwrap_err();
        assert_eq!(err.code().unwrap().code(), "42501", "{sql}: {err:?}");
    }
    let log = cluster.log();
    assert!(log.contains("ERROR"), "the run produced errors");
    assert!(!log.contains(key_part), "the API key is in the server log");
    assert!(!log.contains(secret_part), "the webhook secret is in the server log");
}

#[test]
fn the_listener_binds_loopback_by_default() {
    let port = free_port();
    let cluster = Cluster::start(ClusterConfig {
        settings: vec![("stripe_sync.webhook_listen".into(), format!("'127.0.0.1:{port}'"))],
        ..Default::default()
    });
    let mut c = cluster.connect_with_extension();
    let default: String =
        c.query_one("SELECT boot_val FROM pg_settings WHERE name = 'stripe_sync.webhook_listen'", &[]).unwrap().get(0);
    assert!(default.starts_with("127.0.0.1:"), "{default}");
    e2e::wait_for(std::time::Duration::from_secs(20), "the listener", || {
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let local = format!("0100007F:{port:04X}");
        tcp.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(local.as_str()) && l.split_whitespace().nth(3) == Some("0A"))
            .then_some(())
    });
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let anywhere = format!("00000000:{port:04X}");
    assert!(!tcp.lines().any(|l| l.split_whitespace().nth(1) == Some(anywhere.as_str())), "listening on all addresses");
}
