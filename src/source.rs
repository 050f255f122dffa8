//! Sources: connected Stripe accounts. `stripe_sync.add_source` creates the
//! server, the user mapping holding the key, and the foreign tables;
//! `stripe_sync.drop_source` removes them. The key lives only in the user mapping
//! (for PUBLIC), which Postgres shows to superusers and the server owner only.

use crate::ddl::{self, ident, literal};
use crate::error::SyncError;
use crate::fdw::options::check_api_version;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, Spi};
use std::collections::HashMap;
use std::ffi::CStr;
use stripe_core::client::validate_base_url;
use stripe_core::{ApiKey, Client, ClientConfig, resources};

/// Name of the foreign server of a source.
pub fn server_name(source: &str) -> String {
    format!("{SERVER_PREFIX}{source}")
}

const SERVER_PREFIX: &str = "stripe_sync_";

/// The role that reads every source's tables (made by the extension script; see sql/finalize.sql).
pub const READER_ROLE: &str = "stripe_sync_reader";

/// The source whose server this is (the inverse of [`server_name`]).
pub fn source_of_server(server: &str) -> Option<&str> {
    server.strip_prefix(SERVER_PREFIX)
}

/// Options of a catalog `List` of `DefElem`s.
///
/// # Safety
/// `list` must be a valid options list (or null).
pub unsafe fn options_of(list: *mut pg_sys::List) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if list.is_null() {
        return out;
    }
    unsafe {
        for i in 0..(*list).length {
            let def = (*(*list).elements.add(i as usize)).ptr_value as *mut pg_sys::DefElem;
            let name = CStr::from_ptr((*def).defname).to_string_lossy().into_owned();
            let value = CStr::from_ptr(pg_sys::defGetString(def)).to_string_lossy().into_owned();
            out.insert(name, value);
        }
    }
    out
}

/// The API key for a server: the current user's (or PUBLIC's) user mapping first,
/// then the server's own `api_key` option.
fn api_key_for_server(server_oid: pg_sys::Oid, server_options: &HashMap<String, String>) -> Result<ApiKey, SyncError> {
    let mapped = unsafe {
        let exists = |user: pg_sys::Oid| {
            pg_sys::SearchSysCacheExists(
                pg_sys::SysCacheIdentifier::USERMAPPINGUSERSERVER as i32,
                pg_sys::Datum::from(user),
                pg_sys::Datum::from(server_oid),
                pg_sys::Datum::from(0),
                pg_sys::Datum::from(0),
            )
        };
        if exists(pg_sys::GetUserId()) || exists(pg_sys::InvalidOid) {
            let um = pg_sys::GetUserMapping(pg_sys::GetUserId(), server_oid);
            options_of((*um).options).remove("api_key")
        } else {
            None
        }
    };
    let key = mapped.or_else(|| server_options.get("api_key").cloned()).ok_or_else(|| {
        SyncError::new(PgSqlErrorCode::ERRCODE_FDW_OPTION_NAME_NOT_FOUND, "no Stripe API key for this server").hint(
            "CREATE USER MAPPING FOR PUBLIC SERVER ... OPTIONS (api_key 'sk_...'), or use stripe_sync.add_source.",
        )
    })?;
    ApiKey::new(&key).map_err(SyncError::from)
}

/// A client for a `stripe_sync_fdw` server.
pub fn client_for_server(server_oid: pg_sys::Oid, options: &HashMap<String, String>) -> Result<Client, SyncError> {
    let key = api_key_for_server(server_oid, options)?;
    let live = format!("{key:?}").contains("_live_");
    let mut cfg = ClientConfig::new(key);
    if let Some(u) = options.get("api_url") {
        cfg.base_url = u.clone();
    }
    if let Some(v) = options.get("api_version") {
        cfg.api_version = v.clone();
    }
    cfg.account = options.get(crate::fdw::options::ACCOUNT_OPTION).cloned();
    // Stripe allows about 100 requests/s in live mode and 25 in test mode
    cfg.max_requests_per_second = match options.get("max_requests_per_second") {
        Some(v) => v.parse().unwrap_or(20.0),
        None if live => 80.0,
        None => 20.0,
    };
    Client::new(cfg).map_err(SyncError::from)
}

