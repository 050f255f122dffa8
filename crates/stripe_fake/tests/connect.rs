//! Connect in the fake: connected accounts each have their own objects and
//! events behind `Stripe-Account`, their events reach the platform's Connect
//! endpoints with `account` set, and a deauthorized account answers 403
//! `account_invalid` (facts in shared/reference/stripe-api.md §5.5).

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stripe_fake::objects::SeedSpec;
use stripe_fake::{Fake, Faults};

async fn platform(connected: Vec<usize>) -> Fake {
    let spec = SeedSpec { connected, ..SeedSpec::scaled(20) };
    Fake::start(0, Some(&spec), Faults::default()).await.unwrap()
}

fn ids(objects: &[Value]) -> HashSet<String> {
    objects.iter().map(|o| o["id"].as_str().unwrap().to_string()).collect()
}

/// Every object of a list, paged with starting_after, as `account` (None = platform).
fn all(f: &Fake, account: Option<&str>, path: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let p = match &cursor {
            Some(c) => format!("{path}?limit=100&starting_after={c}"),
            None => format!("{path}?limit=100"),
        };
        let (status, page) = match account {
            Some(a) => f.call_as(a, "GET", &p, ""),
            None => f.call("GET", &p, ""),
        };
        assert_eq!(status, 200, "{p}: {page}");
        let data = page["data"].as_array().unwrap().clone();
        cursor = data.last().map(|o| o["id"].as_str().unwrap().to_string());
        out.extend(data);
        if page["has_more"] != true {
            return out;
        }
    }
}

#[tokio::test]
async fn each_connected_account_has_its_own_objects_behind_stripe_account() {
    let f = platform(vec![40, 3]).await;
    let accounts = f.connected_accounts();
    // the seeded accounts without data (SeedSpec::scaled(20) has 1) and the two seeded ones
    assert_eq!(accounts.len(), 3);
    assert_eq!(ids(&all(&f, None, "/v1/accounts")), accounts.iter().cloned().collect::<HashSet<_>>());
    let platform_customers = ids(&all(&f, None, "/v1/customers"));
    let mut sizes = Vec::new();
    for a in &accounts {
        let theirs = all(&f, Some(a), "/v1/customers");
        assert_eq!(ids(&theirs), ids(&f.objects_of(a, "customers")), "{a}");
        assert!(ids(&theirs).is_disjoint(&platform_customers), "{a} sees none of the platform's customers");
        sizes.push(theirs.len());
        let (s, me) = f.call_as(a, "GET", "/v1/account", "");
        assert_eq!((s, me["id"].as_str()), (200, Some(a.as_str())));
        // a connected account is no platform: its /v1/accounts is empty
        assert!(all(&f, Some(a), "/v1/accounts").is_empty());
        // another account's object is not there
        if let Some(c) = platform_customers.iter().next() {
            let (s, v) = f.call_as(a, "GET", &format!("/v1/customers/{c}"), "");
            assert_eq!((s, v["error"]["code"].as_str()), (404, Some("resource_missing")));
        }
    }
    sizes.sort();
    assert_eq!(sizes, vec![0, 3, 40]);
    let (_, me) = f.call("GET", "/v1/account", "");
    assert_eq!(me["id"], stripe_fake::connect::PLATFORM_ID);
    // the platform's own id in Stripe-Account is the platform
    let (s, v) = f.call_as(stripe_fake::connect::PLATFORM_ID, "GET", "/v1/customers?limit=100", "");
    assert_eq!(s, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), platform_customers.len().min(100));
}

#[tokio::test]
async fn a_connected_accounts_changes_are_its_own_events_with_account_set() {
    let f = platform(vec![5]).await;
    let a = f.connected_accounts().into_iter().find(|a| !f.objects_of(a, "customers").is_empty()).unwrap();
    let (s, c) = f.call_as(&a, "POST", "/v1/customers", "name=Connected");
    assert_eq!(s, 200, "{c}");
    assert_eq!(f.objects_of(&a, "customers").len(), 6);
    assert!(f.objects("customers").iter().all(|o| o["id"] != c["id"]), "not in the platform");
    let theirs = all(&f, Some(&a), "/v1/events");
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0]["type"], "customer.created");
    assert_eq!(theirs[0]["account"], a.as_str());
    assert_eq!(theirs[0]["data"]["object"]["id"], c["id"]);
    assert!(all(&f, None, "/v1/events").iter().all(|e| e["data"]["object"]["id"] != c["id"]));
    let (s, _) = f.call("POST", "/v1/customers", "name=Platform");
    assert_eq!(s, 200);
    let own = all(&f, None, "/v1/events");
    assert_eq!(own.len(), 1);
    assert!(own[0].get("account").is_none(), "platform events carry no account: {}", own[0]);
    let (s, e) = f.call_as(&a, "GET", &format!("/v1/events/{}", own[0]["id"].as_str().unwrap()), "");
    assert_eq!(s, 404, "the platform's event is not the account's: {e}");
}

