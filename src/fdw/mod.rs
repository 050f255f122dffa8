//! The foreign data wrapper `stripe_sync_fdw` (supabase-wrappers), over stripe_core.
//!
//! A scan turns the quals into a [`stripe_core::plan::Plan`], starts an
//! [`ObjectStream`] on a thread of its own, and hands rows to Postgres as pages
//! arrive (bounded memory). Postgres rechecks every qual. LIMIT is only used as
//! the size of the first page when every extracted qual was pushed: the scan
//! never stops early on its own, so unpushed quals and joins stay correct.
//!
//! Connect: `account = 'acct_...'` and `account IN (...)` are sent as
//! `Stripe-Account`, one scan per account, one after another; each row's
//! `account` column is the account it was read from. Without an account
//! condition a scan reads the server's `account` option, or else the key's own
//! account, whose rows have a NULL `account`.

pub mod options;

use crate::error::SyncError;
use crate::{ddl, guc, source, threads};
use options::Target;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use stripe_core::listing::ObjectStream;
use stripe_core::plan::{self, Cond, Lit, Selection};
use stripe_core::resources::{self, Resource, value_at};
use supabase_wrappers::prelude::*;

/// Seconds between the Unix epoch and Postgres' epoch (2000-01-01).
const PG_EPOCH_UNIX: i64 = 946_684_800;

/// The FDW's state for one foreign table scan.
#[wrappers_fdw(
    version = "0.6.0",
    author = "stripe_sync",
    website = "https://github.com/stripe-sync/stripe_sync",
    error_type = "FdwError"
)]
pub struct StripeSyncFdw {
    server_oid: pg_sys::Oid,
    server_options: HashMap<String, String>,
    resource: Option<&'static Resource>,
    columns: Vec<Column>,
    selection: Option<(Selection, Option<u32>)>,
    stream: Option<ObjectStream>,
    /// The scan's requests start with its first row, not at begin: a nested
    /// loop's inner scan begins before its first outer row is known.
    start_pending: bool,
    /// One client per scan, so its counters cover every rescan (EXPLAIN ANALYZE).
    client: Option<stripe_core::Client>,
    /// The accounts this scan reads, in turn (`None`: the server's default).
    accounts: Vec<Option<String>>,
    /// How many of `accounts` have been started.
    accounts_started: usize,
    rows: u64,
    scans: u64,
}

/// Row estimate when the source has no analyzed materialized table.
const DEFAULT_ROWS: f64 = 1000.0;

/// Errors of the FDW, reported with their SQLSTATE.
#[derive(Debug)]
pub struct FdwError(pub SyncError);

impl From<SyncError> for FdwError {
    fn from(e: SyncError) -> FdwError {
        FdwError(e)
    }
}

impl From<stripe_core::StripeError> for FdwError {
    fn from(e: stripe_core::StripeError) -> FdwError {
        FdwError(e.into())
    }
}

impl From<FdwError> for ErrorReport {
    fn from(e: FdwError) -> ErrorReport {
        e.0.into()
    }
}

/// A timestamptz as unix seconds.
fn unix_of(t: pgrx::datum::TimestampWithTimeZone) -> f64 {
    let micros: i64 = t.into_inner();
    micros as f64 / 1e6 + PG_EPOCH_UNIX as f64
}

/// A date or timestamp as the instant Postgres compares it to a timestamptz
/// with (midnight, or the wall time, in the session's TimeZone).
fn as_timestamptz(value: pg_sys::Datum, func: unsafe fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum) -> Option<f64> {
    unsafe { pgrx::direct_function_call::<pgrx::datum::TimestampWithTimeZone>(func, &[Some(value)]) }.map(unix_of)
}

/// Whether a parameter's value is known in this execution (a nestloop parameter
/// before its first outer row, or `$1` of a generic plan at planning, is not).
fn param_known(q: &Qual) -> bool {
    q.param.as_ref().is_none_or(|p| p.eval_value.lock().map(|v| v.is_some()).unwrap_or(false))
}

