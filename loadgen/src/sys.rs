//! The operating-system facts a run reports: the host clock, our own CPU,
//! other processes' CPU and memory from `/proc`, and the file-descriptor limit.

use std::time::Duration;

use serde::Serialize;

/// Nanoseconds on `CLOCK_MONOTONIC`: one clock for every process on the
/// host, so a publisher and a subscriber in different processes (later
/// multi-process runs) can still compute latency from the stamp.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// User + system CPU time of this whole process.
pub fn self_cpu() -> Duration {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid and writable.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Our own peak resident set (KiB).
pub fn self_max_rss_kib() -> u64 {
    // SAFETY: as above.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as u64
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft
/// limit.
pub fn raise_nofile() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is valid and writable.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// A snapshot of another process (a broker, Redis) from `/proc/PID`.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub cpu: Duration,
    pub rss_kib: u64,
}

impl ProcSample {
    /// `flag` names the option that asked for `pid`, for the error.
    pub fn read(pid: u32, flag: &str) -> Result<ProcSample, String> {
        let read = |file: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .map_err(|e| format!("{flag}: cannot read /proc/{pid}/{file}: {e}"))
        };
        let (stat, status) = (read("stat")?, read("status")?);
        let ticks = parse_stat_cpu_ticks(&stat)
            .ok_or_else(|| format!("{flag}: unexpected /proc/{pid}/stat format"))?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(ProcSample {
            cpu: Duration::from_nanos(ticks * 1_000_000_000 / hz),
            rss_kib: parse_status_kib(&status, "VmRSS:").unwrap_or(0),
        })
    }
}

/// utime + stime (fields 14 and 15) in clock ticks. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted after its
/// closing parenthesis.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut f = after.split_ascii_whitespace();
    // Fields 3.. follow; utime is field 14, i.e. index 11 here.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Name:   1234 kB` line of `/proc/PID/status`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The whole host's CPU time, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct HostSample {
    busy: u64,
    total: u64,
    cpus: usize,
}

impl HostSample {
    pub fn read() -> Option<HostSample> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        parse_host_stat(&stat)
    }
}

/// `cpu user nice system idle iowait irq softirq steal …` (jiffies).
pub fn parse_host_stat(stat: &str) -> Option<HostSample> {
    let mut lines = stat.lines();
    let first = lines.next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = first
        .split_ascii_whitespace()
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
    let cpus = lines
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some(HostSample {
        busy,
        total: v.iter().sum(),
        cpus: cpus.max(1),
    })
}

/// How busy the host was over a window, and how much of that was neither
/// a watched process (`--broker-pid`, `--pid`) nor the load generator: a measurement taken while other work
/// ran is noisy, and the report says so.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HostUsage {
    pub cpus: usize,
    /// Cores' worth of busy time, all processes.
    pub busy_cores: f64,
    /// `busy_cores` minus the watched processes and the load generator
    /// (only meaningful with `--broker-pid`, and `--pid` for the rest of a
    /// cluster on this host).
    pub other_cores: f64,
}

impl HostUsage {
    pub fn between(a: &HostSample, b: &HostSample, ours_cores: f64) -> HostUsage {
        let total = b.total.saturating_sub(a.total).max(1) as f64;
        let busy = b.busy.saturating_sub(a.busy) as f64 / total * b.cpus as f64;
        HostUsage {
            cpus: b.cpus,
            busy_cores: busy,
            other_cores: (busy - ours_cores).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_with_a_hostile_command_name() {
        let stat = "4242 (ring cast) (x)) S 1 4242 4242 0 -1 4194560 1208 0 0 0 \
                    1500 250 0 0 20 0 3 0 12345 100000 2000 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(1750));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn proc_status_rss() {
        let status = "Name:\tringcast\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(12345));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn host_stat() {
        let a =
            parse_host_stat("cpu  100 0 50 800 10 0 0 0 0 0\ncpu0 1\ncpu1 1\nintr 5\n").unwrap();
        let b = parse_host_stat("cpu  200 0 100 850 10 0 0 0 0 0\ncpu0 1\ncpu1 1\n").unwrap();
        // 150 busy of 200 jiffies on 2 cpus = 1.5 cores; we used 1.0.
        let u = HostUsage::between(&a, &b, 1.0);
        assert_eq!(u.cpus, 2);
        assert!((u.busy_cores - 1.5).abs() < 1e-9);
        assert!((u.other_cores - 0.5).abs() < 1e-9);
        assert!(parse_host_stat("intr 1").is_none());
        assert!(HostSample::read().is_some());
    }

    #[test]
    fn own_process_is_readable() {
        let me = ProcSample::read(std::process::id(), "--pid me").unwrap();
        assert!(me.rss_kib > 0);
        assert!(mono_ns() > 0);
        assert!(raise_nofile() > 0);
        let _ = self_cpu();
    }
}