#[tokio::test]
async fn a_deauthorized_account_answers_403_account_invalid_and_leaves_the_list() {
    let f = platform(vec![2, 2]).await;
    let before = f.connected_accounts();
    let gone = before[0].clone();
    assert!(f.deauthorize(&gone));
    assert!(!f.deauthorize(&gone), "only once");
    let (s, v) = f.call_as(&gone, "GET", "/v1/customers", "");
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "account_invalid");
    assert!(v["error"]["message"].as_str().unwrap().contains(&gone));
    assert!(!ids(&all(&f, None, "/v1/accounts")).contains(&gone));
    for other in &before[1..] {
        assert_eq!(f.call_as(other, "GET", "/v1/customers", "").0, 200, "the others still answer");
    }
    let (s, v) = f.call_as("acct_NeverConnected", "GET", "/v1/customers", "");
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("account_invalid")));
}

#[tokio::test]
async fn accounts_are_created_and_updated_while_the_fake_runs() {
    let f = platform(vec![]).await;
    let n = f.connected_accounts().len();
    let (s, acct) = f.call("POST", "/v1/accounts", "type=express&email=new%40example.com");
    assert_eq!(s, 200, "{acct}");
    let id = acct["id"].as_str().unwrap().to_string();
    assert_eq!(acct["type"], "express");
    assert_eq!(f.connected_accounts().len(), n + 1);
    assert!(ids(&all(&f, None, "/v1/accounts")).contains(&id));
    assert_eq!(f.call_as(&id, "GET", "/v1/customers", "").0, 200);
    let (s, up) = f.call("POST", &format!("/v1/accounts/{id}"), "metadata[tier]=gold");
    assert_eq!(s, 200, "{up}");
    assert_eq!(up["metadata"]["tier"], "gold");
    let events = all(&f, Some(&id), "/v1/events");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["account.updated", "account.application.authorized"]);
    assert_eq!(events[0]["data"]["previous_attributes"]["metadata"], serde_json::json!({}));
    assert!(events.iter().all(|e| e["account"] == id.as_str()));
    let (s, v) = f.call("POST", "/v1/accounts/acct_Nope", "metadata[a]=b");
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("resource_missing")));
}

/// Webhook deliveries received on loopback: (path, Stripe-Signature, body).
type Received = Arc<Mutex<Vec<(String, String, Value)>>>;

fn receiver() -> (String, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got: Received = Arc::default();
    let sink = got.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { return };
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let n = sock.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)))
                            .map(|(_, v)| v.trim().to_string())
                            .unwrap_or_default()
                    };
                    let len: usize = header("content-length").parse().unwrap_or(0);
                    if body.len() < len {
                        continue;
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
                    let event: Value = serde_json::from_str(&body[..len]).unwrap_or(Value::Null);
                    sink.lock().unwrap().push((path, header("stripe-signature"), event));
                    let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    return;
                }
            });
        }
    });
    (url, got)
}

fn signed_by(secret: &str, sig: &str, body: &Value) -> bool {
    let t = sig.split(',').find_map(|p| p.strip_prefix("t=")).unwrap();
    let v1 = sig.split(',').find_map(|p| p.strip_prefix("v1=")).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    hex::encode(mac.finalize().into_bytes()) == v1
}

#[tokio::test]
async fn connect_endpoints_get_connected_accounts_events_and_account_endpoints_the_platforms() {
    let f = platform(vec![3, 3]).await;
    let (url, got) = receiver();
    let (s, own) = f.call("POST", "/v1/webhook_endpoints", &format!("url={url}/own&enabled_events[]=*"));
    assert_eq!(s, 200, "{own}");
    let (s, conn) =
        f.call("POST", "/v1/webhook_endpoints", &format!("url={url}/connect&enabled_events[]=*&connect=true"));
    assert_eq!(s, 200, "{conn}");
    assert_ne!(own["secret"], conn["secret"], "each endpoint has its own secret");
    let accounts = f.connected_accounts();
    let (a, b) = (accounts[1].clone(), accounts[2].clone());
    f.call_as(&a, "POST", "/v1/customers", "name=A");
    f.call_as(&b, "POST", "/v1/customers", "name=B");
    f.call("POST", "/v1/customers", "name=P");
    f.call("POST", &format!("/v1/accounts/{a}"), "email=a%40example.com");
    assert!(f.deauthorize(&b));
    for _ in 0..100 {
        if got.lock().unwrap().len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = got.lock().unwrap().clone();
    let seen: Vec<(String, String, String)> = got
        .iter()
        .map(|(p, _, e)| {
            (p.clone(), e["type"].as_str().unwrap().to_string(), e["account"].as_str().unwrap_or("-").to_string())
        })
        .collect();
    let mut seen_sorted = seen.clone();
    seen_sorted.sort();
    let mut want = vec![
        ("/connect".to_string(), "customer.created".to_string(), a.clone()),
        ("/connect".to_string(), "customer.created".to_string(), b.clone()),
        ("/connect".to_string(), "account.updated".to_string(), a.clone()),
        ("/connect".to_string(), "account.application.deauthorized".to_string(), b.clone()),
        ("/own".to_string(), "customer.created".to_string(), "-".to_string()),
    ];
    want.sort();
    assert_eq!(seen_sorted, want);
    for (path, sig, event) in &got {
        let secret = if path == "/connect" { &conn["secret"] } else { &own["secret"] };
        assert!(signed_by(secret.as_str().unwrap(), sig, event), "{path} signed with its endpoint's secret");
    }
}
