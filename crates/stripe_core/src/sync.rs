//! What a refresh reads from Stripe, as a stream of messages for the writer:
//! a full pass split into `created` ranges fetched concurrently (ranges split
//! further whenever a fetcher is idle), per-customer passes, incremental reads,
//! and events since a cursor. Objects come with their truncated nested lists
//! completed. Postgres-free: the writer runs elsewhere.

use crate::client::Client;
use crate::error::StripeError;
use crate::listing::send;
use crate::paginate::{CreatedRange, ListQuery, Pager};
use crate::plan::Selection;
use crate::resources::{self, Resource, Scope};
use futures_util::stream::{self, StreamExt};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A message from a pass to its writer.
#[derive(Debug)]
pub enum Msg {
    /// Objects to write, stamped with Stripe's clock when their page was answered.
    Objects { objects: Vec<Value>, stamp: i64 },
    /// Every object created in `[lo, hi]` was listed (ids in `seen`): rows in that
    /// range that were not seen and were written before `since` no longer exist.
    RangeDone { lo: i64, hi: i64, seen: Vec<String>, since: i64 },
    /// One customer's list is complete (per-customer resources).
    CustomerDone { customer: String, seen: Vec<String>, since: i64 },
    /// Every customer up to and including this one is done (a checkpoint): its id
    /// and `created`, where a resume goes on if the customer is deleted meanwhile.
    CustomersThrough { id: String, created: Option<i64> },
    /// Events, oldest first.
    Events(Vec<Value>),
    /// The pass is complete. A pass whose channel closes without it is a failure:
    /// nothing may be decided (deleted) on what it read.
    End,
}

pub type MsgResult = Result<Msg, StripeError>;

/// Completes every nested list Stripe truncated (`invoice.lines`, `subscription.items`,
/// `credit_note.lines`) by paging its `url`.
pub async fn complete_nested(client: &Client, r: &Resource, obj: &mut Value) -> Result<(), StripeError> {
    for field in r.nested_lists {
        let Some(list) = obj.get(*field) else { continue };
        if list.get("has_more").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let Some(url) = list.get("url").and_then(Value::as_str) else { continue };
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let mut q = ListQuery::new(path);
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            q.filters.push((k.into_owned(), v.into_owned()));
        }
        q.starting_after = list
            .get("data")
            .and_then(Value::as_array)
            .and_then(|d| d.last())
            .and_then(|o| o.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let rest = Pager::new(client.clone(), q).collect_all().await?;
        if let Some(list) = obj.get_mut(*field) {
            if let Some(Value::Array(data)) = list.get_mut("data") {
                data.extend(rest);
            }
            list["has_more"] = Value::Bool(false);
        }
    }
    Ok(())
}

/// Completes the truncated lists of a page's objects. An object deleted since
/// the page was read (its list answers 404) is dropped from the page: it is gone,
/// and a pass that did not see it treats it so.
async fn complete_all(client: &Client, r: &Resource, objects: &mut Vec<Value>) -> Result<(), StripeError> {
    if r.nested_lists.is_empty() {
        return Ok(());
    }
    let needs: Vec<usize> = (0..objects.len())
        .filter(|i| {
            r.nested_lists
                .iter()
                .any(|f| objects[*i].get(*f).and_then(|l| l.get("has_more")).and_then(Value::as_bool) == Some(true))
        })
        .collect();
    let mut gone = Vec::new();
    for i in needs {
        match complete_nested(client, r, &mut objects[i]).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => gone.push(i),
            Err(e) => return Err(e),
        }
    }
    for i in gone.into_iter().rev() {
        objects.remove(i);
    }
    Ok(())
}

fn ids(objects: &[Value]) -> impl Iterator<Item = String> + '_ {
    objects.iter().filter_map(|o| o.get("id").and_then(Value::as_str).map(str::to_string))
}

