//! Results: one serialisable struct per scenario (`--json` prints it as a
//! single JSON document on stdout) and the human table printed otherwise.

pub mod compare;
pub mod limit;

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::procs::{Cpu, Usage};
use crate::scenario::BrokerShare;
use crate::sockmem::SocketMemory;
use crate::stats::{LatencySummary, SeqCounts};
use crate::sys::{HostUsage, ThreadUsage};
use crate::transport::{PublishVia, Transport, Wire};
use limit::Limit;

/// The load generator's own resource use over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct LoadgenUsage {
    pub cpu_seconds: f64,
    /// CPU seconds / wall seconds, all threads (1.0 = one core busy).
    pub cpu_utilization: f64,
    pub max_rss_kib: u64,
    /// Each connection thread over its part of the window
    /// (`CLOCK_THREAD_CPUTIME_ID`, read by the thread itself).
    pub threads: Vec<ThreadUsage>,
    /// How many cores the load generator may run on (its CPU affinity).
    pub allowed_cores: Option<usize>,
    /// A thread of it, or all of them on the cores they may use, kept the
    /// cores busy: the load generator, not (only) the broker, was the
    /// limit (see [`limit`] and the report's `limits`).
    pub was_limit: bool,
}

impl LoadgenUsage {
    /// Above this share of one core, a thread (or a process on its
    /// allowed cores) is taken to be the limit.
    pub const SATURATED: f64 = 0.90;

    /// `cpu_seconds` over `wall_seconds` for the whole process, and its
    /// `threads`; `was_limit` is set by [`limit::judge`].
    pub fn new(cpu_seconds: f64, wall_seconds: f64, threads: Vec<ThreadUsage>) -> LoadgenUsage {
        LoadgenUsage {
            cpu_seconds,
            cpu_utilization: cpu_seconds / wall_seconds.max(1e-9),
            max_rss_kib: crate::sys::self_max_rss_kib(),
            threads,
            allowed_cores: crate::sys::allowed_cores(0),
            was_limit: false,
        }
    }
}

/// What went over the wire during the run, per message. Subscriber bytes
/// are counted from each subscriber's `subscribed` to the end of the drain
/// (setup excluded); publisher bytes over the publishing window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WireReport {
    pub subscribers: Wire,
    pub publishers: Wire,
    /// Broker → subscriber bytes per delivered message: the frame or
    /// response head, the JSON envelope, the data, heartbeats.
    pub down_bytes_per_delivery: f64,
    /// Subscriber → broker bytes per delivered message: poll requests,
    /// pongs.
    pub up_bytes_per_delivery: f64,
    /// HTTP requests per delivered message (0 for WebSocket and SSE after
    /// setup).
    pub requests_per_delivery: f64,
    /// Publisher bytes per published message, both directions.
    pub publisher_bytes_per_publish: f64,
}

