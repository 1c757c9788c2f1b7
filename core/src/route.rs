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
    /// To the cluster backend, from a topic's owner: this node has
    /// subscribers; send the topic's [`Head`] to `owner`, then every
    /// message the cluster publishes to it, until [`Msg::Unwatch`].
    Watch { topic: Arc<str>, owner: ShardId },
    /// To the backend: this node has no subscriber to `topic` left.
    Unwatch { topic: Arc<str> },
    /// To the backend: the owner missed seqs after `after` of stream
    /// `epoch`; answer with a [`Msg::Head`] carrying what the stream
    /// retains after it (from its start if its epoch is another).
    Fetch {
        topic: Arc<str>,
        epoch: Option<Arc<str>>,
        after: u64,
    },
    /// From the backend: a message the cluster published (on any node).
    Remote {
        topic: Arc<str>,
        epoch: Arc<str>,
        seq: u64,
        data: Bytes,
    },
    /// From the backend: where the topic's stream stands, or why the
    /// backend cannot tell (`unavailable`).
    Head {
        topic: Arc<str>,
        result: Result<Head, ErrorCode>,
    },
    /// From the owner to the shards with subscribers: the topic's stream
    /// was reset under a new epoch (the cluster lost its state); what
    /// follows continues from `last_seq`.
    Reset {
        topic: Arc<str>,
        epoch: Arc<str>,
        last_seq: u64,
    },
}

/// A cluster topic's stream as the backend read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The stream's epoch: a new one means its seqs started again.
    pub epoch: Arc<str>,
    /// The last seq published to it (0: none yet).
    pub last_seq: u64,
    /// What `entries` follow: every message the stream retains after this
    /// seq of `epoch` (`None`: from the stream's start). A head sent
    /// unasked (the backend's periodic check) may follow a seq past the
    /// mirror's place: it says nothing of the seqs before it.
    pub after: Option<u64>,
    /// Retained messages after the seq asked for, oldest first: `(seq,
    /// data)`.
    pub entries: Vec<(u64, Bytes)>,
}

/// The owner's answer to a subscribe: where the topic stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The last seq assigned when the subscription went live: every later
    /// one follows this answer on the same FIFO.
    pub last_seq: u64,
    /// The epoch of the topic's stream (see [`crate::Engine::epoch`]):
    /// a client resuming from another epoch must start again.
    pub epoch: Arc<str>,
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;

    use super::*;
    use crate::{AllowAll, Engine, Grant, Limits, Output, Transport};

    #[test]
    fn placement_is_seeded_per_process_and_agreed_by_every_shard() {
        let topics: Vec<String> = (0..64).map(|i| format!("t.{i}")).collect();
        let owners = |seed| -> Vec<ShardId> {
            let p = Placement::new(4, seed);
            topics.iter().map(|t| p.owner(t)).collect()
        };
        assert_eq!(
            owners([1, 2, 3, 4]),
            owners([1, 2, 3, 4]),
            "same seed, same owners"
        );
        assert_ne!(
            owners([1, 2, 3, 4]),
            owners([5, 6, 7, 8]),
            "another process (seed) places names elsewhere"
        );
    }

    /// Records what an engine sends to other shards.
    #[derive(Default)]
    struct Log(Vec<(ShardId, Msg)>);

    impl Route for Log {
        fn try_send(&mut self, dst: ShardId, msg: Msg) -> Result<(), Msg> {
            self.0.push((dst, msg));
            Ok(())
        }
        fn send(&mut self, dst: ShardId, msg: Msg) {
            self.0.push((dst, msg));
        }
    }

    /// Two engines wired by hand: a publish from shard 0 to a topic shard 1
    /// owns. Without an `id` nothing comes back when it succeeds (the
    /// acknowledgement round trip the old broker always paid); with one,
    /// the seq does.
    #[test]
    fn a_publish_without_id_costs_no_acknowledgement() {
        let placement = Placement::new(2, [9, 9, 9, 9]);
        let topic = (0..)
            .map(|i| format!("t.{i}"))
            .find(|t| placement.owner(t) == 1)
            .unwrap();
        let engine = |shard| {
            Engine::new(
                shard,
                placement.clone(),
                Limits::default(),
                "e",
                Log::default(),
                Box::new(AllowAll),
            )
        };
        let (mut p, mut o) = (engine(0), engine(1));
        let now = Instant::now();
        let c = p.open(Grant::default());
        p.set_transport(c, Transport::WebSocket);
        let to_owner = |p: &mut Engine<Log>, cmd: String| {
            p.command(c, &Bytes::from(cmd), now);
            std::mem::take(&mut p.route_mut().0)
        };
        let sent = to_owner(
            &mut p,
            format!(r#"{{"op":"publish","topic":"{topic}","data":1}}"#),
        );
        assert_eq!(sent.len(), 1);
        for (dst, msg) in sent {
            assert_eq!(dst, 1);
            o.handle(msg, now);
        }
        assert!(o.route().0.is_empty(), "no PubAck: {:?}", o.route().0);
        let sent = to_owner(
            &mut p,
            format!(r#"{{"op":"publish","topic":"{topic}","data":2,"id":7}}"#),
        );
        for (_, msg) in sent {
            o.handle(msg, now);
        }
        let back = std::mem::take(&mut o.route_mut().0);
        assert!(
            matches!(&back[..], [(0, Msg::PubAck { result: Ok(2), .. })]),
            "{back:?}"
        );
        for (_, msg) in back {
            p.handle(msg, now);
        }
        while let Some(out) = p.poll_output() {
            assert!(matches!(out, Output::Wake(_)), "{out:?}");
        }
        let mut bytes = Vec::new();
        p.take_batch(c, &mut bytes, 8);
        let reply = crate::wire::reply::message_json(&bytes[0]);
        assert_eq!(
            &reply[..],
            format!(r#"{{"op":"published","topic":"{topic}","seq":2,"id":7}}"#).as_bytes()
        );
    }
}
