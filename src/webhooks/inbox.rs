//! The inbox: verified events are stored first (idempotent on event id), then
//! applied in batches by the same rules as refreshes. One code path for the
//! worker's listener and `stripe_sync.receive_webhook`.

use crate::apply::{EventEffects, Target, table_of};
use crate::error::SyncError;
use crate::{source, threads};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use stripe_core::resources::{self, RESOURCES, Scope};
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
    if event_type == "customer.deleted" {
        out.extend(RESOURCES.iter().filter(|r| r.scope == Scope::PerCustomer));
    }
    out
}

/// Applies up to `limit` pending events (oldest first). HTTP (completing
/// truncated lists, settling same-second versions) runs off this thread while
/// `check` runs every 100 ms. Returns (applied, skipped).
pub fn apply_pending(limit: i64, mut check: impl FnMut()) -> Result<(i64, i64), SyncError> {
    // 1. read a batch
    let pending: Vec<(String, String, String, Value)> = Spi::connect(|c| {
        let mut out = Vec::new();
        for row in c.select(
            "SELECT source, event_id, type, payload FROM stripe_sync._inbox WHERE status = 'pending' ORDER BY created, received_at LIMIT $1",
            None,
            &[limit.into()],
        )? {
            if let (Some(s), Some(id), Some(t), Some(p)) = (row.get::<String>(1)?, row.get::<String>(2)?, row.get::<String>(3)?, row.get::<JsonB>(4)?) {
                out.push((s, id, t, p.0));
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)?;
    if pending.is_empty() {
        return Ok((0, 0));
    }
    // 2. per source and resource, the events that change it
    let mut groups: BTreeMap<(String, &'static str), Vec<Value>> = BTreeMap::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    let mut applied: Vec<(String, String)> = Vec::new();
    for (src, id, t, payload) in &pending {
        let rs = touched(t);
        if rs.is_empty() || payload.get("data").and_then(|d| d.get("object")).and_then(|o| o.get("id")).is_none() {
            skipped.push((src.clone(), id.clone()));
            continue;
        }
        for r in rs {
            groups.entry((src.clone(), r.name)).or_default().push(payload.clone());
        }
        applied.push((src.clone(), id.clone()));
    }
    // complete truncated nested lists from the API
    let mut clients: HashMap<String, stripe_core::Client> = HashMap::new();
    for ((src, rname), events) in groups.iter_mut() {
        let r = resources::lookup(rname).map_err(|e| SyncError::invalid(e.to_string()))?;
        let needs = |e: &Value| {
            let obj = e.get("data").and_then(|d| d.get("object"));
            obj.and_then(|o| o.get("object")).and_then(Value::as_str) == Some(r.object)
                && r.nested_lists.iter().any(|f| {
                    obj.and_then(|o| o.get(*f)).and_then(|l| l.get("has_more")).and_then(Value::as_bool) == Some(true)
                })
        };
        if !events.iter().any(needs) {
            continue;
        }
        if !clients.contains_key(src) {
            clients.insert(src.clone(), source::client_for_source(src)?);
        }
        let client = clients[src].clone();
        let todo: Vec<(usize, Value)> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| needs(e))
            .map(|(i, e)| (i, e["data"]["object"].clone()))
            .collect();
        let done = threads::block_on(
            async move {
                let mut out = Vec::new();
                for (i, mut obj) in todo {
                    sync::complete_nested(&client, r, &mut obj).await?;
                    out.push((i, obj));
                }
                Ok::<_, stripe_core::StripeError>(out)
            },
            &mut check,
        )
        .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))??;
        for (i, obj) in done {
            events[i]["data"]["object"] = obj;
        }
    }
    // 3. apply and mark, in one transaction
    let mut ties: Vec<(String, &'static resources::Resource, Vec<String>)> = Vec::new();
    Spi::connect_mut(|c| {
        for ((src, rname), events) in &groups {
            let r = resources::lookup(rname).map_err(|e| SyncError::invalid(e.to_string()))?;
            let (schema, table) = table_of(src, r)?;
            let target = Target::new(r, src, &schema, &table);
            let (up, _) = EventEffects::of(r, events).apply(&target, c)?;
            if !up.ties.is_empty() {
                ties.push((src.clone(), r, up.ties));
            }
        }
        for (status, list) in [("applied", &applied), ("skipped", &skipped)] {
            let (srcs, ids): (Vec<String>, Vec<String>) = list.iter().cloned().unzip();
            c.update(
                "UPDATE stripe_sync._inbox i SET status = $1, applied_at = clock_timestamp()
                 FROM unnest($2::text[], $3::text[]) AS x(source, event_id)
                 WHERE i.source = x.source AND i.event_id = x.event_id AND i.status = 'pending'",
                None,
                &[status.into(), srcs.into(), ids.into()],
            )
            .map_err(spi_err)?;
        }
        let mut per_source: HashMap<&str, (i64, i64)> = HashMap::new();
        for (s, _) in &applied {
            per_source.entry(s.as_str()).or_default().0 += 1;
        }
        for (s, _) in &skipped {
            per_source.entry(s.as_str()).or_default().1 += 1;
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
    // 4. same-second versions: what Stripe has now wins
    for (src, r, ids) in ties {
        let client = match clients.get(&src) {
            Some(c) => c.clone(),
            None => source::client_for_source(&src)?,
        };
        let fetched = threads::block_on(async move { sync::fetch_current(&client, r, ids).await }, &mut check)
            .map_err(|e| SyncError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))??;
        let (schema, table) = table_of(&src, r)?;
        let target = Target::new(r, &src, &schema, &table);
        Spi::connect_mut(|c| target.write_fetched(c, fetched, "fetch:tie"))?;
    }
    Ok((applied.len() as i64, skipped.len() as i64))
}
