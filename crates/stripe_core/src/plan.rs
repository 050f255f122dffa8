//! Query planning: which `WHERE` conditions become Stripe requests, and what
//! requests a scan makes. Pure: the FDW turns Postgres quals into [`Cond`]s.
//!
//! Rules (Postgres rechecks every condition, so pushing a superset is always safe):
//! - `id = 'x'` / `id IN (...)` → one retrieve call per id;
//! - `created` comparisons → `created[gte|lte]` (inclusive bounds of whole seconds);
//! - `=` on a column with a list filter → that filter (enumerated filters only with
//!   values Stripe accepts);
//! - per-customer resources: `customer = 'cus_x'` → only that customer's list;
//! - anything else is left to Postgres.

use crate::paginate::{CreatedRange, ListQuery};
use crate::resources::{Resource, Scope};

/// A literal in a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Text(String),
    Int(i64),
    Bool(bool),
    /// A point in time, in unix seconds (may have a fraction).
    Time(f64),
    Null,
}

/// One `column op value` condition (`any` for `IN (...)` lists).
#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub column: String,
    pub op: String,
    pub values: Vec<Lit>,
    pub any: bool,
}

impl Cond {
    pub fn new(column: &str, op: &str, value: Lit) -> Cond {
        Cond { column: column.to_string(), op: op.to_string(), values: vec![value], any: false }
    }

    fn single(&self) -> Option<&Lit> {
        if !self.any && self.values.len() == 1 { self.values.first() } else { None }
    }
}

/// What to read of one resource.
#[derive(Debug, Clone)]
pub struct Selection {
    pub resource: &'static Resource,
    /// Only these ids (retrieve calls); `Some(vec![])` means no row can match.
    pub ids: Option<Vec<String>>,
    /// List filters (parameter, value).
    pub filters: Vec<(String, String)>,
    pub created: CreatedRange,
    /// Per-customer resources: only this customer's list.
    pub customer: Option<String>,
}

impl Selection {
    /// Everything of a resource.
    pub fn all(resource: &'static Resource) -> Selection {
        Selection { resource, ids: None, filters: Vec::new(), created: CreatedRange::default(), customer: None }
    }

    /// True when the conditions cannot match any object (no request needed).
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() || self.ids.as_ref().is_some_and(Vec::is_empty)
    }

    /// The list queries for an account-level resource (or one customer's list),
    /// with the parameter sets that together return every object.
    pub fn list_queries(&self, customer: Option<&str>) -> Vec<ListQuery> {
        let r = self.resource;
        let path = r.list_url_path(customer);
        let base = ListQuery { filters: self.filters.clone(), created: self.created, ..ListQuery::new(path) };
        let user_sets_variant =
            r.list_variants.iter().any(|v| v.iter().any(|(k, _)| self.filters.iter().any(|(f, _)| f == k)));
        if r.list_variants.is_empty() || user_sets_variant {
            return vec![base];
        }
        r.list_variants
            .iter()
            .map(|variant| {
                let mut q = base.clone();
                q.filters.extend(variant.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                q
            })
            .collect()
    }

    /// A one-line description of the Stripe requests, for EXPLAIN.
    pub fn describe(&self) -> String {
        let r = self.resource;
        if self.is_empty() {
            return "none (the conditions cannot match)".to_string();
        }
        if let Some(ids) = &self.ids {
            let path = retrieve_path(r, "{id}", self.customer.as_deref()).unwrap_or_default();
            return format!("GET {path} for {} id(s): {}", ids.len(), ids.join(", "));
        }
        let render = |q: &ListQuery| {
            let mut params = vec![format!("limit={}", q.limit)];
            params.extend(q.filters.iter().map(|(k, v)| format!("{k}={v}")));
            params.extend(q.created.params("created").into_iter().map(|(k, v)| format!("{k}={v}")));
            format!("GET {}?{}", q.path, params.join("&"))
        };
        match (r.parent(), &self.customer) {
            (Some(parent), None) => {
                let q = &self.list_queries(Some(&format!("{{{}}}", parent.column)))[0];
                format!(
                    "GET {} (every page), then for each {} {} (every page)",
                    parent.list_path(),
                    parent.resource,
                    render(q)
                )
            }
            (_, c) => self
                .list_queries(c.as_deref())
                .iter()
                .map(|q| format!("{} (every page)", render(q)))
                .collect::<Vec<_>>()
                .join("; then "),
        }
    }
}

