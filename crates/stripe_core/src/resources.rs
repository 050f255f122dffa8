//! The resource registry: one table-driven definition of every Stripe resource that
//! stripe_sync exposes as a foreign table and keeps as a materialized table.
//!
//! Everything that differs between resources lives in [`RESOURCES`]; code elsewhere
//! (FDW, refresh, webhooks, the SQL generator) reads this table and never matches on
//! a resource name.

use std::fmt;

/// Postgres type of a typed column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Text,
    /// Integer amounts in the currency's minor unit, counts.
    BigInt,
    Bool,
    /// Stripe's unix seconds, exposed as `timestamptz`.
    Timestamp,
}

impl ColType {
    pub fn sql(self) -> &'static str {
        match self {
            ColType::Text => "text",
            ColType::BigInt => "bigint",
            ColType::Bool => "boolean",
            ColType::Timestamp => "timestamptz",
        }
    }
}

/// A typed column beside `id` and `attrs`.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Column name in Postgres.
    pub name: &'static str,
    pub ty: ColType,
    /// Dotted path of the value in the Stripe object (`recurring.interval`).
    pub path: &'static str,
    /// Name of the list filter that `column = value` can be pushed down to, if any.
    pub filter: Option<&'static str>,
    /// A reference other tables join on: gets an index in the materialized table.
    pub reference: bool,
    /// Values the list filter accepts (Stripe answers 400 to others); empty = any.
    pub filter_values: &'static [&'static str],
    pub comment: &'static str,
}

/// What an event means for the row of its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventEffect {
    /// The event's object is the current state of the row.
    Upsert,
    /// The object is gone: remove the row.
    Delete,
    /// A payment method was detached from its customer: remove the customer's row.
    Detach,
    /// The event names the object without carrying it (`account.application.authorized`
    /// carries the platform's application, not the account): fetch the object.
    Fetch,
}

/// Where the objects of a resource are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One list for the whole account.
    Account,
    /// One list per customer: the path has a `{customer}` placeholder. The
    /// customer is the resource's [`Parent`] ([`CUSTOMER_PARENT`]).
    PerCustomer,
}

/// The owner of per-customer resources: whose list is read to reach theirs, the
/// column (and object field, and path placeholder) naming the owner, and the
/// owner's deletion, which takes its children along (the cascade).
#[derive(Debug)]
pub struct Parent {
    /// The owning resource.
    pub resource: &'static str,
    /// Column, object field and `{placeholder}` holding the owner's id.
    pub column: &'static str,
    /// The event that deletes the owner, and with it every child row.
    pub deleted_event: &'static str,
}

impl Parent {
    /// The list of the owners (`/v1/customers`).
    pub fn list_path(&self) -> &'static str {
        RESOURCES.iter().find(|r| r.name == self.resource).map_or("", |r| r.list_path)
    }
}

/// Customers own customer balance transactions and payment methods.
pub const CUSTOMER_PARENT: Parent =
    Parent { resource: "customer", column: "customer", deleted_event: "customer.deleted" };

/// The events list (events refreshes, the events cursor).
pub const EVENTS_PATH: &str = "/v1/events";
/// The resource whose objects are a platform's connected accounts: its rows are
/// the platform's own (a connected account lists none), and a Connect event
/// about an account (`account.updated`, delivered with `account` set) changes
/// the platform's row of it.
pub const CONNECTED_ACCOUNTS: &str = "account";
/// The account a key (or `Stripe-Account`) acts as.
pub const OWN_ACCOUNT_PATH: &str = "/v1/account";
/// Connect events of a platform about its connected accounts: an account that
/// revoked access, and one that granted it (Standard accounts). Their object is
/// the platform's application; the account is the event's `account`.
pub const ACCOUNT_DEAUTHORIZED_EVENT: &str = "account.application.deauthorized";
pub const ACCOUNT_AUTHORIZED_EVENT: &str = "account.application.authorized";

/// The id of the object an event is about: its `data.object.id`, or for an
/// account's grant or revocation of the platform's access (whose object is the
/// platform's application) the connected account, the event's `account`. None
/// for those events without `account`: an account's own endpoint hears of the
/// applications it authorized, which are no row of any table.
pub fn event_subject(event: &serde_json::Value) -> Option<&str> {
    let kind = event.get("type").and_then(serde_json::Value::as_str)?;
    if kind == ACCOUNT_AUTHORIZED_EVENT || kind == ACCOUNT_DEAUTHORIZED_EVENT {
        return event.get("account").and_then(serde_json::Value::as_str);
    }
    event.get("data")?.get("object")?.get("id")?.as_str()
}
/// Webhook endpoints (create_webhook, delete_webhook, webhook_status).
pub const WEBHOOK_ENDPOINTS_PATH: &str = "/v1/webhook_endpoints";

