//! Restricted keys: which permission each API path needs, and Stripe's 403 for
//! a key that lacks it.
//!
//! A restricted key (`rk_...`) is registered with a named set of permissions
//! (`Faults::restricted_keys`, or `--restricted-key KEY=customer_read,...`). A
//! permission is `<area>_read` or `<area>_write`; write includes read. GET needs
//! read, every other method write. A request outside the set is answered 403
//! with the body Stripe sends: "... does not have the required permissions for
//! this endpoint ... Having the 'rak_<area>_<access>' permission would allow this
//! request to continue." An `rk_` key that is not registered may do everything
//! (except the collections in `Faults::restricted_denied`).

/// (path pattern, area, Dashboard name of the permission). The first pattern
/// whose segments prefix the path wins; `*` matches any one segment.
pub const AREAS: &[(&str, &str, &str)] = &[
    ("/v1/customers/*/payment_methods", "payment_method", "Core → Payment methods"),
    ("/v1/customers", "customer", "Core → Customers"),
    ("/v1/payment_methods", "payment_method", "Core → Payment methods"),
    ("/v1/balance_transactions", "balance_transaction_source", "Core → Balance transaction sources"),
    ("/v1/balance", "balance", "Core → Balance"),
    ("/v1/charges", "charge", "Core → Charges and refunds"),
    ("/v1/refunds", "charge", "Core → Charges and refunds"),
    ("/v1/disputes", "dispute", "Core → Disputes"),
    ("/v1/events", "event", "Core → Events"),
    ("/v1/payouts", "payout", "Core → Payouts"),
    ("/v1/products", "product", "Core → Products"),
    ("/v1/credit_notes", "credit_note", "Billing → Credit notes"),
    ("/v1/invoices", "invoice", "Billing → Invoices"),
    ("/v1/invoiceitems", "invoice", "Billing → Invoices"),
    ("/v1/prices", "price", "Billing → Prices"),
    ("/v1/subscriptions", "subscription", "Billing → Subscriptions"),
    ("/v1/subscription_items", "subscription", "Billing → Subscriptions"),
    ("/v1/accounts", "connect", "Connect"),
    ("/v1/account", "connect", "Connect"),
    ("/v1/webhook_endpoints", "webhook", "Webhook → Webhook Endpoints"),
];

/// The read permissions Stripe data tools tell their users to give a restricted
/// key: Core (balance transaction sources, charges and refunds, customers,
/// disputes, payment methods, payouts, products), Billing (credit notes,
/// invoices, prices, subscriptions) and Connect. No Events, no webhooks.
pub const DATA_TOOL_READ: &[&str] = &[
    "balance_transaction_source_read",
    "charge_read",
    "customer_read",
    "dispute_read",
    "payment_method_read",
    "payout_read",
    "product_read",
    "credit_note_read",
    "invoice_read",
    "price_read",
    "subscription_read",
    "connect_read",
];

fn matches(pattern: &str, path: &str) -> bool {
    let mut p = path.split('/');
    pattern.split('/').all(|want| p.next().is_some_and(|got| want == "*" || want == got))
}

/// The area of a path (`/v1/invoices/in_1/lines` → `invoice`), if any.
pub fn area_of(path: &str) -> Option<&'static str> {
    AREAS.iter().find(|(pattern, _, _)| matches(pattern, path)).map(|(_, area, _)| *area)
}

/// The permission a request needs: `customer_read`, `webhook_write`, ...
pub fn needed(method: &str, path: &str) -> Option<String> {
    let access = if method == "GET" { "read" } else { "write" };
    area_of(path).map(|a| format!("{a}_{access}"))
}

/// Whether a set of permissions grants `needed` (write includes read).
pub fn grants(granted: &[String], needed: &str) -> bool {
    granted.iter().any(|g| g == needed || needed.strip_suffix("_read").is_some_and(|a| *g == format!("{a}_write")))
}

/// Stripe's 403 message for a key lacking `permission`.
pub fn denial_message(key_tail: &str, permission: &str) -> String {
    format!(
        "The provided key 'rk_test_***{key_tail}' does not have the required permissions for this endpoint on account 'acct_1FakePlatform0000'. Having the 'rak_{permission}' permission would allow this request to continue."
    )
}

/// The mapping as text, for `--help` and error messages of the fake.
pub fn describe() -> String {
    let mut out = String::new();
    for (pattern, area, dashboard) in AREAS {
        out.push_str(&format!("  {pattern:<34} {area}_read / {area}_write   ({dashboard})\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_area_most_specific_first() {
        assert_eq!(area_of("/v1/customers/cus_1/payment_methods"), Some("payment_method"));
        assert_eq!(area_of("/v1/customers/cus_1/balance_transactions"), Some("customer"));
        assert_eq!(area_of("/v1/customers"), Some("customer"));
        assert_eq!(area_of("/v1/balance_transactions/txn_1"), Some("balance_transaction_source"));
        assert_eq!(area_of("/v1/balance"), Some("balance"));
        assert_eq!(area_of("/v1/invoices/in_1/lines"), Some("invoice"));
        assert_eq!(area_of("/v1/invoiceitems"), Some("invoice"));
        assert_eq!(area_of("/v1/account"), Some("connect"));
        assert_eq!(area_of("/v1/nothing"), None);
        assert_eq!(needed("POST", "/v1/webhook_endpoints").as_deref(), Some("webhook_write"));
    }

    #[test]
    fn write_includes_read_but_not_the_other_way() {
        let g = vec!["customer_write".to_string(), "event_read".to_string()];
        assert!(grants(&g, "customer_read"));
        assert!(grants(&g, "customer_write"));
        assert!(grants(&g, "event_read"));
        assert!(!grants(&g, "event_write"));
        assert!(!grants(&g, "invoice_read"));
    }
}
