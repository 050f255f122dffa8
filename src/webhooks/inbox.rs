//! The inbox: verified events are stored first (idempotent on event id), then
//! applied in batches by the same rules as refreshes. One code path for the
//! worker's listener and `stripe_sync.receive_webhook`.

use crate::apply::{Account, EventEffects, Target, exec, table_of};
use crate::error::{SyncError, in_subtransaction};
use crate::{source, threads};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use stripe_core::resources;
use stripe_core::webhook::Incoming;
use stripe_core::{signature, sync};

fn spi_err(e: pgrx::spi::Error) -> SyncError {
    SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string())
}

/// The signing secrets of every source with a webhook.
pub fn secrets() -> Result<HashMap<String, Vec<String>>, SyncError> {
    Spi::connect(|c| {
        let mut out = HashMap::new();
        for row in c.select("SELECT source, secrets FROM stripe_sync._webhooks", None, &[])? {
            let (Some(s), Some(v)) = (row.get::<String>(1)?, row.get::<Vec<String>>(2)?) else { continue };
            out.insert(s, v);
        }
        Ok(out)
    })
    .map_err(spi_err)
}

/// Verifies a delivery for `source` with that source's secrets.
pub fn verify(source: &str, payload: &[u8], signature_header: Option<&str>) -> Result<Incoming, SyncError> {
    let secrets = secrets()?.remove(source).unwrap_or_default();
    if secrets.is_empty() {
        return Err(SyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("source \"{source}\" has no webhook signing secret"),
        )
        .hint("Call stripe_sync.create_webhook(url) or stripe_sync.set_webhook_secret('whsec_...')."));
    }
    stripe_core::webhook::verify_event(
        payload,
        signature_header,
        &secrets,
        signature::DEFAULT_TOLERANCE_SECS,
        signature::unix_now(),
    )
    .map_err(|r| {
        SyncError::invalid(format!("webhook refused: {r}"))
            .hint("Nothing was stored. Check the endpoint's signing secret and that the body is passed unchanged.")
    })
}

/// Stores verified events of one source; returns, per event, whether it was new.
pub fn store(c: &mut SpiClient, source: &str, events: &[&Incoming]) -> Result<Vec<bool>, SyncError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let array = format!("[{}]", events.iter().map(|e| e.raw.as_str()).collect::<Vec<_>>().join(","));
    let rows = c
        .update(
            "INSERT INTO stripe_sync._inbox (source, event_id, type, created, payload)
             SELECT $1, e->>'id', e->>'type', (e->>'created')::bigint, e FROM jsonb_array_elements($2::jsonb) e
             ON CONFLICT (source, event_id) DO NOTHING RETURNING event_id",
            None,
            &[source.into(), array.as_str().into()],
        )
        .map_err(spi_err)?;
    let mut new = HashSet::new();
    for r in rows {
        if let Some(id) = r.get::<String>(1).map_err(spi_err)? {
            new.insert(id);
        }
    }
    let fresh: Vec<bool> = events.iter().map(|e| new.remove(&e.id)).collect();
    let added = fresh.iter().filter(|f| **f).count() as i64;
    c.update(
        "INSERT INTO stripe_sync._webhook_stats AS s (source, received, duplicates, last_received_at) VALUES ($1, $2, $3, now())
         ON CONFLICT (source) DO UPDATE SET received = s.received + $2, duplicates = s.duplicates + $3, last_received_at = now()",
        None,
        &[source.into(), added.into(), (events.len() as i64 - added).into()],
    )
    .map_err(spi_err)?;
    Ok(fresh)
}

