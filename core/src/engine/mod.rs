//! One shard's pub/sub engine: the state machine the runtime drives.
//!
//! Inputs come in through methods (a command from a connection, a message
//! from another shard, an HTTP publish, the time); what the runtime must do
//! comes out of [`Engine::poll_output`] (wake a writer, let a reader go on,
//! close a connection, answer a held poll or an HTTP publish), and messages
//! for other shards go to the [`Route`]. Bytes for a connection go straight
//! into its [`Outbox`], which the runtime's writer drains.
//!
//! Ordering is what makes `subscribed` honest and `since` gap-free. All of
//! a topic's traffic from its owner to a shard travels on one FIFO (the
//! [`Route`] contract), and a subscription that needs the owner (first on
//! this shard, or with `since`) waits for the owner's answer on that same
//! FIFO. The answer is a snapshot: it carries the retained messages after
//! `since`, and every later message comes after it. So the client gets
//! `subscribed`, then the replay, then live messages: no gap, no duplicate.
//! Messages a shard sends itself take the same path, through a local queue
//! that is drained before any entry point returns.
//!
//! Replies come in command order. A command whose reply needs the owner
//! (a subscribe that waits for its snapshot, a publish with an `id`) is
//! answered in turn: publishes may pipeline (their replies are slotted in
//! order), any other command waits until the replies before it are out,
//! and the runtime hands over no further command while
//! [`Engine::is_waiting`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use ahash::RandomState;
use bytes::Bytes;
use slab::Slab;

mod access;

pub use access::{
    close_code, CLOSE_BAD_CONNECT, CLOSE_FORBIDDEN, CLOSE_TOO_MANY, CLOSE_UNAUTHORIZED,
};

use self::access::Due;
use crate::auth::{Authorizer, Denied, Grant};
use crate::limits::{Limits, SlowConsumer};
use crate::outbox::{Outbox, PushError, Pushed, State};
use crate::owner::Owner;
use crate::route::{Ack, Msg, Placement, Route, ShardId, Snapshot};
use crate::session::{ConnId, Owed, Session, Sub, SubState, Transport};
use crate::stats::Stats;
use crate::wire::command::{self, Command, ErrorCode, Id};
use crate::wire::reply;

/// What the runtime must do for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The connection's outbox has something to write (or closed).
    Wake(ConnId),
    /// The connection's reader may hand over its next command.
    Resume(ConnId),
    /// The peer does not read even its replies: its outbox is closed; shut
    /// the socket.
    Drop(ConnId),
    /// The slow-consumer policy dropped the connection. WebSocket: its
    /// queue was discarded; send close 1008 and close within the close
    /// timeout. SSE: its outbox finishes; end the stream.
    SlowClose(ConnId),
    /// A held long-poll has something to answer with.
    PollReady(ConnId),
    /// Access control closes the connection: a WebSocket gets this close
    /// code (4400, 4401, 4403, 4429), an SSE stream ends.
    Close {
        conn: ConnId,
        code: u16,
        reason: &'static str,
    },
    /// An HTTP publish got its seq, or was refused.
    Published {
        token: u64,
        result: Result<u64, ErrorCode>,
    },
}

/// Whether a reader may go on to its next command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Wait for [`Output::Resume`] (check [`Engine::is_waiting`]).
    Wait,
}

/// A topic as seen by a shard with subscribers to it.
#[derive(Debug, Default)]
struct Local {
    /// The owner has acknowledged this shard's interest.
    live: bool,
    /// Subscribe requests in flight to the owner.
    requests: usize,
    /// The last seq received, to notice deliveries the mesh dropped.
    last_seq: u64,
    incarnation: u64,
    subs: Slab<ConnId>,
}

/// A request waiting for the owner's answer.
#[derive(Debug)]
enum Pending {
    Sub {
        conn: ConnId,
        id: Option<Id>,
        since: Option<u64>,
    },
    WsPub {
        conn: ConnId,
        topic: Arc<str>,
        id: Option<Id>,
    },
    HttpPub(u64),
}

/// The engine of one shard.
pub struct Engine<R> {
    shard: ShardId,
    placement: Placement,
    limits: Limits,
    /// Names the process's stream of seqs (see `docs/protocol.md`, Epoch).
    epoch: Arc<str>,
    route: R,
    auth: Box<dyn Authorizer>,
    owner: Owner,
    local: HashMap<Arc<str>, Local, RandomState>,
    sessions: Slab<Session>,
    next_gen: u32,
    pending: Slab<Pending>,
    /// Messages this shard sent itself, handled in order before any entry
    /// point returns: a handler never re-enters another.
    inbox: VecDeque<Msg>,
    out: VecDeque<Output>,
    stats: Stats,
    /// The time the last entry point was given.
    clock: Option<Instant>,
    /// Session deadlines (token due, expiry notice, expiry), by time.
    timers: BTreeSet<(Instant, u32, u32, Due)>,
    /// Publish rate per subject.
    publish_buckets: HashMap<Arc<str>, crate::session::Bucket, RandomState>,
}

impl<R: Route> Engine<R> {
    pub fn new(
        shard: ShardId,
        placement: Placement,
        limits: Limits,
        epoch: &str,
        route: R,
        auth: Box<dyn Authorizer>,
    ) -> Self {
        Engine {
            shard,
            placement,
            limits,
            epoch: Arc::from(epoch),
            route,
            auth,
            owner: Owner::default(),
            local: HashMap::default(),
            sessions: Slab::new(),
            next_gen: 0,
            pending: Slab::new(),
            inbox: VecDeque::new(),
            out: VecDeque::new(),
            stats: Stats::default(),
            clock: None,
            timers: BTreeSet::new(),
            publish_buckets: HashMap::default(),
        }
    }

