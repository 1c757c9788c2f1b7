//! Routing between shards: which shard owns a topic, what shards tell each
//! other, and the one narrow interface a transport between them implements.
//!
//! Every topic has one owner (a seeded hash of its name). The owner assigns
//! `seq`, keeps the history, encodes each message once and forwards it to
//! the shards that declared interest. The engine never moves a message
//! itself: it hands each [`Msg`] to a [`Route`]. In the broker that is the
//! in-process mesh (batched queues between shard threads); in the tests it
//! is a simulator that delivers in any order the mesh allows; a cluster
//! backend is one more implementation beside them.
//!
//! The contract a `Route` must keep: messages from one shard to another
//! arrive in the order they were sent (per sender, FIFO). The subscribe
//! handshake relies on it: an owner's acknowledgement and the messages
//! published after it travel on the same FIFO, so nothing falls between
//! the replay and the live stream.

use std::sync::Arc;

use ahash::RandomState;
use bytes::Bytes;

use crate::topic::Replay;
use crate::wire::command::ErrorCode;

/// A shard's index, `0..shards`.
pub type ShardId = usize;

/// Which shard owns a topic. The hash is seeded per process (the seed
/// comes from outside: the engine has no randomness of its own), so a
/// client cannot choose topic names that all land on one shard; every
/// shard of one process gets the same seed and so agrees on owners.
#[derive(Clone)]
pub struct Placement {
    shards: usize,
    hasher: RandomState,
}

impl Placement {
    pub fn new(shards: usize, seed: [u64; 4]) -> Self {
        assert!(shards > 0, "at least one shard");
        Placement {
            shards,
            hasher: RandomState::with_seeds(seed[0], seed[1], seed[2], seed[3]),
        }
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The shard that owns `topic`.
    pub fn owner(&self, topic: &str) -> ShardId {
        (self.hasher.hash_one(topic) % self.shards as u64) as usize
    }
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

/// Who hears how a publish went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Nobody (the demo feeder).
    None,
    /// Only a refusal, to this connection on shard `from`: a WebSocket
    /// publish without an `id` costs no round trip when it succeeds.
    Errors { from: ShardId, conn: crate::ConnId },
    /// The seq or the refusal, to request `token` on shard `from`.
    To { from: ShardId, token: usize },
}

/// What one shard tells another.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Msg {
    /// To the owner: assign a seq and fan out.
    Publish {
        topic: Arc<str>,
        data: Bytes,
        ack: Ack,
    },
    /// To the owner: shard `from` has (or will have) a subscriber; answer
    /// with [`Msg::SubAck`] carrying the replay after `since`.
    Subscribe {
        topic: Arc<str>,
        from: ShardId,
        token: usize,
        since: Option<u64>,
    },
    /// To the owner: `from` has no subscriber left.
    Unsubscribe { topic: Arc<str>, from: ShardId },
    /// From the owner: a message for this shard's subscribers.
    Deliver {
        topic: Arc<str>,
        seq: u64,
        frame: Bytes,
    },
    /// From the owner: the subscription is live; what to replay first.
    SubAck {
        topic: Arc<str>,
        token: usize,
        result: Result<Snapshot, ErrorCode>,
    },
    /// From the owner: the seq a publish got, or why it got none.
    PubAck {
        token: usize,
        result: Result<u64, ErrorCode>,
    },
    /// From the owner: a publish without an `id` was refused.
    PubRefused {
        conn: crate::ConnId,
        topic: Arc<str>,
        code: ErrorCode,
    },
}

/// The owner's answer to a subscribe: where the topic stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The last seq assigned when the subscription went live: every later
    /// one follows this answer on the same FIFO.
    pub last_seq: u64,
    /// Which incarnation of the topic this is (see [`crate::Engine`]'s
    /// epochs): 0 unless the owner has dropped topics before creating it.
    pub incarnation: u64,
    /// The retained messages after `since`, when one was given.
    pub replay: Option<Replay>,
}

/// The transport between shards, as the engine sees it.
pub trait Route {
    /// Queues `msg` for shard `dst` (never the sender itself), unless
    /// `dst`'s queue is at its bound: then the message comes back and the
    /// engine refuses the work (`overloaded`) or, for a delivery, tells
    /// the subscribers what they missed. Publishes, subscribes and
    /// deliveries go this way.
    fn try_send(&mut self, dst: ShardId, msg: Msg) -> Result<(), Msg>;

    /// Queues `msg` for `dst` whatever its queue holds. Only for answers
    /// and releases, which are bounded by the requests that caused them;
    /// losing one would leak state on the other side.
    fn send(&mut self, dst: ShardId, msg: Msg);
}
