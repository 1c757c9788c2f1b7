//! The HTTP pub/sub endpoints: `POST /publish/{topic}`, long-polling
//! (`GET /poll/{topic}`) and Server-Sent Events (`GET /sse/{topic}`).
//!
//! Each is a handler the connection's reader (`conn.rs`) calls once it has
//! routed a request; it reads the body if there is one, asks the engine,
//! and queues the answer. A held poll is answered by a task of its own so
//! that the reader reads on and sees a client that leaves.

use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};

use super::access;
use super::conn::{
    admit, after_response, json_error, json_error_after, read_more, reject, respond, respond_with,
    Conn, Next, Phase, EPOCH_HEADER, IDLE_READ, MAX_READ,
};
use super::shard::Shard;
use crate::error::HttpError;
use crate::loop_runtime::{query_u64, refusal};
use crate::metrics::Kind;
use ringcast_core::auth::Denied;
use ringcast_core::outbox::Outbox;
use ringcast_core::wire::command::{self, ErrorCode};
use ringcast_core::wire::reply;
use ringcast_core::{topic, Flow, Transport};
use ringcast_proto::chunked::ChunkedDecoder;
use ringcast_proto::http::{BodyFraming, Request};

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Reads a request body framed by `framing` (`Content-Length` or chunked),
/// at most `max` bytes. `Err` is what the request handler returns: a
/// refusal queued (the connection closes) or the peer gone.
async fn read_body(
    shard: &Shard,
    conn: &Conn,
    req: &Request,
    framing: BodyFraming,
    max: usize,
    buf: &mut BytesMut,
) -> Result<Bytes, Next> {
    let gone = |conn: &Conn| {
        shard.outbox(conn, Outbox::close);
        Next::Gone
    };
    // A client that sent `Expect: 100-continue` waits for this before it
    // sends the body (curl does for a second, then sends it anyway). Only
    // once the request is known to be acceptable, and only if the body
    // has not begun to arrive.
    let send_continue = |waiting: bool| {
        if waiting && req.expects_continue() {
            shard.outbox(conn, |o| o.push_response(Bytes::from_static(CONTINUE)));
        }
    };
    match framing {
        BodyFraming::None => Err(reject(shard, conn, HttpError::LengthRequired)),
        BodyFraming::Length(len) if len > max as u64 => {
            Err(reject(shard, conn, HttpError::PayloadTooLarge))
        }
        BodyFraming::Length(len) => {
            let len = len as usize;
            send_continue(buf.len() < len);
            while buf.len() < len {
                let want = (len - buf.len()).clamp(shard.config.read_buffer, MAX_READ);
                if !read_more(shard, conn, buf, want).await {
                    return Err(gone(conn));
                }
            }
            Ok(buf.split_to(len).freeze())
        }
        BodyFraming::Chunked => {
            send_continue(buf.is_empty());
            let mut decoder = ChunkedDecoder::new(max);
            let mut body = BytesMut::new();
            loop {
                match decoder.decode(buf, &mut body) {
                    Ok(n) => buf.advance(n),
                    Err(e) => return Err(reject(shard, conn, e)),
                }
                if decoder.is_done() {
                    return Ok(body.freeze());
                }
                let left = usize::try_from(decoder.data_left()).unwrap_or(MAX_READ);
                let want = left.clamp(shard.config.read_buffer, MAX_READ);
                if !read_more(shard, conn, buf, want).await {
                    return Err(gone(conn));
                }
            }
        }
    }
}

