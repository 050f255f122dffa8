//! The foreign data wrapper `stripe_sync_fdw` (supabase-wrappers), over stripe_core.
//!
//! A scan turns the quals into a [`stripe_core::plan::Plan`], starts an
//! [`ObjectStream`] on a thread of its own, and hands rows to Postgres as pages
//! arrive (bounded memory). Postgres rechecks every qual. LIMIT is only used as
//! the size of the first page when every extracted qual was pushed: the scan
//! never stops early on its own, so unpushed quals and joins stay correct.

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
    version = "0.1.0",
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
}

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

/// Turns a framework qual into a planner condition (None: not understood).
fn to_cond(q: &Qual) -> Option<Cond> {
    let lit = |c: &Cell| match c {
        Cell::String(s) => Some(Lit::Text(s.clone())),
        Cell::I64(i) => Some(Lit::Int(*i)),
        Cell::I32(i) => Some(Lit::Int(*i as i64)),
        Cell::Bool(b) => Some(Lit::Bool(*b)),
        Cell::Timestamptz(t) => {
            let micros: i64 = t.into_inner();
            Some(Lit::Time(micros as f64 / 1e6 + PG_EPOCH_UNIX as f64))
        }
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

    fn start(&mut self) -> Result<(), FdwError> {
        let (selection, first_page) = self.selection.clone().expect("begin_scan planned the scan");
        let client = source::client_for_server(self.server_oid, &self.server_options)?;
        let parallelism = guc::MAX_PARALLEL_REQUESTS.get().max(1) as usize;
        let stream = ObjectStream::start(client, selection, parallelism, first_page, |job| {
            threads::spawn_blocked("stripe_sync scan", job)
        })?;
        self.stream = Some(stream);
        Ok(())
    }
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
        })
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
        let conds: Vec<Cond> = quals.iter().filter_map(to_cond).collect();
        let plan = plan::plan(resource, &conds);
        // LIMIT sizes the first page only, and only when every qual was pushed
        let first_page = match limit {
            Some(l) if conds.len() == quals.len() && plan.fully_pushed(conds.len()) => {
                Some((l.count + l.offset).clamp(1, 100) as u32)
            }
            _ => None,
        };
        self.resource = Some(resource);
        self.columns = columns.to_vec();
        self.selection = Some((plan.selection, first_page));
        self.start()
    }

    fn iter_scan(&mut self, row: &mut Row) -> Result<Option<()>, FdwError> {
        let Some(stream) = self.stream.as_mut() else { return Ok(None) };
        let next = stream.next(Duration::from_millis(100), || {
            pgrx::check_for_interrupts!();
        })?;
        let Some(obj) = next else { return Ok(None) };
        let r = self.resource.expect("begin_scan set the resource");
        for col in &self.columns {
            let value = match col.name.as_str() {
                "attrs" => Some(&obj),
                "created" => obj.get(r.created_field),
                name => value_at(&obj, r.column(name).map(|c| c.path).unwrap_or(name)),
            };
            row.push(&col.name, to_cell(value, col.type_oid, &col.name)?);
        }
        Ok(Some(()))
    }

    fn re_scan(&mut self) -> Result<(), FdwError> {
        self.stream = None;
        self.start()
    }

    fn end_scan(&mut self) -> Result<(), FdwError> {
        // dropping the stream disconnects the channel: the fetching thread stops
        self.stream = None;
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