/// What Stripe has now for these objects: (id, object or `None` if gone, Stripe's
/// clock of the answer), nested lists completed.
pub async fn fetch_current(
    client: &Client,
    r: &'static Resource,
    ids: Vec<String>,
) -> Result<Vec<(String, Option<Value>, i64)>, StripeError> {
    let mut out = Vec::new();
    for id in ids {
        let Some(path) = crate::plan::retrieve_path(r, &id, None) else { continue };
        let (got, stamp) = match client.get_dated(&path, &[]).await {
            Ok((v, t)) if v.get("deleted").and_then(Value::as_bool) != Some(true) => (Some(v), t),
            Ok((_, t)) => (None, t),
            Err(StripeError::NotFound { .. }) => (None, crate::signature::unix_now()),
            // the platform's account of one no longer connected: gone from its list
            Err(StripeError::AccountInvalid { .. }) if r.name == crate::resources::CONNECTED_ACCOUNTS => {
                (None, crate::signature::unix_now())
            }
            Err(e) => return Err(e),
        };
        let got = match got {
            Some(mut v) => {
                complete_nested(client, r, &mut v).await?;
                // a per-customer row exists only while attached
                if r.parent().is_some_and(|p| v.get(p.column).is_none_or(Value::is_null)) { None } else { Some(v) }
            }
            None => None,
        };
        out.push((id, got, stamp));
    }
    Ok(out)
}

/// A full pass over an account-level resource.
#[derive(Debug, Clone)]
pub struct FullPass {
    pub resource: &'static Resource,
    /// Objects created in `[lo, hi]` are listed.
    pub lo: i64,
    pub hi: i64,
    /// Ranges already done (resuming an interrupted pass).
    pub done: Vec<(i64, i64)>,
    pub parallelism: usize,
}

/// The parts of `[lo, hi]` not covered by `done`.
pub fn pending_ranges(lo: i64, hi: i64, done: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut done: Vec<(i64, i64)> = done.to_vec();
    done.sort_unstable();
    let mut out = Vec::new();
    let mut next = lo;
    for (a, b) in done {
        if b < next {
            continue;
        }
        if a > next {
            out.push((next, (a - 1).min(hi)));
        }
        next = next.max(b.saturating_add(1));
        if next > hi {
            break;
        }
    }
    if next <= hi {
        out.push((next, hi));
    }
    out.into_iter().filter(|(a, b)| a <= b).collect()
}

struct Shared {
    queue: VecDeque<(i64, i64)>,
    idle: usize,
    active: usize,
}

/// Runs a full pass: ranges are fetched by up to `parallelism` fetchers; a busy
/// range is split in two whenever a fetcher is idle.
pub async fn full_pass(client: Client, pass: FullPass, tx: SyncSender<MsgResult>) {
    let mut queue: VecDeque<(i64, i64)> = pending_ranges(pass.lo, pass.hi, &pass.done).into();
    // A fresh pass first asks for one page of the whole range (per list
    // variant): a resource with no more objects than a page is done with it, at
    // one request, before any probe. Only a larger one goes on to the probes and
    // the parallel fetchers, which read that page again (one request more).
    if pass.done.is_empty() && queue.len() == 1 {
        match whole_range_in_one_page(&client, pass.resource, pass.lo, pass.hi).await {
            Ok(Some(pages)) => {
                let mut seen = Vec::new();
                let mut since: Option<i64> = None;
                for (objects, stamp) in pages {
                    seen.extend(ids(&objects));
                    since = Some(since.map_or(stamp, |s| s.min(stamp)));
                    if !objects.is_empty() && !send(&tx, Ok(Msg::Objects { objects, stamp })).await {
                        return;
                    }
                }
                let since = since.unwrap_or_else(crate::signature::unix_now);
                if send(&tx, Ok(Msg::RangeDone { lo: pass.lo, hi: pass.hi, seen, since })).await {
                    send(&tx, Ok(Msg::End)).await;
                }
                return;
            }
            Ok(None) => {}
            Err(e) => {
                send(&tx, Err(e)).await;
                return;
            }
        }
    }
    // A fresh pass over everything: find how far back objects go with one round of
    // concurrent probes, so the fetchers start on evenly sized ranges of real data
    // instead of halving decades of emptiness one request at a time.
    if pass.done.is_empty() && pass.parallelism > 1 && queue.len() == 1 {
        match oldest_bound(&client, pass.resource, pass.lo, pass.hi).await {
            Ok(Some((bound, since))) if bound > pass.lo => {
                // nothing was created before `bound`: that range is done already
                if !send(&tx, Ok(Msg::RangeDone { lo: pass.lo, hi: bound - 1, seen: Vec::new(), since })).await {
                    return;
                }
                let n = (pass.parallelism / 2).max(1);
                queue = CreatedRange::split(bound, pass.hi, n).iter().map(|r| r.bounds()).collect();
            }
            Ok(_) => {}
            Err(e) => {
                send(&tx, Err(e)).await;
                return;
            }
        }
    }
    let shared = Arc::new(Mutex::new(Shared { queue, idle: 0, active: 0 }));
    let failed = Arc::new(Mutex::new(None::<StripeError>));
    let fetchers = (0..pass.parallelism.max(1)).map(|_| fetcher(&client, pass.resource, &shared, &tx, &failed));
    futures_util::future::join_all(fetchers).await;
    let err = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
    match err {
        Some(e) => send(&tx, Err(e)).await,
        None => send(&tx, Ok(Msg::End)).await,
    };
}

