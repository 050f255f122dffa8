//! Writing Stripe objects into materialized tables, by the rules shared by
//! refreshes, the events catch-up and webhooks:
//! - a version replaces a row only if it is newer (`_stamp`, Stripe's clock);
//!   the same content at a later time only moves `_stamp`, so an older version
//!   arriving later never wins (see [`Target::new`] for when);
//! - a deletion removes the row and leaves a tombstone, so an older version
//!   arriving late never brings it back;
//! - applying the same thing twice is harmless;
//! - writers of one source take turns (see [`Target::take_turn`]), so each
//!   write sees every version and tombstone committed before it.

use crate::ddl::{ident, literal};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::spi::{OwnedPreparedStatement, SpiTupleTable};
use pgrx::{JsonB, PgOid, PgSqlErrorCode};
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use stripe_core::batch::add_tie;
pub use stripe_core::batch::{EventEffects, Newest, Tie, Version};
use stripe_core::resources::{ColType, Resource};

use crate::error::SyncError;

/// Rows changed by one write.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.deleted += o.deleted;
    }
}

/// What an upsert did, and the ids it could not decide: a different version
/// with the same stamp (Stripe's clock has whole seconds). Those must be
/// fetched from the API and written again as `fetch:` versions, which win ties.
#[derive(Debug, Default, Clone)]
pub struct Upserted {
    pub counts: Counts,
    pub ties: Vec<Tie>,
}

/// Rows a complete listing that began at `since` would have returned if their
/// object still existed: written before it began. Stripe's clock has whole
/// seconds, so a row of the listing's own second counts only when an earlier
/// refresh wrote it (refreshes of a table run one after another, so that read
/// came before this listing); a row an event wrote in that second may be newer.
fn written_before_listing(since: &str) -> String {
    format!("(_stamp < {since} OR (_stamp = {since} AND _synced_by LIKE 'refresh:%'))")
}

/// The Stripe account a write is for: the id its rows carry in their `account`
/// column, and the key of its tombstones and sync state (`''` for the source's
/// own account, else the connected account's id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub key: String,
}

impl Account {
    /// The source's own account (whose id is `id`).
    pub fn own(id: &str) -> Account {
        Account { id: id.to_string(), key: String::new() }
    }

    /// A connected account of a Connect source.
    pub fn connected(id: &str) -> Account {
        Account { id: id.to_string(), key: id.to_string() }
    }

    /// The `Stripe-Account` a request for this account carries (none for the own).
    pub fn header(&self) -> Option<&str> {
        (!self.key.is_empty()).then_some(self.key.as_str())
    }

    /// The source's client acting for this account: the source's own client
    /// (which a source made with `account =>` has acting as that account), or
    /// one sending the connected account's `Stripe-Account`.
    pub fn client(&self, base: &stripe_core::Client) -> Result<stripe_core::Client, stripe_core::StripeError> {
        match self.header() {
            Some(a) => base.acting_as(Some(a)),
            None => Ok(base.clone()),
        }
    }
}

/// A materialized table and the statements that write it.
#[derive(Debug, Clone)]
pub struct Target {
    pub resource: &'static Resource,
    pub source: String,
    pub account: Account,
    table: String,
    upsert: String,
    delete_ids: String,
    api_version: String,
}

fn spi_err(e: pgrx::spi::Error) -> SyncError {
    SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string())
}

/// SQL expression extracting a column from object `o`.
fn extract(ty: ColType, path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    let text = format!("o #>> {}", literal(&format!("{{{}}}", parts.join(","))));
    match ty {
        ColType::Text => text,
        ColType::BigInt => format!("({text})::bigint"),
        ColType::Bool => format!("({text})::boolean"),
        ColType::Timestamp => format!("to_timestamp(({text})::bigint)"),
    }
}

