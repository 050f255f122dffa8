//! Nothing grows forever, and nothing acknowledged is lost by a dump: applied
//! inbox events are deleted after `stripe_sync.inbox_retention`, tombstones after
//! 35 days, pending and failed events are kept; `pg_dump` / `pg_restore` carries
//! the inbox (acknowledged but unapplied events) and the sync state.

use e2e::{Cluster, ClusterConfig, Faults, PG_BIN, SeedSpec, TEST_KEY, add_source, start_fake};
use std::process::Command;
use stripe_core::signature;

const SECRET: &str = "whsec_retention_0123456789abcdef";

fn store(c: &mut postgres::Client, id: &str, customer: &str) {
    let body = serde_json::json!({
        "id": id, "object": "event", "type": "customer.updated", "created": signature::unix_now(),
        "api_version": "2026-06-24.dahlia",
        "data": {"object": {"id": customer, "object": "customer", "created": 1_700_000_000, "name": id}},
    })
    .to_string();
    let sig = signature::header_for(body.as_bytes(), SECRET, signature::unix_now());
    let said: String = c.query_one("SELECT stripe_sync.receive_webhook($1, $2)", &[&body, &sig]).unwrap().get(0);
    assert_eq!(said, "stored");
}

fn count(c: &mut postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn applied_events_and_old_tombstones_are_pruned_and_pending_ones_kept() {
    // no webhook worker: apply_inbox applies and prunes
    let cluster = Cluster::start(ClusterConfig { preload: vec![], settings: vec![] });
    let mut c = cluster.connect_with_extension();
    let fake = start_fake(Some(SeedSpec::scaled(5)), Faults::default());
    add_source(&mut c, &fake, "default", TEST_KEY);
    c.batch_execute(&format!("SELECT stripe_sync.set_webhook_secret('{SECRET}')")).unwrap();
    for i in 0..10 {
        store(&mut c, &format!("evt_old_{i}"), &format!("cus_r{i}"));
    }
    assert_eq!(count(&mut c, "SELECT stripe_sync.apply_inbox()"), 10);
    // applied 8 days ago, beyond the default retention of 7 days
    c.batch_execute(
        "UPDATE stripe_sync._inbox SET applied_at = now() - interval '8 days' WHERE event_id LIKE 'evt_old_%'",
    )
    .unwrap();
    for i in 0..3 {
        store(&mut c, &format!("evt_new_{i}"), &format!("cus_n{i}"));
    }
    assert_eq!(count(&mut c, "SELECT stripe_sync.apply_inbox(2)"), 2, "two applied now, one left pending");
    c.batch_execute(
        "INSERT INTO stripe_sync._deleted VALUES ('default', 'customer', 'cus_gone_long_ago', extract(epoch FROM now())::bigint - 36 * 86400),
                                                 ('default', 'customer', 'cus_gone_lately', extract(epoch FROM now())::bigint - 29 * 86400)",
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT stripe_sync.apply_inbox()"), 1);
    let left: Vec<String> =
        c.query("SELECT event_id FROM stripe_sync._inbox ORDER BY 1", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(left, ["evt_new_0", "evt_new_1", "evt_new_2"], "events applied 8 days ago are gone, recent ones kept");
    let tombs: Vec<String> = c
        .query("SELECT id FROM stripe_sync._deleted WHERE id LIKE 'cus_gone%' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tombs, ["cus_gone_lately"], "a tombstone older than 35 days is gone");
    // the retention is a setting
    c.batch_execute("ALTER SYSTEM SET stripe_sync.inbox_retention = '1min'").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let mut c = cluster.connect();
    c.batch_execute("UPDATE stripe_sync._inbox SET applied_at = now() - interval '2 minutes'").unwrap();
    store(&mut c, "evt_pending", "cus_p");
    c.batch_execute(
        "UPDATE stripe_sync._inbox SET received_at = now() - interval '30 days' WHERE event_id = 'evt_pending'",
    )
    .unwrap();
    c.batch_execute("SELECT stripe_sync.apply_inbox(0)").unwrap();
    let left: Vec<(String, String)> = c
        .query("SELECT event_id, status FROM stripe_sync._inbox ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(left, [("evt_pending".to_string(), "pending".to_string())], "a pending event is never pruned");
    println!("retention: applied events pruned after the setting, pending ones and recent tombstones kept");
}

#[test]
fn a_dump_and_restore_keeps_acknowledged_events_cursors_and_data() {
    let cluster = Cluster::start(ClusterConfig { preload: vec![], settings: vec![] });
    let mut c = cluster.connect_with_extension();
    let fake = start_fake(Some(SeedSpec::scaled(10)), Faults::default());
    add_source(&mut c, &fake, "default", TEST_KEY);
    c.batch_execute("SELECT * FROM stripe_sync.refresh('all', 'full')").unwrap();
    c.batch_execute(&format!("SELECT stripe_sync.set_webhook_secret('{SECRET}')")).unwrap();
    store(&mut c, "evt_applied", "cus_a");
    c.batch_execute("SELECT stripe_sync.apply_inbox()").unwrap();
    store(&mut c, "evt_acknowledged", "cus_b");
    let snapshot = |c: &mut postgres::Client| -> Vec<String> {
        let mut v: Vec<String> = c
            .query(
                "SELECT format('%s %s %s', event_id, status, md5(payload::text)) FROM stripe_sync._inbox
                 UNION ALL SELECT format('%s %s %s %s', resource, status, events_cursor_id, incremental_cursor) FROM stripe_sync._sync_state
                 UNION ALL SELECT format('%s %s %s', name, schema_name, api_url) FROM stripe_sync._sources
                 UNION ALL SELECT format('stats %s %s', received, applied) FROM stripe_sync._webhook_stats
                 UNION ALL SELECT format('customers %s %s', count(*), md5(string_agg(attrs::text, '' ORDER BY id))) FROM stripe.customer
                 UNION ALL SELECT format('invoices %s', count(*)) FROM stripe.invoice",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&mut c);
    let dump = cluster.dir.join("stripe.dump");
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{PG_BIN}/pg_dump"), "-Fc", "-h", "127.0.0.1", "-p"])
        .arg(cluster.port.to_string())
        .args(["-U", "postgres", "-f"])
        .arg(&dump)
        .arg("postgres")
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    c.batch_execute("CREATE DATABASE restored").unwrap();
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{PG_BIN}/pg_restore"), "-h", "127.0.0.1", "-p"])
        .arg(cluster.port.to_string())
        .args(["-U", "postgres", "-d", "restored"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_restore: {}", String::from_utf8_lossy(&out.stderr));
    let mut r = postgres::Client::connect(&cluster.connstr("restored"), postgres::NoTls).unwrap();
    let after = snapshot(&mut r);
    assert_eq!(after, before, "the restored database holds the same inbox, state and tables");
    // and it goes on: the acknowledged event is applied there
    assert_eq!(count(&mut r, "SELECT stripe_sync.apply_inbox()"), 1);
    println!(
        "dump and restore: {} inbox, state and table lines equal; the acknowledged event applied after restore",
        before.len()
    );
}