/// Stores verified deliveries of one source and applies at once those that
/// need no API call, in the caller's transaction (the worker's, committed before
/// Stripe gets its 2xx). Each event is inserted once: `applied` when written,
/// otherwise `pending`, for [`apply_pending`] to handle: events of a truncated
/// nested list or of a same-second tie (they need the API), events no table
/// follows, and every event of the batch when writing it fails (that path writes
/// them one at a time and marks those that fail). Returns how many were stored
/// pending.
pub fn store_and_apply(source: &str, events: &[&Incoming]) -> Result<i64, SyncError> {
    if events.is_empty() {
        return Ok(0);
    }
    // one of each event id (a delivery may come twice at once)
    let mut seen = HashSet::new();
    let unique: Vec<&Incoming> = events.iter().copied().filter(|e| seen.insert(e.id.as_str())).collect();
    let ids: Vec<String> = unique.iter().map(|e| e.id.clone()).collect();
    // whether the source exists, and which events are stored already (one statement)
    let (exists, known) = Spi::connect_mut(|c| {
        exec(
            c,
            "SELECT EXISTS (SELECT 1 FROM stripe_sync._sources WHERE name = $1),
                    coalesce((SELECT array_agg(event_id) FROM stripe_sync._inbox WHERE source = $1 AND event_id = ANY($2)), '{}')",
            &[source.into(), ids.into()],
        )?
        .first()
        .get_two::<bool, Vec<String>>()
        .map_err(spi_err)
    })?;
    let exists = exists.unwrap_or(false);
    let known: HashSet<String> = known.unwrap_or_default().into_iter().collect();
    let fresh: Vec<&Incoming> = unique.into_iter().filter(|e| !known.contains(&e.id)).collect();
    // the events written now: a source that exists, a table that follows the
    // type, an object with an id and no truncated list
    let mut ready: Vec<Pending> = Vec::new();
    if exists {
        for e in &fresh {
            let Ok(payload) = serde_json::from_str::<Value>(&e.raw) else { continue };
            let p = Pending::new(source.to_string(), e.id.clone(), e.event_type.clone(), payload);
            if !touched(&p.kind).is_empty() && object_id(&p).is_some() && needs_completion(&p).is_none() {
                ready.push(p);
            }
        }
    }
    let applied: Vec<String> = match in_subtransaction(|| write(&ready)) {
        Ok(ties) => ready.iter().filter(|e| !tied_in(e, &ties)).map(|e| e.id.clone()).collect(),
        Err(_) => Vec::new(),
    };
    let array = format!("[{}]", fresh.iter().map(|e| e.raw.as_str()).collect::<Vec<_>>().join(","));
    // the events and the counters, in one statement
    let (inserted, applied_n) = Spi::connect_mut(|c| {
        exec(
            c,
        "WITH ins AS (
            INSERT INTO stripe_sync._inbox (source, event_id, type, created, payload, status, applied_at)
            SELECT $1, e->>'id', e->>'type', (e->>'created')::bigint, e,
                   CASE WHEN e->>'id' = ANY($3) THEN 'applied' ELSE 'pending' END,
                   CASE WHEN e->>'id' = ANY($3) THEN clock_timestamp() END
            FROM jsonb_array_elements($2::jsonb) e
            ON CONFLICT (source, event_id) DO NOTHING RETURNING status
         ), n AS (
            SELECT count(*) AS inserted, count(*) FILTER (WHERE status = 'applied') AS applied FROM ins
         ), stats AS (
            INSERT INTO stripe_sync._webhook_stats AS s (source, received, duplicates, applied, last_received_at, last_applied_at)
            SELECT $1, n.inserted, $4 - n.inserted, n.applied, now(), CASE WHEN n.applied > 0 THEN now() END FROM n
            ON CONFLICT (source) DO UPDATE SET received = s.received + EXCLUDED.received,
                duplicates = s.duplicates + EXCLUDED.duplicates, applied = s.applied + EXCLUDED.applied,
                last_received_at = now(), last_applied_at = coalesce(EXCLUDED.last_applied_at, s.last_applied_at)
         )
         SELECT inserted, applied FROM n",
            &[source.into(), array.as_str().into(), applied.into(), (events.len() as i64).into()],
        )?
        .first()
        .get_two::<i64, i64>()
        .map_err(spi_err)
    })?;
    let (inserted, applied_n) = (inserted.unwrap_or(0), applied_n.unwrap_or(0));
    let pending = inserted - applied_n;
    Ok(pending)
}

/// Seconds a tombstone is kept after the deletion it records: Stripe keeps events
/// 30 days (an events refresh reads no older version than that) and retries a
/// webhook delivery for up to 3 days, so after 30 days plus a margin no older
/// version of a deleted object can still arrive; a full refresh never lists it.
pub const TOMBSTONE_RETENTION_SECS: i64 = 35 * 86_400;

/// Most rows one prune deletes from each table (the next one goes on).
const PRUNE_BATCH: i64 = 50_000;

