//! Object shapes that follow Stripe's API reference, and deterministic seeding of
//! a realistic, consistent account (invoices point at existing customers and
//! subscriptions, charges at customers, refunds at charges, ...).

use crate::store::Store;
use serde_json::{Value, json};

/// A small deterministic RNG (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`; 0 for n = 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo { lo } else { lo + self.below((hi - lo) as u64 + 1) as i64 }
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A Stripe-looking id: prefix + 24 base62 characters.
    pub fn id(&mut self, prefix: &str) -> String {
        const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut s = String::with_capacity(prefix.len() + 24);
        s.push_str(prefix);
        for _ in 0..24 {
            s.push(A[self.below(62) as usize] as char);
        }
        s
    }
}

const FIRST: &[&str] =
    &["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Radia", "Linus", "Frances", "John"];
const LAST: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson", "Perlman", "Torvalds",
    "Allen", "Backus",
];
const CURRENCIES: &[&str] = &["usd", "usd", "usd", "eur", "gbp"];
const PRODUCTS: &[&str] = &[
    "Starter plan",
    "Pro plan",
    "Team plan",
    "Enterprise plan",
    "API credits",
    "Support add-on",
    "Onboarding",
    "Storage pack",
];

pub const API_VERSION: &str = "2026-06-24.dahlia";

/// Number of objects per resource to seed.
#[derive(Debug, Clone)]
pub struct SeedSpec {
    pub seed: u64,
    /// Seeded objects are created between `anchor - years` and `anchor` (unix s).
    pub anchor: i64,
    pub years: i64,
    pub customers: usize,
    pub products: usize,
    pub prices_per_product: usize,
    pub subscriptions: usize,
    pub invoices: usize,
    /// Line items per invoice, drawn in [1, max].
    pub max_lines: usize,
    pub invoice_items: usize,
    pub charges: usize,
    pub refunds: usize,
    pub disputes: usize,
    pub payouts: usize,
    pub balance_transactions: usize,
    pub credit_notes: usize,
    pub customer_balance_transactions: usize,
    pub payment_methods: usize,
    pub accounts: usize,
    /// Connect: one connected account per entry, with its own objects seeded as
    /// `SeedSpec::scaled(n)` (see [`crate::connect::seed`]).
    pub connected: Vec<usize>,
}

impl SeedSpec {
    /// A realistic mix scaled by the number of customers.
    pub fn scaled(customers: usize) -> SeedSpec {
        let c = customers;
        SeedSpec {
            seed: 42,
            anchor: 1_767_225_600, // 2026-01-01
            years: 4,
            customers: c,
            products: (c / 50).clamp(3, 200),
            prices_per_product: 3,
            subscriptions: c * 2 / 3,
            invoices: c * 2,
            max_lines: 4,
            invoice_items: c / 2,
            charges: c * 2,
            refunds: c / 10,
            disputes: c / 50,
            payouts: (c / 20).max(1),
            balance_transactions: c * 2,
            credit_notes: c / 20,
            customer_balance_transactions: c / 4,
            payment_methods: c,
            accounts: (c / 100).clamp(1, 20),
            connected: Vec::new(),
        }
    }

    /// Only `n` customers (for benchmarks that list one resource).
    pub fn only_customers(n: usize) -> SeedSpec {
        SeedSpec {
            products: 0,
            subscriptions: 0,
            invoices: 0,
            invoice_items: 0,
            charges: 0,
            refunds: 0,
            disputes: 0,
            payouts: 0,
            balance_transactions: 0,
            credit_notes: 0,
            customer_balance_transactions: 0,
            payment_methods: 0,
            accounts: 0,
            ..SeedSpec::scaled(n)
        }
    }
}

fn metadata(rng: &mut Rng) -> Value {
    if rng.chance(0.3) { json!({"crm_id": format!("crm-{}", rng.below(1_000_000))}) } else { json!({}) }
}

