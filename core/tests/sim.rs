//! The deterministic simulator: many seeded runs of several shards and
//! clients of every transport, checked against the protocol contract (see
//! `sim/world.rs` for what is checked).
//!
//! `cargo test -p ringcast-core --test sim` runs the CI budget of seeds;
//! `SIM_SEEDS=100000` runs more, `SIM_SEED=1234` replays one (printing its
//! summary), `SIM_STEPS` changes the steps per run.

#[path = "sim/props.rs"]
mod props;
#[path = "sim/regress.rs"]
mod regress;
#[path = "sim/sched.rs"]
mod sched;
#[path = "sim/world.rs"]
mod world;

use std::panic::{catch_unwind, AssertUnwindSafe};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs one seed untraced; a failure is replayed (runs are deterministic)
/// with the trace on, for the report.
fn run_seed(seed: u64, steps: usize) -> Result<String, String> {
    world::set_tracing(false);
    let fast = catch_unwind(AssertUnwindSafe(|| sched::run(seed, steps)));
    if fast.is_ok() {
        return fast.map_err(|_| String::new());
    }
    world::set_tracing(true);
    catch_unwind(AssertUnwindSafe(|| sched::run(seed, steps))).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        // An engine panic carries no trace of its own: add it.
        let trace = world::take_trace();
        format!("seed {seed} failed (replay: SIM_SEED={seed} cargo test -p ringcast-core --test sim seeds)\n{msg}\n{trace}")
    })
}

#[test]
fn seeds() {
    let steps = env("SIM_STEPS").unwrap_or(400) as usize;
    if let Some(seed) = env("SIM_SEED") {
        match run_seed(seed, steps) {
            Ok(summary) => eprintln!("seed {seed}: {summary}"),
            Err(e) => panic!("{e}"),
        }
        return;
    }
    let n = env("SIM_SEEDS").unwrap_or(1200);
    let start = env("SIM_SEED_START").unwrap_or(0);
    let mut slowest = (std::time::Duration::ZERO, 0);
    for seed in start..start + n {
        let t = std::time::Instant::now();
        if let Err(e) = run_seed(seed, steps) {
            panic!("{e}");
        }
        slowest = slowest.max((t.elapsed(), seed));
    }
    eprintln!("slowest: seed {} in {:?}", slowest.1, slowest.0);
    sched::TOTALS.with(|t| eprintln!("{:#?}", t.borrow()));
    eprintln!("{n} seeds of {steps} steps");
}
