//! The Stripe endpoints: lists, retrieves, sub-lists, mutations that record
//! Events, and webhook endpoint management, with Stripe's envelopes and errors.

use crate::form::{self, list_param, str_param};
use crate::objects::{self, Rng};
use crate::store::{Key, Kind, ListParams, Match, Store, at, kind};
use crate::{Inner, connect, webhooks};
use serde_json::{Map, Value, json};

/// Who is calling (after authentication).
#[derive(Debug, Default, Clone)]
pub struct Caller {
    pub restricted: bool,
    pub idempotency_key: Option<String>,
    pub request_id: String,
    pub key_tail: String,
    /// `Stripe-Account`: act as this connected account (Connect).
    pub stripe_account: Option<String>,
}

/// Stripe's error envelope.
pub fn error_body(kind: &str, code: Option<&str>, message: &str, param: Option<&str>) -> String {
    let mut e = json!({"type": kind, "message": message});
    if let Some(c) = code {
        e["code"] = json!(c);
        e["doc_url"] = json!(format!("https://stripe.com/docs/error-codes/{}", c.replace('_', "-")));
    }
    if let Some(p) = param {
        e["param"] = json!(p);
    }
    json!({ "error": e }).to_string()
}

/// An error answer.
pub struct ApiErr(pub u16, pub String);

type ApiResult = Result<Value, ApiErr>;

fn invalid(message: &str, param: Option<&str>) -> ApiErr {
    ApiErr(400, error_body("invalid_request_error", None, message, param))
}

fn unrecognized(method: &str, segs: &[&str]) -> ApiErr {
    let msg = format!("Unrecognized request URL ({method}: /v1/{}).", segs.join("/"));
    ApiErr(404, error_body("invalid_request_error", None, &msg, None))
}