/// Fails unless a source with this name exists.
pub fn require(name: &str) -> Result<(), SyncError> {
    crate::require_updated()?;
    if exists("SELECT EXISTS (SELECT FROM stripe_sync._sources WHERE name = $1)", name) {
        Ok(())
    } else {
        Err(SyncError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("source \"{name}\" does not exist"))
            .hint("Connect an account with stripe_sync.add_source(api_key); see stripe_sync.sources."))
    }
}

/// A client for a source, from its server's options and user mapping.
pub fn client_for_source(name: &str) -> Result<Client, SyncError> {
    let server = Spi::get_one_with_args::<String>(
        "SELECT server_name FROM stripe_sync._sources WHERE name = $1",
        &[name.into()],
    )
    .ok()
    .flatten()
    .ok_or_else(|| {
        SyncError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("source \"{name}\" does not exist"))
    })?;
    let cname = std::ffi::CString::new(server).map_err(|_| SyncError::invalid("bad server name"))?;
    let (oid, options) = unsafe {
        let srv = pg_sys::GetForeignServerByName(cname.as_ptr(), false);
        ((*srv).serverid, options_of((*srv).options))
    };
    client_for_server(oid, &options)
}

/// Whether a source covers its connected accounts (`connected_accounts => true`).
pub fn is_connect(name: &str) -> Result<bool, SyncError> {
    Spi::get_one_with_args::<bool>(
        "SELECT connected_accounts FROM stripe_sync._sources WHERE name = $1",
        &[name.into()],
    )
    .map(|v| v.unwrap_or(false))
    .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))
}

/// The id of the account a source's key acts as, as far as it is known
/// (`_sources.account_id`): the `account` option of a source made with
/// `account =>`, else what [`own_account`] learned.
pub fn known_account_id(name: &str) -> Result<Option<String>, SyncError> {
    Spi::get_one_with_args::<String>("SELECT account_id FROM stripe_sync._sources WHERE name = $1", &[name.into()])
        .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))
}

/// The id a source's own rows carry in their `account` column, learned once
/// with `GET /v1/account` (one request) and kept. Rows written before it was
/// known (by 0.4.0, before `ALTER EXTENSION ... UPDATE`) carry `''`, and get it
/// here, in the caller's transaction. `check` ends the wait for Stripe early.
pub fn own_account(name: &str, client: &Client, check: impl FnMut() -> bool) -> Result<String, SyncError> {
    if let Some(id) = known_account_id(name)? {
        return Ok(id);
    }
    let client = client.clone();
    let id = crate::threads::block_on(async move { stripe_core::sync::own_account(&client).await }, check)??;
    learn_account_id(name, &id)?;
    Ok(id)
}

/// Records a source's own account id and sets it on the rows written before.
pub fn learn_account_id(name: &str, id: &str) -> Result<(), SyncError> {
    let err = |e: pgrx::spi::Error| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string());
    let updated = Spi::get_one_with_args::<bool>(
        "UPDATE stripe_sync._sources SET account_id = $2 WHERE name = $1 AND account_id IS NULL RETURNING true",
        &[name.into(), id.into()],
    )
    .map_err(err)?;
    if updated != Some(true) {
        return Ok(());
    }
    for r in resources::RESOURCES {
        let (schema, table) = crate::apply::table_of(name, r)?;
        if Spi::get_one_with_args::<bool>(
            "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
            &[schema.as_str().into(), table.as_str().into()],
        )
        .map_err(err)?
            == Some(true)
        {
            Spi::run_with_args(
                &format!("UPDATE {}.{} SET account = $1 WHERE account = ''", ident(&schema), ident(&table)),
                &[id.into()],
            )
            .map_err(err)?;
        }
    }
    Ok(())
}

fn check_name(what: &str, v: &str, allow_empty: bool) -> Result<(), SyncError> {
    let ok = (allow_empty || !v.is_empty())
        && v.len() <= 40
        && v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !v.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(SyncError::invalid(format!("invalid {what} \"{v}\"")).hint(format!(
            "A {what} is up to 40 lower-case letters, digits and underscores, not starting with a digit."
        )))
    }
}

