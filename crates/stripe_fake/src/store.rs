//! The fake's in-memory state: one ordered collection per object type, newest
//! first like Stripe's lists, with an index by customer for per-customer lists.

use serde_json::Value;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

/// Sort key: newest `created` first, then newest insertion first.
pub type Key = (Reverse<i64>, Reverse<u64>);

/// How a list filter compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// String equality with the value at the path.
    Eq,
    /// `true`/`false` against a JSON boolean.
    Bool,
}

/// What one collection is and how Stripe lists it.
#[derive(Debug)]
pub struct Kind {
    /// Collection name in URLs (`customers`).
    pub path: &'static str,
    /// `object` field of its objects.
    pub object: &'static str,
    pub prefix: &'static str,
    /// Field `created` filters apply to.
    pub created_field: &'static str,
    /// List filters: parameter, JSON path, comparison.
    pub filters: &'static [(&'static str, &'static str, Match)],
}

pub static KINDS: &[Kind] = &[
    Kind { path: "accounts", object: "account", prefix: "acct_", created_field: "created", filters: &[] },
    Kind {
        path: "balance_transactions",
        object: "balance_transaction",
        prefix: "txn_",
        created_field: "created",
        filters: &[
            ("currency", "currency", Match::Eq),
            ("source", "source", Match::Eq),
            ("type", "type", Match::Eq),
            ("payout", "payout", Match::Eq),
        ],
    },
    Kind {
        path: "charges",
        object: "charge",
        prefix: "ch_",
        created_field: "created",
        filters: &[("customer", "customer", Match::Eq), ("payment_intent", "payment_intent", Match::Eq)],
    },
    Kind {
        path: "credit_notes",
        object: "credit_note",
        prefix: "cn_",
        created_field: "created",
        filters: &[("customer", "customer", Match::Eq), ("invoice", "invoice", Match::Eq)],
    },
    Kind {
        path: "customers",
        object: "customer",
        prefix: "cus_",
        created_field: "created",
        filters: &[("email", "email", Match::Eq)],
    },
    Kind {
        path: "customer_balance_transactions",
        object: "customer_balance_transaction",
        prefix: "cbtxn_",
        created_field: "created",
        filters: &[("invoice", "invoice", Match::Eq)],
    },
    Kind {
        path: "payment_methods",
        object: "payment_method",
        prefix: "pm_",
        created_field: "created",
        filters: &[("type", "type", Match::Eq), ("customer", "customer", Match::Eq)],
    },
    Kind {
        path: "disputes",
        object: "dispute",
        prefix: "dp_",
        created_field: "created",
        filters: &[("charge", "charge", Match::Eq), ("payment_intent", "payment_intent", Match::Eq)],
    },
    Kind {
        path: "invoices",
        object: "invoice",
        prefix: "in_",
        created_field: "created",
        filters: &[
            ("customer", "customer", Match::Eq),
            ("status", "status", Match::Eq),
            ("subscription", "parent.subscription_details.subscription", Match::Eq),
            ("collection_method", "collection_method", Match::Eq),
        ],
    },
    Kind {
        path: "invoiceitems",
        object: "invoiceitem",
        prefix: "ii_",
        created_field: "date",
        filters: &[("customer", "customer", Match::Eq), ("invoice", "invoice", Match::Eq)],
    },
    Kind {
        path: "payouts",
        object: "payout",
        prefix: "po_",
        created_field: "created",
        filters: &[("status", "status", Match::Eq), ("destination", "destination", Match::Eq)],
    },
    Kind {
        path: "prices",
        object: "price",
        prefix: "price_",
        created_field: "created",
        filters: &[
            ("active", "active", Match::Bool),
            ("currency", "currency", Match::Eq),
            ("product", "product", Match::Eq),
            ("type", "type", Match::Eq),
        ],
    },
    Kind {
        path: "products",
        object: "product",
        prefix: "prod_",
        created_field: "created",
        filters: &[
            ("active", "active", Match::Bool),
            ("shippable", "shippable", Match::Bool),
            ("type", "type", Match::Eq),
        ],
    },
    Kind {
        path: "refunds",
        object: "refund",
        prefix: "re_",
        created_field: "created",
        filters: &[("charge", "charge", Match::Eq), ("payment_intent", "payment_intent", Match::Eq)],
    },
    Kind {
        path: "subscriptions",
        object: "subscription",
        prefix: "sub_",
        created_field: "created",
        filters: &[("customer", "customer", Match::Eq), ("collection_method", "collection_method", Match::Eq)],
    },
    Kind { path: "events", object: "event", prefix: "evt_", created_field: "created", filters: &[] },
    Kind {
        path: "webhook_endpoints",
        object: "webhook_endpoint",
        prefix: "we_",
        created_field: "created",
        filters: &[],
    },
];

