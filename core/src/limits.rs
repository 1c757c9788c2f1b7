//! Every bound the engine enforces, in one place: the broker fills it from
//! its configuration, the simulator from its scenario.
//!
//! A push broker is exposed to clients that never read, publish faster
//! than anyone consumes, or invent topics by the million. Each of those is
//! met by one of these numbers, and each is answered with a clear error or
//! notice, never with silent growth.

use std::time::Duration;

use crate::topic::HistoryLimits;

/// What happens to a subscriber whose outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumer {
    /// Close it (1008 on WebSocket; an SSE stream ends): it resumes with
    /// `since` when it can keep up.
    Disconnect,
    /// Keep only the newest message per topic and tell it what it skipped.
    Conflate,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Topics one shard owns (with seq and history) at most.
    pub max_topics: usize,
    /// Subscriptions one connection holds at most.
    pub max_subscriptions: usize,
    /// Per-topic history bounds.
    pub history: HistoryLimits,
    /// Retained messages older than this are dropped (`None`: kept while
    /// the other bounds allow).
    pub history_ttl: Option<Duration>,
    /// Retained bytes one shard holds across all its topics; past it the
    /// topic published to longest ago loses its history first.
    pub history_budget: usize,
    /// Bytes queued per connection before the slow-consumer policy acts.
    pub outbox_size: usize,
    pub slow_consumer: SlowConsumer,
    /// Publishes with an `id` one WebSocket may have waiting for their
    /// acknowledgement; past it the connection's next command waits.
    pub max_pending_publishes: usize,
    /// How deeply a published `data` may nest arrays and objects; deeper
    /// is refused with `bad_json` (`wire::command::json_depth`).
    pub max_json_depth: usize,
    /// How long before a token expires its connection is told
    /// (`expiring`).
    pub token_expiry_notice: Duration,
    /// Commands per second one connection may send (token bucket; 0: no
    /// limit), and the burst it may send at once.
    pub command_rate: Rate,
    /// Publishes per second one subject (a token's `sub`, an API key) may
    /// make on this shard (0: no limit).
    pub publish_rate: Rate,
    /// Commands refused in a row for the command rate before the
    /// connection is closed with 4429.
    pub rate_strikes: u32,
}

impl Default for Limits {
    /// The broker's defaults (`ringcast --help` documents them).
    fn default() -> Self {
        Limits {
            max_topics: 100_000,
            max_subscriptions: 1_000,
            history: HistoryLimits {
                max_messages: 100,
                max_bytes: 256 * 1024,
            },
            history_ttl: Some(Duration::from_secs(3600)),
            history_budget: 256 * 1024 * 1024,
            outbox_size: 1024 * 1024,
            slow_consumer: SlowConsumer::Disconnect,
            max_pending_publishes: 256,
            max_json_depth: crate::wire::command::DEFAULT_MAX_JSON_DEPTH,
            token_expiry_notice: Duration::from_secs(30),
            command_rate: Rate::UNLIMITED,
            publish_rate: Rate::UNLIMITED,
            rate_strikes: 20,
        }
    }
}

/// A rate limit: `per_second` sustained, `burst` at once (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate {
        per_second: 0.0,
        burst: 0.0,
    };

    pub fn is_limited(&self) -> bool {
        self.per_second > 0.0
    }
}
