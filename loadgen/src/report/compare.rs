//! The report of a `fanout` or `compare` run: one entry per transport, as
//! one JSON document (`--json`), CSV rows (`--csv`), or a human table with
//! a row per transport.

use std::fmt::{self, Write as _};

use serde::Serialize;

use super::{fmt_kib, fmt_us, FanoutReport};
use crate::transport::Transport;

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `fanout` or `compare`.
    pub scenario: &'static str,
    pub transports: Vec<FanoutReport>,
    /// Transports whose run failed (`compare` goes on without them).
    pub failed: Vec<Failure>,
}

/// A transport whose run ended in an error.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub transport: Transport,
    pub error: String,
}

impl RunReport {
    /// Every transport delivered every message exactly once, in order.
    pub fn perfect(&self) -> bool {
        self.failed.is_empty() && self.transports.iter().all(FanoutReport::perfect)
    }

    /// The watched processes' names (the same for every transport of a
    /// run), brokers first.
    fn process_names(&self) -> Vec<&str> {
        distinct(
            self.transports
                .iter()
                .flat_map(|r| r.usage.processes.iter().map(|p| p.name.as_str())),
        )
    }

    /// The load generator's thread names over every transport, in order.
    fn thread_names(&self) -> Vec<&str> {
        distinct(
            self.transports
                .iter()
                .flat_map(|r| r.loadgen.threads.iter().map(|t| t.name.as_str())),
        )
    }

    /// A header and one row per transport. Every field is a number or a
    /// name without commas or quotes, so no quoting is needed: the fixed
    /// columns of [`CSV_HEADER`], then three per watched process
    /// (`NAME.cpu_s`, `NAME.cpu_us_per_delivery`, `NAME.busy_percent`: the
    /// dot keeps them apart from the fixed columns, and process names are
    /// restricted to CSV-safe characters), then two per load generator
    /// thread (`loadgen.THREAD.cpu_s`, `loadgen.THREAD.busy_percent`;
    /// `loadgen` is a name `--pid` may not take).
    pub fn csv(&self) -> String {
        let names = self.process_names();
        let threads = self.thread_names();
        let mut o = String::from(CSV_HEADER);
        for n in &names {
            let _ = write!(o, ",{n}.cpu_s,{n}.cpu_us_per_delivery,{n}.busy_percent");
        }
        for t in &threads {
            let _ = write!(o, ",loadgen.{t}.cpu_s,loadgen.{t}.busy_percent");
        }
        o.push('\n');
        for r in &self.transports {
            let t = &r.totals;
            let l = &r.latency;
            let w = &r.wire;
            let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
            let _ = write!(
                o,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{:.6},{:.1},{:.1},{:.1},{:.1},{:.1},{:.2},{:.2},{:.4},{:.2},{},{},{:.4},{},{},{:.2},{}",
                r.transport.name(),
                r.publish_via.name(),
                r.subs,
                r.topics,
                r.rate,
                r.payload_bytes,
                r.duration_s,
                r.published,
                t.expected,
                t.delivered,
                t.lost,
                t.duplicated,
                t.out_of_order,
                r.delivery_ratio(),
                l.p50_us,
                l.p90_us,
                l.p99_us,
                l.p999_us,
                l.max_us,
                w.down_bytes_per_delivery,
                w.up_bytes_per_delivery,
                w.requests_per_delivery,
                w.publisher_bytes_per_publish,
                opt(r.broker_cpu_us_per_delivery),
                r.usage
                    .broker
                    .as_ref()
                    .map(|b| b.rss_after_kib.to_string())
                    .unwrap_or_default(),
                r.loadgen_cpu_us_per_delivery,
                opt(r.usage.cluster.as_ref().and_then(|c| c.cpu.cpu_us_per_delivery)),
                r.loadgen.threads.len(),
                r.loadgen
                    .threads
                    .iter()
                    .map(|t| t.busy_percent)
                    .fold(0.0, f64::max),
                limited_by(r),
            );
            for n in &names {
                match r.usage.processes.iter().find(|p| p.name == *n) {
                    Some(p) => {
                        let _ = write!(
                            o,
                            ",{:.4},{},{:.2}",
                            p.cpu.cpu_seconds,
                            opt(p.cpu.cpu_us_per_delivery),
                            p.cpu.busy_percent
                        );
                    }
                    None => o.push_str(",,,"),
                }
            }
            for n in &threads {
                match r.loadgen.threads.iter().find(|t| t.name == *n) {
                    Some(t) => {
                        let _ = write!(o, ",{:.4},{:.2}", t.cpu_seconds, t.busy_percent);
                    }
                    None => o.push_str(",,"),
                }
            }
            o.push('\n');
        }
        o
    }

