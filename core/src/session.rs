//! A connection as the engine sees it: what it receives, what it waits
//! for, and the queue its bytes wait in.
//!
//! The runtime holds a [`ConnId`] and the socket; everything that decides
//! what goes into the socket is here. A `ConnId` carries a generation, so
//! an answer that arrives for a connection that has gone (and whose slot
//! was reused) is recognised and dropped instead of reaching a stranger.

use std::collections::VecDeque;
use std::sync::Arc;

use std::time::Instant;

use bytes::Bytes;

use crate::limits::Rate;

use crate::auth::Grant;
use crate::outbox::Outbox;
use crate::wire::command::ErrorCode;

/// A connection's handle into the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) idx: u32,
    pub(crate) gen: u32,
}

impl ConnId {
    /// A small dense number (a slot), for the runtime's own tables; unique
    /// among live connections.
    pub fn index(self) -> usize {
        self.idx as usize
    }
}

/// How a connection receives messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain HTTP or `/echo`: no subscriptions yet.
    Plain,
    /// `/ws`: the pre-encoded WebSocket frame; replies to commands.
    WebSocket,
    /// `/sse/{topic}`: one SSE event per message.
    Sse,
    /// `/poll/{topic}`: collected for the held request.
    Poll,
}

/// One of a connection's subscriptions.
#[derive(Debug)]
pub(crate) struct Sub {
    pub topic: Arc<str>,
    pub state: SubState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubState {
    /// Waiting for the owner's answer (the pending request's token).
    Pending(usize),
    /// Receiving; the key in the topic's local subscriber slab.
    Live(usize),
}

/// A reply owed to a command, in command order: a publish waiting for its
/// seq (`token`), or a reply ready but queued behind one.
#[derive(Debug)]
pub(crate) struct Owed {
    pub token: Option<usize>,
    pub reply: Option<Bytes>,
}

#[derive(Debug)]
pub(crate) struct Session {
    pub gen: u32,
    pub outbox: Outbox,
    pub transport: Transport,
    pub grant: Grant,
    pub subs: Vec<Sub>,
    /// Marked slow (being disconnected): deliveries skip it.
    pub slow: bool,
    /// Replies owed, oldest first: a later reply never overtakes one.
    pub owed: VecDeque<Owed>,
    /// Commands that must wait for the owed replies (or for the owner's
    /// answer to a subscribe) before they run, oldest first: the one the
    /// engine parked, and at most one the runtime handed over anyway.
    pub parked: VecDeque<Bytes>,
    /// The reader must not hand over another command yet.
    pub waiting: bool,
    /// HTTP transports: a held poll's messages and `gap` notice, the
    /// subscription's refusal, and the topic's epoch.
    pub poll: Vec<Bytes>,
    pub poll_bytes: usize,
    pub poll_gap: Option<Bytes>,
    pub refused: Option<ErrorCode>,
    /// When its credentials expire, and when it must have presented some
    /// (see `engine::access`).
    pub expires_at: Option<Instant>,
    pub token_due: Option<Instant>,
    /// Its command rate, and the commands refused for it in a row.
    pub bucket: Bucket,
    pub strikes: u32,
    pub epoch: Option<std::sync::Arc<str>>,
}

impl Session {
    pub fn new(gen: u32, outbox_size: usize, grant: Grant) -> Self {
        Session {
            gen,
            outbox: Outbox::new(outbox_size),
            transport: Transport::Plain,
            grant,
            subs: Vec::new(),
            slow: false,
            owed: VecDeque::new(),
            parked: VecDeque::new(),
            waiting: false,
            poll: Vec::new(),
            poll_bytes: 0,
            poll_gap: None,
            refused: None,
            expires_at: None,
            token_due: None,
            bucket: Bucket::default(),
            strikes: 0,
            epoch: None,
        }
    }

    pub fn sub(&self, topic: &str) -> Option<&Sub> {
        self.subs.iter().find(|s| *s.topic == *topic)
    }
}

/// A token bucket, refilled lazily from the time passed in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bucket {
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    /// Takes one token if there is one; `rate` unlimited always allows.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        if !rate.is_limited() {
            return true;
        }
        let burst = rate.burst.max(1.0);
        let tokens = match self.at {
            None => burst,
            Some(at) => {
                let dt = now.saturating_duration_since(at).as_secs_f64();
                (self.tokens + dt * rate.per_second).min(burst)
            }
        };
        self.at = Some(now);
        if tokens >= 1.0 {
            self.tokens = tokens - 1.0;
            true
        } else {
            self.tokens = tokens;
            false
        }
    }

    /// Seconds until a token is back (for `Retry-After`).
    pub fn wait(&self, rate: Rate) -> f64 {
        if !rate.is_limited() || self.tokens >= 1.0 {
            return 0.0;
        }
        (1.0 - self.tokens) / rate.per_second
    }

    /// Full again (idle long enough to be forgotten).
    pub fn is_full(&self, rate: Rate, now: Instant) -> bool {
        match self.at {
            None => true,
            Some(at) => {
                self.tokens + now.saturating_duration_since(at).as_secs_f64() * rate.per_second
                    >= rate.burst.max(1.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rate = Rate {
            per_second: 10.0,
            burst: 3.0,
        };
        let t0 = Instant::now();
        let mut b = Bucket::default();
        assert!((0..3).all(|_| b.take(rate, t0)));
        assert!(!b.take(rate, t0));
        assert!(b.wait(rate) > 0.0);
        assert!(
            b.take(rate, t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!b.take(rate, t0 + Duration::from_millis(100)));
        assert!(b.is_full(rate, t0 + Duration::from_secs(1)));
        assert!(Bucket::default().take(Rate::UNLIMITED, t0));
    }
}
