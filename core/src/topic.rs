//! Topics: their names (docs/protocol.md, "Topics") and, on the shard
//! that owns a topic, its sequence numbers and retained history.
//!
//! Names are `[A-Za-z0-9_.:-]`, 1 to 255 bytes, dot-separated non-empty
//! segments. Because the alphabet needs no JSON escaping, a validated topic
//! is copied into encoded messages as is.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::wire::reply;

/// Why a topic name was refused; the text goes into the `error` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong,
    BadChar,
    EmptySegment,
}

impl TopicError {
    pub fn message(self) -> &'static str {
        match self {
            TopicError::Empty => "topic is empty",
            TopicError::TooLong => "topic is longer than 255 bytes",
            TopicError::BadChar => "topic may only contain A-Z a-z 0-9 _ . : -",
            TopicError::EmptySegment => "topic has an empty dot-separated segment",
        }
    }
}

pub const MAX_TOPIC_LEN: usize = 255;

pub fn validate(topic: &str) -> Result<(), TopicError> {
    let b = topic.as_bytes();
    if b.is_empty() {
        return Err(TopicError::Empty);
    }
    if b.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if !b
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-'))
    {
        return Err(TopicError::BadChar);
    }
    if topic.split('.').any(str::is_empty) {
        return Err(TopicError::EmptySegment);
    }
    Ok(())
}

/// Bounds on one topic's retained history.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

/// What a `subscribe` with `since` gets: an optional gap notice and the
/// retained frames to replay, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// `Some(first)`: the client asked for `since + 1` but the oldest seq it
    /// will get is `first` (history trimmed, or the topic was reset and its
    /// seq is behind the client's `since`).
    pub gap: Option<u64>,
    /// `(seq, frame)`, oldest first.
    pub frames: Vec<(u64, Bytes)>,
}

/// One retained message: the encoded frame that was sent, and when.
#[derive(Debug, Clone)]
struct Retained {
    seq: u64,
    at: Instant,
    frame: Bytes,
}

/// The owner shard's state of one topic: the last seq assigned and the
/// retained messages, each stored as the encoded frame that was sent.
#[derive(Debug)]
pub struct TopicLog {
    last_seq: u64,
    history: VecDeque<Retained>,
    bytes: usize,
    /// The last seq that could not be retained (too big for the byte
    /// budget, expired, evicted): a replay must not skip over it silently.
    unretained: u64,
}

impl Default for TopicLog {
    fn default() -> Self {
        Self::new()
    }
}

impl TopicLog {
    pub fn new() -> Self {
        TopicLog {
            last_seq: 0,
            history: VecDeque::new(),
            bytes: 0,
            unretained: 0,
        }
    }

    /// The last seq assigned (0: nothing published yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Nothing retained.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }

    /// Retained messages and their bytes.
    pub fn retained(&self) -> (usize, usize) {
        (self.history.len(), self.bytes)
    }

    /// A log of a stream that already ran to `last_seq` elsewhere (a
    /// cluster topic's stream): nothing up to it is retained here.
    pub fn starting_at(last_seq: u64) -> Self {
        TopicLog {
            last_seq,
            unretained: last_seq,
            ..Self::new()
        }
    }

    /// Assigns the next seq, encodes the message frame once, retains it
    /// within `limits`, and returns both.
    pub fn publish(
        &mut self,
        topic: &str,
        data: &[u8],
        limits: HistoryLimits,
        now: Instant,
    ) -> (u64, Bytes) {
        let seq = self.last_seq + 1;
        (seq, self.append(seq, topic, data, limits, now))
    }

    /// Records message `seq` (after the last one) that was numbered
    /// elsewhere; returns its frame. Seqs skipped on the way are gone: a
    /// replay across them reports the gap.
    pub fn append(
        &mut self,
        seq: u64,
        topic: &str,
        data: &[u8],
        limits: HistoryLimits,
        now: Instant,
    ) -> Bytes {
        debug_assert!(seq > self.last_seq, "seq {seq} after {}", self.last_seq);
        if seq > self.last_seq + 1 {
            self.unretained = seq - 1;
        }
        self.last_seq = seq;
        let frame = reply::message(topic, self.last_seq, data);
        if limits.max_messages > 0 && frame.len() <= limits.max_bytes {
            self.history.push_back(Retained {
                seq: self.last_seq,
                at: now,
                frame: frame.clone(),
            });
            self.bytes += frame.len();
            while self.history.len() > limits.max_messages || self.bytes > limits.max_bytes {
                self.pop_oldest();
            }
        } else {
            // Not retainable. What is retained stays (so the topic and its
            // seq live on), but replays from before this seq report a gap.
            self.unretained = self.last_seq;
        }
        frame
    }