    /// The time of the entry point running now (every entry point that can
    /// reach a timer or a rate limit sets it first).
    fn now(&self) -> Instant {
        self.clock.expect("set by every entry point")
    }

    /// What a client without credentials is granted.
    pub fn anonymous_grant(&self) -> Grant {
        self.auth.anonymous()
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn route(&self) -> &R {
        &self.route
    }

    pub fn route_mut(&mut self) -> &mut R {
        &mut self.route
    }

    /// The epoch of a topic's incarnation: the process's epoch, with the
    /// incarnation after a dot once the owner has dropped topics.
    pub fn epoch(&self, incarnation: u64) -> String {
        if incarnation == 0 {
            self.epoch.to_string()
        } else {
            format!("{}.{incarnation}", self.epoch)
        }
    }

    /// What the runtime must do next.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Engine::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.owner.next_expiry(&self.limits), self.next_timer()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires history whose time is up.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = Some(now);
        self.owner.expire(now, &self.limits, &mut self.stats);
        self.run_timers(now);
        self.forget_idle_buckets(now);
    }

    // ---- connections ------------------------------------------------------

    /// A new connection, admitted with `grant`.
    pub fn open(&mut self, grant: Grant) -> ConnId {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let idx = self
            .sessions
            .insert(Session::new(gen, self.limits.outbox_size, grant));
        ConnId {
            idx: idx as u32,
            gen,
        }
    }

    fn session(&self, conn: ConnId) -> Option<&Session> {
        self.sessions
            .get(conn.idx as usize)
            .filter(|s| s.gen == conn.gen)
    }

    fn session_mut(&mut self, conn: ConnId) -> Option<&mut Session> {
        self.sessions
            .get_mut(conn.idx as usize)
            .filter(|s| s.gen == conn.gen)
    }

    /// The connection is gone: its subscriptions end, answers still on
    /// their way to it are dropped when they arrive.
    pub fn close(&mut self, conn: ConnId, now: Instant) {
        self.clock = Some(now);
        self.unsubscribe_all(conn, now);
        if self.session(conn).is_some() {
            self.sessions.remove(conn.idx as usize);
        }
    }

    /// Sets how the connection receives messages.
    pub fn set_transport(&mut self, conn: ConnId, transport: Transport) {
        if let Some(s) = self.session_mut(conn) {
            s.transport = transport;
            if transport == Transport::Sse {
                s.outbox.set_sse();
            }
        }
    }

    /// The connection's outbox, for what the runtime queues itself (HTTP
    /// responses, protocol frames, echoes). The runtime wakes its writer
    /// itself when [`Outbox::take_wake`] says so.
    pub fn outbox(&mut self, conn: ConnId) -> Option<&mut Outbox> {
        self.session_mut(conn).map(|s| &mut s.outbox)
    }

    /// Moves up to `max` buffers into `out` for one write; the outbox's
    /// state says whether to write, finish or stop.
    pub fn take_batch(&mut self, conn: ConnId, out: &mut Vec<Bytes>, max: usize) -> State {
        match self.session_mut(conn) {
            Some(s) => {
                s.outbox.take_batch(out, max);
                s.outbox.state()
            }
            None => State::Closed,
        }
    }

    /// The writer wrote `bytes` of what it took.
    pub fn written(&mut self, conn: ConnId, bytes: usize) {
        if let Some(s) = self.session_mut(conn) {
            s.outbox.written(bytes);
            s.outbox.take_wake();
        }
    }

    /// The reader must not hand over another command yet.
    pub fn is_waiting(&self, conn: ConnId) -> bool {
        self.session(conn).is_some_and(|s| s.waiting)
    }

    // ---- commands (WebSocket) ----------------------------------------------

    /// A text frame from a `/ws` client.
    pub fn command(&mut self, conn: ConnId, payload: &Bytes, now: Instant) -> Flow {
        self.clock = Some(now);
        let Some(s) = self.session_mut(conn) else {
            return Flow::Continue;
        };
        if s.slow {
            // Being closed (slow consumer): what it still sends is not
            // answered, nothing may follow the close.
            return Flow::Continue;
        }
        if s.waiting {
            // The runtime waits for Resume; a command handed over anyway
            // runs in turn (one at most: the reader stops here). It queues
            // behind a command already parked: it replaced nothing, but it
            // was dropped (never answered) when one was.
            if s.parked.len() < 2 {
                s.parked.push_back(payload.clone());
            }
            return Flow::Wait;
        }
        let mark = self.out.len();
        if self.take_command_token(conn, payload) {
            self.run_command(conn, payload.clone());
        }
        self.drain_inbox(now);
        self.flow_after(conn, mark)
    }

    fn flow(&self, conn: ConnId) -> Flow {
        if self.is_waiting(conn) {
            Flow::Wait
        } else {
            Flow::Continue
        }
    }

    /// The flow to return from an entry point that started at output
    /// `mark`. A wait that began and ended within the call (the owner is
    /// this shard, so its answer came at once) is told by the `Continue`
    /// returned; its `Resume` is withdrawn. Left in, it reached a reader
    /// that was not waiting, and a runtime that waits on a notification
    /// (which keeps a permit) would later read past a real `Wait`.
    fn flow_after(&mut self, conn: ConnId, mark: usize) -> Flow {
        let flow = self.flow(conn);
        if flow == Flow::Continue {
            let mut i = mark;
            while i < self.out.len() {
                if self.out[i] == Output::Resume(conn) {
                    self.out.remove(i);
                } else {
                    i += 1;
                }
            }
        }
        flow
    }

