//! `ALTER EXTENSION stripe_sync UPDATE` from the released 0.1.0: a database that
//! ran 0.1.0 (a source, full and events refreshes, webhook events applied and
//! pending) keeps its data, cursors and inbox, ends with the same objects as a
//! fresh install, and passes the golden SQL suite.
//!
//! It builds 0.1.0 from the commit it was released from and swaps the installed
//! library, so it must not run beside other tests: scripts/test runs it on its
//! own (`cargo test -p e2e --test upgrade -- --ignored`), before the others.

use e2e::{Cluster, ClusterConfig, Faults, PG_BIN, SeedSpec, TEST_KEY, add_source, call, compare, id, wait_for};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use stripe_core::{resources, signature};

/// The commit stripe_sync 0.1.0 was released from (sql/stripe_sync--0.1.0.sql is its install script).
const RELEASE_0_1_0: &str = "3eaf7810ced7f708d42317498b0c20f1f472e41d";
const SECRET: &str = "whsec_upgrade_by_hand_0123456789";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pg_config(arg: &str) -> PathBuf {
    PathBuf::from(run(Command::new(format!("{PG_BIN}/pg_config")).arg(arg), "pg_config").trim())
}

/// The installed files of the extension: library, control file, SQL scripts.
fn installed_files() -> Vec<PathBuf> {
    let mut files = vec![pg_config("--pkglibdir").join("stripe_sync.so")];
    let ext = pg_config("--sharedir").join("extension");
    for e in std::fs::read_dir(&ext).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("stripe_sync") {
            files.push(e.path());
        }
    }
    files
}

/// Builds and installs stripe_sync 0.1.0 from its release commit (its own target
/// dir, kept between runs); returns its generated install script.
fn install_0_1_0() -> String {
    let root = repo();
    let src = root.join("target/upgrade/stripe_sync-0.1.0");
    if !src.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&src).unwrap();
        let archive = root.join("target/upgrade/0.1.0.tar");
        run(
            Command::new("git").current_dir(&root).args(["archive", "-o"]).arg(&archive).arg(RELEASE_0_1_0),
            "git archive of the 0.1.0 release",
        );
        run(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&src), "tar");
    }
    let started = std::time::Instant::now();
    run(
        Command::new("cargo")
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", root.join("target/upgrade/target"))
            .args(["pgrx", "install", "-p", "stripe_sync", "--pg-config"])
            .arg(format!("{PG_BIN}/pg_config")),
        "cargo pgrx install of 0.1.0",
    );
    println!("built and installed stripe_sync 0.1.0 in {:.0} s", started.elapsed().as_secs_f64());
    std::fs::read_to_string(pg_config("--sharedir").join("extension/stripe_sync--0.1.0.sql")).unwrap()
}

fn signed_event(id: &str, typ: &str, object: &serde_json::Value) -> (String, String) {
    let body = serde_json::json!({
        "id": id, "object": "event", "type": typ, "created": signature::unix_now(),
        "api_version": "2026-06-24.dahlia", "data": {"object": object},
    })
    .to_string();
    let sig = signature::header_for(body.as_bytes(), SECRET, signature::unix_now());
    (body, sig)
}

/// What stays the same across the update: rows per table, cursors, the inbox.
fn state(c: &mut postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    for r in resources::RESOURCES {
        let n: i64 = c.query_one(&format!("SELECT count(*) FROM stripe.{}", r.name), &[]).unwrap().get(0);
        out.push(format!("{}: {n} rows", r.name));
    }
    for row in c
        .query(
            "SELECT resource, coalesce(events_cursor_id, '-'), coalesce(incremental_cursor, 0), status
             FROM stripe_sync._sync_state ORDER BY 1",
            &[],
        )
        .unwrap()
    {
        out.push(format!(
            "{}: events cursor {}, incremental cursor {}, {}",
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, i64>(2),
            row.get::<_, String>(3)
        ));
    }
    for row in c.query("SELECT event_id, type, payload::text FROM stripe_sync._inbox ORDER BY 1", &[]).unwrap() {
        out.push(format!("inbox {} {} {}", row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2)));
    }
    out
}

