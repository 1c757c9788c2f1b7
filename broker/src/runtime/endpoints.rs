//! The HTTP pub/sub endpoints: `POST /publish/{topic}`, long-polling
//! (`GET /poll/{topic}`) and Server-Sent Events (`GET /sse/{topic}`).
//!
//! Each is a few steps of the connection's state machine rather than a
//! task: a publish reads its body (`Phase::Body`) and then waits for its
//! seq (`Wait::Publish`); a poll waits for its subscription
//! (`Wait::Subscribe`) and is then held (`Wait::Held`) until a message or
//! its timeout; an SSE stream subscribes and streams (`Phase::Stream`).
//! The engine's outputs (`Published`, `Resume`, `PollReady`) move them on.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use ringcast_core::auth::Denied;
use ringcast_core::wire::command::{self, ErrorCode};
use ringcast_core::wire::reply;
use ringcast_core::{topic, Flow, Transport};
use ringcast_proto::chunked::ChunkedDecoder;
use ringcast_proto::http::{BodyFraming, Request};

use super::serve::{Phase, Serve, Wait};
use crate::error::HttpError;
use crate::metrics::Kind;
use crate::uring::{ConnId, Ops};

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The response header naming the broker instance on `/poll` and `/sse`.
const EPOCH_HEADER: &str = "Ringcast-Epoch";

/// A `POST /publish` body being read.
pub(super) struct Body {
    topic: String,
    keep: bool,
    /// The request's credential, checked once the body is in.
    bearer: Option<String>,
    framing: Framing,
    data: BytesMut,
}

enum Framing {
    /// This many bytes still to come.
    Length(usize),
    Chunked(ChunkedDecoder),
}

