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

use crate::auth::{Grant, OPEN};
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

/// One connection's state in the engine: one per connection, idle or
/// not, so what is rare lives behind a box allocated when it is first
/// needed (issue 12's per-connection byte budget, docs/benchmarks.md):
/// an idle subscribed `/ws` connection carries its outbox, its grant and
/// its subscription list, and a null pointer for each of the rest.
#[derive(Debug)]
pub(crate) struct Session {
    pub gen: u32,
    pub transport: Transport,
    /// Marked slow (being disconnected): deliveries skip it.
    pub slow: bool,
    /// The reader must not hand over another command yet.
    pub waiting: bool,
    /// Why the last HTTP-transport subscription was refused.
    pub refused: Option<ErrorCode>,
    pub outbox: Outbox,
    /// What admission granted; `None` for open access ([`Grant::open`],
    /// every client's grant under `--auth none`), which is then not copied
    /// into every session.
    grant: Option<Box<Grant>>,
    pub subs: Vec<Sub>,
    /// Replies owed and commands waiting for them; `None` while there are
    /// none (a client that does not pipeline never has any).
    pipeline: Option<Box<Pipeline>>,
    /// A held long-poll's collection; `None` on every other transport.
    poll: Option<Box<Poll>>,
    /// Token deadlines and the command rate; `None` until credentials
    /// expire or a command rate is set.
    access: Option<Box<AccessState>>,
}

/// What a pipelining `/ws` client has in flight.
#[derive(Debug, Default)]
pub(crate) struct Pipeline {
    /// Replies owed, oldest first: a later reply never overtakes one.
    pub owed: VecDeque<Owed>,
    /// Commands that must wait for the owed replies (or for the owner's
    /// answer to a subscribe) before they run, oldest first: the one the
    /// engine parked, and at most one the runtime handed over anyway.
    pub parked: VecDeque<Bytes>,
}

/// HTTP long-poll: the held poll's messages and `gap` notice, and the
/// topic's epoch once its subscription went live.
#[derive(Debug, Default)]
pub(crate) struct Poll {
    pub messages: Vec<Bytes>,
    pub bytes: usize,
    pub gap: Option<Bytes>,
    pub epoch: Option<Arc<str>>,
}

/// Access control of a live connection (see `engine::access`).
#[derive(Debug, Default)]
pub(crate) struct AccessState {
    /// When its credentials expire, and when it must have presented some.
    pub expires_at: Option<Instant>,
    pub token_due: Option<Instant>,
    /// Its command rate, and the commands refused for it in a row.
    pub bucket: Bucket,
    pub strikes: u32,
}

impl Session {
    pub fn new(gen: u32, outbox_size: usize, grant: Grant) -> Self {
        let mut s = Session {
            gen,
            transport: Transport::Plain,
            slow: false,
            waiting: false,
            refused: None,
            outbox: Outbox::new(outbox_size),
            grant: None,
            subs: Vec::new(),
            pipeline: None,
            poll: None,
            access: None,
        };
        s.set_grant(grant);
        s
    }

    /// What admission granted.
    pub fn grant(&self) -> &Grant {
        self.grant.as_deref().unwrap_or(&OPEN)
    }

    pub fn set_grant(&mut self, grant: Grant) {
        self.grant = (!grant.is_open()).then(|| Box::new(grant));
    }

    pub fn sub(&self, topic: &str) -> Option<&Sub> {
        self.subs.iter().find(|s| *s.topic == *topic)
    }

    /// Adds a subscription. The first gets a list of exactly one entry
    /// (one connection, one topic is the common case; `Vec` would reserve
    /// four); more grow the list as usual.
    pub fn add_sub(&mut self, sub: Sub) {
        if self.subs.capacity() == 0 {
            self.subs.reserve_exact(1);
        }
        self.subs.push(sub);
    }

    /// Removes the subscriptions `keep` refuses; an emptied list lets its
    /// allocation go.
    pub fn retain_subs(&mut self, keep: impl FnMut(&Sub) -> bool) {
        self.subs.retain(keep);
        if self.subs.is_empty() {
            self.subs = Vec::new();
        }
    }

    /// Removes subscription `i` (order is not kept).
    pub fn remove_sub(&mut self, i: usize) -> Sub {
        let sub = self.subs.swap_remove(i);
        if self.subs.is_empty() {
            self.subs = Vec::new();
        }
        sub
    }

    /// Replies owed.
    pub fn owed(&self) -> usize {
        self.pipeline.as_ref().map_or(0, |p| p.owed.len())
    }

    /// Commands parked.
    pub fn parked(&self) -> usize {
        self.pipeline.as_ref().map_or(0, |p| p.parked.len())
    }

    /// The pipeline, created if there was none.
    pub fn pipeline(&mut self) -> &mut Pipeline {
        self.pipeline.get_or_insert_with(Box::default)
    }

    /// The pipeline, if there is one.
    pub fn pipeline_mut(&mut self) -> Option<&mut Pipeline> {
        self.pipeline.as_deref_mut()
    }

    /// The pipeline, read-only (for the audit).
    pub fn pipeline_ref(&self) -> Option<&Pipeline> {
        self.pipeline.as_deref()
    }

    /// Drops an empty pipeline: a client that stopped pipelining keeps
    /// nothing of it.
    pub fn tidy_pipeline(&mut self) {
        if self
            .pipeline
            .as_ref()
            .is_some_and(|p| p.owed.is_empty() && p.parked.is_empty())
        {
            self.pipeline = None;
        }
    }

    /// The long-poll collection, created if there was none.
    pub fn poll(&mut self) -> &mut Poll {
        self.poll.get_or_insert_with(Box::default)
    }

    /// The long-poll collection, if there is one.
    pub fn poll_ref(&self) -> Option<&Poll> {
        self.poll.as_deref()
    }

    /// Ends the long-poll collection, returning it.
    pub fn take_poll(&mut self) -> Option<Box<Poll>> {
        self.poll.take()
    }

    /// The access state, created if there was none.
    pub fn access(&mut self) -> &mut AccessState {
        self.access.get_or_insert_with(Box::default)
    }

    /// When its credentials expire.
    pub fn expires_at(&self) -> Option<Instant> {
        self.access.as_ref().and_then(|a| a.expires_at)
    }

    /// When it must have presented credentials.
    pub fn token_due(&self) -> Option<Instant> {
        self.access.as_ref().and_then(|a| a.token_due)
    }

    /// Forgets its token deadlines (none is created to hold nothing).
    pub fn clear_deadlines(&mut self, expiry: bool) {
        if let Some(a) = self.access.as_deref_mut() {
            a.token_due = None;
            if expiry {
                a.expires_at = None;
            }
        }
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

    /// Every connection has a session, idle or not: what is rare stays
    /// behind a box (issue 12's budget; it was 456 bytes, its outbox 152).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_session_stays_small() {
        assert!(std::mem::size_of::<Session>() <= 176);
        let open = Session::new(1, 1024, Grant::open());
        assert!(open.grant.is_none(), "open access is not copied");
        assert!(open.grant().is_open());
        let anonymous = Grant::anonymous(crate::auth::Access::none());
        let mut s = Session::new(1, 1024, anonymous);
        assert!(!s.grant().is_open());
        assert_eq!(s.grant().publish, crate::auth::Access::none());
        s.set_grant(Grant::open());
        assert!(s.grant.is_none());
    }

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