/// Every object of the extension, as the catalog describes it: definitions,
/// columns, indexes, comments, privileges, dumped tables.
const CATALOG: &str = r#"
SELECT d.description || coalesce(' = ' || CASE d.classid
         WHEN 'pg_proc'::regclass THEN (SELECT pg_get_functiondef(d.objid) || ' acl ' || coalesce(proacl::text, '-')
                                          || ' comment ' || coalesce(obj_description(d.objid, 'pg_proc'), '-')
                                        FROM pg_proc WHERE oid = d.objid)
         WHEN 'pg_class'::regclass THEN (SELECT relkind::text || ' acl ' || coalesce(relacl::text, '-')
                                           || ' comment ' || coalesce(obj_description(d.objid, 'pg_class'), '-')
                                           || coalesce(' view ' || pg_get_viewdef(d.objid), '')
                                           || ' columns ' || coalesce((SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod)
                                                 || CASE WHEN attnotnull THEN ' not null' ELSE '' END
                                                 || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
                                                 || ' comment ' || coalesce(col_description(d.objid, attnum), '-'), ', ' ORDER BY attnum)
                                               FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                                               WHERE attrelid = d.objid AND attnum > 0 AND NOT attisdropped), '')
                                           || ' indexes ' || coalesce((SELECT string_agg(pg_get_indexdef(indexrelid), '; ' ORDER BY 1)
                                               FROM pg_index WHERE indrelid = d.objid), '')
                                         FROM pg_class WHERE oid = d.objid)
         WHEN 'pg_namespace'::regclass THEN (SELECT coalesce(nspacl::text, '-') || ' ' || coalesce(obj_description(d.objid, 'pg_namespace'), '-')
                                             FROM pg_namespace WHERE oid = d.objid)
         ELSE '' END, '') AS line
FROM (SELECT classid, objid, pg_describe_object(classid, objid, objsubid) AS description
      FROM pg_depend WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
        AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'stripe_sync')) d
UNION ALL
SELECT 'extension ' || extversion || ' dumps ' || (SELECT string_agg(c::regclass::text, ', ' ORDER BY 1) FROM unnest(extconfig) c)
FROM pg_extension WHERE extname = 'stripe_sync'
UNION ALL
SELECT 'schema stripe_sync ' || coalesce(nspacl::text, '-') || ' ' || coalesce(obj_description(oid, 'pg_namespace'), '-')
FROM pg_namespace WHERE nspname = 'stripe_sync'
ORDER BY 1"#;

fn catalog(c: &mut postgres::Client) -> Vec<String> {
    c.query(CATALOG, &[]).unwrap().iter().map(|r| r.get(0)).collect()
}

