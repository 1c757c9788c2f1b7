//! Broker metrics, rendered in the Prometheus text format on `/metrics`.
//!
//! Every shard owns one [`ShardMetrics`] and is its only writer, so a
//! counter update is a plain load and store of an atomic (no locked
//! instruction, no cache line shared between writers): nothing on the hot
//! path is shared between shards. A scrape, on whichever shard receives it,
//! reads every shard's block. Each block sits on its own cache lines so
//! shards never write to the same line.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::error::HttpError;
use ringcast_proto::close::CloseCode;

/// A monotonically increasing count with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed) + n, Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    /// Copies a total counted elsewhere (the engine's plain counters).
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down, with a single writer.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn add(&self, n: i64) {
        self.0.store(self.0.load(Relaxed) + n, Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn dec(&self) {
        self.add(-1);
    }

    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Connection kinds, for `ringcast_connections{transport=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain HTTP (before an upgrade, between keep-alive requests, polling).
    Http = 0,
    WebSocket = 1,
    Echo = 2,
    Sse = 3,
}

const KINDS: [&str; 4] = ["http", "websocket", "echo", "sse"];

/// Handshake/request failure reasons, in [`http_error_index`] order.
const HTTP_REASONS: [&str; 23] = [
    "head_too_large",
    "too_many_headers",
    "malformed",
    "method_not_allowed",
    "version_too_old",
    "missing_host",
    "not_an_upgrade",
    "unsupported_version",
    "bad_key",
    "origin_rejected",
    "not_found",
    "overloaded",
    "length_required",
    "payload_too_large",
    "upgrade_refused",
    "bad_accept",
    "bad_content_length",
    "conflicting_length",
    "length_with_chunked",
    "bad_transfer_encoding",
    "bad_chunk",
    "duplicate_host",
    "body_not_allowed",
];

fn http_error_index(e: HttpError) -> usize {
    match e {
        HttpError::HeadTooLarge => 0,
        HttpError::TooManyHeaders => 1,
        HttpError::Malformed => 2,
        HttpError::MethodNotAllowed(_) => 3,
        HttpError::VersionTooOld => 4,
        HttpError::MissingHost => 5,
        HttpError::NotAnUpgrade => 6,
        HttpError::UnsupportedVersion => 7,
        HttpError::BadKey => 8,
        HttpError::OriginRejected => 9,
        HttpError::NotFound => 10,
        HttpError::Overloaded => 11,
        HttpError::LengthRequired => 12,
        HttpError::PayloadTooLarge => 13,
        HttpError::UpgradeRefused(_) => 14,
        HttpError::BadAccept => 15,
        HttpError::BadContentLength => 16,
        HttpError::ConflictingLength => 17,
        HttpError::LengthWithChunked => 18,
        HttpError::BadTransferEncoding => 19,
        HttpError::BadChunk => 20,
        HttpError::DuplicateHost => 21,
        HttpError::BodyNotAllowed => 22,
    }
}

/// Close codes counted one by one; anything else is `other`.
const CLOSE_CODES: [u16; 8] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011];

/// One shard's metrics.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    pub connections: [Gauge; 4],
    pub accepted: Counter,
    pub subscriptions: Gauge,
    pub topics: Gauge,
    pub polls_held: Gauge,
    pub published: Counter,
    pub delivered: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub slow_disconnects: Counter,
    pub slow_conflations: Counter,
    pub retained_bytes: Gauge,
    pub overloaded: Counter,
    pub deliveries_dropped: Counter,
    pub history_evicted: Counter,
    pub history_expired: Counter,
    pub denied: Counter,
    pub auth_failures: Counter,
    pub rate_limited: Counter,
    pub ip_refused: Counter,
    pub http_errors: [Counter; HTTP_REASONS.len()],
    pub close_codes: [Counter; CLOSE_CODES.len() + 1],
    /// The completion loop's counters, by [`LOOP_EVENTS`].
    pub loop_events: [Counter; LOOP_EVENTS.len()],
}

/// The completion loop's events in `/metrics` (`ringcast_loop_events_total`):
/// what says whether its sizes fit the traffic.
pub const LOOP_EVENTS: [&str; 7] = [
    // A recv found the buffer ring empty (--recv-buffers too few for a
    // turn's reads): re-armed after the turn, nothing lost.
    "recv_buffers_exhausted",
    // A connection took more than its burst of buffers in one turn.
    "recv_throttled",
    // Sends submitted; of them, plain sends (one buffer) and sends that
    // wrote less than offered (a slow reader's full socket).
    "sends",
    "plain_sends",
    "partial_sends",
    // Wake-ups from other threads (mesh batches, shutdown).
    "wakes",
    // Accepts that failed (a full descriptor table, ...).
    "accept_errors",
];

impl ShardMetrics {
    /// Copies the loop's counters (after each turn).
    pub fn loop_stats(&self, s: &crate::uring::Stats) {
        let values = [
            s.enobufs,
            s.throttled,
            s.sends,
            s.plain_sends,
            s.partial_sends,
            s.wakes,
            s.accept_errors,
        ];
        for (c, v) in self.loop_events.iter().zip(values) {
            c.set(v);
        }
    }
}

impl ShardMetrics {
    pub fn connection(&self, kind: Kind) -> &Gauge {
        &self.connections[kind as usize]
    }

    pub fn http_error(&self, e: HttpError) {
        self.http_errors[http_error_index(e)].inc();
    }

    pub fn close_sent(&self, code: CloseCode) {
        let i = CLOSE_CODES
            .iter()
            .position(|&c| c == code.0)
            .unwrap_or(CLOSE_CODES.len());
        self.close_codes[i].inc();
    }
}

/// Writes one metric family: HELP, TYPE and a sample per shard (and label).
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    shards: &[ShardMetrics],
    samples: impl Fn(&ShardMetrics) -> Vec<(String, i128)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (i, m) in shards.iter().enumerate() {
        for (labels, value) in samples(m) {
            let sep = if labels.is_empty() { "" } else { "," };
            let _ = writeln!(out, "{name}{{shard=\"{i}\"{sep}{labels}}} {value}");
        }
    }
}

fn one(v: impl Into<i128>) -> Vec<(String, i128)> {
    vec![(String::new(), v.into())]
}

/// The `/metrics` body.
pub fn render(shards: &[ShardMetrics]) -> String {
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "ringcast_connections",
        "gauge",
        "Open connections by transport.",
        shards,
        |m| {
            KINDS
                .iter()
                .enumerate()
                .map(|(k, name)| {
                    (
                        format!("transport=\"{name}\""),
                        m.connections[k].get().into(),
                    )
                })
                .collect()
        },
    );
    family(
        &mut out,
        "ringcast_connections_accepted_total",
        "counter",
        "TCP connections accepted.",
        shards,
        |m| one(m.accepted.get()),
    );
    family(
        &mut out,
        "ringcast_subscriptions",
        "gauge",
        "Live subscriptions of this shard's clients.",
        shards,
        |m| one(m.subscriptions.get()),
    );
    family(
        &mut out,
        "ringcast_topics",
        "gauge",
        "Topics owned by this shard (with a seq and history).",
        shards,
        |m| one(m.topics.get()),
    );
    family(
        &mut out,
        "ringcast_polls_held",
        "gauge",
        "Long-poll requests waiting for a message.",
        shards,
        |m| one(m.polls_held.get()),
    );
    family(
        &mut out,
        "ringcast_messages_published_total",
        "counter",
        "Messages published (counted on the topic's owner shard).",
        shards,
        |m| one(m.published.get()),
    );
    family(
        &mut out,
        "ringcast_messages_delivered_total",
        "counter",
        "Messages queued to subscribers (counted on the subscriber's shard).",
        shards,
        |m| one(m.delivered.get()),
    );
    family(
        &mut out,
        "ringcast_bytes_in_total",
        "counter",
        "Bytes read from client sockets.",
        shards,
        |m| one(m.bytes_in.get()),
    );
    family(
        &mut out,
        "ringcast_bytes_out_total",
        "counter",
        "Bytes written to client sockets.",
        shards,
        |m| one(m.bytes_out.get()),
    );
    family(
        &mut out,
        "ringcast_slow_consumers_total",
        "counter",
        "Slow-consumer policy actions.",
        shards,
        |m| {
            vec![
                (
                    "action=\"disconnect\"".into(),
                    m.slow_disconnects.get().into(),
                ),
                (
                    "action=\"conflate\"".into(),
                    m.slow_conflations.get().into(),
                ),
            ]
        },
    );
    family(
        &mut out,
        "ringcast_loop_events_total",
        "counter",
        "Completion-loop events: exhausted receive buffers (raise --recv-buffers if it climbs), throttled bursts, sends, wake-ups, failed accepts.",
        shards,
        |m| {
            LOOP_EVENTS
                .iter()
                .zip(&m.loop_events)
                .map(|(e, c)| (format!("event=\"{e}\""), c.get().into()))
                .collect()
        },
    );
    family(
        &mut out,
        "ringcast_retained_bytes",
        "gauge",
        "Bytes of history the shard retains across its topics (bounded by --history-budget).",
        shards,
        |m| one(m.retained_bytes.get()),
    );
    family(
        &mut out,
        "ringcast_history_dropped_total",
        "counter",
        "Topics whose history was dropped: evicted to keep --history-budget, or expired by --history-ttl.",
        shards,
        |m| {
            vec![
                ("reason=\"budget\"".into(), m.history_evicted.get().into()),
                ("reason=\"ttl\"".into(), m.history_expired.get().into()),
            ]
        },
    );
    family(
        &mut out,
        "ringcast_overloaded_total",
        "counter",
        "Publishes and subscribes refused with `overloaded` because a queue between shards was full (--mesh-queue).",
        shards,
        |m| one(m.overloaded.get()),
    );
    family(
        &mut out,
        "ringcast_deliveries_dropped_total",
        "counter",
        "Messages not forwarded to a shard whose queue was full; its subscribers got a `skipped` notice.",
        shards,
        |m| one(m.deliveries_dropped.get()),
    );
    family(
        &mut out,
        "ringcast_access_denied_total",
        "counter",
        "Refusals by access control: `forbidden`/`unauthorized` commands and publishes (reason=\"denied\"), credentials refused (reason=\"credentials\"), rate limits (reason=\"rate\"), per-IP connection limits (reason=\"ip\").",
        shards,
        |m| {
            vec![
                ("reason=\"denied\"".into(), m.denied.get().into()),
                ("reason=\"credentials\"".into(), m.auth_failures.get().into()),
                ("reason=\"rate\"".into(), m.rate_limited.get().into()),
                ("reason=\"ip\"".into(), m.ip_refused.get().into()),
            ]
        },
    );
    family(
        &mut out,
        "ringcast_http_errors_total",
        "counter",
        "Refused requests and handshakes, by reason.",
        shards,
        |m| {
            HTTP_REASONS
                .iter()
                .zip(m.http_errors.iter())
                .filter(|(_, c)| c.get() > 0)
                .map(|(r, c)| (format!("reason=\"{r}\""), c.get().into()))
                .collect()
        },
    );
    family(
        &mut out,
        "ringcast_close_codes_sent_total",
        "counter",
        "WebSocket close frames sent, by code.",
        shards,
        |m| {
            CLOSE_CODES
                .iter()
                .map(|c| c.to_string())
                .chain(std::iter::once("other".to_string()))
                .zip(m.close_codes.iter())
                .filter(|(_, c)| c.get() > 0)
                .map(|(code, c)| (format!("code=\"{code}\""), c.get().into()))
                .collect()
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let shards: Vec<ShardMetrics> = (0..2).map(|_| ShardMetrics::default()).collect();
        shards[0].connection(Kind::WebSocket).inc();
        shards[0].connection(Kind::WebSocket).inc();
        shards[1].connection(Kind::Sse).inc();
        shards[1].delivered.add(42);
        shards[0].http_error(HttpError::NotFound);
        shards[1].close_sent(CloseCode::GOING_AWAY);
        shards[1].close_sent(CloseCode(4000));
        let text = render(&shards);
        for line in [
            "# TYPE ringcast_connections gauge",
            "ringcast_connections{shard=\"0\",transport=\"websocket\"} 2",
            "ringcast_connections{shard=\"1\",transport=\"sse\"} 1",
            "ringcast_messages_delivered_total{shard=\"1\"} 42",
            "ringcast_http_errors_total{shard=\"0\",reason=\"not_found\"} 1",
            "ringcast_close_codes_sent_total{shard=\"1\",code=\"1001\"} 1",
            "ringcast_close_codes_sent_total{shard=\"1\",code=\"other\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
        // Every sample line is `name{labels} integer`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.rsplit_once(' ').unwrap();
            assert!(name.contains("{shard=\""), "{l}");
            value.parse::<i64>().unwrap();
        }
    }

    #[test]
    fn gauges_go_both_ways() {
        let g = Gauge::default();
        g.inc();
        g.inc();
        g.dec();
        assert_eq!(g.get(), 1);
        g.set(7);
        assert_eq!(g.get(), 7);
    }

    #[test]
    fn neighbouring_blocks_do_not_share_cache_lines() {
        let shards: Vec<ShardMetrics> = (0..3).map(|_| ShardMetrics::default()).collect();
        for pair in shards.windows(2) {
            let last_byte_of_first =
                &pair[0] as *const ShardMetrics as usize + std::mem::size_of::<ShardMetrics>() - 1;
            let start_of_second = &pair[1] as *const ShardMetrics as usize;
            // The last byte one shard writes and the first the next writes
            // are on different 64-byte lines.
            assert_ne!(last_byte_of_first / 64, start_of_second / 64);
        }
    }
}