    /// With more than one watched process (several brokers, Redis): CPU
    /// per delivery and busy share of a core, per process and summed, a
    /// row per transport.
    fn processes_table(&self, o: &mut String) -> fmt::Result {
        let names = self.process_names();
        if names.len() < 2 {
            return Ok(());
        }
        write!(o, "{:<11}", "CPU")?;
        for n in names.iter().copied().chain(["cluster"]) {
            write!(o, "{n:>22}")?;
        }
        writeln!(o)?;
        for r in &self.transports {
            write!(o, "{:<11}", r.transport.name())?;
            let procs = names.iter().map(|n| {
                r.usage
                    .processes
                    .iter()
                    .find(|p| p.name == *n)
                    .map(|p| p.cpu)
            });
            let cluster = r.usage.cluster.as_ref().map(|c| c.cpu);
            for cell in procs.chain([cluster]) {
                let text = match cell {
                    Some(c) => format!(
                        "{:.2} µs {:.1} %",
                        c.cpu_us_per_delivery.unwrap_or(0.0),
                        c.busy_percent
                    ),
                    None => "-".into(),
                };
                write!(o, "{text:>22}")?;
            }
            writeln!(o)?;
        }
        writeln!(
            o,
            "(CPU: per delivered message, and busy share of one core over the window, per \
             --broker-pid and --pid process and their sum)"
        )
    }
}

pub const CSV_HEADER: &str = "transport,publish_via,subs,topics,rate,payload_bytes,duration_s,\
published,expected,delivered,lost,duplicated,out_of_order,delivery_ratio,\
p50_us,p90_us,p99_us,p999_us,max_us,down_bytes_per_delivery,up_bytes_per_delivery,\
requests_per_delivery,publisher_bytes_per_publish,broker_cpu_us_per_delivery,\
broker_rss_after_kib,loadgen_cpu_us_per_delivery,cluster_cpu_us_per_delivery,\
loadgen_threads,loadgen_max_thread_busy_percent,limited_by";

/// Who was the limit of a run, for the CSV: `loadgen`, a watched
/// process's name, several joined by `+`, or empty.
fn limited_by(r: &FanoutReport) -> String {
    distinct(r.limits.iter().map(|l| l.who.as_str())).join("+")
}

