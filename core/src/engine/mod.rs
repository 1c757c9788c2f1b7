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
mod cluster;
mod delivery;
mod inspect;
mod subscribe;

pub use inspect::{Inspect, LocalTopic, OwnedTopic};

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
use crate::table::ChunkSlab;
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
    epoch: Arc<str>,
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
    /// In a cluster: the backend's place on the route, and the streams
    /// this shard mirrors (its `owner` is then unused).
    backend: Option<ShardId>,
    mirrors: crate::mirror::Mirrors,
    local: HashMap<Arc<str>, Local, RandomState>,
    /// Grown by chunks, never copied (see `table`).
    sessions: ChunkSlab<Session>,
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
            owner: Owner::new(Arc::from(epoch)),
            backend: None,
            mirrors: Default::default(),
            local: HashMap::default(),
            sessions: ChunkSlab::new(),
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
        crate::owner::epoch_of(&self.epoch, incarnation).to_string()
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
        session_in(&self.sessions, conn)
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
            if s.parked() < 2 {
                s.pipeline().parked.push_back(payload.clone());
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
        let owed = s.owed();
        if owed != 0 && (!publish || owed >= max_owed) {
            // Its reply would overtake the ones owed (or too many are
            // owed): it runs once they are out, first of those parked.
            s.pipeline().parked.push_front(payload);
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
        if s.owed() == 0 {
            return self.reply(conn, frame);
        }
        s.pipeline().owed.push_back(Owed {
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
            let ready = s
                .pipeline_mut()
                .and_then(|p| p.owed.front_mut())
                .and_then(|o| o.reply.take());
            if let Some(frame) = ready {
                s.pipeline().owed.pop_front();
                s.tidy_pipeline();
                self.reply(conn, frame);
                continue;
            }
            if s.owed() != 0 {
                return;
            }
            let parked = s.pipeline_mut().and_then(|p| p.parked.pop_front());
            s.tidy_pipeline();
            let Some(parked) = parked else {
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
            if s.parked() == 0 {
                self.out.push_back(Output::Resume(conn));
                return;
            }
            // More wait their turn: the reader still waits.
            s.waiting = true;
        }
    }

    // ---- publishing ---------------------------------------------------------

    fn publish_ws(&mut self, conn: ConnId, topic: String, data: Bytes, id: Option<Id>) {
        // Through the field, not `self.session`: `auth` and `stats` are
        // used beside it.
        let Some(s) = session_in(&self.sessions, conn) else {
            return;
        };
        if let Err(d) = self.auth.publish(s.grant(), &topic) {
            self.stats.denied += 1;
            let (code, msg) = denial(d);
            return self.reply_in_order(conn, reply::error(code, &msg, &id));
        }
        let subject = s.grant().subject.clone();
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
        let dst = self.publish_target(&topic);
        let msg = Msg::Publish {
            topic: topic.clone(),
            data,
            ack,
        };
        if self.send_bounded(dst, msg).is_err() {
            if let Some(t) = token {
                self.pending.remove(t);
            }
            self.stats.overloaded += 1;
            let msg = format!("cannot publish to {topic} now: the broker is overloaded");
            return self.reply_in_order(conn, reply::error(ErrorCode::Overloaded, &msg, &id));
        }
        if let (Some(token), Some(s)) = (token, self.session_mut(conn)) {
            s.pipeline().owed.push_back(Owed {
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
            return Err((denial(d).0, None));
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
        let dst = self.publish_target(&topic);
        let result = self.send_bounded(dst, Msg::Publish { topic, data, ack });
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
                let slot = s
                    .pipeline_mut()
                    .and_then(|p| p.owed.iter_mut().find(|o| o.token == Some(token)));
                if let Some(o) = slot {
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
        if let Some(backend) = self.backend {
            match msg {
                Msg::Subscribe {
                    topic,
                    from,
                    token,
                    since,
                } => {
                    let waiter = crate::mirror::Waiter { from, token, since };
                    return self.mirror_subscribe(backend, topic, waiter);
                }
                Msg::Unsubscribe { topic, from } => {
                    return self.mirror_unsubscribe(backend, topic, from)
                }
                Msg::Remote {
                    topic,
                    epoch,
                    seq,
                    data,
                } => return self.mirror_remote(backend, topic, epoch, seq, data, now),
                Msg::Head { topic, result } => {
                    return self.mirror_head(backend, topic, result, now)
                }
                other => return self.dispatch_local(other, now),
            }
        }
        self.dispatch_local(msg, now)
    }

    /// What every shard handles alike, and an owner's work on one node.
    fn dispatch_local(&mut self, msg: Msg, now: Instant) {
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
            Msg::Reset {
                topic,
                epoch,
                last_seq,
            } => self.local_reset(&topic, epoch, last_seq),
            // For the backend, or from it to a cluster owner: a shard of
            // one node never gets these.
            Msg::Watch { .. }
            | Msg::Unwatch { .. }
            | Msg::Fetch { .. }
            | Msg::Remote { .. }
            | Msg::Head { .. } => debug_assert!(false, "not for a shard: {msg:?}"),
        }
    }

    fn owner_publish(&mut self, topic: Arc<str>, data: Bytes, ack: Ack, now: Instant) {
        let result = self
            .owner
            .publish(&topic, &data, &self.limits, now, &mut self.stats);
        let seq = match result {
            Ok((seq, frame, interested)) => {
                self.stats.published += 1;
                self.forward(&topic, seq, &frame, &interested);
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

    /// Sends a message's frame to the shards with subscribers.
    fn forward(&mut self, topic: &Arc<str>, seq: u64, frame: &Bytes, to: &[ShardId]) {
        for &dst in to {
            let msg = Msg::Deliver {
                topic: topic.clone(),
                seq,
                frame: frame.clone(),
            };
            if self.send_bounded(dst, msg).is_err() {
                // Its subscribers hear of it with the next message that
                // gets through (`skipped`).
                self.stats.deliveries_dropped += 1;
            }
        }
    }

    // ---- long-polling -------------------------------------------------------

    /// Whether a held poll has something to answer with.
    pub fn poll_ready(&self, conn: ConnId) -> bool {
        self.session(conn)
            .and_then(Session::poll_ref)
            .is_some_and(|p| !p.messages.is_empty() || p.gap.is_some())
    }

    /// What a poll answers with: the `gap` notice (if any) and the
    /// messages collected. The subscription ends with the answer.
    pub fn take_poll(&mut self, conn: ConnId, now: Instant) -> (Option<Bytes>, Vec<Bytes>) {
        self.unsubscribe_all(conn, now);
        let Some(s) = self.session_mut(conn) else {
            return (None, Vec::new());
        };
        s.transport = Transport::Plain;
        // Answered: whether or not its subscription went live, the poll no
        // longer waits (its owner's answer, when it comes, is stale).
        s.waiting = false;
        match s.take_poll() {
            Some(p) => (p.gap, p.messages),
            None => (None, Vec::new()),
        }
    }

    /// The epoch a poll answer names: the topic's, once its subscription
    /// went live. `None` when the poll ends before that (the owner's answer
    /// had not come): the runtime must not guess one, since a wrong epoch
    /// makes a client drop its place and read the history twice.
    pub fn poll_epoch(&self, conn: ConnId) -> Option<String> {
        Some(
            self.session(conn)?
                .poll_ref()?
                .epoch
                .as_deref()?
                .to_string(),
        )
    }
}
/// A connection's session in `sessions`, if it is still that connection.
fn session_in(sessions: &ChunkSlab<Session>, conn: ConnId) -> Option<&Session> {
    sessions
        .get(conn.idx as usize)
        .filter(|s| s.gen == conn.gen)
}

fn denial(d: Denied) -> (ErrorCode, String) {
    match d {
        Denied::Unauthorized(why) => (ErrorCode::Unauthorized, why),
        Denied::Forbidden(why) => (ErrorCode::Forbidden, why),
    }
}

fn publish_refusal(code: ErrorCode, topic: &str) -> String {
    match code {
        ErrorCode::Limit => format!("cannot publish to {topic}: too many topics"),
        ErrorCode::Overloaded => format!("cannot publish to {topic} now: the broker is overloaded"),
        ErrorCode::Unavailable => {
            format!("cannot publish to {topic} now: the cluster backend is unavailable")
        }
        _ => format!("cannot publish to {topic}"),
    }
}
