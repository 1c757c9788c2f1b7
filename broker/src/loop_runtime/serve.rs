//! The shard's [`Handler`]: each connection a small record in a table
//! indexed by the loop's slot, driven by the bytes of `on_data`.
//!
//! A connection is HTTP (accumulating a request head), then either closes
//! after its answer or is kept alive, or upgrades to a WebSocket (`/echo`
//! or `/ws`). Bytes are parsed straight from the shard's buffer ring; only
//! what is left over (a head or a frame cut across reads) is copied into
//! the connection's `stash`, which an idle connection does not have. Every
//! connection is a session of the engine, whose outbox holds what it owes:
//! outbox buffers move into the loop's send queue (`take_batch`) and are
//! accounted as written when the sendmsg completes (`on_sent`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tracing::debug;

use ringcast_core::outbox::{PushError, State as OutState};
use ringcast_core::wire::command::ErrorCode;
use ringcast_core::wire::reply;
use ringcast_core::{ConnId as EngineId, Engine, Msg, Output, Route, ShardId, Transport};
use ringcast_proto::close::CloseCode;
use ringcast_proto::frame::OpCode;
use ringcast_proto::handshake::{self, StaticPolicy};
use ringcast_proto::http::{find_head_end, response, HeadParser, Request};
use ringcast_proto::websocket::{Event, Role, WebSocket};

use crate::config::Config;
use crate::error::HttpError;
use crate::metrics::{Kind, ShardMetrics};
use crate::runtime::access::{self, Origin};
use crate::runtime::Shared;
use crate::uring::{Action, CloseReason, ConnId, Handler, Ops};

/// Buffers moved from an outbox into the loop's queue per `take_batch`.
const BATCH: usize = 64;

/// Commands a `/ws` client may have waiting while the engine holds its
/// previous one (the old runtime stops reading instead; this loop reads
/// on, so it bounds what it keeps). Past it: close 1008.
const MAX_WAITING_COMMANDS: usize = 64;

/// The engine's route with one shard: every message is for this shard and
/// travels the engine's own inbox, so nothing ever reaches the route.
pub struct OneShard;

impl Route for OneShard {
    fn try_send(&mut self, _dst: ShardId, msg: Msg) -> Result<(), Msg> {
        debug_assert!(false, "one shard: no message leaves it");
        Err(msg)
    }

    fn send(&mut self, _dst: ShardId, _msg: Msg) {
        debug_assert!(false, "one shard: no message leaves it");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Echo,
    PubSub,
}

struct Ws {
    ws: WebSocket,
    endpoint: Endpoint,
    /// `/ws` commands read while the engine waits on an earlier one.
    waiting: VecDeque<Bytes>,
}

enum Phase {
    /// Reading a request head.
    Http(HeadParser),
    WebSocket(Box<Ws>),
    /// Our last bytes are queued; what still arrives is dropped.
    Closing,
}

struct Conn {
    id: ConnId,
    session: EngineId,
    phase: Phase,
    /// A head or a frame cut across reads: the only bytes a connection
    /// keeps between two `on_data`.
    stash: Option<BytesMut>,
    /// When the sweep closes the connection regardless (head, close).
    deadline: Option<Instant>,
    last_rx: Instant,
    message_started: Option<Instant>,
    ping_sent: bool,
    /// The request being answered is a `HEAD`.
    head: bool,
    kind: Kind,
}

/// One shard on the completion loop.
pub struct Serve {
    config: Arc<Config>,
    shared: Arc<Shared>,
    policy: StaticPolicy,
    engine: Engine<OneShard>,
    /// By the loop's slot.
    conns: Vec<Option<Conn>>,
    /// The loop's id of each engine session, by session index.
    sessions: Vec<Option<ConnId>>,
    batch: Vec<Bytes>,
    open: usize,
    closing: bool,
}

impl Serve {
    pub fn new(config: Arc<Config>, shared: Arc<Shared>, engine: Engine<OneShard>) -> Serve {
        Serve {
            policy: StaticPolicy {
                origins: config.allowed_origins.clone(),
                subprotocols: config.subprotocols.clone(),
            },
            config,
            shared,
            engine,
            conns: Vec::new(),
            sessions: Vec::new(),
            batch: Vec::new(),
            open: 0,
            closing: false,
        }
    }

    fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics()[0]
    }

    /// Connections the handler still knows (not yet `on_close`d).
    pub fn open(&self) -> usize {
        self.open
    }

    /// When the engine next has timed work.
    pub fn engine_deadline(&self) -> Option<Instant> {
        self.engine.poll_timeout()
    }

    fn set_kind(&mut self, id: ConnId, kind: Kind) {
        let Some(c) = slot(&mut self.conns, id) else {
            return;
        };
        let old = std::mem::replace(&mut c.kind, kind);
        let m = &self.shared.metrics()[0];
        m.connection(old).dec();
        m.connection(kind).inc();
    }

    /// Moves what the connection's outbox holds into the loop's queue, and
    /// closes the connection once a finished outbox is empty.
    fn flush(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        let Some(session) = self
            .conns
            .get(id.slot() as usize)
            .and_then(Option::as_ref)
            .filter(|c| c.id == id)
            .map(|c| c.session)
        else {
            return;
        };
        loop {
            let state = self.engine.take_batch(session, &mut self.batch, BATCH);
            if self.batch.is_empty() {
                if state != OutState::Open {
                    ops.close(id);
                }
                return;
            }
            for b in self.batch.drain(..) {
                ops.send(id, b);
            }
        }
    }

    fn flush_session(&mut self, ops: &mut Ops<'_>, session: EngineId) {
        if let Some(id) = self.sessions.get(session.index()).copied().flatten() {
            self.flush(ops, id);
        }
    }

