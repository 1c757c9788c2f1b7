//! One connection: its reader task, from the first byte of the HTTP request
//! to the last byte drained after the close.
//!
//! The reader task owns the socket's read loop and is the only place a read
//! is ever in flight. Nothing cancels it: timeouts and shutdown act from
//! other tasks by calling `shutdown()` on the socket, which makes the
//! pending read return (tokio-uring rule 1 in DEVELOPERS.md).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;
use tracing::debug;

use super::shard::Shard;
use crate::close::CloseCode;
use crate::error::HttpError;
use crate::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::handshake::{self, plain_response};
use crate::http::{HeadParser, Request};
use crate::outbox::{Outbox, PushError};
use crate::websocket::{Event, Role, WebSocket};

/// Reads of at most this much, even while a huge frame is arriving.
const MAX_READ: usize = 256 * 1024;

/// Payloads up to this size are copied behind their header into one
/// buffer; larger ones are sent as header + the original `Bytes`.
const COPY_THRESHOLD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP request head.
    Http,
    /// An open WebSocket.
    WebSocket,
    /// Our last bytes are queued; reading and discarding until the peer
    /// closes or the deadline passes.
    Closing,
}

/// State shared by a connection's reader, writer and its shard.
pub struct Conn {
    pub stream: Rc<TcpStream>,
    pub outbox: Rc<Outbox>,
    pub ws: RefCell<Option<WebSocket>>,
    pub phase: Cell<Phase>,
    /// When the sweeper shuts the socket down regardless (handshake and
    /// close timeouts). None while a WebSocket is open.
    pub deadline: Cell<Option<Instant>>,
    pub last_rx: Cell<Instant>,
    pub ping_sent: Cell<bool>,
    /// Reader and writer; the last one out deregisters the connection.
    pub tasks: Cell<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream, outbox_limit: usize, deadline: Instant) -> Conn {
        Conn {
            stream: Rc::new(stream),
            outbox: Rc::new(Outbox::new(outbox_limit)),
            ws: RefCell::new(None),
            phase: Cell::new(Phase::Http),
            deadline: Cell::new(Some(deadline)),
            last_rx: Cell::new(Instant::now()),
            ping_sent: Cell::new(false),
            tasks: Cell::new(2),
        }
    }

    /// Queues the protocol's pending output (pong, close) behind any data
    /// already queued, even past the outbox bound: a close or pong must not
    /// be lost behind a large message. A peer that lets even these pile up
    /// is not reading; it is cut off.
    fn flush_protocol_output(&self) {
        let out = self
            .ws
            .borrow_mut()
            .as_mut()
            .and_then(WebSocket::take_output);
        if let Some(out) = out {
            if self.outbox.push_control(out) == Err(PushError::Full) {
                debug!("peer does not read its control frames; dropping it");
                self.outbox.close();
                let _ = self.stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Starts the closing handshake from our side (shutdown, idle timeout).
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

/// The reader task.
pub async fn serve(shard: Rc<Shard>, conn: Rc<Conn>, key: usize) {
    let mut buf = BytesMut::with_capacity(shard.config.read_buffer);
    let gone = read_request(&shard, &conn, &mut buf).await;
    if !gone {
        drain(&conn, buf).await;
    }
    shard.task_done(key, &conn);
}

/// Reads one more chunk into `buf`; false on EOF or error.
async fn read_more(conn: &Conn, buf: &mut BytesMut, want: usize) -> bool {
    if buf.capacity() - buf.len() < want / 2 + 1 {
        buf.reserve(want);
    }
    // tokio-uring reads into the start of a buffer and sets its length;
    // reading into the spare capacity keeps the unconsumed bytes in front.
    let start = buf.len();
    let (res, slice) = conn.stream.read(std::mem::take(buf).slice(start..)).await;
    *buf = slice.into_inner();
    match res {
        Ok(0) | Err(_) => false,
        Ok(_) => {
            conn.last_rx.set(Instant::now());
            conn.ping_sent.set(false);
            true
        }
    }
}

/// The HTTP phase and whatever it routes to. Returns true if the peer is
/// gone (no drain needed).
async fn read_request(shard: &Rc<Shard>, conn: &Rc<Conn>, buf: &mut BytesMut) -> bool {
    let mut parser = HeadParser::new();
    let limits = shard.config.head_limits();
    let req = loop {
        match parser.parse(buf, limits) {
            Ok(Some((req, n))) => {
                buf.advance(n);
                break req;
            }
            Ok(None) => {}
            Err(e) => {
                reject(shard, conn, e);
                return false;
            }
        }
        if !read_more(conn, buf, shard.config.read_buffer).await {
            conn.outbox.close();
            return true;
        }
    };
    route(shard, conn, req, buf).await
}

fn reject(shard: &Shard, conn: &Conn, e: HttpError) {
    debug!(shard = shard.id, error = %e, "request rejected");
    let _ = conn.outbox.try_push(e.to_response());
    conn.finish(Instant::now() + shard.config.close_timeout);
}

async fn route(shard: &Rc<Shard>, conn: &Rc<Conn>, req: Request, buf: &mut BytesMut) -> bool {
    match req.path() {
        "/echo" => match handshake::accept(&req, &shard.policy) {
            Ok(accepted) => {
                let _ = conn.outbox.try_push(accepted.response());
                echo(shard, conn, buf).await
            }
            Err(e) => {
                reject(shard, conn, e);
                false
            }
        },
        "/healthz" if req.method == "GET" => {
            let resp = if shard.shared.all_ready() {
                plain_response(200, "ok\n")
            } else {
                plain_response(503, "starting\n")
            };
            let _ = conn.outbox.try_push(resp);
            conn.finish(Instant::now() + shard.config.close_timeout);
            false
        }
        "/healthz" => {
            reject(shard, conn, HttpError::MethodNotAllowed);
            false
        }
        _ => {
            reject(shard, conn, HttpError::NotFound);
            false
        }
    }
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

/// The `/echo` endpoint: every message is sent back as received. The
/// Autobahn conformance target.
async fn echo(shard: &Rc<Shard>, conn: &Rc<Conn>, buf: &mut BytesMut) -> bool {
    *conn.ws.borrow_mut() = Some(WebSocket::new(Role::Server, shard.config.ws_limits()));
    conn.phase.set(Phase::WebSocket);
    conn.deadline.set(None);
    conn.last_rx.set(Instant::now());
    debug!(shard = shard.id, "websocket open");
    loop {
        loop {
            let (res, open, closed) = {
                let mut guard = conn.ws.borrow_mut();
                let ws = guard.as_mut().expect("set above");
                let res = ws.poll(buf);
                (res, ws.is_open(), ws.is_closed())
            };
            conn.flush_protocol_output();
            match res {
                Ok(Some(Event::Text(p))) if open => send(conn, OpCode::Text, p).await,
                Ok(Some(Event::Binary(p))) if open => send(conn, OpCode::Binary, p).await,
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => debug!(shard = shard.id, error = %e, "websocket failed"),
            }
            if closed {
                conn.finish(Instant::now() + shard.config.close_timeout);
                return false;
            }
        }
        let hint = conn.ws.borrow().as_ref().map_or(0, WebSocket::read_hint);
        let want = hint.clamp(shard.config.read_buffer, MAX_READ);
        if !read_more(conn, buf, want).await {
            debug!(shard = shard.id, "websocket peer went away");
            conn.outbox.close();
            return true;
        }
    }
}

async fn send(conn: &Conn, opcode: OpCode, payload: Bytes) {
    let (head, rest) = data_frame(opcode, payload);
    if conn.outbox.push(head).await {
        if let Some(rest) = rest {
            conn.outbox.push(rest).await;
        }
    }
}

/// Reads and discards until the peer closes; the sweeper's deadline ends
/// it otherwise. Closing with unread data in the socket would make the
/// kernel send RST, and the peer could lose our last response or close
/// frame. The writer half-closes once its queue is flushed; the socket is
/// released when both tasks are done.
async fn drain(conn: &Conn, mut buf: BytesMut) {
    loop {
        buf.clear();
        if !read_more(conn, &mut buf, 4096).await {
            break;
        }
    }
}

/// Reader for a connection refused before reading anything (overload).
pub async fn drain_only(conn: &Conn) {
    drain(conn, BytesMut::with_capacity(1024)).await;
}
