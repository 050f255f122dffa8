//! The fake behaves like Stripe where stripe_sync depends on it
//! (facts from shared/reference/stripe-api.md).

use serde_json::Value;
use std::collections::HashSet;
use stripe_fake::objects::SeedSpec;
use stripe_fake::{Fake, Faults};

async fn fake(customers: usize) -> Fake {
    Fake::start(0, Some(&SeedSpec::scaled(customers)), Faults::default()).await.unwrap()
}

fn get(f: &Fake, path: &str) -> Value {
    let (status, v) = f.call("GET", path, "");
    assert_eq!(status, 200, "{path}: {v}");
    v
}

fn ids(v: &Value) -> Vec<String> {
    v["data"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_string()).collect()
}

/// Pages a list to the end with starting_after.
fn all(f: &Fake, path: &str) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut out: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let p = match &cursor {
            Some(c) => format!("{path}{sep}limit=100&starting_after={c}"),
            None => format!("{path}{sep}limit=100"),
        };
        let page = get(f, &p);
        let data = page["data"].as_array().unwrap().clone();
        cursor = data.last().map(|o| o["id"].as_str().unwrap().to_string());
        out.extend(data);
        if page["has_more"] != true {
            return out;
        }
    }
}

#[tokio::test]
async fn every_list_has_stripes_envelope_default_limit_and_newest_first_order() {
    let f = fake(60).await;
    for col in [
        "accounts",
        "balance_transactions",
        "charges",
        "credit_notes",
        "customers",
        "disputes",
        "invoices",
        "invoiceitems",
        "payouts",
        "prices",
        "products",
        "refunds",
        "subscriptions",
    ] {
        let v = get(&f, &format!("/v1/{col}"));
        assert_eq!(v["object"], "list", "{col}");
        assert_eq!(v["url"], format!("/v1/{col}"));
        assert!(v["data"].as_array().unwrap().len() <= 10, "{col}: default limit 10");
        let field = if col == "invoiceitems" { "date" } else { "created" };
        let everything = all(&f, &format!("/v1/{col}"));
        let t: Vec<i64> = everything.iter().map(|o| o[field].as_i64().unwrap()).collect();
        assert!(t.windows(2).all(|w| w[0] >= w[1]), "{col} newest first");
        let unique: HashSet<&str> = everything.iter().map(|o| o["id"].as_str().unwrap()).collect();
        assert_eq!(unique.len(), everything.len(), "{col}: no duplicates across pages");
    }
}

#[tokio::test]
async fn limit_and_cursor_errors_match_stripe() {
    let f = fake(10).await;
    for bad in ["0", "101", "abc"] {
        let (s, v) = f.call("GET", &format!("/v1/customers?limit={bad}"), "");
        assert_eq!(s, 400);
        assert_eq!(v["error"]["param"], "limit");
    }
    let (s, v) = f.call("GET", "/v1/customers?starting_after=cus_nope", "");
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "resource_missing");
    let first = ids(&get(&f, "/v1/customers?limit=1"))[0].clone();
    let (s, _) = f.call("GET", &format!("/v1/customers?starting_after={first}&ending_before={first}"), "");
    assert_eq!(s, 400);
    let (s, v) = f.call("GET", "/v1/customers/cus_nope", "");
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "resource_missing");
    assert_eq!(v["error"]["message"], "No such customer: 'cus_nope'");
    let (s, v) = f.call("GET", "/v1/customers?colour=red", "");
    assert_eq!(s, 400);
    assert_eq!(v["error"]["message"], "Received unknown parameter: colour");
}

#[tokio::test]
async fn ending_before_pages_toward_newer_objects() {
    let f = fake(40).await;
    let everything = ids(&serde_json::json!({"data": all(&f, "/v1/customers")}));
    let pivot = &everything[20];
    let v = get(&f, &format!("/v1/customers?limit=5&ending_before={pivot}"));
    assert_eq!(ids(&v), everything[15..20].to_vec());
    assert_eq!(v["has_more"], true);
}

#[tokio::test]
async fn created_exact_and_range_filters() {
    let f = fake(50).await;
    let custs = f.objects("customers");
    let t = custs[7]["created"].as_i64().unwrap();
    let exact = get(&f, &format!("/v1/customers?created={t}&limit=100"));
    assert!(ids(&exact).contains(&custs[7]["id"].as_str().unwrap().to_string()));
    assert!(exact["data"].as_array().unwrap().iter().all(|o| o["created"] == t));
    let ranged = all(&f, &format!("/v1/customers?created[gte]={t}"));
    assert_eq!(ranged.len(), custs.iter().filter(|o| o["created"].as_i64().unwrap() >= t).count());
    let (s, _) = f.call("GET", "/v1/customers?created[after]=5", "");
    assert_eq!(s, 400);
}

