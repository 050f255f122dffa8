//! Reading a [`Selection`] as a stream of pages, on a thread of its own, into a
//! bounded channel: memory stays flat however many objects there are, and the
//! reader (a Postgres backend) gets rows while later pages are still in flight.

use crate::client::Client;
use crate::error::StripeError;
use crate::paginate::{ListQuery, Pager};
use crate::plan::{Selection, retrieve_path};
use crate::resources::Scope;
use futures_util::stream::{self, StreamExt};
use serde_json::Value;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

/// One page of objects, or the error that ended the stream.
pub type PageResult = Result<Vec<Value>, StripeError>;

/// Pages buffered between the fetching thread and the reader.
pub const CHANNEL_PAGES: usize = 4;

/// Sends an item, waiting while the reader is behind; false when the reader is gone.
pub async fn send<T>(tx: &SyncSender<T>, mut item: T) -> bool {
    loop {
        match tx.try_send(item) {
            Ok(()) => return true,
            Err(TrySendError::Disconnected(_)) => return false,
            Err(TrySendError::Full(back)) => {
                item = back;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
}

/// Pages through one list; the first page may be smaller (a LIMIT hint).
async fn pump(
    client: &Client,
    q: ListQuery,
    first_page: Option<u32>,
    tx: &SyncSender<PageResult>,
) -> Result<bool, StripeError> {
    let mut pager =
        Pager::new(client.clone(), ListQuery { limit: first_page.unwrap_or(100).clamp(1, 100), ..q.clone() });
    let first = pager.next_page().await?;
    let Some(first) = first else { return Ok(true) };
    let more = first.has_more;
    if !first.data.is_empty() && !send(tx, Ok(first.data)).await {
        return Ok(false);
    }
    if !more {
        return Ok(true);
    }
    let mut pager =
        Pager::new(client.clone(), ListQuery { limit: 100, starting_after: pager.cursor().map(str::to_string), ..q });
    while let Some(page) = pager.next_page().await? {
        if !page.data.is_empty() && !send(tx, Ok(page.data)).await {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads everything `sel` selects into `tx`, ending with an `Err` page on failure.
/// `parallelism` bounds concurrent requests (retrieves, per-customer lists).
pub async fn produce(
    client: Client,
    sel: Selection,
    parallelism: usize,
    first_page: Option<u32>,
    tx: SyncSender<PageResult>,
) {
    match produce_inner(&client, &sel, parallelism.max(1), first_page, &tx).await {
        // an empty page says the read is complete (pages with data are never empty)
        Ok(()) => {
            let _ = send(&tx, Ok(Vec::new())).await;
        }
        Err(e) => {
            let _ = send(&tx, Err(e)).await;
        }
    }
}

async fn produce_inner(
    client: &Client,
    sel: &Selection,
    parallelism: usize,
    first_page: Option<u32>,
    tx: &SyncSender<PageResult>,
) -> Result<(), StripeError> {
    if sel.is_empty() {
        return Ok(());
    }
    let r = sel.resource;
    if let Some(ids) = &sel.ids {
        let customer = sel.customer.clone();
        let mut found = stream::iter(ids.clone())
            .map(|id| {
                let path = retrieve_path(r, &id, customer.as_deref());
                async move {
                    match path {
                        Some(p) => client.retrieve(&p).await,
                        None => Ok(None),
                    }
                }
            })
            .buffered(parallelism);
        let mut page = Vec::new();
        while let Some(obj) = found.next().await {
            let Some(obj) = obj? else { continue };
            // a per-customer row exists only while attached to a customer
            if let Some(parent) = r.parent() {
                let owner = obj.get(parent.column).and_then(Value::as_str);
                if owner.is_none() || (customer.is_some() && owner != customer.as_deref()) {
                    continue;
                }
            }
            page.push(obj);
            if page.len() == 100 && !send(tx, Ok(std::mem::take(&mut page))).await {
                return Ok(());
            }
        }
        if !page.is_empty() {
            send(tx, Ok(page)).await;
        }
        return Ok(());
    }
    match (r.scope, &sel.customer) {
        (Scope::PerCustomer, Some(c)) => {
            for q in sel.list_queries(Some(c)) {
                match pump(client, q, first_page, tx).await {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    // the customer does not exist: no rows
                    Err(StripeError::NotFound { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
        (Scope::PerCustomer, None) => {
            let owners = r.parent().map_or("", |p| p.list_path());
            let mut customers = Pager::new(client.clone(), ListQuery::new(owners));
            while let Some(page) = customers.next_page().await? {
                let ids: Vec<String> =
                    page.data.iter().filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_string)).collect();
                let mut lists = stream::iter(ids)
                    .map(|cid| {
                        let queries = sel.list_queries(Some(&cid));
                        async move {
                            let mut out: Vec<Vec<Value>> = Vec::new();
                            for q in queries {
                                match Pager::new(client.clone(), q).collect_all().await {
                                    Ok(objs) => out.push(objs),
                                    // deleted since it was listed
                                    Err(StripeError::NotFound { .. }) => {}
                                    Err(e) => return Err(e),
                                }
                            }
                            Ok(out)
                        }
                    })
                    .buffer_unordered(parallelism);
                while let Some(lists) = lists.next().await {
                    for objs in lists? {
                        if !objs.is_empty() && !send(tx, Ok(objs)).await {
                            return Ok(());
                        }
                    }
                }
            }
        }
        (Scope::Account, _) => {
            for q in sel.list_queries(None) {
                if !pump(client, q, first_page, tx).await? {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// The reading end: objects one by one, waiting in short slices so the caller
/// can check for cancellation between them.
pub struct ObjectStream {
    rx: Receiver<PageResult>,
    page: std::vec::IntoIter<Value>,
    done: bool,
}

impl ObjectStream {
    /// Starts reading `sel` on a new thread created by `spawn` (the caller decides
    /// how threads are made, e.g. with signals blocked inside Postgres).
    pub fn start(
        client: Client,
        sel: Selection,
        parallelism: usize,
        first_page: Option<u32>,
        spawn: impl FnOnce(Box<dyn FnOnce() + Send>) -> std::io::Result<()>,
    ) -> Result<ObjectStream, StripeError> {
        let (tx, rx) = sync_channel(CHANNEL_PAGES);
        let job = Box::new(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ =
                        tx.send(Err(StripeError::Config { message: format!("cannot start the HTTP runtime: {e}") }));
                    return;
                }
            };
            rt.block_on(produce(client, sel, parallelism, first_page, tx));
        });
        spawn(job).map_err(|e| StripeError::Config { message: format!("cannot start the fetching thread: {e}") })?;
        Ok(ObjectStream { rx, page: Vec::new().into_iter(), done: false })
    }

    /// The next object; `check` runs every `tick` while waiting (it may raise a
    /// cancellation, which drops the stream and stops the fetching thread).
    pub fn next(&mut self, tick: Duration, mut check: impl FnMut()) -> Result<Option<Value>, StripeError> {
        loop {
            if let Some(v) = self.page.next() {
                return Ok(Some(v));
            }
            if self.done {
                return Ok(None);
            }
            match self.rx.recv_timeout(tick) {
                Ok(Ok(page)) if page.is_empty() => self.done = true,
                Ok(Ok(page)) => self.page = page.into_iter(),
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(RecvTimeoutError::Timeout) => check(),
                // the thread went away without the end marker: the rows are incomplete
                Err(RecvTimeoutError::Disconnected) => {
                    self.done = true;
                    return Err(StripeError::Unfinished {
                        message: "the fetching thread stopped without finishing the scan".into(),
                    });
                }
            }
        }
    }
}