/// Deletes applied and skipped inbox events older than `inbox_retention`
/// seconds, and tombstones past [`TOMBSTONE_RETENTION_SECS`]; returns both counts.
pub fn prune(inbox_retention: i64) -> Result<(i64, i64), SyncError> {
    let events = Spi::get_one_with_args::<i64>(
        "WITH gone AS (
            DELETE FROM stripe_sync._inbox WHERE ctid = ANY (ARRAY(
                SELECT ctid FROM stripe_sync._inbox
                WHERE status IN ('applied', 'skipped') AND applied_at < clock_timestamp() - make_interval(secs => $1)
                LIMIT $2))
            RETURNING 1)
         SELECT count(*) FROM gone",
        &[(inbox_retention as f64).into(), PRUNE_BATCH.into()],
    )
    .map_err(spi_err)?
    .unwrap_or(0);
    let tombstones = Spi::get_one_with_args::<i64>(
        "WITH gone AS (
            DELETE FROM stripe_sync._deleted WHERE ctid = ANY (ARRAY(
                SELECT ctid FROM stripe_sync._deleted
                WHERE stamp < extract(epoch FROM clock_timestamp())::bigint - $1 LIMIT $2))
            RETURNING 1)
         SELECT count(*) FROM gone",
        &[TOMBSTONE_RETENTION_SECS.into(), PRUNE_BATCH.into()],
    )
    .map_err(spi_err)?
    .unwrap_or(0);
    Ok((events, tombstones))
}

/// Adds rejected deliveries to the counters.
pub fn count_rejected(c: &mut SpiClient, source: &str, n: u64) -> Result<(), SyncError> {
    c.update(
        "INSERT INTO stripe_sync._webhook_stats AS s (source, rejected) VALUES ($1, $2)
         ON CONFLICT (source) DO UPDATE SET rejected = s.rejected + $2",
        None,
        &[source.into(), (n as i64).into()],
    )
    .map_err(spi_err)?;
    Ok(())
}

/// The resources an event type changes (a deleted customer also takes its
/// per-customer rows).
fn touched(event_type: &str) -> Vec<&'static resources::Resource> {
    let mut out: Vec<&'static resources::Resource> =
        resources::by_event(event_type).map(|(r, _)| r).into_iter().collect();
    out.extend(resources::cascaded_by(event_type));
    out
}

/// A stored event waiting to be applied.
struct Pending {
    source: String,
    id: String,
    kind: String,
    payload: Value,
    /// Connect: the connected account the event happened in (its `account`).
    account: Option<String>,
}

impl Pending {
    fn new(source: String, id: String, kind: String, payload: Value) -> Pending {
        let account = payload.get("account").and_then(Value::as_str).map(str::to_string); // not a resource: the event's field
        Pending { source, id, kind, payload, account }
    }

    /// The account whose rows the event changes: a connected account's events
    /// carry its id; the source's own carry none (or, delivered by a Connect
    /// endpoint to a source made with `account =>`, the source's own id).
    fn account(&self, own: &str) -> Account {
        match self.account.as_deref() {
            Some(a) if a != own => Account::connected(a),
            _ => Account::own(own),
        }
    }

    /// The account whose rows of `r` the event changes: the platform's list of
    /// accounts is the platform's own rows, whatever account the event names.
    fn account_of(&self, r: &resources::Resource, own: &str) -> Account {
        if r.name == resources::CONNECTED_ACCOUNTS { Account::own(own) } else { self.account(own) }
    }

    /// Whether the event changes `acct`'s rows of `r` (see [`Pending::account_of`]).
    fn changes(&self, r: &resources::Resource, acct: &Account) -> bool {
        if acct.key.is_empty() {
            r.name == resources::CONNECTED_ACCOUNTS || self.account.as_deref().is_none_or(|a| a == acct.id)
        } else {
            r.name != resources::CONNECTED_ACCOUNTS && self.account.as_deref() == Some(acct.key.as_str())
        }
    }

    /// The client of the event's account.
    fn client(&self, clients: &HashMap<String, stripe_core::Client>) -> Option<stripe_core::Client> {
        let base = clients.get(&self.source)?;
        match self.account.as_deref() {
            Some(a) if base.config().account.as_deref() != Some(a) => base.acting_as(Some(a)).ok(),
            _ => Some(base.clone()),
        }
    }
}

/// Why an event could not be applied: (source, event id, error).
type Failure = (String, String, String);