fn missing(object: &str, id: &str, param: &str) -> ApiErr {
    ApiErr(
        404,
        error_body(
            "invalid_request_error",
            Some("resource_missing"),
            &format!("No such {object}: '{id}'"),
            Some(param),
        ),
    )
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Stripe embeds at most this many items of a nested list.
pub const EMBEDDED_LIST_MAX: usize = 10;
/// Events older than this are gone from `/v1/events`.
pub const EVENT_RETENTION_SECS: i64 = 30 * 86_400;

/// What the API shows of a stored object: nested lists truncated to their first
/// page, internal fields (`_secret`) removed.
pub fn render(obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Value::Object(m) = &mut out {
        m.retain(|k, _| !k.starts_with('_'));
        for key in ["lines", "items"] {
            if let Some(Value::Object(list)) = m.get_mut(key)
                && let Some(Value::Array(data)) = list.get_mut("data")
                && data.len() > EMBEDDED_LIST_MAX
            {
                data.truncate(EMBEDDED_LIST_MAX);
                list.insert("has_more".into(), json!(true));
            }
        }
    }
    out
}

/// Handles one API request; returns status and JSON text.
pub fn handle(inner: &Inner, method: &str, path_q: &str, body: &str, caller: &Caller) -> (u16, String) {
    let (path, query) = path_q.split_once('?').unwrap_or((path_q, ""));
    let mut params = form::decode(query);
    if method == "POST"
        && let (Value::Object(p), Value::Object(b)) = (&mut params, form::decode(body))
    {
        p.extend(b);
    }
    // Idempotency: same key + same request replays the saved answer; a different
    // request with the same key is an error.
    let idem = if method == "POST" { caller.idempotency_key.clone() } else { None };
    let fingerprint = format!("{method} {path} {body}");
    if let Some(k) = &idem {
        let saved = inner.idempotency.lock().unwrap_or_else(|p| p.into_inner()).get(k).cloned();
        if let Some((fp, status, text)) = saved {
            if fp == fingerprint {
                return (status, text);
            }
            return (
                400,
                error_body(
                    "idempotency_error",
                    None,
                    &format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{k}' if you meant to execute a different request."
                    ),
                    None,
                ),
            );
        }
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match segs.first() {
        Some(&"v1") => route(inner, method, &segs[1..], &params, caller),
        _ => Err(ApiErr(
            404,
            error_body("invalid_request_error", None, &format!("Unrecognized request URL ({method}: {path})."), None),
        )),
    };
    let (status, text) = match result {
        Ok(v) => (200, v.to_string()),
        Err(ApiErr(s, t)) => (s, t),
    };
    if let Some(k) = idem
        && (status == 200 || status >= 500)
    {
        inner.idempotency.lock().unwrap_or_else(|p| p.into_inner()).insert(k, (fingerprint, status, text.clone()));
    }
    (status, text)
}

fn route(inner: &Inner, method: &str, segs: &[&str], params: &Value, caller: &Caller) -> ApiResult {
    let mut guard = inner.store.lock().unwrap_or_else(|p| p.into_inner());
    let platform = &mut *guard;
    let account = connect::target(platform, caller)?;
    let connect_endpoints = match &account {
        Some(_) => connect::connect_endpoints(platform),
        None => Vec::new(),
    };
    let store = match &account {
        Some(a) => match (method, segs) {
            ("GET", ["account"]) => {
                return platform.col("accounts").get(a).map(render).ok_or_else(|| missing("account", a, "account"));
            }
            _ => platform.connected.get_mut(a).expect("connect::target checked it"),
        },
        None => match (method, segs) {
            ("POST", ["accounts"]) => return connect::create_account(inner, platform, params, caller),
            ("POST", ["accounts", id]) => return connect::update_account(inner, platform, id, params, caller),
            _ => platform,
        },
    };
    let mut m = Mutation { inner, caller, events: Vec::new() };
    let r = match (method, segs) {
        ("GET", ["account"]) => Ok(connect::platform_account()),
        ("GET", ["customers", cid, sub @ ("balance_transactions" | "payment_methods")]) => {
            if store.col("customers").get(cid).is_none() {
                return Err(missing("customer", cid, "customer"));
            }
            let col = if *sub == "balance_transactions" { "customer_balance_transactions" } else { "payment_methods" };
            let url = format!("/v1/customers/{cid}/{sub}");
            list(store, kind(col).expect("kind"), params, Some(cid), &url, &[])
        }
        ("GET", ["customers", cid, sub @ ("balance_transactions" | "payment_methods"), id]) => {
            let col = if *sub == "balance_transactions" { "customer_balance_transactions" } else { "payment_methods" };
            match store.col(col).get(id) {
                Some(o) if o["customer"] == *cid => Ok(render(o)),
                _ => Err(missing(
                    if *sub == "balance_transactions" { "customer balance transaction" } else { "payment_method" },
                    id,
                    "id",
                )),
            }
        }
        ("GET", ["invoices", id, "lines"]) => {
            sub_list(store, "invoices", id, "lines", params, &format!("/v1/invoices/{id}/lines"))
        }
        ("GET", ["credit_notes", id, "lines"]) => {
            sub_list(store, "credit_notes", id, "lines", params, &format!("/v1/credit_notes/{id}/lines"))
        }
        ("GET", ["subscription_items"]) => {
            let Some(sub) = str_param(params, "subscription") else {
                return Err(invalid("Missing required param: subscription.", Some("subscription")));
            };
            let sub = sub.to_string();
            sub_list(
                store,
                "subscriptions",
                &sub,
                "items",
                params,
                &format!("/v1/subscription_items?subscription={sub}"),
            )
        }
        ("GET", ["payment_methods"]) => {
            let Some(c) = str_param(params, "customer").map(str::to_string) else {
                return Err(invalid("You must provide a customer to list payment methods.", Some("customer")));
            };
            list(store, kind("payment_methods").expect("kind"), params, Some(&c), "/v1/payment_methods", &["customer"])
        }
        ("GET", ["events"]) => list_events(store, params),
        ("GET", ["events", id]) => match store.col("events").get(id) {
            Some(e) if e["created"].as_i64().unwrap_or(0) >= now() - EVENT_RETENTION_SECS => Ok(e.clone()),
            _ => Err(missing("event", id, "id")),
        },
        ("GET", [col]) if listable(col) => {
            let k = kind(col).expect("listable kinds exist");
            list(store, k, params, None, &format!("/v1/{col}"), &[])
        }
        ("GET", [col, id]) if kind(col).is_some() => {
            let k = kind(col).expect("checked");
            match store.col(col).get(id) {
                Some(o) => Ok(render(o)),
                None => match store.deleted.get(*id) {
                    Some(stub) => Ok(stub.clone()),
                    None => Err(missing(k.object, id, "id")),
                },
            }
        }
        ("POST", ["webhook_endpoints"]) => webhooks::create_endpoint(inner, store, params),
        ("POST", ["webhook_endpoints", id]) => webhooks::update_endpoint(store, id, params),
        ("DELETE", ["webhook_endpoints", id]) => match store.col_mut("webhook_endpoints").remove(id) {
            Some(_) => Ok(json!({"id": id, "object": "webhook_endpoint", "deleted": true})),
            None => Err(missing("webhook_endpoint", id, "id")),
        },
        ("POST", _) | ("DELETE", _) => m.mutate(store, method, segs, params),
        _ => Err(unrecognized(method, segs)),
    };
    let events = std::mem::take(&mut m.events);
    for (t, obj, prev) in events {
        let connected = account.as_deref().map(|a| (a, connect_endpoints.as_slice()));
        webhooks::emit(inner, store, connected, &t, obj, prev, caller);
    }
    r
}

fn listable(col: &str) -> bool {
    !matches!(col, "customer_balance_transactions" | "payment_methods" | "events") && kind(col).is_some()
}

fn parse_limit(params: &Value) -> Result<usize, ApiErr> {
    match params.get("limit") {
        None => Ok(10),
        Some(Value::String(s)) => match s.parse::<i64>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n as usize),
            Ok(_) => Err(invalid("Invalid integer: limit must be between 1 and 100.", Some("limit"))),
            Err(_) => Err(invalid(&format!("Invalid integer: {s}"), Some("limit"))),
        },
        _ => Err(invalid("Invalid integer", Some("limit"))),
    }
}

/// `created=<int>` or `created[gt|gte|lt|lte]=<int>`, as inclusive bounds.
fn parse_range(params: &Value, name: &str) -> Result<(i64, i64), ApiErr> {
    let bad = || {
        invalid(
            &format!("Invalid {name}: must be an integer Unix timestamp or a hash of gt, gte, lt, lte."),
            Some(name),
        )
    };
    let int = |v: &Value| v.as_str().and_then(|s| s.parse::<i64>().ok());
    match params.get(name) {
        None => Ok((i64::MIN, i64::MAX)),
        Some(v @ Value::String(_)) => {
            let t = int(v).ok_or_else(bad)?;
            Ok((t, t))
        }
        Some(Value::Object(m)) => {
            let (mut lo, mut hi) = (i64::MIN, i64::MAX);
            for (op, v) in m {
                let t = int(v).ok_or_else(bad)?;
                match op.as_str() {
                    "gt" => lo = lo.max(t.saturating_add(1)),
                    "gte" => lo = lo.max(t),
                    "lt" => hi = hi.min(t.saturating_sub(1)),
                    "lte" => hi = hi.min(t),
                    _ => {
                        return Err(invalid(&format!("Received unknown parameter: {name}[{op}]"), Some(name)));
                    }
                }
            }
            Ok((lo, hi))
        }
        _ => Err(bad()),
    }
}