    /// Carries out what the engine asked for.
    pub fn run_outputs(&mut self, ops: &mut Ops<'_>) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Wake(s) => self.flush_session(ops, s),
                Output::Resume(s) => {
                    if let Some(id) = self.loop_id(s) {
                        self.run_waiting(ops, id);
                    }
                }
                Output::Drop(s) => {
                    if let Some(id) = self.loop_id(s) {
                        debug!("peer does not read its replies; dropping it");
                        if let Some(o) = self.engine.outbox(s) {
                            o.close();
                        }
                        ops.close(id);
                    }
                }
                Output::SlowClose(s) => {
                    if let Some(id) = self.loop_id(s) {
                        debug!("slow consumer disconnected");
                        self.start_close(ops, id, CloseCode::POLICY, "slow consumer");
                    }
                }
                Output::Close { conn, code, reason } => {
                    if let Some(id) = self.loop_id(conn) {
                        self.start_close(ops, id, CloseCode(code), reason);
                    }
                }
                // No long-polls and no HTTP publishes on this runtime yet.
                Output::PollReady(_) | Output::Published { .. } => {}
            }
        }
    }

    fn loop_id(&self, s: EngineId) -> Option<ConnId> {
        self.sessions.get(s.index()).copied().flatten()
    }

    /// Starts the closing handshake from our side (a WebSocket), or ends an
    /// HTTP connection after what it owes.
    fn start_close(&mut self, ops: &mut Ops<'_>, id: ConnId, code: CloseCode, reason: &str) {
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
            _ => {
                let session = c.session;
                c.phase = Phase::Closing;
                if let Some(o) = self.engine.outbox(session) {
                    o.finish();
                }
                self.flush(ops, id);
            }
        }
    }

    /// Queues the protocol's own frames (pong, close) behind the data;
    /// a peer that lets even those pile up is cut off.
    fn protocol_output(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        let Some(c) = slot(&mut self.conns, id) else {
            return;
        };
        let session = c.session;
        let out = match &mut c.phase {
            Phase::WebSocket(ws) => ws.ws.take_output(),
            _ => None,
        };
        if let Some(out) = out {
            let refused = self
                .engine
                .outbox(session)
                .is_some_and(|o| o.push_control(out) == Err(PushError::Full));
            if refused {
                debug!("peer does not read its replies; dropping it");
                if let Some(o) = self.engine.outbox(session) {
                    o.close();
                }
                ops.close(id);
                return;
            }
        }
        self.flush(ops, id);
    }

    /// Hands the engine the `/ws` commands that waited, while it takes them.
    fn run_waiting(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        loop {
            let Some(c) = slot(&mut self.conns, id) else {
                return;
            };
            let session = c.session;
            let Phase::WebSocket(ws) = &mut c.phase else {
                return;
            };
            if ws.waiting.is_empty()
                || self.engine.is_waiting(session)
                || !self
                    .engine
                    .outbox(session)
                    .is_none_or(|o| o.can_take_command())
            {
                return;
            }
            let p = ws.waiting.pop_front().expect("checked");
            self.engine.command(session, &p, Instant::now());
            self.run_outputs(ops);
        }
    }

    /// Queues an HTTP response (head only for `HEAD`) and what follows it.
    fn respond(&mut self, ops: &mut Ops<'_>, id: ConnId, keep: bool, status: u16, body: &[u8]) {
        let connection = if keep { "keep-alive" } else { "close" };
        let headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Connection", connection),
        ];
        let resp = response(status, &headers, body);
        self.queue_response(ops, id, resp, keep);
    }

    fn queue_response(&mut self, ops: &mut Ops<'_>, id: ConnId, resp: Bytes, keep: bool) {
        let (handshake_timeout, close_timeout) =
            (self.config.handshake_timeout, self.config.close_timeout);
        let Some(c) = slot(&mut self.conns, id) else {
            return;
        };
        let resp = if c.head {
            let end = find_head_end(&resp, 0).unwrap_or(resp.len());
            resp.slice(..end)
        } else {
            resp
        };
        let session = c.session;
        let now = Instant::now();
        if keep {
            c.phase = Phase::Http(HeadParser::new());
            c.deadline = Some(now + handshake_timeout);
        } else {
            c.phase = Phase::Closing;
            c.deadline = Some(now + close_timeout);
        }
        if let Some(o) = self.engine.outbox(session) {
            let _ = o.push_response(resp);
            if !keep {
                o.finish();
            }
        }
        self.flush(ops, id);
    }

    fn reject(&mut self, ops: &mut Ops<'_>, id: ConnId, e: HttpError) {
        debug!(error = %e, "request rejected");
        self.metrics().http_error(e);
        self.queue_response(ops, id, e.to_response(), false);
    }

    /// Routes one request head; the connection's phase says what follows.
    fn route(&mut self, ops: &mut Ops<'_>, id: ConnId, req: Request) {
        let keep = if req.version >= 1 {
            !req.has_token("connection", "close")
        } else {
            req.has_token("connection", "keep-alive")
        };
        let keep = keep && !self.closing;
        if let Some(c) = slot(&mut self.conns, id) {
            c.head = req.method == "HEAD";
        }
        if let Err(e) = req.check_host() {
            return self.reject(ops, id, e);
        }
        let framing = match req.body_framing() {
            Ok(f) => f,
            Err(e) => return self.reject(ops, id, e),
        };
        let path = req.path();
        if framing.has_body() {
            // Nothing served here takes a body: refused before it could be
            // read as the next request.
            return self.reject(ops, id, HttpError::BodyNotAllowed);
        }
        let method = match req.method.as_str() {
            "HEAD" => "GET",
            m => m,
        };
        if path == "/ws" || path == "/echo" {
            if let Origin::Refused = access::origin(&req, &self.config.allowed_origins) {
                return self.reject(ops, id, HttpError::OriginRejected);
            }
            let endpoint = if path == "/ws" {
                Endpoint::PubSub
            } else {
                Endpoint::Echo
            };
            return self.upgrade(ops, id, &req, endpoint);
        }
        match (method, path) {
            ("GET", "/healthz") => {
                if self.shared.all_ready() {
                    self.respond(ops, id, keep, 200, b"ok\n")
                } else {
                    self.respond(ops, id, keep, 503, b"starting\n")
                }
            }
            (_, "/healthz") => self.reject(ops, id, HttpError::MethodNotAllowed("GET, HEAD")),
            (_, p)
                if p == "/"
                    || p == "/metrics"
                    || p.starts_with("/poll/")
                    || p.starts_with("/sse/")
                    || p.starts_with("/publish/") =>
            {
                self.respond(
                    ops,
                    id,
                    false,
                    501,
                    b"not served by the experimental --runtime uring yet\n",
                )
            }
            _ => self.reject(ops, id, HttpError::NotFound),
        }
    }

    fn upgrade(&mut self, ops: &mut Ops<'_>, id: ConnId, req: &Request, endpoint: Endpoint) {
        let accepted = match handshake::accept(req, &self.policy) {
            Ok(a) => a,
            Err(e) => return self.reject(ops, id, e),
        };
        let limits = self.config.ws_limits();
        let Some(c) = slot(&mut self.conns, id) else {
            return;
        };
        let session = c.session;
        c.phase = Phase::WebSocket(Box::new(Ws {
            ws: WebSocket::new(Role::Server, limits),
            endpoint,
            waiting: VecDeque::new(),
        }));
        c.deadline = None;
        c.last_rx = Instant::now();
        if endpoint == Endpoint::PubSub {
            self.engine.set_transport(session, Transport::WebSocket);
        }
        self.set_kind(
            id,
            match endpoint {
                Endpoint::Echo => Kind::Echo,
                Endpoint::PubSub => Kind::WebSocket,
            },
        );
        if let Some(o) = self.engine.outbox(session) {
            let _ = o.push_response(accepted.response());
        }
        self.flush(ops, id);
    }

    /// Feeds `buf` to the connection's state machines until it needs more.
    /// Returns what is left (to stash).
    fn feed(&mut self, ops: &mut Ops<'_>, id: ConnId, mut buf: BytesMut) -> BytesMut {
        let head_limits = self.config.head_limits();
        loop {
            let Some(c) = slot(&mut self.conns, id) else {
                return BytesMut::new();
            };
            match &mut c.phase {
                Phase::Closing => {
                    buf.clear();
                    return buf;
                }
                Phase::Http(parser) => match parser.parse(&buf, head_limits) {
                    Ok(Some((req, n))) => {
                        buf.advance(n);
                        self.route(ops, id, req);
                    }
                    Ok(None) => return buf,
                    Err(e) => {
                        self.reject(ops, id, e);
                        buf.clear();
                        return buf;
                    }
                },
                Phase::WebSocket(_) => return self.feed_ws(ops, id, buf),
            }
        }
    }

    fn feed_ws(&mut self, ops: &mut Ops<'_>, id: ConnId, mut buf: BytesMut) -> BytesMut {
        let (outbox_size, max_message) = (self.config.outbox_size, self.config.max_message_size);
        loop {
            let Some(c) = slot(&mut self.conns, id) else {
                return BytesMut::new();
            };
            let session = c.session;
            let Phase::WebSocket(ws) = &mut c.phase else {
                return buf;
            };
            let res = ws.ws.poll(&mut buf);
            let (open, closed, partial, endpoint) = (
                ws.ws.is_open(),
                ws.ws.is_closed(),
                ws.ws.in_message(),
                ws.endpoint,
            );
            match (partial, c.message_started) {
                (true, None) => c.message_started = Some(Instant::now()),
                (false, Some(_)) => c.message_started = None,
                _ => {}
            }
            let more = matches!(res, Ok(Some(_)));
            match (res, endpoint) {
                (Ok(Some(Event::Text(p))), Endpoint::Echo) if open => {
                    self.echo(ops, id, OpCode::Text, p, outbox_size + max_message)
                }
                (Ok(Some(Event::Binary(p))), Endpoint::Echo) if open => {
                    self.echo(ops, id, OpCode::Binary, p, outbox_size + max_message)
                }
                (Ok(Some(Event::Text(p))), Endpoint::PubSub) if open => {
                    let hold = !ws.waiting.is_empty()
                        || self.engine.is_waiting(session)
                        || !self
                            .engine
                            .outbox(session)
                            .is_none_or(|o| o.can_take_command());
                    if hold {
                        if ws.waiting.len() >= MAX_WAITING_COMMANDS {
                            self.start_close(
                                ops,
                                id,
                                CloseCode::POLICY,
                                "too many commands in flight",
                            );
                        } else {
                            ws.waiting.push_back(p);
                        }
                    } else {
                        self.engine.command(session, &p, Instant::now());
                        self.run_outputs(ops);
                    }
                }
                (Ok(Some(Event::Binary(_))), Endpoint::PubSub) if open => {
                    let err = reply::error(
                        ErrorCode::BadJson,
                        "commands are JSON objects in text frames",
                        &None,
                    );
                    let full = self
                        .engine
                        .outbox(session)
                        .is_some_and(|o| o.push_control(err) == Err(PushError::Full));
                    if full {
                        if let Some(o) = self.engine.outbox(session) {
                            o.close();
                        }
                        ops.close(id);
                    }
                }
                (Err(e), _) => {
                    debug!(error = %e, close = e.close_code().0, "websocket failed")
                }
                _ => {}
            }
            self.protocol_output(ops, id);
            if closed {
                let close_timeout = self.config.close_timeout;
                if let Some(c) = slot(&mut self.conns, id) {
                    c.deadline = Some(Instant::now() + close_timeout);
                    c.phase = Phase::Closing;
                }
                if let Some(o) = self.engine.outbox(session) {
                    o.finish();
                }
                self.flush(ops, id);
                buf.clear();
                return buf;
            }
            if !more {
                return buf;
            }
        }
    }

    /// Queues an echoed message. The loop does not stop reading a
    /// connection, so the bound is kept here: a peer that sends and does
    /// not read is closed (1008) once `cap` bytes wait for it.
    fn echo(&mut self, ops: &mut Ops<'_>, id: ConnId, opcode: OpCode, payload: Bytes, cap: usize) {
        let Some(c) = slot(&mut self.conns, id) else {
            return;
        };
        let session = c.session;
        let queued = self.engine.outbox(session).map_or(0, |o| o.queued_bytes());
        if queued > cap {
            self.start_close(ops, id, CloseCode::POLICY, "not reading");
            return;
        }
        let (head, rest) = crate::runtime::conn::data_frame(opcode, payload);
        if let Some(o) = self.engine.outbox(session) {
            let _ = o.push_response(head);
            if let Some(rest) = rest {
                let _ = o.push_response(rest);
            }
        }
        self.flush(ops, id);
    }

    /// Deadlines, keep-alive pings, idle and message timeouts, history
    /// expiry: one pass over the table, no timer per connection.
    pub fn sweep(&mut self, ops: &mut Ops<'_>, now: Instant) {
        self.engine.handle_timeout(now);
        self.run_outputs(ops);
        let cfg = self.config.clone();
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            let id = c.id;
            if let Some(deadline) = c.deadline {
                if now >= deadline {
                    debug!("deadline passed");
                    c.deadline = None;
                    let session = c.session;
                    if let Some(o) = self.engine.outbox(session) {
                        o.close();
                    }
                    ops.close(id);
                }
                continue;
            }
            if !matches!(c.phase, Phase::WebSocket(_)) {
                continue;
            }
            if let Some(started) = c.message_started {
                if now.saturating_duration_since(started) >= cfg.message_timeout {
                    debug!("message timeout");
                    c.message_started = None;
                    self.start_close(ops, id, CloseCode::POLICY, "message timeout");
                    continue;
                }
            }
            let quiet = now.saturating_duration_since(c.last_rx);
            if quiet >= cfg.idle_timeout {
                debug!("idle timeout");
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

    /// Shutdown: every WebSocket gets close 1001, every other connection
    /// ends after what it owes; all within `--shutdown-grace`.
    pub fn begin_shutdown(&mut self, ops: &mut Ops<'_>) {
        self.closing = true;
        let ids: Vec<ConnId> = self.conns.iter().flatten().map(|c| c.id).collect();
        for id in ids {
            self.start_close(ops, id, CloseCode::GOING_AWAY, "server shutting down");
            if let Some(c) = slot(&mut self.conns, id) {
                c.deadline = Some(Instant::now() + self.config.shutdown_grace);
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
}

impl Handler for Serve {
    fn on_open(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        let now = Instant::now();
        self.metrics().accepted.inc();
        self.metrics().connection(Kind::Http).inc();
        let grant = self.engine.anonymous_grant();
        let session = self.engine.open(grant);
        let slot = id.slot() as usize;
        if self.conns.len() <= slot {
            self.conns.resize_with(slot + 1, || None);
        }
        if self.sessions.len() <= session.index() {
            self.sessions.resize(session.index() + 1, None);
        }
        self.sessions[session.index()] = Some(id);
        self.conns[slot] = Some(Conn {
            id,
            session,
            phase: Phase::Http(HeadParser::new()),
            stash: None,
            deadline: Some(now + self.config.handshake_timeout),
            last_rx: now,
            message_started: None,
            ping_sent: false,
            head: false,
            kind: Kind::Http,
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
        if matches!(c.phase, Phase::Closing) {
            return Action::Continue;
        }
        let buf = match c.stash.take() {
            Some(mut s) => {
                s.extend_from_slice(bytes);
                s
            }
            None => BytesMut::from(bytes),
        };
        let rest = self.feed(ops, id, buf);
        if let Some(c) = slot(&mut self.conns, id) {
            if !rest.is_empty() {
                c.stash = Some(rest);
            }
        }
        Action::Continue
    }

    fn on_sent(&mut self, ops: &mut Ops<'_>, id: ConnId, bytes: usize) {
        self.metrics().bytes_out.add(bytes as u64);
        let Some(session) = slot(&mut self.conns, id).map(|c| c.session) else {
            return;
        };
        self.engine.written(session, bytes);
        // Room was made: held (conflated) messages and waiting commands may
        // go on.
        self.flush(ops, id);
        self.run_waiting(ops, id);
    }

    fn on_close(&mut self, id: ConnId, why: CloseReason) {
        let slot = id.slot() as usize;
        let Some(c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if c.id != id {
            self.conns[slot] = Some(c);
            return;
        }
        debug!(?why, kind = ?c.kind, "closed");
        let m = &self.shared.metrics()[0];
        m.connection(c.kind).dec();
        if let Phase::WebSocket(ws) = &c.phase {
            if let Some(code) = ws.ws.close_sent() {
                m.close_sent(code);
            }
        }
        self.sessions[c.session.index()] = None;
        self.engine.close(c.session, Instant::now());
        self.open -= 1;
        // What the close released (a subscription's fan-out) may have
        // asked for something; the next entry point carries it out.
    }

    fn on_wake(&mut self, ops: &mut Ops<'_>) {
        self.run_outputs(ops);
    }
}

/// The connection in `id`'s slot, if it is still `id`'s.
fn slot(conns: &mut [Option<Conn>], id: ConnId) -> Option<&mut Conn> {
    conns
        .get_mut(id.slot() as usize)
        .and_then(Option::as_mut)
        .filter(|c| c.id == id)
}