#[test]
#[ignore = "swaps the installed library: scripts/test runs it on its own"]
fn an_update_from_0_1_0_keeps_data_cursors_and_inbox_and_matches_a_fresh_install() {
    // keep the current build's files, install 0.1.0 over them
    let keep = std::env::temp_dir().join(format!("stripe_sync_upgrade_{}", std::process::id()));
    std::fs::create_dir_all(&keep).unwrap();
    let current = installed_files();
    for f in &current {
        std::fs::copy(f, keep.join(f.file_name().unwrap())).unwrap();
    }
    let restore = || {
        for f in &current {
            std::fs::copy(keep.join(f.file_name().unwrap()), f).unwrap();
        }
    };
    let generated = std::panic::catch_unwind(install_0_1_0);
    let generated = match generated {
        Ok(g) => g,
        Err(e) => {
            restore();
            std::panic::resume_unwind(e)
        }
    };
    let result = std::panic::catch_unwind(|| upgrade_story(&generated, &restore));
    restore();
    let _ = std::fs::remove_dir_all(&keep);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn upgrade_story(generated_0_1_0: &str, restore: &dyn Fn()) {
    // the frozen script is exactly what 0.1.0 installs
    let frozen = std::fs::read_to_string(repo().join("sql/stripe_sync--0.1.0.sql")).unwrap();
    assert!(frozen == generated_0_1_0, "sql/stripe_sync--0.1.0.sql differs from what the 0.1.0 release installs");

    // 0.1.0 at work, without the webhook worker: events wait in the inbox
    let listen = e2e::free_port();
    let cluster = Cluster::start(ClusterConfig { preload: vec![], settings: vec![] });
    let mut c = cluster.connect();
    c.batch_execute("CREATE EXTENSION stripe_sync").unwrap();
    let v: String =
        c.query_one("SELECT extversion FROM pg_extension WHERE extname = 'stripe_sync'", &[]).unwrap().get(0);
    assert_eq!(v, "0.1.0");
    let fake = e2e::start_fake(Some(SeedSpec::scaled(20)), Faults::default());
    add_source(&mut c, &fake, "default", TEST_KEY);
    c.batch_execute("SELECT * FROM stripe_sync.refresh('all', 'full')").unwrap();
    c.batch_execute(&format!("SELECT stripe_sync.set_webhook_secret('{SECRET}')")).unwrap();
    let customers = fake.objects("customers");
    for (i, cus) in customers.iter().take(2).enumerate() {
        let changed = call(&fake, "POST", &format!("/v1/customers/{}", id(cus)), &format!("name=Upgraded{i}"));
        let (body, sig) = signed_event(&format!("evt_upgrade_{i}"), "customer.updated", &changed);
        let said: String = c.query_one("SELECT stripe_sync.receive_webhook($1, $2)", &[&body, &sig]).unwrap().get(0);
        assert_eq!(said, "stored");
        if i == 0 {
            let n: i64 = c.query_one("SELECT stripe_sync.apply_inbox(1)", &[]).unwrap().get(0);
            assert_eq!(n, 1, "0.1.0 applies the first event");
        }
    }
    let before = state(&mut c);
    let pending: i64 =
        c.query_one("SELECT count(*) FROM stripe_sync._inbox WHERE status = 'pending'", &[]).unwrap().get(0);
    assert_eq!(pending, 1, "one event waits for the worker");
    drop(c);

    // new binaries, the worker preloaded; the database still holds 0.1.0
    restore();
    let conf = cluster.data_dir().join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "shared_preload_libraries = 'stripe_sync'\nstripe_sync.webhook_listen = '127.0.0.1:{listen}'\n"
    ));
    std::fs::write(&conf, text).unwrap();
    cluster.restart_immediate();
    let mut c = cluster.connect();
    let err = c.query("SELECT * FROM stripe_sync.refresh('customer', 'events')", &[]).unwrap_err();
    let db = err.as_db_error().expect("an SQL error");
    assert_eq!(db.code().code(), "55000", "{db:?}");
    assert!(db.hint().unwrap_or_default().contains("ALTER EXTENSION stripe_sync UPDATE"), "{db:?}");
    println!("before the update, the new library says: {} (hint: {})", db.message(), db.hint().unwrap_or_default());
    wait_for(Duration::from_secs(10), "the worker saying it waits for the update", || {
        cluster.log().contains("waiting for ALTER EXTENSION stripe_sync UPDATE").then_some(())
    });
    let still: i64 =
        c.query_one("SELECT count(*) FROM stripe_sync._inbox WHERE status = 'pending'", &[]).unwrap().get(0);
    assert_eq!(still, 1);

    c.batch_execute("ALTER EXTENSION stripe_sync UPDATE").unwrap();
    let v: String =
        c.query_one("SELECT extversion FROM pg_extension WHERE extname = 'stripe_sync'", &[]).unwrap().get(0);
    let current: String = c
        .query_one("SELECT default_version FROM pg_available_extensions WHERE name = 'stripe_sync'", &[])
        .unwrap()
        .get(0);
    assert_eq!((v.as_str(), current.as_str()), ("0.6.0", "0.6.0"), "updated to the current version");
    // 0.4.0 added the Connect column to the foreign tables of sources made by 0.1.0,
    // after attrs, as add_source makes them now
    let last: Vec<(String, String)> = c
        .query(
            "SELECT c.table_name::text, c.column_name::text FROM information_schema.columns c
              WHERE c.table_schema = 'stripe_api'
                AND c.ordinal_position = (SELECT max(ordinal_position) FROM information_schema.columns m
                                           WHERE m.table_schema = c.table_schema AND m.table_name = c.table_name)
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(last.len(), 15, "{last:?}");
    assert!(last.iter().all(|(_, col)| col == "account"), "account is every foreign table's last column: {last:?}");
    let commented: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_attribute a JOIN pg_class t ON t.oid = a.attrelid
              JOIN pg_namespace n ON n.oid = t.relnamespace
             WHERE n.nspname = 'stripe_api' AND a.attname = 'account'
               AND col_description(t.oid, a.attnum) LIKE 'Connect: the account the row was read from.%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(commented, 15);
    assert_eq!(state(&mut c), before, "rows, cursors and inbox survive the update");
    // the worker goes on: the pending event is applied
    wait_for(Duration::from_secs(20), "the pending event applied after the update", || {
        let n: i64 =
            c.query_one("SELECT count(*) FROM stripe_sync._inbox WHERE status = 'pending'", &[]).unwrap().get(0);
        (n == 0).then_some(())
    });
    // 0.5.0 keyed every materialized table by (id, account); the worker learned
    // the source's account id (GET /v1/account) and set it on the rows 0.1.0 wrote
    let keys: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace
              WHERE n.nspname = 'stripe' AND i.indisprimary
                AND pg_get_indexdef(i.indexrelid) LIKE '%(id, account)'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(keys, 15, "every materialized table is keyed by (id, account)");
    let own: Option<String> = c.query_one("SELECT account_id FROM stripe_sync.sources", &[]).unwrap().get(0);
    assert_eq!(own.as_deref(), Some(stripe_fake::connect::PLATFORM_ID));
    for r in resources::RESOURCES {
        let unlabeled: i64 = c
            .query_one(&format!("SELECT count(*) FROM stripe.{} WHERE account <> $1", r.name), &[&own])
            .unwrap()
            .get(0);
        assert_eq!(unlabeled, 0, "stripe.{}: rows written by 0.1.0 carry the account id", r.name);
    }
    let row =
        c.query_one("SELECT name, _api_version FROM stripe.customer WHERE id = $1", &[&id(&customers[1])]).unwrap();
    let (name, version): (String, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(name, "Upgraded1");
    // 0.3.0 added the column to the tables of sources made by 0.1.0; a row written
    // after the update records the version it is rendered in
    assert_eq!(version.as_deref(), Some(stripe_core::API_VERSION), "the row's API version");
    // events refreshes go on from the kept cursors
    let (mode, requests): (String, i64) = {
        let r = c.query_one("SELECT mode, api_requests FROM stripe_sync.refresh('customer', 'events')", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(mode, "events");
    assert!(requests <= 3, "events refresh from the kept cursor made {requests} requests");
    c.batch_execute("SELECT * FROM stripe_sync.refresh('all', 'events')").unwrap();
    for r in resources::RESOURCES {
        let d = compare(&mut c, &fake, "stripe", r.name);
        assert!(d.is_empty(), "{} after the update: {}", r.name, d.summary());
    }

    // the same objects as a fresh install
    c.batch_execute("CREATE DATABASE fresh").unwrap();
    let mut f = postgres::Client::connect(&cluster.connstr("fresh"), postgres::NoTls).unwrap();
    f.batch_execute("CREATE EXTENSION stripe_sync").unwrap();
    let (upgraded, fresh) = (catalog(&mut c), catalog(&mut f));
    let only_upgraded: Vec<&String> = upgraded.iter().filter(|l| !fresh.contains(l)).collect();
    let only_fresh: Vec<&String> = fresh.iter().filter(|l| !upgraded.contains(l)).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "the updated extension differs from a fresh install:\nonly after the update: {only_upgraded:#?}\nonly fresh: {only_fresh:#?}"
    );
    println!("catalog of the updated extension equals a fresh install's: {} objects", upgraded.len());
    drop(f);

    // and the golden SQL suite passes on the updated database (its hints list the
    // sources, so the story's own source goes first)
    c.batch_execute("SELECT stripe_sync.drop_source('default', drop_tables => true)").unwrap();
    let out = Command::new(repo().join("scripts/installcheck"))
        .env("STRIPE_SYNC_REGRESS_PORT", cluster.port.to_string())
        .env("STRIPE_SYNC_REGRESS_DB", "postgres")
        .env("STRIPE_SYNC_SKIP_INSTALL", "1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!(
        "{}",
        text.lines().filter(|l| l.contains("installcheck") || l.contains(" ok ")).collect::<Vec<_>>().join("\n")
    );
    assert!(out.status.success(), "the golden suite on the updated database:\n{text}");
}