pub fn kind(path: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.path == path)
}

pub fn kind_of_object(object: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.object == object)
}

/// Reads a dotted path.
pub fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, p| v.get(p))
}

/// One collection, ordered newest first.
#[derive(Default)]
pub struct Collection {
    objects: BTreeMap<Key, Value>,
    keys: HashMap<String, Key>,
    by_customer: HashMap<String, BTreeSet<Key>>,
}

/// A page query on a collection.
#[derive(Debug, Default, Clone)]
pub struct ListParams {
    pub limit: usize,
    pub starting_after: Option<Key>,
    pub ending_before: Option<Key>,
    /// Inclusive bounds on the created field.
    pub created: (i64, i64),
    pub customer: Option<String>,
}

impl Collection {
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Value> {
        self.keys.get(id).and_then(|k| self.objects.get(k))
    }

    pub fn key_of(&self, id: &str) -> Option<Key> {
        self.keys.get(id).copied()
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Value> {
        let k = self.keys.get(id)?;
        self.objects.get_mut(k)
    }

    /// Inserts a new object (its created field and a sequence number order it).
    pub fn insert(&mut self, created: i64, seq: u64, obj: Value) {
        let id = obj["id"].as_str().expect("objects have ids").to_string();
        let key = (Reverse(created), Reverse(seq));
        if let Some(c) = obj.get("customer").and_then(Value::as_str) {
            self.by_customer.entry(c.to_string()).or_default().insert(key);
        }
        self.keys.insert(id, key);
        self.objects.insert(key, obj);
    }

    /// Replaces an object in place, keeping the customer index right.
    pub fn replace(&mut self, obj: Value) {
        let id = obj["id"].as_str().unwrap_or_default().to_string();
        let Some(key) = self.keys.get(&id).copied() else {
            return;
        };
        let old_customer =
            self.objects.get(&key).and_then(|o| o.get("customer")).and_then(Value::as_str).map(str::to_string);
        let new_customer = obj.get("customer").and_then(Value::as_str).map(str::to_string);
        if old_customer != new_customer {
            if let Some(c) = old_customer
                && let Some(set) = self.by_customer.get_mut(&c)
            {
                set.remove(&key);
            }
            if let Some(c) = new_customer {
                self.by_customer.entry(c).or_default().insert(key);
            }
        }
        self.objects.insert(key, obj);
    }

    pub fn remove(&mut self, id: &str) -> Option<Value> {
        let key = self.keys.remove(id)?;
        let obj = self.objects.remove(&key)?;
        if let Some(c) = obj.get("customer").and_then(Value::as_str)
            && let Some(set) = self.by_customer.get_mut(c)
        {
            set.remove(&key);
        }
        Some(obj)
    }

    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.objects.values()
    }

    /// One page: up to `limit` objects passing `keep`, newest first, and whether
    /// more exist in the paging direction.
    pub fn page(&self, p: &ListParams, created_field: &str, keep: &dyn Fn(&Value) -> bool) -> (Vec<&Value>, bool) {
        let (lo, hi) = p.created;
        let in_range = |v: &Value| {
            let c = v.get(created_field).and_then(Value::as_i64).unwrap_or(0);
            c >= lo && c <= hi
        };
        let hi_key: Key = (Reverse(hi), Reverse(u64::MAX));
        let lo_key: Key = (Reverse(lo), Reverse(0));
        let mut out = Vec::with_capacity(p.limit.min(100));
        let mut has_more = false;
        // the keys in range, in list order, as an iterator in the paging direction
        let keys: Box<dyn Iterator<Item = Key> + '_> = match (&p.customer, p.ending_before) {
            (Some(c), None) => {
                let set = self.by_customer.get(c);
                let start = p.starting_after.map(Bound::Excluded).unwrap_or(Bound::Included(hi_key));
                match set {
                    Some(s) if start_le(&start, &lo_key) => {
                        Box::new(s.range((start, Bound::Included(lo_key))).copied())
                    }
                    _ => Box::new(std::iter::empty()),
                }
            }
            (Some(c), Some(before)) => match self.by_customer.get(c) {
                Some(s) if hi_key < before => {
                    Box::new(s.range((Bound::Included(hi_key), Bound::Excluded(before))).rev().copied())
                }
                _ => Box::new(std::iter::empty()),
            },
            (None, None) => {
                let start = p.starting_after.map(Bound::Excluded).unwrap_or(Bound::Included(hi_key));
                if start_le(&start, &lo_key) {
                    Box::new(self.objects.range((start, Bound::Included(lo_key))).map(|(k, _)| *k))
                } else {
                    Box::new(std::iter::empty())
                }
            }
            (None, Some(before)) => {
                if hi_key < before {
                    Box::new(
                        self.objects.range((Bound::Included(hi_key), Bound::Excluded(before))).rev().map(|(k, _)| *k),
                    )
                } else {
                    Box::new(std::iter::empty())
                }
            }
        };
        for k in keys {
            let Some(v) = self.objects.get(&k) else {
                continue;
            };
            if !in_range(v) || !keep(v) {
                continue;
            }
            if out.len() == p.limit {
                has_more = true;
                break;
            }
            out.push(v);
        }
        if p.ending_before.is_some() {
            out.reverse();
        }
        (out, has_more)
    }
}

