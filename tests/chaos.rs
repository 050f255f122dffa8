//! Short variants of every `make chaos` scenario: nothing missing, extra or stale,
//! and no acknowledged webhook lost.

use e2e::chaos;

fn check(o: chaos::Outcome) {
    println!("{}", o.line());
    assert!(o.ok(), "{}", o.line());
}

#[test]
fn a_refresh_under_500s_429s_and_dropped_connections_ends_equal() {
    check(chaos::refresh_under_faults(150));
}

#[test]
fn shuffled_duplicated_delayed_webhooks_with_two_immediate_restarts_end_equal() {
    check(chaos::webhooks_with_restarts(1500));
}

#[test]
fn a_sigkilled_worker_loses_nothing() {
    check(chaos::worker_sigkill(1000));
}

#[test]
fn hostile_requests_change_nothing_and_normal_traffic_flows() {
    check(chaos::adversarial(10, 300));
}

#[test]
fn a_short_soak_ends_equal() {
    check(chaos::soak(15));
}

/// Seeds of the randomized differential run (STRIPE_SYNC_SEED=N replays one, with
/// STRIPE_SYNC_STEPS=M steps; 60 by default).
fn seeds() -> Vec<u64> {
    match std::env::var("STRIPE_SYNC_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(s) => vec![s],
        None => vec![1, 2, 3],
    }
}

#[test]
fn random_changes_deliveries_refreshes_kills_and_restarts_end_equal_to_the_fake() {
    let steps = std::env::var("STRIPE_SYNC_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    for seed in seeds() {
        let o = chaos::differential(seed, steps);
        println!("{}", o.line());
        assert!(o.ok(), "seed {seed} failed (replay: STRIPE_SYNC_SEED={seed}): {}", o.line());
    }
}

#[test]
fn random_changes_in_connected_accounts_connections_revocations_and_refreshes_end_equal_per_account() {
    let steps = std::env::var("STRIPE_SYNC_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    for seed in seeds().into_iter().take(2) {
        let o = chaos::connect_differential(seed, steps);
        println!("{}", o.line());
        assert!(o.ok(), "seed {seed} failed (replay: STRIPE_SYNC_SEED={seed}): {}", o.line());
    }
}