/// Turns a framework qual into a planner condition (None: not understood, or a
/// parameter without a value yet).
fn to_cond(q: &Qual) -> Option<Cond> {
    if !param_known(q) {
        return None;
    }
    let lit = |c: &Cell| match c {
        Cell::String(s) => Some(Lit::Text(s.clone())),
        Cell::I64(i) => Some(Lit::Int(*i)),
        Cell::I32(i) => Some(Lit::Int(*i as i64)),
        Cell::Bool(b) => Some(Lit::Bool(*b)),
        Cell::Timestamptz(t) => Some(Lit::Time(unix_of(*t))),
        Cell::Date(d) => as_timestamptz(d.into_datum()?, pg_sys::date_timestamptz).map(Lit::Time),
        Cell::Timestamp(t) => as_timestamptz(t.into_datum()?, pg_sys::timestamp_timestamptz).map(Lit::Time),
        _ => None,
    };
    let (values, any) = match &q.value {
        supabase_wrappers::interface::Value::Cell(c) => (vec![lit(c)?], false),
        supabase_wrappers::interface::Value::Array(cells) if q.use_or => {
            (cells.iter().map(lit).collect::<Option<Vec<_>>>()?, true)
        }
        _ => return None,
    };
    Some(Cond { column: q.field.clone(), op: q.operator.clone(), values, any })
}

/// The column that selects a Connect account (sent as `Stripe-Account`).
pub const ACCOUNT_COLUMN: &str = "account"; // not a resource: the foreign tables' Connect column

/// The accounts a scan's `account = ...` / `account IN (...)` conditions name,
/// in order without repeats. `None`: no such condition (or one not known yet).
/// `Some(empty)`: conditions no account meets (`account = 'a' AND account = 'b'`).
fn accounts_of(conds: &[Cond]) -> Option<Vec<String>> {
    let mut out: Option<Vec<String>> = None;
    for c in conds.iter().filter(|c| c.column == ACCOUNT_COLUMN && c.op == "=") {
        let named: Vec<String> =
            c.values.iter().filter_map(|v| if let Lit::Text(t) = v { Some(t.clone()) } else { None }).collect();
        out = Some(match out {
            None => {
                let mut unique = Vec::new();
                for a in named {
                    if !unique.contains(&a) {
                        unique.push(a);
                    }
                }
                unique
            }
            Some(prev) => prev.into_iter().filter(|a| named.contains(a)).collect(),
        });
    }
    out
}

/// Whether a condition is one [`accounts_of`] takes (so it is not the planner's).
fn is_account_cond(c: &Cond) -> bool {
    c.column == ACCOUNT_COLUMN && c.op == "=" && c.values.iter().all(|v| matches!(v, Lit::Text(_)))
}

/// A JSON value as the cell of a column of type `oid`.
fn to_cell(v: Option<&Value>, oid: pg_sys::Oid, column: &str) -> Result<Option<Cell>, FdwError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    let ts =
        |secs: i64| pgrx::datum::TimestampWithTimeZone::try_from((secs - PG_EPOCH_UNIX).saturating_mul(1_000_000)).ok();
    let cell = match oid {
        pg_sys::TEXTOID | pg_sys::VARCHAROID => match v {
            Value::String(s) => Some(Cell::String(s.clone())),
            // an expanded reference: its id
            Value::Object(o) if o.get("id").is_some_and(Value::is_string) => {
                Some(Cell::String(o["id"].as_str().unwrap_or_default().to_string()))
            }
            other => Some(Cell::String(other.to_string())),
        },
        pg_sys::INT8OID => v.as_i64().map(Cell::I64),
        pg_sys::INT4OID => v.as_i64().and_then(|i| i32::try_from(i).ok()).map(Cell::I32),
        pg_sys::FLOAT8OID => v.as_f64().map(Cell::F64),
        pg_sys::BOOLOID => v.as_bool().map(Cell::Bool),
        pg_sys::TIMESTAMPTZOID => v.as_i64().and_then(ts).map(Cell::Timestamptz),
        pg_sys::JSONBOID => Some(Cell::Json(JsonB(v.clone()))),
        _ => {
            return Err(SyncError::new(
                PgSqlErrorCode::ERRCODE_FDW_INVALID_DATA_TYPE,
                format!("column \"{column}\" has a type stripe_sync_fdw cannot fill"),
            )
            .hint("Use text, bigint, integer, double precision, boolean, timestamptz or jsonb.")
            .into());
        }
    };
    Ok(cell)
}