/// `POST /publish/{topic}`: the body (`Content-Length` or chunked) is the
/// message `data`.
pub(super) async fn publish(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    req: &Request,
    framing: BodyFraming,
    topic: &str,
    keep: bool,
    buf: &mut BytesMut,
) -> Next {
    let max = shard.config.max_message_size;
    let body = match read_body(shard, conn, req, framing, max, buf).await {
        Ok(body) => body,
        Err(next) => return next,
    };
    if let Err(e) = topic::validate(topic) {
        return json_error(shard, conn, keep, ErrorCode::BadTopic, e.message());
    }
    if !command::validate_data(&body) {
        return json_error(
            shard,
            conn,
            keep,
            ErrorCode::BadJson,
            "body is not a single JSON value",
        );
    }
    let max_depth = shard.config.max_json_depth;
    if command::json_depth(&body) > max_depth {
        let message = command::too_deep(max_depth);
        return json_error(shard, conn, keep, ErrorCode::BadJson, &message);
    }
    // An API key or a token (none needed under --auth none without keys).
    let bearer = access::bearer(req);
    let grant = match shard.shared.policy().http_publisher(bearer.as_deref()) {
        Ok(g) => g,
        Err(d) => {
            if !matches!(d, Denied::Forbidden(_)) {
                shard.engine(|e| e.count_auth_failure());
            }
            let (code, msg) = match d {
                Denied::Forbidden(m) => (ErrorCode::Forbidden, m),
                Denied::Unauthorized(m) => (ErrorCode::Unauthorized, m),
                _ => (ErrorCode::Forbidden, "refused".into()),
            };
            return json_error(shard, conn, keep, code, &msg);
        }
    };
    let answer = match shard.publish_as(Some(&grant), topic, body, true) {
        Ok(Some(rx)) => rx.await,
        Ok(None) => unreachable!("an acknowledged publish has a receiver"),
        Err((code, Some(wait))) => {
            let msg = "too many publishes; retry later";
            return json_error_after(shard, conn, keep, code, msg, Some(wait));
        }
        Err((code, None)) => Ok(Err(code)),
    };
    // Once shutting down, this response is the connection's last.
    let keep = keep && !shard.is_closing();
    match answer {
        Ok(Ok(seq)) => {
            let body = format!("{{\"seq\":{seq}}}");
            respond(shard, conn, keep, 200, "application/json", body.as_bytes())
        }
        Ok(Err(code)) => json_error(shard, conn, keep, code, refusal(code)),
        Err(_) => respond(
            shard,
            conn,
            false,
            503,
            "text/plain; charset=utf-8",
            b"shutting down\n",
        ),
    }
}

/// `GET /poll/{topic}?since=N&timeout_ms=T`: every retained message with
/// `seq > N` at once, or the request is held until one arrives or `T` ms
/// pass (`200 []`). A held request costs a waiting task, not a thread.
pub(super) async fn poll(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    req: &Request,
    topic: &str,
    keep: bool,
) -> Next {
    if let Err(e) = topic::validate(topic) {
        return json_error(shard, conn, keep, ErrorCode::BadTopic, e.message());
    }
    let max = shard.config.max_poll_timeout;
    let (since, timeout_ms) = match (
        query_u64(req.query(), "since"),
        query_u64(req.query(), "timeout_ms"),
    ) {
        (Ok(s), Ok(t)) => (
            s.unwrap_or(0),
            t.unwrap_or(30_000.min(max.as_millis() as u64)),
        ),
        (Err(e), _) | (_, Err(e)) => {
            return json_error(shard, conn, keep, ErrorCode::BadRequest, &e)
        }
    };
    let timeout = std::time::Duration::from_millis(timeout_ms);
    if timeout > max {
        let msg = format!("timeout_ms must be at most {}", max.as_millis());
        return json_error(shard, conn, keep, ErrorCode::BadRequest, &msg);
    }
    if timeout_ms > 0 && shard.metrics().polls_held.get() >= shard.config.max_polls as i64 {
        return respond(
            shard,
            conn,
            false,
            503,
            "text/plain; charset=utf-8",
            b"too many held polls\n",
        );
    }
    if let Err(next) = admit(shard, conn, req, keep) {
        return next;
    }
    shard.set_transport(conn, Transport::Poll);
    // The request is in; holding it is bounded by `timeout_ms` (at most
    // --max-poll-timeout), not by the request deadline.
    conn.deadline.set(None);
    if subscribe(shard, conn, topic, Some(since)).await {
        let refused = shard.engine(|e| e.take_refusal(conn.id));
        if let Some(code) = refused {
            let now = Instant::now();
            shard.engine(|e| e.take_poll(conn.id, now));
            return json_error(shard, conn, keep, code, refusal(code));
        }
    }
    if !shard.engine(|e| e.poll_ready(conn.id)) && timeout_ms > 0 {
        // Held by a task of its own: the reader goes back to reading, so a
        // client that leaves mid-hold is seen at once (see `end_hold`).
        shard.metrics().polls_held.inc();
        let (shard, conn2) = (shard.clone(), conn.clone());
        let task = tokio_uring::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            // A timer around a wake-up, not around socket I/O: safe to drop.
            while !shard.engine(|e| e.poll_ready(conn2.id))
                && !shard.is_closing()
                && !conn2.peer_done.get()
            {
                if tokio::time::timeout_at(deadline, conn2.poll_ready.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            shard.metrics().polls_held.dec();
            let next = answer_poll(&shard, &conn2, keep);
            if let Next::KeepAlive = next {
                after_response(&shard, &conn2).await;
            }
            next
        });
        *conn.held.borrow_mut() = Some(task);
        return Next::Held;
    }
    answer_poll(shard, conn, keep)
}