fn exists(sql: &str, arg: &str) -> bool {
    Spi::get_one_with_args::<bool>(sql, &[arg.into()]).ok().flatten().unwrap_or(false)
}

/// The relations a source with this schema and prefix creates: (schema, name),
/// for the foreign tables in `<schema>_api` and the materialized tables and
/// their indexes in `<schema>`.
fn relations_of(schema: &str, prefix: &str) -> Vec<(String, String)> {
    let api_schema = format!("{schema}_api");
    let mut out = Vec::new();
    for r in resources::RESOURCES {
        let table = ddl::table_name(prefix, r);
        out.push((api_schema.clone(), table.clone()));
        out.extend(ddl::index_names(r, &table).into_iter().map(|i| (schema.to_string(), i)));
        out.push((schema.to_string(), table));
    }
    out
}

/// Refuses a schema and prefix whose tables would be another source's, or tables
/// stripe_sync did not create for this source (a user's own `stripe.customer`,
/// or tables kept by drop_source): a source only ever writes its own tables.
fn check_tables_free(schema: &str, prefix: &str) -> Result<(), SyncError> {
    let mine = relations_of(schema, prefix);
    let others = Spi::connect(|c| {
        c.select("SELECT name, schema_name, table_prefix FROM stripe_sync._sources ORDER BY name", None, &[])?
            .map(|row| Ok((row.get::<String>(1)?, row.get::<String>(2)?, row.get::<String>(3)?)))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))?;
    for (other, o_schema, o_prefix) in others.into_iter().filter_map(|(n, s, p)| Some((n?, s?, p.unwrap_or_default())))
    {
        let theirs = relations_of(&o_schema, &o_prefix);
        if let Some((s, t)) = mine.iter().find(|m| theirs.contains(m)) {
            return Err(SyncError::new(
                PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!("\"{s}\".\"{t}\" belongs to source \"{other}\": two sources cannot share tables"),
            )
            .hint("Give this source its own tables: pass schema => 'another_schema' or table_prefix => 'another_prefix_'."));
        }
    }
    // the first of them that exists already, in one query
    let (schemas, names): (Vec<String>, Vec<String>) = mine.into_iter().unzip();
    let taken = Spi::get_two_with_args::<String, String>(
        "SELECT x.s, x.t FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(s, t, i)
           JOIN pg_namespace n ON n.nspname = x.s
           JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = x.t
          ORDER BY x.i LIMIT 1",
        &[schemas.into(), names.into()],
    );
    match taken {
        Ok((Some(s), Some(t))) => {
            return Err(SyncError::new(
                PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
                format!("relation \"{s}\".\"{t}\" already exists and is not a table of a stripe_sync source: stripe_sync does not adopt tables it did not create"),
            )
            .hint("Pass schema => or table_prefix => to put this source's tables elsewhere, or move that relation out of the way (tables kept by drop_source go with DROP TABLE, or drop_source(name, drop_tables => true))."));
        }
        Ok(_) | Err(pgrx::spi::Error::InvalidPosition) => {}
        Err(e) => return Err(SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string())),
    }
    Ok(())
}

/// Creates a schema unless it exists (without IF NOT EXISTS, which would NOTICE).
fn create_schema(schema: &str) -> Result<(), SyncError> {
    if !exists("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", schema) {
        Spi::run(&format!("CREATE SCHEMA {}", ident(schema)))
            .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))?;
    }
    Ok(())
}

/// Connects a Stripe account: creates server `stripe_sync_<name>`, a user mapping
/// for PUBLIC with the key, schema `<schema>_api` with the 15 foreign tables
/// (`<table_prefix><resource>`), and records the source.
#[allow(clippy::too_many_arguments)]
#[pg_extern]
fn add_source(
    api_key: &str,
    name: default!(&str, "'default'"),
    schema: default!(&str, "'stripe'"),
    table_prefix: default!(&str, "''"),
    account: default!(Option<&str>, "NULL"),
    api_url: default!(&str, "'https://api.stripe.com'"),
    api_version: default!(Option<&str>, "NULL"),
    max_requests_per_second: default!(Option<f64>, "NULL"),
    connected_accounts: default!(bool, "false"),
) -> String {
    let opts = Options { account, api_url, api_version, rps: max_requests_per_second, connected_accounts };
    add(api_key, name, schema, table_prefix, opts).unwrap_or_else(|e| e.raise())
}