fn check_known(params: &Value, allowed: &[&str]) -> Result<(), ApiErr> {
    if let Value::Object(m) = params {
        for k in m.keys() {
            if !allowed.contains(&k.as_str())
                && !["limit", "starting_after", "ending_before", "expand"].contains(&k.as_str())
            {
                return Err(invalid(&format!("Received unknown parameter: {k}"), Some(k)));
            }
        }
    }
    Ok(())
}

fn cursor(store: &Store, col: &str, object: &str, params: &Value, name: &str) -> Result<Option<Key>, ApiErr> {
    match str_param(params, name) {
        None => Ok(None),
        Some(id) => store.col(col).key_of(id).map(Some).ok_or_else(|| {
            ApiErr(
                400,
                error_body(
                    "invalid_request_error",
                    Some("resource_missing"),
                    &format!("No such {object}: '{id}'"),
                    Some(name),
                ),
            )
        }),
    }
}

fn list_envelope(url: &str, data: Vec<Value>, has_more: bool) -> Value {
    json!({"object": "list", "data": data, "has_more": has_more, "url": url})
}

/// A list of one collection with Stripe's parameters and the kind's filters.
fn list(store: &Store, k: &Kind, params: &Value, customer: Option<&str>, url: &str, extra: &[&str]) -> ApiResult {
    let mut allowed: Vec<&str> = k.filters.iter().map(|f| f.0).collect();
    allowed.extend_from_slice(extra);
    if k.path != "payment_methods" && k.path != "webhook_endpoints" {
        allowed.push("created");
    }
    if k.path == "subscriptions" {
        allowed.push("status");
    }
    check_known(params, &allowed)?;
    let limit = parse_limit(params)?;
    if params.get("starting_after").is_some() && params.get("ending_before").is_some() {
        return Err(invalid(
            "You may only specify one of these parameters: starting_after, ending_before.",
            Some("starting_after"),
        ));
    }
    let lp = ListParams {
        limit,
        starting_after: cursor(store, k.path, k.object, params, "starting_after")?,
        ending_before: cursor(store, k.path, k.object, params, "ending_before")?,
        created: parse_range(params, "created")?,
        customer: customer.map(str::to_string),
    };
    // enumerated filters: Stripe refuses values outside the documented set
    const ENUMS: &[(&str, &str, &[&str])] = &[
        ("invoices", "status", &["draft", "open", "paid", "uncollectible", "void"]),
        ("payouts", "status", &["pending", "paid", "failed", "canceled"]),
        ("prices", "type", &["one_time", "recurring"]),
        (
            "subscriptions",
            "status",
            &[
                "active",
                "all",
                "canceled",
                "ended",
                "incomplete",
                "incomplete_expired",
                "past_due",
                "paused",
                "trialing",
                "unpaid",
            ],
        ),
        ("invoices", "collection_method", &["charge_automatically", "send_invoice"]),
        ("subscriptions", "collection_method", &["charge_automatically", "send_invoice"]),
    ];
    for (col, param, allowed) in ENUMS {
        if *col == k.path
            && let Some(v) = str_param(params, param)
            && !allowed.contains(&v)
        {
            return Err(invalid(&format!("Invalid {param}: must be one of {}", allowed.join(", ")), Some(param)));
        }
    }
    let mut wanted: Vec<(&str, String, Match)> = Vec::new();
    for (param, path, how) in k.filters {
        if *param == "customer" && customer.is_some() {
            continue;
        }
        if let Some(v) = params.get(*param) {
            let v = v.as_str().ok_or_else(|| invalid(&format!("Invalid {param}"), Some(param)))?;
            if *how == Match::Bool && v != "true" && v != "false" {
                return Err(invalid(&format!("Invalid boolean: {v}"), Some(param)));
            }
            wanted.push((path, v.to_string(), *how));
        }
    }
    // what a plain list leaves out
    let sub_status =
        if k.path == "subscriptions" { Some(str_param(params, "status").unwrap_or("").to_string()) } else { None };
    let only_active_prices = k.path == "prices" && params.get("active").is_none();
    let keep = |o: &Value| {
        for (path, v, how) in &wanted {
            let field = at(o, path);
            let ok = match how {
                Match::Eq => field.and_then(Value::as_str) == Some(v.as_str()),
                Match::Bool => field.and_then(Value::as_bool) == Some(v == "true"),
            };
            if !ok {
                return false;
            }
        }
        if let Some(s) = &sub_status {
            let st = o["status"].as_str().unwrap_or("");
            let ok = match s.as_str() {
                "" => st != "canceled" && st != "incomplete_expired",
                "all" => true,
                "ended" => st == "canceled" || st == "incomplete_expired",
                other => st == other,
            };
            if !ok {
                return false;
            }
        }
        !(only_active_prices && o["active"] != true)
    };
    let (page, has_more) = store.col(k.path).page(&lp, k.created_field, &keep);
    Ok(list_envelope(url, page.into_iter().map(render).collect(), has_more))
}

