//! The operating-system facts a run reports: the host clock, our own CPU
//! (the process's and each thread's), other processes' CPU (theirs and
//! their threads') and memory from `/proc`, CPU affinity, and the
//! file-descriptor limit.

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

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`: user and
/// system time of this thread alone).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One load generator thread's CPU over its part of the measured window,
/// read by the thread itself at the start and at the end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadUsage {
    /// The thread's name (`subs-0`, `pubs-0`, `conns-0`, `echo-0`).
    pub name: String,
    pub cpu_seconds: f64,
    /// Wall time between the two readings.
    pub wall_seconds: f64,
    /// CPU / wall x 100: 100 = the thread kept one core busy throughout.
    pub busy_percent: f64,
    /// Time it was ready to run but waited for a core (the run-queue
    /// delay of `/proc/thread-self/schedstat`) / wall x 100: other work
    /// on its core. `None` where the kernel does not keep it.
    pub wait_percent: Option<f64>,
}

impl ThreadUsage {
    pub fn new(name: &str, cpu_seconds: f64, wall_seconds: f64) -> ThreadUsage {
        ThreadUsage {
            name: name.to_string(),
            cpu_seconds,
            wall_seconds,
            busy_percent: cpu_seconds / wall_seconds.max(1e-9) * 100.0,
            wait_percent: None,
        }
    }

    /// The same with `wait_seconds` of run-queue delay.
    pub fn with_wait(mut self, wait_seconds: Option<f64>) -> ThreadUsage {
        self.wait_percent = wait_seconds.map(|w| w / self.wall_seconds.max(1e-9) * 100.0);
        self
    }
}

/// The calling thread's CPU and wall clock at the start of its window;
/// [`ThreadClock::stop`], called on the same thread, gives what it used.
#[derive(Debug, Clone, Copy)]
pub struct ThreadClock {
    cpu: Duration,
    wait: Option<Duration>,
    wall_ns: u64,
}

/// How long the calling thread has waited on a run queue, in all.
fn thread_wait() -> Option<Duration> {
    parse_schedstat_wait(&std::fs::read_to_string("/proc/thread-self/schedstat").ok()?)
}

/// The second field of a `schedstat` file (`run_ns wait_ns slices`): time
/// spent runnable but not running.
pub fn parse_schedstat_wait(s: &str) -> Option<Duration> {
    Some(Duration::from_nanos(
        s.split_ascii_whitespace().nth(1)?.parse().ok()?,
    ))
}

impl ThreadClock {
    pub fn start() -> ThreadClock {
        ThreadClock {
            cpu: thread_cpu(),
            wait: thread_wait(),
            wall_ns: mono_ns(),
        }
    }

    /// What this thread used since [`ThreadClock::start`], under its name.
    pub fn stop(&self) -> ThreadUsage {
        let cpu = thread_cpu().saturating_sub(self.cpu);
        let wait = self
            .wait
            .zip(thread_wait())
            .map(|(a, b)| b.saturating_sub(a).as_secs_f64());
        let wall = mono_ns().saturating_sub(self.wall_ns);
        let me = std::thread::current();
        ThreadUsage::new(
            me.name().unwrap_or("main"),
            cpu.as_secs_f64(),
            wall as f64 / 1e9,
        )
        .with_wait(wait)
    }
}

/// How many cores process `pid` may run on (its CPU affinity, as
/// `taskset` sets it); 0 means this process. `None` if it cannot be read.
pub fn allowed_cores(pid: u32) -> Option<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid and writable, and its size is passed.
    let r = unsafe {
        libc::sched_getaffinity(
            pid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &mut set,
        )
    };
    // SAFETY: `set` was filled in by the kernel.
    (r == 0).then(|| unsafe { libc::CPU_COUNT(&set) } as usize)
}

/// Our own peak resident set (KiB).
pub fn self_max_rss_kib() -> u64 {
    // SAFETY: as above.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as u64
}

/// The kernel's slab memory (`Slab:` of `/proc/meminfo`, KiB): socket
/// structures, files, inodes, epoll entries, for the whole machine.
pub fn slab_kib() -> Option<u64> {
    parse_status_kib(&std::fs::read_to_string("/proc/meminfo").ok()?, "Slab:")
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
#[derive(Debug, Clone, Default)]
pub struct ProcSample {
    pub cpu: Duration,
    pub rss_kib: u64,
    /// Each of its threads (`/proc/PID/task/TID/stat`), so that one
    /// saturated thread shows even when the process as a whole is not.
    pub threads: Vec<TaskSample>,
    /// How many cores it may run on ([`allowed_cores`]).
    pub allowed_cores: Option<usize>,
}

/// One thread of a watched process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSample {
    pub tid: u32,
    /// Its `comm` (at most 15 bytes: the kernel cuts longer names).
    pub name: String,
    pub cpu: Duration,
    /// Its run-queue delay so far (`/proc/PID/task/TID/schedstat`).
    pub wait: Option<Duration>,
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
        Ok(ProcSample {
            cpu: ticks_to_cpu(ticks),
            rss_kib: parse_status_kib(&status, "VmRSS:").unwrap_or(0),
            threads: read_tasks(pid),
            allowed_cores: allowed_cores(pid),
        })
    }
}

fn ticks_to_cpu(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// Every thread of `pid` that can be read (a thread may end between
/// listing and reading: it is left out).
fn read_tasks(pid: u32) -> Vec<TaskSample> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let task = format!("/proc/{pid}/task/{tid}");
        let stat = std::fs::read_to_string(format!("{task}/stat")).ok()?;
        let schedstat = std::fs::read_to_string(format!("{task}/schedstat")).ok();
        Some(TaskSample {
            tid,
            name: parse_stat_comm(&stat)?.to_string(),
            cpu: ticks_to_cpu(parse_stat_cpu_ticks(&stat)?),
            wait: schedstat.as_deref().and_then(parse_schedstat_wait),
        })
    })
    .collect()
}

/// The command name (field 2, between the first `(` and the last `)`).
pub fn parse_stat_comm(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
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
        assert_eq!(parse_stat_comm(stat), Some("ring cast) (x)"));
        assert_eq!(
            parse_schedstat_wait("156743 830470 2\n"),
            Some(Duration::from_nanos(830470))
        );
        assert_eq!(parse_schedstat_wait("1"), None);
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
        // The test harness runs this test on a thread of its own.
        assert!(me.threads.len() >= 2, "{:?}", me.threads);
        assert!(me.allowed_cores.unwrap() >= 1);
        assert_eq!(allowed_cores(0), me.allowed_cores);
        assert!(mono_ns() > 0);
        assert!(raise_nofile() > 0);
        assert!(slab_kib().unwrap() > 0);
        let _ = self_cpu();
    }

    #[test]
    fn a_thread_clock_measures_its_own_thread() {
        let handle = std::thread::Builder::new()
            .name("subs-9".into())
            .spawn(|| {
                let clock = ThreadClock::start();
                let until = mono_ns() + 30_000_000;
                let mut x = 0u64;
                while mono_ns() < until {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                clock.stop()
            })
            .unwrap();
        let u = handle.join().unwrap();
        assert_eq!(u.name, "subs-9");
        assert!(u.wall_seconds >= 0.03, "{u:?}");
        assert!(
            u.cpu_seconds > 0.0 && u.cpu_seconds <= u.wall_seconds + 0.01,
            "{u:?}"
        );
        let t = ThreadUsage::new("x", 0.5, 2.0);
        assert_eq!(t.busy_percent, 25.0);
        assert_eq!(t.wait_percent, None);
        assert_eq!(t.with_wait(Some(1.0)).wait_percent, Some(50.0));
    }
}