    /// The stream went on to `seq` without this log seeing the messages
    /// (they are gone): later replays from before it report the gap.
    pub fn skip_to(&mut self, seq: u64) {
        if seq > self.last_seq {
            self.last_seq = seq;
            self.unretained = seq;
        }
    }

    fn pop_oldest(&mut self) -> usize {
        let old = self.history.pop_front().expect("non-empty");
        self.bytes -= old.frame.len();
        old.frame.len()
    }

    /// Drops the messages retained longer than `ttl`; returns the bytes
    /// freed. Their seqs are gone, like trimmed ones: a replay from
    /// before them starts with a `gap`.
    pub fn expire(&mut self, now: Instant, ttl: Duration) -> usize {
        let mut freed = 0;
        while self
            .history
            .front()
            .is_some_and(|r| now.saturating_duration_since(r.at) >= ttl)
        {
            freed += self.pop_oldest();
        }
        freed
    }

    /// When the oldest retained message was published.
    pub fn oldest_at(&self) -> Option<Instant> {
        self.history.front().map(|r| r.at)
    }

    /// Drops the whole history (eviction); returns the bytes freed. The
    /// seq lives on, and replays from before it report the gap.
    pub fn clear(&mut self) -> usize {
        let freed = self.bytes;
        self.history.clear();
        self.bytes = 0;
        self.unretained = self.last_seq;
        freed
    }