pub fn customer(rng: &mut Rng, created: i64, email: Option<String>, name: Option<String>) -> Value {
    let id = rng.id("cus_");
    let first = *rng.pick(FIRST);
    let last = *rng.pick(LAST);
    let email = email.unwrap_or_else(|| {
        format!("{}.{}.{}@example.com", first.to_lowercase(), last.to_lowercase(), rng.below(100_000))
    });
    json!({
        "id": id, "object": "customer",
        "address": {"city": "Berlin", "country": "DE", "line1": format!("{} Hauptstr.", rng.range(1, 200)),
                    "line2": null, "postal_code": format!("{:05}", rng.below(99_999)), "state": null},
        "balance": 0, "created": created, "currency": *rng.pick(CURRENCIES), "default_source": null,
        "delinquent": rng.chance(0.05), "description": null, "discount": null, "email": email,
        "invoice_prefix": format!("{:08X}", rng.below(0xFFFF_FFFF)),
        "invoice_settings": {"custom_fields": null, "default_payment_method": null, "footer": null, "rendering_options": null},
        "livemode": false, "metadata": metadata(rng), "name": name.unwrap_or_else(|| format!("{first} {last}")),
        "next_invoice_sequence": 1, "phone": null, "preferred_locales": [], "shipping": null,
        "tax_exempt": "none", "test_clock": null
    })
}

pub fn product(rng: &mut Rng, created: i64, name: &str) -> Value {
    json!({
        "id": rng.id("prod_"), "object": "product", "active": !rng.chance(0.1), "created": created,
        "default_price": null, "description": format!("{name} for growing teams"), "images": [],
        "livemode": false, "marketing_features": [], "metadata": {}, "name": name,
        "package_dimensions": null, "shippable": null, "statement_descriptor": null, "tax_code": null,
        "type": "service", "unit_label": null, "updated": created, "url": null
    })
}

pub fn price(rng: &mut Rng, created: i64, product: &str, unit_amount: i64, recurring: bool, active: bool) -> Value {
    json!({
        "id": rng.id("price_"), "object": "price", "active": active, "billing_scheme": "per_unit",
        "created": created, "currency": "usd", "custom_unit_amount": null, "livemode": false,
        "lookup_key": null, "metadata": {}, "nickname": null, "product": product,
        "recurring": if recurring { json!({"interval": "month", "interval_count": 1, "meter": null, "usage_type": "licensed", "trial_period_days": null}) } else { Value::Null },
        "tax_behavior": "unspecified", "tiers_mode": null, "transform_quantity": null,
        "type": if recurring { "recurring" } else { "one_time" },
        "unit_amount": unit_amount, "unit_amount_decimal": unit_amount.to_string()
    })
}

pub fn subscription_item(
    rng: &mut Rng,
    created: i64,
    sub: &str,
    price: &Value,
    quantity: i64,
    period: (i64, i64),
) -> Value {
    json!({
        "id": rng.id("si_"), "object": "subscription_item", "created": created, "metadata": {},
        "price": price, "quantity": quantity, "subscription": sub,
        "current_period_start": period.0, "current_period_end": period.1, "tax_rates": []
    })
}

pub fn subscription(rng: &mut Rng, created: i64, customer: &str, status: &str, now: i64) -> Value {
    let id = rng.id("sub_");
    let canceled = status == "canceled";
    json!({
        "id": id, "object": "subscription", "application": null, "billing_cycle_anchor": created,
        "cancel_at": null, "cancel_at_period_end": false,
        "canceled_at": if canceled { json!(now) } else { Value::Null },
        "collection_method": "charge_automatically", "created": created, "currency": "usd",
        "customer": customer, "days_until_due": null, "default_payment_method": null, "description": null,
        "discounts": [], "ended_at": if canceled { json!(now) } else { Value::Null },
        "items": {"object": "list", "data": [], "has_more": false, "url": format!("/v1/subscription_items?subscription={id}")},
        "latest_invoice": null, "livemode": false, "metadata": {}, "start_date": created,
        "status": status, "trial_end": null, "trial_start": null
    })
}

pub fn line_item(
    rng: &mut Rng,
    invoice: &str,
    amount: i64,
    currency: &str,
    period: (i64, i64),
    description: String,
    parent: Value,
) -> Value {
    json!({
        "id": rng.id("il_"), "object": "line_item", "amount": amount, "currency": currency,
        "description": description, "discountable": true, "discounts": [], "invoice": invoice,
        "livemode": false, "metadata": {}, "parent": parent,
        "period": {"start": period.0, "end": period.1}, "pricing": null, "quantity": 1
    })
}