/// The options of `add_source` after the key, the name and the tables.
struct Options<'a> {
    account: Option<&'a str>,
    api_url: &'a str,
    api_version: Option<&'a str>,
    rps: Option<f64>,
    connected_accounts: bool,
}

fn add(api_key: &str, name: &str, schema: &str, prefix: &str, o: Options) -> Result<String, SyncError> {
    let Options { account, api_url, api_version, rps, connected_accounts } = o;
    crate::require_updated()?;
    // validate everything before changing anything
    ApiKey::new(api_key)
        .map_err(|e| SyncError::from(e).hint("Use a secret key (sk_...) or a restricted key (rk_...)."))?;
    check_name("source name", name, false)?;
    check_name("schema", schema, false)?;
    if schema.starts_with("pg_") {
        return Err(SyncError::invalid(format!(
            "invalid schema \"{schema}\": names starting with pg_ are Postgres' own"
        ))
        .hint("Choose another schema, for example the default, stripe."));
    }
    check_name("table prefix", prefix, true)?;
    let base = validate_base_url(api_url).map_err(SyncError::from)?;
    if let Some(a) = account {
        crate::fdw::options::check(crate::fdw::options::Target::Server, crate::fdw::options::ACCOUNT_OPTION, a)?;
        if connected_accounts {
            return Err(SyncError::invalid("a source cannot have both account and connected_accounts => true").hint(
                "connected_accounts => true covers the platform and all its connected accounts: leave account NULL.",
            ));
        }
    }
    if let Some(v) = api_version {
        check_api_version(v).map_err(|e| {
            SyncError::invalid(e).hint(format!(
                "Leave api_version NULL to use the version stripe_sync is built for ({}), or give a version Stripe's changelog names.",
                stripe_core::client::API_VERSION
            ))
        })?;
    }
    if let Some(r) = rps {
        crate::fdw::options::check(crate::fdw::options::Target::Server, "max_requests_per_second", &r.to_string())?;
    }
    if exists("SELECT EXISTS (SELECT FROM stripe_sync._sources WHERE name = $1)", name) {
        return Err(SyncError::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("source \"{name}\" already exists"),
        )
        .hint("Choose another name, or remove it first with stripe_sync.drop_source."));
    }
    let server = server_name(name);
    if exists("SELECT EXISTS (SELECT FROM pg_foreign_server WHERE srvname = $1)", &server) {
        return Err(SyncError::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("server \"{server}\" already exists"),
        )
        .hint("Drop that server, or choose another source name."));
    }
    check_tables_free(schema, prefix)?;
    let api_schema = format!("{schema}_api");
    let mut opts = vec![format!("api_url {}", literal(&base))];
    if let Some(v) = api_version {
        opts.push(format!("api_version {}", literal(v)));
    }
    if let Some(a) = account {
        opts.push(format!("account {}", literal(a)));
    }
    if let Some(r) = rps {
        opts.push(format!("max_requests_per_second {}", literal(&r.to_string())));
    }
    let run =
        |sql: &str| Spi::run(sql).map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
    run(&format!(
        "CREATE SERVER {} FOREIGN DATA WRAPPER stripe_sync_fdw OPTIONS ({})",
        ident(&server),
        opts.join(", ")
    ))?;
    run(&format!(
        "COMMENT ON SERVER {} IS {}",
        ident(&server),
        literal(&format!("Stripe account of stripe_sync source \"{name}\"."))
    ))?;
    run(&format!(
        "CREATE USER MAPPING FOR PUBLIC SERVER {} OPTIONS (api_key {})",
        ident(&server),
        literal(api_key.trim())
    ))?;
    create_schema(&api_schema)?;
    run(&format!(
        "IMPORT FOREIGN SCHEMA stripe FROM SERVER {} INTO {} OPTIONS (table_prefix {})",
        ident(&server),
        ident(&api_schema),
        literal(prefix)
    ))?;
    for r in resources::RESOURCES {
        let table = ddl::table_name(prefix, r);
        for c in ddl::foreign_table_comments(r, &api_schema, &table) {
            run(&c)?;
        }
    }
    // the materialized tables: ordinary tables (not extension members), kept by drop_source
    create_schema(schema)?;
    for r in resources::RESOURCES {
        for stmt in ddl::materialized_table(r, schema, &ddl::table_name(prefix, r)) {
            run(&stmt)?;
        }
    }
    // readers (and admins, its members) read both kinds of tables; the key stays in the mapping
    run(&format!("GRANT USAGE ON SCHEMA {}, {} TO {READER_ROLE}", ident(schema), ident(&api_schema)))?;
    let tables: Vec<String> = resources::RESOURCES
        .iter()
        .flat_map(|r| {
            let t = ident(&ddl::table_name(prefix, r));
            [format!("{}.{t}", ident(schema)), format!("{}.{t}", ident(&api_schema))]
        })
        .collect();
    run(&format!("GRANT SELECT ON {} TO {READER_ROLE}", tables.join(", ")))?;
    Spi::run_with_args(
        "INSERT INTO stripe_sync._sources (name, server_name, schema_name, table_prefix, account, api_url, api_version,
                                           connected_accounts, account_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $5)",
        &[
            name.into(),
            server.as_str().into(),
            schema.into(),
            prefix.into(),
            account.into(),
            base.as_str().into(),
            api_version.into(),
            connected_accounts.into(),
        ],
    )
    .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))?;
    Ok(name.to_string())
}