/// `names` in their first order, each once.
fn distinct<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [one] = &self.transports[..] {
            if self.scenario == "fanout" {
                return one.fmt(f);
            }
        }
        let mut o = String::new();
        if let Some(r) = self.transports.first() {
            writeln!(
                o,
                "compare: {} subscribers x {} topic(s), {} msg/s for {:.1} s, data {} B, \
                 publishing over {}",
                r.subs,
                r.topics,
                r.rate,
                r.duration_s,
                r.payload_bytes,
                r.publish_via.name()
            )?;
            if r.brokers.len() > 1 {
                let split: Vec<String> = r
                    .brokers
                    .iter()
                    .map(|b| format!("{} ({} subs, {} pubs)", b.url, b.subscribers, b.publishers))
                    .collect();
                writeln!(o, "brokers: {}", split.join(", "))?;
            }
        }
        writeln!(
            o,
            "{:<11}{:>10}{:>6}{:>6}{:>10}{:>10}{:>10}{:>10}{:>10}{:>9}{:>8}{:>8}{:>10}{:>10}{:>11}",
            "transport",
            "delivered",
            "lost",
            "dup",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "B down",
            "B up",
            "req",
            "broker µs",
            "lg µs",
            "broker RSS"
        )?;
        for r in &self.transports {
            let (t, l, w) = (&r.totals, &r.latency, &r.wire);
            writeln!(
                o,
                "{:<11}{:>9.3}%{:>6}{:>6}{:>10}{:>10}{:>10}{:>10}{:>10}{:>9.1}{:>8.1}{:>8.3}{:>10}{:>10.2}{:>11}",
                r.transport.name(),
                r.delivery_ratio() * 100.0,
                t.lost,
                t.duplicated + t.out_of_order,
                fmt_us(l.p50_us),
                fmt_us(l.p90_us),
                fmt_us(l.p99_us),
                fmt_us(l.p999_us),
                fmt_us(l.max_us),
                w.down_bytes_per_delivery,
                w.up_bytes_per_delivery,
                w.requests_per_delivery,
                r.broker_cpu_us_per_delivery
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "-".into()),
                r.loadgen_cpu_us_per_delivery,
                r.usage
                    .broker
                    .as_ref()
                    .map(|b| fmt_kib(b.rss_after_kib))
                    .unwrap_or_else(|| "-".into()),
            )?;
        }
        writeln!(
            o,
            "(latency: scheduled send -> delivery; B down/up and req: wire bytes and HTTP \
             requests per delivered message, heads and frame headers included; µs: CPU per \
             delivered message; broker: every --broker-pid together; RSS: the broker's at the \
             end{})",
            if self.transports.iter().any(|r| r.usage.broker.is_none()) {
                ", broker's only with --broker-pid"
            } else {
                ""
            }
        )?;
        self.processes_table(&mut o)?;
        for f in &self.failed {
            writeln!(
                o,
                "{}: FAILED: {}",
                f.transport.name(),
                f.error.lines().next().unwrap_or("")
            )?;
        }
        for r in &self.transports {
            for l in &r.limits {
                writeln!(o, "{}: {l}", r.transport.name())?;
            }
        }
        if self.transports.iter().all(|r| r.limits.is_empty()) {
            writeln!(
                o,
                "limits: none (no loadgen thread{} near a full core in any run)",
                if self.process_names().is_empty() {
                    ""
                } else {
                    " or watched process"
                }
            )?;
        }
        for r in &self.transports {
            if !r.perfect() {
                writeln!(
                    o,
                    "{}: NOT all delivered exactly once in order: lost {}, duplicated {}, \
                     out of order {}, unexpected {}, wrong topic {}{}",
                    r.transport.name(),
                    r.totals.lost,
                    r.totals.duplicated,
                    r.totals.out_of_order,
                    r.totals.unexpected,
                    r.wrong_topic,
                    if r.drain_complete {
                        ""
                    } else {
                        ", drain timed out"
                    }
                )?;
            }
        }
        write!(
            o,
            "verdict: {}",
            if self.perfect() {
                "every transport delivered 100 %, in order, no duplicates"
            } else {
                "NOT every transport delivered everything exactly once (see above)"
            }
        )?;
        f.write_str(&o)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cluster_sample, sample};
    use super::*;

    fn two() -> RunReport {
        let mut ok = sample();
        ok.totals.lost = 0;
        ok.totals.delivered = 10;
        ok.drain_complete = true;
        let mut lp = sample();
        lp.transport = Transport::LongPoll;
        RunReport {
            scenario: "compare",
            transports: vec![ok, lp],
            failed: vec![Failure {
                transport: Transport::Sse,
                error: "subscriber 3: mid-run: EOF\n  hint".into(),
            }],
        }
    }

    #[test]
    fn one_row_per_transport_and_a_verdict_naming_the_bad_one() {
        let r = two();
        assert!(!r.perfect());
        let text = r.to_string();
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ws ") || l.starts_with("long-poll "))
            .collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(rows[0].contains("100.000%"), "{text}");
        assert!(rows[0].ends_with("20.0 MiB"), "{text}");
        assert!(rows[1].contains("90.000%"), "{text}");
        assert!(
            text.contains("long-poll: NOT all delivered exactly once in order: lost 1"),
            "{text}"
        );
        assert!(!text.contains("ws: NOT"), "{text}");
        assert!(
            text.contains("sse: FAILED: subscriber 3: mid-run: EOF\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "ws: loadgen was the limit: thread subs-0 at 94 % of a core; add --threads\n\
                 long-poll: loadgen was the limit"
            ),
            "{text}"
        );
        assert!(text.ends_with("(see above)"), "{text}");
    }

    /// The cell of column `name` in data row `row` (1: the first).
    fn cell<'a>(csv: &'a str, row: usize, name: &str) -> &'a str {
        let mut lines = csv.lines().map(|l| l.split(',').collect::<Vec<_>>());
        let header = lines.next().unwrap();
        let col = header.iter().position(|h| *h == name).expect(name);
        lines.nth(row - 1).unwrap()[col]
    }

    #[test]
    fn csv_has_a_header_and_a_row_per_transport_with_matching_columns() {
        let csv = two().csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        let cols = lines[0].split(',').count();
        assert_eq!(
            cols, 37,
            "30 fixed, 3 for the one broker process, 2 for each of 2 loadgen threads"
        );
        assert!(lines[0].ends_with(
            ",cluster_cpu_us_per_delivery,loadgen_threads,loadgen_max_thread_busy_percent,\
             limited_by,broker.cpu_s,broker.cpu_us_per_delivery,broker.busy_percent,\
             loadgen.subs-0.cpu_s,loadgen.subs-0.busy_percent,loadgen.pubs-0.cpu_s,\
             loadgen.pubs-0.busy_percent"
        ));
        assert_eq!(cell(&csv, 1, "loadgen_threads"), "2");
        assert_eq!(cell(&csv, 1, "loadgen_max_thread_busy_percent"), "94.00");
        assert_eq!(cell(&csv, 1, "limited_by"), "loadgen");
        assert_eq!(cell(&csv, 1, "loadgen.pubs-0.cpu_s"), "0.0600");
        for l in &lines[1..] {
            assert_eq!(l.split(',').count(), cols, "{l}");
        }
        assert!(
            lines[2].starts_with("long-poll,ws,2,1,5,64,"),
            "{}",
            lines[2]
        );
        let ratio: f64 = lines[2].split(',').nth(13).unwrap().parse().unwrap();
        assert!((ratio - 0.9).abs() < 1e-9);
    }

    #[test]
    fn json_is_one_document_with_an_entry_per_transport() {
        let v = serde_json::to_value(two()).unwrap();
        assert_eq!(v["scenario"], "compare");
        assert_eq!(v["transports"].as_array().unwrap().len(), 2);
        assert_eq!(v["transports"][1]["transport"], "long-poll");
        assert_eq!(v["transports"][0]["wire"]["down_bytes_per_delivery"], 100.0);
        assert_eq!(v["transports"][0]["latency_curve"][1][0], 99.0);
        assert_eq!(v["failed"][0]["transport"], "sse");
    }

    #[test]
    fn a_cluster_run_has_a_cpu_row_and_columns_per_process() {
        let mut lp = cluster_sample();
        lp.transport = Transport::LongPoll;
        let r = RunReport {
            scenario: "compare",
            transports: vec![cluster_sample(), lp],
            failed: Vec::new(),
        };
        let text = r.to_string();
        assert!(
            text.contains(
                "brokers: http://127.0.0.1:8080 (1 subs, 0 pubs), http://127.0.0.1:8081 \
                 (1 subs, 1 pubs)"
            ),
            "{text}"
        );
        let header = text.lines().find(|l| l.starts_with("CPU ")).expect(&text);
        let cols: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(cols, ["CPU", "broker0", "broker1", "redis", "cluster"]);
        // The main table's row comes first, then the CPU table's.
        let row = text
            .lines()
            .filter(|l| l.starts_with("long-poll "))
            .nth(1)
            .expect(&text);
        assert!(row.contains("600.00 µs 10.0 %"), "{row}");
        assert!(row.ends_with("1050.00 µs 17.5 %"), "{row}");

        let csv = r.csv();
        let lines: Vec<&str> = csv.lines().collect();
        let header: Vec<&str> = lines[0].split(',').collect();
        assert_eq!(header.len(), 30 + 3 * 3 + 2 * 2);
        for l in &lines[1..] {
            assert_eq!(l.split(',').count(), header.len(), "{l}");
        }
        let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
        let row: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(row[col("redis.cpu_s")], "0.1500");
        assert_eq!(row[col("redis.cpu_us_per_delivery")], "150.0000");
        assert_eq!(row[col("redis.busy_percent")], "2.50");
        assert_eq!(row[col("broker1.busy_percent")], "5.00");
        assert_eq!(row[col("cluster_cpu_us_per_delivery")], "1050.0000");
        assert_eq!(row[col("broker_cpu_us_per_delivery")], "900.0000");
    }

    #[test]
    fn a_single_fanout_prints_the_detailed_report() {
        let r = RunReport {
            scenario: "fanout",
            transports: vec![sample()],
            failed: Vec::new(),
        };
        assert!(r.to_string().starts_with("fanout over ws:"));
    }
}