impl Target {
    /// `restamp`: whether the same content at a newer time moves `_stamp` (a row
    /// version each). It is needed wherever an older version can still arrive
    /// later: always for events; for refreshes only when the source receives
    /// webhooks (Stripe delivers late for up to three days). Without webhooks, the
    /// only other writer is an events refresh, which never applies an event older
    /// than the events cursor a full refresh moved to its own start.
    /// `api_version` is the version every object written is rendered in (the
    /// source's: events in another one are fetched again), kept in `_api_version`.
    pub fn new(
        resource: &'static Resource,
        source: &str,
        schema: &str,
        table: &str,
        restamp: bool,
        api_version: &str,
        account: &Account,
    ) -> Target {
        let q = format!("{}.{}", ident(schema), ident(table));
        let mut names = vec!["id".to_string(), "created".to_string()];
        let mut exprs = vec!["o->>'id'".to_string(), extract(ColType::Timestamp, resource.created_field)];
        for c in resource.columns {
            names.push(ident(c.name));
            exprs.push(extract(c.ty, c.path));
        }
        let sets: Vec<String> = names.iter().skip(1).map(|n| format!("{n} = EXCLUDED.{n}")).collect();
        // a child of a deleted owner (a payment method of a deleted customer) is
        // gone with it: a version older than the owner's deletion is not written
        // (a late attach event would bring it back), one of the same second is a tie
        let (parent_alive, parent_tie) = match resource.parent() {
            Some(p) => {
                let owner = |cmp: &str| {
                    format!(
                        "SELECT 1 FROM stripe_sync._deleted p WHERE p.source = $2 AND p.resource = {res}
                           AND p.account = $6 AND p.id = input.o->>{col} AND p.stamp {cmp} input.s",
                        res = literal(p.resource),
                        col = literal(p.column),
                    )
                };
                (
                    format!(
                        "AND NOT EXISTS ({}) AND (input.b LIKE 'fetch%' OR NOT EXISTS ({}))",
                        owner(">"),
                        owner("=")
                    ),
                    format!(
                        "UNION
                SELECT input.id, input.s FROM input WHERE input.b NOT LIKE 'fetch%' AND EXISTS ({})",
                        owner("=")
                    ),
                )
            }
            None => (String::new(), String::new()),
        };
        let upsert = format!(
            "WITH input AS (
                -- the account rides along as a column: matched as `t.account = $5`, it was
                -- a condition of its own, and a kept generic plan made while the table was
                -- small scanned the whole key index for it, the input rescanned per row
                SELECT e->'o' AS o, e->'o'->>'id' AS id, (e->>'s')::bigint AS s, e->>'b' AS b, n, $5::text AS acct
                FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS x(e, n)
             ), cur AS (
                -- what each row holds before this statement (read once)
                SELECT input.id, input.s, input.b, t._stamp AS ts, t.attrs IS NOT DISTINCT FROM input.o AS same
                FROM input JOIN {q} t ON t.id = input.id AND t.account = input.acct
             ), written AS (
                INSERT INTO {q} AS t ({names}, attrs, _synced_at, _synced_by, _stamp, _api_version, account)
                SELECT {exprs}, o, now(), b, s, $4, $5 FROM input
                WHERE NOT EXISTS (SELECT 1 FROM stripe_sync._deleted d
                                  WHERE d.source = $2 AND d.resource = $3 AND d.account = $6 AND d.id = input.id
                                    AND (d.stamp > input.s OR (d.stamp = input.s AND input.b NOT LIKE 'fetch%')))
                  {parent_alive}
                ORDER BY n
                ON CONFLICT (id, account) DO UPDATE SET {sets}, attrs = EXCLUDED.attrs, _synced_at = EXCLUDED._synced_at,
                    _synced_by = EXCLUDED._synced_by, _stamp = EXCLUDED._stamp, _api_version = EXCLUDED._api_version
                WHERE ((t.attrs IS DISTINCT FROM EXCLUDED.attrs OR t._api_version IS DISTINCT FROM EXCLUDED._api_version)
                       AND (t._stamp < EXCLUDED._stamp OR (t._stamp = EXCLUDED._stamp AND EXCLUDED._synced_by LIKE 'fetch%')))
                   -- the same content, known at a later time: only what the row knows moves
                   OR ({restamp} AND t.attrs = EXCLUDED.attrs AND t._stamp < EXCLUDED._stamp)
                RETURNING (xmax = 0) AS inserted
             ), ties AS (
                -- versions that cannot be ordered, fetched again at the row's stamp: the same
                -- second; or a page (stamped at or before Stripe read it: its Date, to the
                -- second, less the request's time) read up to {window} s before the row's event,
                -- which may be older or newer than that event
                SELECT id, greatest(s, ts) AS s FROM cur
                WHERE NOT same AND b NOT LIKE 'fetch%'
                  AND (ts = s OR (b LIKE 'refresh:%' AND ts > s AND ts <= s + {window}))
                UNION
                -- a version from the second of the object's deletion: which came last?
                SELECT input.id, input.s FROM input JOIN stripe_sync._deleted d
                  ON d.source = $2 AND d.resource = $3 AND d.account = $6 AND d.id = input.id
                WHERE d.stamp = input.s AND input.b NOT LIKE 'fetch%'
                {parent_tie}
             )
             SELECT (SELECT count(*) FILTER (WHERE inserted) FROM written),
                    greatest(0, (SELECT count(*) FILTER (WHERE NOT inserted) FROM written)
                                - (SELECT count(*) FROM cur WHERE {restamp} AND same AND ts < s)),
                    (SELECT coalesce(array_agg(id), '{{}}') FROM ties), (SELECT coalesce(array_agg(s), '{{}}') FROM ties)",
            names = names.join(", "),
            exprs = exprs.join(", "),
            sets = sets.join(", "),
            restamp = if restamp { "true" } else { "false" },
            window = PAGE_READ_WINDOW_SECS,
            parent_alive = parent_alive,
            parent_tie = parent_tie,
        );
        let delete_ids = format!(
            "WITH input AS (
                SELECT e->>'id' AS id, (e->>'s')::bigint AS s, $5::text AS acct FROM jsonb_array_elements($1) e
             ), locked AS (
                -- a row of the same second, whatever wrote it (an event, a page, or a
                -- fetch sent before this deletion arrived): which came last is
                -- unknown, so it is fetched (when $4) instead of deleted
                SELECT t.id, t.account, input.s, ($4 AND t._stamp = input.s) AS tied
                FROM {q} t JOIN input ON t.id = input.id AND t.account = input.acct ORDER BY t.id FOR UPDATE OF t
             ), gone AS (
                DELETE FROM {q} t USING locked
                WHERE t.id = locked.id AND t.account = locked.account AND t._stamp <= locked.s AND NOT locked.tied
                RETURNING t.id
             ), tomb AS (
                INSERT INTO stripe_sync._deleted AS d (source, resource, account, id, stamp) SELECT $2, $3, $6, id, s FROM input
                ON CONFLICT (source, resource, account, id) DO UPDATE SET stamp = greatest(d.stamp, EXCLUDED.stamp)
             )
             SELECT (SELECT count(*) FROM gone), (SELECT coalesce(array_agg(id), '{{}}') FROM locked WHERE tied),
                    (SELECT coalesce(array_agg(s), '{{}}') FROM locked WHERE tied)"
        );
        Target {
            resource,
            source: source.to_string(),
            account: account.clone(),
            table: q,
            upsert,
            delete_ids,
            api_version: api_version.to_string(),
        }
    }

    /// The qualified table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Waits for this transaction's turn to write the source's tables, held to
    /// its end. Every write takes it before its first statement, so the
    /// statements that follow see all that other writers committed: without
    /// it, an upsert whose snapshot predates a concurrent deletion's commit
    /// re-inserts the deleted row (its tombstone check read the older snapshot),
    /// and a deletion misses a row another backend inserted but had not yet
    /// committed. One lock per source, not per table: a deletion cascades into
    /// other tables. The workers and `refresh` take it before any row lock
    /// another writer needs, and a batch of several sources takes theirs in name
    /// order, so they cannot deadlock. Taking it again in the same transaction
    /// is free.
    fn take_turn(&self, c: &mut SpiClient) -> Result<(), SyncError> {
        take_turn(c, &self.source)
    }

    /// Upserts versions (the newest per id, when an id comes twice).
    pub fn upsert(&self, c: &mut SpiClient, versions: Vec<Version>) -> Result<Upserted, SyncError> {
        self.upsert_newest(c, versions.into_iter().collect())
    }

    /// Upserts the newest versions: the ties among them and those with the rows
    /// are returned, to be fetched.
    pub fn upsert_newest(&self, c: &mut SpiClient, newest: Newest) -> Result<Upserted, SyncError> {
        let (versions, batch_ties) = newest.into_parts();
        if versions.is_empty() {
            return Ok(Upserted { ties: batch_ties, ..Default::default() });
        }
        self.take_turn(c)?;
        // the input as jsonb text, written straight from the versions (no copies;
        // writing JSON into a Vec cannot fail)
        let mut buf: Vec<u8> = Vec::with_capacity(versions.len() * 1024);
        buf.push(b'[');
        for (k, v) in versions.iter().enumerate() {
            if k > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(b"{\"o\":");
            let _ = serde_json::to_writer(&mut buf, &v.object);
            buf.extend_from_slice(format!(",\"s\":{},\"b\":", v.stamp).as_bytes());
            let _ = serde_json::to_writer(&mut buf, &v.by);
            buf.push(b'}');
        }
        buf.push(b']');
        let text = String::from_utf8(buf)
            .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))?;
        let row = exec(
            c,
            &self.upsert,
            &[
                text.as_str().into(),
                self.source.as_str().into(),
                self.resource.name.into(),
                self.api_version.as_str().into(),
                self.account.id.as_str().into(),
                self.account.key.as_str().into(),
            ],
        )?;
        let first = row.first();
        let (ins, upd, ids) = first.get_three::<i64, i64, Vec<String>>().map_err(spi_err)?;
        let stamps = first.get::<Vec<i64>>(4).map_err(spi_err)?.unwrap_or_default();
        let mut ties: Vec<Tie> = ids.unwrap_or_default().into_iter().zip(stamps).collect();
        for t in batch_ties {
            add_tie(&mut ties, t);
        }
        Ok(Upserted { counts: Counts { inserted: ins.unwrap_or(0), updated: upd.unwrap_or(0), deleted: 0 }, ties })
    }

    /// Deletes rows by id (each with the stamp of its deletion) and records tombstones.
    pub fn delete(&self, c: &mut SpiClient, ids: &[(String, i64)]) -> Result<Counts, SyncError> {
        Ok(self.delete_or_tie(c, ids, false)?.0)
    }

    /// Deletes rows by id for deletion events, and records tombstones; a row of
    /// the deletion's second is kept and returned as a tie (to fetch), whatever
    /// wrote it: a fetch of that second may have been sent before the deletion.
    pub fn delete_by_events(&self, c: &mut SpiClient, ids: &[(String, i64)]) -> Result<(Counts, Vec<Tie>), SyncError> {
        self.delete_or_tie(c, ids, true)
    }

    fn delete_or_tie(
        &self,
        c: &mut SpiClient,
        ids: &[(String, i64)],
        ties: bool,
    ) -> Result<(Counts, Vec<Tie>), SyncError> {
        if ids.is_empty() {
            return Ok((Counts::default(), Vec::new()));
        }
        self.take_turn(c)?;
        // one tombstone per id, at its latest deletion (an id deleted twice in one
        // batch would otherwise be written twice by one statement)
        let mut latest: HashMap<&str, i64> = HashMap::new();
        for (id, s) in ids {
            let e = latest.entry(id.as_str()).or_insert(*s);
            *e = (*e).max(*s);
        }
        let mut latest: Vec<(&str, i64)> = latest.into_iter().collect();
        latest.sort_unstable();
        let input: Vec<Value> = latest.iter().map(|(id, s)| json!({"id": id, "s": s})).collect();
        let row = exec(
            c,
            &self.delete_ids,
            &[
                JsonB(Value::Array(input)).into(),
                self.source.as_str().into(),
                self.resource.name.into(),
                ties.into(),
                self.account.id.as_str().into(),
                self.account.key.as_str().into(),
            ],
        )?;
        let first = row.first();
        let (n, tied, stamps) = first.get_three::<i64, Vec<String>, Vec<i64>>().map_err(spi_err)?;
        let tied: Vec<Tie> = tied.unwrap_or_default().into_iter().zip(stamps.unwrap_or_default()).collect();
        Ok((Counts { deleted: n.unwrap_or(0), ..Default::default() }, tied))
    }

    /// Deletes the rows of `[lo, hi]` (created) that a complete listing did not
    /// return, among those written before the listing began (`since`).
    pub fn delete_unseen_in_range(
        &self,
        c: &mut SpiClient,
        lo: i64,
        hi: i64,
        since: i64,
        seen: Vec<String>,
    ) -> Result<Counts, SyncError> {
        let cond = format!(
            "created >= to_timestamp($1) AND created <= to_timestamp($2) AND {} AND NOT (id = ANY($4))",
            written_before_listing("$3")
        );
        self.delete_where(c, &cond, vec![lo.into(), hi.into(), since.into(), seen.into()], since)
    }

    /// Rows of `[lo, hi]` that a complete listing begun at `since` did not return
    /// but that may have been written after it began (by an event of that second
    /// or later): only a fetch of each can tell whether it is gone.
    pub fn unseen_recent_in_range(
        &self,
        c: &mut SpiClient,
        lo: i64,
        hi: i64,
        since: i64,
        seen: &[String],
    ) -> Result<Vec<Tie>, SyncError> {
        let cond = format!(
            "created >= to_timestamp($1) AND created <= to_timestamp($2) AND NOT {} AND NOT (id = ANY($4))",
            written_before_listing("$3")
        );
        self.select_ties(c, &cond, vec![lo.into(), hi.into(), since.into(), seen.to_vec().into()])
    }

    /// One customer's rows its complete list did not return but that may be newer
    /// than the list (see [`Target::unseen_recent_in_range`]).
    pub fn unseen_recent_of_customer(
        &self,
        c: &mut SpiClient,
        customer: &str,
        since: i64,
        seen: &[String],
    ) -> Result<Vec<Tie>, SyncError> {
        let cond = format!("customer = $1 AND NOT {} AND NOT (id = ANY($3))", written_before_listing("$2"));
        self.select_ties(c, &cond, vec![customer.into(), since.into(), seen.to_vec().into()])
    }

    fn select_ties(
        &self,
        c: &mut SpiClient,
        cond: &str,
        mut args: Vec<pgrx::datum::DatumWithOid>,
    ) -> Result<Vec<Tie>, SyncError> {
        let sql = format!("SELECT id, _stamp FROM {} WHERE account = ${} AND ({cond})", self.table, args.len() + 1);
        args.push(self.account.id.as_str().into());
        let rows = c.select(&sql, None, &args).map_err(spi_err)?;
        let mut out = Vec::new();
        for r in rows {
            if let (Some(id), Some(stamp)) = (r.get::<String>(1).map_err(spi_err)?, r.get::<i64>(2).map_err(spi_err)?) {
                out.push((id, stamp));
            }
        }
        Ok(out)
    }

    /// Deletes one customer's rows that its complete list did not return.
    pub fn delete_unseen_of_customer(
        &self,
        c: &mut SpiClient,
        customer: &str,
        since: i64,
        seen: Vec<String>,
    ) -> Result<Counts, SyncError> {
        let cond = format!("customer = $1 AND {} AND NOT (id = ANY($3))", written_before_listing("$2"));
        self.delete_where(c, &cond, vec![customer.into(), since.into(), seen.into()], since)
    }

    /// Deletes every row of a deleted customer.
    pub fn delete_of_customer(&self, c: &mut SpiClient, customer: &str, stamp: i64) -> Result<Counts, SyncError> {
        self.take_turn(c)?;
        // the owner's tombstone keeps late versions of its children out (also when
        // only this table follows its deletion)
        if let Some(p) = self.resource.parent() {
            c.update(
                "INSERT INTO stripe_sync._deleted AS d (source, resource, account, id, stamp) VALUES ($1, $2, $5, $3, $4)
                 ON CONFLICT (source, resource, account, id) DO UPDATE SET stamp = greatest(d.stamp, EXCLUDED.stamp)",
                None,
                &[
                    self.source.as_str().into(),
                    p.resource.into(),
                    customer.into(),
                    stamp.into(),
                    self.account.key.as_str().into(),
                ],
            )
            .map_err(spi_err)?;
        }
        self.delete_where(c, "customer = $1 AND _stamp <= $2", vec![customer.into(), stamp.into()], stamp)
    }

    /// Deletes rows of customers that no longer exist (not among `customers`).
    pub fn delete_orphans(&self, c: &mut SpiClient, since: i64, customers: Vec<String>) -> Result<Counts, SyncError> {
        let cond = format!("{} AND NOT (customer = ANY($2))", written_before_listing("$1"));
        self.delete_where(c, &cond, vec![since.into(), customers.into()], since)
    }

    /// Deletes rows matching `cond` (over `args` as $1..$n) and records tombstones stamped `stamp`.
    fn delete_where(
        &self,
        c: &mut SpiClient,
        cond: &str,
        mut args: Vec<pgrx::datum::DatumWithOid>,
        stamp: i64,
    ) -> Result<Counts, SyncError> {
        self.take_turn(c)?;
        let n = args.len();
        let sql = format!(
            "WITH gone AS (DELETE FROM {t} WHERE account = ${id} AND ({cond}) RETURNING id), tomb AS (
                INSERT INTO stripe_sync._deleted AS d (source, resource, account, id, stamp)
                SELECT ${src}, ${res}, ${key}, id, ${st} FROM gone
                ON CONFLICT (source, resource, account, id) DO UPDATE SET stamp = greatest(d.stamp, EXCLUDED.stamp)
             ) SELECT count(*) FROM gone",
            t = self.table,
            st = n + 1,
            src = n + 2,
            res = n + 3,
            id = n + 4,
            key = n + 5,
        );
        args.extend([
            stamp.into(),
            self.source.as_str().into(),
            self.resource.name.into(),
            self.account.id.as_str().into(),
            self.account.key.as_str().into(),
        ]);
        let row = c.update(&sql, None, &args).map_err(spi_err)?;
        Ok(Counts { deleted: row.first().get_one::<i64>().map_err(spi_err)?.unwrap_or(0), ..Default::default() })
    }
}

