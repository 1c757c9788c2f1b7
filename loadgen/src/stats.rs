//! Measurement primitives: latency histograms and per-subscriber `seq`
//! accounting. Pure and deterministic; the scenarios feed them.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in nanoseconds (1 ns to 1 hour, 3 significant digits).
#[derive(Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Latency({:?})", self.summary())
    }
}

impl Latency {
    pub const MAX_NS: u64 = 3_600_000_000_000;

    pub fn new() -> Self {
        Latency {
            hist: Histogram::new_with_bounds(1, Self::MAX_NS, 3).expect("valid bounds"),
        }
    }

    /// Records one sample; 0 counts as 1 ns, above an hour as an hour.
    pub fn record_ns(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        self.hist
            .add(&other.hist)
            .expect("same bounds, cannot overflow");
    }

    /// The percentile curve, `(percentile, µs)` points spaced evenly in
    /// "nines" (50, 68, 80, 90, … 99.99 %) and ending at the maximum: what
    /// the `--plot` latency chart draws. Empty without samples.
    pub fn curve(&self) -> Vec<(f64, f64)> {
        if self.hist.is_empty() {
            return Vec::new();
        }
        // 1 - q = 10^(-k/10) for k = 3..=40: from 50 % to 99.99 %.
        let mut out: Vec<(f64, f64)> = (3..=40)
            .map(|k| {
                let q = 1.0 - 10f64.powf(-(k as f64) / 10.0);
                (q * 100.0, self.hist.value_at_quantile(q) as f64 / 1_000.0)
            })
            .collect();
        out.push((100.0, self.hist.max() as f64 / 1_000.0));
        out
    }

    pub fn summary(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1_000.0;
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            min_us: us(self.hist.min()),
            mean_us: self.hist.mean() / 1_000.0,
            p50_us: us(self.hist.value_at_quantile(0.50)),
            p90_us: us(self.hist.value_at_quantile(0.90)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            p999_us: us(self.hist.value_at_quantile(0.999)),
            max_us: us(self.hist.max()),
        }
    }
}

/// Percentiles in microseconds. Percentiles are within 0.1 % of the true
/// value (HDR, 3 significant digits); `max` is the largest bucket's top.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// What one subscriber saw of one topic's `seq` stream, checked against
/// what was published (seqs `1..=expected`).
///
/// - `delivered`: every `message` received, duplicates included;
/// - `duplicated`: a seq received again;
/// - `out_of_order`: a first arrival of a seq lower than one already seen;
/// - `lost`: a seq in `1..=expected` never received;
/// - `unexpected`: distinct seqs outside `1..=expected` (seq 0, or a topic
///   that already had messages before the run);
/// - `skipped_notified`: seqs the broker *said* it skipped (slow-consumer
///   `conflate` policy); they are also counted in `lost`.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    max_seen: u64,
    delivered: u64,
    distinct: u64,
    duplicated: u64,
    out_of_order: u64,
    skipped_notified: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SeqCounts {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub skipped_notified: u64,
}

impl SeqCounts {
    pub fn add(&mut self, o: &SeqCounts) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.unexpected += o.unexpected;
        self.skipped_notified += o.skipped_notified;
    }

    /// Whether every expected message arrived exactly once, in order.
    pub fn perfect(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0 && self.unexpected == 0
    }
}

/// Sequences above this are not tracked in the bitmap (they would need
/// 128 MiB per subscriber); they count as `unexpected`.
const MAX_TRACKED_SEQ: u64 = 1 << 30;

impl SeqTracker {
    pub fn new() -> Self {
        SeqTracker::default()
    }