/// Objects written with the same stamp as a different version: (source, account, resource, ties).
type Ties = Vec<(String, Account, &'static resources::Resource, Vec<crate::apply::Tie>)>;

/// Seconds before a failed event is tried again: doubling per attempt, at most an hour.
pub const RETRY_SQL: &str = "clock_timestamp() + make_interval(secs => least(3600, 2 ^ least(attempts, 12)))";

/// Applies up to `limit` stored events (oldest first): pending ones, and failed
/// ones whose retry time has come. One event that cannot be applied never holds
/// back the others: when the batch fails as a whole, each event is applied on its
/// own, and those that fail are marked `failed` with their error, to be tried
/// again with backoff. Events of sources that no longer exist are skipped with a
/// reason. Returns (applied, skipped).
///
/// The work is three steps, each run through `in_tx` (the worker commits each in
/// a transaction of its own; SQL callers run them in theirs), with HTTP only
/// between them, when no row is locked: completing truncated lists before the
/// writes, fetching same-second ties after them. HTTP runs off this thread while
/// `check` runs every 100 ms; when it returns true (a shutdown) the wait ends at
/// once: events not written stay pending, and unsettled ties are recorded.
pub fn apply_pending(
    limit: i64,
    mut check: impl FnMut() -> bool,
    mut in_tx: impl FnMut(&mut dyn FnMut() -> Result<(), SyncError>) -> Result<(), SyncError>,
) -> Result<(i64, i64), SyncError> {
    // 1. read the batch (no row locks but the orphans' inbox rows, committed here)
    let mut todo: Vec<Pending> = Vec::new();
    let mut skipped: Vec<Pending> = Vec::new();
    let mut orphans = 0;
    let mut failed: Vec<Failure> = Vec::new();
    let mut clients: HashMap<String, stripe_core::Client> = HashMap::new();
    let mut unknown: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    in_tx(&mut || {
        let (batch, n) = skip_orphans(read_batch(limit)?)?;
        orphans = n;
        // events no table follows are skipped
        (todo, skipped) = batch
            .into_iter()
            .partition(|e| !touched(&e.kind).is_empty() && resources::event_subject(&e.payload).is_some());
        for e in &todo {
            if needs_completion(e).is_some()
                && let Err(err) = client_of(&mut clients, &e.source)
            {
                failed.push((e.source.clone(), e.id.clone(), err.message));
            }
        }
        // a source whose own account id is not known yet learns it below (HTTP)
        for e in &todo {
            if !unknown.contains(&e.source) && source::known_account_id(&e.source)?.is_none() {
                match client_of(&mut clients, &e.source) {
                    Ok(_) => {
                        unknown.insert(e.source.clone());
                    }
                    Err(err) => failed.push((e.source.clone(), e.id.clone(), err.message)),
                }
            }
        }
        Ok(())
    })?;
    if todo.is_empty() && skipped.is_empty() && orphans == 0 {
        return Ok((0, 0));
    }
    // HTTP: the own account ids (GET /v1/account); a source whose id cannot be
    // learned has its events failed, to be tried again
    let mut learned: Vec<(String, String)> = Vec::new();
    for src in &unknown {
        let Some(client) = clients.get(src).cloned() else { continue };
        let got = threads::block_on(async move { sync::own_account(&client).await }, &mut check);
        match got {
            Ok(Ok(id)) => learned.push((src.clone(), id)),
            Ok(Err(err)) => {
                let why = format!("learning the source's account id (GET {}): {err}", resources::OWN_ACCOUNT_PATH);
                failed.extend(
                    todo.iter().filter(|e| &e.source == src).map(|e| (e.source.clone(), e.id.clone(), why.clone())),
                );
            }
            Err(threads::Wait::Stopped) => return Ok((0, orphans)),
            Err(err) => {
                let why = err.to_string();
                failed.extend(
                    todo.iter().filter(|e| &e.source == src).map(|e| (e.source.clone(), e.id.clone(), why.clone())),
                );
            }
        }
    }
    todo.retain(|e| !failed.iter().any(|(s, id, _)| *s == e.source && *id == e.id));
    // HTTP: truncated lists
    // events of a connected account that revoked access, whose lists cannot be completed
    let mut revoked: Vec<Failure> = Vec::new();
    if complete_lists(&mut todo, &mut failed, &mut revoked, &clients, &mut check).is_err() {
        return Ok((0, orphans));
    }
    // 2. write the whole batch at once; one event at a time when that fails
    let mut ties: Ties = Vec::new();
    let mut applied = 0;
    // events whose object is tied: marked once the tie is settled, so a crash
    // before that leaves them pending, to be applied (and tied) again
    let mut waiting: Vec<usize> = Vec::new();
    in_tx(&mut || {
        for (src, id) in &learned {
            source::learn_account_id(src, id)?;
        }
        let ok: Vec<usize> = match in_subtransaction(|| write(&todo)) {
            Ok(t) => {
                ties = t;
                (0..todo.len()).collect()
            }
            Err(_) => {
                let mut ok = Vec::new();
                for (i, e) in todo.iter().enumerate() {
                    match in_subtransaction(|| write(std::slice::from_ref(e))) {
                        Ok(t) => {
                            ties.extend(t);
                            ok.push(i);
                        }
                        Err(msg) => failed.push((e.source.clone(), e.id.clone(), msg)),
                    }
                }
                ok
            }
        };
        applied = ok.len() as i64;
        let (later, now): (Vec<usize>, Vec<usize>) = ok.into_iter().partition(|i| tied_in(&todo[*i], &ties));
        waiting = later;
        mark(&now.iter().map(|i| &todo[*i]).collect::<Vec<_>>(), &skipped.iter().collect::<Vec<_>>(), &failed)?;
        skip_revoked(&revoked)?;
        for (src, _, _, _) in &ties {
            client_of(&mut clients, src)?;
        }
        Ok(())
    })?;
    // HTTP, then 3.: same-second versions, what Stripe has now wins; then their
    // events are marked applied. A fetch that fails marks them failed, to be
    // applied again with backoff (and tied, and fetched, again)
    for (src, account, r, tied) in ties {
        let client = account.client(&clients[&src]);
        let fetched = match client {
            Ok(client) => fetch_ties(r, &tied, &client, &mut check),
            Err(e) => Err(e.into()),
        };
        if fetched.as_ref().is_err_and(|e| e.code == PgSqlErrorCode::ERRCODE_QUERY_CANCELED) {
            // asked to stop: the events stay pending
            break;
        }
        let events: Vec<&Pending> = waiting
            .iter()
            .map(|i| &todo[*i])
            .filter(|e| {
                e.source == src
                    && e.changes(r, &account)
                    && tied.iter().any(|(id, _)| Some(id.as_str()) == object_id(e))
            })
            .collect();
        in_tx(&mut || {
            let written = match &fetched {
                Ok(objects) => write_ties(&src, &account, r, objects.clone(), &tied),
                Err(e) => Err(SyncError { code: e.code, message: e.message.clone(), hint: None, revoked: e.revoked }),
            };
            match written {
                Ok(()) => mark(&events, &[], &[]),
                // the account revoked access: what Stripe has now is out of reach
                Err(e) if e.revoked => {
                    let why = format!("its account revoked the platform's access: {}", e.message);
                    skip_revoked(
                        &events.iter().map(|e| (e.source.clone(), e.id.clone(), why.clone())).collect::<Vec<_>>(),
                    )
                }
                Err(e) => {
                    let why = format!("settling same-second versions of {}: {}", r.name, e.message);
                    let failures: Vec<Failure> =
                        events.iter().map(|e| (e.source.clone(), e.id.clone(), why.clone())).collect();
                    mark(&[], &[], &failures)
                }
            }
        })?;
    }
    Ok((applied, skipped.len() as i64 + orphans))
}

/// The id of the object an event is about.
fn object_id(e: &Pending) -> Option<&str> {
    resources::event_subject(&e.payload)
}

/// Whether an event's object is among the ties of its source.
fn tied_in(e: &Pending, ties: &Ties) -> bool {
    let Some(id) = object_id(e) else { return false };
    ties.iter().any(|(src, acct, r, t)| *src == e.source && e.changes(r, acct) && t.iter().any(|(tid, _)| tid == id))
}

/// Events of sources that no longer exist (dropped with events pending) are
/// skipped with a reason, never retried; returns the others.
fn skip_orphans(batch: Vec<Pending>) -> Result<(Vec<Pending>, i64), SyncError> {
    let known: Vec<String> =
        Spi::get_one::<Vec<String>>("SELECT coalesce(array_agg(name), '{}') FROM stripe_sync._sources")
            .map_err(spi_err)?
            .unwrap_or_default();
    let (keep, orphans): (Vec<Pending>, Vec<Pending>) = batch.into_iter().partition(|e| known.contains(&e.source));
    let n = orphans.len() as i64;
    if !orphans.is_empty() {
        let (srcs, ids): (Vec<String>, Vec<String>) = orphans.into_iter().map(|e| (e.source, e.id)).unzip();
        Spi::run_with_args(
            "UPDATE stripe_sync._inbox i SET status = 'skipped', applied_at = clock_timestamp(),
                    error = 'source \"' || i.source || '\" does not exist (dropped?)'
             FROM unnest($1::text[], $2::text[]) AS x(source, event_id)
             WHERE i.source = x.source AND i.event_id = x.event_id",
            &[srcs.into(), ids.into()],
        )
        .map_err(spi_err)?;
    }
    Ok((keep, n))
}

fn read_batch(limit: i64) -> Result<Vec<Pending>, SyncError> {
    Spi::connect(|c| {
        let mut out = Vec::new();
        for row in c.select(
            "(SELECT source, event_id, type, payload, created, received_at FROM stripe_sync._inbox
               WHERE status = 'pending' ORDER BY created, received_at LIMIT $1)
             UNION ALL
             (SELECT source, event_id, type, payload, created, received_at FROM stripe_sync._inbox
               WHERE status = 'failed' AND next_attempt_at <= clock_timestamp() ORDER BY next_attempt_at LIMIT 100)
             ORDER BY created, received_at",
            None,
            &[limit.into()],
        )? {
            if let (Some(source), Some(id), Some(kind), Some(p)) =
                (row.get::<String>(1)?, row.get::<String>(2)?, row.get::<String>(3)?, row.get::<JsonB>(4)?)
            {
                out.push(Pending::new(source, id, kind, p.0));
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)
}

fn client_of<'a>(
    clients: &'a mut HashMap<String, stripe_core::Client>,
    src: &str,
) -> Result<&'a stripe_core::Client, SyncError> {
    if !clients.contains_key(src) {
        clients.insert(src.to_string(), source::client_for_source(src)?);
    }
    Ok(&clients[src])
}

/// The resource of an event whose object has a truncated nested list.
fn needs_completion(e: &Pending) -> Option<&'static resources::Resource> {
    let obj = e.payload.get("data").and_then(|d| d.get("object"))?;
    let r = obj.get("object").and_then(Value::as_str).and_then(resources::by_object)?;
    r.nested_lists
        .iter()
        .any(|f| obj.get(*f).and_then(|l| l.get("has_more")).and_then(Value::as_bool) == Some(true))
        .then_some(r)
}

