//! Stripe Connect: the fake's account is a platform, and each connected account
//! has its own store of objects and events. A request with `Stripe-Account:
//! acct_...` acts on that account's store; its events carry `account` and go to
//! the platform's Connect endpoints (`connect=true`) and to the account's own
//! endpoints. Accounts can be created, updated and deauthorized while the fake
//! runs; a deauthorized account answers 403 `account_invalid` from then on.

use crate::api::{ApiErr, Caller, error_body, render};
use crate::form::str_param;
use crate::objects::{self, SeedSpec};
use crate::store::Store;
use crate::{Inner, webhooks};
use serde_json::{Map, Value, json};

/// The platform's own account id (`GET /v1/account` without `Stripe-Account`).
pub const PLATFORM_ID: &str = "acct_1FakePlatform0000";

/// The platform's Connect application, as `account.application.*` events show it.
fn application() -> Value {
    json!({"id": "ca_FakePlatformApp0000", "object": "application", "name": "stripe_fake platform"})
}

/// The platform's own account object.
pub fn platform_account() -> Value {
    json!({"id": PLATFORM_ID, "object": "account", "business_profile": {"name": "stripe_fake platform", "url": null},
           "business_type": "company", "capabilities": {}, "charges_enabled": true, "country": "DE", "created": 1_600_000_000,
           "default_currency": "eur", "details_submitted": true, "email": null, "metadata": {}, "payouts_enabled": true,
           "type": "standard"})
}

/// The connected account a request acts on: `None` for the platform itself (no
/// header, or the platform's own id), else an account of the platform; 403
/// `account_invalid` for an unknown or deauthorized one, as Stripe answers.
pub fn target(platform: &Store, caller: &Caller) -> Result<Option<String>, ApiErr> {
    match caller.stripe_account.as_deref() {
        None | Some(PLATFORM_ID) => Ok(None),
        Some(a) if platform.connected.contains_key(a) => Ok(Some(a.to_string())),
        Some(a) => Err(ApiErr(
            403,
            error_body(
                "invalid_request_error",
                Some("account_invalid"),
                &format!(
                    "The provided key 'sk_test_*********{}' does not have access to account '{a}' (or that account does not exist). Application access may have been revoked.",
                    caller.key_tail
                ),
                None,
            ),
        )),
    }
}

/// The platform's enabled Connect endpoints, for events of connected accounts.
pub fn connect_endpoints(platform: &Store) -> Vec<Value> {
    platform.col("webhook_endpoints").values().filter(|e| e["_connect"] == true).cloned().collect()
}

/// `POST /v1/accounts`: a new connected account with an empty store; the
/// platform's Connect endpoints get `account.application.authorized`.
pub fn create_account(inner: &Inner, platform: &mut Store, params: &Value, caller: &Caller) -> Result<Value, ApiErr> {
    let mut acct = objects::account(&mut inner.rng.lock().unwrap_or_else(|p| p.into_inner()), now());
    acct["metadata"] = json!({});
    for (k, v) in editable(params)? {
        acct[k.as_str()] = v;
    }
    if let Some(t) = str_param(params, "type") {
        acct["type"] = json!(t);
    }
    let id = acct["id"].as_str().unwrap_or_default().to_string();
    platform.add(acct.clone());
    platform.connected.insert(id.clone(), Store::new());
    emit_connected(inner, platform, &id, "account.application.authorized", application(), None, caller);
    Ok(render(&acct))
}

/// `POST /v1/accounts/{id}`: changes `email`, `metadata` or
/// `business_profile[name]`; `account.updated` with `previous_attributes`.
pub fn update_account(
    inner: &Inner,
    platform: &mut Store,
    id: &str,
    params: &Value,
    caller: &Caller,
) -> Result<Value, ApiErr> {
    let Some(mut acct) = platform.col("accounts").get(id).cloned() else {
        return Err(ApiErr(
            404,
            error_body(
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such account: '{id}'"),
                Some("account"),
            ),
        ));
    };
    let mut prev = Map::new();
    for (k, v) in editable(params)? {
        if acct[k.as_str()] != v {
            prev.insert(k.clone(), acct[k.as_str()].clone());
            acct[k.as_str()] = v;
        }
    }
    platform.col_mut("accounts").replace(acct.clone());
    if !prev.is_empty() {
        emit_connected(inner, platform, id, "account.updated", render(&acct), Some(Value::Object(prev)), caller);
    }
    Ok(render(&acct))
}

/// The account revokes the platform's access: it leaves `/v1/accounts`, its store
/// is gone, the Connect endpoints get `account.application.deauthorized`, and
/// requests with its `Stripe-Account` answer 403 from then on. False if unknown.
pub fn deauthorize(inner: &Inner, platform: &mut Store, id: &str) -> bool {
    if !platform.connected.contains_key(id) {
        return false;
    }
    emit_connected(inner, platform, id, "account.application.deauthorized", application(), None, &Caller::default());
    platform.connected.remove(id);
    platform.col_mut("accounts").remove(id);
    true
}

/// Records an event in a connected account's store and delivers it to the
/// platform's Connect endpoints and the account's own.
fn emit_connected(
    inner: &Inner,
    platform: &mut Store,
    id: &str,
    event_type: &str,
    object: Value,
    previous: Option<Value>,
    caller: &Caller,
) {
    let eps = connect_endpoints(platform);
    if let Some(store) = platform.connected.get_mut(id) {
        webhooks::emit(inner, store, Some((id, &eps)), event_type, object, previous, caller);
    }
}

/// The fields of an account the platform may change here.
fn editable(params: &Value) -> Result<Vec<(String, Value)>, ApiErr> {
    let mut out = Vec::new();
    if let Some(e) = params.get("email") {
        out.push(("email".to_string(), e.clone()));
    }
    if let Some(m) = params.get("metadata") {
        if !m.is_object() {
            return Err(ApiErr(
                400,
                error_body("invalid_request_error", None, "Invalid metadata: must be a hash.", Some("metadata")),
            ));
        }
        out.push(("metadata".to_string(), m.clone()));
    }
    if let Some(name) = params.get("business_profile").and_then(|b| b.get("name")) {
        out.push(("business_profile".to_string(), json!({"name": name, "url": null})));
    }
    Ok(out)
}

/// Gives every seeded account of the platform a store: empty for the
/// `spec.accounts` ones, and seeded as `SeedSpec::scaled(n)` (its own seed, no
/// accounts of its own) for each `n` of `spec.connected`.
pub fn seed(platform: &mut Store, spec: &SeedSpec) {
    let ids: Vec<String> =
        platform.col("accounts").values().filter_map(|a| a["id"].as_str().map(str::to_string)).collect();
    for id in ids {
        platform.connected.insert(id, Store::new());
    }
    let mut rng = objects::Rng::new(spec.seed ^ 0xc0_17ec7);
    let start = spec.anchor - spec.years * 365 * 86_400;
    for (i, &n) in spec.connected.iter().enumerate() {
        let created = rng.range(start, spec.anchor);
        let acct = objects::account(&mut rng, created);
        let id = acct["id"].as_str().unwrap_or_default().to_string();
        let mut store = Store::new();
        let sub = SeedSpec {
            seed: spec.seed.wrapping_mul(31).wrapping_add(i as u64 + 1),
            accounts: 0,
            connected: Vec::new(),
            ..SeedSpec::scaled(n)
        };
        objects::seed(&mut store, &sub);
        platform.add(acct);
        platform.connected.insert(id, store);
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
