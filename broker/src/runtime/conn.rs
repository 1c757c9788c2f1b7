//! One connection: its reader task, from the first byte of the first HTTP
//! request to the last byte drained after the close.
//!
//! The reader task owns the socket's read loop and is the only place a read
//! is ever in flight. Nothing cancels it: timeouts and shutdown act from
//! other tasks by calling `shutdown()` on the socket, which makes the
//! pending read return (tokio-uring rule 1 in DEVELOPERS.md).
//!
//! Plain HTTP requests are served with keep-alive; an upgrade to `/ws`
//! (pub/sub) or `/echo` turns the connection into a WebSocket for good.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::Notify;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;
use tracing::{debug, warn};

use super::pubsub::Sub;
use super::shard::Shard;
use crate::error::HttpError;
use crate::metrics::{self, Kind};
use crate::outbox::{Outbox, PushError};
use ringcast_core::topic;
use ringcast_core::wire::command::{self, ErrorCode};
use ringcast_core::wire::reply;
use ringcast_proto::close::CloseCode;
use ringcast_proto::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use ringcast_proto::handshake;
use ringcast_proto::http::{response, HeadParser, Request};
use ringcast_proto::websocket::{Event, Role, WebSocket};

/// Reads of at most this much, even while a huge frame is arriving.
const MAX_READ: usize = 256 * 1024;

/// An idle WebSocket waits with a read buffer this small: most clients of a
/// push broker only ever send a few short commands, and a buffer pinned to
/// every idle connection is most of a connection's memory.
const IDLE_READ: usize = 512;

/// Sizes reads to the traffic: doubles while reads fill the buffer, halves
/// while they stay small, between [`IDLE_READ`] and [`MAX_READ`].
struct ReadSize(usize);

impl ReadSize {
    fn after(&mut self, asked: usize, got: usize) {
        if got >= asked {
            self.0 = (self.0 * 2).min(MAX_READ);
        } else if got < self.0 / 4 {
            self.0 = (self.0 / 2).max(IDLE_READ);
        }
    }
}

/// The response header naming the broker instance on `/poll` and `/sse`.
const EPOCH_HEADER: &str = "Ringcast-Epoch";

/// Payloads up to this size are copied behind their header into one
/// buffer; larger ones are sent as header + the original `Bytes`.
const COPY_THRESHOLD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading an HTTP request (the first, or the next on keep-alive).
    Http,
    /// An open WebSocket.
    WebSocket,
    /// A Server-Sent Events response is streaming.
    Stream,
    /// Our last bytes are queued; reading and discarding until the peer
    /// closes or the deadline passes.
    Closing,
}

/// How a subscribed connection receives messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/ws`: the pre-encoded WebSocket frame.
    WebSocket,
    /// `/sse/{topic}`: one SSE event per message.
    Sse,
    /// `/poll/{topic}`: collected for the held request.
    Poll,
}

/// What a WebSocket connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// `/ws`: JSON commands, pub/sub.
    PubSub,
    /// `/echo`: every message sent back (conformance target).
    Echo,
}

/// State shared by a connection's reader, writer and its shard.
pub struct Conn {
    pub stream: TcpStream,
    /// Inline, not behind its own `Rc`: every delivery touches it, and the
    /// `Conn` is already shared.
    pub outbox: Outbox,
    pub ws: RefCell<Option<WebSocket>>,
    pub phase: Cell<Phase>,
    /// When the sweeper shuts the socket down regardless (request and
    /// close timeouts). None while a WebSocket is open.
    pub deadline: Cell<Option<Instant>>,
    pub last_rx: Cell<Instant>,
    pub ping_sent: Cell<bool>,
    /// Reader and writer; the last one out deregisters the connection.
    pub tasks: Cell<u8>,
    /// Pub/sub subscriptions of a `/ws` connection.
    pub subs: RefCell<Vec<Sub>>,
    /// Marked slow (being disconnected): deliveries skip it.
    pub slow: Cell<bool>,
    /// What it is now, for the connection gauges.
    pub kind: Cell<Kind>,
    pub transport: Cell<Transport>,
    /// A held long-poll's messages, the `gap` notice, and its wake-up.
    pub poll: RefCell<Vec<Bytes>>,
    pub poll_gap: RefCell<Option<Bytes>>,
    pub poll_ready: Notify,
    /// The owner refused an HTTP-transport subscription (topic limit).
    pub refused: Cell<Option<ErrorCode>>,
    /// A long-poll being held by a task of its own, so that the reader
    /// reads on and sees the client leave; yields what follows its answer.
    held: RefCell<Option<tokio::task::JoinHandle<Next>>>,
    /// The client ended its side while a poll was held: answer it now.
    peer_done: Cell<bool>,
}