#[allow(clippy::too_many_arguments)]
pub fn invoice(
    rng: &mut Rng,
    created: i64,
    customer: &str,
    subscription: Option<&str>,
    status: &str,
    currency: &str,
    number: u64,
) -> Value {
    let id = rng.id("in_");
    json!({
        "id": id, "object": "invoice", "account_country": "DE", "amount_due": 0, "amount_paid": 0,
        "amount_remaining": 0, "amount_shipping": 0, "attempt_count": 0, "attempted": status != "draft",
        "auto_advance": status == "draft", "billing_reason": if subscription.is_some() { "subscription_cycle" } else { "manual" },
        "collection_method": "charge_automatically", "created": created, "currency": currency,
        "customer": customer, "description": null, "due_date": null, "effective_at": if status == "draft" { Value::Null } else { json!(created) },
        "ending_balance": if status == "draft" { Value::Null } else { json!(0) },
        "hosted_invoice_url": null, "invoice_pdf": null, "livemode": false, "metadata": {},
        "lines": {"object": "list", "data": [], "has_more": false, "url": format!("/v1/invoices/{id}/lines")},
        "number": if status == "draft" { Value::Null } else { json!(format!("INV-{number:06}")) },
        "parent": match subscription {
            Some(s) => json!({"type": "subscription_details", "quote_details": null, "subscription_details": {"metadata": {}, "subscription": s}}),
            None => Value::Null,
        },
        "period_end": created, "period_start": created - 30 * 86_400, "starting_balance": 0,
        "status": status,
        "status_transitions": {"finalized_at": if status == "draft" { Value::Null } else { json!(created) }, "marked_uncollectible_at": null,
                               "paid_at": if status == "paid" { json!(created) } else { Value::Null }, "voided_at": null},
        "subtotal": 0, "total": 0, "total_excluding_tax": 0
    })
}

/// Recomputes an invoice's totals from its (complete) lines.
pub fn total_invoice(inv: &mut Value) {
    let total: i64 =
        inv["lines"]["data"].as_array().map(|a| a.iter().filter_map(|l| l["amount"].as_i64()).sum()).unwrap_or(0);
    let paid = inv["status"] == "paid";
    inv["subtotal"] = json!(total);
    inv["total"] = json!(total);
    inv["total_excluding_tax"] = json!(total);
    inv["amount_due"] = json!(total);
    inv["amount_paid"] = json!(if paid { total } else { 0 });
    inv["amount_remaining"] = json!(if paid || inv["status"] == "void" { 0 } else { total });
}

pub fn invoice_item(
    rng: &mut Rng,
    date: i64,
    customer: &str,
    invoice: Option<&str>,
    amount: i64,
    currency: &str,
) -> Value {
    json!({
        "id": rng.id("ii_"), "object": "invoiceitem", "amount": amount, "currency": currency,
        "customer": customer, "date": date, "description": "One-off service", "discountable": true,
        "discounts": [], "invoice": invoice, "livemode": false, "metadata": {},
        "parent": null, "period": {"start": date, "end": date}, "pricing": null,
        "proration": false, "quantity": 1, "tax_rates": []
    })
}

