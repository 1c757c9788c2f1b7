//! The shard's [`Handler`]: each connection a small record in a table
//! indexed by the loop's slot, driven by the bytes of `on_data`.
//!
//! A connection is HTTP (accumulating a request head), then either closes
//! after its answer or is kept alive, or upgrades to a WebSocket (`/echo`
//! or `/ws`), or becomes a Server-Sent Events stream. Bytes are parsed
//! straight from the shard's buffer ring; only what is left over (a head
//! or a frame cut across reads, a request pipelined behind one still being
//! answered) is copied into the connection's `stash`, which an idle
//! connection does not have. Every connection is a session of the engine,
//! whose outbox holds what it owes: outbox buffers move into the loop's
//! send queue (`take_batch`) and are accounted as written when the
//! sendmsg completes (`on_sent`).
//!
//! The request handlers live beside this file: `http.rs` (routing and
//! plain answers), `endpoints.rs` (publish, long-poll, SSE), `ws.rs` (the
//! WebSocket endpoints).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use slab::Slab;
use tracing::debug;

use ringcast_core::outbox::State as OutState;
use ringcast_core::wire::reply;
use ringcast_core::{ConnId as EngineId, Engine, Msg, Output};
use ringcast_proto::close::CloseCode;
use ringcast_proto::handshake::StaticPolicy;
use ringcast_proto::http::HeadParser;

use super::endpoints::Body;
use super::table::Table;
use super::ws::Ws;
use crate::config::Config;
use crate::demo::feed::{Feed, STEP};
use crate::metrics::{Kind, ShardMetrics};
use crate::runtime::mesh::Mesh;
use crate::runtime::route::MeshRoute;
use crate::runtime::Shared;
use crate::uring::{Action, CloseReason, ConnId, Handler, Ops};

/// Buffers moved from an outbox into the loop's queue per `take_batch`.
const BATCH: usize = 64;

/// Bytes a client may send ahead of the answers it waits for (requests
/// pipelined behind a held poll, a publish awaiting its seq, or responses
/// it does not read) before the connection stops being read: TCP then
/// pushes back on the client, as a blocking server's would.
pub(super) const PAUSE_AT: usize = 16 * 1024;

/// What may still arrive after the pause (the reads already under way);
/// past it the connection is cut.
const MAX_STASH: usize = 1024 * 1024;

/// Connections past `--max-connections` still get an answer (`/healthz`,
/// or `503` to anything else), up to this many extra; beyond that they
/// wait in the listen backlog.
pub(super) const OVERLOAD_SLACK: usize = 64;

/// How long a connection past the limit has to send its request head
/// (at most; `--handshake-timeout` if shorter).
const OVERLOAD_HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// What a connection is doing.
pub(super) enum Phase {
    /// Reading a request head.
    Http(HeadParser),
    /// Reading the body of `POST /publish/{topic}`.
    Body(Box<Body>),
    /// The engine owes the answer to a request: what arrives meanwhile
    /// waits in the stash.
    Waiting(Wait),
    /// An open WebSocket.
    WebSocket(Box<Ws>),
    /// A Server-Sent Events response is streaming; what arrives is dropped.
    Stream,
    /// Our last bytes are queued; what still arrives is dropped.
    Closing,
}

/// An answer the engine owes an HTTP request.
#[derive(Clone, Copy, Debug)]
pub(super) enum Wait {
    /// `POST /publish`: its seq (`Output::Published`).
    Publish { keep: bool },
    /// A long-poll's subscription (`Output::Resume`).
    Subscribe { keep: bool, hold: Duration },
    /// A long-poll held until a message arrives (`Output::PollReady`) or
    /// `until`.
    Held { keep: bool, until: Instant },
}

pub(super) struct Conn {
    pub(super) id: ConnId,
    pub(super) session: EngineId,
    pub(super) phase: Phase,
    /// Bytes kept between two `on_data`: a head or a frame cut across
    /// reads, or requests pipelined behind an answer not yet given.
    pub(super) stash: Option<BytesMut>,
    /// When the sweep closes the connection regardless (head, close).
    pub(super) deadline: Option<Instant>,
    pub(super) last_rx: Instant,
    pub(super) message_started: Option<Instant>,
    pub(super) ping_sent: bool,
    /// The request being answered is a `HEAD`.
    pub(super) head: bool,
    pub(super) kind: Kind,
    /// The TCP peer, when the per-IP limits need it.
    pub(super) peer: Option<IpAddr>,
    /// The client IP the per-IP limits counted this connection under.
    pub(super) ip: Option<IpAddr>,
    /// Accepted past `--max-connections`: its one request gets `/healthz`
    /// or `503`, then it closes.
    pub(super) over_limit: bool,
    /// The allowed `Origin` of the request being answered: its response
    /// carries the CORS headers.
    pub(super) cors: Option<Box<str>>,
}