/// Answers a poll with what was collected (capped at the outbox size).
fn answer_poll(shard: &Shard, conn: &Rc<Conn>, keep: bool) -> Next {
    let now = Instant::now();
    let (epoch, (gap, frames)) =
        shard.engine(|e| (e.poll_epoch(conn.id), e.take_poll(conn.id, now)));
    let keep = keep && !shard.is_closing() && !conn.peer_done.get();
    let Some(epoch) = epoch else {
        // Ended before the topic's owner answered (it is overloaded, or
        // the client left): there is no epoch to name, and a guessed one
        // could make the client drop its place. It polls again.
        let msg = "the subscription was not made in time; poll again";
        return json_error(shard, conn, keep, ErrorCode::Overloaded, msg);
    };
    let body = reply::poll_body(gap, &frames, shard.config.outbox_size);
    // The epoch tells a polling client whether `since` still meant this
    // topic's stream (see docs/protocol.md, Epoch).
    respond_with(
        shard,
        conn,
        keep,
        200,
        "application/json",
        &[(EPOCH_HEADER, &epoch)],
        &body,
    )
}

/// Subscribes an SSE or long-poll connection; true once the engine has
/// answered (false if the connection went first).
async fn subscribe(shard: &Shard, conn: &Conn, topic: &str, since: Option<u64>) -> bool {
    let now = Instant::now();
    let mut flow = shard.engine(|e| e.subscribe(conn.id, topic, since, now));
    while flow == Flow::Wait {
        conn.resume.notified().await;
        flow = if shard.engine(|e| e.is_waiting(conn.id)) {
            Flow::Wait
        } else {
            Flow::Continue
        };
    }
    true
}

/// `GET /sse/{topic}?since=N` (or `Last-Event-ID: N`): a Server-Sent Events
/// stream, one event per message with `id:` = seq, heartbeats as comments.
pub(super) async fn sse(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    req: &Request,
    topic: &str,
    buf: &mut BytesMut,
) -> Next {
    if let Err(e) = topic::validate(topic) {
        return json_error(shard, conn, false, ErrorCode::BadTopic, e.message());
    }
    let last_event_id = req.header("last-event-id").map(|v| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    let since = match (query_u64(req.query(), "since"), last_event_id) {
        (Err(e), _) => return json_error(shard, conn, false, ErrorCode::BadRequest, &e),
        (_, Some(None)) => {
            return json_error(
                shard,
                conn,
                false,
                ErrorCode::BadRequest,
                "Last-Event-ID must be a seq",
            )
        }
        // The header is what a reconnecting EventSource sends: it wins.
        (_, Some(Some(id))) => Some(id),
        (Ok(s), None) => s,
    };
    // Refusals are HTTP answers, before the stream begins.
    if let Err(next) = admit(shard, conn, req, false) {
        return next;
    }
    if let Err((code, msg)) = shard.engine(|e| e.check_subscribe(conn.id, topic)) {
        return json_error(shard, conn, false, code, &msg);
    }
    shard.set_transport(conn, Transport::Sse);
    shard.set_kind(conn, Kind::Sse);
    let cors = match conn.cors.borrow_mut().take() {
        Some(o) => format!("Access-Control-Allow-Origin: {o}\r\nVary: Origin\r\n"),
        None => String::new(),
    };
    let head = Bytes::from(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         X-Accel-Buffering: no\r\n{EPOCH_HEADER}: {}\r\n{cors}Connection: close\r\n\r\n",
        shard.shared.epoch()
    ));
    shard.outbox(conn, |o| o.push_response(head));
    conn.phase.set(Phase::Stream);
    conn.deadline.set(None);
    conn.last_rx.set(Instant::now());
    subscribe(shard, conn, topic, since).await;
    if let Some(code) = shard.engine(|e| e.take_refusal(conn.id)) {
        let frame = reply::error(code, refusal(code), &None);
        let mut event = BytesMut::from(&b"event: error\ndata: "[..]);
        event.extend_from_slice(&reply::message_json(&frame));
        event.extend_from_slice(b"\n\n");
        shard.outbox(conn, |o| o.push_response(event.freeze()));
        conn.finish(shard, Instant::now() + shard.config.close_timeout);
        return Next::Close;
    }
    // An SSE client sends nothing more; read (and discard) until it goes.
    loop {
        buf.clear();
        if !read_more(shard, conn, buf, IDLE_READ).await {
            shard.outbox(conn, Outbox::close);
            return Next::Gone;
        }
    }
}
