//! Who limited a run: the load generator or the broker.
//!
//! A thread that kept one core busy over the measured window could not
//! have gone faster: whatever waits for it (sockets to read, publishes to
//! send) queued up behind it, and the latencies and rates of the run are
//! partly its own. So each load generator thread measures its CPU with
//! `CLOCK_THREAD_CPUTIME_ID` from within itself ([`crate::sys::ThreadClock`]),
//! and each watched process (`--broker-pid`, `--pid`) is read per thread
//! from `/proc/PID/task`; beside its CPU, each thread's run-queue delay
//! (`schedstat`: ready to run, but another process had the core). The
//! rule, for both sides:
//!
//! - a thread that ran, or was ready to run, for [`SATURATED`] of the
//!   window or more was the limit: it never waited for the network, only
//!   for a core (on a shared machine a thread can be the limit at 50 % of
//!   a core, waiting the other half);
//! - else a process whose threads together used [`SATURATED`] of the cores
//!   it may run on (its CPU affinity, e.g. `taskset -c 1`) was the limit:
//!   two threads sharing one core can each show 50 %.

use std::fmt::{self, Write as _};

use serde::Serialize;

use super::LoadgenUsage;
use crate::procs::ProcessUsage;

/// A thread above this share of one core (or a process above this share
/// of the cores it may use) was the limit.
pub const SATURATED: f64 = LoadgenUsage::SATURATED;

/// Something that was saturated over the measured window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limit {
    /// `loadgen`, or the watched process's name (`broker`, `broker0`,
    /// a `--pid` name).
    pub who: String,
    /// A thread (`thread subs-0`, `thread ringcast-shard (tid 812)`) or
    /// `all its threads`.
    pub what: String,
    /// CPU / wall x 100 (100 = one core busy throughout).
    pub busy_percent: f64,
    /// A thread's share of the window spent ready to run but waiting for
    /// its core (other work had it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_percent: Option<f64>,
    /// How many cores that could use at most: 1 for a thread; for a
    /// process, the cores its affinity allows.
    pub cores: usize,
    /// What to change to get past it (empty: nothing to suggest).
    pub advice: String,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} was the limit: {} at {:.0} % of a core",
            self.who, self.what, self.busy_percent
        )?;
        if let Some(w) = self.wait_percent.filter(|w| *w >= 1.0) {
            write!(f, " and {w:.0} % waiting for one")?;
        }
        if self.what == ALL_THREADS {
            let s = if self.cores == 1 { "" } else { "s" };
            write!(f, " (on the {} core{s} it may run on)", self.cores)?;
        }
        if !self.advice.is_empty() {
            write!(f, "; {}", self.advice)?;
        }
        Ok(())
    }
}

const ALL_THREADS: &str = "all its threads";

/// The advice for a thread that was the limit because it waited for its
/// core.
const QUIET: &str = "other work held its core: give it a quiet one";

/// What the run was asked for, for the advice.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// `--threads`.
    pub threads: usize,
    /// `--publishers` (0 where the scenario has none).
    pub publishers: usize,
}

/// Every limit of a run, load generator first, then each watched process
/// in order; marks `loadgen.was_limit`.
pub fn judge(loadgen: &mut LoadgenUsage, procs: &[ProcessUsage], setup: Setup) -> Vec<Limit> {
    let mut out = Vec::new();
    let at_limit = |busy: f64, cores: usize| busy >= SATURATED * 100.0 * cores as f64;
    // The whole process on the cores it may use: first, since its own
    // threads then wait for each other and more threads do not help.
    let all = loadgen.allowed_cores.and_then(|c| {
        let busy = loadgen.cpu_utilization * 100.0;
        at_limit(busy, c).then(|| Limit {
            who: "loadgen".into(),
            what: ALL_THREADS.into(),
            busy_percent: busy,
            wait_percent: None,
            cores: c,
            advice: "give it more cores (taskset)".into(),
        })
    });
    let crowded = all
        .as_ref()
        .is_some_and(|a| loadgen.threads.len() > a.cores);
    if crowded {
        out.extend(all);
    } else {
        for t in &loadgen.threads {
            if at_limit(t.busy_percent + t.wait_percent.unwrap_or(0.0), 1) {
                out.push(Limit {
                    who: "loadgen".into(),
                    what: format!("thread {}", t.name),
                    busy_percent: t.busy_percent,
                    wait_percent: t.wait_percent,
                    cores: 1,
                    advice: if at_limit(t.busy_percent, 1) {
                        loadgen_advice(&t.name, setup, loadgen.allowed_cores)
                    } else {
                        QUIET.into()
                    },
                });
            }
        }
        if out.is_empty() {
            out.extend(all);
        }
    }
    loadgen.was_limit = !out.is_empty();
    for p in procs {
        let thread = p
            .busiest_thread
            .as_ref()
            .filter(|t| at_limit(t.busy_percent + t.wait_percent.unwrap_or(0.0), 1));
        if let Some(t) = thread {
            out.push(Limit {
                who: p.name.clone(),
                what: format!("thread {} (tid {})", t.name, t.tid),
                busy_percent: t.busy_percent,
                wait_percent: t.wait_percent,
                cores: 1,
                advice: if at_limit(t.busy_percent, 1) {
                    String::new()
                } else {
                    QUIET.into()
                },
            });
        } else if let Some(c) = p.allowed_cores.filter(|&c| at_limit(p.cpu.busy_percent, c)) {
            out.push(Limit {
                who: p.name.clone(),
                what: ALL_THREADS.into(),
                busy_percent: p.cpu.busy_percent,
                wait_percent: None,
                cores: c,
                advice: String::new(),
            });
        }
    }
    out
}