/// One shard on the completion loop.
pub struct Serve {
    pub(super) id: usize,
    pub(super) config: Arc<Config>,
    pub(super) shared: Arc<Shared>,
    pub(super) policy: StaticPolicy,
    pub(super) engine: Engine<MeshRoute>,
    mesh: Rc<Mesh<Msg>>,
    /// By the loop's slot.
    pub(super) conns: Table<Option<Conn>>,
    /// The loop's id of each engine session, by session index.
    sessions: Table<Option<ConnId>>,
    /// HTTP publishes waiting for their seq, by the token the engine
    /// echoes in `Output::Published`.
    pub(super) publishes: Slab<ConnId>,
    /// Held long-polls by when they end (stale entries are skipped).
    pub(super) holds: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// `--demo` (shard 0): the simulation and when it next steps.
    feed: Option<(Feed, Instant)>,
    batch: Vec<Bytes>,
    inbox: Vec<Msg>,
    open: usize,
    pub(super) closing: bool,
}

impl Serve {
    pub fn new(
        id: usize,
        config: Arc<Config>,
        shared: Arc<Shared>,
        engine: Engine<MeshRoute>,
        mesh: Rc<Mesh<Msg>>,
    ) -> Serve {
        let feed = (id == 0 && config.demo).then(|| (Feed::new(rand::random()), Instant::now()));
        Serve {
            id,
            policy: StaticPolicy {
                origins: config.allowed_origins.clone(),
                subprotocols: config.subprotocols.clone(),
            },
            config,
            shared,
            engine,
            mesh,
            conns: Table::new(),
            sessions: Table::new(),
            publishes: Slab::new(),
            holds: BinaryHeap::new(),
            feed,
            batch: Vec::new(),
            inbox: Vec::new(),
            open: 0,
            closing: false,
        }
    }

