//! The WebSocket endpoints: `/ws` (JSON commands into the engine) and
//! `/echo` (every message sent back: the conformance target).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tracing::debug;

use ringcast_core::outbox::PushError;
use ringcast_core::wire::command::ErrorCode;
use ringcast_core::wire::reply;
use ringcast_core::Transport;
use ringcast_proto::close::CloseCode;
use ringcast_proto::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use ringcast_proto::handshake;
use ringcast_proto::http::Request;
use ringcast_proto::websocket::{Event, Role, WebSocket};

use super::serve::{slot, Phase, Serve, PAUSE_AT};
use crate::auth::AuthMode;
use crate::metrics::Kind;
use crate::uring::{ConnId, Ops};

/// Bytes of `/ws` commands that may wait while the engine holds an
/// earlier one, once reading has paused (see `PAUSE_AT`): what the reads
/// already under way deliver. Past it the client is closed with 1008.
const MAX_WAITING: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Echo,
    PubSub,
}

pub(super) struct Ws {
    pub(super) ws: WebSocket,
    endpoint: Endpoint,
    /// `/ws` commands read while the engine waits on an earlier one.
    waiting: VecDeque<Bytes>,
    /// Their bytes: past `PAUSE_AT`, the connection is not read.
    waiting_bytes: usize,
}

impl Serve {
    /// Answers the upgrade; the request (and its headers: kilobytes from a
    /// browser) is dropped when this returns, before the first frame.
    pub(super) fn upgrade(
        &mut self,
        ops: &mut Ops<'_>,
        id: ConnId,
        req: &Request,
        endpoint: Endpoint,
    ) {
        let accepted = match handshake::accept(req, &self.policy) {
            Ok(a) => a,
            Err(e) => return self.reject(ops, id, e),
        };
        let Some(session) = self.conn(id).map(|c| c.session) else {
            return;
        };
        if endpoint == Endpoint::PubSub {
            // A token on the upgrade URL is checked before the upgrade: a
            // bad one is an HTTP 401, which every client library reports.
            if !self.admit(ops, id, req, false) {
                return;
            }
            let policy = self.shared.policy();
            if policy.mode() == AuthMode::Jwt && !policy.anonymous_may_subscribe() {
                // Nothing is allowed without a token: it must `connect`
                // in time.
                let due = Instant::now() + self.config.handshake_timeout;
                self.engine.require_token_by(session, due);
            }
            self.engine.set_transport(session, Transport::WebSocket);
        }
        let limits = self.config.ws_limits();
        let Some(c) = self.conn(id) else { return };
        c.phase = Phase::WebSocket(Box::new(Ws {
            ws: WebSocket::new(Role::Server, limits),
            endpoint,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
        }));
        c.deadline = None;
        c.last_rx = Instant::now();
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

    /// Queues the protocol's own frames (pong, close) behind the data;
    /// a peer that lets even those pile up is cut off.
    pub(super) fn protocol_output(&mut self, ops: &mut Ops<'_>, id: ConnId) {
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
                return self.drop_conn(ops, id);
            }
        }
        self.flush(ops, id);
    }

    /// Hands the engine the `/ws` commands that waited, while it takes them.
    pub(super) fn run_waiting(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        loop {
            let Some(c) = slot(&mut self.conns, id) else {
                return;
            };
            let session = c.session;
            let Phase::WebSocket(ws) = &mut c.phase else {
                return;
            };
            if ws.waiting.is_empty() || !may_command(&mut self.engine, session) {
                return;
            }
            let p = ws.waiting.pop_front().expect("checked");
            ws.waiting_bytes -= p.len();
            if ws.waiting_bytes < PAUSE_AT / 2 {
                ops.resume_recv(id);
            }
            self.engine.command(session, &p, Instant::now());
            self.run_outputs(ops);
        }
    }

    /// Parses frames out of `buf` and acts on them; returns what is left
    /// (the start of a frame).
    pub(super) fn feed_ws(&mut self, ops: &mut Ops<'_>, id: ConnId, mut buf: BytesMut) -> BytesMut {
        let cap = self.config.outbox_size + self.config.max_message_size;
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
            // A message in progress has `--message-timeout` to arrive.
            match (partial, c.message_started) {
                (true, None) => c.message_started = Some(Instant::now()),
                (false, Some(_)) => c.message_started = None,
                _ => {}
            }
            let more = matches!(res, Ok(Some(_)));
            match (res, endpoint) {
                (Ok(Some(Event::Text(p))), Endpoint::Echo) if open => {
                    self.echo(ops, id, OpCode::Text, p, cap)
                }
                (Ok(Some(Event::Binary(p))), Endpoint::Echo) if open => {
                    self.echo(ops, id, OpCode::Binary, p, cap)
                }
                (Ok(Some(Event::Text(p))), Endpoint::PubSub) if open => {
                    // Replies come in command order: the engine says when
                    // the next command may come; those read meanwhile wait.
                    if !ws.waiting.is_empty() || !may_command(&mut self.engine, session) {
                        ws.waiting_bytes += p.len();
                        ws.waiting.push_back(p);
                        if ws.waiting_bytes > MAX_WAITING {
                            self.start_close(
                                ops,
                                id,
                                CloseCode::POLICY,
                                "too many commands in flight",
                            );
                        } else if ws.waiting_bytes >= PAUSE_AT {
                            // It sends faster than it reads its replies: it
                            // waits (TCP pushes back), not in our memory.
                            ops.pause_recv(id);
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
                        self.drop_conn(ops, id);
                    }
                }
                (Err(e), _) => {
                    debug!(shard = self.id, error = %e, close = e.close_code().0, "websocket failed")
                }
                _ => {}
            }
            self.protocol_output(ops, id);
            if closed {
                self.finish(ops, id);
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
        let Some(session) = self.conn(id).map(|c| c.session) else {
            return;
        };
        let queued = self.engine.outbox(session).map_or(0, |o| o.queued_bytes());
        if queued > cap {
            self.start_close(ops, id, CloseCode::POLICY, "not reading");
            return;
        }
        let (head, rest) = data_frame(opcode, payload);
        if let Some(o) = self.engine.outbox(session) {
            let _ = o.push_response(head);
            if let Some(rest) = rest {
                let _ = o.push_response(rest);
            }
        }
        self.flush(ops, id);
    }
}

/// Whether the engine takes `session`'s next command now: it is not
/// waiting on the previous one, and the replies owed fit in its outbox.
fn may_command(
    engine: &mut ringcast_core::Engine<crate::runtime::route::MeshRoute>,
    session: ringcast_core::ConnId,
) -> bool {
    !engine.is_waiting(session) && engine.outbox(session).is_none_or(|o| o.can_take_command())
}

/// Payloads up to this size are copied behind their header into one
/// buffer; larger ones are sent as header + the original `Bytes`.
const COPY_THRESHOLD: usize = 16 * 1024;

/// Frames a server-role data message. Small payloads are copied behind the
/// header; large ones keep their buffer and only the header is new.
pub(crate) fn data_frame(opcode: OpCode, payload: Bytes) -> (Bytes, Option<Bytes>) {
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask: None,
        payload_len: payload.len() as u64,
    };
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut h);
    if payload.len() <= COPY_THRESHOLD {
        let mut out = BytesMut::with_capacity(n + payload.len());
        out.extend_from_slice(&h[..n]);
        out.extend_from_slice(&payload);
        (out.freeze(), None)
    } else {
        (Bytes::copy_from_slice(&h[..n]), Some(payload))
    }
}