/// Every object of `[lo, hi]` when each list variant fits in one page: the
/// pages (completed nested lists, and when each was read); `None` as soon as one
/// variant has more.
async fn whole_range_in_one_page(
    client: &Client,
    r: &'static Resource,
    lo: i64,
    hi: i64,
) -> Result<Option<Vec<(Vec<Value>, i64)>>, StripeError> {
    let mut pages = Vec::new();
    for variant in Selection::all(r).list_queries(None) {
        let q = ListQuery {
            limit: 100,
            created: CreatedRange { gte: Some(lo), lte: Some(hi), ..Default::default() },
            ..variant
        };
        let Some(mut page) = Pager::new(client.clone(), q).next_page().await? else { continue };
        if page.has_more {
            return Ok(None);
        }
        complete_all(client, r, &mut page.data).await?;
        pages.push((page.data, page.fetched_at));
    }
    Ok(Some(pages))
}

/// A time before which no object exists (within a factor of two of the oldest
/// object's age), found with concurrent `limit=1` probes at `hi - 2^k hours`;
/// and when the answer was given.
async fn oldest_bound(
    client: &Client,
    r: &'static Resource,
    lo: i64,
    hi: i64,
) -> Result<Option<(i64, i64)>, StripeError> {
    // (a pass's hi may lie ahead of the clock, see the refresh: cuts start from now)
    let top = hi.min(crate::signature::unix_now());
    let cuts: Vec<i64> = (0..22).map(|k| top.saturating_sub(3_600i64 << k)).filter(|t| *t > lo).collect();
    let queries: Vec<(i64, ListQuery)> = cuts
        .iter()
        .flat_map(|t| {
            Selection::all(r).list_queries(None).into_iter().map(move |q| {
                (*t, ListQuery { limit: 1, created: CreatedRange { lt: Some(*t), ..Default::default() }, ..q })
            })
        })
        .collect();
    let answers = stream::iter(queries)
        .map(|(t, q)| async move {
            let p = Pager::new(client.clone(), q).next_page().await?;
            Ok::<_, StripeError>((t, p.map(|p| (p.data.is_empty(), p.fetched_at))))
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    // the latest cut with objects before it, per cut: a cut is empty only if every variant is
    let mut empty_at: std::collections::BTreeMap<i64, (bool, i64)> = std::collections::BTreeMap::new();
    for a in answers {
        let (t, page) = a?;
        let (empty, at) = page.unwrap_or((true, crate::signature::unix_now()));
        let e = empty_at.entry(t).or_insert((true, at));
        e.0 &= empty;
        e.1 = e.1.min(at);
    }
    // the newest cut before which nothing exists
    Ok(empty_at.iter().rev().find(|(_, (empty, _))| *empty).map(|(t, (_, at))| (*t, *at)))
}

async fn fetcher(
    client: &Client,
    r: &'static Resource,
    shared: &Mutex<Shared>,
    tx: &SyncSender<MsgResult>,
    failed: &Mutex<Option<StripeError>>,
) {
    loop {
        if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        let task = {
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            match s.queue.pop_front() {
                Some(t) => {
                    s.active += 1;
                    Some(t)
                }
                None if s.active == 0 => return,
                None => {
                    s.idle += 1;
                    None
                }
            }
        };
        let Some((lo, hi)) = task else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            shared.lock().unwrap_or_else(|p| p.into_inner()).idle -= 1;
            continue;
        };
        let result = fetch_range(client, r, lo, hi, shared, tx).await;
        shared.lock().unwrap_or_else(|p| p.into_inner()).active -= 1;
        match result {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                return;
            }
        }
    }
}