    pub(super) fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics()[self.id]
    }

    /// Connections the handler still knows (not yet `on_close`d).
    pub fn open(&self) -> usize {
        self.open
    }

    /// When the shard next has timed work of its own (the engine's
    /// history expiry, a held poll's end, the demo's next step); the
    /// periodic sweep comes on top.
    pub fn deadline(&self) -> Option<Instant> {
        let hold = self.holds.peek().map(|Reverse((t, _, _))| *t);
        let feed = self.feed.as_ref().map(|(_, t)| *t);
        [self.engine.poll_timeout(), hold, feed]
            .into_iter()
            .flatten()
            .min()
    }

    pub(super) fn conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        slot(&mut self.conns, id)
    }

    pub(super) fn set_kind(&mut self, id: ConnId, kind: Kind) {
        let shard = self.id;
        let Some(c) = slot(&mut self.conns, id) else {
            return;
        };
        let old = std::mem::replace(&mut c.kind, kind);
        let m = &self.shared.metrics()[shard];
        m.connection(old).dec();
        m.connection(kind).inc();
    }

    /// Moves what the connection's outbox holds into the loop's queue, and
    /// closes the connection once a finished outbox is empty.
    pub(super) fn flush(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        let Some(session) = self.conn(id).map(|c| c.session) else {
            return;
        };
        loop {
            let state = self.engine.take_batch(session, &mut self.batch, BATCH);
            // Fewer than asked: the outbox is drained (no second call per
            // wake-up, which is once per delivery on a fan-out).
            let drained = self.batch.len() < BATCH;
            for b in self.batch.drain(..) {
                ops.send(id, b);
            }
            if drained {
                if state != OutState::Open {
                    // After what was just queued.
                    ops.close(id);
                }
                return;
            }
        }
    }

    fn flush_session(&mut self, ops: &mut Ops<'_>, session: EngineId) {
        if let Some(id) = self.loop_id(session) {
            self.flush(ops, id);
        }
    }

    pub(super) fn loop_id(&self, s: EngineId) -> Option<ConnId> {
        self.sessions.get(s.index()).copied().flatten()
    }

    /// Closes at once, dropping what is queued: a peer that does not read
    /// even its replies.
    pub(super) fn drop_conn(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        debug!(
            shard = self.id,
            "peer does not read its replies; dropping it"
        );
        if let Some(session) = self.conn(id).map(|c| c.session) {
            if let Some(o) = self.engine.outbox(session) {
                o.close();
            }
        }
        ops.close(id);
    }

    /// Carries out what the engine asked for.
    pub fn run_outputs(&mut self, ops: &mut Ops<'_>) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Wake(s) => self.flush_session(ops, s),
                Output::Resume(s) => {
                    if let Some(id) = self.loop_id(s) {
                        self.resume(ops, id);
                    }
                }
                Output::Drop(s) => {
                    if let Some(id) = self.loop_id(s) {
                        self.drop_conn(ops, id);
                    }
                }
                Output::SlowClose(s) => {
                    if let Some(id) = self.loop_id(s) {
                        debug!(shard = self.id, "slow consumer disconnected");
                        self.start_close(ops, id, CloseCode::POLICY, "slow consumer");
                    }
                }
                Output::Close { conn, code, reason } => {
                    if let Some(id) = self.loop_id(conn) {
                        debug!(shard = self.id, code, reason, "access close");
                        self.start_close(ops, id, CloseCode(code), reason);
                    }
                }
                Output::PollReady(s) => {
                    if let Some(id) = self.loop_id(s) {
                        self.poll_ready(ops, id);
                    }
                }
                Output::Published { token, result } => {
                    if let Some(id) = self.publishes.try_remove(token as usize) {
                        self.published(ops, id, result);
                    }
                }
            }
        }
    }

    /// The engine lets a connection go on: a WebSocket's next command, or
    /// the rest of an SSE or long-poll request once it is subscribed.
    fn resume(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        let Some(c) = self.conn(id) else { return };
        match c.phase {
            Phase::WebSocket(_) => self.run_waiting(ops, id),
            Phase::Stream => self.sse_subscribed(ops, id),
            Phase::Waiting(Wait::Subscribe { keep, hold }) => {
                self.poll_subscribed(ops, id, keep, hold)
            }
            _ => {}
        }
    }

    /// Starts the closing handshake from our side (a WebSocket), or ends an
    /// HTTP connection or a stream after what it owes.
    pub(super) fn start_close(
        &mut self,
        ops: &mut Ops<'_>,
        id: ConnId,
        code: CloseCode,
        reason: &str,
    ) {
        let close_timeout = self.config.close_timeout;
        let Some(c) = slot(&mut self.conns, id) else {
            return;
        };
        c.deadline = Some(Instant::now() + close_timeout);
        match &mut c.phase {
            Phase::WebSocket(ws) => {
                ws.ws.close(code, reason);
                self.protocol_output(ops, id);
            }
            Phase::Http(_) | Phase::Body(_) | Phase::Stream | Phase::Closing => {
                self.finish(ops, id);
            }
            // The answer owed goes first; the deadline ends it otherwise.
            Phase::Waiting(_) => {}
        }
    }

    /// Ends the connection once what is queued is sent.
    pub(super) fn finish(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        let (close_timeout, shard) = (self.config.close_timeout, self.id);
        let Some(c) = slot(&mut self.conns, id) else {
            return;
        };
        if let Phase::WebSocket(ws) = std::mem::replace(&mut c.phase, Phase::Closing) {
            if let Some(code) = ws.ws.close_sent() {
                self.shared.metrics()[shard].close_sent(code);
            }
        }
        c.deadline = Some(Instant::now() + close_timeout);
        c.stash = None;
        let session = c.session;
        if let Some(o) = self.engine.outbox(session) {
            o.finish();
        }
        self.flush(ops, id);
    }

    /// Moves the mesh's messages for this shard into the engine, carries
    /// out what they asked for, sends this turn's messages for other
    /// shards (one batch and at most one wake-up per destination) and
    /// copies the engine's counters into the metrics block.
    pub fn after_turn(&mut self, ops: &mut Ops<'_>) {
        let now = Instant::now();
        let mut inbox = std::mem::take(&mut self.inbox);
        while self.mesh.try_recv(&mut inbox) {
            for msg in inbox.drain(..) {
                self.engine.handle(msg, now);
            }
            self.run_outputs(ops);
        }
        self.inbox = inbox;
        self.run_outputs(ops);
        self.mesh.flush_now();
        self.sync_metrics();
    }

    /// Copies the engine's counters into this shard's metrics block.
    fn sync_metrics(&self) {
        let s = self.engine.stats();
        let m = self.metrics();
        m.published.set(s.published);
        m.delivered.set(s.delivered);
        m.subscriptions.set(s.subscriptions);
        m.topics.set(s.topics);
        m.retained_bytes.set(s.retained_bytes);
        m.slow_disconnects.set(s.slow_disconnects);
        m.slow_conflations.set(s.slow_conflations);
        m.overloaded.set(s.overloaded);
        m.deliveries_dropped.set(s.deliveries_dropped);
        m.history_evicted.set(s.history_evicted);
        m.history_expired.set(s.history_expired);
        m.denied.set(s.denied);
        m.auth_failures.set(s.auth_failures);
        m.rate_limited.set(s.rate_limited);
    }

    /// Timed work: held polls that reached their end, the demo's steps,
    /// and (when `sweep` is set) deadlines, keep-alive pings, idle and
    /// message timeouts and history expiry: one pass over the table, no
    /// timer per connection.
    pub fn timers(&mut self, ops: &mut Ops<'_>, now: Instant, sweep: bool) {
        while let Some(&Reverse((t, slot, gen))) = self.holds.peek() {
            if t > now {
                break;
            }
            self.holds.pop();
            if let Some(id) = self.held_conn(slot, gen, t) {
                self.answer_poll(ops, id);
            }
        }
        self.step_demo(now);
        self.engine.handle_timeout(now);
        self.run_outputs(ops);
        if sweep {
            self.sweep(ops, now);
        }
    }

    /// The connection a hold entry names, if it is still held until `t`.
    fn held_conn(&mut self, slot: u32, gen: u32, t: Instant) -> Option<ConnId> {
        let c = self.conns.get(slot as usize)?.as_ref()?;
        let held = matches!(c.phase, Phase::Waiting(Wait::Held { until, .. }) if until == t);
        (c.id.generation() == gen && held).then_some(c.id)
    }

    /// `--demo`: publishes the simulation's updates every [`STEP`], on the
    /// broker's internal path (the engine's publish, as `POST /publish`
    /// does): the demo costs no socket and exercises the real fan-out.
    fn step_demo(&mut self, now: Instant) {
        let Some((feed, next)) = &mut self.feed else {
            return;
        };
        if now < *next || self.closing {
            return;
        }
        *next = (*next + STEP).max(now);
        for update in feed.step() {
            // Fire and forget: a refusal (a tiny --max-topics, an
            // overloaded owner) just means the page shows nothing new.
            let _ = self
                .engine
                .publish(update.topic, Bytes::from(update.data), None, now);
        }
    }

    fn sweep(&mut self, ops: &mut Ops<'_>, now: Instant) {
        let cfg = self.config.clone();
        for slot in 0..self.conns.capacity() {
            let Some(c) = self.conns.entry(slot).as_mut() else {
                continue;
            };
            let id = c.id;
            if let Some(deadline) = c.deadline {
                if now >= deadline {
                    debug!(shard = self.id, "deadline passed");
                    c.deadline = None;
                    let session = c.session;
                    if let Some(o) = self.engine.outbox(session) {
                        o.close();
                    }
                    ops.close(id);
                }
                continue;
            }
            match c.phase {
                Phase::Stream => {
                    // SSE: a comment now and then keeps proxies from
                    // timing out.
                    if now.saturating_duration_since(c.last_rx) >= cfg.ping_interval {
                        c.last_rx = now;
                        let session = c.session;
                        if let Some(o) = self.engine.outbox(session) {
                            let _ = o.try_push(Bytes::from_static(reply::SSE_HEARTBEAT));
                        }
                        self.flush(ops, id);
                    }
                    continue;
                }
                Phase::WebSocket(_) => {}
                _ => continue,
            }
            if let Some(started) = c.message_started {
                if now.saturating_duration_since(started) >= cfg.message_timeout {
                    debug!(shard = self.id, "message timeout");
                    c.message_started = None;
                    self.start_close(ops, id, CloseCode::POLICY, "message timeout");
                    continue;
                }
            }
            let quiet = now.saturating_duration_since(c.last_rx);
            if quiet >= cfg.idle_timeout {
                debug!(shard = self.id, "idle timeout");
                self.start_close(ops, id, CloseCode::GOING_AWAY, "idle timeout");
            } else if quiet >= cfg.ping_interval && !c.ping_sent {
                c.ping_sent = true;
                if let Phase::WebSocket(ws) = &mut c.phase {
                    ws.ws.ping(b"");
                }
                self.protocol_output(ops, id);
            }
        }
    }

    /// Shutdown: every WebSocket gets close 1001, a held poll answers with
    /// what it has, a publish in flight gets its response, every other
    /// connection ends after what it owes; all within `--shutdown-grace`.
    pub fn begin_shutdown(&mut self, ops: &mut Ops<'_>) {
        self.closing = true;
        self.feed = None;
        let grace = Instant::now() + self.config.shutdown_grace;
        let ids: Vec<ConnId> = self.conns.iter().flatten().map(|c| c.id).collect();
        for id in ids {
            let held = self
                .conn(id)
                .is_some_and(|c| matches!(c.phase, Phase::Waiting(Wait::Held { .. })));
            if held {
                self.answer_poll(ops, id);
            } else {
                self.start_close(ops, id, CloseCode::GOING_AWAY, "server shutting down");
            }
            if let Some(c) = self.conn(id) {
                c.deadline = Some(grace);
            }
        }
    }

    /// Past the grace period: every connection is cut.
    pub fn abort_all(&mut self, ops: &mut Ops<'_>) {
        let ids: Vec<ConnId> = self.conns.iter().flatten().map(|c| c.id).collect();
        for id in ids {
            ops.close(id);
        }
    }

    /// Feeds what waited in the stash, once the connection can take it (a
    /// response was queued and the connection is reading requests again).
    pub(super) fn feed_stash(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        let Some(c) = self.conn(id) else { return };
        if !matches!(c.phase, Phase::Http(_)) {
            return;
        }
        let Some(buf) = c.stash.take() else { return };
        let rest = self.feed(ops, id, buf);
        if rest.len() < PAUSE_AT {
            ops.resume_recv(id);
        }
        self.keep_rest(ops, id, rest);
    }

    /// Stashes what `feed` left, within [`MAX_STASH`] unless it is part
    /// of a WebSocket frame (bounded by the frame limits).
    fn keep_rest(&mut self, ops: &mut Ops<'_>, id: ConnId, rest: BytesMut) {
        let Some(c) = self.conn(id) else { return };
        if rest.is_empty() {
            return;
        }
        let pipelined = !matches!(c.phase, Phase::WebSocket(_) | Phase::Body(_));
        if pipelined && rest.len() > MAX_STASH {
            debug!("too much pipelined ahead of an answer; closing");
            ops.close(id);
            return;
        }
        if pipelined && rest.len() >= PAUSE_AT {
            ops.pause_recv(id);
        }
        c.stash = Some(rest);
    }
}

