//! One connection: its reader task, from the first byte of the first HTTP
//! request to the last byte drained after the close.
//!
//! The reader task owns the socket's read loop and is the only place a read
//! is ever in flight. Nothing cancels it: timeouts and shutdown act from
//! other tasks by calling `shutdown()` on the socket, which makes the
//! pending read return (tokio-uring rule 1, `docs/architecture.md`).
//!
//! This file owns the connection's I/O and nothing else: what a command
//! does, what a subscriber receives and what is queued for it is decided by
//! the shard's engine (`ringcast-core`), which this file feeds.
//!
//! Plain HTTP requests are served with keep-alive; an upgrade to `/ws`
//! (pub/sub) or `/echo` turns the connection into a WebSocket for good.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::Notify;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;
use tracing::debug;

use super::access::{self, Origin};
use super::client_ip::{self, Refused};
use super::endpoints;
use super::shard::Shard;
use crate::auth::AuthMode;
use crate::error::HttpError;
use crate::metrics::{self, Kind};
use ringcast_core::auth::Denied;
use ringcast_core::outbox::{Outbox, PushError};
use ringcast_core::wire::command::ErrorCode;
use ringcast_core::wire::reply;
use ringcast_core::{ConnId, Flow, Transport};
use ringcast_proto::close::CloseCode;
use ringcast_proto::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use ringcast_proto::handshake;
use ringcast_proto::http::{find_head_end, response, BodyFraming, HeadParser, Request};
use ringcast_proto::websocket::{Event, Role, WebSocket};

/// Reads of at most this much, even while a huge frame is arriving.
pub(super) const MAX_READ: usize = 256 * 1024;

/// An idle WebSocket waits with a read buffer this small: most clients of a
/// push broker only ever send a few short commands, and a buffer pinned to
/// every idle connection is most of a connection's memory.
pub(super) const IDLE_READ: usize = 512;

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
pub(super) const EPOCH_HEADER: &str = "Ringcast-Epoch";

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

/// What a WebSocket connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/ws`: JSON commands, pub/sub.
    PubSub,
    /// `/echo`: every message sent back (conformance target).
    Echo,
}

/// State shared by a connection's reader, writer and its shard. What it
/// sends and what it is subscribed to live in the shard's engine, under
/// `id`.
pub struct Conn {
    pub id: ConnId,
    pub stream: TcpStream,
    /// The TCP peer, and the client IP the per-IP limits counted this
    /// connection under (once its first request named it).
    pub peer: IpAddr,
    pub ip: Cell<Option<IpAddr>>,
    /// The allowed `Origin` of the request being answered: its response
    /// carries the CORS headers.
    pub(super) cors: RefCell<Option<Box<str>>>,
    pub ws: RefCell<Option<WebSocket>>,
    pub phase: Cell<Phase>,
    /// When the sweeper shuts the socket down regardless (request and
    /// close timeouts). None while a WebSocket is open.
    pub deadline: Cell<Option<Instant>>,
    pub last_rx: Cell<Instant>,
    /// When the WebSocket message being received began: a message must
    /// arrive whole within `--message-timeout`, however it trickles.
    pub message_started: Cell<Option<Instant>>,
    pub ping_sent: Cell<bool>,
    /// Reader and writer; the last one out deregisters the connection.
    pub tasks: Cell<u8>,
    /// What it is now, for the connection gauges.
    pub kind: Cell<Kind>,
    /// The writer has something to write (or the outbox closed).
    pub work: Notify,
    /// The writer made room in the outbox.
    pub space: Notify,
    /// The engine lets the reader hand over its next command.
    pub resume: Notify,
    /// A held long-poll has something to answer with.
    pub poll_ready: Notify,
    /// A long-poll being held by a task of its own, so that the reader
    /// reads on and sees the client leave; yields what follows its answer.
    pub(super) held: RefCell<Option<tokio::task::JoinHandle<Next>>>,
    /// The client ended its side while a poll was held: answer it now.
    pub(super) peer_done: Cell<bool>,
    /// The request being answered is a `HEAD`: responses go without body.
    head: Cell<bool>,
}