/// Removes a source: its server, user mapping, foreign tables, sync state,
/// tombstones, webhook endpoint, inbox and counters. The materialized tables are
/// kept (they are your data) unless `drop_tables`.
#[pg_extern]
fn drop_source(name: &str, drop_tables: default!(bool, "false")) -> bool {
    drop(name, drop_tables).unwrap_or_else(|e| e.raise())
}

fn drop(name: &str, drop_tables: bool) -> Result<bool, SyncError> {
    let row = Spi::get_three_with_args::<String, String, String>(
        "SELECT server_name, schema_name, table_prefix FROM stripe_sync._sources WHERE name = $1",
        &[name.into()],
    );
    let (Some(server), Some(schema), prefix) = row.unwrap_or((None, None, None)) else {
        let known: Vec<String> = Spi::get_one::<Vec<String>>(
            "SELECT coalesce(array_agg(name ORDER BY name), '{}') FROM stripe_sync._sources",
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        return Err(SyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("source \"{name}\" does not exist"),
        )
        .hint(if known.is_empty() {
            "There are no sources; see stripe_sync.sources.".to_string()
        } else {
            format!("Existing sources: {}.", known.join(", "))
        }));
    };
    // nothing left behind at Stripe: the endpoint stripe_sync created goes first
    crate::webhooks::delete(name)?;
    let run =
        |sql: &str| Spi::run(sql).map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
    // the cascade's list of foreign tables is noise: say what was removed once, below
    let level = Spi::get_one::<String>("SELECT current_setting('client_min_messages')").ok().flatten();
    run("SELECT set_config('client_min_messages', 'warning', true)")?;
    run(&format!("DROP SERVER IF EXISTS {} CASCADE", ident(&server)))?;
    if let Some(level) = level {
        Spi::run_with_args("SELECT set_config('client_min_messages', $1, true)", &[level.as_str().into()])
            .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))?;
    }
    let api_schema = format!("{schema}_api");
    let empty = Spi::get_one_with_args::<bool>(
        "SELECT NOT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1)",
        &[api_schema.as_str().into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if empty {
        run(&format!("DROP SCHEMA IF EXISTS {}", ident(&api_schema)))?;
    }
    // everything stored under the source's name (sync state and webhooks go by cascade)
    for table in ["_sources", "_deleted", "_inbox", "_webhook_stats"] {
        let key = if table == "_sources" { "name" } else { "source" };
        Spi::run_with_args(&format!("DELETE FROM stripe_sync.{table} WHERE {key} = $1"), &[name.into()])
            .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))?;
    }
    if drop_tables {
        let prefix = prefix.unwrap_or_default();
        for r in resources::RESOURCES {
            run(&format!("DROP TABLE IF EXISTS {}.{}", ident(&schema), ident(&ddl::table_name(&prefix, r))))?;
        }
        pgrx::notice!("source \"{name}\" removed with its materialized tables in schema \"{schema}\"");
    } else {
        pgrx::notice!(
            "source \"{name}\" removed; its materialized tables in schema \"{schema}\" are kept (drop them yourself, or call drop_source(name, drop_tables => true), if you no longer need the data)"
        );
    }
    Ok(true)
}

