//! The `ringcast` broker binary.

use std::process::ExitCode;

use ringcast::config::{Config, LoadError};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    no_huge_pages();
    let config = match Config::load() {
        Ok(c) => c,
        // --help and --version exit 0 through here; bad flags exit 2.
        Err(LoadError::Args(e)) => e.exit(),
        Err(LoadError::File(e)) => {
            eprintln!("ringcast: {e}");
            return ExitCode::from(2);
        }
    };
    if config.print_config {
        print!("{}", config.to_toml());
        return match config.validate() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringcast: invalid configuration: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Err(e) = config.validate() {
        eprintln!("ringcast: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    // Key files are read now, so that a bad one is a configuration error
    // (exit 2) before anything starts, not a start-up failure.
    if let Err(e) = config.policy() {
        eprintln!("ringcast: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|e| {
        eprintln!(
            "ringcast: invalid --log filter {:?} ({e}); using info",
            config.log
        );
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    // Registered before the shards start, so an early signal is not lost.
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringcast: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "ringcast {} starting with:\n{config}",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "  unmask             {}",
        ringcast_proto::mask::implementation()
    );
    let server = match ringcast::runtime::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringcast: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("ringcast listening on {}", server.local_addr());
    for sig in signals.forever() {
        if sig == SIGHUP {
            // Rotating API keys must not need a restart.
            match server.reload_keys() {
                Ok(n) => tracing::info!(keys = n, "API keys reloaded"),
                Err(e) => tracing::warn!(error = %e, "API keys not reloaded; the old ones stay"),
            }
            continue;
        }
        tracing::info!(signal = sig, "shutting down");
        break;
    }
    server.shutdown();
    server.join();
    println!("ringcast stopped");
    ExitCode::SUCCESS
}

/// Transparent huge pages off for this process. mimalloc asks for them
/// (`madvise`), so the heap grows in 2 MiB steps; a broker's memory is
/// tens of thousands of small, long-lived connection records, and each
/// step stands mostly untouched until enough connections arrive: about
/// 1 KiB per idle connection at 10,000 connections, measured
/// (docs/benchmarks.md, "Per-connection byte budget"). The TLB misses
/// that huge pages would save are not where a push broker spends its
/// time (the kernel's network stack is). Failure (an old kernel) is
/// harmless: the heap just keeps its huge pages.
fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a
    // flag of the calling process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