impl Serve {
    /// `POST /publish/{topic}`: the body (`Content-Length` or chunked) is
    /// the message `data`; `buf` holds what followed the head.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn begin_publish(
        &mut self,
        ops: &mut Ops<'_>,
        id: ConnId,
        req: &Request,
        framing: BodyFraming,
        topic: String,
        keep: bool,
        buf: &mut BytesMut,
    ) {
        let max = self.config.max_message_size;
        let framing = match framing {
            BodyFraming::None => return self.reject(ops, id, HttpError::LengthRequired),
            BodyFraming::Length(len) if len > max as u64 => {
                return self.reject(ops, id, HttpError::PayloadTooLarge)
            }
            BodyFraming::Length(len) => Framing::Length(len as usize),
            BodyFraming::Chunked => Framing::Chunked(ChunkedDecoder::new(max)),
        };
        // A client that sent `Expect: 100-continue` waits for this before
        // it sends the body (curl does for a second, then sends it
        // anyway): only once the request is known to be acceptable, and
        // only if the body has not begun to arrive.
        let waiting = match &framing {
            Framing::Length(len) => buf.len() < *len,
            Framing::Chunked(_) => buf.is_empty(),
        };
        let Some(c) = self.conn(id) else { return };
        let session = c.session;
        c.phase = Phase::Body(Box::new(Body {
            topic,
            keep,
            bearer: crate::runtime::access::bearer(req),
            framing,
            data: BytesMut::new(),
        }));
        if waiting && req.expects_continue() {
            if let Some(o) = self.engine.outbox(session) {
                let _ = o.push_response(Bytes::from_static(CONTINUE));
            }
            self.flush(ops, id);
        }
    }

    /// Takes body bytes from `buf`; true once the body is complete (and
    /// the publish under way), false if more must arrive.
    pub(super) fn feed_body(&mut self, ops: &mut Ops<'_>, id: ConnId, buf: &mut BytesMut) -> bool {
        let Some(c) = self.conn(id) else { return false };
        let Phase::Body(body) = &mut c.phase else {
            return false;
        };
        let done = match &mut body.framing {
            Framing::Length(left) => {
                let n = (*left).min(buf.len());
                body.data.extend_from_slice(&buf[..n]);
                buf.advance(n);
                *left -= n;
                *left == 0
            }
            Framing::Chunked(decoder) => match decoder.decode(buf, &mut body.data) {
                Ok(n) => {
                    buf.advance(n);
                    decoder.is_done()
                }
                Err(e) => {
                    self.reject(ops, id, e);
                    buf.clear();
                    return false;
                }
            },
        };
        if !done {
            return false;
        }
        let phase = std::mem::replace(&mut c.phase, Phase::Closing);
        let Phase::Body(body) = phase else {
            unreachable!("matched above")
        };
        self.publish(ops, id, *body);
        true
    }

    fn publish(&mut self, ops: &mut Ops<'_>, id: ConnId, body: Body) {
        let Body {
            topic,
            keep,
            bearer,
            data,
            ..
        } = body;
        let data = data.freeze();
        if let Err(e) = topic::validate(&topic) {
            return self.json_error(ops, id, keep, ErrorCode::BadTopic, e.message());
        }
        if !command::validate_data(&data) {
            let msg = "body is not a single JSON value";
            return self.json_error(ops, id, keep, ErrorCode::BadJson, msg);
        }
        let max_depth = self.config.max_json_depth;
        if command::json_depth(&data) > max_depth {
            let msg = command::too_deep(max_depth);
            return self.json_error(ops, id, keep, ErrorCode::BadJson, &msg);
        }
        // An API key or a token (none needed under --auth none without keys).
        let grant = match self.shared.policy().http_publisher(bearer.as_deref()) {
            Ok(g) => g,
            Err(d) => {
                if !matches!(d, Denied::Forbidden(_)) {
                    self.engine.count_auth_failure();
                }
                let (code, msg) = match d {
                    Denied::Forbidden(m) => (ErrorCode::Forbidden, m),
                    Denied::Unauthorized(m) => (ErrorCode::Unauthorized, m),
                    _ => (ErrorCode::Forbidden, "refused".into()),
                };
                return self.json_error(ops, id, keep, code, &msg);
            }
        };
        // Waiting before the engine is asked: a local owner answers at once
        // (`Output::Published`, carried out below).
        let token = self.publishes.insert(id);
        if let Some(c) = self.conn(id) {
            c.phase = Phase::Waiting(Wait::Publish { keep });
        }
        let result =
            self.engine
                .publish_as(&grant, &topic, data, Some(token as u64), Instant::now());
        match result {
            Ok(()) => self.run_outputs(ops),
            Err((code, wait)) => {
                self.publishes.remove(token);
                let msg = match wait {
                    Some(_) => "too many publishes; retry later",
                    None => refusal(code),
                };
                self.json_error_after(ops, id, keep, code, msg, wait);
            }
        }
    }

    /// A publish's seq (or why it got none) is known.
    pub(super) fn published(
        &mut self,
        ops: &mut Ops<'_>,
        id: ConnId,
        result: Result<u64, ErrorCode>,
    ) {
        let closing = self.closing;
        let Some(c) = self.conn(id) else { return };
        let Phase::Waiting(Wait::Publish { keep }) = c.phase else {
            return;
        };
        // Once shutting down, this response is the connection's last.
        let keep = keep && !closing;
        match result {
            Ok(seq) => {
                let body = format!("{{\"seq\":{seq}}}");
                self.respond(ops, id, keep, 200, "application/json", body.as_bytes())
            }
            Err(code) => self.json_error(ops, id, keep, code, refusal(code)),
        }
        self.feed_stash(ops, id);
    }

    /// `GET /poll/{topic}?since=N&timeout_ms=T`: every retained message
    /// with `seq > N` at once, or the request is held until one arrives or
    /// `T` ms pass (`200 []`). A held request costs its record, no timer:
    /// the shard's heap of hold ends.
    pub(super) fn poll(
        &mut self,
        ops: &mut Ops<'_>,
        id: ConnId,
        req: &Request,
        topic: &str,
        keep: bool,
    ) {
        if let Err(e) = topic::validate(topic) {
            return self.json_error(ops, id, keep, ErrorCode::BadTopic, e.message());
        }
        let max = self.config.max_poll_timeout;
        let (since, timeout_ms) = match (
            query_u64(req.query(), "since"),
            query_u64(req.query(), "timeout_ms"),
        ) {
            (Ok(s), Ok(t)) => (
                s.unwrap_or(0),
                t.unwrap_or(30_000.min(max.as_millis() as u64)),
            ),
            (Err(e), _) | (_, Err(e)) => {
                return self.json_error(ops, id, keep, ErrorCode::BadRequest, &e)
            }
        };
        let hold = Duration::from_millis(timeout_ms);
        if hold > max {
            let msg = format!("timeout_ms must be at most {}", max.as_millis());
            return self.json_error(ops, id, keep, ErrorCode::BadRequest, &msg);
        }
        if timeout_ms > 0 && self.metrics().polls_held.get() >= self.config.max_polls as i64 {
            let text = "text/plain; charset=utf-8";
            return self.respond(ops, id, false, 503, text, b"too many held polls\n");
        }
        if !self.admit(ops, id, req, keep) {
            return;
        }
        let Some(c) = self.conn(id) else { return };
        let session = c.session;
        // The request is in; holding it is bounded by `timeout_ms` (at
        // most --max-poll-timeout), not by the request deadline.
        c.deadline = None;
        c.phase = Phase::Waiting(Wait::Subscribe { keep, hold });
        self.engine.set_transport(session, Transport::Poll);
        let flow = self
            .engine
            .subscribe(session, topic, Some(since), Instant::now());
        if flow == Flow::Continue {
            self.poll_subscribed(ops, id, keep, hold);
        }
        self.run_outputs(ops);
    }

    /// A poll's subscription is answered: refused, answered at once, or
    /// held.
    pub(super) fn poll_subscribed(
        &mut self,
        ops: &mut Ops<'_>,
        id: ConnId,
        keep: bool,
        hold: Duration,
    ) {
        let closing = self.closing;
        let Some(session) = self.conn(id).map(|c| c.session) else {
            return;
        };
        let now = Instant::now();
        if let Some(code) = self.engine.take_refusal(session) {
            self.engine.take_poll(session, now);
            self.json_error(ops, id, keep, code, refusal(code));
            return self.feed_stash(ops, id);
        }
        if self.engine.poll_ready(session) || hold.is_zero() || closing {
            return self.answer_poll(ops, id);
        }
        self.metrics().polls_held.inc();
        let until = now + hold;
        if let Some(c) = self.conn(id) {
            c.phase = Phase::Waiting(Wait::Held { keep, until });
        }
        self.holds
            .push(Reverse((until, id.slot(), id.generation())));
    }

    /// A held poll has something to answer with.
    pub(super) fn poll_ready(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        let held = self
            .conn(id)
            .is_some_and(|c| matches!(c.phase, Phase::Waiting(Wait::Held { .. })));
        if held {
            self.answer_poll(ops, id);
        }
    }

    /// Answers a poll with what was collected (capped at the outbox size).
    pub(super) fn answer_poll(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        let closing = self.closing;
        let Some(c) = self.conn(id) else { return };
        let session = c.session;
        let keep = match c.phase {
            Phase::Waiting(Wait::Held { keep, .. }) => {
                self.metrics().polls_held.dec();
                keep
            }
            Phase::Waiting(Wait::Subscribe { keep, .. }) => keep,
            _ => return,
        };
        let keep = keep && !closing;
        let now = Instant::now();
        let epoch = self.engine.poll_epoch(session);
        let (gap, frames) = self.engine.take_poll(session, now);
        match epoch {
            // Ended before the topic's owner answered (it is overloaded):
            // there is no epoch to name, and a guessed one could make the
            // client drop its place. It polls again.
            None => {
                let msg = "the subscription was not made in time; poll again";
                self.json_error(ops, id, keep, ErrorCode::Overloaded, msg)
            }
            // The epoch tells a polling client whether `since` still meant
            // this topic's stream (see docs/protocol.md, Epoch).
            Some(epoch) => {
                let body = reply::poll_body(gap, &frames, self.config.outbox_size);
                self.respond_with(
                    ops,
                    id,
                    keep,
                    200,
                    "application/json",
                    &[(EPOCH_HEADER, &epoch)],
                    &body,
                )
            }
        }
        self.feed_stash(ops, id);
    }

    /// `GET /sse/{topic}?since=N` (or `Last-Event-ID: N`): a Server-Sent
    /// Events stream, one event per message with `id:` = seq, heartbeats
    /// as comments (from the sweep).
    pub(super) fn sse(&mut self, ops: &mut Ops<'_>, id: ConnId, req: &Request, topic: &str) {
        if let Err(e) = topic::validate(topic) {
            return self.json_error(ops, id, false, ErrorCode::BadTopic, e.message());
        }
        let last_event_id = req.header("last-event-id").map(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let since = match (query_u64(req.query(), "since"), last_event_id) {
            (Err(e), _) => return self.json_error(ops, id, false, ErrorCode::BadRequest, &e),
            (_, Some(None)) => {
                let msg = "Last-Event-ID must be a seq";
                return self.json_error(ops, id, false, ErrorCode::BadRequest, msg);
            }
            // The header is what a reconnecting EventSource sends: it wins.
            (_, Some(Some(id))) => Some(id),
            (Ok(s), None) => s,
        };
        // Refusals are HTTP answers, before the stream begins.
        if !self.admit(ops, id, req, false) {
            return;
        }
        let Some(session) = self.conn(id).map(|c| c.session) else {
            return;
        };
        if let Err((code, msg)) = self.engine.check_subscribe(session, topic) {
            return self.json_error(ops, id, false, code, &msg);
        }
        self.engine.set_transport(session, Transport::Sse);
        self.set_kind(id, Kind::Sse);
        let shared = self.shared.clone();
        let epoch = shared.epoch();
        let Some(c) = self.conn(id) else { return };
        let cors = match c.cors.take() {
            Some(o) => format!("Access-Control-Allow-Origin: {o}\r\nVary: Origin\r\n"),
            None => String::new(),
        };
        let head = Bytes::from(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             X-Accel-Buffering: no\r\n{EPOCH_HEADER}: {epoch}\r\n{cors}Connection: close\r\n\r\n",
        ));
        c.phase = Phase::Stream;
        c.deadline = None;
        c.last_rx = Instant::now();
        c.stash = None;
        if let Some(o) = self.engine.outbox(session) {
            let _ = o.push_response(head);
        }
        let flow = self.engine.subscribe(session, topic, since, Instant::now());
        if flow == Flow::Continue {
            self.sse_subscribed(ops, id);
        }
        self.run_outputs(ops);
        self.flush(ops, id);
    }

    /// An SSE stream's subscription is answered: a refusal is its one
    /// event (`event: error`), then it ends.
    pub(super) fn sse_subscribed(&mut self, ops: &mut Ops<'_>, id: ConnId) {
        let Some(session) = self.conn(id).map(|c| c.session) else {
            return;
        };
        let Some(code) = self.engine.take_refusal(session) else {
            return;
        };
        let frame = reply::error(code, refusal(code), &None);
        let mut event = BytesMut::from(&b"event: error\ndata: "[..]);
        event.extend_from_slice(&reply::message_json(&frame));
        event.extend_from_slice(b"\n\n");
        if let Some(o) = self.engine.outbox(session) {
            let _ = o.push_response(event.freeze());
        }
        self.finish(ops, id);
    }
}

/// The text of an HTTP endpoint's refusal (publish, poll, SSE), by code.
fn refusal(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Overloaded => "the broker is overloaded; retry later",
        ErrorCode::Unavailable => "the cluster backend (Redis) is unavailable; retry later",
        ErrorCode::Limit => "too many topics",
        ErrorCode::Forbidden => "the credentials do not allow this topic",
        ErrorCode::Unauthorized => "credentials are needed for this topic",
        _ => "refused",
    }
}

/// Parses `since` and `timeout_ms` from a query string. Unknown keys are
/// ignored; a known key with a bad value is an error naming it.
fn query_u64(query: Option<&str>, key: &str) -> Result<Option<u64>, String> {
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return v
                .parse()
                .map(Some)
                .map_err(|_| format!("{key} must be a non-negative integer"));
        }
    }
    Ok(None)
}
