//! The topics one shard owns in a cluster: local copies of streams that
//! the cluster backend (Redis) numbers and keeps.
//!
//! In a cluster no shard assigns seqs: every node publishes through the
//! backend, which numbers each message in the topic's stream and sends it
//! to every node watching the topic. A topic's owner shard keeps a
//! [`Mirror`] of that stream while its node has subscribers: the retained
//! messages (so subscribes and resumes are answered locally, as on one
//! node) and the last seq in order. Messages arrive on a subscription that
//! may lose some (Redis pub/sub is at most once) or repeat some (a fill
//! racing the live stream); the mirror takes each seq once and in order,
//! parks what comes early, and asks the backend for what is missing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ahash::RandomState;
use bytes::Bytes;

use crate::route::ShardId;
use crate::topic::TopicLog;

/// A subscribe that arrived before the mirror knew its stream.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub from: ShardId,
    pub token: usize,
    pub since: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Mirror {
    pub log: TopicLog,
    /// The stream's epoch, once the backend has told it (until then,
    /// subscribes wait).
    pub epoch: Option<Arc<str>>,
    /// The shards with subscribers to it, each once.
    pub interested: Vec<ShardId>,
    pub waiting: Vec<Waiter>,
    /// Messages that came before their turn (ahead of a missing seq, or
    /// before the stream was known): by seq, with their epoch.
    pub ahead: BTreeMap<u64, (Arc<str>, Bytes)>,
    ahead_bytes: usize,
    /// A fill was asked for and has not been answered.
    pub fetching: bool,
}

impl Mirror {
    fn new() -> Self {
        Mirror {
            log: TopicLog::new(),
            epoch: None,
            interested: Vec::new(),
            waiting: Vec::new(),
            ahead: BTreeMap::new(),
            ahead_bytes: 0,
            fetching: false,
        }
    }

    /// Parks a message that came early. Bounded (`max` messages, `max_bytes`
    /// of data): past that the oldest goes; the stream still has it, and
    /// the fill that is asked for whenever something is parked brings it.
    pub fn park(&mut self, seq: u64, epoch: Arc<str>, data: Bytes, max: usize, max_bytes: usize) {
        self.ahead_bytes += data.len();
        if let Some((_, old)) = self.ahead.insert(seq, (epoch, data)) {
            self.ahead_bytes -= old.len();
        }
        while self.ahead.len() > max.max(1) || self.ahead_bytes > max_bytes {
            let Some((_, (_, old))) = self.ahead.pop_first() else {
                break;
            };
            self.ahead_bytes -= old.len();
        }
    }

    /// The first parked message, if it is the next one in order (repeated
    /// ones are dropped on the way). One of another epoch stays: only the
    /// stream's head can tell whether it is older (then it is dropped) or
    /// newer (a reset).
    pub fn next_parked(&mut self) -> Option<(u64, Bytes)> {
        let epoch = self.epoch.clone()?;
        while let Some(entry) = self.ahead.first_entry() {
            let seq = *entry.key();
            if entry.get().0 != epoch || seq > self.log.last_seq() + 1 {
                return None;
            }
            let (_, data) = entry.remove();
            self.ahead_bytes -= data.len();
            if seq == self.log.last_seq() + 1 {
                return Some((seq, data));
            }
        }
        None
    }

    /// Drops the parked messages of any epoch but `epoch`.
    pub fn keep_epoch(&mut self, epoch: &Arc<str>) {
        let bytes = &mut self.ahead_bytes;
        self.ahead.retain(|_, (e, data)| {
            let keep = e == epoch;
            if !keep {
                *bytes -= data.len();
            }
            keep
        });
    }
}

/// The mirrors one shard owns.
#[derive(Debug, Default)]
pub(crate) struct Mirrors {
    pub topics: HashMap<Arc<str>, Mirror, RandomState>,
}

impl Mirrors {
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn insert(&mut self, topic: Arc<str>) -> &mut Mirror {
        self.topics.entry(topic).or_insert_with(Mirror::new)
    }

    /// Bytes retained across the mirrors: what the `retained_bytes` gauge,
    /// kept as they change, must equal (checked by `Engine::audit`).
    pub fn retained(&self) -> usize {
        self.topics.values().map(|m| m.log.retained().1).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parked_messages_come_out_in_order_once() {
        let mut m = Mirror::new();
        let e: Arc<str> = Arc::from("e1");
        m.epoch = Some(e.clone());
        m.log = TopicLog::starting_at(3);
        for seq in [6, 4, 5, 4, 2] {
            m.park(seq, e.clone(), Bytes::from(seq.to_string()), 10, 1 << 20);
        }
        m.park(7, Arc::from("e0"), Bytes::from("old"), 10, 1 << 20);
        let mut got = Vec::new();
        while let Some((seq, _)) = m.next_parked() {
            let limits = crate::topic::HistoryLimits {
                max_messages: 10,
                max_bytes: 1 << 20,
            };
            m.log
                .append(seq, "t", b"1", limits, std::time::Instant::now());
            got.push(seq);
        }
        assert_eq!(got, [4, 5, 6]);
        assert_eq!(m.ahead.len(), 1, "the other epoch's 7 waits for a head");
        m.keep_epoch(&e);
        assert!(m.ahead.is_empty(), "a head of e1 says 7 of e0 is old");
        assert_eq!(m.ahead_bytes, 0);
    }

    #[test]
    fn parking_is_bounded_and_drops_the_oldest() {
        let mut m = Mirror::new();
        let e: Arc<str> = Arc::from("e");
        for seq in 10..20 {
            m.park(seq, e.clone(), Bytes::from_static(b"12345"), 4, 1 << 20);
        }
        assert_eq!(
            m.ahead.keys().copied().collect::<Vec<_>>(),
            [16, 17, 18, 19]
        );
        m.park(20, e.clone(), Bytes::from_static(b"1234567890"), 100, 12);
        assert_eq!(m.ahead.keys().copied().collect::<Vec<_>>(), [20]);
        assert_eq!(m.ahead_bytes, 10);
    }
}