impl StripeSyncFdw {
    fn resource(options: &HashMap<String, String>) -> Result<&'static Resource, FdwError> {
        let name = options.get("resource").ok_or_else(|| {
            SyncError::new(
                PgSqlErrorCode::ERRCODE_FDW_OPTION_NAME_NOT_FOUND,
                "the foreign table has no \"resource\" option",
            )
            .hint(format!("Add OPTIONS (resource '...'), one of: {}.", resources::names().join(", ")))
        })?;
        resources::lookup(name)
            .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE, e.to_string()).into())
    }

    /// Starts reading the next account of the scan; false when none is left.
    fn start(&mut self) -> Result<bool, FdwError> {
        let Some(account) = self.accounts.get(self.accounts_started).cloned() else { return Ok(false) };
        self.accounts_started += 1;
        let (selection, first_page) = self.selection.clone().expect("begin_scan planned the scan");
        if self.client.is_none() {
            self.client = Some(source::client_for_server(self.server_oid, &self.server_options)?);
        }
        let base = self.client.as_ref().expect("set above");
        let client = match &account {
            Some(a) => base.acting_as(Some(a)).map_err(|_| {
                SyncError::new(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("\"{a}\" is not a Stripe account id"),
                )
                .hint("Compare account with connected account ids like acct_1A2b3C (see the account table).")
            })?,
            None => base.clone(),
        };
        let parallelism = guc::MAX_PARALLEL_REQUESTS.get().max(1) as usize;
        let stream = ObjectStream::start(client, selection, parallelism, first_page, |job| {
            threads::spawn_blocked("stripe_sync scan", job)
        })?;
        self.stream = Some(stream);
        self.scans += 1;
        Ok(true)
    }

    /// The `account` column of the rows being read: the account of the current
    /// scan, the server's `account` option, or NULL for the key's own account.
    fn current_account(&self) -> Option<String> {
        self.accounts
            .get(self.accounts_started.saturating_sub(1))
            .cloned()
            .flatten()
            .or_else(|| self.server_options.get(options::ACCOUNT_OPTION).cloned())
    }

    /// What EXPLAIN says of `Stripe-Account`: the account(s) sent, one scan each,
    /// a parameter by its label, or that none is sent.
    fn explain_account(&self, quals: &[Qual], account_conds: &[(Cond, Option<String>)]) -> String {
        let waiting: Vec<String> = quals
            .iter()
            .filter(|q| q.field == ACCOUNT_COLUMN && !param_known(q))
            .filter_map(|q| q.param.as_ref().map(|p| format!("<{}>", p.label)))
            .collect();
        if !waiting.is_empty() {
            return format!("{} (one scan per value)", waiting.join(", "));
        }
        let conds: Vec<Cond> = account_conds.iter().map(|(c, _)| c.clone()).collect();
        // a value from a parameter is shown as the parameter
        let shown = |a: &String| {
            account_conds
                .iter()
                .find_map(|(c, label)| {
                    label.as_ref().filter(|_| c.values.len() == 1 && c.values[0] == Lit::Text(a.clone()))
                })
                .map_or_else(|| a.clone(), |l| format!("<{l}>"))
        };
        match accounts_of(&conds) {
            Some(named) if named.is_empty() => "none: no account meets the conditions, so no request".to_string(),
            Some(named) if named.len() == 1 => shown(&named[0]),
            Some(named) => {
                format!("{} (one scan each, in turn)", named.iter().map(shown).collect::<Vec<_>>().join(", "))
            }
            None => match self.server_options.get(options::ACCOUNT_OPTION) {
                Some(a) => format!("{a} (the server's account option)"),
                None => "not sent: the key's own account (account = 'acct_...' reads a connected account)".to_string(),
            },
        }
    }

    /// Rows in the source's materialized table of this resource, as last
    /// analyzed (`pg_class.reltuples`), if there is one.
    fn materialized_rows(&self, r: &Resource) -> Option<f64> {
        let server = unsafe {
            let srv = pg_sys::GetForeignServer(self.server_oid);
            std::ffi::CStr::from_ptr((*srv).servername).to_string_lossy().into_owned()
        };
        let source = source::source_of_server(&server)?;
        // the view stripe_sync_reader may read; a role granted only the foreign
        // table plans with the default estimate instead of failing
        let readable =
            Spi::get_one::<bool>("SELECT has_table_privilege('stripe_sync.sources', 'SELECT')").ok().flatten();
        if readable != Some(true) {
            return None;
        }
        Spi::get_one_with_args::<f32>(
            "SELECT c.reltuples FROM stripe_sync.sources s
               JOIN pg_namespace n ON n.nspname = s.schema
               JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.table_prefix || $2
              WHERE s.name = $1 AND c.reltuples >= 0",
            &[source.into(), r.name.into()],
        )
        .ok()
        .flatten()
        .map(f64::from)
    }
}

