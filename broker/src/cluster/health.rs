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

    /// The cluster families of `/metrics` (no `shard` label: one thread).
    pub fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| i128::from(c.load(Ordering::Relaxed));
        let families: [(&str, &str, &str, i128); 9] = [
            ("ringcast_redis_up", "gauge", "1 while Redis answers this node, 0 while it is degraded.", i128::from(self.is_up())),
            ("ringcast_redis_publishes_total", "counter", "Publishes Redis numbered for this node.", get(&self.publishes)),
            ("ringcast_redis_publish_errors_total", "counter", "Publishes answered `unavailable` (Redis down, or too slow).", get(&self.publish_errors)),
            ("ringcast_redis_messages_received_total", "counter", "Messages received on this node's Redis subscription.", get(&self.received)),
            ("ringcast_redis_messages_dropped_total", "counter", "Received messages not passed on (the owner shard's queue was full; repaired from the stream).", get(&self.dropped)),
            ("ringcast_redis_fetches_total", "counter", "Stream reads: subscribes to a topic new to this node, and gap fills.", get(&self.fetches)),
            ("ringcast_redis_repairs_total", "counter", "Topics re-read because the subscription was lost or a check found them behind.", get(&self.repairs)),
            ("ringcast_redis_reconnects_total", "counter", "Subscription connections to Redis made again after one was lost.", get(&self.reconnects)),
            ("ringcast_redis_watched_topics", "gauge", "Topics this node is subscribed to in Redis.", i128::from(self.watched.load(Ordering::Relaxed))),
        ];
        for (name, kind, help, v) in families {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_rendered_with_its_value() {
        let s = ClusterStats::default();
        s.set_up();
        ClusterStats::add(&s.publishes, 7);
        s.watched.store(3, Ordering::Relaxed);
        let mut out = String::new();
        s.render(&mut out);
        for line in [
            "ringcast_redis_up 1",
            "ringcast_redis_publishes_total 7",
            "ringcast_redis_watched_topics 3",
            "ringcast_redis_reconnects_total 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
        assert_eq!(out.matches("# TYPE ").count(), 9);
        assert!(s.set_down("x"), "it was up");
        out.clear();
        s.render(&mut out);
        assert!(out.lines().any(|l| l == "ringcast_redis_up 0"));
    }
}
