//! WebSocket transport: a tokio TCP socket driving ringcast's sans-I/O
//! protocol library in client role. The library does the handshake (random
//! key, `Sec-WebSocket-Accept` verified), framing and masking (a fresh
//! random key per frame), UTF-8 validation, and owes-the-peer control
//! frames (pong, close reply); this file only moves bytes.
//!
//! Reads use `readable()` + `try_read_buf`, so a connection's read buffer
//! is only allocated while bytes are arriving: ten thousand idle
//! connections cost their sockets, not ten thousand buffers.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use bytes::{Buf, Bytes, BytesMut};
use ringcast::close::CloseCode;
use ringcast::frame::{encode_frame, OpCode};
use ringcast::handshake::ClientHandshake;
use ringcast::websocket::{Event, Limits, Role, WebSocket};
use tokio::io::AsyncWriteExt;
use tokio::io::Interest;
use tokio::net::{TcpSocket, TcpStream};

use super::{ConnectOpts, Endpoint, PubConn, Result, SubConn};
use crate::proto;

/// The pub/sub endpoint.
pub const PATH: &str = "/ws";

pub struct WsClient {
    stream: TcpStream,
    ws: WebSocket,
    rbuf: BytesMut,
    wbuf: BytesMut,
    scratch: Vec<u8>,
    read_chunk: usize,
}

/// Turns a connect error into advice.
fn connect_error(addr: SocketAddr, source: Option<SocketAddr>, e: io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => " (is the broker running?)",
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            " (out of file descriptors: raise `ulimit -n`, the hard limit is the ceiling)"
        }
        Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => {
            " (out of local ports: add source addresses with --source-ips 127.0.0.2,127.0.0.3,…)"
        }
        _ => "",
    };
    match source {
        Some(src) => format!("broker unreachable at {addr} from {src}: {e}{hint}"),
        None => format!("broker unreachable at {addr}: {e}{hint}"),
    }
}