/// Conditions of a scan: planner conditions, with the label of each parameter
/// whose value became part of the request (for EXPLAIN).
fn conditions(quals: &[Qual]) -> Vec<(Cond, Option<String>)> {
    quals.iter().filter_map(|q| to_cond(q).map(|c| (c, q.param.as_ref().map(|p| p.label.clone())))).collect()
}

impl ForeignDataWrapper<FdwError> for StripeSyncFdw {
    fn new(server: ForeignServer) -> Result<Self, FdwError> {
        Ok(StripeSyncFdw {
            server_oid: server.server_oid,
            server_options: server.options,
            resource: None,
            columns: Vec::new(),
            selection: None,
            stream: None,
            start_pending: false,
            client: None,
            accounts: Vec::new(),
            accounts_started: 0,
            rows: 0,
            scans: 0,
        })
    }

    fn get_rel_size(
        &mut self,
        quals: &[Qual],
        columns: &[Column],
        _sorts: &[Sort],
        _limit: &Option<Limit>,
        options: &HashMap<String, String>,
    ) -> Result<(i64, i32), FdwError> {
        let resource = Self::resource(options)?;
        // at planning, parameters have no value yet: an `id = $1` is still one row
        let (account_conds, conds): (Vec<Cond>, Vec<Cond>) =
            quals.iter().filter_map(to_cond).partition(is_account_cond);
        let plan = plan::plan(resource, &conds);
        let by_param = quals.iter().any(|q| q.field == "id" && q.operator == "=" && !q.use_or && q.param.is_some());
        // each named account is a scan of its own
        let scans = accounts_of(&account_conds).map_or(1, |a| a.len().max(1)) as f64;
        let rows = match &plan.selection.ids {
            Some(ids) => ids.len() as f64,
            None if by_param => 1.0,
            None => {
                // each pushed equality (a list filter, a customer) keeps about a tenth
                let base = self.materialized_rows(resource).unwrap_or(DEFAULT_ROWS);
                let filters = plan.selection.filters.len() + usize::from(plan.selection.customer.is_some());
                base / 10f64.powi(filters as i32)
            }
        };
        let width: i32 = columns.iter().map(|c| if c.name == "attrs" { 3000 } else { 16 }).sum();
        Ok(((rows * scans).max(1.0).round() as i64, width.max(8)))
    }