    fn run_command(&mut self, conn: ConnId, payload: Bytes) {
        let parsed = command::parse_limited(&payload, self.limits.max_json_depth);
        let max_owed = self.limits.max_pending_publishes;
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        let publish = matches!(parsed, Ok(Command::Publish { .. }));
        if !s.owed.is_empty() && (!publish || s.owed.len() >= max_owed) {
            // Its reply would overtake the ones owed (or too many are
            // owed): it runs once they are out, first of those parked.
            s.parked.push_front(payload);
            s.waiting = true;
            return;
        }
        match parsed {
            Ok(Command::Subscribe { topic, since, id }) => {
                self.subscribe_inner(conn, topic, since, id)
            }
            Ok(Command::Unsubscribe { topic, id }) => {
                self.unsubscribe(conn, &topic);
                self.reply(conn, reply::unsubscribed(&topic, &id));
            }
            Ok(Command::Publish { topic, data, id }) => self.publish_ws(conn, topic, data, id),
            Ok(Command::Connect { token, id }) => self.connect_command(conn, token, id),
            Ok(Command::Refresh { token, id }) => self.refresh_command(conn, token, id),
            Err(e) => self.reply(conn, reply::error(e.code, &e.message, &e.id)),
        }
    }

    /// Queues a reply to the client's own command, past the outbox bound
    /// (within its slack). A peer that lets even these pile up is not
    /// reading; it is cut off.
    fn reply(&mut self, conn: ConnId, frame: Bytes) {
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        if s.slow {
            // Dropped by the slow-consumer policy: the runtime's close is
            // the last thing it gets. Queued now, a reply followed the
            // discarded ones (out of order) and came before (or after) the
            // close frame.
            return;
        }
        if s.outbox.push_control(frame) == Err(PushError::Full) {
            s.outbox.close();
            self.out.push_back(Output::Drop(conn));
        }
        self.wake(conn);
    }

    /// A reply that must not overtake the publish replies still owed.
    fn reply_in_order(&mut self, conn: ConnId, frame: Bytes) {
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        if s.owed.is_empty() {
            return self.reply(conn, frame);
        }
        s.owed.push_back(Owed {
            token: None,
            reply: Some(frame),
        });
    }

    fn wake(&mut self, conn: ConnId) {
        if let Some(s) = self.session_mut(conn) {
            if s.outbox.take_wake() {
                self.out.push_back(Output::Wake(conn));
            }
        }
    }

    /// Sends the replies owed that are ready, in order; once none is owed,
    /// runs the commands that waited for them, in turn, until one waits.
    fn settle_owed(&mut self, conn: ConnId) {
        loop {
            let Some(s) = self.session_mut(conn) else {
                return;
            };
            if let Some(frame) = s.owed.front_mut().and_then(|o| o.reply.take()) {
                s.owed.pop_front();
                self.reply(conn, frame);
                continue;
            }
            if !s.owed.is_empty() {
                return;
            }
            let Some(parked) = s.parked.pop_front() else {
                return;
            };
            s.waiting = false;
            self.run_command(conn, parked);
            let Some(s) = self.session_mut(conn) else {
                return;
            };
            if s.waiting {
                return;
            }
            if s.parked.is_empty() {
                self.out.push_back(Output::Resume(conn));
                return;
            }
            // More wait their turn: the reader still waits.
            s.waiting = true;
        }
    }

    // ---- subscribing -------------------------------------------------------