/// The retrieve path of one object, if it can be retrieved with what is known.
pub fn retrieve_path(r: &Resource, id: &str, customer: Option<&str>) -> Option<String> {
    match (r.scope, customer) {
        (Scope::Account, _) => Some(r.retrieve_url_path(id, None)),
        (Scope::PerCustomer, Some(c)) => Some(r.retrieve_url_path(id, Some(c))),
        (Scope::PerCustomer, None) => r.retrieve_alone.map(|p| p.replace("{id}", &crate::resources::path_segment(id))),
    }
}

/// The plan of a scan: what is read, and which conditions were pushed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub selection: Selection,
    /// Indexes of the conditions fully expressed in the requests.
    pub pushed: Vec<usize>,
}

impl Plan {
    /// Every condition was turned into a request parameter.
    pub fn fully_pushed(&self, conds: usize) -> bool {
        self.pushed.len() == conds
    }
}

/// Unix seconds → inclusive integer bounds for `created op t`.
fn bounds(op: &str, t: f64) -> Option<CreatedRange> {
    let whole = t.fract() == 0.0;
    let (fl, ce) = (t.floor() as i64, t.ceil() as i64);
    let r = |lo: Option<i64>, hi: Option<i64>| Some(CreatedRange { gte: lo, lte: hi, ..Default::default() });
    match op {
        "=" if whole => r(Some(fl), Some(fl)),
        "=" => r(Some(1), Some(0)), // a fractional instant never equals a whole second
        ">" => r(Some(if whole { fl + 1 } else { ce }), None),
        ">=" => r(Some(ce), None),
        "<" => r(None, Some(if whole { fl - 1 } else { fl })),
        "<=" => r(None, Some(fl)),
        _ => None,
    }
}