impl WireReport {
    pub fn new(subscribers: Wire, publishers: Wire, delivered: u64, published: u64) -> Self {
        let per = |x: u64, n: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
        WireReport {
            subscribers,
            publishers,
            down_bytes_per_delivery: per(subscribers.down, delivered),
            up_bytes_per_delivery: per(subscribers.up, delivered),
            requests_per_delivery: per(subscribers.requests, delivered),
            publisher_bytes_per_publish: per(publishers.up + publishers.down, published),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub transport: Transport,
    pub publish_via: PublishVia,
    /// Long-polling: how long the broker could hold each request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_hold_ms: Option<u64>,
    /// Short polling: the interval between requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval_ms: Option<u64>,
    /// The brokers used: subscribers and publishers on each, and how its
    /// subscribers fared.
    pub brokers: Vec<BrokerShare>,
    /// Every connection presented `--token`.
    pub token: bool,
    /// `--upgrade-header-bytes` on every WebSocket upgrade (0: none).
    pub upgrade_header_bytes: usize,
    pub subs: usize,
    pub topics: usize,
    pub publishers: usize,
    /// Offered rate, messages/s.
    pub rate: f64,
    pub duration_s: f64,
    /// Actual size of each message's `data`.
    pub payload_bytes: usize,
    pub topic_prefix: String,
    pub setup_s: f64,
    pub published: u64,
    /// Achieved publish rate (first to last write).
    pub publish_rate: f64,
    /// Actual write time minus scheduled time, per message.
    pub send_lag: LatencySummary,
    pub publisher_cpu_s: f64,
    /// Summed over subscribers.
    pub totals: SeqCounts,
    pub subscribers_perfect: usize,
    pub worst_lost: u64,
    pub wrong_topic: u64,
    /// `totals.delivered / duration_s`.
    pub deliveries_per_s: f64,
    /// Scheduled send time to delivery.
    pub latency: LatencySummary,
    /// `(percentile, µs)` points of the same histogram, for plots.
    pub latency_curve: Vec<(f64, f64)>,
    pub wire: WireReport,
    pub drain_s: f64,
    pub drain_complete: bool,
    /// Run start to end of drain: the window CPU is measured over.
    pub window_s: f64,
    /// `processes` (each `--broker-pid` and `--pid`), `cluster` (their
    /// sum) and `broker` (the brokers' sum), over the window.
    #[serde(flatten)]
    pub usage: Usage,
    pub broker_cpu_us_per_delivery: Option<f64>,
    pub loadgen_cpu_us_per_delivery: f64,
    pub loadgen: LoadgenUsage,
    /// The whole host over the window (other work makes numbers noisy).
    pub host: Option<HostUsage>,
    /// What was saturated over the window (see [`limit`]): the load
    /// generator's threads, the watched processes; empty when nothing was.
    pub limits: Vec<Limit>,
}

impl FanoutReport {
    /// Share of the expected deliveries that arrived (0..=1).
    pub fn delivery_ratio(&self) -> f64 {
        if self.totals.expected == 0 {
            return 1.0;
        }
        (self.totals.expected - self.totals.lost) as f64 / self.totals.expected as f64
    }

    /// Every expected message reached every subscriber once, in order.
    pub fn perfect(&self) -> bool {
        self.totals.perfect() && self.wrong_topic == 0 && self.drain_complete
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnsReport {
    pub transport: Transport,
    pub brokers: Vec<BrokerShare>,
    /// Every connection presented `--token`.
    pub token: bool,
    pub conns: usize,
    pub topics: usize,
    /// `--upgrade-header-bytes`: browser headers on each upgrade request
    /// (0: none).
    pub upgrade_header_bytes: usize,
    pub source_ips: Vec<String>,
    pub nofile_limit: u64,
    /// First connect to last `subscribed`.
    pub open_s: f64,
    /// Connections / time to the last completed handshake.
    pub handshakes_per_s: f64,
    pub subscribed_per_s: f64,
    /// TCP connect + upgrade, per connection.
    pub handshake: LatencySummary,
    /// `subscribe` sent to `subscribed` received.
    pub subscribe: LatencySummary,
    /// CPU over the opening phase; RSS before the first connection and
    /// after `--settle`.
    #[serde(flatten)]
    pub usage: Usage,
    pub broker_rss_delta_per_conn_kib: Option<f64>,
    pub broker_cpu_us_per_conn: Option<f64>,
    /// The kernel's memory for the broker's end of the connections after
    /// `--settle` (see [`crate::sockmem`]; `None` when the broker is not on
    /// this host). RSS does not show it.
    pub broker_sockets: Option<SocketMemory>,
    /// The machine's `Slab:` growth from before the first connection to
    /// after `--settle`, per connection (KiB): socket structures, files,
    /// epoll entries, of both ends of each loopback connection and of
    /// whatever else the machine did meanwhile.
    pub host_slab_delta_per_conn_kib: Option<f64>,
    pub loadgen: LoadgenUsage,
    pub host: Option<HostUsage>,
    /// What was saturated while opening (see [`limit`]).
    pub limits: Vec<Limit>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EchoReport {
    /// Connection `i` went to `--broker` `i mod N`.
    pub brokers: Vec<BrokerShare>,
    pub conns: usize,
    pub messages: usize,
    pub payload_bytes: usize,
    pub window: usize,
    pub verified: u64,
    pub seconds: f64,
    pub messages_per_s: f64,
    pub round_trip: LatencySummary,
    /// Over the whole run, each echo thread from its start to its end.
    pub loadgen: LoadgenUsage,
    /// What was saturated (see [`limit`]; the broker is not watched here).
    pub limits: Vec<Limit>,
}

/// `850 µs`, `12.3 ms`, `1.20 s`.
pub fn fmt_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// `12.3 KiB` / `4.5 MiB`.
pub fn fmt_kib(kib: u64) -> String {
    if kib < 10 * 1024 {
        format!("{kib} KiB")
    } else {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    }
}

fn latency_table(out: &mut String, title: &str, l: &LatencySummary) -> fmt::Result {
    writeln!(out, "  {title} ({} samples)", l.count)?;
    writeln!(
        out,
        "    {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "p50", "p90", "p99", "p99.9", "max", "mean"
    )?;
    writeln!(
        out,
        "    {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        fmt_us(l.p50_us),
        fmt_us(l.p90_us),
        fmt_us(l.p99_us),
        fmt_us(l.p999_us),
        fmt_us(l.max_us),
        fmt_us(l.mean_us)
    )
}

/// Which brokers took how many connections, and (`fanout`) how their
/// subscribers fared. `subs` names what `subscribers` counts.
fn brokers_lines(out: &mut String, shares: &[BrokerShare], subs: &str) -> fmt::Result {
    for (k, b) in shares.iter().enumerate() {
        write!(
            out,
            "  {:<17}{}: {} {subs}",
            if k == 0 { "brokers" } else { "" },
            b.url,
            b.subscribers,
        )?;
        if b.publishers > 0 || subs == "subscribers" {
            write!(out, ", {} publishers", b.publishers)?;
        }
        if let Some(t) = &b.totals {
            write!(
                out,
                "; delivered {} of {}, lost/dup/ooo {} / {} / {}",
                t.delivered, t.expected, t.lost, t.duplicated, t.out_of_order
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// `label  cpu 1.23 s = 45.6 % of a core, 7.890 µs/unit`.
fn cpu_text(out: &mut String, label: &str, c: &Cpu, unit: &str) {
    let _ = write!(
        out,
        "  {label:<16} cpu {:.2} s = {:.1} % of a core",
        c.cpu_seconds, c.busy_percent
    );
    if let Some(v) = c.per_unit() {
        let _ = write!(out, ", {v:.3} µs/{unit}");
    }
}

/// A line per watched process, then their sum when there are several.
fn usage_lines(out: &mut String, u: &Usage, unit: &str) -> fmt::Result {
    for p in &u.processes {
        cpu_text(out, &format!("{} (pid {})", p.name, p.pid), &p.cpu, unit);
        write!(
            out,
            "; RSS {} -> {}",
            fmt_kib(p.rss_before_kib),
            fmt_kib(p.rss_after_kib)
        )?;
        if let Some(t) = &p.busiest_thread {
            write!(out, "; busiest thread {} {:.1} %", t.name, t.busy_percent)?;
            if let Some(w) = t.wait_percent.filter(|w| *w >= 1.0) {
                write!(out, " (+{w:.0} % waiting)")?;
            }
        }
        writeln!(out)?;
    }
    if let (Some(c), true) = (&u.cluster, u.processes.len() > 1) {
        cpu_text(out, "cluster", &c.cpu, unit);
        writeln!(out, " (the {} processes above)", c.processes)?;
    }
    Ok(())
}

fn host_line(out: &mut String, h: &Option<HostUsage>) -> fmt::Result {
    if let Some(h) = h {
        writeln!(
            out,
            "  host             {:.2} of {} cores busy, {:.2} by other processes{}",
            h.busy_cores,
            h.cpus,
            h.other_cores,
            if h.other_cores > 0.2 {
                " (noisy measurement)"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}

/// `broker sockets   N on port P: X B per socket held (r …, w …, f …, o …;
/// t … in flight); buffer limits …`.
fn broker_sockets_line(out: &mut String, m: &SocketMemory) -> fmt::Result {
    let ports: Vec<String> = m.ports.iter().map(u16::to_string).collect();
    writeln!(
        out,
        "  broker sockets   {} established on port {}: {:.0} B per socket held in kernel \
         buffers (sum r {} + w {} + f {} + o {} B; t {} B in flight)",
        m.sockets,
        ports.join(","),
        m.held_per_socket_bytes,
        m.rmem_alloc,
        m.wmem_queued,
        m.fwd_alloc,
        m.optmem,
        m.wmem_alloc
    )?;
    writeln!(
        out,
        "                   buffer limits per socket: rb {} tb {} (may grow to, not held)",
        fmt_kib((m.rcvbuf_avg / 1024.0) as u64),
        fmt_kib((m.sndbuf_avg / 1024.0) as u64)
    )
}

/// The host's load, the load generator's threads and who was the limit.
fn host_and_limit_lines(
    out: &mut String,
    host: &Option<HostUsage>,
    loadgen: &LoadgenUsage,
    limits: &[Limit],
    usage: &Usage,
) -> fmt::Result {
    host_line(out, host)?;
    limit::lines(out, loadgen, limits, !usage.processes.is_empty())
}

fn loadgen_line(out: &mut String, l: &LoadgenUsage) -> fmt::Result {
    writeln!(
        out,
        "  loadgen          cpu {:.2} s = {:.1} % of a core{}; max RSS {}",
        l.cpu_seconds,
        l.cpu_utilization * 100.0,
        if l.cpu_utilization >= LoadgenUsage::SATURATED {
            " (near one core: on one core the load generator may be the limit)"
        } else {
            ""
        },
        fmt_kib(l.max_rss_kib)
    )
}

impl fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut o = String::new();
        let t = &self.totals;
        writeln!(
            o,
            "fanout over {}: {} subscribers x {} topic(s), {} publisher(s), {} msg/s for {:.1} s, data {} B",
            self.transport.name(),
            self.subs,
            self.topics,
            self.publishers,
            self.rate,
            self.duration_s,
            self.payload_bytes
        )?;
        brokers_lines(&mut o, &self.brokers, "subscribers")?;
        writeln!(
            o,
            "  setup            {:.2} s to connect and subscribe everyone",
            self.setup_s
        )?;
        writeln!(
            o,
            "  published        {} messages ({:.1} msg/s achieved); publisher cpu {:.2} s",
            self.published, self.publish_rate, self.publisher_cpu_s
        )?;
        writeln!(
            o,
            "  delivered        {} of {} expected = {:.4} %  ({:.0} deliveries/s)",
            t.delivered,
            t.expected,
            self.delivery_ratio() * 100.0,
            self.deliveries_per_s
        )?;
        writeln!(
            o,
            "  lost/dup/ooo     {} / {} / {}   unexpected {}  skipped-notices {}  wrong-topic {}",
            t.lost,
            t.duplicated,
            t.out_of_order,
            t.unexpected,
            t.skipped_notified,
            self.wrong_topic
        )?;
        writeln!(
            o,
            "  subscribers      {} of {} perfect; worst lost {}",
            self.subscribers_perfect, self.subs, self.worst_lost
        )?;
        writeln!(
            o,
            "  drain            {:.3} s ({})",
            self.drain_s,
            if self.drain_complete {
                "complete"
            } else {
                "timed out: the rest is lost"
            }
        )?;
        latency_table(&mut o, "latency, scheduled send -> delivery", &self.latency)?;
        latency_table(&mut o, "send lag, scheduled -> written", &self.send_lag)?;
        let w = &self.wire;
        writeln!(
            o,
            "  wire             per delivery: {:.1} B down, {:.1} B up, {:.3} requests; \
             publishing over {}: {:.1} B per message",
            w.down_bytes_per_delivery,
            w.up_bytes_per_delivery,
            w.requests_per_delivery,
            self.publish_via.name(),
            w.publisher_bytes_per_publish
        )?;
        usage_lines(&mut o, &self.usage, "delivery")?;
        loadgen_line(&mut o, &self.loadgen)?;
        writeln!(
            o,
            "                   {:.3} µs of loadgen CPU per delivery",
            self.loadgen_cpu_us_per_delivery
        )?;
        host_and_limit_lines(&mut o, &self.host, &self.loadgen, &self.limits, &self.usage)?;
        write!(
            o,
            "  verdict          {}",
            if self.perfect() {
                "100 % delivered, in order, no duplicates"
            } else {
                "NOT all delivered exactly once in order (see above)"
            }
        )?;
        f.write_str(&o)
    }
}

impl fmt::Display for ConnsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut o = String::new();
        writeln!(
            o,
            "conns over {}: {} idle connections, each subscribed to one of {} topics",
            self.transport.name(),
            self.conns,
            self.topics
        )?;
        brokers_lines(&mut o, &self.brokers, "connections")?;
        if self.upgrade_header_bytes > 0 {
            writeln!(
                o,
                "  upgrade request  + {} B of browser headers (User-Agent, Cookie, …) each",
                self.upgrade_header_bytes
            )?;
        }
        writeln!(
            o,
            "  source addresses {}  (RLIMIT_NOFILE {})",
            if self.source_ips.is_empty() {
                "kernel's choice".to_string()
            } else {
                self.source_ips.join(",")
            },
            self.nofile_limit
        )?;
        writeln!(
            o,
            "  opened           {:.2} s: {:.0} handshakes/s, {:.0} subscribed/s",
            self.open_s, self.handshakes_per_s, self.subscribed_per_s
        )?;
        latency_table(&mut o, "handshake (connect + upgrade)", &self.handshake)?;
        latency_table(&mut o, "subscribe -> subscribed", &self.subscribe)?;
        usage_lines(&mut o, &self.usage, "conn")?;
        if let Some(d) = self.broker_rss_delta_per_conn_kib {
            writeln!(o, "  broker RSS       {d:.2} KiB per connection")?;
        }
        if let Some(m) = &self.broker_sockets {
            broker_sockets_line(&mut o, m)?;
        }
        if let Some(d) = self.host_slab_delta_per_conn_kib {
            writeln!(
                o,
                "  kernel slab      {d:+.2} KiB per connection, whole machine (both ends of \
                 each connection on one host, and any other work)"
            )?;
        }
        loadgen_line(&mut o, &self.loadgen)?;
        host_and_limit_lines(&mut o, &self.host, &self.loadgen, &self.limits, &self.usage)?;
        f.write_str(o.trim_end())
    }
}

impl fmt::Display for EchoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut o = String::new();
        writeln!(
            o,
            "echo: {} conns x {} msgs x {} B, window {}",
            self.conns, self.messages, self.payload_bytes, self.window
        )?;
        brokers_lines(&mut o, &self.brokers, "echo connections")?;
        writeln!(
            o,
            "  verified   {} echoes in {:.2} s ({:.0} msg/s)",
            self.verified, self.seconds, self.messages_per_s
        )?;
        latency_table(&mut o, "round trip", &self.round_trip)?;
        loadgen_line(&mut o, &self.loadgen)?;
        limit::lines(&mut o, &self.loadgen, &self.limits, false)?;
        f.write_str(o.trim_end())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::procs::{watched, Per};
    use crate::sys::ProcSample;

    pub(crate) fn sample() -> FanoutReport {
        let lat = LatencySummary {
            count: 10,
            min_us: 10.0,
            mean_us: 20.0,
            p50_us: 18.0,
            p90_us: 30.0,
            p99_us: 900.0,
            p999_us: 1500.0,
            max_us: 2_500_000.0,
        };
        FanoutReport {
            transport: Transport::Ws,
            publish_via: PublishVia::Ws,
            poll_hold_ms: None,
            poll_interval_ms: None,
            brokers: vec![BrokerShare {
                url: "http://127.0.0.1:1".into(),
                subscribers: 2,
                publishers: 1,
                totals: Some(SeqCounts {
                    expected: 10,
                    delivered: 9,
                    lost: 1,
                    ..Default::default()
                }),
            }],
            token: false,
            upgrade_header_bytes: 0,
            subs: 2,
            topics: 1,
            publishers: 1,
            rate: 5.0,
            duration_s: 1.0,
            payload_bytes: 64,
            topic_prefix: "lg.x".into(),
            setup_s: 0.1,
            published: 5,
            publish_rate: 5.0,
            send_lag: lat,
            publisher_cpu_s: 0.0,
            totals: SeqCounts {
                expected: 10,
                delivered: 9,
                lost: 1,
                ..Default::default()
            },
            subscribers_perfect: 1,
            worst_lost: 1,
            wrong_topic: 0,
            deliveries_per_s: 9.0,
            latency: lat,
            latency_curve: vec![(50.0, 18.0), (99.0, 900.0), (100.0, 2_500_000.0)],
            wire: WireReport::new(
                Wire {
                    up: 0,
                    down: 900,
                    requests: 0,
                },
                Wire {
                    up: 500,
                    down: 0,
                    requests: 0,
                },
                9,
                5,
            ),
            drain_s: 5.0,
            drain_complete: false,
            window_s: 6.0,
            usage: Usage::between(
                &crate::procs::watched(&[7], &[]).unwrap(),
                &[ProcSample {
                    cpu: Duration::ZERO,
                    rss_kib: 2048,
                    ..ProcSample::default()
                }],
                &[ProcSample {
                    cpu: Duration::from_millis(500),
                    rss_kib: 20480,
                    ..ProcSample::default()
                }],
                Duration::from_secs(6),
                Per::Delivery(9),
            ),
            broker_cpu_us_per_delivery: Some(55_555.6),
            loadgen_cpu_us_per_delivery: 633_333.3,
            loadgen: LoadgenUsage {
                cpu_seconds: 5.7,
                cpu_utilization: 0.95,
                max_rss_kib: 1000,
                threads: vec![
                    ThreadUsage::new("subs-0", 5.64, 6.0),
                    ThreadUsage::new("pubs-0", 0.06, 6.0),
                ],
                allowed_cores: Some(1),
                was_limit: true,
            },
            host: Some(HostUsage {
                cpus: 2,
                busy_cores: 1.9,
                other_cores: 0.9,
            }),
            limits: vec![Limit {
                who: "loadgen".into(),
                what: "thread subs-0".into(),
                busy_percent: 94.0,
                wait_percent: Some(0.5),
                cores: 1,
                advice: "add --threads".into(),
            }],
        }
    }

    #[test]
    fn human_units() {
        assert_eq!(fmt_us(850.4), "850 µs");
        assert_eq!(fmt_us(12_345.0), "12.35 ms");
        assert_eq!(fmt_us(1_200_000.0), "1.20 s");
        assert_eq!(fmt_kib(2048), "2048 KiB");
        assert_eq!(fmt_kib(20480), "20.0 MiB");
    }

    #[test]
    fn fanout_table_and_verdict() {
        let r = sample();
        assert!((r.delivery_ratio() - 0.9).abs() < 1e-9);
        assert!(!r.perfect());
        let text = r.to_string();
        assert!(text.contains("9 of 10 expected = 90.0000 %"), "{text}");
        assert!(text.contains("timed out"), "{text}");
        assert!(text.contains("NOT all delivered"), "{text}");
        assert!(text.contains("near one core"), "{text}");
        assert!(
            text.contains("  loadgen threads  subs-0 94.0 %, pubs-0 1.0 % of a core\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "  limit            loadgen was the limit: thread subs-0 at 94 % of a core; \
                 add --threads\n  verdict"
            ),
            "{text}"
        );
        assert!(text.contains("2.50 s"), "{text}");
        assert!(text.contains("RSS 2048 KiB -> 20.0 MiB"), "{text}");
        assert!(text.contains("0.90 by other processes (noisy"), "{text}");
        assert!(
            text.contains("per delivery: 100.0 B down, 0.0 B up, 0.000 requests"),
            "{text}"
        );
        assert!(
            text.contains("publishing over ws: 100.0 B per message"),
            "{text}"
        );
    }

    #[test]
    fn the_broker_sockets_line_gives_what_is_held_and_the_limits() {
        let m = SocketMemory {
            ports: vec![8080],
            sockets: 5000,
            rmem_alloc: 0,
            wmem_alloc: 0,
            fwd_alloc: 4096,
            wmem_queued: 1000,
            optmem: 0,
            backlog: 0,
            rcvbuf_avg: 131072.0,
            sndbuf_avg: 16384.0 * 1024.0,
            held_bytes: 5096,
            held_per_socket_bytes: 1.0192,
        };
        let mut o = String::new();
        broker_sockets_line(&mut o, &m).unwrap();
        assert_eq!(
            o,
            "  broker sockets   5000 established on port 8080: 1 B per socket held in kernel \
             buffers (sum r 0 + w 1000 + f 4096 + o 0 B; t 0 B in flight)\n                   \
             buffer limits per socket: rb 128 KiB tb 16.0 MiB (may grow to, not held)\n"
        );
    }

    #[test]
    fn fanout_json_is_one_document_with_stable_keys() {
        let v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["transport"], "ws");
        assert_eq!(v["totals"]["lost"], 1);
        assert_eq!(v["latency"]["p999_us"], 1500.0);
        assert_eq!(v["broker"]["pids"][0], 7);
        assert_eq!(v["broker"]["cpu_seconds"], 0.5);
        assert_eq!(v["processes"][0]["name"], "broker");
        assert_eq!(v["cluster"]["processes"], 1);
        assert_eq!(v["brokers"][0]["subscribers"], 2);
        assert_eq!(v["brokers"][0]["totals"]["lost"], 1);
        assert!(v["loadgen"]["cpu_utilization"].as_f64().unwrap() > 0.9);
        assert_eq!(v["loadgen"]["threads"][0]["name"], "subs-0");
        assert_eq!(v["loadgen"]["threads"][1]["cpu_seconds"], 0.06);
        assert_eq!(v["loadgen"]["was_limit"], true);
        assert_eq!(v["limits"][0]["what"], "thread subs-0");
        let mut r = sample();
        r.usage = Usage::default();
        r.broker_cpu_us_per_delivery = None;
        let v = serde_json::to_value(r).unwrap();
        assert!(v["broker"].is_null());
        assert!(v["cluster"].is_null());
        assert_eq!(v["processes"].as_array().unwrap().len(), 0);
    }

    /// Two brokers and Redis: a report as a cluster run gives it.
    pub(crate) fn cluster_sample() -> FanoutReport {
        let mut r = sample();
        let procs = watched(&[7, 8], &[("redis".into(), 9)]).unwrap();
        let at = |ms: u64, kib: u64| ProcSample {
            cpu: Duration::from_millis(ms),
            rss_kib: kib,
            ..ProcSample::default()
        };
        r.usage = Usage::between(
            &procs,
            &[at(0, 100), at(0, 200), at(0, 50)],
            &[at(600, 100), at(300, 200), at(150, 50)],
            Duration::from_secs(6),
            Per::Delivery(1_000),
        );
        r.broker_cpu_us_per_delivery = Some(900.0);
        r.brokers = vec![
            BrokerShare {
                url: "http://127.0.0.1:8080".into(),
                subscribers: 1,
                publishers: 0,
                totals: Some(SeqCounts {
                    expected: 5,
                    delivered: 5,
                    ..Default::default()
                }),
            },
            BrokerShare {
                url: "http://127.0.0.1:8081".into(),
                subscribers: 1,
                publishers: 1,
                totals: Some(SeqCounts {
                    expected: 5,
                    delivered: 4,
                    lost: 1,
                    ..Default::default()
                }),
            },
        ];
        r
    }

    #[test]
    fn a_cluster_report_names_every_broker_and_process() {
        let text = cluster_sample().to_string();
        assert!(
            text.contains(
                "  brokers          http://127.0.0.1:8080: 1 subscribers, 0 publishers; \
                 delivered 5 of 5, lost/dup/ooo 0 / 0 / 0\n                   \
                 http://127.0.0.1:8081: 1 subscribers, 1 publishers; delivered 4 of 5"
            ),
            "{text}"
        );
        assert!(
            text.contains("  broker0 (pid 7)  cpu 0.60 s = 10.0 % of a core, 600.000 µs/delivery"),
            "{text}"
        );
        assert!(text.contains("  broker1 (pid 8)  cpu 0.30 s"), "{text}");
        assert!(
            text.contains("  redis (pid 9)    cpu 0.15 s = 2.5 % of a core, 150.000 µs/delivery"),
            "{text}"
        );
        assert!(
            text.contains(
                "  cluster          cpu 1.05 s = 17.5 % of a core, 1050.000 µs/delivery \
                 (the 3 processes above)"
            ),
            "{text}"
        );
        let v = serde_json::to_value(cluster_sample()).unwrap();
        assert_eq!(v["processes"][2]["name"], "redis");
        assert_eq!(v["processes"][2]["broker"], false);
        let near = |v: &serde_json::Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-6;
        assert!(near(&v["processes"][2]["cpu_us_per_delivery"], 150.0));
        assert!(near(&v["processes"][2]["busy_percent"], 2.5));
        assert!(near(&v["cluster"]["cpu_us_per_delivery"], 1050.0));
        assert!(near(&v["cluster"]["busy_percent"], 17.5));
        assert_eq!(v["broker"]["pids"], serde_json::json!([7, 8]));
        assert!(near(&v["broker"]["cpu_seconds"], 0.9));
    }
}