fn start_le(start: &Bound<Key>, end: &Key) -> bool {
    match start {
        Bound::Included(k) => k <= end,
        Bound::Excluded(k) => k < end,
        Bound::Unbounded => true,
    }
}

/// Every collection of one Stripe account. The platform's store also holds its
/// connected accounts' stores (Connect): a request with `Stripe-Account` sees
/// only that account's store.
#[derive(Default)]
pub struct Store {
    pub collections: HashMap<&'static str, Collection>,
    pub seq: u64,
    /// Deleted objects that retrieve still answers, as Stripe does (`{"id", "deleted": true}`).
    pub deleted: HashMap<String, Value>,
    /// Connected accounts' own stores by account id (platform store only).
    pub connected: BTreeMap<String, Store>,
}

impl Store {
    pub fn new() -> Store {
        let mut s = Store::default();
        for k in KINDS {
            s.collections.insert(k.path, Collection::default());
        }
        s
    }

    pub fn col(&self, path: &str) -> &Collection {
        self.collections.get(path).expect("known collection")
    }

    pub fn col_mut(&mut self, path: &str) -> &mut Collection {
        self.collections.get_mut(path).expect("known collection")
    }

    /// Inserts an object into the collection of its `object` type.
    pub fn add(&mut self, obj: Value) {
        let object = obj["object"].as_str().unwrap_or_default();
        let kind = kind_of_object(object).unwrap_or_else(|| panic!("no collection for {object}"));
        let created = obj.get(kind.created_field).and_then(Value::as_i64).unwrap_or(0);
        self.seq += 1;
        let seq = self.seq;
        self.col_mut(kind.path).insert(created, seq, obj);
    }

    /// Finds an object by id in any collection.
    pub fn find(&self, id: &str) -> Option<&Value> {
        let kind = KINDS.iter().find(|k| id.starts_with(k.prefix))?;
        self.col(kind.path).get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col_with(n: i64) -> Collection {
        let mut c = Collection::default();
        for i in 0..n {
            let cust = if i % 2 == 0 { "cus_even" } else { "cus_odd" };
            // two objects per second: ties on created are ordered by insertion
            c.insert(i / 2, i as u64, json!({"id": format!("x_{i}"), "created": i / 2, "customer": cust}));
        }
        c
    }

    fn ids(v: &[&Value]) -> Vec<String> {
        v.iter().map(|o| o["id"].as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn pages_newest_first_with_cursor_and_ranges() {
        let c = col_with(10);
        let all = |_: &Value| true;
        let p = ListParams { limit: 3, created: (i64::MIN, i64::MAX), ..Default::default() };
        let (page, more) = c.page(&p, "created", &all);
        assert_eq!(ids(&page), ["x_9", "x_8", "x_7"]);
        assert!(more);
        let p2 = ListParams { starting_after: c.key_of("x_7"), ..p.clone() };
        assert_eq!(ids(&c.page(&p2, "created", &all).0), ["x_6", "x_5", "x_4"]);
        let r = ListParams { limit: 100, created: (1, 2), ..Default::default() };
        let (page, more) = c.page(&r, "created", &all);
        assert_eq!(ids(&page), ["x_5", "x_4", "x_3", "x_2"]);
        assert!(!more);
        let before = ListParams {
            limit: 2,
            ending_before: c.key_of("x_4"),
            created: (i64::MIN, i64::MAX),
            ..Default::default()
        };
        let (page, more) = c.page(&before, "created", &all);
        assert_eq!(ids(&page), ["x_6", "x_5"]);
        assert!(more);
        let cust = ListParams {
            limit: 100,
            customer: Some("cus_odd".into()),
            created: (i64::MIN, i64::MAX),
            ..Default::default()
        };
        assert_eq!(ids(&c.page(&cust, "created", &all).0), ["x_9", "x_7", "x_5", "x_3", "x_1"]);
        let empty = ListParams { limit: 100, created: (5, 4), ..Default::default() };
        assert!(c.page(&empty, "created", &all).0.is_empty());
    }
}