/// Completes truncated nested lists from the API. An object that is gone keeps
/// the lists as delivered (its deletion comes as an event of its own); an event
/// whose lists cannot be read fails alone. Err when `check` asked to stop.
fn complete_lists(
    todo: &mut Vec<Pending>,
    failed: &mut Vec<Failure>,
    revoked: &mut Vec<Failure>,
    clients: &HashMap<String, stripe_core::Client>,
    check: &mut impl FnMut() -> bool,
) -> Result<(), threads::Wait> {
    let mut keep = Vec::with_capacity(todo.len());
    for mut e in std::mem::take(todo) {
        let Some(r) = needs_completion(&e) else {
            keep.push(e);
            continue;
        };
        // no client: the failure is recorded already
        let Some(client) = e.client(clients) else { continue };
        let mut object = e.payload["data"]["object"].clone();
        let done = threads::block_on(
            async move {
                match sync::complete_nested(&client, r, &mut object).await {
                    Ok(()) => Ok(Some(object)),
                    Err(err) if err.is_not_found() => Ok(None),
                    Err(err) => Err(err),
                }
            },
            &mut *check,
        );
        match done {
            Ok(Ok(Some(object))) => {
                e.payload["data"]["object"] = object;
                keep.push(e);
            }
            Ok(Ok(None)) => keep.push(e),
            Ok(Err(err)) if err.is_account_invalid() => revoked.push((
                e.source.clone(),
                e.id.clone(),
                format!("its account revoked the platform's access: {err}"),
            )),
            Ok(Err(err)) => failed.push((e.source.clone(), e.id.clone(), err.to_string())),
            Err(threads::Wait::Stopped) => return Err(threads::Wait::Stopped),
            Err(err) => failed.push((e.source.clone(), e.id.clone(), err.to_string())),
        }
    }
    *todo = keep;
    Ok(())
}