    fn param_columns(&self, options: &HashMap<String, String>) -> Vec<String> {
        // what a scan can push for one outer value: a retrieve by id, a list filter,
        // one customer's list
        let Ok(r) = Self::resource(options) else { return Vec::new() };
        // a Connect account: its own scan
        let mut cols = vec![ACCOUNT_COLUMN.to_string()];
        if plan::retrieve_path(r, "x", None).is_some() {
            cols.push("id".to_string());
        }
        cols.extend(
            r.columns.iter().filter(|c| c.filter.is_some() && c.filter_values.is_empty()).map(|c| c.name.to_string()),
        );
        if let Some(parent) = r.parent()
            && !cols.iter().any(|c| c == parent.column)
        {
            cols.push(parent.column.to_string());
        }
        cols
    }

    fn explain(
        &mut self,
        quals: &[Qual],
        _columns: &[Column],
        _sorts: &[Sort],
        _limit: &Option<Limit>,
        options: &HashMap<String, String>,
        analyze: bool,
    ) -> Result<Vec<(String, String)>, FdwError> {
        let resource = Self::resource(options)?;
        let (account_conds, mut conds): (Vec<_>, Vec<_>) =
            conditions(quals).into_iter().partition(|(c, _)| is_account_cond(c));
        // a text parameter without a value yet (a nestloop parameter) is shown
        // by its label where its value will go
        let mut placeholders = Vec::new();
        for q in quals.iter().filter(|q| !param_known(q) && !q.use_or && q.field != ACCOUNT_COLUMN) {
            if let Some(p) = &q.param
                && matches!(p.type_oid, pg_sys::TEXTOID | pg_sys::VARCHAROID)
            {
                let token = format!("stripesyncparam{}", placeholders.len());
                conds.push((Cond::new(&q.field, &q.operator, Lit::Text(token.clone())), None));
                placeholders.push((token, p.label.clone()));
            }
        }
        let plan = plan::plan(resource, &conds.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>());
        // a value from a parameter is shown as the parameter, as postgres_fdw shows $1
        let mut request = plan.selection.describe();
        for (c, label) in &conds {
            let Some(label) = label else { continue };
            match (c.column.as_str(), c.values.as_slice()) {
                ("created", [Lit::Time(t)]) => {
                    for (k, v) in plan::created_params(&c.op, *t) {
                        request = request.replace(&format!("{k}={v}"), &format!("{k}=<{label}>"));
                    }
                }
                (_, [Lit::Text(v)]) => request = request.replace(v.as_str(), &format!("<{label}>")),
                _ => {}
            }
        }
        for (token, label) in &placeholders {
            request = request.replace(token.as_str(), &format!("<{label}>"));
        }
        let mut lines = vec![("Stripe request".to_string(), request)];
        let waiting: Vec<String> = quals
            .iter()
            .filter(|q| !param_known(q))
            .filter_map(|q| q.param.as_ref().map(|p| format!("{} {} <{}>", q.field, q.operator, p.label)))
            .collect();
        if !waiting.is_empty() {
            lines.push(("Stripe request per value of".to_string(), waiting.join(", ")));
        }
        lines.push(("Stripe-Account".to_string(), self.explain_account(quals, &account_conds)));
        if analyze {
            let (requests, retries) = self
                .client
                .as_ref()
                .map(|c| {
                    (
                        c.stats.requests.load(std::sync::atomic::Ordering::Relaxed),
                        c.stats.retries.load(std::sync::atomic::Ordering::Relaxed),
                    )
                })
                .unwrap_or((0, 0));
            // every answered request is one page of a list or one retrieved object
            lines.push((
                "Stripe requests".to_string(),
                format!(
                    "{requests} sent, {retries} retried, {} pages or objects answered; {} rows in {} scans",
                    requests.saturating_sub(retries),
                    self.rows,
                    self.scans
                ),
            ));
        }
        Ok(lines)
    }