impl Handler for Serve {
    fn on_open(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        let now = Instant::now();
        self.metrics().accepted.inc();
        self.metrics().connection(Kind::Http).inc();
        let grant = self.engine.anonymous_grant();
        let session = self.engine.open(grant);
        let slot = id.slot() as usize;
        *self.sessions.entry(session.index()) = Some(id);
        // Over the limit (within the loop's slack): one request is read,
        // in a short time, and answered.
        let over_limit = self.open >= self.config.max_connections;
        let head_time = if over_limit {
            debug!(shard = self.id, "connection limit reached");
            self.config.handshake_timeout.min(OVERLOAD_HEAD_TIMEOUT)
        } else {
            self.config.handshake_timeout
        };
        *self.conns.entry(slot) = Some(Conn {
            id,
            session,
            phase: Phase::Http(HeadParser::new()),
            stash: None,
            deadline: Some(now + head_time),
            last_rx: now,
            message_started: None,
            ping_sent: false,
            head: false,
            kind: Kind::Http,
            peer: ops.opening_peer().map(|a| a.ip()),
            ip: None,
            over_limit,
            cors: None,
        });
        self.open += 1;
        if self.closing {
            ops.close(id);
        }
    }

    fn on_data(&mut self, ops: &mut Ops<'_>, id: ConnId, bytes: &[u8]) -> Action {
        self.metrics().bytes_in.add(bytes.len() as u64);
        let Some(c) = slot(&mut self.conns, id) else {
            return Action::Continue;
        };
        c.last_rx = Instant::now();
        c.ping_sent = false;
        match c.phase {
            Phase::Closing | Phase::Stream => return Action::Continue,
            Phase::Waiting(_) => {
                // The answer owed goes first; what follows waits.
                let mut s = c.stash.take().unwrap_or_default();
                s.extend_from_slice(bytes);
                self.keep_rest(ops, id, s);
                return Action::Continue;
            }
            _ => {}
        }
        let buf = match c.stash.take() {
            Some(mut s) => {
                s.extend_from_slice(bytes);
                s
            }
            None => BytesMut::from(bytes),
        };
        let rest = self.feed(ops, id, buf);
        self.keep_rest(ops, id, rest);
        Action::Continue
    }