impl Target {
    /// Writes what the API returned for objects re-read after a tie: versions
    /// that win ties (`fetch:`), and deletions for objects that are gone. Each is
    /// at least as new as the tie it settles (the fetch was sent after both tied
    /// versions arrived), whatever the answer's own stamp.
    pub fn write_fetched(
        &self,
        c: &mut SpiClient,
        fetched: Vec<(String, Option<Value>, i64)>,
        ties: &[Tie],
        by: &str,
    ) -> Result<Counts, SyncError> {
        let mut gone = Vec::new();
        let mut versions = Vec::new();
        for (id, obj, stamp) in fetched {
            let floor = ties.iter().find(|(t, _)| *t == id).map(|(_, s)| *s).unwrap_or(stamp);
            let stamp = stamp.max(floor);
            match obj {
                Some(o) => versions.push(Version { object: o, stamp, by: by.to_string() }),
                None => gone.push((id, stamp)),
            }
        }
        let mut counts = self.upsert(c, versions)?.counts;
        counts += self.delete(c, &gone)?;
        Ok(counts)
    }
}

impl Target {
    /// Writes what a batch of events does to the table (see
    /// [`EventEffects::plan`]): the newest versions, then deletions. Returns the
    /// upsert with every object to fetch (its ties), and the deletions.
    pub fn apply_events(&self, fx: EventEffects, c: &mut SpiClient) -> Result<(Upserted, Counts), SyncError> {
        let plan = fx.plan();
        let mut up = self.upsert_newest(c, plan.versions)?;
        for t in plan.fetch {
            add_tie(&mut up.ties, t);
        }
        let (mut deleted, tied) = self.delete_by_events(c, &plan.gone)?;
        for t in tied {
            add_tie(&mut up.ties, t);
        }
        for (customer, stamp) in &plan.gone_customers {
            deleted += self.delete_of_customer(c, customer, *stamp)?;
        }
        Ok((up, deleted))
    }
}