/// What helps past a saturated load generator thread `name`.
fn loadgen_advice(name: &str, setup: Setup, allowed: Option<usize>) -> String {
    if name.starts_with("pubs-") {
        return if setup.threads < setup.publishers {
            "add --threads (publishers get min(--threads, --publishers) threads)".into()
        } else {
            "add --publishers and --threads".into()
        };
    }
    match allowed {
        Some(c) if setup.threads >= c => {
            let s = if c == 1 { "" } else { "s" };
            format!("give it more cores (it may run on {c} core{s}) and add --threads")
        }
        _ => "add --threads".into(),
    }
}

/// The report's lines: each loadgen thread's share of a core, then each
/// limit, or that there was none (and what was watched).
pub fn lines(
    out: &mut String,
    loadgen: &LoadgenUsage,
    limits: &[Limit],
    watched: bool,
) -> fmt::Result {
    if !loadgen.threads.is_empty() {
        let each: Vec<String> = loadgen
            .threads
            .iter()
            .map(|t| match t.wait_percent.filter(|w| *w >= 1.0) {
                Some(w) => format!("{} {:.1} % (+{w:.0} % waiting)", t.name, t.busy_percent),
                None => format!("{} {:.1} %", t.name, t.busy_percent),
            })
            .collect();
        writeln!(out, "  loadgen threads  {} of a core", each.join(", "))?;
    }
    for l in limits {
        writeln!(out, "  limit            {l}")?;
    }
    if limits.is_empty() {
        let busiest = loadgen
            .threads
            .iter()
            .max_by(|a, b| a.busy_percent.total_cmp(&b.busy_percent))
            .map(|t| format!(" (busiest: {} at {:.0} %)", t.name, t.busy_percent))
            .unwrap_or_default();
        writeln!(
            out,
            "  limit            none: no loadgen thread near a full core{busiest}{}",
            if watched {
                ", nor a watched process"
            } else {
                "; the broker's CPU is not watched (--broker-pid)"
            }
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs::{BusyThread, Cpu};
    use crate::sys::ThreadUsage;

    fn lg(threads: &[(&str, f64)], utilization: f64, cores: usize) -> LoadgenUsage {
        LoadgenUsage {
            cpu_seconds: utilization * 10.0,
            cpu_utilization: utilization,
            max_rss_kib: 1,
            threads: threads
                .iter()
                .map(|&(n, busy)| ThreadUsage::new(n, busy / 100.0 * 10.0, 10.0))
                .collect(),
            allowed_cores: Some(cores),
            was_limit: false,
        }
    }

    fn broker(busy: f64, thread: Option<f64>, cores: usize) -> ProcessUsage {
        ProcessUsage {
            name: "broker".into(),
            pid: 7,
            broker: true,
            cpu: Cpu {
                cpu_seconds: busy / 10.0,
                busy_percent: busy,
                cpu_us_per_delivery: None,
                cpu_us_per_conn: None,
            },
            rss_before_kib: 1,
            rss_after_kib: 1,
            allowed_cores: Some(cores),
            busiest_thread: thread.map(|b| BusyThread {
                tid: 812,
                name: "ringcast-shard".into(),
                busy_percent: b,
                wait_percent: Some(0.0),
            }),
        }
    }

    const ONE: Setup = Setup {
        threads: 1,
        publishers: 1,
    };

    #[test]
    fn a_saturated_loadgen_thread_is_the_limit() {
        let mut l = lg(&[("subs-0", 97.2), ("pubs-0", 4.0)], 1.01, 2);
        let limits = judge(&mut l, &[broker(40.0, Some(39.0), 1)], ONE);
        assert!(l.was_limit);
        assert_eq!(limits.len(), 1, "{limits:?}");
        assert_eq!(
            limits[0].to_string(),
            "loadgen was the limit: thread subs-0 at 97 % of a core; add --threads"
        );
        let mut text = String::new();
        lines(&mut text, &l, &limits, true).unwrap();
        assert!(
            text.contains("  loadgen threads  subs-0 97.2 %, pubs-0 4.0 % of a core\n"),
            "{text}"
        );
        assert!(
            text.contains("  limit            loadgen was the limit: thread subs-0 at 97 %"),
            "{text}"
        );
        let v = serde_json::to_value(&limits).unwrap();
        assert_eq!(v[0]["who"], "loadgen");
        assert!(v[0].get("wait_percent").is_none());
        assert_eq!(v[0]["what"], "thread subs-0");
        assert_eq!(v[0]["cores"], 1);
    }

    #[test]
    fn below_the_line_nothing_is_claimed() {
        let mut l = lg(&[("subs-0", 89.0), ("subs-1", 85.0)], 1.74, 2);
        let limits = judge(&mut l, &[broker(60.0, Some(58.0), 1)], ONE);
        assert!(limits.is_empty() && !l.was_limit, "{limits:?}");
        let mut text = String::new();
        lines(&mut text, &l, &limits, true).unwrap();
        assert!(
            text.contains(
                "  limit            none: no loadgen thread near a full core \
                 (busiest: subs-0 at 89 %), nor a watched process"
            ),
            "{text}"
        );
        let mut text = String::new();
        lines(&mut text, &l, &limits, false).unwrap();
        assert!(text.contains("not watched (--broker-pid)"), "{text}");
    }

    #[test]
    fn a_thread_that_waited_for_its_core_is_the_limit_too() {
        // At 50 % of a core, and ready to run for 45 % more: other
        // processes had the core; the thread never waited for the broker.
        let mut l = lg(&[("subs-0", 50.0), ("pubs-0", 3.0)], 0.53, 2);
        l.threads[0] = l.threads[0].clone().with_wait(Some(4.5));
        l.threads[1] = l.threads[1].clone().with_wait(Some(0.01));
        let limits = judge(&mut l, &[], ONE);
        assert!(l.was_limit);
        assert_eq!(
            limits[0].to_string(),
            "loadgen was the limit: thread subs-0 at 50 % of a core and 45 % waiting for \
             one; other work held its core: give it a quiet one"
        );
        let mut text = String::new();
        lines(&mut text, &l, &limits, false).unwrap();
        assert!(
            text.contains("subs-0 50.0 % (+45 % waiting), pubs-0 3.0 % of a core"),
            "{text}"
        );
        let mut b = broker(50.0, Some(50.0), 1);
        b.busiest_thread.as_mut().unwrap().wait_percent = Some(41.0);
        let mut l = lg(&[("subs-0", 10.0)], 0.1, 2);
        let limits = judge(&mut l, &[b], ONE);
        assert_eq!(
            limits[0].to_string(),
            "broker was the limit: thread ringcast-shard (tid 812) at 50 % of a core and \
             41 % waiting for one; other work held its core: give it a quiet one"
        );
    }

    #[test]
    fn threads_sharing_the_only_allowed_core_are_the_limit_together() {
        // taskset -c 1 with --threads 2: each thread half a core, and
        // waiting the other half for its sibling.
        let mut l = lg(&[("subs-0", 48.0), ("subs-1", 47.0)], 0.96, 1);
        for t in &mut l.threads {
            *t = t.clone().with_wait(Some(4.6));
        }
        let limits = judge(&mut l, &[], Setup { threads: 2, ..ONE });
        assert!(l.was_limit);
        assert_eq!(
            limits[0].to_string(),
            "loadgen was the limit: all its threads at 96 % of a core (on the 1 core it may \
             run on); give it more cores (taskset)"
        );
        // The same on two allowed cores is not a limit.
        let mut l = lg(&[("subs-0", 48.0), ("subs-1", 47.0)], 0.96, 2);
        assert!(judge(&mut l, &[], Setup { threads: 2, ..ONE }).is_empty());
    }

    #[test]
    fn the_advice_fits_the_thread() {
        let setup = |threads, publishers| Setup {
            threads,
            publishers,
        };
        assert_eq!(
            loadgen_advice("pubs-0", setup(1, 4), Some(2)),
            "add --threads (publishers get min(--threads, --publishers) threads)"
        );
        assert_eq!(
            loadgen_advice("pubs-0", setup(2, 2), Some(2)),
            "add --publishers and --threads"
        );
        assert_eq!(
            loadgen_advice("subs-1", setup(2, 1), Some(2)),
            "give it more cores (it may run on 2 cores) and add --threads"
        );
        assert_eq!(
            loadgen_advice("conns-0", setup(1, 0), None),
            "add --threads"
        );
    }

    #[test]
    fn a_saturated_broker_is_named_too() {
        let mut l = lg(&[("subs-0", 30.0)], 0.3, 2);
        // Its shard thread at 96 % while the process shows 99 % of two
        // cores' worth: the thread is what is named.
        let limits = judge(&mut l, &[broker(99.0, Some(96.0), 2)], ONE);
        assert!(!l.was_limit);
        assert_eq!(
            limits[0].to_string(),
            "broker was the limit: thread ringcast-shard (tid 812) at 96 % of a core"
        );
        // No thread figures, pinned to one core: the process.
        let limits = judge(&mut l, &[broker(95.0, None, 1)], ONE);
        assert_eq!(
            limits[0].to_string(),
            "broker was the limit: all its threads at 95 % of a core (on the 1 core it may run on)"
        );
        // Both at once: both are said, the load generator first.
        let mut l = lg(&[("subs-0", 99.0)], 1.0, 2);
        let limits = judge(&mut l, &[broker(95.0, Some(94.0), 1)], ONE);
        let who: Vec<&str> = limits.iter().map(|l| l.who.as_str()).collect();
        assert_eq!(who, ["loadgen", "broker"]);
    }
}