pub fn charge(
    rng: &mut Rng,
    created: i64,
    customer: Option<&str>,
    amount: i64,
    currency: &str,
    txn: &str,
    description: Option<String>,
) -> Value {
    let failed = rng.chance(0.05);
    json!({
        "id": rng.id("ch_"), "object": "charge", "amount": amount,
        "amount_captured": if failed { 0 } else { amount }, "amount_refunded": 0, "application": null,
        "balance_transaction": if failed { Value::Null } else { json!(txn) },
        "billing_details": {"address": null, "email": null, "name": null, "phone": null},
        "captured": !failed, "created": created, "currency": currency, "customer": customer,
        "description": description, "disputed": false,
        "failure_code": if failed { json!("card_declined") } else { Value::Null },
        "failure_message": if failed { json!("Your card was declined.") } else { Value::Null },
        "livemode": false, "metadata": {},
        "outcome": {"network_status": if failed { "declined_by_network" } else { "approved_by_network" }, "risk_level": "normal", "seller_message": "Payment complete.", "type": if failed { "issuer_declined" } else { "authorized" }},
        "paid": !failed, "payment_intent": rng.id("pi_"), "payment_method": rng.id("pm_"),
        "payment_method_details": {"card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030}, "type": "card"},
        "receipt_url": null, "refunded": false, "status": if failed { "failed" } else { "succeeded" }
    })
}

pub fn balance_transaction(
    rng: &mut Rng,
    id: String,
    created: i64,
    amount: i64,
    currency: &str,
    source: &str,
    kind: &str,
) -> Value {
    let fee = if kind == "charge" { amount * 29 / 1000 + 30 } else { 0 };
    json!({
        "id": id, "object": "balance_transaction", "amount": amount, "available_on": created + 2 * 86_400,
        "balance_type": "payments", "created": created, "currency": currency, "description": null,
        "exchange_rate": null, "fee": fee,
        "fee_details": if fee > 0 { json!([{"amount": fee, "application": null, "currency": currency, "description": "Stripe processing fees", "type": "stripe_fee"}]) } else { json!([]) },
        "net": amount - fee, "reporting_category": kind, "source": source,
        "status": if rng.chance(0.9) { "available" } else { "pending" }, "type": kind
    })
}

pub fn refund(rng: &mut Rng, created: i64, charge: &Value, amount: i64) -> Value {
    json!({
        "id": rng.id("re_"), "object": "refund", "amount": amount, "balance_transaction": null,
        "charge": charge["id"], "created": created, "currency": charge["currency"], "metadata": {},
        "payment_intent": charge["payment_intent"], "reason": "requested_by_customer",
        "receipt_number": null, "status": "succeeded"
    })
}

pub fn dispute(rng: &mut Rng, created: i64, charge: &Value) -> Value {
    json!({
        "id": rng.id("dp_"), "object": "dispute", "amount": charge["amount"], "balance_transactions": [],
        "charge": charge["id"], "created": created, "currency": charge["currency"],
        "evidence_details": {"due_by": created + 7 * 86_400, "has_evidence": false, "past_due": false, "submission_count": 0},
        "is_charge_refundable": false, "livemode": false, "metadata": {}, "payment_intent": charge["payment_intent"],
        "reason": *rng.pick(&["fraudulent", "product_not_received", "duplicate", "subscription_canceled"]),
        "status": *rng.pick(&["needs_response", "under_review", "won", "lost"])
    })
}

pub fn payout(rng: &mut Rng, created: i64, amount: i64) -> Value {
    json!({
        "id": rng.id("po_"), "object": "payout", "amount": amount, "arrival_date": created + 2 * 86_400,
        "automatic": true, "balance_transaction": null, "created": created, "currency": "usd",
        "description": "STRIPE PAYOUT", "destination": "ba_1FakeBankAccount000000", "failure_code": null,
        "failure_message": null, "livemode": false, "metadata": {}, "method": "standard",
        "source_type": "card", "statement_descriptor": null,
        "status": *rng.pick(&["paid", "paid", "paid", "pending", "in_transit", "failed"]), "type": "bank_account"
    })
}

pub fn credit_note(rng: &mut Rng, created: i64, inv: &Value, number: u64) -> Value {
    let id = rng.id("cn_");
    let total = inv["total"].as_i64().unwrap_or(0).max(1) / 2;
    let line = json!({"id": rng.id("cnli_"), "object": "credit_note_line_item", "amount": total,
                      "description": "Partial credit", "discount_amount": 0, "discount_amounts": [],
                      "invoice_line_item": inv["lines"]["data"][0]["id"], "livemode": false, "quantity": 1,
                      "tax_rates": [], "type": "invoice_line_item", "unit_amount": total});
    json!({
        "id": id, "object": "credit_note", "amount": total, "amount_shipping": 0, "created": created,
        "currency": inv["currency"], "customer": inv["customer"], "customer_balance_transaction": null,
        "discount_amount": 0, "discount_amounts": [], "effective_at": created, "invoice": inv["id"],
        "lines": {"object": "list", "data": [line], "has_more": false, "url": format!("/v1/credit_notes/{id}/lines")},
        "livemode": false, "memo": null, "metadata": {}, "number": format!("CN-{number:06}"),
        "out_of_band_amount": null, "pdf": "https://pay.stripe.com/credit_notes/fake/pdf",
        "reason": *rng.pick(&["duplicate", "order_change", "product_unsatisfactory"]), "refunds": [],
        "status": "issued", "subtotal": total, "total": total, "type": "post_payment", "voided_at": null
    })
}

pub fn customer_balance_transaction(
    rng: &mut Rng,
    created: i64,
    customer: &str,
    amount: i64,
    ending: i64,
    currency: &str,
) -> Value {
    json!({
        "id": rng.id("cbtxn_"), "object": "customer_balance_transaction", "amount": amount,
        "created": created, "credit_note": null, "currency": currency, "customer": customer,
        "description": "Goodwill credit", "ending_balance": ending, "invoice": null, "livemode": false,
        "metadata": null, "type": "adjustment"
    })
}

pub fn payment_method(rng: &mut Rng, created: i64, customer: Option<&str>) -> Value {
    let brand = *rng.pick(&["visa", "mastercard", "amex"]);
    json!({
        "id": rng.id("pm_"), "object": "payment_method", "allow_redisplay": "unspecified",
        "billing_details": {"address": null, "email": null, "name": null, "phone": null},
        "card": {"brand": brand, "checks": null, "country": "US", "exp_month": rng.range(1, 12), "exp_year": rng.range(2027, 2032),
                 "funding": "credit", "last4": format!("{:04}", rng.below(10_000))},
        "created": created, "customer": customer, "livemode": false, "metadata": {}, "type": "card"
    })
}

pub fn account(rng: &mut Rng, created: i64) -> Value {
    json!({
        "id": rng.id("acct_"), "object": "account", "business_profile": {"name": null, "url": null},
        "business_type": *rng.pick(&["individual", "company"]), "capabilities": {},
        "charges_enabled": rng.chance(0.8), "country": *rng.pick(&["US", "DE", "GB"]), "created": created,
        "default_currency": "usd", "details_submitted": true, "email": format!("owner{}@example.com", rng.below(10_000)),
        "metadata": {}, "payouts_enabled": rng.chance(0.8), "type": *rng.pick(&["express", "standard", "custom"])
    })
}

/// Fills `store` with a consistent account as described by `spec`.
pub fn seed(store: &mut Store, spec: &SeedSpec) {
    let mut rng = Rng::new(spec.seed);
    let start = spec.anchor - spec.years * 365 * 86_400;
    let end = spec.anchor;
    let t = |rng: &mut Rng| rng.range(start, end);

    let mut prices: Vec<Value> = Vec::new();
    for i in 0..spec.products {
        let created = t(&mut rng);
        let mut p = product(&mut rng, created, PRODUCTS[i % PRODUCTS.len()]);
        for j in 0..spec.prices_per_product {
            let pc = rng.range(created, end);
            let amount = 500 * (1 + rng.below(40) as i64);
            let active = j == 0 || !rng.chance(0.5);
            let pr = price(&mut rng, pc, p["id"].as_str().unwrap(), amount, j != 2, active);
            if j == 0 {
                p["default_price"] = pr["id"].clone();
            }
            prices.push(pr.clone());
            store.add(pr);
        }
        store.add(p);
    }

    let mut customers: Vec<(String, i64, String)> = Vec::with_capacity(spec.customers);
    for _ in 0..spec.customers {
        let created = t(&mut rng);
        let c = customer(&mut rng, created, None, None);
        customers.push((c["id"].as_str().unwrap().to_string(), created, c["currency"].as_str().unwrap().to_string()));
        store.add(c);
    }
    let pick_customer = |rng: &mut Rng| customers[rng.below(customers.len() as u64) as usize].clone();

    for i in 0..spec.payment_methods.min(spec.customers * 3) {
        let (cid, cc, _) = if spec.customers > 0 {
            customers[i % customers.len()].clone()
        } else {
            break;
        };
        let created = rng.range(cc, end);
        store.add(payment_method(&mut rng, created, Some(&cid)));
    }
    if spec.customers > 0 {
        for _ in 0..spec.customer_balance_transactions {
            let (cid, cc, cur) = pick_customer(&mut rng);
            let created = rng.range(cc, end);
            let amount = -(100 * (1 + rng.below(50) as i64));
            let bal = store.col("customers").get(&cid).and_then(|c| c["balance"].as_i64()).unwrap_or(0) + amount;
            if let Some(c) = store.col_mut("customers").get_mut(&cid) {
                c["balance"] = json!(bal);
            }
            store.add(customer_balance_transaction(&mut rng, created, &cid, amount, bal, &cur));
        }
    }

    let recurring: Vec<&Value> = prices.iter().filter(|p| p["type"] == "recurring").collect();
    let mut subs: Vec<(String, String, i64, Vec<Value>)> = Vec::new();
    if spec.customers > 0 && !recurring.is_empty() {
        for _ in 0..spec.subscriptions {
            let (cid, cc, _) = pick_customer(&mut rng);
            let created = rng.range(cc, end);
            let status = *rng.pick(&[
                "active", "active", "active", "active", "past_due", "trialing", "canceled", "canceled", "unpaid",
            ]);
            let ended = rng.range(created, end);
            let mut s = subscription(&mut rng, created, &cid, status, ended);
            let sid = s["id"].as_str().unwrap().to_string();
            // a few subscriptions have more items than Stripe embeds (10)
            let n_items = if rng.chance(0.02) { 12 + rng.below(5) as usize } else { 1 + rng.below(3) as usize };
            let mut items = Vec::new();
            for _ in 0..n_items {
                let pr = (*rng.pick(&recurring)).clone();
                let q = 1 + rng.below(5) as i64;
                items.push(subscription_item(&mut rng, created, &sid, &pr, q, (end - 30 * 86_400, end)));
            }
            s["items"]["data"] = Value::Array(items.clone());
            subs.push((sid, cid, created, items));
            store.add(s);
        }
    }

    let mut paid_invoices: Vec<Value> = Vec::new();
    let mut number = 0u64;
    if spec.customers > 0 {
        for _ in 0..spec.invoices {
            number += 1;
            let from_sub = !subs.is_empty() && rng.chance(0.7);
            let (cid, cc, sub) = if from_sub {
                let s = &subs[rng.below(subs.len() as u64) as usize];
                (s.1.clone(), s.2, Some(s.0.clone()))
            } else {
                let (cid, cc, _) = pick_customer(&mut rng);
                (cid, cc, None)
            };
            let created = rng.range(cc, end);
            let status = *rng.pick(&["paid", "paid", "paid", "paid", "open", "draft", "void", "uncollectible"]);
            let mut inv = invoice(&mut rng, created, &cid, sub.as_deref(), status, "usd", number);
            let iid = inv["id"].as_str().unwrap().to_string();
            let n_lines = 1 + rng.below(spec.max_lines.max(1) as u64) as usize;
            let mut lines = Vec::with_capacity(n_lines);
            for k in 0..n_lines {
                let amount = 500 * (1 + rng.below(40) as i64);
                let parent = match &sub {
                    Some(s) => {
                        json!({"type": "subscription_item_details", "subscription_item_details": {"subscription": s, "subscription_item": format!("si_line{k}"), "proration": false}, "invoice_item_details": null})
                    }
                    None => {
                        json!({"type": "invoice_item_details", "invoice_item_details": {"invoice_item": format!("ii_line{k}"), "proration": false}, "subscription_item_details": null})
                    }
                };
                lines.push(line_item(
                    &mut rng,
                    &iid,
                    amount,
                    "usd",
                    (created - 30 * 86_400, created),
                    format!("Line {}", k + 1),
                    parent,
                ));
            }
            inv["lines"]["data"] = Value::Array(lines);
            total_invoice(&mut inv);
            if status == "paid" && paid_invoices.len() < spec.credit_notes.max(64) {
                paid_invoices.push(inv.clone());
            }
            store.add(inv);
        }
        for i in 0..spec.credit_notes {
            if paid_invoices.is_empty() {
                break;
            }
            let inv = paid_invoices[i % paid_invoices.len()].clone();
            let created = rng.range(inv["created"].as_i64().unwrap_or(start), end);
            store.add(credit_note(&mut rng, created, &inv, i as u64 + 1));
        }
        for _ in 0..spec.invoice_items {
            let (cid, cc, cur) = pick_customer(&mut rng);
            let date = rng.range(cc, end);
            let amount = 100 * (1 + rng.below(100) as i64);
            store.add(invoice_item(&mut rng, date, &cid, None, amount, &cur));
        }
    }

    let mut charges: Vec<Value> = Vec::new();
    let mut txns = 0usize;
    for i in 0..spec.charges {
        let (cust, cc) = if spec.customers > 0 && rng.chance(0.9) {
            let (cid, cc, _) = pick_customer(&mut rng);
            (Some(cid), cc)
        } else {
            (None, start)
        };
        let created = rng.range(cc, end);
        let amount = 100 * (1 + rng.below(500) as i64);
        let txn_id = rng.id("txn_");
        let desc = if i % 7 == 0 { Some(format!("Order #{}", 10_000 + i)) } else { None };
        let ch = charge(&mut rng, created, cust.as_deref(), amount, "usd", &txn_id, desc);
        if ch["paid"] == true && txns < spec.balance_transactions {
            txns += 1;
            store.add(balance_transaction(
                &mut rng,
                txn_id,
                created,
                amount,
                "usd",
                ch["id"].as_str().unwrap(),
                "charge",
            ));
        }
        if charges.len() < 10_000 {
            charges.push(ch.clone());
        }
        store.add(ch);
    }
    let paid: Vec<&Value> = charges.iter().filter(|c| c["paid"] == true).collect();
    if !paid.is_empty() {
        for _ in 0..spec.refunds {
            let ch = *rng.pick(&paid);
            let created = rng.range(ch["created"].as_i64().unwrap_or(start), end);
            let amount = ch["amount"].as_i64().unwrap_or(100) / 2;
            let r = refund(&mut rng, created, ch, amount);
            if let Some(c) = store.col_mut("charges").get_mut(ch["id"].as_str().unwrap()) {
                let refunded = c["amount_refunded"].as_i64().unwrap_or(0) + amount;
                c["amount_refunded"] = json!(refunded);
                c["refunded"] = json!(refunded >= c["amount"].as_i64().unwrap_or(0));
            }
            if txns < spec.balance_transactions {
                txns += 1;
                let id = rng.id("txn_");
                store.add(balance_transaction(
                    &mut rng,
                    id,
                    created,
                    -amount,
                    "usd",
                    r["id"].as_str().unwrap(),
                    "refund",
                ));
            }
            store.add(r);
        }
        for _ in 0..spec.disputes {
            let ch = *rng.pick(&paid);
            let created = rng.range(ch["created"].as_i64().unwrap_or(start), end);
            if let Some(c) = store.col_mut("charges").get_mut(ch["id"].as_str().unwrap()) {
                c["disputed"] = json!(true);
            }
            store.add(dispute(&mut rng, created, ch));
        }
    }
    for _ in 0..spec.payouts {
        let created = t(&mut rng);
        let amount = 10_000 * (1 + rng.below(100) as i64);
        let p = payout(&mut rng, created, amount);
        if txns < spec.balance_transactions {
            txns += 1;
            let id = rng.id("txn_");
            store.add(balance_transaction(&mut rng, id, created, -amount, "usd", p["id"].as_str().unwrap(), "payout"));
        }
        store.add(p);
    }
    while txns < spec.balance_transactions {
        txns += 1;
        let created = t(&mut rng);
        let id = rng.id("txn_");
        let src = rng.id("adj_");
        let amount = 100 * rng.range(-50, 50);
        store.add(balance_transaction(&mut rng, id, created, amount, "usd", &src, "adjustment"));
    }
    for _ in 0..spec.accounts {
        let created = t(&mut rng);
        store.add(account(&mut rng, created));
    }
}
