//! WebSocket transport: a tokio TCP socket driving ringcast's sans-I/O
//! protocol library in client role. The library does the handshake (random
//! key, `Sec-WebSocket-Accept` verified), framing and masking (a fresh
//! random key per frame), UTF-8 validation, and owes-the-peer control
//! frames (pong, close reply); this file only moves bytes.
//!
//! Bytes move through a [`Stream`], whose read buffer is only allocated
//! while bytes are arriving: ten thousand idle connections cost their
//! sockets, not ten thousand buffers.

use bytes::{Buf, Bytes};
use ringcast_proto::close::CloseCode;
use ringcast_proto::frame::OpCode;
use ringcast_proto::handshake::ClientHandshake;
use ringcast_proto::websocket::{Event, Limits, Role, WebSocket};

use super::browser;
use super::stream::Stream;
use super::{ConnectOpts, Endpoint, PubConn, Result, SubConn, Wire};
use crate::proto;

/// The pub/sub endpoint.
pub const PATH: &str = "/ws";

pub struct WsClient {
    io: Stream,
    ws: WebSocket,
    scratch: Vec<u8>,
}

impl WsClient {
    /// TCP connect and WebSocket handshake on `path`, within `opts.timeout`;
    /// with `opts.token`, on `path?token=T`; with
    /// `opts.upgrade_header_bytes`, the request carries that many bytes of
    /// a browser's headers.
    pub async fn connect(ep: &Endpoint, path: &str, opts: &ConnectOpts) -> Result<WsClient> {
        match tokio::time::timeout(opts.timeout, Self::connect_inner(ep, path, opts)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "connect + handshake to {} took longer than {:?}",
                ep.authority, opts.timeout
            )),
        }
    }

    async fn connect_inner(ep: &Endpoint, path: &str, opts: &ConnectOpts) -> Result<WsClient> {
        let mut io = Stream::connect(ep, opts).await?;
        let target = super::with_token(path, opts.token.as_deref());
        let (hs, request) = ClientHandshake::new(&ep.authority, &target, &[]);
        if opts.upgrade_header_bytes > 0 {
            let extra = browser::headers(opts.upgrade_header_bytes);
            io.queue(&browser::with_headers(&request, &extra));
        } else {
            io.queue(&request);
        }
        io.flush().await.map_err(|e| format!("handshake: {e}"))?;
        io.wire.requests += 1;
        loop {
            if let Some((n, _)) = hs
                .parse_response(&io.rbuf, 8192)
                .map_err(|e| format!("WebSocket upgrade on {path} refused: {e}"))?
            {
                io.rbuf.advance(n);
                break;
            }
            io.fill().await.map_err(|e| match e.contains("EOF") {
                true => "broker closed the connection during the handshake".to_string(),
                false => format!("handshake: {e}"),
            })?;
        }
        Ok(WsClient {
            io,
            ws: WebSocket::new(Role::Client, Limits::default()),
            scratch: Vec::new(),
        })
    }

    /// Queues one message as a single masked frame (the library picks a
    /// fresh random key per frame).
    pub fn queue(&mut self, opcode: OpCode, payload: &[u8]) {
        self.ws.encode_message(self.io.wbuf(), opcode, payload);
    }

    /// Writes everything queued (data and the protocol's control frames).
    pub async fn flush(&mut self) -> Result<()> {
        if let Some(out) = self.ws.take_output() {
            self.io.queue(&out);
        }
        self.io.flush().await
    }

    /// The next frame-level event from what is buffered: a data message,
    /// the end of the connection (as `Err`), or `None` (read more).
    fn poll_buffered(&mut self) -> Result<Option<Event>> {
        loop {
            let ev = self
                .ws
                .poll(&mut self.io.rbuf)
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

    /// The next data message, waiting for it. Pongs owed are sent before
    /// waiting. Cancel-safe: an event is only taken off the buffer in the
    /// same poll that returns it.
    pub async fn next_message(&mut self) -> Result<Event> {
        loop {
            if let Some(ev) = self.poll_buffered()? {
                return Ok(ev);
            }
            self.flush().await?;
            self.io.fill().await?;
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
                    if !self.io.try_fill()? {
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
        self.io.shutdown().await;
    }
}

impl SubConn for WsClient {
    async fn subscribe(&mut self, topic: &str) -> Result<()> {
        self.queue(OpCode::Text, &proto::subscribe(topic));
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

    fn wire(&self) -> Wire {
        self.io.wire
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
        self.queue(OpCode::Text, &cmd);
        self.scratch = cmd;
    }

    async fn flush(&mut self) -> Result<()> {
        WsClient::flush(self).await
    }

    fn try_recv(&mut self) -> Result<Option<Bytes>> {
        self.try_recv_text()
    }

    fn wire(&self) -> Wire {
        self.io.wire
    }

    async fn close(self) {
        self.close_now().await
    }
}