    /// Subscribes an SSE or long-poll connection (set its transport
    /// first). On a refusal, [`Engine::take_refusal`] says why.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        topic: &str,
        since: Option<u64>,
        now: Instant,
    ) -> Flow {
        let mark = self.out.len();
        self.subscribe_inner(conn, topic.to_string(), since, None);
        self.drain_inbox(now);
        self.flow_after(conn, mark)
    }

    /// Why the last HTTP-transport subscription was refused.
    pub fn take_refusal(&mut self, conn: ConnId) -> Option<ErrorCode> {
        self.session_mut(conn).and_then(|s| s.refused.take())
    }

    /// Refuses a subscription: an `error` reply on `/ws`, a refusal the
    /// HTTP transports read with [`Engine::take_refusal`].
    fn refuse(&mut self, conn: ConnId, code: ErrorCode, message: &str, id: &Option<Id>) {
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        if s.transport != Transport::WebSocket {
            s.refused = Some(code);
            return;
        }
        self.reply(conn, reply::error(code, message, id));
    }

    fn subscribe_inner(&mut self, conn: ConnId, topic: String, since: Option<u64>, id: Option<Id>) {
        let max = self.limits.max_subscriptions;
        let Some(s) = self
            .sessions
            .get(conn.idx as usize)
            .filter(|s| s.gen == conn.gen)
        else {
            return;
        };
        let refusal = if s.sub(&topic).is_some() {
            Some((
                ErrorCode::BadRequest,
                format!("already subscribed to {topic}"),
            ))
        } else if s.subs.len() >= max {
            Some((
                ErrorCode::Limit,
                format!("at most {max} subscriptions per connection"),
            ))
        } else {
            match self.auth.subscribe(&s.grant, &topic) {
                Ok(()) => None,
                Err(d) => {
                    self.stats.denied += 1;
                    Some(denial(d, "subscribe to", &topic))
                }
            }
        };
        if let Some((code, msg)) = refusal {
            return self.refuse(conn, code, &msg, &id);
        }
        let key: Arc<str> = match self.local.get_key_value(topic.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(topic),
        };
        let entry = self.local.entry(key.clone()).or_default();
        if entry.live && since.is_none() {
            // This shard already receives the topic: live at once.
            let slot = entry.subs.insert(conn);
            let incarnation = entry.incarnation;
            self.stats.subscriptions += 1;
            if let Some(s) = self.session_mut(conn) {
                s.subs.push(Sub {
                    topic: key.clone(),
                    state: SubState::Live(slot),
                });
            }
            self.send_subscribed(conn, &key, &id, incarnation);
            return;
        }
        entry.requests += 1;
        let token = self.pending.insert(Pending::Sub { conn, id, since });
        if let Some(s) = self.session_mut(conn) {
            s.subs.push(Sub {
                topic: key.clone(),
                state: SubState::Pending(token),
            });
            s.waiting = true;
        }
        let owner = self.placement.owner(&key);
        let msg = Msg::Subscribe {
            topic: key.clone(),
            from: self.shard,
            token,
            since,
        };
        if self.send_bounded(owner, msg).is_err() {
            let Pending::Sub { id, .. } = self.pending.remove(token) else {
                unreachable!("just inserted")
            };
            if let Some(s) = self.session_mut(conn) {
                s.subs.retain(|s| s.topic != key);
                s.waiting = false;
            }
            if let Some(e) = self.local.get_mut(&key) {
                e.requests -= 1;
            }
            self.maybe_release(&key);
            self.stats.overloaded += 1;
            let msg = format!("cannot subscribe to {key} now: the broker is overloaded");
            self.refuse(conn, ErrorCode::Overloaded, &msg, &id);
        }
    }

    fn sub_ack(&mut self, topic: Arc<str>, token: usize, result: Result<Snapshot, ErrorCode>) {
        let Some(Pending::Sub { conn, id, since }) = self.pending.try_remove(token) else {
            debug_assert!(false, "a SubAck answers a subscription");
            return;
        };
        // Still wanted? The connection may have gone, or unsubscribed.
        let wanted = self.session(conn).is_some_and(|s| {
            s.sub(&topic)
                .is_some_and(|s| s.state == SubState::Pending(token))
        });
        let Some(entry) = self.local.get_mut(&topic) else {
            debug_assert!(false, "a pending request keeps the entry");
            return;
        };
        entry.requests -= 1;
        if let Ok(snap) = &result {
            if !entry.live {
                entry.live = true;
                entry.last_seq = snap.last_seq;
                entry.incarnation = snap.incarnation;
            }
        }
        if let Ok(snap) = &result {
            // Deliveries the mesh dropped before this answer: the live
            // subscribers hear of them now (the new one gets the replay).
            self.catch_up(&topic, snap.last_seq);
        }
        match (wanted, result) {
            (true, Ok(snap)) => self.go_live(conn, &topic, id, since, snap),
            (true, Err(code)) => {
                if let Some(s) = self.session_mut(conn) {
                    s.subs.retain(|s| s.topic != topic);
                }
                let msg = match code {
                    ErrorCode::Limit => format!("cannot subscribe to {topic}: too many topics"),
                    _ => format!("cannot subscribe to {topic}"),
                };
                self.refuse(conn, code, &msg, &id);
            }
            (false, _) => {}
        }
        // Only the answer the connection waits for settles its wait: a
        // stale one (a poll answered before its subscription went live)
        // resumed the next poll's subscription while it was still pending.
        if let Some(s) = self.session_mut(conn).filter(|_| wanted) {
            if s.waiting && s.parked.is_empty() {
                s.waiting = false;
                self.out.push_back(Output::Resume(conn));
            } else if s.waiting {
                // A command handed over while this waited runs now, in turn
                // (it was never run: the connection waited for ever).
                self.settle_owed(conn);
            }
        }
        self.maybe_release(&topic);
    }

    /// A subscriber shard notices seqs it never received (dropped at a
    /// full queue) and tells its live subscribers what they skipped.
    fn catch_up(&mut self, topic: &Arc<str>, seq_before: u64) {
        let Some(entry) = self.local.get_mut(&**topic) else {
            return;
        };
        if seq_before <= entry.last_seq {
            return;
        }
        let (from, to) = (entry.last_seq + 1, seq_before);
        entry.last_seq = seq_before;
        let subs: Vec<ConnId> = entry.subs.iter().map(|(_, c)| *c).collect();
        for conn in subs {
            self.notify_skipped(conn, topic, from, to);
        }
    }

    fn notify_skipped(&mut self, conn: ConnId, topic: &str, from: u64, to: u64) {
        let poll_cap = self.limits.outbox_size;
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        let notice = match s.transport {
            Transport::Sse => reply::sse_skipped(topic, from, to),
            Transport::Poll => {
                // An answer is one notice, then messages in seq order. The
                // notice goes first only if nothing was collected yet:
                // behind replayed messages (or in place of a `gap`) it
                // would be out of order, or lose the gap. Otherwise the
                // answer ends here; the client polls on from its last seq
                // and the owner's replay (or its `gap`) tells the rest.
                if s.poll.is_empty() && s.poll_gap.is_none() {
                    s.poll_gap = Some(reply::skipped(topic, from, to));
                } else {
                    s.poll_bytes = s.poll_bytes.max(poll_cap);
                }
                self.out.push_back(Output::PollReady(conn));
                return;
            }
            _ => reply::skipped(topic, from, to),
        };
        // A conflated message of the topic waiting for room was published
        // before these seqs: the notice goes behind it (queued now, it
        // overtook the message and the client saw the seqs out of order).
        if s.outbox.hold_skip(topic, from, to) {
            return;
        }
        // A notice is owed like a reply: past the bound, within the slack.
        self.reply(conn, notice);
    }

    fn go_live(
        &mut self,
        conn: ConnId,
        topic: &Arc<str>,
        id: Option<Id>,
        since: Option<u64>,
        snap: Snapshot,
    ) {
        let Some(entry) = self.local.get_mut(&**topic) else {
            return;
        };
        let slot = entry.subs.insert(conn);
        self.stats.subscriptions += 1;
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        if let Some(sub) = s.subs.iter_mut().find(|s| s.topic == *topic) {
            sub.state = SubState::Live(slot);
        }
        if s.slow {
            // Closed by the slow-consumer policy while this waited for the
            // owner: nothing more goes out (it would follow the close).
            return;
        }
        let transport = s.transport;
        self.send_subscribed(conn, topic, &id, snap.incarnation);
        let Some(replay) = snap.replay else {
            return;
        };
        if let Some(first) = replay.gap {
            let since = since.unwrap_or(0);
            match transport {
                Transport::Sse => self.reply(conn, reply::sse_gap(topic, since, first)),
                Transport::Poll => {
                    if let Some(s) = self.session_mut(conn) {
                        s.poll_gap = Some(reply::gap(topic, since, first, &None));
                        self.out.push_back(Output::PollReady(conn));
                    }
                }
                _ => self.reply(conn, reply::gap(topic, since, first, &id)),
            }
        }
        let allowance = self.limits.history.max_bytes;
        // Once a replayed frame takes the slow-consumer path, the rest
        // follow it: a later, smaller frame that still fit the replay
        // allowance overtook a conflated (held) one.
        let mut burst = transport == Transport::WebSocket;
        for (seq, frame) in replay.frames {
            if burst {
                let Some(s) = self.session_mut(conn) else {
                    return;
                };
                if s.outbox.push_replay(frame.clone(), allowance).is_ok() {
                    self.stats.delivered += 1;
                    self.wake(conn);
                    continue;
                }
                burst = false;
            }
            let mut sse = None;
            self.deliver_to(conn, topic, seq, &frame, &mut sse);
            if self.session(conn).is_none_or(|s| s.slow) {
                // Closed by the policy: nothing more.
                return;
            }
        }
    }

    /// `subscribed` with the epoch, before any replay: a frame on `/ws`,
    /// an `event: subscribed` on SSE. A long-poll answers with the epoch
    /// as a response header instead ([`Engine::poll_epoch`]).
    fn send_subscribed(&mut self, conn: ConnId, topic: &str, id: &Option<Id>, incarnation: u64) {
        let epoch = self.epoch(incarnation);
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        s.incarnation = Some(incarnation);
        match s.transport {
            Transport::Sse => self.reply(conn, reply::sse_subscribed(topic, &epoch)),
            Transport::Poll => {}
            _ => self.reply(conn, reply::subscribed(topic, &epoch, id)),
        }
    }

    /// Ends a subscription (no reply; idempotent).
    fn unsubscribe(&mut self, conn: ConnId, topic: &str) {
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        let Some(i) = s.subs.iter().position(|s| *s.topic == *topic) else {
            return;
        };
        let sub = s.subs.swap_remove(i);
        self.drop_sub(conn, sub);
    }

    /// Ends every subscription of a connection (a poll answered, a
    /// connection closed).
    pub fn unsubscribe_all(&mut self, conn: ConnId, now: Instant) {
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        for sub in std::mem::take(&mut s.subs) {
            self.drop_sub(conn, sub);
        }
        self.drain_inbox(now);
    }

    fn drop_sub(&mut self, conn: ConnId, sub: Sub) {
        if let SubState::Live(slot) = sub.state {
            if let Some(entry) = self.local.get_mut(&*sub.topic) {
                if entry.subs.try_remove(slot).is_some() {
                    self.stats.subscriptions -= 1;
                }
            }
            // A conflated message of this topic must not follow
            // `unsubscribed`.
            if let Some(s) = self.session_mut(conn) {
                s.outbox.drop_held(&sub.topic);
            }
        }
        // A pending one is settled when its answer arrives.
        self.maybe_release(&sub.topic);
    }

    /// Tells the owner when the last local subscriber of a topic is gone.
    fn maybe_release(&mut self, topic: &Arc<str>) {
        let release = match self.local.get(&**topic) {
            Some(e) if e.subs.is_empty() && e.requests == 0 => {
                let live = e.live;
                self.local.remove(&**topic);
                live
            }
            _ => false,
        };
        if release {
            let owner = self.placement.owner(topic);
            let msg = Msg::Unsubscribe {
                topic: topic.clone(),
                from: self.shard,
            };
            self.send_always(owner, msg);
        }
    }

    // ---- publishing ---------------------------------------------------------

    fn publish_ws(&mut self, conn: ConnId, topic: String, data: Bytes, id: Option<Id>) {
        let Some(s) = self
            .sessions
            .get(conn.idx as usize)
            .filter(|s| s.gen == conn.gen)
        else {
            return;
        };
        if let Err(d) = self.auth.publish(&s.grant, &topic) {
            self.stats.denied += 1;
            let (code, msg) = denial(d, "publish to", &topic);
            return self.reply_in_order(conn, reply::error(code, &msg, &id));
        }
        let subject = s.grant.subject.clone();
        if let Err(wait) = self.take_publish_token(subject.as_deref()) {
            let msg = format!("too many publishes: retry in {:.1} s", wait.max(0.1));
            return self.reply_in_order(conn, reply::error(ErrorCode::RateLimited, &msg, &id));
        }
        let topic: Arc<str> = Arc::from(topic);
        let (ack, token) = if id.is_some() {
            let token = self.pending.insert(Pending::WsPub {
                conn,
                topic: topic.clone(),
                id: id.clone(),
            });
            (
                Ack::To {
                    from: self.shard,
                    token,
                },
                Some(token),
            )
        } else {
            (
                Ack::Errors {
                    from: self.shard,
                    conn,
                },
                None,
            )
        };
        let owner = self.placement.owner(&topic);
        let msg = Msg::Publish {
            topic: topic.clone(),
            data,
            ack,
        };
        if self.send_bounded(owner, msg).is_err() {
            if let Some(t) = token {
                self.pending.remove(t);
            }
            self.stats.overloaded += 1;
            let msg = format!("cannot publish to {topic} now: the broker is overloaded");
            return self.reply_in_order(conn, reply::error(ErrorCode::Overloaded, &msg, &id));
        }
        if let (Some(token), Some(s)) = (token, self.session_mut(conn)) {
            s.owed.push_back(Owed {
                token: Some(token),
                reply: None,
            });
        }
    }

    /// `POST /publish/{topic}` by a client admitted with `grant` (an API
    /// key's, a token's): checked against what the grant allows and its
    /// subject's publish rate first. A refusal carries its code and, for a
    /// rate limit, the seconds until a retry may pass.
    pub fn publish_as(
        &mut self,
        grant: &Grant,
        topic: &str,
        data: Bytes,
        token: Option<u64>,
        now: Instant,
    ) -> Result<(), (ErrorCode, Option<f64>)> {
        self.clock = Some(now);
        if let Err(d) = self.auth.publish(grant, topic) {
            self.stats.denied += 1;
            return Err((denial(d, "publish to", topic).0, None));
        }
        if let Err(wait) = self.take_publish_token(grant.subject.as_deref()) {
            return Err((ErrorCode::RateLimited, Some(wait)));
        }
        self.publish(topic, data, token, now).map_err(|c| (c, None))
    }

    /// `POST /publish/{topic}` (and the demo feeder), unchecked. With a
    /// `token`, the outcome comes back as [`Output::Published`]; without,
    /// nobody waits and no acknowledgement crosses shards.
    pub fn publish(
        &mut self,
        topic: &str,
        data: Bytes,
        token: Option<u64>,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        self.clock = Some(now);
        let topic: Arc<str> = Arc::from(topic);
        let pending = token.map(|t| self.pending.insert(Pending::HttpPub(t)));
        let ack = match pending {
            Some(token) => Ack::To {
                from: self.shard,
                token,
            },
            None => Ack::None,
        };
        let owner = self.placement.owner(&topic);
        let result = self.send_bounded(owner, Msg::Publish { topic, data, ack });
        if result.is_err() {
            if let Some(p) = pending {
                self.pending.remove(p);
            }
            self.stats.overloaded += 1;
        }
        self.drain_inbox(now);
        result.map_err(|_| ErrorCode::Overloaded)
    }

    fn pub_ack(&mut self, token: usize, result: Result<u64, ErrorCode>) {
        match self.pending.try_remove(token) {
            Some(Pending::WsPub { conn, topic, id }) => {
                let frame = match result {
                    Ok(seq) => reply::published(&topic, seq, &id),
                    Err(code) => reply::error(code, &publish_refusal(code, &topic), &id),
                };
                let Some(s) = self.session_mut(conn) else {
                    return;
                };
                // The token is free for reuse from now on: the slot forgets it.
                if let Some(o) = s.owed.iter_mut().find(|o| o.token == Some(token)) {
                    o.token = None;
                    o.reply = Some(frame);
                }
                self.settle_owed(conn);
            }
            Some(Pending::HttpPub(t)) => self.out.push_back(Output::Published { token: t, result }),
            Some(Pending::Sub { .. }) | None => debug_assert!(false, "a PubAck answers a publish"),
        }
    }

    // ---- messages between shards --------------------------------------------

    /// A batch of messages from another shard (or several).
    pub fn handle(&mut self, msg: Msg, now: Instant) {
        self.clock = Some(now);
        self.dispatch(msg, now);
        self.drain_inbox(now);
    }

    fn send_bounded(&mut self, dst: ShardId, msg: Msg) -> Result<(), Msg> {
        if dst == self.shard {
            self.inbox.push_back(msg);
            return Ok(());
        }
        self.route.try_send(dst, msg)
    }

    fn send_always(&mut self, dst: ShardId, msg: Msg) {
        if dst == self.shard {
            return self.inbox.push_back(msg);
        }
        self.route.send(dst, msg)
    }

    fn drain_inbox(&mut self, now: Instant) {
        while let Some(msg) = self.inbox.pop_front() {
            self.dispatch(msg, now);
        }
    }

    fn dispatch(&mut self, msg: Msg, now: Instant) {
        match msg {
            Msg::Publish { topic, data, ack } => self.owner_publish(topic, data, ack, now),
            Msg::Subscribe {
                topic,
                from,
                token,
                since,
            } => {
                let result =
                    self.owner
                        .subscribe(&topic, from, since, &self.limits, now, &mut self.stats);
                self.send_always(
                    from,
                    Msg::SubAck {
                        topic,
                        token,
                        result,
                    },
                );
            }
            Msg::Unsubscribe { topic, from } => {
                self.owner.unsubscribe(&topic, from, &mut self.stats)
            }
            Msg::Deliver { topic, seq, frame } => self.deliver_local(&topic, seq, &frame),
            Msg::SubAck {
                topic,
                token,
                result,
            } => self.sub_ack(topic, token, result),
            Msg::PubAck { token, result } => self.pub_ack(token, result),
            Msg::PubRefused { conn, topic, code } => {
                let msg = publish_refusal(code, &topic);
                self.reply_in_order(conn, reply::error(code, &msg, &None));
            }
        }
    }

    fn owner_publish(&mut self, topic: Arc<str>, data: Bytes, ack: Ack, now: Instant) {
        let result = self
            .owner
            .publish(&topic, &data, &self.limits, now, &mut self.stats);
        let seq = match result {
            Ok((seq, frame, interested)) => {
                self.stats.published += 1;
                for dst in interested {
                    let msg = Msg::Deliver {
                        topic: topic.clone(),
                        seq,
                        frame: frame.clone(),
                    };
                    if self.send_bounded(dst, msg).is_err() {
                        // Its subscribers hear of it with the next message
                        // that gets through (`skipped`).
                        self.stats.deliveries_dropped += 1;
                    }
                }
                Ok(seq)
            }
            Err(code) => Err(code),
        };
        match (ack, seq) {
            (Ack::To { from, token }, result) => {
                self.send_always(from, Msg::PubAck { token, result })
            }
            (Ack::Errors { from, conn }, Err(code)) => {
                self.send_always(from, Msg::PubRefused { conn, topic, code })
            }
            _ => {}
        }
    }

    // ---- delivery -----------------------------------------------------------

    fn deliver_local(&mut self, topic: &Arc<str>, seq: u64, frame: &Bytes) {
        let Some(entry) = self.local.get(&**topic) else {
            return;
        };
        if !entry.live || seq <= entry.last_seq {
            return;
        }
        if seq > entry.last_seq + 1 {
            self.catch_up(topic, seq - 1);
        }
        let Some(entry) = self.local.get_mut(&**topic) else {
            return;
        };
        entry.last_seq = seq;
        // Borrowed apart from the sessions: no copy of the subscriber list.
        let subs = std::mem::take(&mut entry.subs);
        // The SSE form is built at most once per message on this shard.
        let mut sse = None;
        for (_, &conn) in subs.iter() {
            self.deliver_to(conn, topic, seq, frame, &mut sse);
        }
        if let Some(entry) = self.local.get_mut(&**topic) {
            entry.subs = subs;
        }
    }

    /// One subscriber: the same `Bytes` queued (or, for SSE, the same SSE
    /// event, built once); the slow-consumer policy if it does not fit.
    fn deliver_to(
        &mut self,
        conn: ConnId,
        topic: &Arc<str>,
        seq: u64,
        frame: &Bytes,
        sse: &mut Option<Bytes>,
    ) {
        let conflate = self.limits.slow_consumer == SlowConsumer::Conflate;
        let poll_cap = self.limits.outbox_size;
        let Some(s) = self.sessions.get_mut(conn.idx as usize) else {
            return;
        };
        if s.gen != conn.gen || s.slow {
            return;
        }
        let bytes = match s.transport {
            Transport::Sse => sse
                .get_or_insert_with(|| reply::sse_event(seq, frame))
                .clone(),
            Transport::Poll => {
                // A held long-poll collects what its answer can carry; the
                // client polls on from the last seq for the rest.
                if s.poll_bytes < poll_cap {
                    s.poll_bytes += frame.len();
                    s.poll.push(frame.clone());
                    self.stats.delivered += 1;
                    self.out.push_back(Output::PollReady(conn));
                }
                return;
            }
            _ => frame.clone(),
        };
        match s.outbox.push_message(topic, seq, bytes, conflate) {
            Ok(Pushed::Queued) => {
                self.stats.delivered += 1;
                if s.outbox.take_wake() {
                    self.out.push_back(Output::Wake(conn));
                }
            }
            Ok(Pushed::Held) => self.stats.slow_conflations += 1,
            Err(PushError::Closed) => {}
            Err(PushError::Full) => {
                s.slow = true;
                self.stats.slow_disconnects += 1;
                if s.transport == Transport::WebSocket {
                    // The close goes first: behind a full queue the client
                    // could not read it in time and would see a bare EOF.
                    s.outbox.discard_queued();
                } else {
                    // SSE has no close frame: what is queued is flushed,
                    // then the stream ends.
                    s.outbox.finish();
                }
                s.outbox.take_wake();
                self.out.push_back(Output::SlowClose(conn));
                self.out.push_back(Output::Wake(conn));
            }
        }
    }

    // ---- long-polling -------------------------------------------------------

    /// Whether a held poll has something to answer with.
    pub fn poll_ready(&self, conn: ConnId) -> bool {
        self.session(conn)
            .is_some_and(|s| !s.poll.is_empty() || s.poll_gap.is_some())
    }

    /// What a poll answers with: the `gap` notice (if any) and the
    /// messages collected. The subscription ends with the answer.
    pub fn take_poll(&mut self, conn: ConnId, now: Instant) -> (Option<Bytes>, Vec<Bytes>) {
        self.unsubscribe_all(conn, now);
        let Some(s) = self.session_mut(conn) else {
            return (None, Vec::new());
        };
        s.poll_bytes = 0;
        s.transport = Transport::Plain;
        // Answered: whether or not its subscription went live, the poll no
        // longer waits (its owner's answer, when it comes, is stale).
        s.waiting = false;
        s.incarnation = None;
        (s.poll_gap.take(), std::mem::take(&mut s.poll))
    }

    /// The epoch a poll answer names: the topic's, once its subscription
    /// went live. `None` when the poll ends before that (the owner's answer
    /// had not come): the runtime must not guess one, since a wrong epoch
    /// makes a client drop its place and read the history twice.
    pub fn poll_epoch(&self, conn: ConnId) -> Option<String> {
        let incarnation = self.session(conn)?.incarnation?;
        Some(self.epoch(incarnation))
    }

    // ---- inspection (the simulator, property tests, fuzzing) ---------------

    /// Checks the engine's bookkeeping against what it holds: the gauges in
    /// [`Stats`] (subscriptions, topics, retained bytes), the subscriber
    /// lists against the sessions, the requests in flight, the owner's
    /// limits and eviction order. `Err` says what disagrees. For tests; it
    /// walks everything.
    #[doc(hidden)]
    pub fn audit(&self) -> Result<(), String> {
        self.owner.audit(&self.limits, &self.stats)?;
        let mut live = 0;
        let mut requests = 0;
        for (topic, e) in &self.local {
            if e.subs.is_empty() && e.requests == 0 {
                return Err(format!("local {topic}: no subscriber, no request, kept"));
            }
            if !e.live && !e.subs.is_empty() {
                return Err(format!(
                    "local {topic}: subscribers before the owner's answer"
                ));
            }
            requests += e.requests;
            for (slot, &conn) in e.subs.iter() {
                live += 1;
                let ok = self
                    .session(conn)
                    .and_then(|s| s.sub(topic))
                    .is_some_and(|s| s.state == SubState::Live(slot));
                if !ok {
                    return Err(format!(
                        "local {topic}: slot {slot} -> {conn:?} not its sub"
                    ));
                }
            }
        }
        if self.stats.subscriptions != live as i64 {
            return Err(format!(
                "subscriptions gauge {} but {live} live",
                self.stats.subscriptions
            ));
        }
        let subs_pending = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(p, Pending::Sub { .. }))
            .count();
        if subs_pending != requests {
            return Err(format!(
                "{subs_pending} subscribe requests pending, local entries count {requests}"
            ));
        }
        for (idx, s) in self.sessions.iter() {
            let conn = ConnId {
                idx: idx as u32,
                gen: s.gen,
            };
            if s.subs.len() > self.limits.max_subscriptions {
                return Err(format!("{conn:?}: {} subscriptions", s.subs.len()));
            }
            // The reader waits exactly while a subscription waits for its
            // owner or commands wait their turn.
            let pending = s
                .subs
                .iter()
                .any(|x| matches!(x.state, SubState::Pending(_)));
            if s.waiting != (pending || !s.parked.is_empty()) {
                return Err(format!(
                    "{conn:?}: waiting {} with a subscription pending: {pending}, {} parked",
                    s.waiting,
                    s.parked.len()
                ));
            }
            for (i, sub) in s.subs.iter().enumerate() {
                if s.subs[..i].iter().any(|o| o.topic == sub.topic) {
                    return Err(format!("{conn:?}: {} twice", sub.topic));
                }
                let ok = match sub.state {
                    SubState::Live(slot) => {
                        self.local.get(&sub.topic).and_then(|e| e.subs.get(slot)) == Some(&conn)
                    }
                    SubState::Pending(t) => matches!(
                        self.pending.get(t),
                        Some(Pending::Sub { conn: c, .. }) if *c == conn
                    ),
                };
                if !ok {
                    return Err(format!("{conn:?}: {} {:?} dangling", sub.topic, sub.state));
                }
            }
            for o in &s.owed {
                if let Some(t) = o.token {
                    let ok = matches!(
                        self.pending.get(t),
                        Some(Pending::WsPub { conn: c, .. }) if *c == conn
                    );
                    if !ok {
                        return Err(format!("{conn:?}: owes a reply to a token it has not"));
                    }
                }
            }
        }
        Ok(())
    }

    /// What this shard holds, for checks across shards (which shards an
    /// owner forwards to against which shards have subscribers).
    #[doc(hidden)]
    pub fn inspect(&self) -> Inspect {
        let mut owned: Vec<OwnedTopic> = self
            .owner
            .topics()
            .map(|(name, t)| OwnedTopic {
                topic: name.clone(),
                last_seq: t.log.last_seq(),
                incarnation: t.incarnation(),
                interested: t.interested.clone(),
                retained: t.log.retained().1,
            })
            .collect();
        owned.sort_by(|a, b| a.topic.cmp(&b.topic));
        let mut local: Vec<LocalTopic> = self
            .local
            .iter()
            .map(|(name, e)| LocalTopic {
                topic: name.clone(),
                live: e.live,
                subscribers: e.subs.len(),
                requests: e.requests,
            })
            .collect();
        local.sort_by(|a, b| a.topic.cmp(&b.topic));
        Inspect {
            owned,
            local,
            sessions: self.sessions.len(),
            pending: self.pending.len(),
        }
    }
}

