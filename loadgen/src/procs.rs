//! The processes whose CPU a run reports: the brokers (`--broker-pid`,
//! repeatable) and any other process the run depends on (`--pid NAME=PID`,
//! repeatable: Redis behind a cluster, a proxy in front of it). Each is
//! sampled from `/proc/PID/stat` and `/proc/PID/status` before and after
//! the measured window ([`ProcSample`]); the report gives each one's CPU
//! seconds, CPU per delivered message and busy share of one core, and
//! their sum: what the whole cluster spent per delivery.

use std::time::Duration;

use serde::Serialize;

use crate::sys::{ProcSample, TaskSample};

/// At most this many processes are watched (each is two file reads per
/// sample).
pub const MAX: usize = 64;

/// Names the report uses itself, which `--pid` may not take.
const RESERVED: [&str; 2] = ["cluster", "loadgen"];

/// A process to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
    /// Named by `--broker-pid` (counted in the report's `broker` sum).
    pub broker: bool,
}

/// Parses `--pid NAME=PID`. A name is 1 to 32 of `A-Z a-z 0-9 _ . -`, so
/// it can head a CSV column as it is.
pub fn parse_named_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("--pid takes NAME=PID (e.g. redis=1234), got {s:?}"))?;
    let name_ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name_ok {
        return Err(format!(
            "--pid {s:?}: NAME must be 1 to 32 of A-Z a-z 0-9 _ . -, got {name:?}"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "--pid {s:?}: {name:?} is a name the report uses itself"
        ));
    }
    match pid.parse::<u32>() {
        Ok(p) if p > 0 => Ok((name.to_string(), p)),
        _ => Err(format!(
            "--pid {s:?}: PID must be a process id (a positive number), got {pid:?}"
        )),
    }
}

/// The processes the flags name: the brokers first, `broker` for a single
/// `--broker-pid` and `broker0`, `broker1`, … (in flag order) for several,
/// then the `--pid` ones. Names and pids must be unique.
pub fn watched(broker_pids: &[u32], named: &[(String, u32)]) -> Result<Vec<Watched>, String> {
    let brokers = broker_pids.iter().enumerate().map(|(i, &pid)| Watched {
        name: if broker_pids.len() == 1 {
            "broker".to_string()
        } else {
            format!("broker{i}")
        },
        pid,
        broker: true,
    });
    let others = named.iter().map(|(name, pid)| Watched {
        name: name.clone(),
        pid: *pid,
        broker: false,
    });
    let all: Vec<Watched> = brokers.chain(others).collect();
    if all.len() > MAX {
        return Err(format!(
            "at most {MAX} processes can be watched (--broker-pid and --pid), got {}",
            all.len()
        ));
    }
    for (i, w) in all.iter().enumerate() {
        for o in &all[..i] {
            if o.pid == w.pid {
                return Err(format!(
                    "--broker-pid/--pid: process {} is named twice ({} and {})",
                    w.pid, o.name, w.name
                ));
            }
            if o.name == w.name {
                return Err(format!(
                    "--pid: the name {} is taken twice (pids {} and {})",
                    w.name, o.pid, w.pid
                ));
            }
        }
    }
    Ok(all)
}

/// One sample of every watched process, in order.
pub fn sample(procs: &[Watched]) -> Result<Vec<ProcSample>, String> {
    procs
        .iter()
        .map(|w| {
            let flag = if w.broker {
                format!("--broker-pid {}", w.pid)
            } else {
                format!("--pid {}={}", w.name, w.pid)
            };
            ProcSample::read(w.pid, &flag)
        })
        .collect()
}

/// What a scenario divides CPU by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    /// `fanout`: delivered messages.
    Delivery(u64),
    /// `conns`: opened connections.
    Conn(u64),
}

/// Microseconds of `cpu_seconds` per one of `n` (0 when `n` is 0).
pub fn us_per(cpu_seconds: f64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        cpu_seconds * 1e6 / n as f64
    }
}

/// CPU time over a window, and what it comes to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cpu {
    /// utime + stime over the window.
    pub cpu_seconds: f64,
    /// CPU seconds / wall seconds x 100: 100 = one core busy throughout.
    pub busy_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_delivery: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_conn: Option<f64>,
}

