//! What a batch of versions and deletions writes, decided without Postgres:
//! the newest version of each object, the versions that cannot be ordered (ties,
//! settled by a fetch), and what a batch of events does to one resource's table.
//! The SQL that writes the plan lives in the extension (`src/apply.rs`); the
//! rules here are the ones every path shares (refresh pages, events, fetches).
//!
//! - Of two versions of one object, the one with the newer stamp (Stripe's
//!   clock, whole seconds) wins.
//! - Two different versions of the same second cannot be ordered: the object is
//!   a tie, fetched again after both arrived. A fetched version (`fetch:`) wins
//!   the ties of its second.
//! - A version older than a deletion in the same batch is dropped; one of the
//!   deletion's second is a tie.

use crate::resources::{self, EventEffect, Resource};
use serde_json::Value;
use std::collections::HashMap;

/// One version of an object to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub object: Value,
    /// Stripe's clock of this version (unix seconds).
    pub stamp: i64,
    /// What wrote it (`refresh:full`, `event:evt_...`, `fetch:...`).
    pub by: String,
}

impl Version {
    /// The object's id ("" when it has none).
    pub fn id(&self) -> &str {
        self.object.get("id").and_then(Value::as_str).unwrap_or("")
    }

    fn fetched(&self) -> bool {
        self.by.starts_with("fetch")
    }
}

/// An object with two different versions of the same stamp: its id and that
/// stamp. A fetch sent after both arrived reads a state at least that new.
pub type Tie = (String, i64);

/// Adds a tie unless the object has one already.
pub fn add_tie(ties: &mut Vec<Tie>, tie: Tie) {
    if !ties.iter().any(|(id, _)| *id == tie.0) {
        ties.push(tie);
    }
}

/// The newest version of each object among versions added in arrival order,
/// and the objects whose newest second holds two different versions.
#[derive(Debug, Default)]
pub struct Newest {
    by_id: HashMap<String, Version>,
    ties: Vec<Tie>,
}

impl Newest {
    /// Adds a version that arrived after every one added before.
    pub fn add(&mut self, v: Version) {
        let id = v.id().to_string();
        match self.by_id.get_mut(&id) {
            Some(old) if old.stamp > v.stamp => {}
            Some(old) if old.stamp == v.stamp && old.object != v.object => {
                if !old.fetched() && !v.fetched() {
                    add_tie(&mut self.ties, (id, v.stamp));
                }
                if !old.fetched() {
                    *old = v;
                }
            }
            Some(old) => *old = v,
            None => {
                self.by_id.insert(id, v);
            }
        }
    }

    /// How many objects it holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The newest version of `id`.
    pub fn get(&self, id: &str) -> Option<&Version> {
        self.by_id.get(id)
    }

    /// Drops the versions `keep` refuses.
    pub fn retain(&mut self, mut keep: impl FnMut(&Version) -> bool) {
        self.by_id.retain(|_, v| keep(v));
    }

    /// The versions in id order (every writer locks rows in id order, so two
    /// writers never deadlock), and the ties.
    pub fn into_parts(self) -> (Vec<Version>, Vec<Tie>) {
        let mut versions: Vec<Version> = self.by_id.into_values().collect();
        versions.sort_unstable_by(|a, b| a.id().cmp(b.id()));
        (versions, self.ties)
    }
}

impl FromIterator<Version> for Newest {
    fn from_iter<I: IntoIterator<Item = Version>>(versions: I) -> Newest {
        let mut n = Newest::default();
        for v in versions {
            n.add(v);
        }
        n
    }
}

/// What a batch of events (added oldest first) does to one resource's table.
#[derive(Debug, Default)]
pub struct EventEffects {
    /// The newest version per object.
    pub versions: Newest,
    /// Deleted (or detached) objects, with the event's time.
    pub gone: Vec<(String, i64)>,
    /// Deleted customers, whose rows go too (per-customer resources).
    pub gone_customers: Vec<(String, i64)>,
    /// Objects of events rendered in another API version than the source's
    /// (typed columns such as invoice `subscription` moved between versions),
    /// and objects events name without carrying them ([`EventEffect::Fetch`]):
    /// fetched instead, with the event's time.
    pub refetch: Vec<(String, i64)>,
    /// Events added, of any resource.
    pub events: usize,
    /// The newest event time added.
    pub newest: Option<i64>,
    /// The last event added: (created, id).
    pub last: Option<(i64, String)>,
}