impl Conn {
    pub fn new(stream: TcpStream, outbox_limit: usize, deadline: Instant) -> Conn {
        Conn {
            stream,
            outbox: Outbox::new(outbox_limit),
            ws: RefCell::new(None),
            phase: Cell::new(Phase::Http),
            deadline: Cell::new(Some(deadline)),
            last_rx: Cell::new(Instant::now()),
            ping_sent: Cell::new(false),
            tasks: Cell::new(2),
            subs: RefCell::new(Vec::new()),
            slow: Cell::new(false),
            kind: Cell::new(Kind::Http),
            transport: Cell::new(Transport::WebSocket),
            poll: RefCell::new(Vec::new()),
            poll_gap: RefCell::new(None),
            poll_ready: Notify::new(),
            refused: Cell::new(None),
            held: RefCell::new(None),
            peer_done: Cell::new(false),
        }
    }

    /// Queues the protocol's pending output (pong, close) behind any data
    /// already queued, even past the outbox bound: a close or pong must not
    /// be lost behind a large message.
    fn flush_protocol_output(&self) {
        let out = self
            .ws
            .borrow_mut()
            .as_mut()
            .and_then(WebSocket::take_output);
        if let Some(out) = out {
            self.send_reply(out);
        }
    }

    /// Queues a reply to the client's own command (or a protocol frame)
    /// like a control frame: past the outbox bound, within its slack. A
    /// peer that lets even these pile up is not reading; it is cut off.
    pub fn send_reply(&self, frame: Bytes) {
        if self.outbox.push_control(frame) == Err(PushError::Full) {
            debug!("peer does not read its replies; dropping it");
            self.outbox.close();
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Starts the closing handshake from our side (shutdown, idle timeout,
    /// slow consumer).
    pub fn start_close(&self, code: CloseCode, reason: &str, deadline: Instant) {
        let mut ws = self.ws.borrow_mut();
        if let Some(ws) = ws.as_mut() {
            ws.close(code, reason);
        }
        drop(ws);
        self.flush_protocol_output();
        self.deadline.set(Some(deadline));
    }

    /// Sends a keep-alive ping.
    pub fn ping(&self) {
        if let Some(ws) = self.ws.borrow_mut().as_mut() {
            ws.ping(b"");
        }
        self.flush_protocol_output();
        self.ping_sent.set(true);
    }

    /// Enters the closing phase: flush, half-close, drain until the peer
    /// closes or `deadline`.
    fn finish(&self, deadline: Instant) {
        self.phase.set(Phase::Closing);
        self.deadline.set(Some(deadline));
        self.outbox.finish();
    }
}

/// How a request handler left the connection.
pub enum Next {
    /// Serve the next request.
    KeepAlive,
    /// A long-poll is held by its own task; read on.
    Held,
    /// Our last bytes are queued; drain until the peer closes.
    Close,
    /// The peer is gone; nothing to drain.
    Gone,
}

/// The reader task.
pub async fn serve(shard: Rc<Shard>, conn: Rc<Conn>, key: usize) {
    let mut buf = BytesMut::with_capacity(shard.config.read_buffer);
    loop {
        match request(&shard, &conn, &mut buf).await {
            Next::KeepAlive => after_response(&shard, &conn).await,
            // The hold's task answers; meanwhile a read is what notices a
            // client that leaves.
            Next::Held => {}
            Next::Close => {
                drain(&shard, &conn, buf).await;
                break;
            }
            Next::Gone => break,
        }
    }
    end_hold(&conn).await;
    if !conn.subs.borrow().is_empty() {
        shard.pubsub.disconnect(&conn);
    }
    shard.task_done(key, &conn);
}

/// Between a response and the next request on a kept-alive connection.
async fn after_response(shard: &Shard, conn: &Conn) {
    conn.phase.set(Phase::Http);
    // One response past the bound at most: a client that pipelines
    // without reading waits here, not in memory, for as long as an idle
    // connection may live.
    conn.deadline
        .set(Some(Instant::now() + shard.config.idle_timeout));
    conn.outbox.wait_for_room().await;
    // Then the next request must arrive like a first one.
    conn.deadline
        .set(Some(Instant::now() + shard.config.handshake_timeout));
}

/// Ends a held poll, if any: it answers at once with what it has (a
/// half-closed client still reads that; for one that is gone, the hold and
/// its subscription are freed now instead of at `timeout_ms`). Returns what
/// follows its answer.
async fn end_hold(conn: &Conn) -> Option<Next> {
    let held = conn.held.borrow_mut().take();
    let held = held?;
    conn.peer_done.set(true);
    conn.poll_ready.notify_one();
    Some(held.await.unwrap_or(Next::Gone))
}

/// Reads one more chunk into `buf`; `None` on EOF or error, else how many
/// bytes arrived and how many could have.
async fn read_into(
    shard: &Shard,
    conn: &Conn,
    buf: &mut BytesMut,
    want: usize,
) -> Option<(usize, usize)> {
    if buf.is_empty() && buf.capacity() > 2 * want {
        // Do not keep a large buffer pinned while waiting.
        *buf = BytesMut::with_capacity(want);
    } else if buf.capacity() - buf.len() < want / 2 + 1 {
        buf.reserve(want);
    }
    // tokio-uring reads into the start of a buffer and sets its length;
    // reading into the spare capacity keeps the unconsumed bytes in front.
    let start = buf.len();
    let asked = buf.capacity() - start;
    let (res, slice) = conn.stream.read(std::mem::take(buf).slice(start..)).await;
    *buf = slice.into_inner();
    match res {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            conn.last_rx.set(Instant::now());
            conn.ping_sent.set(false);
            shard.metrics().bytes_in.add(n as u64);
            Some((n, asked))
        }
    }
}

/// [`read_into`] when the sizes do not matter.
async fn read_more(shard: &Shard, conn: &Conn, buf: &mut BytesMut, want: usize) -> bool {
    read_into(shard, conn, buf, want).await.is_some()
}

/// Reads and serves one HTTP request.
async fn request(shard: &Rc<Shard>, conn: &Rc<Conn>, buf: &mut BytesMut) -> Next {
    let mut parser = HeadParser::new();
    let limits = shard.config.head_limits();
    let req = loop {
        match parser.parse(buf, limits) {
            Ok(Some((req, n))) => {
                buf.advance(n);
                break req;
            }
            Ok(None) => {}
            Err(e) => return reject(shard, conn, e),
        }
        if !read_more(shard, conn, buf, shard.config.read_buffer).await {
            // The peer is done sending; let it have what we queued (a held
            // poll answers first).
            end_hold(conn).await;
            conn.outbox.finish();
            return Next::Gone;
        }
    };
    // A request behind a held poll waits for its answer: responses go out
    // in request order.
    let held = conn.held.borrow_mut().take();
    if let Some(held) = held {
        match held.await.unwrap_or(Next::Gone) {
            Next::KeepAlive => {}
            other => return other,
        }
    }
    route(shard, conn, req, buf).await
}

fn reject(shard: &Shard, conn: &Conn, e: HttpError) -> Next {
    warn!(shard = shard.id, error = %e, "request rejected");
    shard.metrics().http_error(e);
    let _ = conn.outbox.push_response(e.to_response());
    conn.finish(Instant::now() + shard.config.close_timeout);
    Next::Close
}

/// HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 only when
/// asked.
fn keep_alive(req: &Request) -> bool {
    if req.version >= 1 {
        !req.has_token("connection", "close")
    } else {
        req.has_token("connection", "keep-alive")
    }
}

/// Queues a successful response and decides what follows it.
fn respond(
    shard: &Shard,
    conn: &Conn,
    keep: bool,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> Next {
    respond_with(shard, conn, keep, status, content_type, None, body)
}

/// [`respond`] with one more header.
fn respond_with(
    shard: &Shard,
    conn: &Conn,
    keep: bool,
    status: u16,
    content_type: &str,
    extra: Option<(&str, &str)>,
    body: &[u8],
) -> Next {
    let connection = if keep { "keep-alive" } else { "close" };
    let mut headers = vec![("Content-Type", content_type), ("Connection", connection)];
    headers.extend(extra);
    let resp = response(status, &headers, body);
    let _ = conn.outbox.push_response(resp);
    if keep {
        Next::KeepAlive
    } else {
        conn.finish(Instant::now() + shard.config.close_timeout);
        Next::Close
    }
}

async fn route(shard: &Rc<Shard>, conn: &Rc<Conn>, req: Request, buf: &mut BytesMut) -> Next {
    let keep = keep_alive(&req);
    let path = req.path();
    match (req.method.as_str(), path) {
        (_, "/ws") => upgrade(shard, conn, &req, buf, Endpoint::PubSub).await,
        (_, "/echo") => upgrade(shard, conn, &req, buf, Endpoint::Echo).await,
        ("GET", "/") => respond_with(
            shard,
            conn,
            keep,
            200,
            "text/html; charset=utf-8",
            // A new binary's page must not be hidden behind a cached one.
            Some(("Cache-Control", "no-cache")),
            crate::demo::PAGE.as_bytes(),
        ),
        (_, "/") => reject(shard, conn, HttpError::MethodNotAllowed("GET")),
        ("GET", "/metrics") => {
            let body = metrics::render(shard.shared.metrics());
            respond(
                shard,
                conn,
                keep,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
            )
        }
        (_, "/metrics") => reject(shard, conn, HttpError::MethodNotAllowed("GET")),
        ("GET", "/healthz") => {
            if shard.shared.all_ready() {
                respond(shard, conn, keep, 200, "text/plain; charset=utf-8", b"ok\n")
            } else {
                respond(
                    shard,
                    conn,
                    keep,
                    503,
                    "text/plain; charset=utf-8",
                    b"starting\n",
                )
            }
        }
        ("GET", p) if p.starts_with("/poll/") => {
            poll(shard, conn, &req, &p["/poll/".len()..], keep).await
        }
        ("GET", p) if p.starts_with("/sse/") => {
            sse(shard, conn, &req, &p["/sse/".len()..], buf).await
        }
        (_, p) if p.starts_with("/poll/") || p.starts_with("/sse/") => {
            reject(shard, conn, HttpError::MethodNotAllowed("GET"))
        }
        ("POST", p) if p.starts_with("/publish/") => {
            publish(shard, conn, &req, &p["/publish/".len()..], keep, buf).await
        }
        (_, "/healthz") => reject(shard, conn, HttpError::MethodNotAllowed("GET")),
        (_, p) if p.starts_with("/publish/") => {
            reject(shard, conn, HttpError::MethodNotAllowed("POST"))
        }
        _ => reject(shard, conn, HttpError::NotFound),
    }
}

async fn upgrade(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    req: &Request,
    buf: &mut BytesMut,
    endpoint: Endpoint,
) -> Next {
    match handshake::accept(req, &shard.policy) {
        Ok(accepted) => {
            let _ = conn.outbox.push_response(accepted.response());
            websocket(shard, conn, buf, endpoint).await
        }
        Err(e) => reject(shard, conn, e),
    }
}

/// `POST /publish/{topic}`: the body is the message `data`.
async fn publish(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    req: &Request,
    topic: &str,
    keep: bool,
    buf: &mut BytesMut,
) -> Next {
    if req.header("transfer-encoding").is_some() {
        return reject(shard, conn, HttpError::LengthRequired);
    }
    let Some(len) = req
        .header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return reject(shard, conn, HttpError::LengthRequired);
    };
    if len > shard.config.max_message_size {
        return reject(shard, conn, HttpError::PayloadTooLarge);
    }
    while buf.len() < len {
        let want = (len - buf.len()).clamp(shard.config.read_buffer, MAX_READ);
        if !read_more(shard, conn, buf, want).await {
            conn.outbox.close();
            return Next::Gone;
        }
    }
    let body = buf.split_to(len).freeze();
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
    match shard.pubsub.publish_http(topic, body).await {
        Ok(Ok(seq)) => {
            let body = format!("{{\"seq\":{seq}}}");
            respond(shard, conn, keep, 200, "application/json", body.as_bytes())
        }
        Ok(Err(code)) => json_error(shard, conn, keep, code, "too many topics"),
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

/// `GET /poll/{topic}?since=N&timeout_ms=T`: every retained message with
/// `seq > N` at once, or the request is held until one arrives or `T` ms
/// pass (`200 []`). A held request costs a waiting task, not a thread.
async fn poll(shard: &Rc<Shard>, conn: &Rc<Conn>, req: &Request, topic: &str, keep: bool) -> Next {
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
    conn.transport.set(Transport::Poll);
    // The request is in; holding it is bounded by `timeout_ms` (at most
    // --max-poll-timeout), not by the request deadline.
    conn.deadline.set(None);
    if let Some(answered) = shard.pubsub.subscribe_http(conn, topic, Some(since)) {
        let _ = answered.await;
    }
    if conn.refused.take().is_some() {
        shard.pubsub.disconnect(conn);
        conn.transport.set(Transport::WebSocket);
        return json_error(shard, conn, keep, ErrorCode::Limit, "too many topics");
    }
    if conn.poll.borrow().is_empty() && conn.poll_gap.borrow().is_none() && timeout_ms > 0 {
        // Held by a task of its own: the reader goes back to reading, so a
        // client that leaves mid-hold is seen at once (see `end_hold`).
        shard.metrics().polls_held.inc();
        let (shard, conn2) = (shard.clone(), conn.clone());
        let task = tokio_uring::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            // A timer around a wake-up, not around socket I/O: safe to drop.
            while conn2.poll.borrow().is_empty() && !shard.is_closing() && !conn2.peer_done.get() {
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
    shard.pubsub.disconnect(conn);
    conn.transport.set(Transport::WebSocket);
    let frames = std::mem::take(&mut *conn.poll.borrow_mut());
    let gap = conn.poll_gap.borrow_mut().take();
    let body = reply::poll_body(gap, &frames, shard.config.outbox_size);
    // The epoch tells a polling client whether `since` still meant this
    // instance's stream (see `Shared::epoch`).
    respond_with(
        shard,
        conn,
        keep && !shard.is_closing() && !conn.peer_done.get(),
        200,
        "application/json",
        Some((EPOCH_HEADER, shard.shared.epoch())),
        &body,
    )
}

/// `GET /sse/{topic}?since=N` (or `Last-Event-ID: N`): a Server-Sent Events
/// stream, one event per message with `id:` = seq, heartbeats as comments.
async fn sse(
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
    conn.transport.set(Transport::Sse);
    conn.outbox.set_sse();
    shard.set_kind(conn, Kind::Sse);
    let _ = conn.outbox.push_response(Bytes::from(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         X-Accel-Buffering: no\r\n{EPOCH_HEADER}: {}\r\nConnection: close\r\n\r\n",
        shard.shared.epoch()
    )));
    conn.phase.set(Phase::Stream);
    conn.deadline.set(None);
    conn.last_rx.set(Instant::now());
    if let Some(answered) = shard.pubsub.subscribe_http(conn, topic, since) {
        let _ = answered.await;
    }
    if conn.refused.take().is_some() {
        let frame = reply::error(ErrorCode::Limit, "too many topics", &None);
        let mut event = BytesMut::from(&b"event: error\ndata: "[..]);
        event.extend_from_slice(&reply::message_json(&frame));
        event.extend_from_slice(b"\n\n");
        let _ = conn.outbox.push_response(event.freeze());
        conn.finish(Instant::now() + shard.config.close_timeout);
        return Next::Close;
    }
    // An SSE client sends nothing more; read (and discard) until it goes.
    loop {
        buf.clear();
        if !read_more(shard, conn, buf, IDLE_READ).await {
            conn.outbox.close();
            return Next::Gone;
        }
    }
}

/// A refused publish, poll or SSE request: `400` (or `503` for a limit)
/// with a JSON body shaped like the WebSocket `error` reply. The connection
/// is kept.
fn json_error(shard: &Shard, conn: &Conn, keep: bool, code: ErrorCode, message: &str) -> Next {
    let status = if code == ErrorCode::Limit { 503 } else { 400 };
    let frame = reply::error(code, message, &None);
    respond(
        shard,
        conn,
        keep,
        status,
        "application/json",
        &reply::message_json(&frame),
    )
}

/// Frames a server-role data message. Small payloads are copied behind the
/// header; large ones keep their buffer and only the header is new.
fn data_frame(opcode: OpCode, payload: Bytes) -> (Bytes, Option<Bytes>) {
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

/// The WebSocket read loop for both endpoints.
async fn websocket(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    buf: &mut BytesMut,
    endpoint: Endpoint,
) -> Next {
    *conn.ws.borrow_mut() = Some(WebSocket::new(Role::Server, shard.config.ws_limits()));
    shard.set_kind(
        conn,
        if endpoint == Endpoint::Echo {
            Kind::Echo
        } else {
            Kind::WebSocket
        },
    );
    conn.phase.set(Phase::WebSocket);
    conn.deadline.set(None);
    conn.last_rx.set(Instant::now());
    debug!(shard = shard.id, ?endpoint, "websocket open");
    let mut size = ReadSize(IDLE_READ);
    loop {
        loop {
            let (res, open, closed) = {
                let mut guard = conn.ws.borrow_mut();
                let ws = guard.as_mut().expect("set above");
                let res = ws.poll(buf);
                (res, ws.is_open(), ws.is_closed())
            };
            conn.flush_protocol_output();
            match (res, endpoint) {
                (Ok(Some(Event::Text(p))), Endpoint::Echo) if open => {
                    send(conn, OpCode::Text, p).await
                }
                (Ok(Some(Event::Binary(p))), Endpoint::Echo) if open => {
                    send(conn, OpCode::Binary, p).await
                }
                (Ok(Some(Event::Text(p))), Endpoint::PubSub) if open => {
                    // Replies come in command order: wait for an answer
                    // that needs the topic's owner before the next command.
                    if let Some(answered) = shard.pubsub.command(conn, &p) {
                        let _ = answered.await;
                    }
                }
                (Ok(Some(Event::Binary(_))), Endpoint::PubSub) if open => {
                    conn.send_reply(reply::error(
                        ErrorCode::BadJson,
                        "commands are JSON objects in text frames",
                        &None,
                    ))
                }
                (Ok(Some(_)), _) => {}
                (Ok(None), _) => break,
                (Err(e), _) => {
                    warn!(shard = shard.id, error = %e, close = e.close_code().0, "websocket failed")
                }
            }
            if closed {
                conn.finish(Instant::now() + shard.config.close_timeout);
                return Next::Close;
            }
        }
        let hint = conn.ws.borrow().as_ref().map_or(0, WebSocket::read_hint);
        let want = hint.clamp(size.0, MAX_READ);
        match read_into(shard, conn, buf, want).await {
            Some((got, asked)) => size.after(asked, got),
            None => {
                debug!(shard = shard.id, "websocket peer went away");
                conn.outbox.close();
                return Next::Gone;
            }
        }
    }
}

async fn send(conn: &Conn, opcode: OpCode, payload: Bytes) {
    let (head, rest) = data_frame(opcode, payload);
    conn.outbox.push(head, rest).await;
}

/// Reads and discards until the peer closes; the sweeper's deadline ends
/// it otherwise. Closing with unread data in the socket would make the
/// kernel send RST, and the peer could lose our last response or close
/// frame. The writer half-closes once its queue is flushed; the socket is
/// released when both tasks are done.
async fn drain(shard: &Shard, conn: &Conn, mut buf: BytesMut) {
    loop {
        buf.clear();
        if !read_more(shard, conn, &mut buf, 4096).await {
            break;
        }
    }
}

/// Reader for a connection refused before reading anything (overload).
pub async fn drain_only(shard: &Shard, conn: &Conn) {
    drain(shard, conn, BytesMut::with_capacity(1024)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_size_follows_the_traffic() {
        let mut s = ReadSize(IDLE_READ);
        s.after(512, 512);
        s.after(1024, 1024);
        assert_eq!(s.0, 2048);
        for _ in 0..20 {
            s.after(s.0, s.0);
        }
        assert_eq!(s.0, MAX_READ);
        for _ in 0..20 {
            s.after(s.0, 10);
        }
        assert_eq!(s.0, IDLE_READ);
        s.after(512, 300);
        assert_eq!(s.0, IDLE_READ, "a moderately full read keeps the size");
    }
}