/// Lists `[lo, hi]` (every list variant); returns false when the writer is gone.
async fn fetch_range(
    client: &Client,
    r: &'static Resource,
    mut lo: i64,
    hi: i64,
    shared: &Mutex<Shared>,
    tx: &SyncSender<MsgResult>,
) -> Result<bool, StripeError> {
    // the ids listed so far, packed into one buffer (a range can hold many
    // thousands; a String each would cost ~70 bytes apiece)
    let mut seen = String::new();
    let mut since: Option<i64> = None;
    for variant in Selection::all(r).list_queries(None) {
        let mut cursor: Option<String> = None;
        loop {
            let q = ListQuery {
                created: CreatedRange { gte: Some(lo), lte: Some(hi), ..Default::default() },
                starting_after: cursor.clone(),
                ..variant.clone()
            };
            let mut pager = Pager::new(client.clone(), q);
            let Some(mut page) = pager.next_page().await? else { break };
            since = Some(since.map_or(page.fetched_at, |s| s.min(page.fetched_at)));
            complete_all(client, r, &mut page.data).await?;
            for id in ids(&page.data) {
                seen.push_str(&id);
                seen.push('\n');
            }
            let last_created = page.data.last().and_then(|o| o.get(r.created_field)).and_then(Value::as_i64);
            cursor = pager.cursor().map(str::to_string);
            let more = page.has_more;
            if !page.data.is_empty() && !send(tx, Ok(Msg::Objects { objects: page.data, stamp: page.fetched_at })).await
            {
                return Ok(false);
            }
            if !more {
                break;
            }
            // hand the older half of what is left to an idle fetcher
            if let Some(last) = last_created {
                let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                if s.idle > s.queue.len() && last > lo {
                    let m = lo + (last - lo + 1) / 2;
                    if m > lo && m <= last {
                        s.queue.push_back((lo, m - 1));
                        lo = m;
                    }
                }
            }
        }
    }
    let since = since.unwrap_or_else(crate::signature::unix_now);
    let seen: Vec<String> = seen.lines().map(str::to_string).collect();
    Ok(send(tx, Ok(Msg::RangeDone { lo, hi, seen, since })).await)
}

/// A full pass over a per-customer resource, from after `start_after` in the
/// customer list; each customer's list is read completely.
pub async fn per_customer_pass(
    client: Client,
    r: &'static Resource,
    start_after: Option<Resume>,
    created: CreatedRange,
    parallelism: usize,
    tx: SyncSender<MsgResult>,
) {
    match per_customer_inner(&client, r, start_after, created, parallelism, &tx).await {
        Ok(()) => send(&tx, Ok(Msg::End)).await,
        Err(e) => send(&tx, Err(e)).await,
    };
}

/// Where a per-customer pass resumes: after this customer (id, created).
pub type Resume = (String, Option<i64>);