fn list_events(store: &Store, params: &Value) -> ApiResult {
    check_known(params, &["created", "type", "types", "delivery_success"])?;
    let limit = parse_limit(params)?;
    let types = list_param(params, "types");
    let one = str_param(params, "type").map(str::to_string);
    if one.is_some() && !types.is_empty() {
        return Err(invalid("You may only specify one of these parameters: type, types.", Some("type")));
    }
    if types.len() > 20 {
        return Err(invalid("types may contain at most 20 event types.", Some("types")));
    }
    let (lo, hi) = parse_range(params, "created")?;
    let lp = ListParams {
        limit,
        starting_after: cursor(store, "events", "event", params, "starting_after")?,
        ending_before: cursor(store, "events", "event", params, "ending_before")?,
        created: (lo.max(now() - EVENT_RETENTION_SECS), hi),
        customer: None,
    };
    let keep = |e: &Value| {
        let t = e["type"].as_str().unwrap_or("");
        let type_ok = match &one {
            Some(p) if p.ends_with(".*") => t.starts_with(&p[..p.len() - 1]),
            Some(p) if p == "*" => true,
            Some(p) => t == p,
            None => true,
        };
        type_ok && (types.is_empty() || types.iter().any(|x| x == t))
    };
    let (page, has_more) = store.col("events").page(&lp, "created", &keep);
    Ok(list_envelope("/v1/events", page.into_iter().cloned().collect(), has_more))
}

/// Pages a nested list (`invoice.lines`) stored in full inside its parent.
fn sub_list(store: &Store, col: &str, id: &str, field: &str, params: &Value, url: &str) -> ApiResult {
    check_known(params, &["subscription"])?;
    let limit = parse_limit(params)?;
    let k = kind(col).expect("kind");
    let parent = store.col(col).get(id).ok_or_else(|| missing(k.object, id, "id"))?;
    let items: &[Value] = parent[field]["data"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let start = match str_param(params, "starting_after") {
        Some(after) => items
            .iter()
            .position(|i| i["id"] == after)
            .map(|p| p + 1)
            .ok_or_else(|| invalid(&format!("No such line item: '{after}'"), Some("starting_after")))?,
        None => 0,
    };
    let end = (start + limit).min(items.len());
    Ok(list_envelope(url, items[start..end].to_vec(), end < items.len()))
}

// ---------------------------------------------------------------- mutations

/// Field types for updates: how a form string becomes JSON.
fn typed(field: &str, v: &Value) -> Result<Value, ApiErr> {
    const INTS: &[&str] = &["amount", "balance", "unit_amount", "quantity", "due_date", "days_until_due"];
    const BOOLS: &[&str] = &["active", "cancel_at_period_end", "disabled", "livemode"];
    match v {
        Value::String(s) if INTS.contains(&field) => {
            s.parse::<i64>().map(|n| json!(n)).map_err(|_| invalid(&format!("Invalid integer: {s}"), Some(field)))
        }
        Value::String(s) if BOOLS.contains(&field) => match s.as_str() {
            "true" => Ok(json!(true)),
            "false" => Ok(json!(false)),
            _ => Err(invalid(&format!("Invalid boolean: {s}"), Some(field))),
        },
        Value::String(s) if s.is_empty() => Ok(Value::Null),
        other => Ok(other.clone()),
    }
}

/// Applies allowed fields from params; returns Stripe's `previous_attributes`.
fn apply(obj: &mut Value, params: &Value, allowed: &[&str]) -> Result<Map<String, Value>, ApiErr> {
    let mut prev = Map::new();
    let Value::Object(p) = params else {
        return Ok(prev);
    };
    for (k, v) in p {
        if k == "expand" {
            continue;
        }
        if !allowed.contains(&k.as_str()) {
            return Err(invalid(&format!("Received unknown parameter: {k}"), Some(k)));
        }
        if k == "metadata" {
            let Value::Object(changes) = v else {
                return Err(invalid("Invalid metadata", Some("metadata")));
            };
            let old = obj["metadata"].clone();
            let mut meta = old.as_object().cloned().unwrap_or_default();
            for (mk, mv) in changes {
                match mv.as_str() {
                    Some("") => {
                        meta.remove(mk);
                    }
                    _ => {
                        meta.insert(mk.clone(), mv.clone());
                    }
                }
            }
            if Value::Object(meta.clone()) != old {
                prev.insert("metadata".into(), old);
                obj["metadata"] = Value::Object(meta);
            }
            continue;
        }
        let new = typed(k, v)?;
        if obj.get(k) != Some(&new) {
            prev.insert(k.clone(), obj.get(k).cloned().unwrap_or(Value::Null));
            obj[k.as_str()] = new;
        }
    }
    Ok(prev)
}

fn required<'a>(params: &'a Value, name: &str) -> Result<&'a str, ApiErr> {
    str_param(params, name)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(&format!("Missing required param: {name}."), Some(name)))
}

fn int_param(params: &Value, name: &str) -> Result<Option<i64>, ApiErr> {
    match str_param(params, name) {
        None => Ok(None),
        Some(s) => s.parse::<i64>().map(Some).map_err(|_| invalid(&format!("Invalid integer: {s}"), Some(name))),
    }
}

/// Events recorded by a mutation: (type, object, previous_attributes).
type Pending = Vec<(String, Value, Option<Value>)>;

struct Mutation<'a> {
    inner: &'a Inner,
    #[allow(dead_code)]
    caller: &'a Caller,
    events: Pending,
}