impl EventEffects {
    /// The effects on `r` of these events; events of other resources are ignored.
    pub fn of(r: &Resource, events: &[Value], api_version: &str) -> EventEffects {
        let mut fx = EventEffects::default();
        for e in events {
            fx.add(r, e.clone(), api_version);
        }
        fx
    }

    /// Adds an event that is newer in Stripe's order than every one added.
    /// `api_version` is the version the source reads in: an object rendered in
    /// another one is fetched again rather than written as delivered.
    pub fn add(&mut self, r: &Resource, mut e: Value, api_version: &str) {
        self.events += 1;
        let stamp = e.get("created").and_then(Value::as_i64).unwrap_or(0);
        let (Some(t), Some(id)) = (e.get("type").and_then(Value::as_str), e.get("id").and_then(Value::as_str)) else {
            return;
        };
        self.newest = self.newest.max(Some(stamp));
        self.last = Some((stamp, id.to_string()));
        let (t, id) = (t.to_string(), id.to_string());
        let version = e.get("api_version").and_then(Value::as_str).map(str::to_string);
        let Some(oid) = resources::event_subject(&e).map(str::to_string) else { return };
        let Some(obj) = e.get_mut("data").and_then(|d| d.get_mut("object")).map(Value::take) else { return };
        match resources::by_event(&t) {
            Some((res, EventEffect::Upsert)) if res.name == r.name => match version {
                Some(v) if v != api_version => add_latest(&mut self.refetch, oid, stamp),
                _ => self.versions.add(Version { object: obj, stamp, by: format!("event:{id}") }),
            },
            Some((res, EventEffect::Delete | EventEffect::Detach)) if res.name == r.name => {
                self.gone.push((oid, stamp))
            }
            Some((res, EventEffect::Fetch)) if res.name == r.name => add_latest(&mut self.refetch, oid, stamp),
            _ if r.parent().is_some_and(|p| p.deleted_event == t) => self.gone_customers.push((oid, stamp)),
            _ => {}
        }
    }

    /// Whether nothing is to be written to the table.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.gone.is_empty() && self.gone_customers.is_empty() && self.refetch.is_empty()
    }

    /// The plan: versions not older than a deletion in the batch, the objects to
    /// fetch (versions of a deletion's second, and objects rendered in another
    /// API version, unless a newer deletion removes them anyway), and deletions.
    pub fn plan(self) -> EventPlan {
        let EventEffects { mut versions, gone, gone_customers, refetch, .. } = self;
        let newest_deletion = |id: &str| gone.iter().filter(|(g, _)| g == id).map(|(_, s)| *s).max();
        let mut fetch: Vec<Tie> = Vec::new();
        versions.retain(|v| match newest_deletion(v.id()) {
            Some(s) if s == v.stamp => {
                fetch.push((v.id().to_string(), s));
                false
            }
            Some(s) => s < v.stamp,
            None => true,
        });
        for (id, stamp) in refetch {
            if newest_deletion(&id).is_none_or(|s| s <= stamp) && versions.get(&id).is_none_or(|v| v.stamp < stamp) {
                add_tie(&mut fetch, (id, stamp));
            }
        }
        EventPlan { versions, fetch, gone, gone_customers }
    }
}

/// Keeps one entry per id, at its latest time.
fn add_latest(list: &mut Vec<(String, i64)>, id: String, stamp: i64) {
    match list.iter_mut().find(|(i, _)| *i == id) {
        Some(e) => e.1 = e.1.max(stamp),
        None => list.push((id, stamp)),
    }
}