/// One Stripe resource.
#[derive(Debug)]
pub struct Resource {
    /// Canonical snake_case name: table names, SQL arguments.
    pub name: &'static str,
    /// The CamelCase name PostHog users know.
    pub camel: &'static str,
    /// Stripe's `object` value.
    pub object: &'static str,
    /// Id prefix (`cus_`).
    pub id_prefix: &'static str,
    pub scope: Scope,
    /// List path; per-customer resources contain `{customer}`.
    pub list_path: &'static str,
    /// Retrieve path with an `{id}` (and for per-customer resources `{customer}`) placeholder.
    pub retrieve_path: &'static str,
    /// A retrieve path that needs no parent id, for per-customer resources that have one.
    pub retrieve_alone: Option<&'static str>,
    /// Whether the list accepts `created` / `created[gt|gte|lt|lte]`.
    pub created_filter: bool,
    /// Field holding the creation time (`date` for invoice items).
    pub created_field: &'static str,
    /// A plain list leaves objects out: these parameter sets, listed one after the
    /// other, together return everything (prices: active=true then active=false).
    /// Empty = one plain list.
    pub list_variants: &'static [&'static [(&'static str, &'static str)]],
    /// Typed columns, besides `id`, `created` and `attrs`.
    pub columns: &'static [Column],
    /// Embedded lists Stripe truncates, completed by paging their `url`.
    pub nested_lists: &'static [&'static str],
    /// Webhook/event types that carry this resource, with their effect.
    pub events: &'static [(&'static str, EventEffect)],
    /// Whether events report every creation, change and deletion, so a table can
    /// follow them (not for balance transactions and customer balance
    /// transactions, which have no events, nor connected accounts, which only have
    /// `account.updated`; invoice items report no updates since 2024-04-10).
    pub events_complete: bool,
    /// The restricted-key permission (as the Stripe Dashboard names it) that reading
    /// this resource's own list needs. Per-customer resources also need
    /// customers' (to list the customers).
    pub permission: &'static str,
    pub comment: &'static str,
}

/// The permission `/v1/events` needs (events refreshes, the events cursor).
pub const EVENTS_PERMISSION: &str = "Core → Events: Read";
/// The permission creating and deleting webhook endpoints needs.
pub const WEBHOOK_PERMISSION: &str = "Webhook Endpoints: Write";

const fn col(name: &'static str, ty: ColType, filter: Option<&'static str>, comment: &'static str) -> Column {
    Column { name, ty, path: name, filter, reference: false, filter_values: &[], comment }
}