impl Conn {
    pub fn new(id: ConnId, stream: TcpStream, peer: IpAddr, deadline: Instant) -> Conn {
        Conn {
            id,
            stream,
            peer,
            ip: Cell::new(None),
            cors: RefCell::new(None),
            ws: RefCell::new(None),
            phase: Cell::new(Phase::Http),
            deadline: Cell::new(Some(deadline)),
            last_rx: Cell::new(Instant::now()),
            message_started: Cell::new(None),
            ping_sent: Cell::new(false),
            tasks: Cell::new(2),
            kind: Cell::new(Kind::Http),
            work: Notify::new(),
            space: Notify::new(),
            resume: Notify::new(),
            poll_ready: Notify::new(),
            held: RefCell::new(None),
            peer_done: Cell::new(false),
            head: Cell::new(false),
        }
    }

    /// Queues the protocol's pending output (pong, close) behind any data
    /// already queued, even past the outbox bound: a close or pong must not
    /// be lost behind a large message.
    fn flush_protocol_output(&self, shard: &Shard) {
        let out = self
            .ws
            .borrow_mut()
            .as_mut()
            .and_then(WebSocket::take_output);
        if let Some(out) = out {
            shard.send_control(self, out);
        }
    }

    /// Starts the closing handshake from our side (shutdown, idle or
    /// message timeout, slow consumer).
    pub fn start_close(&self, shard: &Shard, code: CloseCode, reason: &str, deadline: Instant) {
        let mut ws = self.ws.borrow_mut();
        if let Some(ws) = ws.as_mut() {
            ws.close(code, reason);
        }
        drop(ws);
        self.flush_protocol_output(shard);
        self.deadline.set(Some(deadline));
    }

    /// Sends a keep-alive ping.
    pub fn ping(&self, shard: &Shard) {
        if let Some(ws) = self.ws.borrow_mut().as_mut() {
            ws.ping(b"");
        }
        self.flush_protocol_output(shard);
        self.ping_sent.set(true);
    }