    /// The messages a subscriber that has seen everything up to `since`
    /// is missing, and whether some of them are gone.
    pub fn replay(&self, since: u64) -> Replay {
        // The client knows a later seq than exists: the topic was forgotten
        // and restarted. It gets what a client from 0 gets, always flagged.
        // (This once replayed all that is retained: across an unretained
        // message that was a hole with no notice.)
        let ahead = since > self.last_seq;
        let since = if ahead { 0 } else { since };
        // Only what follows the newest unretained message can be replayed
        // without a hole.
        let from = since.max(self.unretained);
        let first = self
            .history
            .iter()
            .map(|r| r.seq)
            .find(|s| *s > from)
            .unwrap_or(self.last_seq + 1);
        let gap = (ahead || since + 1 < first).then_some(first);
        let frames = self
            .history
            .iter()
            .filter(|r| r.seq > from)
            .map(|r| (r.seq, r.frame.clone()))
            .collect();
        Replay { gap, frames }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_alphabet() {
        for ok in [
            "ticker.AAPL",
            "a",
            "train:ICE-123.seats",
            "x_y",
            &"a".repeat(255),
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(validate(""), Err(TopicError::Empty));
        assert_eq!(validate(&"a".repeat(256)), Err(TopicError::TooLong));
        for bad in ["a b", "a/b", "é", "a\"b", "a\\b", "*", "a\nb"] {
            assert_eq!(validate(bad), Err(TopicError::BadChar), "{bad}");
        }
        for bad in [".a", "a.", "a..b", "."] {
            assert_eq!(validate(bad), Err(TopicError::EmptySegment), "{bad}");
        }
    }

    fn now() -> Instant {
        Instant::now()
    }

    fn seqs(r: &Replay) -> Vec<u64> {
        r.frames
            .iter()
            .map(|(_, f)| {
                let v: serde_json::Value = serde_json::from_slice(&reply::message_json(f)).unwrap();
                v["seq"].as_u64().unwrap()
            })
            .collect()
    }

    #[test]
    fn seq_starts_at_one_and_grows_by_one() {
        let mut log = TopicLog::new();
        let limits = HistoryLimits {
            max_messages: 3,
            max_bytes: 1 << 20,
        };
        for want in 1..=5 {
            assert_eq!(log.publish("t", b"1", limits, now()).0, want);
        }
        assert_eq!(log.last_seq(), 5);
        assert_eq!(log.retained().0, 3);
    }

    #[test]
    fn replay_inside_and_outside_the_window() {
        let mut log = TopicLog::new();
        let limits = HistoryLimits {
            max_messages: 3,
            max_bytes: 1 << 20,
        };
        for _ in 0..5 {
            log.publish("t", b"{}", limits, now());
        }
        // Retained: 3, 4, 5.
        let r = log.replay(3);
        assert_eq!((r.gap, seqs(&r)), (None, vec![4, 5]));
        let r = log.replay(2);
        assert_eq!((r.gap, seqs(&r)), (None, vec![3, 4, 5]));
        let r = log.replay(0);
        assert_eq!((r.gap, seqs(&r)), (Some(3), vec![3, 4, 5]));
        let r = log.replay(5);
        assert_eq!((r.gap, seqs(&r)), (None, vec![]));
        let r = log.replay(9);
        assert_eq!((r.gap, seqs(&r)), (Some(3), vec![3, 4, 5]));
    }

    #[test]
    fn byte_bound_and_unretainable_messages() {
        let mut log = TopicLog::new();
        let one = reply::message("t", 1, b"\"xxxxxxxx\"").len();
        let limits = HistoryLimits {
            max_messages: 100,
            max_bytes: one * 2,
        };
        for _ in 0..4 {
            log.publish("t", b"\"xxxxxxxx\"", limits, now());
        }
        assert_eq!(log.retained(), (2, one * 2));
        // A message bigger than the whole budget is not retained; replays
        // from before it report the gap instead of skipping it silently,
        // and the topic (with its seq) is not forgotten.
        log.publish("t", &[b'1'; 500], limits, now());
        assert!(!log.is_empty());
        let r = log.replay(3);
        assert_eq!((r.gap, r.frames.len()), (Some(6), 0));
        log.publish("t", b"\"xxxxxxxx\"", limits, now());
        let r = log.replay(3);
        assert_eq!((r.gap, seqs(&r)), (Some(6), vec![6]));
        let r = log.replay(5);
        assert_eq!((r.gap, seqs(&r)), (None, vec![6]));
        let none = HistoryLimits {
            max_messages: 0,
            max_bytes: 1 << 20,
        };
        let mut log = TopicLog::new();
        log.publish("t", b"1", none, now());
        assert!(log.is_empty());
        assert_eq!(log.replay(0).gap, Some(2));
    }

    /// A `since` ahead of the topic (it was reset) replays from the first
    /// seq with nothing missing after it: not across an unretained one.
    #[test]
    fn a_since_ahead_of_the_topic_never_replays_across_a_hole() {
        let mut log = TopicLog::new();
        let limits = HistoryLimits {
            max_messages: 100,
            max_bytes: 100,
        };
        log.publish("t", b"1", limits, now());
        log.publish("t", &[b'1'; 500], limits, now()); // not retained
        log.publish("t", b"3", limits, now());
        let r = log.replay(9);
        assert_eq!((r.gap, seqs(&r)), (Some(3), vec![3]));
        assert_eq!(log.replay(9), log.replay(0));
        let r = log.replay(3);
        assert_eq!((r.gap, seqs(&r)), (None, vec![]));
    }

    #[test]
    fn expired_and_evicted_history_is_a_gap_never_silence() {
        let t0 = Instant::now();
        let limits = HistoryLimits {
            max_messages: 100,
            max_bytes: 1 << 20,
        };
        let mut log = TopicLog::new();
        for i in 0..4 {
            log.publish("t", b"1", limits, t0 + Duration::from_secs(i));
        }
        // Messages of t0 and t0+1s are 2 s old at t0+2s... with a 2 s TTL.
        let freed = log.expire(t0 + Duration::from_secs(3), Duration::from_secs(2));
        assert!(freed > 0);
        assert_eq!(log.retained().0, 2);
        assert_eq!(log.oldest_at(), Some(t0 + Duration::from_secs(2)));
        let r = log.replay(0);
        assert_eq!((r.gap, seqs(&r)), (Some(3), vec![3, 4]));
        assert!(log.clear() > 0);
        assert!(log.is_empty());
        let r = log.replay(2);
        assert_eq!((r.gap, r.frames.len()), (Some(5), 0));
        assert_eq!(log.replay(4).gap, None, "nothing after 4 was published");
        assert_eq!(log.publish("t", b"1", limits, t0).0, 5, "the seq lives on");
    }
}