#[tokio::test]
async fn subscriptions_leave_out_canceled_unless_status_all() {
    let f = fake(150).await;
    let stored = f.objects("subscriptions");
    let canceled = stored.iter().filter(|s| s["status"] == "canceled").count();
    assert!(canceled > 0);
    let plain = all(&f, "/v1/subscriptions");
    assert_eq!(plain.len(), stored.len() - canceled);
    assert!(plain.iter().all(|s| s["status"] != "canceled"));
    assert_eq!(all(&f, "/v1/subscriptions?status=all").len(), stored.len());
    assert_eq!(all(&f, "/v1/subscriptions?status=canceled").len(), canceled);
}

#[tokio::test]
async fn prices_list_only_active_ones_unless_asked() {
    let f = fake(150).await;
    let stored = f.objects("prices");
    let inactive = stored.iter().filter(|p| p["active"] == false).count();
    assert!(inactive > 0);
    assert_eq!(all(&f, "/v1/prices").len(), stored.len() - inactive);
    assert_eq!(all(&f, "/v1/prices?active=false").len(), inactive);
    assert_eq!(all(&f, "/v1/prices?active=true").len() + inactive, stored.len());
}

#[tokio::test]
async fn filters_and_per_customer_lists() {
    let f = fake(80).await;
    let charge = f.objects("charges").into_iter().find(|c| c["customer"].is_string()).unwrap();
    let cus = charge["customer"].as_str().unwrap();
    let by_customer = all(&f, &format!("/v1/charges?customer={cus}"));
    assert!(by_customer.iter().all(|c| c["customer"] == cus));
    assert_eq!(by_customer.len(), f.objects("charges").iter().filter(|c| c["customer"] == cus).count());
    let pm = f.objects("payment_methods")[0].clone();
    let owner = pm["customer"].as_str().unwrap();
    let pms = get(&f, &format!("/v1/customers/{owner}/payment_methods"));
    assert_eq!(pms["url"], format!("/v1/customers/{owner}/payment_methods"));
    assert!(ids(&pms).contains(&pm["id"].as_str().unwrap().to_string()));
    let (s, _) = f.call("GET", "/v1/customers/cus_nope/balance_transactions", "");
    assert_eq!(s, 404);
    let (s, _) = f.call("GET", "/v1/customers/cus_nope/payment_methods?created[gte]=1", "");
    assert_eq!(s, 404);
    let (s, v) = f.call("GET", &format!("/v1/customers/{owner}/payment_methods?created[gte]=1"), "");
    assert_eq!(s, 400, "payment methods have no created filter: {v}");
}