async fn per_customer_inner(
    client: &Client,
    r: &'static Resource,
    start_after: Option<Resume>,
    created: CreatedRange,
    parallelism: usize,
    tx: &SyncSender<MsgResult>,
) -> Result<(), StripeError> {
    let list = ListQuery::new(r.parent().map_or("", |p| p.list_path()));
    let mut customers = Pager::new(
        client.clone(),
        ListQuery { starting_after: start_after.as_ref().map(|(id, _)| id.clone()), ..list.clone() },
    );
    let mut first = true;
    loop {
        let page = match customers.next_page().await {
            // the checkpoint's customer was deleted since: Stripe refuses it as a
            // cursor, so go on from its created time (customers of that second
            // already done are read again, which is harmless)
            Err(StripeError::InvalidRequest { param: Some(p), .. } | StripeError::NotFound { param: Some(p), .. })
                if first && p == "starting_after" && start_after.as_ref().is_some_and(|(_, c)| c.is_some()) =>
            {
                first = false;
                let lte = start_after.as_ref().and_then(|(_, c)| *c);
                customers = Pager::new(
                    client.clone(),
                    ListQuery { created: CreatedRange { lte, ..Default::default() }, ..list.clone() },
                );
                continue;
            }
            other => other?,
        };
        first = false;
        let Some(page) = page else { break };
        let cids: Vec<String> = ids(&page.data).collect();
        let mut lists = stream::iter(cids.clone())
            .map(|cid| async move {
                let mut sel = Selection::all(r);
                if r.created_filter {
                    sel.created = created;
                }
                let mut objects = Vec::new();
                let mut since = i64::MAX;
                for q in sel.list_queries(Some(&cid)) {
                    let mut pager = Pager::new(client.clone(), q);
                    loop {
                        match pager.next_page().await {
                            Ok(Some(p)) => {
                                since = since.min(p.fetched_at);
                                objects.extend(p.data);
                            }
                            Ok(None) => break,
                            // deleted since it was listed: nothing of it remains
                            Err(StripeError::NotFound { .. }) => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok((cid, objects, since))
            })
            .buffer_unordered(parallelism.max(1));
        while let Some(item) = lists.next().await {
            let (cid, objects, since) = item?;
            let since = if since == i64::MAX { page.fetched_at } else { since };
            let seen: Vec<String> = ids(&objects).collect();
            if !objects.is_empty() && !send(tx, Ok(Msg::Objects { objects, stamp: since })).await {
                return Ok(());
            }
            if !send(tx, Ok(Msg::CustomerDone { customer: cid, seen, since })).await {
                return Ok(());
            }
        }
        if let Some(last) = page.data.last().and_then(|c| c.get("id")).and_then(Value::as_str) {
            let created = page.data.last().and_then(|c| c.get("created")).and_then(Value::as_i64);
            if !send(tx, Ok(Msg::CustomersThrough { id: last.to_string(), created })).await {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Objects created after `after` (every list variant), newest first.
pub async fn created_after(
    client: Client,
    r: &'static Resource,
    after: Option<i64>,
    parallelism: usize,
    tx: SyncSender<MsgResult>,
) {
    let range = CreatedRange { gt: after, ..Default::default() };
    if r.scope == Scope::PerCustomer {
        return per_customer_pass(client, r, None, range, parallelism, tx).await;
    }
    let run = async {
        let mut sel = Selection::all(r);
        sel.created = range;
        for q in sel.list_queries(None) {
            let mut pager = Pager::new(client.clone(), q);
            while let Some(mut page) = pager.next_page().await? {
                complete_all(&client, r, &mut page.data).await?;
                if !page.data.is_empty()
                    && !send(&tx, Ok(Msg::Objects { objects: page.data, stamp: page.fetched_at })).await
                {
                    return Ok(());
                }
            }
        }
        Ok::<(), StripeError>(())
    };
    match run.await {
        Ok(()) => send(&tx, Ok(Msg::End)).await,
        Err(e) => send(&tx, Err(e)).await,
    };
}

/// The id of the account the client acts as (`GET /v1/account`): a source's own
/// account, whose id its rows carry in the `account` column.
pub async fn own_account(client: &Client) -> Result<String, StripeError> {
    let acct = client.get(resources::OWN_ACCOUNT_PATH, &[]).await?;
    acct.get("id").and_then(Value::as_str).map(str::to_string).ok_or_else(|| StripeError::Decode {
        message: format!("{} answered an object without an id", resources::OWN_ACCOUNT_PATH),
    })
}

/// The ids of a platform's connected accounts (`GET /v1/accounts`, every page,
/// in Stripe's order: newest first).
pub async fn connected_accounts(client: &Client) -> Result<Vec<String>, StripeError> {
    let r =
        resources::lookup(resources::CONNECTED_ACCOUNTS).map_err(|e| StripeError::Config { message: e.to_string() })?;
    let all = Pager::new(client.acting_as(None)?, ListQuery::new(r.list_path)).collect_all().await?;
    Ok(all.iter().filter_map(|a| a.get("id").and_then(Value::as_str).map(str::to_string)).collect())
}

/// The newest event of these types: (created, id).
pub async fn newest_event(client: &Client, types: &[&str]) -> Result<Option<(i64, String)>, StripeError> {
    let mut q = ListQuery { limit: 1, ..ListQuery::new(resources::EVENTS_PATH) };
    q.filters.extend(types.iter().map(|t| ("types[]".to_string(), t.to_string())));
    let page = Pager::new(client.clone(), q).next_page().await?;
    Ok(page.and_then(|p| {
        let e = p.data.first()?;
        Some((e.get("created")?.as_i64()?, e.get("id")?.as_str()?.to_string()))
    }))
}

/// A slice is read up to this many events, then cut: the newest part is kept
/// and the older rest becomes slices of its own.
pub const SLICE_EVENTS: usize = 1_000;

/// Events a catch-up holds at most, read ahead of the writer (slices waiting
/// for an older one, and slices being read, at [`SLICE_EVENTS`] each): what
/// bounds its memory, whatever the window's size. They are held as compact
/// JSON text (about 2 kB for a customer event, against about 8 kB parsed). The
/// oldest slice is always read, so the pass never stalls.
pub const BUFFERED_EVENTS: usize = 16_000;

/// The older rest of a cut slice is split into parts of about this many events
/// (by the density of what was read), read concurrently. Each part ends on a
/// partly filled page: larger parts waste fewer requests.
const PART_EVENTS: f64 = 1_000.0;

/// Events sent to the writer per message (each is applied, and the cursor
/// checkpointed, in one transaction).
const EVENTS_PER_MESSAGE: usize = 250;

/// An events catch-up: events of `types` created at or after `since`.
pub struct EventsPass {
    pub resource: &'static Resource,
    pub types: Vec<String>,
    pub since: i64,
    /// Slices read at once, at most.
    pub parallelism: usize,
}

/// One slice of an events pass, as read.
struct SliceRead {
    lo: i64,
    hi: Option<i64>,
    /// Oldest first: every event of `(cut, hi]` (of `[lo, hi]` without a cut),
    /// as JSON text.
    events: Vec<String>,
    /// The slice held more than [`SLICE_EVENTS`]: `[lo, cut]` is still to read.
    cut: Option<i64>,
    /// Events read per second of the part read (how dense the rest may be).
    density: f64,
}

enum SliceState {
    Pending,
    Running,
    Done(Vec<String>),
}

fn created_of(e: &Value) -> i64 {
    e.get("created").and_then(Value::as_i64).unwrap_or(0)
}

/// Reads one slice newest first, stopping after [`SLICE_EVENTS`] unless the
/// rest would not be a smaller slice (a single busy second is read whole).
async fn read_slice(
    client: Client,
    r: &'static Resource,
    types: Arc<Vec<String>>,
    lo: i64,
    hi: Option<i64>,
) -> Result<SliceRead, StripeError> {
    // (created, the event as JSON text)
    let mut all: Vec<(i64, String)> = Vec::new();
    let mut cut: Option<i64> = None;
    let mut newest = lo;
    // Stripe takes at most 20 types per request
    for chunk in types.chunks(20) {
        let mut q = ListQuery::new(resources::EVENTS_PATH).created(CreatedRange {
            gte: Some(lo),
            lte: hi,
            ..Default::default()
        });
        q.filters.extend(chunk.iter().map(|t| ("types[]".to_string(), t.to_string())));
        let mut pager = Pager::new(client.clone(), q);
        let mut got: Vec<(i64, String)> = Vec::new();
        while let Some(mut page) = pager.next_page().await? {
            let more = page.has_more;
            for e in page.data.iter_mut() {
                if let Some(obj) = e.get_mut("data").and_then(|d| d.get_mut("object"))
                    && obj.get("object").and_then(Value::as_str) == Some(r.object)
                {
                    // an object deleted since keeps its lists as delivered: its
                    // deletion is a later event of this pass
                    match complete_nested(&client, r, obj).await {
                        Err(e) if !e.is_not_found() => return Err(e),
                        _ => {}
                    }
                }
            }
            got.extend(page.data.into_iter().map(|e| (created_of(&e), e.to_string())));
            if more && got.len() >= SLICE_EVENTS {
                let m = got.last().map(|e| e.0).unwrap_or(lo);
                // events of the second `m` may go on in the next page: that
                // second is read again with the older part
                if hi.is_none_or(|h| m < h) {
                    cut = Some(cut.map_or(m, |c| c.max(m)));
                    break;
                }
            }
        }
        newest = newest.max(got.first().map(|e| e.0).unwrap_or(lo));
        all.extend(got);
    }
    let read = all.len();
    if let Some(m) = cut {
        all.retain(|e| e.0 > m);
    }
    let density = read as f64 / (newest - cut.unwrap_or(lo) + 1).max(1) as f64;
    // Stripe lists newest first; reversed, then a stable sort by created (which
    // only matters when several lists were merged) gives oldest first, keeping
    // Stripe's order within a second
    all.reverse();
    all.sort_by_key(|e| e.0);
    let all: Vec<String> = all.into_iter().map(|e| e.1).collect();
    Ok(SliceRead { lo, hi, events: all, cut, density })
}

/// The older rest `[lo, m]` of a cut slice, in parts of about [`PART_EVENTS`]
/// at `density` events per second (at most `parallelism` parts, each at least
/// a second).
fn rest_parts(lo: i64, m: i64, density: f64, parallelism: usize) -> Vec<(i64, i64)> {
    let seconds = m - lo + 1;
    let parts = ((density * seconds as f64 / PART_EVENTS).ceil() as i64).clamp(1, parallelism as i64).min(seconds);
    let step = seconds / parts;
    (0..parts).map(|i| (lo + i * step, if i + 1 == parts { m } else { lo + (i + 1) * step - 1 })).collect()
}

/// Streams the events of a pass to the writer, oldest first, in messages of
/// at most 250 events (the writer checkpoints its cursor after each).
///
/// The window `[since, now]` is read as one slice first; it and any slice with
/// more than [`SLICE_EVENTS`] events is cut into `created` slices read
/// concurrently, up to `parallelism` at once, within the client's rate budget. A slice with more
/// than [`SLICE_EVENTS`] events keeps the newest part it read, and the older
/// rest is split into parts of about [`PART_EVENTS`] by the density read so
/// far, so slices fit whatever the events' density. Slices
/// are sent in order as soon as every older one is sent; no slice but the
/// oldest is started while [`BUFFERED_EVENTS`] would be exceeded, so memory
/// stays flat however long the window is, and an interrupted catch-up re-reads
/// only what was read ahead.
pub async fn events_since(client: Client, pass: EventsPass, tx: SyncSender<MsgResult>) {
    let r = pass.resource;
    let types = Arc::new(pass.types.clone());
    let parallelism = pass.parallelism.max(1);
    let run = async {
        // lo → (hi, state); slices are disjoint and cover [since, ∞)
        // one slice at first, the whole window, open-ended: a short window (a cron
        // run every few minutes) costs one request; a long one is cut after its
        // newest 1,000 events, and the rest split by the density they show
        let mut slices: std::collections::BTreeMap<i64, (Option<i64>, SliceState)> =
            [(pass.since, (None, SliceState::Pending))].into_iter().collect();
        let mut running = futures_util::stream::FuturesUnordered::new();
        // the next message, parsed, while the writer is busy
        let mut outbox: Option<Vec<Value>> = None;
        loop {
            // start slices, oldest first, within the budget (the oldest always)
            let mut held: usize = slices
                .values()
                .map(|(_, st)| match st {
                    SliceState::Done(e) => e.len(),
                    SliceState::Running => SLICE_EVENTS,
                    SliceState::Pending => 0,
                })
                .sum();
            for (i, (lo, (hi, st))) in slices.iter_mut().enumerate() {
                if running.len() >= parallelism || (i > 0 && held + SLICE_EVENTS > BUFFERED_EVENTS) {
                    break;
                }
                if matches!(st, SliceState::Pending) {
                    *st = SliceState::Running;
                    held += SLICE_EVENTS;
                    running.push(read_slice(client.clone(), r, types.clone(), *lo, *hi));
                }
            }
            // send what is ready, oldest first, without waiting on a busy writer
            let mut blocked = false;
            loop {
                if outbox.is_none() {
                    let Some(mut head) = slices.first_entry() else { break };
                    let SliceState::Done(events) = &mut head.get_mut().1 else { break };
                    if events.is_empty() {
                        head.remove();
                        continue;
                    }
                    let n = events.len().min(EVENTS_PER_MESSAGE);
                    let chunk = events
                        .drain(..n)
                        .map(|e| serde_json::from_str::<Value>(&e))
                        .collect::<Result<Vec<Value>, _>>()
                        .map_err(|e| StripeError::Decode { message: e.to_string() })?;
                    outbox = Some(chunk);
                }
                let Some(chunk) = outbox.take() else { break };
                match tx.try_send(Ok(Msg::Events(chunk))) {
                    Ok(()) => {}
                    Err(std::sync::mpsc::TrySendError::Full(Ok(Msg::Events(back)))) => {
                        outbox = Some(back);
                        blocked = true;
                        break;
                    }
                    Err(_) => return Ok(()),
                }
            }
            if slices.is_empty() && outbox.is_none() {
                return Ok(());
            }
            // FuturesUnordered answers None at once when empty: sleep then
            let next = if running.is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            } else if blocked {
                match tokio::time::timeout(Duration::from_millis(2), running.next()).await {
                    Ok(n) => n,
                    Err(_) => continue,
                }
            } else {
                running.next().await
            };
            let Some(read) = next else { continue };
            let SliceRead { lo, hi, events, cut, density } = read?;
            slices.remove(&lo);
            match cut {
                None => {
                    slices.insert(lo, (hi, SliceState::Done(events)));
                }
                Some(m) => {
                    slices.insert(m + 1, (hi, SliceState::Done(events)));
                    for (a, b) in rest_parts(lo, m, density, parallelism) {
                        slices.insert(a, (Some(b), SliceState::Pending));
                    }
                    // slices not started yet are likely as dense: cut them to size
                    // now, so they are read whole, side by side, instead of one
                    // cut rest after the other
                    let unstarted: Vec<(i64, i64)> = slices
                        .iter()
                        .filter_map(|(a, (b, st))| match (st, b) {
                            (SliceState::Pending, Some(b)) if density * (b - a + 1) as f64 > PART_EVENTS => {
                                Some((*a, *b))
                            }
                            _ => None,
                        })
                        .collect();
                    for (a, b) in unstarted {
                        for (x, y) in rest_parts(a, b, density, parallelism) {
                            slices.insert(x, (Some(y), SliceState::Pending));
                        }
                    }
                }
            }
        }
    };
    match run.await {
        Ok(()) => send(&tx, Ok(Msg::End)).await,
        Err(e) => send(&tx, Err(e)).await,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_ranges_are_the_complement_of_done() {
        assert_eq!(pending_ranges(0, 100, &[]), vec![(0, 100)]);
        assert_eq!(pending_ranges(0, 100, &[(0, 100)]), vec![]);
        assert_eq!(pending_ranges(0, 100, &[(10, 20), (50, 60)]), vec![(0, 9), (21, 49), (61, 100)]);
        assert_eq!(pending_ranges(0, 100, &[(50, 60), (0, 5), (55, 70)]), vec![(6, 49), (71, 100)]);
        assert_eq!(pending_ranges(0, 10, &[(0, 3), (4, 10)]), vec![]);
    }

    #[test]
    fn the_rest_of_a_cut_slice_is_split_by_density() {
        // 10 events/s over 1,000 s: 10 parts of 100 s
        let p = rest_parts(0, 999, 10.0, 32);
        assert_eq!(p.len(), 10);
        assert_eq!(p[0], (0, 99));
        assert_eq!(p[9], (900, 999));
        for w in p.windows(2) {
            assert_eq!(w[0].1 + 1, w[1].0);
        }
        // at most parallelism parts, at least one second each, one part when sparse
        assert_eq!(rest_parts(0, 999, 1_000.0, 4).len(), 4);
        assert_eq!(rest_parts(5, 7, 1_000.0, 32), vec![(5, 5), (6, 6), (7, 7)]);
        assert_eq!(rest_parts(0, 999, 0.01, 32), vec![(0, 999)]);
    }
}