    /// Records one delivery of `seq`.
    pub fn record(&mut self, seq: u64) {
        self.delivered += 1;
        if seq > MAX_TRACKED_SEQ {
            self.distinct += 1;
            return;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            let want = (word + 1).max(self.seen.len() * 2);
            self.seen.resize(want, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicated += 1;
            return;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        if seq < self.max_seen {
            self.out_of_order += 1;
        } else {
            self.max_seen = seq;
        }
    }

    /// The broker reported seqs `from..=to` as skipped.
    pub fn record_skipped(&mut self, from: u64, to: u64) {
        self.skipped_notified += to.saturating_sub(from) + 1;
    }

    /// Whether every seq of `1..=expected` is accounted for: arrived, or
    /// announced as skipped by the broker (nothing more will come).
    pub fn complete(&self, expected: u64) -> bool {
        self.distinct + self.skipped_notified >= expected
            && self.seen_in(expected) + self.skipped_notified >= expected
    }

    /// How many of `1..=last` were seen.
    fn seen_in(&self, last: u64) -> u64 {
        if last == 0 {
            return 0;
        }
        let last = last.min(MAX_TRACKED_SEQ);
        let full = (last / 64) as usize;
        let mut n: u64 = self
            .seen
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        if let Some(&w) = self.seen.get(full) {
            // Bits 0..=last%64 of the last word.
            let keep = (last % 64) + 1;
            let mask = if keep == 64 {
                u64::MAX
            } else {
                (1u64 << keep) - 1
            };
            n += u64::from((w & mask).count_ones());
        }
        // Seq 0 is never valid.
        n - u64::from(self.seen.first().is_some_and(|w| w & 1 != 0))
    }

    /// The final account against `expected` published messages.
    pub fn counts(&self, expected: u64) -> SeqCounts {
        let in_range = self.seen_in(expected);
        SeqCounts {
            expected,
            delivered: self.delivered,
            lost: expected - in_range,
            duplicated: self.duplicated,
            out_of_order: self.out_of_order,
            unexpected: self.distinct - in_range,
            skipped_notified: self.skipped_notified,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64], expected: u64) -> SeqCounts {
        let mut t = SeqTracker::new();
        for &s in seqs {
            t.record(s);
        }
        t.counts(expected)
    }

    #[test]
    fn clean_stream() {
        let seqs: Vec<u64> = (1..=1000).collect();
        let c = run(&seqs, 1000);
        assert_eq!(
            c,
            SeqCounts {
                expected: 1000,
                delivered: 1000,
                ..Default::default()
            }
        );
        assert!(c.perfect());
    }

    #[test]
    fn gaps_dups_and_reordering() {
        // 3 lost (4, 7, 10), 5 duplicated once, 6 arrives after 8.
        let c = run(&[1, 2, 3, 5, 5, 8, 6, 9], 10);
        assert_eq!(c.expected, 10);
        assert_eq!(c.delivered, 8);
        assert_eq!(c.lost, 3);
        assert_eq!(c.duplicated, 1);
        assert_eq!(c.out_of_order, 1);
        assert_eq!(c.unexpected, 0);
        assert!(!c.perfect());
    }

    #[test]
    fn tail_loss_is_counted_against_what_was_published() {
        // The run published 100; the subscriber stopped hearing at 60.
        let seqs: Vec<u64> = (1..=60).collect();
        let c = run(&seqs, 100);
        assert_eq!((c.lost, c.delivered), (40, 60));
    }

    #[test]
    fn seqs_outside_the_run_are_unexpected() {
        let c = run(&[0, 1, 2, 3, 200, 200], 3);
        assert_eq!(c.lost, 0);
        assert_eq!(c.unexpected, 2); // 0 and 200
        assert_eq!(c.duplicated, 1);
        assert_eq!(c.delivered, 6);
    }

    #[test]
    fn completion_and_word_boundaries() {
        let mut t = SeqTracker::new();
        for s in 1..=127 {
            t.record(s);
            assert!(t.complete(s), "after {s}");
            assert!(!t.complete(s + 1));
        }
        assert_eq!(t.counts(63).unexpected, 64);
        assert_eq!(t.counts(64).unexpected, 63);
        assert_eq!(t.counts(128).lost, 1);
        let mut t = SeqTracker::new();
        t.record(64);
        assert_eq!(t.counts(64).lost, 63);
        assert!(!t.complete(64));
    }

    #[test]
    fn skipped_notices() {
        let mut t = SeqTracker::new();
        t.record(1);
        t.record_skipped(2, 5);
        t.record(6);
        let c = t.counts(6);
        assert_eq!((c.lost, c.skipped_notified), (4, 4));
        assert!(t.complete(6));
        assert!(!t.complete(7));
    }

    #[test]
    fn histogram_percentiles() {
        let mut l = Latency::new();
        // 1..=10_000 µs: p50 = 5 ms, p99 = 9.9 ms, max = 10 ms.
        for us in 1..=10_000u64 {
            l.record_ns(us * 1_000);
        }
        let s = l.summary();
        assert_eq!(s.count, 10_000);
        let close = |got: f64, want: f64| (got - want).abs() / want < 0.002;
        assert!(close(s.p50_us, 5_000.0), "{s:?}");
        assert!(close(s.p90_us, 9_000.0), "{s:?}");
        assert!(close(s.p99_us, 9_900.0), "{s:?}");
        assert!(close(s.p999_us, 9_990.0), "{s:?}");
        assert!(close(s.max_us, 10_000.0), "{s:?}");
        assert!(close(s.min_us, 1.0), "{s:?}");
        assert!(close(s.mean_us, 5_000.5), "{s:?}");
    }

    #[test]
    fn percentile_curve_rises_to_the_maximum() {
        let mut l = Latency::new();
        assert!(l.curve().is_empty());
        for us in 1..=10_000u64 {
            l.record_ns(us * 1_000);
        }
        let c = l.curve();
        assert!((c[0].0 - 49.88).abs() < 0.01, "{:?}", c[0]);
        assert!((c[0].1 - 4_990.0).abs() < 20.0, "{:?}", c[0]);
        assert!(c.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let last = c.last().unwrap();
        assert_eq!(last.0, 100.0);
        assert!((last.1 - 10_000.0).abs() < 10.0, "{last:?}");
    }

    #[test]
    fn histogram_merge_and_empty() {
        assert_eq!(Latency::new().summary(), LatencySummary::default());
        let mut a = Latency::new();
        let mut b = Latency::new();
        for _ in 0..99 {
            a.record_ns(1_000);
        }
        b.record_ns(1_000_000_000);
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_us - 1.0).abs() < 0.01);
        assert!(s.p999_us > 999_000.0 && s.max_us > 999_000.0);
        // Out-of-range samples saturate instead of being dropped.
        let mut c = Latency::new();
        c.record_ns(0);
        c.record_ns(u64::MAX);
        assert_eq!(c.summary().count, 2);
    }
}