/// What to write for a batch of events: see [`EventEffects::plan`].
#[derive(Debug)]
pub struct EventPlan {
    pub versions: Newest,
    /// Objects to fetch, with the time the fetch must be at least as new as.
    pub fetch: Vec<Tie>,
    pub gone: Vec<(String, i64)>,
    pub gone_customers: Vec<(String, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(id: &str, name: &str, stamp: i64, by: &str) -> Version {
        Version { object: json!({"id": id, "name": name}), stamp, by: by.into() }
    }

    fn ev(id: &str, t: &str, oid: &str, name: &str, created: i64) -> Value {
        json!({"id": id, "type": t, "created": created, "api_version": crate::API_VERSION,
               "data": {"object": {"id": oid, "object": "customer", "name": name}}})
    }

    #[test]
    fn the_newest_version_wins_in_any_arrival_order_and_a_second_with_two_versions_is_a_tie() {
        let a = [v("cus_1", "A", 100, "event:e1"), v("cus_1", "A", 300, "event:e3"), v("cus_1", "B", 200, "event:e2")];
        // every order of the three ends with the newest (T+300) and no tie
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let n: Newest = order.iter().map(|&i| a[i].clone()).collect();
            let (versions, ties) = n.into_parts();
            assert_eq!(versions, vec![a[1].clone()], "order {order:?}");
            assert!(ties.is_empty());
        }
        // two different versions of one second: a tie; the same content twice is not
        let (_, ties) =
            [v("cus_1", "A", 5, "event:x"), v("cus_1", "B", 5, "event:y")].into_iter().collect::<Newest>().into_parts();
        assert_eq!(ties, vec![("cus_1".to_string(), 5)]);
        let (_, ties) =
            [v("cus_1", "A", 5, "event:x"), v("cus_1", "A", 5, "event:y")].into_iter().collect::<Newest>().into_parts();
        assert!(ties.is_empty());
        // a fetch wins the ties of its second, whichever came first
        for order in [[0, 1], [1, 0]] {
            let both = [v("cus_1", "A", 5, "event:x"), v("cus_1", "F", 5, "fetch:t")];
            let (versions, ties) = order.iter().map(|&i| both[i].clone()).collect::<Newest>().into_parts();
            assert_eq!(versions[0].by, "fetch:t");
            assert!(ties.is_empty());
        }
    }

    #[test]
    fn versions_come_out_in_id_order() {
        let n: Newest = ["cus_c", "cus_a", "cus_b"].iter().map(|id| v(id, "x", 1, "refresh:full")).collect();
        let ids: Vec<String> = n.into_parts().0.iter().map(|v| v.id().to_string()).collect();
        assert_eq!(ids, ["cus_a", "cus_b", "cus_c"]);
    }

    #[test]
    fn a_deletion_drops_older_versions_keeps_newer_ones_and_ties_its_own_second() {
        let r = crate::lookup("customer").unwrap();
        let events = [
            ev("evt_1", "customer.updated", "cus_old", "A", 10),
            ev("evt_2", "customer.deleted", "cus_old", "A", 20),
            ev("evt_3", "customer.updated", "cus_same", "A", 30),
            ev("evt_4", "customer.deleted", "cus_same", "A", 30),
            ev("evt_5", "customer.deleted", "cus_new", "A", 40),
            ev("evt_6", "customer.created", "cus_new", "B", 50),
            // deleted twice in one batch: one plan, no error
            ev("evt_7", "customer.deleted", "cus_twice", "A", 60),
            ev("evt_8", "customer.deleted", "cus_twice", "A", 61),
        ];
        let fx = EventEffects::of(r, &events, crate::API_VERSION);
        assert_eq!((fx.events, fx.newest, fx.last.clone()), (8, Some(61), Some((61, "evt_8".to_string()))));
        let plan = fx.plan();
        let (versions, _) = plan.versions.into_parts();
        assert_eq!(versions.iter().map(|v| v.id()).collect::<Vec<_>>(), ["cus_new"]);
        assert_eq!(plan.fetch, vec![("cus_same".to_string(), 30)]);
        assert_eq!(plan.gone.len(), 5);
    }