    fn on_sent(&mut self, ops: &mut Ops<'_>, id: ConnId, bytes: usize) {
        self.metrics().bytes_out.add(bytes as u64);
        let Some(session) = slot(&mut self.conns, id).map(|c| c.session) else {
            return;
        };
        self.engine.written(session, bytes);
        // Room was made: held (conflated) messages, waiting commands and
        // pipelined requests may go on.
        self.flush(ops, id);
        self.run_waiting(ops, id);
        self.feed_stash(ops, id);
    }

    fn on_close(&mut self, id: ConnId, why: CloseReason) {
        let slot = id.slot() as usize;
        let Some(c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if c.id != id {
            *self.conns.entry(slot) = Some(c);
            return;
        }
        debug!(shard = self.id, ?why, kind = ?c.kind, "closed");
        let m = &self.shared.metrics()[self.id];
        m.connection(c.kind).dec();
        match &c.phase {
            Phase::WebSocket(ws) => {
                if let Some(code) = ws.ws.close_sent() {
                    m.close_sent(code);
                }
            }
            Phase::Waiting(Wait::Held { .. }) => m.polls_held.dec(),
            _ => {}
        }
        let now = Instant::now();
        if let Some(ip) = c.ip {
            self.shared.ip_limits().end(ip, now);
        }
        *self.sessions.entry(c.session.index()) = None;
        self.engine.close(c.session, now);
        self.open -= 1;
        // What the close released (a subscription's fan-out) may have
        // asked for something; the next entry point carries it out.
    }

    fn on_eof(&mut self, ops: &mut Ops<'_>, id: ConnId) -> Action {
        let Some(c) = slot(&mut self.conns, id) else {
            return Action::Close;
        };
        // An answer still owed goes out, and is the connection's last: a
        // held poll answers now with what it has (and its hold is freed at
        // once, not at `timeout_ms`); a publish or a poll's subscription
        // answers when the engine does.
        match &mut c.phase {
            Phase::Waiting(Wait::Held { keep, .. }) => {
                *keep = false;
                self.answer_poll(ops, id);
                Action::Close
            }
            Phase::Waiting(Wait::Publish { keep } | Wait::Subscribe { keep, .. }) => {
                *keep = false;
                c.stash = None;
                Action::Continue
            }
            _ => Action::Close,
        }
    }

    fn on_wake(&mut self, _ops: &mut Ops<'_>) {
        // The mesh's messages are taken after every turn (`after_turn`).
    }
}

/// The connection in `id`'s slot, if it is still `id`'s.
pub(super) fn slot(conns: &mut Table<Option<Conn>>, id: ConnId) -> Option<&mut Conn> {
    conns
        .get_mut(id.slot() as usize)
        .and_then(Option::as_mut)
        .filter(|c| c.id == id)
}

#[cfg(test)]
mod tests {
    /// What the handler keeps for every connection (the per-connection
    /// byte budget in docs/benchmarks.md counts these): a record in the
    /// table, and for a WebSocket a boxed state machine. A field added
    /// here is paid by every idle connection.
    #[test]
    fn a_connection_record_stays_small() {
        let conn = std::mem::size_of::<super::Conn>();
        let ws = std::mem::size_of::<super::Ws>();
        assert!(conn <= 176, "Conn is {conn} bytes");
        assert!(ws <= 152, "Ws is {ws} bytes");
    }
}