impl WsClient {
    /// TCP connect and WebSocket handshake on `path`, within `opts.timeout`.
    pub async fn connect(ep: &Endpoint, path: &str, opts: &ConnectOpts) -> Result<WsClient> {
        match tokio::time::timeout(opts.timeout, Self::connect_inner(ep, path, opts)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "connect + handshake to {} took longer than {:?}",
                ep.addr, opts.timeout
            )),
        }
    }

    async fn connect_inner(ep: &Endpoint, path: &str, opts: &ConnectOpts) -> Result<WsClient> {
        let local = opts.source.map(|ip| SocketAddr::new(ip, 0));
        let err = |e| connect_error(ep.addr, local, e);
        let sock = if ep.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(err)?;
        if let Some(local) = local {
            // Choose the port at connect() time, from the full 4-tuple, so
            // one source address serves every destination's port range.
            let one: libc::c_int = 1;
            // SAFETY: a valid socket and a c_int option value.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            sock.bind(local).map_err(err)?;
        }
        let mut stream = sock.connect(ep.addr).await.map_err(err)?;
        stream.set_nodelay(true).ok();
        let (hs, request) = ClientHandshake::new(&ep.authority, path, &[]);
        stream
            .write_all(&request)
            .await
            .map_err(|e| format!("handshake write: {e}"))?;
        let mut rbuf = BytesMut::with_capacity(1024);
        loop {
            if let Some((n, _)) = hs
                .parse_response(&rbuf, 8192)
                .map_err(|e| format!("WebSocket upgrade on {path} refused: {e}"))?
            {
                rbuf.advance(n);
                break;
            }
            stream.readable().await.map_err(|e| e.to_string())?;
            match stream.try_read_buf(&mut rbuf) {
                Ok(0) => return Err("broker closed the connection during the handshake".into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("handshake read: {e}")),
            }
        }
        Ok(WsClient {
            stream,
            ws: WebSocket::new(Role::Client, Limits::default()),
            rbuf,
            wbuf: BytesMut::new(),
            scratch: Vec::new(),
            read_chunk: opts.read_chunk.max(512),
        })
    }

    /// Queues one masked text frame.
    pub fn queue_text(&mut self, payload: &[u8]) {
        encode_frame(
            &mut self.wbuf,
            true,
            OpCode::Text,
            Some(rand::random()),
            payload,
        );
    }

    /// Queues one masked binary frame.
    pub fn queue_binary(&mut self, payload: &[u8]) {
        encode_frame(
            &mut self.wbuf,
            true,
            OpCode::Binary,
            Some(rand::random()),
            payload,
        );
    }

    /// Writes everything queued (data and the protocol's control frames).
    pub async fn flush(&mut self) -> Result<()> {
        if let Some(out) = self.ws.take_output() {
            self.wbuf.extend_from_slice(&out);
        }
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = self.stream.write_all(&self.wbuf).await;
        self.wbuf.clear();
        r.map_err(|e| format!("write: {e}"))
    }

    /// The next frame-level event from what is buffered: a data message,
    /// the end of the connection (as `Err`), or `None` (read more).
    fn poll_buffered(&mut self) -> Result<Option<Event>> {
        loop {
            let ev = self
                .ws
                .poll(&mut self.rbuf)
                .map_err(|e| format!("protocol error from the broker: {e}"))?;
            match ev {
                Some(e @ (Event::Text(_) | Event::Binary(_))) => return Ok(Some(e)),
                Some(Event::Close(frame)) => {
                    return Err(match frame {
                        Some(f) => format!(
                            "broker closed the connection (close {} {:?})",
                            f.code.0,
                            String::from_utf8_lossy(&f.reason)
                        ),
                        None => "broker closed the connection (close, no code)".into(),
                    })
                }
                // Pings: the pong is queued in the state machine and goes
                // out with the next flush.
                Some(Event::Ping(_) | Event::Pong(_)) => continue,
                None => return Ok(None),
            }
        }
    }

    /// Reads once if the socket has bytes: `Ok(false)` if it had none.
    ///
    /// A read that does not fill the buffer has drained the socket, so the
    /// readiness is cleared right away (by reporting `WouldBlock` to
    /// tokio's `try_io`, which only clears the readiness it saw before the
    /// read, so an edge that arrives meanwhile is kept). This saves the
    /// extra `recv` → `EAGAIN` per wake-up that `try_read_buf` would make:
    /// with a thousand subscribers that is one syscall per delivery.
    fn try_fill(&mut self) -> Result<bool> {
        if self.rbuf.capacity() - self.rbuf.len() < 512 {
            self.rbuf.reserve(self.read_chunk);
        }
        let before = self.rbuf.len();
        let fd = self.stream.as_raw_fd();
        let rbuf = &mut self.rbuf;
        let r = self.stream.try_io(Interest::READABLE, || {
            let spare = rbuf.spare_capacity_mut();
            let want = spare.len();
            // SAFETY: `spare` is writable memory of `want` bytes owned by
            // `rbuf`; `recv` initialises the first `n` of them.
            let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), want, 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            // SAFETY: the first `n` spare bytes were just written.
            unsafe { rbuf.set_len(rbuf.len() + n) };
            if n > 0 && n < want {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match r {
            Ok(0) => Err("broker closed the connection (EOF)".into()),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(self.rbuf.len() > before),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// The next data message, waiting for it. Pongs owed are sent on the way.
    pub async fn next_message(&mut self) -> Result<Event> {
        loop {
            let ev = self.poll_buffered();
            if let Some(out) = self.ws.take_output() {
                self.wbuf.extend_from_slice(&out);
                self.flush().await?;
            }
            if let Some(ev) = ev? {
                return Ok(ev);
            }
            if !self.try_fill()? {
                self.stream
                    .readable()
                    .await
                    .map_err(|e| format!("read: {e}"))?;
            }
        }
    }

    /// A text message if one is buffered or readable without waiting.
    /// Pongs owed go out with the next flush.
    pub fn try_recv_text(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.poll_buffered()? {
                Some(Event::Text(b)) => return Ok(Some(b)),
                Some(_) => return Err("broker sent a binary message on /ws".into()),
                None => {
                    if !self.try_fill()? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Sends our close frame (best effort) and drops the connection.
    pub async fn close_now(mut self) {
        self.ws.close(CloseCode::NORMAL, "");
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

impl SubConn for WsClient {
    async fn subscribe(&mut self, topic: &str) -> Result<()> {
        self.queue_text(&proto::subscribe(topic));
        self.flush().await
    }

    fn try_recv(&mut self) -> Result<Option<Bytes>> {
        self.try_recv_text()
    }

    async fn recv(&mut self) -> Result<Bytes> {
        match self.next_message().await? {
            Event::Text(b) => Ok(b),
            Event::Binary(_) => Err("broker sent a binary message on /ws".into()),
            _ => unreachable!("next_message returns data messages only"),
        }
    }

    async fn close(self) {
        self.close_now().await
    }
}

impl PubConn for WsClient {
    fn queue_publish(&mut self, topic: &str, data: &[u8]) {
        let mut cmd = std::mem::take(&mut self.scratch);
        cmd.clear();
        proto::publish(&mut cmd, topic, data);
        self.queue_text(&cmd);
        self.scratch = cmd;
    }

    async fn flush(&mut self) -> Result<()> {
        WsClient::flush(self).await
    }

    fn try_recv(&mut self) -> Result<Option<Bytes>> {
        self.try_recv_text()
    }

    async fn close(self) {
        self.close_now().await
    }
}