    /// Enters the closing phase: flush, half-close, drain until the peer
    /// closes or `deadline`.
    pub(super) fn finish(&self, shard: &Shard, deadline: Instant) {
        self.phase.set(Phase::Closing);
        self.deadline.set(Some(deadline));
        shard.outbox(self, Outbox::finish);
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
    /// The upgrade is answered: the connection is a WebSocket now (its
    /// request, all its headers, already dropped).
    WebSocket(Endpoint),
}

/// The reader task.
pub async fn serve(shard: Rc<Shard>, conn: Rc<Conn>) {
    let mut buf = BytesMut::with_capacity(shard.config.read_buffer);
    loop {
        let mut next = request(&shard, &conn, &mut buf).await;
        if let Next::WebSocket(endpoint) = next {
            next = websocket(&shard, &conn, &mut buf, endpoint).await;
        }
        match next {
            Next::KeepAlive => after_response(&shard, &conn).await,
            // The hold's task answers; meanwhile a read is what notices a
            // client that leaves.
            Next::Held => {}
            Next::Close => {
                drain(&shard, &conn, buf).await;
                break;
            }
            Next::Gone | Next::WebSocket(_) => break,
        }
    }
    end_hold(&conn).await;
    let now = Instant::now();
    shard.engine(|e| e.unsubscribe_all(conn.id, now));
    shard.task_done(&conn);
}

/// Between a response and the next request on a kept-alive connection.
pub(super) async fn after_response(shard: &Shard, conn: &Conn) {
    conn.phase.set(Phase::Http);
    // One response past the bound at most: a client that pipelines
    // without reading waits here, not in memory, for as long as an idle
    // connection may live.
    conn.deadline
        .set(Some(Instant::now() + shard.config.idle_timeout));
    while !shard.outbox(conn, |o| o.has_room()).unwrap_or(true) {
        conn.space.notified().await;
    }
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
pub(super) async fn read_more(shard: &Shard, conn: &Conn, buf: &mut BytesMut, want: usize) -> bool {
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
            shard.outbox(conn, Outbox::finish);
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

pub(super) fn reject(shard: &Shard, conn: &Conn, e: HttpError) -> Next {
    // A client's mistake, not the broker's: any web page can cause these,
    // so they must not flood the log at the default level. Counted in
    // /metrics (http_errors) instead.
    debug!(shard = shard.id, error = %e, "request rejected");
    shard.metrics().http_error(e);
    let resp = head_only(conn, e.to_response());
    shard.outbox(conn, |o| o.push_response(resp));
    conn.finish(shard, Instant::now() + shard.config.close_timeout);
    Next::Close
}

/// HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 only when
/// asked.
pub(super) fn keep_alive(req: &Request) -> bool {
    if req.version >= 1 {
        !req.has_token("connection", "close")
    } else {
        req.has_token("connection", "keep-alive")
    }
}

/// Queues a successful response and decides what follows it.
pub(super) fn respond(
    shard: &Shard,
    conn: &Conn,
    keep: bool,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> Next {
    respond_with(shard, conn, keep, status, content_type, &[], body)
}

/// [`respond`] with one more header.
pub(super) fn respond_with(
    shard: &Shard,
    conn: &Conn,
    keep: bool,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Next {
    let connection = if keep { "keep-alive" } else { "close" };
    let mut headers = vec![("Content-Type", content_type), ("Connection", connection)];
    headers.extend_from_slice(extra);
    let cors = conn.cors.borrow_mut().take();
    if let Some(origin) = &cors {
        headers.push(("Access-Control-Allow-Origin", origin));
        headers.push(("Vary", "Origin"));
    }
    let resp = head_only(conn, response(status, &headers, body));
    shard.outbox(conn, |o| o.push_response(resp));
    after_queued(shard, conn, keep)
}

/// What follows a queued response: the next request, or the close.
fn after_queued(shard: &Shard, conn: &Conn, keep: bool) -> Next {
    if keep {
        Next::KeepAlive
    } else {
        conn.finish(shard, Instant::now() + shard.config.close_timeout);
        Next::Close
    }
}

/// A response to a `HEAD` request: the head alone (its `Content-Length`
/// still says how long the body would be).
fn head_only(conn: &Conn, resp: Bytes) -> Bytes {
    if !conn.head.get() {
        return resp;
    }
    let end = find_head_end(&resp, 0).unwrap_or(resp.len());
    Bytes::slice(&resp, ..end)
}

/// `Allow` for the endpoints that answer `GET` and `HEAD`.
const GET_HEAD: &str = "GET, HEAD";

async fn route(shard: &Rc<Shard>, conn: &Rc<Conn>, req: Request, buf: &mut BytesMut) -> Next {
    let keep = keep_alive(&req);
    let path = req.path();
    conn.head.set(req.method == "HEAD");
    // RFC 9112: Host exactly once, and a body framed one way only. Either
    // failure is answered 400 and the connection closed: whatever follows
    // is never read as a request.
    if let Err(e) = req.check_host() {
        return reject(shard, conn, e);
    }
    let framing = match req.body_framing() {
        Ok(f) => f,
        Err(e) => return reject(shard, conn, e),
    };
    // Only `POST /publish/` takes a body. A GET or HEAD with one is refused
    // here, before its body could be parsed as the next request; any other
    // method is refused by the table below (404 or 405), and every refusal
    // closes the connection, body unread.
    let takes_body = req.method == "POST" && path.starts_with("/publish/");
    if framing.has_body() && !takes_body && matches!(req.method.as_str(), "GET" | "HEAD") {
        return reject(shard, conn, HttpError::BodyNotAllowed);
    }
    // HEAD is GET without the body, on the endpoints that answer at once.
    let method = match req.method.as_str() {
        "HEAD" => "GET",
        m => m,
    };
    let streaming = path.starts_with("/poll/") || path.starts_with("/sse/");
    if conn.head.get() && streaming {
        return reject(shard, conn, HttpError::MethodNotAllowed("GET"));
    }
    // Per-IP limits count a connection once its first request names its
    // client (a proxy's headers may). `/healthz` is exempt: a load
    // balancer must not take a busy broker for a dead one.
    if conn.ip.get().is_none() && path != "/healthz" {
        let ip = client_ip::client_ip(conn.peer, &req, shard.shared.trusted_proxies());
        match shard.shared.ip_limits().begin(ip, Instant::now()) {
            Ok(()) => conn.ip.set(Some(ip)),
            Err(why) => {
                shard.metrics().ip_refused.inc();
                debug!(shard = shard.id, %ip, ?why, "per-IP limit");
                let body = match why {
                    Refused::TooManyConnections => "too many connections from this address\n",
                    Refused::TooManyNewConnections => {
                        "too many new connections from this address\n"
                    }
                };
                return respond_with(
                    shard,
                    conn,
                    false,
                    503,
                    "text/plain; charset=utf-8",
                    &[("Retry-After", "1")],
                    body.as_bytes(),
                );
            }
        }
    }
    // Browsers: what a page of another origin may call is
    // `--allowed-origins` (empty: any), on every endpoint it can reach.
    let browser_facing =
        streaming || path.starts_with("/publish/") || path == "/ws" || path == "/echo";
    if browser_facing {
        match access::origin(&req, &shard.config.allowed_origins) {
            Origin::Refused => return reject(shard, conn, HttpError::OriginRejected),
            Origin::Allowed(o) if path != "/ws" && path != "/echo" => {
                *conn.cors.borrow_mut() = Some(o.into_boxed_str());
            }
            _ => {}
        }
    }
    if method == "OPTIONS" && browser_facing {
        return preflight(shard, conn, &req, keep);
    }
    match (method, path) {
        (_, "/ws") => upgrade(shard, conn, &req, Endpoint::PubSub),
        (_, "/echo") => upgrade(shard, conn, &req, Endpoint::Echo),
        ("GET", "/") => respond_with(
            shard,
            conn,
            keep,
            200,
            "text/html; charset=utf-8",
            // A new binary's page must not be hidden behind a cached one.
            &[("Cache-Control", "no-cache")],
            crate::demo::PAGE.as_bytes(),
        ),
        (_, "/") => reject(shard, conn, HttpError::MethodNotAllowed(GET_HEAD)),
        ("GET", "/metrics") => {
            let mut body = metrics::render(shard.shared.metrics());
            if let Some(c) = shard.shared.cluster() {
                c.render(&mut body);
            }
            respond(
                shard,
                conn,
                keep,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
            )
        }
        (_, "/metrics") => reject(shard, conn, HttpError::MethodNotAllowed(GET_HEAD)),
        ("GET", "/healthz") => healthz(shard, conn, keep),
        ("GET", p) if p.starts_with("/poll/") => {
            endpoints::poll(shard, conn, &req, &p["/poll/".len()..], keep).await
        }
        ("GET", p) if p.starts_with("/sse/") => {
            endpoints::sse(shard, conn, &req, &p["/sse/".len()..], buf).await
        }
        (_, p) if p.starts_with("/poll/") || p.starts_with("/sse/") => {
            reject(shard, conn, HttpError::MethodNotAllowed("GET"))
        }
        ("POST", p) if p.starts_with("/publish/") => {
            let topic = &p["/publish/".len()..];
            endpoints::publish(shard, conn, &req, framing, topic, keep, buf).await
        }
        (_, "/healthz") => reject(shard, conn, HttpError::MethodNotAllowed(GET_HEAD)),
        (_, p) if p.starts_with("/publish/") => {
            reject(shard, conn, HttpError::MethodNotAllowed("POST"))
        }
        _ => reject(shard, conn, HttpError::NotFound),
    }
}

/// `GET /healthz`: 200 once every shard is serving; in a cluster whose
/// Redis does not answer, still 200 (subscribers stay served) but the
/// body says "degraded" and why.
fn healthz(shard: &Shard, conn: &Conn, keep: bool) -> Next {
    let degraded = shard.shared.cluster().filter(|c| !c.is_up());
    if let (true, Some(c)) = (shard.shared.all_ready(), degraded) {
        let body = format!("degraded: redis: {}\n", c.why_down());
        respond(
            shard,
            conn,
            keep,
            200,
            "text/plain; charset=utf-8",
            body.as_bytes(),
        )
    } else if shard.shared.all_ready() {
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

/// Answers the upgrade; the WebSocket loop runs once the request (and its
/// headers: up to kilobytes from a browser) is dropped.
fn upgrade(shard: &Shard, conn: &Conn, req: &Request, endpoint: Endpoint) -> Next {
    let accepted = match handshake::accept(req, &shard.policy) {
        Ok(a) => a,
        Err(e) => return reject(shard, conn, e),
    };
    if endpoint == Endpoint::PubSub {
        // A token on the upgrade URL is checked before the upgrade: a bad
        // one is an HTTP 401, which every client library reports.
        if let Err(next) = admit(shard, conn, req, false) {
            return next;
        }
        let policy = shard.shared.policy();
        let now = Instant::now();
        if policy.mode() == AuthMode::Jwt && !policy.anonymous_may_subscribe() {
            // Nothing is allowed without a token: it must `connect` in time.
            let due = now + shard.config.handshake_timeout;
            shard.engine(|e| e.require_token_by(conn.id, due));
        }
    }
    shard.outbox(conn, |o| o.push_response(accepted.response()));
    Next::WebSocket(endpoint)
}

/// Admits a request's bearer credential (header or `token=`), if it has
/// one; a refusal is answered 401 (the `Err`). Without one the connection
/// keeps the anonymous grant it was opened with.
pub(super) fn admit(shard: &Shard, conn: &Conn, req: &Request, keep: bool) -> Result<(), Next> {
    let now = Instant::now();
    let Some(token) = access::bearer(req) else {
        // Credentials are per request: a token an earlier request on this
        // kept-alive connection carried (a proxy reuses connections for
        // many clients) admits nothing now.
        shard.engine(|e| e.reset_grant(conn.id));
        return Ok(());
    };
    let creds = ringcast_core::auth::Credentials::token(token);
    shard
        .engine(|e| e.admit(conn.id, &creds, now))
        .map_err(|d| {
            let msg = match d {
                Denied::Unauthorized(m) | Denied::Forbidden(m) => m,
                _ => "refused".into(),
            };
            json_error(shard, conn, keep, ErrorCode::Unauthorized, &msg)
        })
}

/// A CORS preflight (`OPTIONS` with `Origin`) from an allowed origin:
/// what may follow. From any other origin the route refused it already.
fn preflight(shard: &Shard, conn: &Conn, req: &Request, keep: bool) -> Next {
    let origin = conn.cors.borrow_mut().take();
    let Some(origin) = origin.filter(|_| req.header("access-control-request-method").is_some())
    else {
        return reject(shard, conn, HttpError::MethodNotAllowed(GET_HEAD));
    };
    let headers = access::preflight_headers(&origin);
    let connection = if keep { "keep-alive" } else { "close" };
    let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    h.push(("Connection", connection));
    let resp = response(204, &h, b"");
    shard.outbox(conn, |o| o.push_response(resp));
    after_queued(shard, conn, keep)
}

/// A refused publish, poll or SSE request: `400` (or `503` for a limit)
/// with a JSON body shaped like the WebSocket `error` reply. The connection
/// is kept.
pub(super) fn json_error(
    shard: &Shard,
    conn: &Conn,
    keep: bool,
    code: ErrorCode,
    message: &str,
) -> Next {
    json_error_after(shard, conn, keep, code, message, None)
}

/// [`json_error`] with the seconds a client should wait before retrying
/// (`Retry-After`, for a rate limit).
pub(super) fn json_error_after(
    shard: &Shard,
    conn: &Conn,
    keep: bool,
    code: ErrorCode,
    message: &str,
    retry: Option<f64>,
) -> Next {
    let status = match code {
        ErrorCode::Limit | ErrorCode::Overloaded | ErrorCode::Unavailable => 503,
        ErrorCode::Unauthorized => 401,
        ErrorCode::Forbidden => 403,
        ErrorCode::RateLimited => 429,
        _ => 400,
    };
    let frame = reply::error(code, message, &None);
    let retry = match code {
        // An overloaded or rate-limited broker says when to come back.
        ErrorCode::Overloaded | ErrorCode::RateLimited | ErrorCode::Unavailable => {
            Some(format!("{}", retry.unwrap_or(1.0).ceil().max(1.0) as u64))
        }
        _ => None,
    };
    let mut extra: Vec<(&str, &str)> = Vec::new();
    if let Some(r) = &retry {
        extra.push(("Retry-After", r));
    }
    if code == ErrorCode::Unauthorized {
        extra.push(("WWW-Authenticate", "Bearer realm=\"ringcast\""));
    }
    respond_with(
        shard,
        conn,
        keep,
        status,
        "application/json",
        &extra,
        &reply::message_json(&frame),
    )
}

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

/// The WebSocket read loop for both endpoints.
async fn websocket(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    buf: &mut BytesMut,
    endpoint: Endpoint,
) -> Next {
    *conn.ws.borrow_mut() = Some(WebSocket::new(Role::Server, shard.config.ws_limits()));
    if endpoint == Endpoint::PubSub {
        shard.set_transport(conn, Transport::WebSocket);
    }
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
            let (res, open, closed, partial) = {
                let mut guard = conn.ws.borrow_mut();
                let ws = guard.as_mut().expect("set above");
                let res = ws.poll(buf);
                (res, ws.is_open(), ws.is_closed(), ws.in_message())
            };
            // A message in progress has `--message-timeout` to arrive.
            match (partial, conn.message_started.get()) {
                (true, None) => conn.message_started.set(Some(Instant::now())),
                (false, Some(_)) => conn.message_started.set(None),
                _ => {}
            }
            conn.flush_protocol_output(shard);
            match (res, endpoint) {
                (Ok(Some(Event::Text(p))), Endpoint::Echo) if open => {
                    send(shard, conn, OpCode::Text, p).await
                }
                (Ok(Some(Event::Binary(p))), Endpoint::Echo) if open => {
                    send(shard, conn, OpCode::Binary, p).await
                }
                (Ok(Some(Event::Text(p))), Endpoint::PubSub) if open => {
                    // A client that sends commands faster than it reads
                    // their replies waits here (TCP pushes back), not in
                    // our memory; one that reads is never cut off.
                    while !shard.outbox(conn, |o| o.can_take_command()).unwrap_or(true) {
                        conn.space.notified().await;
                    }
                    // Replies come in command order: the engine says when
                    // the next command may come.
                    let now = Instant::now();
                    if shard.engine(|e| e.command(conn.id, &p, now)) == Flow::Wait {
                        while shard.engine(|e| e.is_waiting(conn.id)) {
                            conn.resume.notified().await;
                        }
                    }
                }
                (Ok(Some(Event::Binary(_))), Endpoint::PubSub) if open => shard.send_control(
                    conn,
                    reply::error(
                        ErrorCode::BadJson,
                        "commands are JSON objects in text frames",
                        &None,
                    ),
                ),
                (Ok(Some(_)), _) => {}
                (Ok(None), _) => break,
                (Err(e), _) => {
                    debug!(shard = shard.id, error = %e, close = e.close_code().0, "websocket failed")
                }
            }
            if closed {
                conn.finish(shard, Instant::now() + shard.config.close_timeout);
                return Next::Close;
            }
        }
        let hint = conn.ws.borrow().as_ref().map_or(0, WebSocket::read_hint);
        let want = hint.clamp(size.0, MAX_READ);
        match read_into(shard, conn, buf, want).await {
            Some((got, asked)) => size.after(asked, got),
            None => {
                debug!(shard = shard.id, "websocket peer went away");
                shard.outbox(conn, Outbox::close);
                return Next::Gone;
            }
        }
    }
}

/// Queues an echoed frame, waiting for the writer to make room:
/// backpressure for the one producer that may wait (the reader).
async fn send(shard: &Shard, conn: &Conn, opcode: OpCode, payload: Bytes) {
    let (head, rest) = data_frame(opcode, payload);
    loop {
        match shard.outbox(conn, |o| o.try_push_frame(head.clone(), rest.clone())) {
            Some(Err(PushError::Full)) => conn.space.notified().await,
            _ => return,
        }
    }
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

/// Reader for a connection past `--max-connections`: it gets one request
/// head (within the deadline the shard set, enforced by the sweeper) and
/// one answer, then the connection closes. `GET /healthz` (or `HEAD`) is
/// answered as usual, so that a load balancer does not take a busy broker
/// for a dead one; anything else gets `503`.
pub async fn overloaded(shard: &Shard, conn: &Conn) {
    let mut buf = BytesMut::with_capacity(1024);
    let mut parser = HeadParser::new();
    let limits = shard.config.head_limits();
    let health = loop {
        match parser.parse(&buf, limits) {
            Ok(Some((req, _))) => {
                conn.head.set(req.method == "HEAD");
                break matches!(req.method.as_str(), "GET" | "HEAD")
                    && req.path() == "/healthz"
                    && req.check_host().is_ok()
                    && req.body_framing() == Ok(BodyFraming::None);
            }
            Ok(None) => {}
            Err(_) => break false,
        }
        if !read_more(shard, conn, &mut buf, 1024).await {
            shard.outbox(conn, Outbox::finish);
            return;
        }
    };
    if health {
        healthz(shard, conn, false);
    } else {
        // No log line per refused connection: an overload is when logs
        // can least afford one.
        shard.metrics().http_error(HttpError::Overloaded);
        let resp = head_only(conn, HttpError::Overloaded.to_response());
        shard.outbox(conn, |o| o.push_response(resp));
        conn.finish(shard, Instant::now() + shard.config.close_timeout);
    }
    drain(shard, conn, buf).await;
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