thread_local! {
    /// Whether this backend keeps the plans of its write statements (see [`keep_plans`]).
    static KEEP_PLANS: Cell<bool> = const { Cell::new(false) };
    static PLANS: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// Makes this backend plan each write statement once and keep it: for the
/// webhook worker, whose batches are small and many, so that planning the
/// upsert was a fifth of its time. A kept plan is generic; one made while a
/// table was small would keep scanning it whole once it is large (measured: the
/// webhook path fell from 7,788 to 5,768 events/s), so the caller also turns off
/// sequential scans and hash and merge joins for its session: every write is a
/// lookup by key. Other backends (refreshes, `apply_inbox`) plan on each run.
pub fn keep_plans() -> Result<(), SyncError> {
    Spi::run(
        "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off;
         SET plan_cache_mode = force_generic_plan; SET jit = off",
    )
    .map_err(spi_err)?;
    KEEP_PLANS.with(|k| k.set(true));
    Ok(())
}

/// Runs a statement of the write path: planned on each run, or through its kept
/// plan (see [`keep_plans`]).
pub fn exec<'c>(
    c: &mut SpiClient<'c>,
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<SpiTupleTable<'c>, SyncError> {
    if !KEEP_PLANS.with(Cell::get) {
        return c.update(sql, None, args).map_err(spi_err);
    }
    let plan = match PLANS.with(|p| p.borrow().get(sql).cloned()) {
        Some(plan) => plan,
        None => {
            let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
            let plan = Rc::new(c.prepare_mut(sql, &types).map_err(spi_err)?.keep());
            PLANS.with(|p| p.borrow_mut().insert(sql.to_string(), plan.clone()));
            plan
        }
    };
    c.update(&*plan, None, args).map_err(spi_err)
}