/// The API version a source reads in (its `api_version`, or the pinned one).
fn api_version_of(source: &str) -> Result<String, SyncError> {
    Ok(Spi::get_one_with_args::<String>(
        "SELECT coalesce(api_version, $2) FROM stripe_sync._sources WHERE name = $1",
        &[source.into(), stripe_core::client::API_VERSION.into()],
    )
    .map_err(spi_err)?
    .unwrap_or_else(|| stripe_core::client::API_VERSION.to_string()))
}

/// A source's schema, table prefix, API version (its own, or the pinned one)
/// and own account id.
fn source_tables(c: &mut SpiClient, source: &str) -> Result<(String, String, String, String), SyncError> {
    let row = exec(
        c,
        "SELECT schema_name, table_prefix, coalesce(api_version, $2), account_id FROM stripe_sync._sources WHERE name = $1",
        &[source.into(), stripe_core::client::API_VERSION.into()],
    )?;
    if row.is_empty() {
        return Err(SyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("source \"{source}\" does not exist"),
        ));
    }
    let first = row.first();
    let (schema, prefix, version) = first.get_three::<String, String, String>().map_err(spi_err)?;
    let Some(own) = first.get::<String>(4).map_err(spi_err)? else {
        return Err(SyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the account id of source \"{source}\" is not known yet"),
        )
        .hint("The webhook worker learns it (from Stripe, once) before applying the event; a refresh does too."));
    };
    Ok((schema.unwrap_or_default(), prefix.unwrap_or_default(), version.unwrap_or_default(), own))
}