impl Cpu {
    fn new(cpu_seconds: f64, wall_seconds: f64, per: Per) -> Cpu {
        let (per_delivery, per_conn) = match per {
            Per::Delivery(n) => (Some(us_per(cpu_seconds, n)), None),
            Per::Conn(n) => (None, Some(us_per(cpu_seconds, n))),
        };
        Cpu {
            cpu_seconds,
            busy_percent: cpu_seconds / wall_seconds.max(1e-9) * 100.0,
            cpu_us_per_delivery: per_delivery,
            cpu_us_per_conn: per_conn,
        }
    }

    /// µs per delivery or per connection, whichever the scenario counts.
    pub fn per_unit(&self) -> Option<f64> {
        self.cpu_us_per_delivery.or(self.cpu_us_per_conn)
    }
}

/// One watched process over the measured window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessUsage {
    pub name: String,
    pub pid: u32,
    /// Named by `--broker-pid`.
    pub broker: bool,
    #[serde(flatten)]
    pub cpu: Cpu,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// How many cores it may run on (its CPU affinity), when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_cores: Option<usize>,
    /// Its busiest thread over the window (from `/proc/PID/task`), when
    /// its threads could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busiest_thread: Option<BusyThread>,
}

/// A watched process's thread and its share of one core over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BusyThread {
    pub tid: u32,
    pub name: String,
    pub busy_percent: f64,
    /// Ready to run but waiting for a core, share of the window (`None`
    /// where the kernel does not keep it).
    pub wait_percent: Option<f64>,
}

impl BusyThread {
    /// The thread of `after` that used the most CPU since `before` (a
    /// thread that started within the window counts from zero).
    fn busiest(before: &[TaskSample], after: &[TaskSample], wall: f64) -> Option<BusyThread> {
        let zero = TaskSample {
            tid: 0,
            name: String::new(),
            cpu: Duration::ZERO,
            wait: Some(Duration::ZERO),
        };
        after
            .iter()
            .map(|a| (a, before.iter().find(|b| b.tid == a.tid).unwrap_or(&zero)))
            .max_by_key(|(a, b)| a.cpu.saturating_sub(b.cpu))
            .map(|(a, b)| BusyThread {
                tid: a.tid,
                name: a.name.clone(),
                busy_percent: a.cpu.saturating_sub(b.cpu).as_secs_f64() / wall * 100.0,
                wait_percent: a
                    .wait
                    .zip(b.wait)
                    .map(|(x, y)| x.saturating_sub(y).as_secs_f64() / wall * 100.0),
            })
    }
}

/// Every watched process together: the cluster's cost (the load
/// generator's own is reported apart).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterUsage {
    pub processes: usize,
    #[serde(flatten)]
    pub cpu: Cpu,
}

/// The `--broker-pid` processes together (with one broker: that broker,
/// as the reports have always given it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerUsage {
    pub pids: Vec<u32>,
    pub cpu_seconds: f64,
    /// CPU seconds / wall seconds (1.0 = one core busy).
    pub cpu_utilization: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

/// What the watched processes cost over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    /// One entry per watched process, brokers first.
    pub processes: Vec<ProcessUsage>,
    /// Their sum; `None` when no process is watched.
    pub cluster: Option<ClusterUsage>,
    /// The brokers' sum; `None` without `--broker-pid`.
    pub broker: Option<BrokerUsage>,
}

impl Usage {
    /// From samples taken before and after a window of `wall`.
    pub fn between(
        procs: &[Watched],
        before: &[ProcSample],
        after: &[ProcSample],
        wall: Duration,
        per: Per,
    ) -> Usage {
        let wall = wall.as_secs_f64().max(1e-9);
        let processes: Vec<ProcessUsage> = procs
            .iter()
            .zip(before.iter().zip(after))
            .map(|(w, (a, b))| ProcessUsage {
                name: w.name.clone(),
                pid: w.pid,
                broker: w.broker,
                cpu: Cpu::new(b.cpu.saturating_sub(a.cpu).as_secs_f64(), wall, per),
                rss_before_kib: a.rss_kib,
                rss_after_kib: b.rss_kib,
                allowed_cores: b.allowed_cores,
                busiest_thread: BusyThread::busiest(&a.threads, &b.threads, wall),
            })
            .collect();
        let sum = |f: fn(&ProcessUsage) -> bool| {
            let mine: Vec<&ProcessUsage> = processes.iter().filter(|p| f(p)).collect();
            let cpu: f64 = mine.iter().map(|p| p.cpu.cpu_seconds).sum();
            (mine, cpu)
        };
        let (all, cpu) = sum(|_| true);
        let cluster = (!all.is_empty()).then(|| ClusterUsage {
            processes: all.len(),
            cpu: Cpu::new(cpu, wall, per),
        });
        let (brokers, cpu) = sum(|p| p.broker);
        let broker = (!brokers.is_empty()).then(|| BrokerUsage {
            pids: brokers.iter().map(|p| p.pid).collect(),
            cpu_seconds: cpu,
            cpu_utilization: cpu / wall,
            rss_before_kib: brokers.iter().map(|p| p.rss_before_kib).sum(),
            rss_after_kib: brokers.iter().map(|p| p.rss_after_kib).sum(),
        });
        Usage {
            processes,
            cluster,
            broker,
        }
    }