#[tokio::test]
async fn nested_lists_are_truncated_at_ten_and_paged_at_their_url() {
    let f = fake(5).await;
    let (_, cus) = f.call("POST", "/v1/customers", "email=lines@example.com");
    let cid = cus["id"].as_str().unwrap();
    let (_, inv) = f.call("POST", "/v1/invoices", &format!("customer={cid}"));
    let iid = inv["id"].as_str().unwrap();
    for i in 0..35 {
        let (s, v) = f.call(
            "POST",
            "/v1/invoiceitems",
            &format!("customer={cid}&amount={}&invoice={iid}&description=item{i}", 100 + i),
        );
        assert_eq!(s, 200, "{v}");
    }
    let got = get(&f, &format!("/v1/invoices/{iid}"));
    assert_eq!(got["lines"]["data"].as_array().unwrap().len(), 10);
    assert_eq!(got["lines"]["has_more"], true);
    assert_eq!(got["lines"]["url"], format!("/v1/invoices/{iid}/lines"));
    let lines = all(&f, &format!("/v1/invoices/{iid}/lines"));
    assert_eq!(lines.len(), 35);
    let total: i64 = lines.iter().map(|l| l["amount"].as_i64().unwrap()).sum();
    assert_eq!(got["total"].as_i64().unwrap(), total);
    // the invoice in a list is truncated the same way
    let listed = get(&f, &format!("/v1/invoices?customer={cid}"));
    assert_eq!(listed["data"][0]["lines"]["data"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn mutations_record_events_with_previous_attributes() {
    let f = Fake::start(0, None, Faults::default()).await.unwrap();
    let (_, c) = f.call("POST", "/v1/customers", "email=a%40example.com&metadata[plan]=pro");
    let id = c["id"].as_str().unwrap();
    assert_eq!(c["metadata"]["plan"], "pro");
    let (_, u) = f.call("POST", &format!("/v1/customers/{id}"), "name=Ada");
    assert_eq!(u["name"], "Ada");
    let (s, d) = f.call("DELETE", &format!("/v1/customers/{id}"), "");
    assert_eq!(s, 200);
    assert_eq!(d["deleted"], true);
    let (s, stub) = f.call("GET", &format!("/v1/customers/{id}"), "");
    assert_eq!(s, 200);
    assert_eq!(stub["deleted"], true);
    assert!(ids(&get(&f, "/v1/customers")).is_empty());
    let events = get(&f, "/v1/events");
    let types: Vec<&str> = events["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["customer.deleted", "customer.updated", "customer.created"]);
    let updated = &events["data"][1];
    assert_eq!(updated["data"]["previous_attributes"]["name"], Value::Null);
    assert_eq!(updated["data"]["object"]["name"], "Ada");
    assert!(updated["api_version"].as_str().unwrap().contains('.'));
    assert_eq!(get(&f, "/v1/events?type=customer.updated")["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        get(&f, "/v1/events?types[]=customer.created&types[]=customer.deleted")["data"].as_array().unwrap().len(),
        2
    );
    assert_eq!(get(&f, "/v1/events?type=customer.*")["data"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn subscription_cancel_is_an_update_and_product_deletes_need_no_prices() {
    let f = Fake::start(0, None, Faults::default()).await.unwrap();
    let (_, p) = f.call("POST", "/v1/products", "name=Pro");
    let pid = p["id"].as_str().unwrap();
    let (_, price) =
        f.call("POST", "/v1/prices", &format!("product={pid}&unit_amount=2000&currency=usd&recurring[interval]=month"));
    assert_eq!(price["type"], "recurring");
    let (_, c) = f.call("POST", "/v1/customers", "email=s%40example.com");
    let (s, sub) = f.call(
        "POST",
        "/v1/subscriptions",
        &format!("customer={}&items[0][price]={}", c["id"].as_str().unwrap(), price["id"].as_str().unwrap()),
    );
    assert_eq!(s, 200, "{sub}");
    let sid = sub["id"].as_str().unwrap();
    let (_, canceled) = f.call("DELETE", &format!("/v1/subscriptions/{sid}"), "");
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(get(&f, &format!("/v1/subscriptions/{sid}"))["status"], "canceled");
    let last = &get(&f, "/v1/events?limit=1")["data"][0];
    assert_eq!(last["type"], "customer.subscription.deleted");
    assert_eq!(last["data"]["object"]["status"], "canceled");
    let (s, _) = f.call("DELETE", &format!("/v1/products/{pid}"), "");
    assert_eq!(s, 400, "a product with prices cannot be deleted");
    let (_, p2) = f.call("POST", "/v1/products", "name=Gone");
    let (s, _) = f.call("DELETE", &format!("/v1/products/{}", p2["id"].as_str().unwrap()), "");
    assert_eq!(s, 200);
}

#[tokio::test]
async fn seeding_is_deterministic_and_consistent() {
    let a = fake(30).await;
    let b = fake(30).await;
    assert_eq!(a.objects("invoices"), b.objects("invoices"));
    let customers: HashSet<String> =
        a.objects("customers").iter().map(|c| c["id"].as_str().unwrap().to_string()).collect();
    let subs: HashSet<String> =
        a.objects("subscriptions").iter().map(|c| c["id"].as_str().unwrap().to_string()).collect();
    for inv in a.objects("invoices") {
        assert!(customers.contains(inv["customer"].as_str().unwrap()));
        if let Some(s) = inv["parent"]["subscription_details"]["subscription"].as_str() {
            assert!(subs.contains(s));
        }
        assert!(inv["id"].as_str().unwrap().starts_with("in_"));
    }
    for ch in a.objects("charges") {
        if let Some(c) = ch["customer"].as_str() {
            assert!(customers.contains(c));
        }
    }
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_stripes_body() {
    let f = Fake::start(0, Some(&SeedSpec::only_customers(5)), Faults { rate_limit: 5.0, ..Faults::default() })
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let mut limited = 0;
    for _ in 0..20 {
        let r =
            client.get(format!("{}/v1/customers", f.url())).bearer_auth("sk_test_1234567890ab").send().await.unwrap();
        if r.status() == 429 {
            assert_eq!(r.headers().get("Stripe-Should-Retry").unwrap(), "true");
            let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "rate_limit");
            limited += 1;
        }
    }
    assert!(limited >= 10, "{limited}");
    assert_eq!(f.stats().by_status[&429], limited);
}

#[test]
fn help_documents_restricted_keys_and_the_permission_of_every_path() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stripe-fake")).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--restricted-key") && text.contains("--unsupported-path"), "{text}");
    for (pattern, area, dashboard) in stripe_fake::permissions::AREAS {
        assert!(text.contains(pattern) && text.contains(&format!("{area}_read")) && text.contains(dashboard), "{text}");
    }
}