    fn begin_scan(
        &mut self,
        quals: &[Qual],
        columns: &[Column],
        _sorts: &[Sort],
        limit: &Option<Limit>,
        options: &HashMap<String, String>,
    ) -> Result<(), FdwError> {
        let resource = Self::resource(options)?;
        let (account_conds, conds): (Vec<Cond>, Vec<Cond>) =
            quals.iter().filter_map(to_cond).partition(is_account_cond);
        let plan = plan::plan(resource, &conds);
        self.accounts = match accounts_of(&account_conds) {
            Some(named) => named.into_iter().map(Some).collect(),
            None => vec![None],
        };
        self.accounts_started = 0;
        // LIMIT sizes the first page only, and only when every qual was pushed
        let pushed = conds.len() + account_conds.len();
        let first_page = match limit {
            Some(l) if pushed == quals.len() && plan.fully_pushed(conds.len()) => {
                Some((l.count + l.offset).clamp(1, 100) as u32)
            }
            _ => None,
        };
        self.resource = Some(resource);
        self.columns = columns.to_vec();
        self.selection = Some((plan.selection, first_page));
        self.stream = None;
        self.start_pending = true;
        Ok(())
    }

    fn iter_scan(&mut self, row: &mut Row) -> Result<Option<()>, FdwError> {
        if self.start_pending {
            self.start_pending = false;
            self.accounts_started = 0;
            self.start()?;
        }
        let obj = loop {
            let Some(stream) = self.stream.as_mut() else { return Ok(None) };
            let next = stream.next(Duration::from_millis(100), || {
                pgrx::check_for_interrupts!();
            })?;
            match next {
                Some(obj) => break obj,
                // this account is read: the next one, if any
                None => {
                    self.stream = None;
                    if !self.start()? {
                        return Ok(None);
                    }
                }
            }
        };
        let r = self.resource.expect("begin_scan set the resource");
        let account = self.current_account().map(Value::String);
        for col in &self.columns {
            let value = match col.name.as_str() {
                "attrs" => Some(&obj),
                ACCOUNT_COLUMN => account.as_ref(),
                "created" => obj.get(r.created_field),
                name => value_at(&obj, r.column(name).map(|c| c.path).unwrap_or(name)),
            };
            row.push(&col.name, to_cell(value, col.type_oid, &col.name)?);
        }
        self.rows += 1;
        Ok(Some(()))
    }

    fn re_scan(&mut self) -> Result<(), FdwError> {
        self.stream = None;
        self.start_pending = true;
        Ok(())
    }

    fn end_scan(&mut self) -> Result<(), FdwError> {
        // dropping the stream disconnects the channel: the fetching thread stops
        self.stream = None;
        self.start_pending = false;
        Ok(())
    }

    fn import_foreign_schema(&mut self, stmt: ImportForeignSchemaStmt) -> Result<Vec<String>, FdwError> {
        if stmt.remote_schema != "stripe" {
            return Err(SyncError::new(
                PgSqlErrorCode::ERRCODE_FDW_SCHEMA_NOT_FOUND,
                format!("stripe_sync_fdw has no remote schema \"{}\"", stmt.remote_schema),
            )
            .hint("Use IMPORT FOREIGN SCHEMA stripe FROM SERVER ... INTO ...")
            .into());
        }
        for key in stmt.options.keys() {
            if key != "table_prefix" {
                return Err(SyncError::new(
                    PgSqlErrorCode::ERRCODE_FDW_INVALID_OPTION_NAME,
                    format!("invalid IMPORT option \"{key}\""),
                )
                .hint("The only option is table_prefix.")
                .into());
            }
        }
        let prefix = stmt.options.get("table_prefix").map(String::as_str).unwrap_or("");
        Ok(ddl::import_statements(&stmt.local_schema, &stmt.server_name, prefix))
    }

    fn validator(options: Vec<Option<String>>, catalog: Option<pg_sys::Oid>) -> Result<(), FdwError> {
        let target = match catalog {
            Some(pg_sys::ForeignServerRelationId) => Target::Server,
            Some(pg_sys::UserMappingRelationId) => Target::UserMapping,
            Some(pg_sys::ForeignTableRelationId) => Target::Table,
            _ => Target::Wrapper,
        };
        for opt in options.into_iter().flatten() {
            let (name, value) = opt.split_once('=').unwrap_or((opt.as_str(), ""));
            options::check(target, name, value)?;
        }
        Ok(())
    }
}