    /// Takes the resident sizes "after" from `later` samples (`conns`
    /// measures CPU while opening but memory after settling).
    pub fn with_rss_after(mut self, later: &[ProcSample]) -> Usage {
        for (p, s) in self.processes.iter_mut().zip(later) {
            p.rss_after_kib = s.rss_kib;
        }
        if let Some(b) = &mut self.broker {
            b.rss_after_kib = self
                .processes
                .iter()
                .filter(|p| p.broker)
                .map(|p| p.rss_after_kib)
                .sum();
        }
        self
    }

    /// Cores' worth of CPU the watched processes used.
    pub fn cores(&self) -> f64 {
        self.cluster
            .as_ref()
            .map_or(0.0, |c| c.cpu.busy_percent / 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_pids_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_named_pid("redis=1234").unwrap(),
            ("redis".to_string(), 1234)
        );
        assert_eq!(
            parse_named_pid("haproxy.1-a_b=7").unwrap(),
            ("haproxy.1-a_b".to_string(), 7)
        );
        for (bad, why) in [
            ("redis", "NAME=PID"),
            ("1234", "NAME=PID"),
            ("=12", "NAME must be"),
            ("re dis=12", "NAME must be"),
            ("a,b=12", "NAME must be"),
            ("redis=", "PID must be"),
            ("redis=0", "PID must be"),
            ("redis=-3", "PID must be"),
            ("redis=12=13", "PID must be"),
            ("redis=99999999999", "PID must be"),
            ("cluster=12", "uses itself"),
            ("loadgen=12", "uses itself"),
        ] {
            let e = parse_named_pid(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("{}=1", "x".repeat(33));
        assert!(parse_named_pid(&long).unwrap_err().contains("NAME must be"));
    }

    #[test]
    fn brokers_are_named_by_position_and_names_are_unique() {
        let one = watched(&[10], &[("redis".into(), 20)]).unwrap();
        let names: Vec<&str> = one.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["broker", "redis"]);
        assert!(one[0].broker && !one[1].broker);
        let two = watched(&[10, 11], &[]).unwrap();
        let names: Vec<&str> = two.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["broker0", "broker1"]);
        assert!(watched(&[], &[]).unwrap().is_empty());
        let e = watched(&[10], &[("broker".into(), 20)]).unwrap_err();
        assert!(e.contains("the name broker is taken twice"), "{e}");
        let e = watched(&[10, 10], &[]).unwrap_err();
        assert!(e.contains("process 10 is named twice"), "{e}");
        let e = watched(&[10], &[("redis".into(), 10)]).unwrap_err();
        assert!(e.contains("(broker and redis)"), "{e}");
        let many: Vec<u32> = (1..=MAX as u32 + 1).collect();
        assert!(watched(&many, &[]).unwrap_err().contains("at most"));
    }

    fn s(cpu_ms: u64, rss_kib: u64) -> ProcSample {
        ProcSample {
            cpu: Duration::from_millis(cpu_ms),
            rss_kib,
            ..ProcSample::default()
        }
    }