/// Writes events to their tables; returns the same-second ties to settle.
fn write(events: &[Pending]) -> Result<Ties, SyncError> {
    // each source's schema, table prefix, API version and own account, read once
    let mut sources: HashMap<String, (String, String, String, String)> = HashMap::new();
    // grouped by source, account (a connected account's events change its rows
    // only) and table
    let mut groups: BTreeMap<(String, String, &'static str), (Account, Vec<&Value>)> = BTreeMap::new();
    Spi::connect_mut(|c| {
        for e in events {
            if !sources.contains_key(&e.source) {
                sources.insert(e.source.clone(), source_tables(c, &e.source)?);
            }
            let own = &sources[&e.source].3;
            for r in touched(&e.kind) {
                let account = e.account_of(r, own);
                groups
                    .entry((e.source.clone(), account.key.clone(), r.name))
                    .or_insert_with(|| (account.clone(), Vec::new()))
                    .1
                    .push(&e.payload);
            }
        }
        Ok::<(), SyncError>(())
    })?;
    let mut ties = Vec::new();
    Spi::connect_mut(|c| {
        for ((src, _, rname), (account, payloads)) in &groups {
            let r = resources::lookup(rname).map_err(|e| SyncError::invalid(e.to_string()))?;
            let (schema, prefix, version, _) = &sources[src.as_str()];
            let target = Target::new(r, src, schema, &crate::ddl::table_name(prefix, r), true, version, account);
            let mut fx = EventEffects::default();
            for p in payloads {
                fx.add(r, (*p).clone(), version);
            }
            let newest = fx.newest;
            let (up, _) = target.apply_events(fx, c)?;
            crate::apply::record_newest(c, src, r.name, account, newest)?;
            if !up.ties.is_empty() {
                ties.push((src.clone(), account.clone(), r, up.ties));
            }
        }
        // a connected account's grant or revocation of access, in its state
        for e in events.iter().filter(|e| super::access::is_access_event(&e.kind)) {
            let own = &sources[&e.source].3;
            if let Some(acct) = e.account.as_deref().filter(|a| a != own) {
                let stamp = e.payload.get("created").and_then(Value::as_i64).unwrap_or(0);
                super::access::record(c, &e.source, own, acct, (&e.kind, &e.id, stamp))?;
            }
        }
        Ok::<(), SyncError>(())
    })?;
    Ok(ties)
}

/// Records what happened to each event, and the counters.
fn mark(applied: &[&Pending], skipped: &[&Pending], failed: &[Failure]) -> Result<(), SyncError> {
    Spi::connect_mut(|c| {
        for (status, list) in [("applied", applied), ("skipped", skipped)] {
            let (srcs, ids): (Vec<String>, Vec<String>) = list.iter().map(|e| (e.source.clone(), e.id.clone())).unzip();
            c.update(
                "UPDATE stripe_sync._inbox i SET status = $1, applied_at = clock_timestamp(), error = NULL, next_attempt_at = NULL
                 FROM unnest($2::text[], $3::text[]) AS x(source, event_id)
                 WHERE i.source = x.source AND i.event_id = x.event_id AND i.status IN ('pending', 'failed')",
                None,
                &[status.into(), srcs.into(), ids.into()],
            )
            .map_err(spi_err)?;
        }
        for (src, id, error) in failed {
            c.update(
                &format!(
                    "UPDATE stripe_sync._inbox SET status = 'failed', attempts = attempts + 1, error = $3,
                            next_attempt_at = {RETRY_SQL}
                     WHERE source = $1 AND event_id = $2"
                ),
                None,
                &[src.as_str().into(), id.as_str().into(), error.as_str().into()],
            )
            .map_err(spi_err)?;
        }
        let mut per_source: HashMap<&str, (i64, i64)> = HashMap::new();
        for e in applied {
            per_source.entry(e.source.as_str()).or_default().0 += 1;
        }
        for e in skipped {
            per_source.entry(e.source.as_str()).or_default().1 += 1;
        }
        for (s, (a, k)) in per_source {
            c.update(
                "INSERT INTO stripe_sync._webhook_stats AS s (source, applied, skipped, last_applied_at) VALUES ($1, $2, $3, now())
                 ON CONFLICT (source) DO UPDATE SET applied = s.applied + $2, skipped = s.skipped + $3, last_applied_at = now()",
                None,
                &[s.into(), a.into(), k.into()],
            )
            .map_err(spi_err)?;
        }
        Ok::<(), SyncError>(())
    })?;
    for (src, id, error) in failed {
        record_error(src, &format!("event {id}: {error}"))?;
    }
    Ok(())
}

/// Skips events of a connected account that revoked the platform's access and
/// that need something from Stripe to be applied (a same-second version, a
/// truncated list): it is out of reach for good, and the account's rows stay as
/// they are. Retrying would fail until the inbox retention dropped them. The
/// reason stays in the event's `error`.
fn skip_revoked(events: &[Failure]) -> Result<(), SyncError> {
    if events.is_empty() {
        return Ok(());
    }
    Spi::connect_mut(|c| {
        let mut per_source: HashMap<&str, i64> = HashMap::new();
        for (src, id, why) in events {
            let n = c
                .update(
                    "UPDATE stripe_sync._inbox SET status = 'skipped', applied_at = clock_timestamp(), error = $3,
                            next_attempt_at = NULL
                     WHERE source = $1 AND event_id = $2 AND status IN ('pending', 'failed') RETURNING 1",
                    None,
                    &[src.as_str().into(), id.as_str().into(), stripe_core::error::redact(why).as_str().into()],
                )
                .map_err(spi_err)?
                .len() as i64;
            *per_source.entry(src.as_str()).or_default() += n;
        }
        for (s, n) in per_source {
            c.update(
                "INSERT INTO stripe_sync._webhook_stats AS s (source, skipped) VALUES ($1, $2)
                 ON CONFLICT (source) DO UPDATE SET skipped = s.skipped + $2",
                None,
                &[s.into(), n.into()],
            )
            .map_err(spi_err)?;
        }
        Ok::<(), SyncError>(())
    })
}

/// The last error of a source's webhook events (webhook_status).
fn record_error(source: &str, error: &str) -> Result<(), SyncError> {
    Spi::run_with_args(
        "INSERT INTO stripe_sync._webhook_stats AS s (source, last_error, last_error_at) VALUES ($1, $2, now())
         ON CONFLICT (source) DO UPDATE SET last_error = $2, last_error_at = now()",
        &[source.into(), stripe_core::error::redact(error).as_str().into()],
    )
    .map_err(spi_err)
}

/// An object as fetched: (id, the object or None when it is gone, Stripe's time).
type Fetched = (String, Option<Value>, i64);

/// Fetches tied objects (HTTP, no transaction needed).
fn fetch_ties(
    r: &'static resources::Resource,
    ties: &[crate::apply::Tie],
    client: &stripe_core::Client,
    check: &mut impl FnMut() -> bool,
) -> Result<Vec<Fetched>, SyncError> {
    let client = client.clone();
    let ids: Vec<String> = ties.iter().map(|(id, _)| id.clone()).collect();
    Ok(threads::block_on(async move { sync::fetch_current(&client, r, ids).await }, &mut *check)??)
}

/// Writes fetched ties: what Stripe has now.
fn write_ties(
    src: &str,
    account: &Account,
    r: &'static resources::Resource,
    fetched: Vec<Fetched>,
    ties: &[crate::apply::Tie],
) -> Result<(), SyncError> {
    let (schema, table) = table_of(src, r)?;
    let target = Target::new(r, src, &schema, &table, true, &api_version_of(src)?, account);
    in_subtransaction(|| Spi::connect_mut(|c| target.write_fetched(c, fetched, ties, "fetch:tie")))
        .map_err(|m| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, m))?;
    Ok(())
}