    #[test]
    fn an_event_in_another_api_version_is_fetched_unless_something_newer_decides() {
        let r = crate::lookup("customer").unwrap();
        let mut old = ev("evt_1", "customer.updated", "cus_1", "A", 10);
        old["api_version"] = json!("2020-08-27");
        let plan = EventEffects::of(r, std::slice::from_ref(&old), crate::API_VERSION).plan();
        assert!(plan.versions.is_empty());
        assert_eq!(plan.fetch, vec![("cus_1".to_string(), 10)]);
        // a newer version in the pinned version decides: no fetch
        let plan =
            EventEffects::of(r, &[old.clone(), ev("evt_2", "customer.updated", "cus_1", "B", 11)], crate::API_VERSION)
                .plan();
        assert!(plan.fetch.is_empty());
        // a newer deletion decides too
        let plan =
            EventEffects::of(r, &[old, ev("evt_2", "customer.deleted", "cus_1", "B", 11)], crate::API_VERSION).plan();
        assert!(plan.fetch.is_empty());
    }

    #[test]
    fn events_of_other_resources_change_nothing_but_a_customer_deletion_reaches_its_children() {
        let pm = crate::lookup("customer_payment_method").unwrap();
        let events =
            [ev("evt_1", "customer.updated", "cus_1", "A", 10), ev("evt_2", "customer.deleted", "cus_1", "A", 11)];
        let fx = EventEffects::of(pm, &events, crate::API_VERSION);
        assert!(fx.versions.is_empty() && fx.gone.is_empty());
        assert_eq!(fx.gone_customers, vec![("cus_1".to_string(), 11)]);
    }

    /// `account.application.*` of a connected account, as a Connect endpoint
    /// delivers it: the object is the platform's application.
    fn access(id: &str, t: &str, account: Option<&str>, created: i64) -> Value {
        let mut e = json!({"id": id, "type": t, "created": created, "api_version": crate::API_VERSION,
                           "data": {"object": {"id": "ca_platform", "object": "application", "name": "platform"}}});
        if let Some(a) = account {
            e["account"] = json!(a);
        }
        e
    }

    #[test]
    fn a_grant_of_access_fetches_the_account_and_a_revocation_deletes_it_unless_newer() {
        let accounts = crate::lookup(crate::resources::CONNECTED_ACCOUNTS).unwrap();
        let granted = access("evt_1", crate::resources::ACCOUNT_AUTHORIZED_EVENT, Some("acct_1"), 10);
        let plan = EventEffects::of(accounts, std::slice::from_ref(&granted), crate::API_VERSION).plan();
        assert!(plan.versions.is_empty() && plan.gone.is_empty());
        assert_eq!(plan.fetch, vec![("acct_1".to_string(), 10)], "the account, not the application");
        // revoked after it: the row goes, nothing to fetch
        let revoked = access("evt_2", crate::resources::ACCOUNT_DEAUTHORIZED_EVENT, Some("acct_1"), 11);
        let plan = EventEffects::of(accounts, &[granted.clone(), revoked.clone()], crate::API_VERSION).plan();
        assert!(plan.fetch.is_empty());
        assert_eq!(plan.gone, vec![("acct_1".to_string(), 11)]);
        // granted again after that: fetched (the fetch is as new as the grant)
        let again = access("evt_3", crate::resources::ACCOUNT_AUTHORIZED_EVENT, Some("acct_1"), 12);
        let plan = EventEffects::of(accounts, &[revoked, again], crate::API_VERSION).plan();
        assert_eq!(plan.fetch, vec![("acct_1".to_string(), 12)]);
        // no other table hears of it; and without `account` (an account's own
        // endpoint hearing of an application it authorized) nothing is about a row
        let customers = crate::lookup("customer").unwrap();
        assert!(EventEffects::of(customers, std::slice::from_ref(&granted), crate::API_VERSION).is_empty());
        let own = access("evt_4", crate::resources::ACCOUNT_AUTHORIZED_EVENT, None, 13);
        assert_eq!(crate::resources::event_subject(&own), None);
        assert!(EventEffects::of(accounts, &[own], crate::API_VERSION).is_empty());
    }
}