impl Mutation<'_> {
    fn rng(&self) -> std::sync::MutexGuard<'_, Rng> {
        self.inner.rng.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&mut self, t: &str, obj: &Value, prev: Option<Map<String, Value>>) {
        self.events.push((t.to_string(), render(obj), prev.map(Value::Object)));
    }

    /// Updates an object and records `<type>` when anything changed.
    fn update(
        &mut self,
        store: &mut Store,
        col: &str,
        id: &str,
        params: &Value,
        allowed: &[&str],
        event: Option<&str>,
    ) -> ApiResult {
        let k = kind(col).expect("kind");
        let mut obj = store.col(col).get(id).cloned().ok_or_else(|| missing(k.object, id, "id"))?;
        let prev = apply(&mut obj, params, allowed)?;
        if col == "products" && !prev.is_empty() {
            obj["updated"] = json!(now());
        }
        store.col_mut(col).replace(obj.clone());
        if let Some(t) = event
            && !prev.is_empty()
        {
            self.event(t, &obj, Some(prev));
        }
        Ok(render(&obj))
    }

    fn mutate(&mut self, store: &mut Store, method: &str, segs: &[&str], params: &Value) -> ApiResult {
        let t = now();
        match (method, segs) {
            ("POST", ["customers"]) => {
                let mut c = objects::customer(&mut self.rng(), t, None, None);
                c["email"] = Value::Null;
                c["name"] = Value::Null;
                c["metadata"] = json!({});
                c["delinquent"] = json!(false);
                apply(&mut c, params, &["email", "name", "description", "phone", "metadata", "balance", "currency"])?;
                store.add(c.clone());
                self.event("customer.created", &c, None);
                Ok(render(&c))
            }
            ("POST", ["customers", id]) => self.update(
                store,
                "customers",
                id,
                params,
                &["email", "name", "description", "phone", "metadata", "balance"],
                Some("customer.updated"),
            ),
            ("DELETE", ["customers", id]) => {
                let c = store.col_mut("customers").remove(id).ok_or_else(|| missing("customer", id, "id"))?;
                // Stripe cancels the customer's subscriptions; their payment methods
                // and balance history are no longer reachable.
                let subs: Vec<Value> = store
                    .col("subscriptions")
                    .values()
                    .filter(|s| s["customer"] == *id && s["status"] != "canceled")
                    .cloned()
                    .collect();
                for mut s in subs {
                    let prev = json!({"status": s["status"].clone(), "canceled_at": null, "ended_at": null});
                    s["status"] = json!("canceled");
                    s["canceled_at"] = json!(t);
                    s["ended_at"] = json!(t);
                    store.col_mut("subscriptions").replace(s.clone());
                    self.event("customer.subscription.deleted", &s, prev.as_object().cloned());
                }
                for col in ["payment_methods", "customer_balance_transactions"] {
                    let ids: Vec<String> = store
                        .col(col)
                        .values()
                        .filter(|o| o["customer"] == *id)
                        .filter_map(|o| o["id"].as_str().map(str::to_string))
                        .collect();
                    for i in ids {
                        store.col_mut(col).remove(&i);
                    }
                }
                let stub = json!({"id": id, "object": "customer", "deleted": true});
                store.deleted.insert(id.to_string(), stub.clone());
                self.event("customer.deleted", &c, None);
                Ok(stub)
            }
            ("POST", ["customers", cid, "balance_transactions"]) => {
                let amount = int_param(params, "amount")?
                    .ok_or_else(|| invalid("Missing required param: amount.", Some("amount")))?;
                let currency = required(params, "currency")?.to_string();
                let mut c =
                    store.col("customers").get(cid).cloned().ok_or_else(|| missing("customer", cid, "customer"))?;
                let old = c["balance"].as_i64().unwrap_or(0);
                let mut tx =
                    objects::customer_balance_transaction(&mut self.rng(), t, cid, amount, old + amount, &currency);
                tx["description"] = params.get("description").cloned().unwrap_or(Value::Null);
                store.add(tx.clone());
                c["balance"] = json!(old + amount);
                store.col_mut("customers").replace(c.clone());
                let mut prev = Map::new();
                prev.insert("balance".into(), json!(old));
                self.event("customer.updated", &c, Some(prev));
                Ok(tx)
            }
            ("POST", ["products"]) => {
                let name = required(params, "name")?.to_string();
                let mut p = objects::product(&mut self.rng(), t, &name);
                p["active"] = json!(true);
                p["description"] = Value::Null;
                apply(&mut p, params, &["name", "active", "description", "metadata", "shippable", "url"])?;
                store.add(p.clone());
                self.event("product.created", &p, None);
                Ok(render(&p))
            }
            ("POST", ["products", id]) => self.update(
                store,
                "products",
                id,
                params,
                &["name", "active", "description", "metadata", "default_price", "url"],
                Some("product.updated"),
            ),
            ("DELETE", ["products", id]) => {
                if store.col("products").get(id).is_none() {
                    return Err(missing("product", id, "id"));
                }
                if store.col("prices").values().any(|p| p["product"] == *id) {
                    return Err(invalid(
                        "This product cannot be deleted because it has one or more user-created prices.",
                        None,
                    ));
                }
                let p = store.col_mut("products").remove(id).expect("checked");
                self.event("product.deleted", &p, None);
                Ok(json!({"id": id, "object": "product", "deleted": true}))
            }
            ("POST", ["prices"]) => {
                let product = required(params, "product")?.to_string();
                if store.col("products").get(&product).is_none() {
                    return Err(missing("product", &product, "product"));
                }
                let amount = int_param(params, "unit_amount")?
                    .ok_or_else(|| invalid("Missing required param: unit_amount.", Some("unit_amount")))?;
                let currency = required(params, "currency")?.to_string();
                let recurring = params.get("recurring").is_some();
                let mut p = objects::price(&mut self.rng(), t, &product, amount, recurring, true);
                p["currency"] = json!(currency);
                if let Some(iv) = params.get("recurring").and_then(|r| r.get("interval")) {
                    p["recurring"]["interval"] = iv.clone();
                }
                let rest: Value = strip(params, &["product", "unit_amount", "currency", "recurring"]);
                apply(&mut p, &rest, &["active", "nickname", "metadata", "lookup_key"])?;
                store.add(p.clone());
                self.event("price.created", &p, None);
                Ok(render(&p))
            }
            ("POST", ["prices", id]) => self.update(
                store,
                "prices",
                id,
                params,
                &["active", "nickname", "metadata", "lookup_key"],
                Some("price.updated"),
            ),
            ("POST", ["subscriptions"]) => {
                let customer = required(params, "customer")?.to_string();
                if store.col("customers").get(&customer).is_none() {
                    return Err(missing("customer", &customer, "customer"));
                }
                let items = params.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
                if items.is_empty() {
                    return Err(invalid("Missing required param: items.", Some("items")));
                }
                let mut s = objects::subscription(&mut self.rng(), t, &customer, "active", t);
                let sid = s["id"].as_str().unwrap_or_default().to_string();
                let mut data = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    let pid = it.get("price").and_then(Value::as_str).ok_or_else(|| {
                        invalid("Missing required param: items[0][price].", Some(&format!("items[{i}][price]")))
                    })?;
                    let price = store
                        .col("prices")
                        .get(pid)
                        .cloned()
                        .ok_or_else(|| missing("price", pid, &format!("items[{i}][price]")))?;
                    let q = it.get("quantity").and_then(Value::as_str).and_then(|q| q.parse().ok()).unwrap_or(1);
                    data.push(objects::subscription_item(&mut self.rng(), t, &sid, &price, q, (t, t + 30 * 86_400)));
                }
                s["items"]["data"] = Value::Array(data);
                let rest = strip(params, &["customer", "items"]);
                apply(&mut s, &rest, &["metadata", "collection_method", "description", "cancel_at_period_end"])?;
                store.add(s.clone());
                self.event("customer.subscription.created", &s, None);
                Ok(render(&s))
            }
            ("POST", ["subscriptions", id]) => self.update(
                store,
                "subscriptions",
                id,
                params,
                &["metadata", "cancel_at_period_end", "description", "collection_method", "days_until_due"],
                Some("customer.subscription.updated"),
            ),
            ("DELETE", ["subscriptions", id]) => {
                let mut s =
                    store.col("subscriptions").get(id).cloned().ok_or_else(|| missing("subscription", id, "id"))?;
                if s["status"] == "canceled" {
                    return Err(invalid(&format!("No such subscription: '{id}' (it is already canceled)"), Some("id")));
                }
                let mut prev = Map::new();
                prev.insert("status".into(), s["status"].clone());
                prev.insert("canceled_at".into(), Value::Null);
                prev.insert("ended_at".into(), Value::Null);
                s["status"] = json!("canceled");
                s["canceled_at"] = json!(t);
                s["ended_at"] = json!(t);
                store.col_mut("subscriptions").replace(s.clone());
                self.event("customer.subscription.deleted", &s, Some(prev));
                Ok(render(&s))
            }
            ("POST", ["invoices"]) => {
                let customer = required(params, "customer")?.to_string();
                let cur = store
                    .col("customers")
                    .get(&customer)
                    .map(|c| c["currency"].as_str().unwrap_or("usd").to_string())
                    .ok_or_else(|| missing("customer", &customer, "customer"))?;
                let sub = str_param(params, "subscription").map(str::to_string);
                let mut inv = objects::invoice(&mut self.rng(), t, &customer, sub.as_deref(), "draft", &cur, 0);
                inv["billing_reason"] = json!("manual");
                inv["period_start"] = json!(t);
                inv["period_end"] = json!(t);
                let rest = strip(params, &["customer", "subscription", "pending_invoice_items_behavior"]);
                apply(
                    &mut inv,
                    &rest,
                    &["description", "metadata", "collection_method", "days_until_due", "due_date"],
                )?;
                store.add(inv.clone());
                self.event("invoice.created", &inv, None);
                Ok(render(&inv))
            }
            ("POST", ["invoices", id]) => self.update(
                store,
                "invoices",
                id,
                params,
                &["description", "metadata", "collection_method", "due_date", "days_until_due"],
                Some("invoice.updated"),
            ),
            ("DELETE", ["invoices", id]) => {
                let inv = store.col("invoices").get(id).cloned().ok_or_else(|| missing("invoice", id, "id"))?;
                if inv["status"] != "draft" {
                    return Err(invalid("You can only delete draft invoices.", None));
                }
                store.col_mut("invoices").remove(id);
                self.event("invoice.deleted", &inv, None);
                Ok(json!({"id": id, "object": "invoice", "deleted": true}))
            }
            ("POST", ["invoices", id, action @ ("finalize" | "pay" | "void" | "mark_uncollectible")]) => {
                self.invoice_action(store, id, action, t)
            }
            ("POST", ["invoiceitems"]) => {
                let customer = required(params, "customer")?.to_string();
                let cur = store
                    .col("customers")
                    .get(&customer)
                    .map(|c| c["currency"].as_str().unwrap_or("usd").to_string())
                    .ok_or_else(|| missing("customer", &customer, "customer"))?;
                let amount = int_param(params, "amount")?
                    .ok_or_else(|| invalid("Missing required param: amount.", Some("amount")))?;
                let invoice = str_param(params, "invoice").map(str::to_string);
                let mut ii = objects::invoice_item(
                    &mut self.rng(),
                    t,
                    &customer,
                    invoice.as_deref(),
                    amount,
                    str_param(params, "currency").unwrap_or(&cur),
                );
                ii["description"] = params.get("description").cloned().unwrap_or(Value::Null);
                if let Some(iid) = &invoice {
                    let mut inv =
                        store.col("invoices").get(iid).cloned().ok_or_else(|| missing("invoice", iid, "invoice"))?;
                    if inv["status"] != "draft" {
                        return Err(invalid("You can only add invoice items to draft invoices.", Some("invoice")));
                    }
                    let parent = json!({"type": "invoice_item_details", "invoice_item_details": {"invoice_item": ii["id"], "proration": false}, "subscription_item_details": null});
                    let line = objects::line_item(
                        &mut self.rng(),
                        iid,
                        amount,
                        inv["currency"].as_str().unwrap_or("usd"),
                        (t, t),
                        ii["description"].as_str().unwrap_or("Invoice item").to_string(),
                        parent,
                    );
                    let prev_total = inv["total"].clone();
                    if let Some(a) = inv["lines"]["data"].as_array_mut() {
                        a.push(line);
                    }
                    objects::total_invoice(&mut inv);
                    store.col_mut("invoices").replace(inv.clone());
                    let mut prev = Map::new();
                    prev.insert("total".into(), prev_total);
                    store.add(ii.clone());
                    self.event("invoiceitem.created", &ii, None);
                    self.event("invoice.updated", &inv, Some(prev));
                    return Ok(render(&ii));
                }
                store.add(ii.clone());
                self.event("invoiceitem.created", &ii, None);
                Ok(render(&ii))
            }
            // Stripe removed invoiceitem.updated: updates record no event.
            ("POST", ["invoiceitems", id]) => {
                self.update(store, "invoiceitems", id, params, &["description", "metadata", "amount"], None)
            }
            ("DELETE", ["invoiceitems", id]) => {
                let ii = store.col("invoiceitems").get(id).cloned().ok_or_else(|| missing("invoiceitem", id, "id"))?;
                if let Some(iid) = ii["invoice"].as_str()
                    && let Some(mut inv) = store.col("invoices").get(iid).cloned()
                {
                    if inv["status"] != "draft" {
                        return Err(invalid("You can only delete invoice items of draft invoices.", None));
                    }
                    if let Some(a) = inv["lines"]["data"].as_array_mut() {
                        a.retain(|l| l["parent"]["invoice_item_details"]["invoice_item"] != ii["id"]);
                    }
                    objects::total_invoice(&mut inv);
                    store.col_mut("invoices").replace(inv.clone());
                    self.event("invoice.updated", &inv, Some(Map::new()));
                }
                store.col_mut("invoiceitems").remove(id);
                self.event("invoiceitem.deleted", &ii, None);
                Ok(json!({"id": id, "object": "invoiceitem", "deleted": true}))
            }
            ("POST", ["charges"]) => {
                let amount = int_param(params, "amount")?
                    .ok_or_else(|| invalid("Missing required param: amount.", Some("amount")))?;
                let currency = required(params, "currency")?.to_string();
                let customer = str_param(params, "customer").map(str::to_string);
                if let Some(c) = &customer
                    && store.col("customers").get(c).is_none()
                {
                    return Err(missing("customer", c, "customer"));
                }
                let description = params.get("description").cloned().unwrap_or(Value::Null);
                let metadata = params.get("metadata").cloned();
                let ch = self.succeeded_charge(store, t, customer.as_deref(), amount, &currency, |ch| {
                    ch["description"] = description;
                    if let Some(m) = metadata {
                        ch["metadata"] = m;
                    }
                });
                Ok(render(&ch))
            }
            ("POST", ["charges", id]) => {
                self.update(store, "charges", id, params, &["description", "metadata"], Some("charge.updated"))
            }
            ("POST", ["refunds"]) => {
                let cid = required(params, "charge")?.to_string();
                let mut ch =
                    store.col("charges").get(&cid).cloned().ok_or_else(|| missing("charge", &cid, "charge"))?;
                let left = ch["amount"].as_i64().unwrap_or(0) - ch["amount_refunded"].as_i64().unwrap_or(0);
                let amount = int_param(params, "amount")?.unwrap_or(left);
                if amount <= 0 || amount > left {
                    return Err(invalid(
                        &format!("Refund amount ({amount}) is greater than unrefunded amount on charge ({left})"),
                        Some("amount"),
                    ));
                }
                let r = objects::refund(&mut self.rng(), t, &ch, amount);
                let mut prev = Map::new();
                prev.insert("amount_refunded".into(), ch["amount_refunded"].clone());
                prev.insert("refunded".into(), ch["refunded"].clone());
                ch["amount_refunded"] = json!(ch["amount_refunded"].as_i64().unwrap_or(0) + amount);
                ch["refunded"] = json!(amount == left);
                store.col_mut("charges").replace(ch.clone());
                let txn = self.rng().id("txn_");
                let bt = objects::balance_transaction(
                    &mut self.rng(),
                    txn,
                    t,
                    -amount,
                    ch["currency"].as_str().unwrap_or("usd"),
                    r["id"].as_str().unwrap_or_default(),
                    "refund",
                );
                store.add(bt);
                store.add(r.clone());
                self.event("refund.created", &r, None);
                self.event("charge.refunded", &ch, Some(prev));
                Ok(render(&r))
            }
            ("POST", ["payment_methods"]) => {
                let mut pm = objects::payment_method(&mut self.rng(), t, None);
                if let Some(card) = params.get("card").and_then(Value::as_object)
                    && let Some(n) = card.get("number").and_then(Value::as_str)
                {
                    pm["card"]["last4"] = json!(&n[n.len().saturating_sub(4)..]);
                }
                store.add(pm.clone());
                Ok(render(&pm))
            }
            ("POST", ["payment_methods", id, "attach"]) => {
                let customer = required(params, "customer")?.to_string();
                if store.col("customers").get(&customer).is_none() {
                    return Err(missing("customer", &customer, "customer"));
                }
                let mut pm =
                    store.col("payment_methods").get(id).cloned().ok_or_else(|| missing("payment_method", id, "id"))?;
                pm["customer"] = json!(customer);
                store.col_mut("payment_methods").replace(pm.clone());
                self.event("payment_method.attached", &pm, None);
                Ok(render(&pm))
            }
            ("POST", ["payment_methods", id, "detach"]) => {
                let mut pm =
                    store.col("payment_methods").get(id).cloned().ok_or_else(|| missing("payment_method", id, "id"))?;
                if pm["customer"].is_null() {
                    return Err(invalid(
                        "The payment method you provided is not attached to a customer so detachment is impossible.",
                        None,
                    ));
                }
                let mut prev = Map::new();
                prev.insert("customer".into(), pm["customer"].clone());
                pm["customer"] = Value::Null;
                store.col_mut("payment_methods").replace(pm.clone());
                self.event("payment_method.detached", &pm, Some(prev));
                Ok(render(&pm))
            }
            _ => Err(unrecognized(method, segs)),
        }
    }

    /// A successful charge with its balance transaction, recorded as `charge.succeeded`.
    fn succeeded_charge(
        &mut self,
        store: &mut Store,
        t: i64,
        customer: Option<&str>,
        amount: i64,
        currency: &str,
        customize: impl FnOnce(&mut Value),
    ) -> Value {
        let txn = self.rng().id("txn_");
        let mut ch = objects::charge(&mut self.rng(), t, customer, amount, currency, &txn, None);
        for (k, v) in [
            ("paid", json!(true)),
            ("captured", json!(true)),
            ("status", json!("succeeded")),
            ("amount_captured", json!(amount)),
            ("balance_transaction", json!(txn)),
            ("failure_code", Value::Null),
            ("failure_message", Value::Null),
        ] {
            ch[k] = v;
        }
        customize(&mut ch);
        let id = ch["id"].as_str().unwrap_or_default().to_string();
        let bt = objects::balance_transaction(&mut self.rng(), txn, t, amount, currency, &id, "charge");
        store.add(bt);
        store.add(ch.clone());
        self.event("charge.succeeded", &ch, None);
        ch
    }

    fn invoice_action(&mut self, store: &mut Store, id: &str, action: &str, t: i64) -> ApiResult {
        let mut inv = store.col("invoices").get(id).cloned().ok_or_else(|| missing("invoice", id, "id"))?;
        let status = inv["status"].as_str().unwrap_or("").to_string();
        let mut prev = Map::new();
        prev.insert("status".into(), json!(status));
        let event = match (action, status.as_str()) {
            ("finalize", "draft") => {
                let n = store.col("invoices").len() as u64 + 1000;
                inv["status"] = json!("open");
                inv["number"] = json!(format!("INV-{n:06}"));
                inv["status_transitions"]["finalized_at"] = json!(t);
                inv["effective_at"] = json!(t);
                "invoice.finalized"
            }
            ("pay", "open") => {
                inv["status"] = json!("paid");
                inv["status_transitions"]["paid_at"] = json!(t);
                objects::total_invoice(&mut inv);
                let amount = inv["total"].as_i64().unwrap_or(0);
                let currency = inv["currency"].as_str().unwrap_or("usd").to_string();
                let description = json!(format!("Payment for invoice {id}"));
                self.succeeded_charge(store, t, inv["customer"].as_str(), amount, &currency, |ch| {
                    ch["description"] = description
                });
                "invoice.paid"
            }
            ("void", "open") => {
                inv["status"] = json!("void");
                inv["status_transitions"]["voided_at"] = json!(t);
                objects::total_invoice(&mut inv);
                "invoice.voided"
            }
            ("mark_uncollectible", "open") => {
                inv["status"] = json!("uncollectible");
                inv["status_transitions"]["marked_uncollectible_at"] = json!(t);
                "invoice.marked_uncollectible"
            }
            _ => {
                return Err(invalid(&format!("You can't {action} an invoice with status {status}."), None));
            }
        };
        store.col_mut("invoices").replace(inv.clone());
        self.event(event, &inv, Some(prev));
        Ok(render(&inv))
    }
}

fn strip(params: &Value, keys: &[&str]) -> Value {
    let mut p = params.clone();
    if let Value::Object(m) = &mut p {
        for k in keys {
            m.remove(*k);
        }
    }
    p
}