/// A shard's state, as [`Engine::inspect`] reports it.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct Inspect {
    pub owned: Vec<OwnedTopic>,
    pub local: Vec<LocalTopic>,
    /// Open connections.
    pub sessions: usize,
    /// Requests waiting for an owner's answer.
    pub pending: usize,
}

/// A topic this shard owns.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct OwnedTopic {
    pub topic: Arc<str>,
    pub last_seq: u64,
    pub incarnation: u64,
    pub interested: Vec<ShardId>,
    pub retained: usize,
}

/// A topic this shard has subscribers to (or requests for).
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct LocalTopic {
    pub topic: Arc<str>,
    /// The owner has acknowledged this shard's interest.
    pub live: bool,
    pub subscribers: usize,
    pub requests: usize,
}

fn denial(d: Denied, _what: &str, _topic: &str) -> (ErrorCode, String) {
    match d {
        Denied::Unauthorized(why) => (ErrorCode::Unauthorized, why),
        Denied::Forbidden(why) => (ErrorCode::Forbidden, why),
    }
}

fn publish_refusal(code: ErrorCode, topic: &str) -> String {
    match code {
        ErrorCode::Limit => format!("cannot publish to {topic}: too many topics"),
        ErrorCode::Overloaded => format!("cannot publish to {topic} now: the broker is overloaded"),
        _ => format!("cannot publish to {topic}"),
    }
}
