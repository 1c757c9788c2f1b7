//! `compare`: the same `fanout` run over each transport in turn, against
//! the same broker, so the table shows what the transport alone changes.
//!
//! Every run gets a fresh topic prefix (seqs start at 1 again) and the
//! publishers use the same path (`--publish-via`) for every transport:
//! only the way messages reach the subscribers differs.
//!
//! A transport whose run fails mid-way (a subscriber dropped as a slow
//! consumer, say) is recorded with its reason and the comparison goes on
//! with the next one; the process still exits non-zero. A broker that
//! cannot be reached at all ends the comparison at once.

use std::time::Duration;

use ringcast_core::units::parse_duration;

use super::fanout::{self, FanoutArgs};
use super::Common;
use crate::report::compare::Failure;
use crate::report::FanoutReport;
use crate::transport::{Result, Transport};

#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub fanout: FanoutArgs,
    /// Transports to run, in this order (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Transport::ALL)]
    pub transports: Vec<Transport>,
    /// Pause between two transports, so the broker has closed the previous
    /// run's connections before the next one connects.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub pause: Duration,
}

pub fn run(common: &Common, args: &CompareArgs) -> Result<(Vec<FanoutReport>, Vec<Failure>)> {
    if args.transports.is_empty() {
        return Err("--transports names no transport".into());
    }
    if args.pause > Duration::from_secs(60) {
        return Err("--pause must be at most 1m".into());
    }
    let mut reports = Vec::with_capacity(args.transports.len());
    let mut failures = Vec::new();
    for (i, &t) in args.transports.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(args.pause);
        }
        let common = Common {
            transport: t,
            ..common.clone()
        };
        common.progress(format!(
            "compare: {} ({} of {})",
            t.name(),
            i + 1,
            args.transports.len()
        ));
        match fanout::run(&common, &args.fanout) {
            Ok(r) => reports.push(r),
            Err(e) if e.contains("broker unreachable") => return Err(format!("{}: {e}", t.name())),
            Err(e) => {
                common.progress(format!("compare: {} failed: {e}", t.name()));
                failures.push(Failure {
                    transport: t,
                    error: e,
                });
            }
        }
    }
    Ok((reports, failures))
}