/// Connect: removes a connected account's rows from every materialized table of
/// a source, with its sync state and tombstones, and skips its events still
/// waiting in the inbox. Meant for an account that revoked the platform's
/// access; one still connected comes back with the next refresh (a NOTICE says
/// so). The platform's own list of accounts (`account`) is left as Stripe has
/// it. Returns the rows removed.
#[pg_extern]
fn forget_account(account: &str, source: default!(&str, "'default'")) -> i64 {
    forget(account, source).unwrap_or_else(|e| e.raise())
}

fn forget(account: &str, source: &str) -> Result<i64, SyncError> {
    require(source)?;
    let spi = |e: pgrx::spi::Error| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string());
    if !stripe_core::client::valid_account_id(account) {
        return Err(SyncError::invalid(format!("\"{account}\" is not a Stripe account id"))
            .hint("Name a connected account as acct_..., as stripe_sync.sync_status and the account column show it."));
    }
    if !is_connect(source)? {
        return Err(SyncError::invalid(format!(
            "source \"{source}\" covers one account and has no connected accounts"
        ))
        .hint("A source's rows go with stripe_sync.drop_source(name, drop_tables => true)."));
    }
    if known_account_id(source)?.as_deref() == Some(account) {
        return Err(SyncError::invalid(format!("{account} is the platform's own account of source \"{source}\""))
            .hint("forget_account removes a connected account's rows; the platform's go with stripe_sync.drop_source(name, drop_tables => true)."));
    }
    let (schema, prefix) = Spi::get_two_with_args::<String, String>(
        "SELECT schema_name, table_prefix FROM stripe_sync._sources WHERE name = $1",
        &[source.into()],
    )
    .map_err(spi)?;
    let (schema, prefix) = (schema.unwrap_or_default(), prefix.unwrap_or_default());
    Spi::connect_mut(|c| {
        // the source's writers (refreshes, the webhook worker) wait meanwhile
        crate::apply::take_turn(c, source)?;
        let revoked = c
            .select(
                "SELECT EXISTS (SELECT FROM stripe_sync._sync_state WHERE source = $1 AND account = $2 AND status = 'revoked')",
                None,
                &[source.into(), account.into()],
            )
            .map_err(spi)?
            .first()
            .get_one::<bool>()
            .map_err(spi)?
            .unwrap_or(false);
        let mut removed = 0i64;
        for r in resources::RESOURCES.iter().filter(|r| r.name != resources::CONNECTED_ACCOUNTS) {
            let table = format!("{}.{}", ident(&schema), ident(&ddl::table_name(&prefix, r)));
            let n = c
                .update(
                    &format!("WITH d AS (DELETE FROM {table} WHERE account = $1 RETURNING 1) SELECT count(*) FROM d"),
                    None,
                    &[account.into()],
                )
                .map_err(spi)?
                .first()
                .get_one::<i64>()
                .map_err(spi)?
                .unwrap_or(0);
            removed += n;
        }
        for sql in [
            "DELETE FROM stripe_sync._sync_state WHERE source = $1 AND account = $2",
            "DELETE FROM stripe_sync._deleted WHERE source = $1 AND account = $2",
            "UPDATE stripe_sync._inbox SET status = 'skipped', applied_at = clock_timestamp(),
                    error = concat_ws('; ', error, 'its account was forgotten (forget_account)')
             WHERE source = $1 AND payload->>'account' = $2 AND status IN ('pending', 'failed')",
        ] {
            c.update(sql, None, &[source.into(), account.into()]).map_err(spi)?;
        }
        if !revoked {
            pgrx::notice!(
                "{account} has not revoked access as far as source \"{source}\" knows: if it is still connected, the next refresh brings its rows back"
            );
        }
        pgrx::notice!("{removed} rows of {account} removed from the tables of source \"{source}\"");
        Ok(removed)
    })
}