/// A column whose list filter takes one of a fixed set of values.
const fn enumerated(name: &'static str, values: &'static [&'static str], comment: &'static str) -> Column {
    Column { name, ty: ColType::Text, path: name, filter: Some(name), reference: false, filter_values: values, comment }
}

const fn reference(name: &'static str, filter: Option<&'static str>, comment: &'static str) -> Column {
    Column { name, ty: ColType::Text, path: name, filter, reference: true, filter_values: &[], comment }
}

const fn at(name: &'static str, ty: ColType, path: &'static str, comment: &'static str) -> Column {
    Column { name, ty, path, filter: None, reference: false, filter_values: &[], comment }
}

use ColType::{BigInt, Bool, Text, Timestamp};
use EventEffect::{Delete, Detach, Fetch, Upsert};

const INVOICE_STATUS: &[&str] = &["draft", "open", "paid", "uncollectible", "void"];
const SUBSCRIPTION_STATUS: &[&str] = &[
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
];
const COLLECTION_METHODS: &[&str] = &["charge_automatically", "send_invoice"];

const AMOUNT: &str = "Amount in the currency's smallest unit (cents for USD).";
const CURRENCY: &str = "Three-letter ISO currency code, lower case.";

/// Every resource stripe_sync covers, in canonical order.
pub static RESOURCES: &[Resource] = &[
    Resource {
        name: "account",
        camel: "Account",
        object: "account",
        id_prefix: "acct_",
        scope: Scope::Account,
        list_path: "/v1/accounts",
        retrieve_path: "/v1/accounts/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "created",
        list_variants: &[],
        columns: &[
            col("business_type", Text, None, "Business type of the connected account."),
            col("country", Text, None, "Country of the account (ISO 3166-1 alpha-2)."),
            col("email", Text, None, "Email address of the account's representative."),
            col("type", Text, None, "Account type: standard, express, custom or none."),
            col("charges_enabled", Bool, None, "Whether the account can create live charges."),
            col("payouts_enabled", Bool, None, "Whether Stripe can send payouts to this account."),
            col("details_submitted", Bool, None, "Whether account details were submitted."),
        ],
        nested_lists: &[],
        events: &[("account.updated", Upsert), (ACCOUNT_AUTHORIZED_EVENT, Fetch), (ACCOUNT_DEAUTHORIZED_EVENT, Delete)],
        events_complete: false,
        permission: "Connect: Read",
        comment: "Connected accounts of a Connect platform (empty for other accounts).",
    },
    Resource {
        name: "balance_transaction",
        camel: "BalanceTransaction",
        object: "balance_transaction",
        id_prefix: "txn_",
        scope: Scope::Account,
        list_path: "/v1/balance_transactions",
        retrieve_path: "/v1/balance_transactions/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "created",
        list_variants: &[],
        columns: &[
            col("amount", BigInt, None, "Gross amount, in the currency's smallest unit."),
            col("currency", Text, Some("currency"), CURRENCY),
            col("description", Text, None, "An arbitrary string attached to the transaction."),
            col("fee", BigInt, None, "Fees paid, in the currency's smallest unit."),
            col("net", BigInt, None, "Net amount (amount minus fee)."),
            col("status", Text, None, "available or pending."),
            col("type", Text, Some("type"), "Transaction type: charge, refund, payout, stripe_fee, ..."),
            col("reporting_category", Text, None, "Stripe's reporting category."),
            reference("source", Some("source"), "Id of the object that caused the transaction."),
            at("available_on", Timestamp, "available_on", "When the funds become available."),
        ],
        nested_lists: &[],
        events: &[],
        events_complete: false,
        permission: "Core → Balance transaction sources: Read",
        comment: "Balance transactions: every movement of funds in the Stripe balance.",
    },
    Resource {
        name: "charge",
        camel: "Charge",
        object: "charge",
        id_prefix: "ch_",
        scope: Scope::Account,
        list_path: "/v1/charges",
        retrieve_path: "/v1/charges/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "created",
        list_variants: &[],
        columns: &[
            col("amount", BigInt, None, AMOUNT),
            col("amount_captured", BigInt, None, "Amount captured, in the smallest unit."),
            col("amount_refunded", BigInt, None, "Amount refunded, in the smallest unit."),
            col("currency", Text, None, CURRENCY),
            reference("customer", Some("customer"), "Id of the customer charged."),
            col("description", Text, None, "An arbitrary string attached to the charge."),
            col("paid", Bool, None, "Whether the charge succeeded or was authorized."),
            col("captured", Bool, None, "Whether the charge was captured."),
            col("refunded", Bool, None, "Whether the charge was fully refunded."),
            col("disputed", Bool, None, "Whether the charge was disputed."),
            col("status", Text, None, "succeeded, pending or failed."),
            reference("payment_intent", Some("payment_intent"), "Id of the PaymentIntent."),
            reference("balance_transaction", None, "Id of the balance transaction."),
        ],
        nested_lists: &[],
        events: &[
            ("charge.captured", Upsert),
            ("charge.expired", Upsert),
            ("charge.failed", Upsert),
            ("charge.pending", Upsert),
            ("charge.refunded", Upsert),
            ("charge.succeeded", Upsert),
            ("charge.updated", Upsert),
        ],
        events_complete: true,
        permission: "Core → Charges and refunds: Read",
        comment: "Charges: attempts to move money into the Stripe account.",
    },
    Resource {
        name: "credit_note",
        camel: "CreditNote",
        object: "credit_note",
        id_prefix: "cn_",
        scope: Scope::Account,
        list_path: "/v1/credit_notes",
        retrieve_path: "/v1/credit_notes/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "created",
        list_variants: &[],
        columns: &[
            col("amount", BigInt, None, "Credit note total, in the smallest unit."),
            col("currency", Text, None, CURRENCY),
            reference("customer", Some("customer"), "Id of the customer."),
            reference("invoice", Some("invoice"), "Id of the credited invoice."),
            col("number", Text, None, "Credit note number."),
            col("reason", Text, None, "Reason: duplicate, fraudulent, order_change, ..."),
            col("status", Text, None, "issued or void."),
            col("type", Text, None, "pre_payment or post_payment."),
        ],
        nested_lists: &["lines"],
        events: &[("credit_note.created", Upsert), ("credit_note.updated", Upsert), ("credit_note.voided", Upsert)],
        events_complete: true,
        permission: "Billing → Credit notes: Read",
        comment: "Credit notes issued against invoices.",
    },
    Resource {
        name: "customer",
        camel: "Customer",
        object: "customer",
        id_prefix: "cus_",
        scope: Scope::Account,
        list_path: "/v1/customers",
        retrieve_path: "/v1/customers/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "created",
        list_variants: &[],
        columns: &[
            col("email", Text, Some("email"), "Customer's email address (list filter is case-sensitive)."),
            col("name", Text, None, "Customer's full name or business name."),
            col("description", Text, None, "An arbitrary string attached to the customer."),
            col("phone", Text, None, "Customer's phone number."),
            col("currency", Text, None, "Default currency for recurring billing."),
            col("balance", BigInt, None, "Credit balance in the smallest unit (negative = credit)."),
            col("delinquent", Bool, None, "Whether the latest invoice is overdue."),
        ],
        nested_lists: &[],
        events: &[("customer.created", Upsert), ("customer.updated", Upsert), ("customer.deleted", Delete)],
        events_complete: true,
        permission: "Core → Customers: Read",
        comment: "Customers of the Stripe account.",
    },
    Resource {
        name: "customer_balance_transaction",
        camel: "CustomerBalanceTransaction",
        object: "customer_balance_transaction",
        id_prefix: "cbtxn_",
        scope: Scope::PerCustomer,
        list_path: "/v1/customers/{customer}/balance_transactions",
        retrieve_path: "/v1/customers/{customer}/balance_transactions/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "created",
        list_variants: &[],
        columns: &[
            reference("customer", None, "Id of the customer whose balance changed."),
            col("amount", BigInt, None, "Change to the balance, in the smallest unit (negative = credit)."),
            col("currency", Text, None, CURRENCY),
            col("description", Text, None, "An arbitrary string attached to the transaction."),
            col("ending_balance", BigInt, None, "Customer balance after this transaction."),
            reference("invoice", Some("invoice"), "Id of the invoice this transaction belongs to."),
            reference("credit_note", None, "Id of the credit note."),
            col("type", Text, None, "adjustment, applied_to_invoice, credit_note, ..."),
        ],
        nested_lists: &[],
        // Stripe sends no event for these; a balance change shows as customer.updated.
        events: &[],
        events_complete: false,
        permission: "Core → Customers: Read",
        comment: "Changes to customers' credit balances (listed per customer).",
    },
    Resource {
        name: "customer_payment_method",
        camel: "CustomerPaymentMethod",
        object: "payment_method",
        id_prefix: "pm_",
        scope: Scope::PerCustomer,
        list_path: "/v1/customers/{customer}/payment_methods",
        retrieve_path: "/v1/customers/{customer}/payment_methods/{id}",
        // payment methods can be retrieved without their customer
        retrieve_alone: Some("/v1/payment_methods/{id}"),
        created_filter: false,
        created_field: "created",
        list_variants: &[],
        columns: &[
            reference("customer", None, "Id of the customer the payment method is attached to."),
            col("type", Text, Some("type"), "Payment method type: card, sepa_debit, ..."),
            at("card_brand", Text, "card.brand", "Card brand, for cards."),
            at("card_last4", Text, "card.last4", "Last four digits, for cards."),
            at("billing_email", Text, "billing_details.email", "Billing email."),
        ],
        nested_lists: &[],
        events: &[
            ("payment_method.attached", Upsert),
            ("payment_method.updated", Upsert),
            ("payment_method.automatically_updated", Upsert),
            ("payment_method.detached", Detach),
        ],
        events_complete: true,
        permission: "Core → Payment methods: Read",
        comment: "Payment methods attached to customers (listed per customer).",
    },
    Resource {
        name: "dispute",
        camel: "Dispute",
        object: "dispute",
        id_prefix: "dp_",
        scope: Scope::Account,
        list_path: "/v1/disputes",
        retrieve_path: "/v1/disputes/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "created",
        list_variants: &[],
        columns: &[
            col("amount", BigInt, None, "Disputed amount, in the smallest unit."),
            col("currency", Text, None, CURRENCY),
            reference("charge", Some("charge"), "Id of the disputed charge."),
            reference("payment_intent", Some("payment_intent"), "Id of the PaymentIntent."),
            col("reason", Text, None, "Reason given by the cardholder."),
            col("status", Text, None, "warning_needs_response, needs_response, won, lost, ..."),
            col("is_charge_refundable", Bool, None, "Whether the charge can still be refunded."),
        ],
        nested_lists: &[],
        events: &[
            ("charge.dispute.created", Upsert),
            ("charge.dispute.updated", Upsert),
            ("charge.dispute.closed", Upsert),
            ("charge.dispute.funds_reinstated", Upsert),
            ("charge.dispute.funds_withdrawn", Upsert),
        ],
        events_complete: true,
        permission: "Core → Disputes: Read",
        comment: "Disputes (chargebacks) raised against charges.",
    },
    Resource {
        name: "invoice",
        camel: "Invoice",
        object: "invoice",
        id_prefix: "in_",
        scope: Scope::Account,
        list_path: "/v1/invoices",
        retrieve_path: "/v1/invoices/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "created",
        list_variants: &[],
        columns: &[
            reference("customer", Some("customer"), "Id of the customer billed."),
            Column {
                name: "subscription",
                ty: Text,
                path: "parent.subscription_details.subscription",
                filter: Some("subscription"),
                reference: true,
                filter_values: &[],
                comment: "Id of the subscription that created the invoice, if any.",
            },
            enumerated("status", INVOICE_STATUS, "draft, open, paid, uncollectible or void."),
            enumerated("collection_method", COLLECTION_METHODS, "charge_automatically or send_invoice."),
            col("number", Text, None, "Invoice number."),
            col("currency", Text, None, CURRENCY),
            col("amount_due", BigInt, None, "Final amount due, in the smallest unit."),
            col("amount_paid", BigInt, None, "Amount paid, in the smallest unit."),
            col("amount_remaining", BigInt, None, "Amount remaining, in the smallest unit."),
            col("subtotal", BigInt, None, "Total before discounts and taxes."),
            col("total", BigInt, None, "Total after discounts and taxes."),
            col("billing_reason", Text, None, "Why the invoice was created."),
            at("due_date", Timestamp, "due_date", "When payment is due."),
            at("period_start", Timestamp, "period_start", "Start of the usage period."),
            at("period_end", Timestamp, "period_end", "End of the usage period."),
        ],
        nested_lists: &["lines"],
        events: &[
            ("invoice.created", Upsert),
            ("invoice.updated", Upsert),
            ("invoice.deleted", Delete),
            ("invoice.finalized", Upsert),
            ("invoice.finalization_failed", Upsert),
            ("invoice.marked_uncollectible", Upsert),
            ("invoice.overdue", Upsert),
            ("invoice.paid", Upsert),
            ("invoice.payment_action_required", Upsert),
            ("invoice.payment_failed", Upsert),
            ("invoice.payment_succeeded", Upsert),
            ("invoice.sent", Upsert),
            ("invoice.voided", Upsert),
            ("invoice.will_be_due", Upsert),
        ],
        events_complete: true,
        permission: "Billing → Invoices: Read",
        comment: "Invoices, with all their line items in attrs->'lines'.",
    },
    Resource {
        name: "invoice_item",
        camel: "InvoiceItem",
        object: "invoiceitem",
        id_prefix: "ii_",
        scope: Scope::Account,
        list_path: "/v1/invoiceitems",
        retrieve_path: "/v1/invoiceitems/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "date",
        list_variants: &[],
        columns: &[
            reference("customer", Some("customer"), "Id of the customer."),
            reference("invoice", Some("invoice"), "Id of the invoice the item is on (null while pending)."),
            col("amount", BigInt, None, AMOUNT),
            col("currency", Text, None, CURRENCY),
            col("description", Text, None, "An arbitrary string attached to the item."),
            col("quantity", BigInt, None, "Quantity of units."),
        ],
        nested_lists: &[],
        events: &[("invoiceitem.created", Upsert), ("invoiceitem.deleted", Delete)],
        // Stripe sends no invoiceitem.updated (removed in 2024-04-10): an edit of a
        // pending item, or its attachment to an invoice, never comes as an event, so
        // events mode reads the list again (webhooks still apply creations and deletions)
        events_complete: false,
        permission: "Billing → Invoices: Read",
        comment: "Invoice items: one-off charges added to invoices.",
    },
    Resource {
        name: "payout",
        camel: "Payout",
        object: "payout",
        id_prefix: "po_",
        scope: Scope::Account,
        list_path: "/v1/payouts",
        retrieve_path: "/v1/payouts/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "created",
        list_variants: &[],
        columns: &[
            col("amount", BigInt, None, AMOUNT),
            col("currency", Text, None, CURRENCY),
            at("arrival_date", Timestamp, "arrival_date", "When the payout is expected in the bank."),
            enumerated(
                "status",
                &["pending", "paid", "failed", "canceled"],
                "paid, pending, in_transit, canceled or failed.",
            ),
            reference("destination", Some("destination"), "Id of the bank account or card."),
            col("method", Text, None, "standard or instant."),
            col("type", Text, None, "bank_account or card."),
            col("description", Text, None, "An arbitrary string attached to the payout."),
            col("automatic", Bool, None, "Whether Stripe created the payout on schedule."),
        ],
        nested_lists: &[],
        events: &[
            ("payout.created", Upsert),
            ("payout.updated", Upsert),
            ("payout.canceled", Upsert),
            ("payout.failed", Upsert),
            ("payout.paid", Upsert),
            ("payout.reconciliation_completed", Upsert),
        ],
        events_complete: true,
        permission: "Core → Payouts: Read",
        comment: "Payouts from the Stripe balance to bank accounts or cards.",
    },
    Resource {
        name: "price",
        camel: "Price",
        object: "price",
        id_prefix: "price_",
        scope: Scope::Account,
        list_path: "/v1/prices",
        retrieve_path: "/v1/prices/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "created",
        // Stripe lists only active prices unless told active=false.
        list_variants: &[&[("active", "true")], &[("active", "false")]],
        columns: &[
            reference("product", Some("product"), "Id of the product the price belongs to."),
            col("active", Bool, Some("active"), "Whether the price can be used for new purchases."),
            col("currency", Text, Some("currency"), CURRENCY),
            col("unit_amount", BigInt, None, "Unit amount, in the smallest unit."),
            enumerated("type", &["one_time", "recurring"], "one_time or recurring."),
            col("nickname", Text, None, "A brief description, hidden from customers."),
            col("lookup_key", Text, None, "Lookup key."),
            at("recurring_interval", Text, "recurring.interval", "Billing interval: day, week, month or year."),
            col("billing_scheme", Text, None, "per_unit or tiered."),
        ],
        nested_lists: &[],
        events: &[("price.created", Upsert), ("price.updated", Upsert), ("price.deleted", Delete)],
        events_complete: true,
        permission: "Billing → Prices: Read",
        comment: "Prices, active and inactive.",
    },
    Resource {
        name: "product",
        camel: "Product",
        object: "product",
        id_prefix: "prod_",
        scope: Scope::Account,
        list_path: "/v1/products",
        retrieve_path: "/v1/products/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "created",
        list_variants: &[],
        columns: &[
            col("name", Text, None, "Product name, shown to customers."),
            col("active", Bool, Some("active"), "Whether the product is available for purchase."),
            col("description", Text, None, "Product description."),
            reference("default_price", None, "Id of the product's default price."),
            at("updated", Timestamp, "updated", "When the product was last updated."),
        ],
        nested_lists: &[],
        events: &[("product.created", Upsert), ("product.updated", Upsert), ("product.deleted", Delete)],
        events_complete: true,
        permission: "Core → Products: Read",
        comment: "Products sold.",
    },
    Resource {
        name: "refund",
        camel: "Refund",
        object: "refund",
        id_prefix: "re_",
        scope: Scope::Account,
        list_path: "/v1/refunds",
        retrieve_path: "/v1/refunds/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "created",
        list_variants: &[],
        columns: &[
            reference("charge", Some("charge"), "Id of the refunded charge."),
            reference("payment_intent", Some("payment_intent"), "Id of the refunded PaymentIntent."),
            col("amount", BigInt, None, AMOUNT),
            col("currency", Text, None, CURRENCY),
            col("reason", Text, None, "duplicate, fraudulent or requested_by_customer."),
            col("status", Text, None, "pending, succeeded, failed, canceled or requires_action."),
        ],
        nested_lists: &[],
        events: &[
            ("refund.created", Upsert),
            ("refund.updated", Upsert),
            ("refund.failed", Upsert),
            ("charge.refund.updated", Upsert),
        ],
        events_complete: true,
        permission: "Core → Charges and refunds: Read",
        comment: "Refunds of charges.",
    },
    Resource {
        name: "subscription",
        camel: "Subscription",
        object: "subscription",
        id_prefix: "sub_",
        scope: Scope::Account,
        list_path: "/v1/subscriptions",
        retrieve_path: "/v1/subscriptions/{id}",
        retrieve_alone: None,
        created_filter: true,
        created_field: "created",
        // Without status=all Stripe leaves out canceled subscriptions.
        list_variants: &[&[("status", "all")]],
        columns: &[
            reference("customer", Some("customer"), "Id of the customer."),
            enumerated("status", SUBSCRIPTION_STATUS, "active, past_due, canceled, trialing, ..."),
            enumerated("collection_method", COLLECTION_METHODS, "charge_automatically or send_invoice."),
            col("currency", Text, None, CURRENCY),
            col("cancel_at_period_end", Bool, None, "Whether it cancels at the end of the period."),
            at("canceled_at", Timestamp, "canceled_at", "When it was canceled."),
            at("ended_at", Timestamp, "ended_at", "When it ended."),
            at("start_date", Timestamp, "start_date", "When it started."),
            at("trial_end", Timestamp, "trial_end", "End of the trial."),
            reference("latest_invoice", None, "Id of the most recent invoice."),
        ],
        nested_lists: &["items"],
        events: &[
            ("customer.subscription.created", Upsert),
            ("customer.subscription.updated", Upsert),
            // A cancellation, not a deletion: the object says status=canceled.
            ("customer.subscription.deleted", Upsert),
            ("customer.subscription.paused", Upsert),
            ("customer.subscription.resumed", Upsert),
            ("customer.subscription.pending_update_applied", Upsert),
            ("customer.subscription.pending_update_expired", Upsert),
            ("customer.subscription.trial_will_end", Upsert),
        ],
        events_complete: true,
        permission: "Billing → Subscriptions: Read",
        comment: "Subscriptions, including canceled ones.",
    },
];

/// An unknown resource name: the message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownResource(pub String);

impl fmt::Display for UnknownResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown Stripe resource \"{}\"; valid resources are: {}", self.0, names().join(", "))
    }
}

