//! `make chaos`: every fault scenario at full length; prints what was injected and
//! the final comparison with the fake (missing / extra / stale must all be 0).
//! `--soak-seconds N` sets the soak's length (default 600), `--adversarial-seconds N`
//! the hostile traffic's (default 60), `--changes N` the webhook bursts (default 5000),
//! `--seeds N` the seeds of the randomized differential run (default 100, seeds 1..=N),
//! `--seed N` one seed only (a replay; no other scenario), `--steps N` its steps (default 150),
//! `--connect-seeds N` the seeds of the Connect differential run (default 20, seeds 1..=N),
//! `--connect-seed N` one of them only (a replay; no other scenario).

use e2e::chaos;

fn main() {
    let mut soak = 600u64;
    let mut hostile = 60u64;
    let mut changes = 5000usize;
    let mut customers = 500usize;
    let mut seeds = 100u64;
    let mut only_seed: Option<u64> = None;
    let mut connect_seeds = 20u64;
    let mut only_connect_seed: Option<u64> = None;
    let mut steps = 150usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for w in args.chunks(2) {
        let v = w.get(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or_else(|| panic!("{} takes a number", w[0]));
        match w[0].as_str() {
            "--soak-seconds" => soak = v,
            "--adversarial-seconds" => hostile = v,
            "--changes" => changes = v as usize,
            "--customers" => customers = v as usize,
            "--seeds" => seeds = v,
            "--seed" => only_seed = Some(v),
            "--steps" => steps = v as usize,
            "--connect-seeds" => connect_seeds = v,
            "--connect-seed" => only_connect_seed = Some(v),
            other => panic!("unknown option {other}"),
        }
    }
    let mut scenarios: Vec<Box<dyn Fn() -> chaos::Outcome>> = vec![
        Box::new(move || chaos::refresh_under_faults(customers)),
        Box::new(move || chaos::webhooks_with_restarts(changes)),
        Box::new(move || chaos::worker_sigkill(changes)),
        Box::new(move || chaos::adversarial(hostile, changes)),
        Box::new(move || chaos::soak(soak)),
    ];
    match (only_seed, only_connect_seed) {
        (Some(seed), _) => scenarios = vec![Box::new(move || chaos::differential(seed, steps))],
        (None, Some(seed)) => scenarios = vec![Box::new(move || chaos::connect_differential(seed, steps))],
        (None, None) => {
            for seed in 1..=seeds {
                scenarios.push(Box::new(move || chaos::differential(seed, steps)));
            }
            for seed in 1..=connect_seeds {
                scenarios.push(Box::new(move || chaos::connect_differential(seed, steps)));
            }
        }
    }
    let mut failed = 0;
    let mut lines = Vec::new();
    for s in scenarios {
        let o = s();
        println!("{}", o.line());
        if !o.ok() {
            failed += 1;
        }
        lines.push(o.line());
    }
    println!();
    for l in &lines {
        println!("{l}");
    }
    println!("chaos: {} passed, {} failed", lines.len() - failed, failed);
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