/// Moves what `sync_status.freshness` measures from: the newest Stripe time of a
/// change written to the table, by any path (refreshes and webhooks alike).
pub fn record_newest(
    c: &mut SpiClient,
    source: &str,
    resource: &str,
    account: &Account,
    newest: Option<i64>,
) -> Result<(), SyncError> {
    if let Some(n) = newest {
        exec(
            c,
            "INSERT INTO stripe_sync._sync_state AS s (source, resource, account, newest_stamp) VALUES ($1, $2, $4, $3)
             ON CONFLICT (source, resource, account) DO UPDATE SET newest_stamp = greatest(s.newest_stamp, EXCLUDED.newest_stamp)",
            &[source.into(), resource.into(), n.into(), account.key.as_str().into()],
        )?;
    }
    Ok(())
}

/// How far after a page's stamp Stripe may still have read it: the stamp is the
/// answer's `Date` (whole seconds) less the request's duration, rounded up.
pub const PAGE_READ_WINDOW_SECS: i64 = 10;

/// The materialized table of a resource for a source: (schema, table).
/// Waits for the source's writers' turn (see [`Target::take_turn`]), held to
/// the end of the transaction.
pub fn take_turn(c: &mut SpiClient, source: &str) -> Result<(), SyncError> {
    exec(c, "SELECT pg_advisory_xact_lock(hashtext('stripe_sync writes'), hashtext($1))", &[source.into()])?;
    Ok(())
}

pub fn table_of(source: &str, r: &Resource) -> Result<(String, String), SyncError> {
    let row = Spi::get_two_with_args::<String, String>(
        "SELECT schema_name, table_prefix FROM stripe_sync._sources WHERE name = $1",
        &[source.into()],
    )
    .map_err(spi_err)?;
    match row {
        (Some(schema), Some(prefix)) => Ok((schema, crate::ddl::table_name(&prefix, r))),
        _ => {
            Err(SyncError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("source \"{source}\" does not exist")))
        }
    }
}