impl std::error::Error for UnknownResource {}

/// Canonical names, in registry order.
pub fn names() -> Vec<&'static str> {
    RESOURCES.iter().map(|r| r.name).collect()
}

/// Finds a resource by its canonical name or its CamelCase name, case-insensitively
/// (`invoice_item`, `InvoiceItem`, `invoiceitem`).
pub fn lookup(name: &str) -> Result<&'static Resource, UnknownResource> {
    let folded: String = name.trim().chars().filter(|c| *c != '_').flat_map(char::to_lowercase).collect();
    RESOURCES
        .iter()
        .find(|r| r.name.replace('_', "") == folded || r.camel.to_lowercase() == folded)
        .ok_or_else(|| UnknownResource(name.to_string()))
}

/// The resource whose objects have this `object` type (`invoiceitem` → invoice_item).
pub fn by_object(object: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.object == object)
}

/// The resource and effect of an event type, if stripe_sync syncs it.
pub fn by_event(event_type: &str) -> Option<(&'static Resource, EventEffect)> {
    RESOURCES.iter().find_map(|r| r.events.iter().find(|(t, _)| *t == event_type).map(|(_, e)| (r, *e)))
}

impl Resource {
    /// The owner whose list leads to this resource's lists, for per-customer resources.
    pub fn parent(&self) -> Option<&'static Parent> {
        match self.scope {
            Scope::Account => None,
            Scope::PerCustomer => Some(&CUSTOMER_PARENT),
        }
    }

    /// The path of one object's retrieve call.
    pub fn retrieve_url_path(&self, id: &str, customer: Option<&str>) -> String {
        self.retrieve_path
            .replace("{id}", &path_segment(id))
            .replace("{customer}", &path_segment(customer.unwrap_or("")))
    }

    /// The list path for one customer (per-customer resources) or the account.
    pub fn list_url_path(&self, customer: Option<&str>) -> String {
        self.list_path.replace("{customer}", &path_segment(customer.unwrap_or("")))
    }

    /// Event types to subscribe a webhook endpoint to for this resource.
    pub fn event_types(&self) -> impl Iterator<Item = &'static str> {
        self.events.iter().map(|(t, _)| *t)
    }

    pub fn column(&self, name: &str) -> Option<&'static Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The resources whose rows go with an owner's deletion event (`customer.deleted`
/// takes the customer's balance transactions and payment methods).
pub fn cascaded_by(event_type: &str) -> impl Iterator<Item = &'static Resource> + '_ {
    RESOURCES.iter().filter(move |r| r.parent().is_some_and(|p| p.deleted_event == event_type))
}

/// The Dashboard permission a request path needs (`/v1/credit_notes?limit=100` →
/// "Billing → Credit notes: Read"): the resource whose list or retrieve path
/// matches the most leading segments; `/v1/events` and webhook endpoints too.
pub fn permission_for_path(path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    let matched = |template: &str| {
        let t: Vec<&str> = template.split('/').collect();
        (t.len() <= segments.len() && t.iter().zip(&segments).all(|(want, got)| want.starts_with('{') || want == got))
            .then_some(t.len())
    };
    if matched(EVENTS_PATH).is_some() {
        return Some(EVENTS_PERMISSION);
    }
    if matched(WEBHOOK_ENDPOINTS_PATH).is_some() {
        return Some(WEBHOOK_PERMISSION);
    }
    RESOURCES
        .iter()
        .flat_map(|r| [(r, r.list_path), (r, r.retrieve_path)])
        .filter_map(|(r, t)| matched(t).map(|n| (n, r.permission)))
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// A value placed in a URL path, percent-encoded: only letters, digits, `_` and
/// `-` pass as they are (placeholders such as `{id}` too, for descriptions).
pub fn path_segment(v: &str) -> String {
    if v.starts_with('{') && v.ends_with('}') && v[1..v.len() - 1].bytes().all(|b| b.is_ascii_lowercase()) {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads a dotted path (`recurring.interval`) out of an object; `None` for a missing or null value.
pub fn value_at<'a>(object: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    let mut v = object;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    if v.is_null() { None } else { Some(v) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn registry_has_the_fifteen_resources_in_order() {
        assert_eq!(
            names(),
            vec![
                "account",
                "balance_transaction",
                "charge",
                "credit_note",
                "customer",
                "customer_balance_transaction",
                "customer_payment_method",
                "dispute",
                "invoice",
                "invoice_item",
                "payout",
                "price",
                "product",
                "refund",
                "subscription"
            ]
        );
    }

    #[test]
    fn lookup_accepts_snake_and_camel_case_names_case_insensitively() {
        assert_eq!(lookup("invoice_item").unwrap().name, "invoice_item");
        assert_eq!(lookup("InvoiceItem").unwrap().name, "invoice_item");
        assert_eq!(lookup("INVOICEITEM").unwrap().name, "invoice_item");
        assert_eq!(lookup("BalanceTransaction").unwrap().name, "balance_transaction");
        assert_eq!(lookup(" customer ").unwrap().name, "customer");
    }

    #[test]
    fn lookup_rejects_unknown_names_listing_the_valid_ones() {
        let err = lookup("nope").unwrap_err().to_string();
        assert!(err.contains("\"nope\""), "{err}");
        for n in names() {
            assert!(err.contains(n), "{err} lacks {n}");
        }
        assert!(lookup("").is_err());
        assert!(lookup("customers").is_err());
    }

    #[test]
    fn parents_are_registry_resources_and_children_carry_their_column() {
        for r in RESOURCES.iter().filter(|r| r.parent().is_some()) {
            let p = r.parent().unwrap();
            let owner = lookup(p.resource).unwrap();
            assert!(owner.events.contains(&(p.deleted_event, EventEffect::Delete)), "{}", r.name);
            assert!(r.column(p.column).is_some_and(|c| c.reference), "{} has no {} reference", r.name, p.column);
            assert!(r.list_path.contains(&format!("{{{}}}", p.column)), "{}", r.list_path);
        }
        assert_eq!(CUSTOMER_PARENT.list_path(), "/v1/customers");
        let cascaded: Vec<&str> = cascaded_by("customer.deleted").map(|r| r.name).collect();
        assert_eq!(cascaded, ["customer_balance_transaction", "customer_payment_method"]);
        assert_eq!(cascaded_by("invoice.deleted").count(), 0);
        assert!(RESOURCES.iter().all(|r| r.retrieve_alone.is_none() || r.parent().is_some()));
    }

    #[test]
    fn per_customer_resources_have_customer_paths() {
        for r in RESOURCES {
            assert_eq!(r.scope == Scope::PerCustomer, r.list_path.contains("{customer}"), "{}", r.name);
            assert!(r.retrieve_path.contains("{id}"), "{}", r.name);
        }
        let pm = lookup("customer_payment_method").unwrap();
        assert_eq!(pm.list_url_path(Some("cus_1")), "/v1/customers/cus_1/payment_methods");
        assert!(!pm.created_filter);
        let cbt = lookup("customer_balance_transaction").unwrap();
        assert_eq!(cbt.list_url_path(Some("cus_1")), "/v1/customers/cus_1/balance_transactions");
        // whatever reaches a path is one encoded segment
        assert_eq!(lookup("customer").unwrap().retrieve_url_path("../x", None), "/v1/customers/%2E%2E%2Fx");
        assert_eq!(cbt.list_url_path(Some("{customer}")), "/v1/customers/{customer}/balance_transactions");
    }

    #[test]
    fn plain_lists_that_leave_objects_out_have_variants() {
        assert_eq!(lookup("subscription").unwrap().list_variants, &[&[("status", "all")][..]]);
        let price = lookup("price").unwrap();
        assert_eq!(price.list_variants.len(), 2);
        assert_eq!(lookup("customer").unwrap().list_variants.len(), 0);
    }

    #[test]
    fn deletion_events_are_only_the_real_deletions() {
        let deletes: HashSet<&str> = RESOURCES
            .iter()
            .flat_map(|r| r.events.iter())
            .filter(|(_, e)| *e == EventEffect::Delete)
            .map(|(t, _)| *t)
            .collect();
        let expected: HashSet<&str> =
            // a revoked account leaves the platform's list of connected accounts
            ["customer.deleted", "product.deleted", "price.deleted", "invoice.deleted", "invoiceitem.deleted", ACCOUNT_DEAUTHORIZED_EVENT]
                .into_iter()
                .collect();
        assert_eq!(deletes, expected);
        assert_eq!(by_event("customer.subscription.deleted").unwrap().1, EventEffect::Upsert);
        assert_eq!(by_event("payment_method.detached").unwrap().1, EventEffect::Detach);
        assert_eq!(by_event("charge.dispute.created").unwrap().0.name, "dispute");
        assert!(by_event("invoice.upcoming").is_none());
        assert!(by_event("customer.*").is_none());
    }

    #[test]
    fn event_types_are_unique_and_concrete() {
        let mut seen = HashSet::new();
        for r in RESOURCES {
            for t in r.event_types() {
                assert!(!t.contains('*'), "{t}");
                assert!(seen.insert(t), "{t} listed twice");
            }
        }
    }

    #[test]
    fn column_names_are_unique_and_not_reserved() {
        for r in RESOURCES {
            let mut seen = HashSet::new();
            for c in r.columns {
                assert!(!["id", "created", "attrs"].contains(&c.name), "{}.{}", r.name, c.name);
                assert!(seen.insert(c.name), "{}.{} twice", r.name, c.name);
                assert!(!c.comment.is_empty());
            }
        }
    }

    #[test]
    fn request_paths_map_to_the_dashboard_permission_they_need() {
        assert_eq!(permission_for_path("/v1/credit_notes?limit=100"), Some("Billing → Credit notes: Read"));
        assert_eq!(permission_for_path("/v1/customers"), Some("Core → Customers: Read"));
        assert_eq!(permission_for_path("/v1/customers/cus_1/payment_methods"), Some("Core → Payment methods: Read"));
        assert_eq!(permission_for_path("/v1/customers/cus_1/balance_transactions"), Some("Core → Customers: Read"));
        assert_eq!(permission_for_path("/v1/invoices/in_1/lines"), Some("Billing → Invoices: Read"));
        assert_eq!(permission_for_path("/v1/invoiceitems/ii_1"), Some("Billing → Invoices: Read"));
        assert_eq!(permission_for_path("/v1/events"), Some(EVENTS_PERMISSION));
        assert_eq!(permission_for_path("/v1/webhook_endpoints/we_1"), Some(WEBHOOK_PERMISSION));
        assert_eq!(permission_for_path("/v1/nothing"), None);
        for r in RESOURCES {
            assert!(r.permission.ends_with(": Read"), "{}", r.name);
            assert_eq!(permission_for_path(&r.list_url_path(Some("cus_1"))), Some(r.permission), "{}", r.name);
        }
    }

    #[test]
    fn value_at_reads_dotted_paths_and_treats_null_as_missing() {
        let v = serde_json::json!({"recurring": {"interval": "month"}, "x": null});
        assert_eq!(value_at(&v, "recurring.interval").unwrap(), "month");
        assert!(value_at(&v, "x").is_none());
        assert!(value_at(&v, "recurring.nope").is_none());
    }
}