    #[test]
    fn the_busiest_thread_of_a_process() {
        let t = |tid, ms| TaskSample {
            tid,
            name: format!("t{tid}"),
            cpu: Duration::from_millis(ms),
            wait: Some(Duration::from_millis(ms / 10)),
        };
        let procs = watched(&[10], &[]).unwrap();
        let before = ProcSample {
            threads: vec![t(1, 5_000), t(2, 100), t(3, 50)],
            ..s(5_150, 1)
        };
        // Thread 1 had the most CPU but thread 2 used the most in the
        // window; thread 3 ended; thread 4 started within it.
        let after = ProcSample {
            threads: vec![t(1, 5_200), t(2, 1_900), t(4, 300)],
            allowed_cores: Some(1),
            ..s(7_400, 1)
        };
        let u = Usage::between(
            &procs,
            std::slice::from_ref(&before),
            &[after],
            Duration::from_secs(2),
            Per::Conn(1),
        );
        let p = &u.processes[0];
        let b = p.busiest_thread.as_ref().unwrap();
        assert_eq!((b.tid, b.name.as_str()), (2, "t2"));
        assert!((b.busy_percent - 90.0).abs() < 1e-9);
        assert!((b.wait_percent.unwrap() - 9.0).abs() < 1e-9);
        assert_eq!(p.allowed_cores, Some(1));
        let v = serde_json::to_value(p).unwrap();
        assert_eq!(v["busiest_thread"]["name"], "t2");
        // Without readable threads: nothing claimed.
        let bare = Usage::between(
            &procs,
            &[s(0, 1)],
            &[s(1, 1)],
            Duration::from_secs(1),
            Per::Conn(1),
        );
        assert!(bare.processes[0].busiest_thread.is_none());
        assert!(serde_json::to_value(&bare.processes[0])
            .unwrap()
            .get("busiest_thread")
            .is_none());
    }

    #[test]
    fn usage_per_process_their_sum_and_the_brokers_sum() {
        let procs = watched(&[10, 11], &[("redis".into(), 20)]).unwrap();
        let before = [s(1_000, 100), s(2_000, 200), s(0, 50)];
        let after = [s(1_500, 110), s(3_000, 220), s(250, 60)];
        let u = Usage::between(
            &procs,
            &before,
            &after,
            Duration::from_secs(2),
            Per::Delivery(1_000_000),
        );
        let p = &u.processes;
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].name.as_str(), p[0].pid), ("broker0", 10));
        assert!((p[0].cpu.cpu_seconds - 0.5).abs() < 1e-9);
        assert!((p[0].cpu.busy_percent - 25.0).abs() < 1e-9);
        assert!((p[0].cpu.cpu_us_per_delivery.unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(p[0].cpu.cpu_us_per_conn, None);
        assert!((p[2].cpu.cpu_us_per_delivery.unwrap() - 0.25).abs() < 1e-9);
        let c = u.cluster.as_ref().unwrap();
        assert_eq!(c.processes, 3);
        assert!((c.cpu.cpu_seconds - 1.75).abs() < 1e-9);
        assert!((c.cpu.cpu_us_per_delivery.unwrap() - 1.75).abs() < 1e-9);
        assert!((u.cores() - 0.875).abs() < 1e-9);
        let b = u.broker.as_ref().unwrap();
        assert_eq!(b.pids, [10, 11]);
        assert!((b.cpu_seconds - 1.5).abs() < 1e-9);
        assert!((b.cpu_utilization - 0.75).abs() < 1e-9);
        assert_eq!((b.rss_before_kib, b.rss_after_kib), (300, 330));

        let later = u.with_rss_after(&[s(0, 1_000), s(0, 2_000), s(0, 5)]);
        assert_eq!(later.broker.unwrap().rss_after_kib, 3_000);
        assert_eq!(later.processes[2].rss_after_kib, 5);

        let none = Usage::between(&[], &[], &[], Duration::from_secs(1), Per::Conn(3));
        assert_eq!(none, Usage::default());
        assert_eq!(none.cores(), 0.0);
        let redis_only = &procs[2..];
        let u = Usage::between(
            redis_only,
            &before[2..],
            &after[2..],
            Duration::from_secs(1),
            Per::Conn(0),
        );
        assert!(u.broker.is_none());
        assert_eq!(u.processes[0].cpu.cpu_us_per_conn, Some(0.0));
        assert_eq!(u.cluster.unwrap().cpu.cpu_us_per_conn, Some(0.0));
    }

    #[test]
    fn sampling_names_the_flag_of_a_process_that_is_gone() {
        let me = std::process::id();
        let ok = watched(&[me], &[]).unwrap();
        assert_eq!(sample(&ok).unwrap().len(), 1);
        // Pid numbers never reach u32::MAX on Linux (pid_max <= 2^22).
        let gone = watched(&[], &[("redis".into(), u32::MAX)]).unwrap();
        let e = sample(&gone).unwrap_err();
        assert!(e.contains("--pid redis=4294967295"), "{e}");
    }
}