fn lit_text(l: &Lit) -> Option<String> {
    match l {
        Lit::Text(s) => Some(s.clone()),
        Lit::Bool(b) => Some(b.to_string()),
        Lit::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Whether a value can be a Stripe id (`cus_NffrFeUfNV2Hib`): letters, digits and
/// underscores. Anything else matches no object and is never put in a request
/// path (`../webhook_endpoints/we_1` must not become another GET).
pub fn is_stripe_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The `created[...]` parameters one `created op t` condition alone becomes
/// (for EXPLAIN, which shows where a bound came from).
pub fn created_params(op: &str, t: f64) -> Vec<(String, String)> {
    bounds(op, t).map(|b| b.params("created")).unwrap_or_default()
}

/// Plans a scan of `resource` under `conds`.
pub fn plan(resource: &'static Resource, conds: &[Cond]) -> Plan {
    let mut sel = Selection::all(resource);
    let mut pushed = Vec::new();
    // the customer of a per-customer resource is needed to place ids and lists
    if let Some(parent) = resource.parent() {
        for (i, c) in conds.iter().enumerate() {
            if c.column == parent.column
                && c.op == "="
                && let Some(Lit::Text(v)) = c.single()
            {
                match &sel.customer {
                    // not a customer id: nothing can match, and no path is built with it
                    _ if !is_stripe_id(v) => {
                        sel.ids = Some(Vec::new());
                        pushed.push(i);
                    }
                    None => {
                        sel.customer = Some(v.clone());
                        pushed.push(i);
                    }
                    Some(existing) if existing == v => pushed.push(i),
                    Some(_) => sel.ids = Some(Vec::new()), // two different customers: nothing matches
                }
            }
        }
    }
    for (i, c) in conds.iter().enumerate() {
        if pushed.contains(&i) {
            continue;
        }
        let ok = match (c.column.as_str(), c.op.as_str()) {
            ("id", "=") => {
                // values that cannot be Stripe ids match nothing: dropped before any request
                let ids: Option<Vec<String>> = c
                    .values
                    .iter()
                    .map(|v| if let Lit::Text(s) = v { Some(s.clone()) } else { None })
                    .collect::<Option<Vec<String>>>()
                    .map(|ids| ids.into_iter().filter(|id| is_stripe_id(id)).collect());
                match ids {
                    Some(ids) if retrieve_path(resource, "x", sel.customer.as_deref()).is_some() => {
                        sel.ids = Some(match sel.ids.take() {
                            None => ids,
                            Some(prev) => prev.into_iter().filter(|p| ids.contains(p)).collect(),
                        });
                        true
                    }
                    _ => false,
                }
            }
            ("created", op) if resource.created_filter => match c.single() {
                Some(Lit::Time(t)) => bounds(op, *t).map(|b| sel.created = sel.created.intersect(&b)).is_some(),
                Some(Lit::Int(t)) => bounds(op, *t as f64).map(|b| sel.created = sel.created.intersect(&b)).is_some(),
                _ => false,
            },
            (col, "=") => match (resource.column(col), c.single().and_then(lit_text)) {
                (Some(column), Some(v)) if column.filter.is_some() => {
                    let param = column.filter.unwrap_or_default();
                    let valid = column.filter_values.is_empty() || column.filter_values.contains(&v.as_str());
                    let already = sel.filters.iter().any(|(k, _)| k == param);
                    if valid && !already {
                        sel.filters.push((param.to_string(), v));
                        true
                    } else {
                        false
                    }
                }
                _ => false,
            },
            _ => false,
        };
        if ok {
            pushed.push(i);
        }
    }
    pushed.sort_unstable();
    Plan { selection: sel, pushed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::lookup;

    fn text(s: &str) -> Lit {
        Lit::Text(s.to_string())
    }

    #[test]
    fn id_equality_and_in_lists_become_retrieves() {
        let r = lookup("charge").unwrap();
        let p = plan(r, &[Cond::new("id", "=", text("ch_1"))]);
        assert_eq!(p.selection.ids, Some(vec!["ch_1".to_string()]));
        assert!(p.fully_pushed(1));
        let any = Cond { column: "id".into(), op: "=".into(), values: vec![text("ch_1"), text("ch_2")], any: true };
        let p = plan(r, &[any]);
        assert_eq!(p.selection.ids.as_ref().unwrap().len(), 2);
        assert_eq!(p.selection.describe(), "GET /v1/charges/{id} for 2 id(s): ch_1, ch_2");
        // two different ids: nothing can match
        let p = plan(r, &[Cond::new("id", "=", text("ch_1")), Cond::new("id", "=", text("ch_2"))]);
        assert!(p.selection.is_empty());
    }

    #[test]
    fn created_comparisons_become_inclusive_second_bounds() {
        let r = lookup("customer").unwrap();
        let p = plan(r, &[Cond::new("created", ">=", Lit::Time(100.0)), Cond::new("created", "<", Lit::Time(200.0))]);
        assert_eq!(p.selection.created.bounds(), (100, 199));
        assert!(p.fully_pushed(2));
        let p = plan(r, &[Cond::new("created", ">", Lit::Time(100.5)), Cond::new("created", "<=", Lit::Time(150.5))]);
        assert_eq!(p.selection.created.bounds(), (101, 150));
        let p = plan(r, &[Cond::new("created", ">", Lit::Time(100.0))]);
        assert_eq!(p.selection.created.bounds().0, 101);
        let p = plan(r, &[Cond::new("created", "=", Lit::Time(100.0))]);
        assert_eq!(p.selection.created.bounds(), (100, 100));
        let p = plan(r, &[Cond::new("created", "=", Lit::Time(100.25))]);
        assert!(p.selection.is_empty());
        let p = plan(r, &[Cond::new("created", "<>", Lit::Time(100.0))]);
        assert!(!p.fully_pushed(1));
        // payment methods have no created filter
        let pm = lookup("customer_payment_method").unwrap();
        assert!(plan(pm, &[Cond::new("created", ">", Lit::Time(1.0))]).pushed.is_empty());
    }

    #[test]
    fn equality_on_filter_columns_becomes_the_list_filter() {
        let r = lookup("charge").unwrap();
        let conds = [Cond::new("customer", "=", text("cus_x")), Cond::new("description", "=", text("x"))];
        let p = plan(r, &conds);
        assert_eq!(p.selection.filters, vec![("customer".to_string(), "cus_x".to_string())]);
        assert_eq!(p.pushed, vec![0]);
        assert!(!p.fully_pushed(2));
        assert_eq!(p.selection.describe(), "GET /v1/charges?limit=100&customer=cus_x (every page)");
    }

    #[test]
    fn enumerated_filters_are_pushed_only_with_values_stripe_accepts() {
        let r = lookup("subscription").unwrap();
        let p = plan(r, &[Cond::new("status", "=", text("active"))]);
        assert_eq!(p.selection.filters, vec![("status".to_string(), "active".to_string())]);
        // the user's status replaces the status=all variant
        assert_eq!(p.selection.list_queries(None).len(), 1);
        let p = plan(r, &[Cond::new("status", "=", text("Active"))]);
        assert!(p.pushed.is_empty());
        assert_eq!(p.selection.list_queries(None)[0].filters, vec![("status".to_string(), "all".to_string())]);
    }

    #[test]
    fn prices_list_both_active_and_inactive_unless_filtered() {
        let r = lookup("price").unwrap();
        let qs = Selection::all(r).list_queries(None);
        assert_eq!(qs.len(), 2);
        let p = plan(r, &[Cond::new("active", "=", Lit::Bool(false))]);
        let qs = p.selection.list_queries(None);
        assert_eq!(qs.len(), 1);
        assert_eq!(qs[0].filters, vec![("active".to_string(), "false".to_string())]);
    }

    #[test]
    fn values_that_cannot_be_ids_make_no_request() {
        let r = lookup("customer").unwrap();
        let p = plan(r, &[Cond::new("id", "=", text("../webhook_endpoints/we_1"))]);
        assert!(p.selection.is_empty());
        assert!(p.fully_pushed(1));
        let any = Cond {
            column: "id".into(),
            op: "=".into(),
            values: vec![text("cus_1"), text("cus_2?x=1"), text("")],
            any: true,
        };
        assert_eq!(plan(r, &[any]).selection.ids, Some(vec!["cus_1".to_string()]));
        let cbt = lookup("customer_balance_transaction").unwrap();
        assert!(plan(cbt, &[Cond::new("customer", "=", text("cus_1/../x"))]).selection.is_empty());
        assert!(is_stripe_id("cus_NffrFeUfNV2Hib") && !is_stripe_id("a b") && !is_stripe_id("a%2F"));
    }

    #[test]
    fn per_customer_resources_use_the_customer_condition() {
        let r = lookup("customer_balance_transaction").unwrap();
        let p = plan(r, &[Cond::new("customer", "=", text("cus_1"))]);
        assert_eq!(p.selection.customer.as_deref(), Some("cus_1"));
        assert_eq!(p.selection.list_queries(Some("cus_1"))[0].path, "/v1/customers/cus_1/balance_transactions");
        // an id without its customer cannot be retrieved: left to Postgres
        let p = plan(r, &[Cond::new("id", "=", text("cbtxn_1"))]);
        assert!(p.pushed.is_empty());
        assert!(p.selection.describe().starts_with("GET /v1/customers (every page), then for each customer"));
        let p = plan(r, &[Cond::new("id", "=", text("cbtxn_1")), Cond::new("customer", "=", text("cus_1"))]);
        assert_eq!(p.pushed, vec![0, 1]);
        let pm = lookup("customer_payment_method").unwrap();
        let p = plan(pm, &[Cond::new("id", "=", text("pm_1"))]);
        assert_eq!(p.selection.describe(), "GET /v1/payment_methods/{id} for 1 id(s): pm_1");
    }
}
