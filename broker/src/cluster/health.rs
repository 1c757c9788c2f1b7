//! What the Redis thread tells the rest of the process: whether Redis
//! answers (`/healthz` says "degraded" when not) and its counters for
//! `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct ClusterStats {
    up: AtomicBool,
    why_down: Mutex<String>,
    pub publishes: AtomicU64,
    pub publish_errors: AtomicU64,
    pub received: AtomicU64,
    pub dropped: AtomicU64,
    pub fetches: AtomicU64,
    pub repairs: AtomicU64,
    pub reconnects: AtomicU64,
    pub watched: AtomicI64,
}

impl ClusterStats {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn set_up(&self) {
        self.up.store(true, Ordering::Release);
    }

    /// Marks Redis down; returns whether it was up (the first failure is
    /// the one worth logging).
    pub fn set_down(&self, why: &str) -> bool {
        *self.why_down.lock().unwrap_or_else(|p| p.into_inner()) = why.to_string();
        self.up.swap(false, Ordering::AcqRel)
    }

    pub fn why_down(&self) -> String {
        self.why_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The cluster families of `/metrics`.
    pub fn render(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, v: i128| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as i128;
        family(
            "ringcast_redis_up",
            "gauge",
            "1 while Redis answers this node, 0 while it is degraded.",
            self.is_up() as i128,
        );
        family(
            "ringcast_redis_publishes_total",
            "counter",
            "Publishes Redis numbered for this node.",
            get(&self.publishes),
        );
        family(
            "ringcast_redis_publish_errors_total",
            "counter",
            "Publishes answered `unavailable` (Redis down, or too slow).",
            get(&self.publish_errors),
        );
        family(
            "ringcast_redis_messages_received_total",
            "counter",
            "Messages received on this node's Redis subscription.",
            get(&self.received),
        );
        family(
            "ringcast_redis_messages_dropped_total",
            "counter",
            "Received messages not passed on (the owner shard's queue was full; repaired from the stream).",
            get(&self.dropped),
        );
        family(
            "ringcast_redis_fetches_total",
            "counter",
            "Stream reads: subscribes to a topic new to this node, and gap fills.",
            get(&self.fetches),
        );
        family(
            "ringcast_redis_repairs_total",
            "counter",
            "Topics re-read because the subscription was lost or a check found them behind.",
            get(&self.repairs),
        );
        family(
            "ringcast_redis_reconnects_total",
            "counter",
            "Subscription connections to Redis made again after one was lost.",
            get(&self.reconnects),
        );
        family(
            "ringcast_redis_watched_topics",
            "gauge",
            "Topics this node is subscribed to in Redis.",
            self.watched.load(Ordering::Relaxed) as i128,
        );
    }
}
