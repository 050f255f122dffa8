//! stripe_core: everything stripe_sync needs from Stripe, with no Postgres in it.
//!
//! - [`batch`] — what a batch of versions and events writes: newest versions, ties, deletions.
//! - [`resources`] — the registry of the 15 synced resources (table-driven).
//! - [`client`] — the HTTP client (auth, version pin, retries, rate limit).
//! - [`paginate`] — list paging, `created` ranges, concurrent slices.
//! - [`plan`] — which SQL conditions become which Stripe requests.
//! - [`listing`] — reading a selection as a bounded stream of pages on its own thread.
//! - [`sync`] — what a refresh reads: full passes in concurrent `created` ranges, events.
//! - [`webhook`] — verifying deliveries and the HTTP listener for them.
//! - [`signature`] — `Stripe-Signature` webhook verification.
//! - [`error`] — typed API errors that never carry a secret.

pub mod batch;
pub mod client;
pub mod error;
pub mod listing;
pub mod paginate;
pub mod plan;
pub mod ratelimit;
pub mod resources;
pub mod signature;
pub mod sync;
pub mod webhook;

pub use client::{API_VERSION, ApiKey, Client, ClientConfig};
pub use error::StripeError;
pub use paginate::{CreatedRange, ListQuery, Page, Pager};
pub use resources::{EventEffect, Resource, lookup};
