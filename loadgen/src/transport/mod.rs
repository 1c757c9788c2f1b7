//! How a client reaches the broker. Scenarios are written against the two
//! traits here, [`SubConn`] and [`PubConn`], and never see a socket or a
//! frame: a transport turns `subscribe`/`publish` into its wire form and
//! hands back the broker's JSON objects (`message`, `subscribed`, …, the
//! shapes of `shared/protocol.md`), which [`crate::proto`] parses.
//!
//! WebSocket ([`ws`]) is the first implementation. The HTTP baselines slot
//! in beside it: long-polling and short polling turn `recv` into `GET
//! /poll/{topic}?since=N` requests and yield the array's elements one by
//! one, SSE yields each event's `data`, and their publishers use `POST
//! /publish/{topic}`.

pub mod ws;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;

pub type Result<T> = std::result::Result<T, String>;

/// The transports a scenario can run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// RFC 6455 WebSocket on `GET /ws`.
    Ws,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
        }
    }
}

/// Where the broker is: `--broker http://HOST:PORT`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `HOST:PORT` as given (sent as the `Host` header).
    pub authority: String,
    pub addr: SocketAddr,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .ok_or_else(|| format!("--broker must be http://HOST:PORT, got {url:?}"))?;
        let authority = rest.trim_end_matches('/').to_string();
        if authority.contains('/') {
            return Err(format!(
                "--broker takes no path (the scenarios pick the endpoint), got {url:?}"
            ));
        }
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("no address for {authority}"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "--broker {addr} is not a loopback address; this load generator only targets \
                 the local machine"
            ));
        }
        Ok(Endpoint { authority, addr })
    }
}

/// Per-connection options.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    /// Local address to bind before connecting (`--source-ips`); `None`
    /// lets the kernel choose.
    pub source: Option<IpAddr>,
    /// TCP connect plus handshake.
    pub timeout: Duration,
    /// Bytes reserved per socket read. Small for many idle connections,
    /// larger for subscribers that receive a lot.
    pub read_chunk: usize,
}

/// A subscriber's connection.
#[allow(async_fn_in_trait)]
pub trait SubConn {
    /// Asks for `topic`; the confirmation arrives through [`SubConn::recv`]
    /// (`subscribed`, or `error`).
    async fn subscribe(&mut self, topic: &str) -> Result<()>;

    /// The next broker → client JSON object. `Err` when the connection
    /// ended (the message says how: EOF, close code and reason, protocol
    /// error).
    async fn recv(&mut self) -> Result<Bytes>;

    /// The next object if it is already here, without waiting (lets a
    /// subscriber handle a whole read's worth of messages in one go).
    fn try_recv(&mut self) -> Result<Option<Bytes>>;

    /// Best-effort polite close; errors are ignored.
    async fn close(self);
}

/// A publisher's connection. Publishes are queued, then sent with one
/// `flush`, so a publisher that fell behind its schedule catches up in
/// batches.
#[allow(async_fn_in_trait)]
pub trait PubConn {
    /// Queues one publish of `data` (a JSON value) to `topic`.
    fn queue_publish(&mut self, topic: &str, data: &[u8]);

    async fn flush(&mut self) -> Result<()>;

    /// A broker → client object if one is already here (without waiting):
    /// how a publisher notices `error` replies and a closed connection.
    fn try_recv(&mut self) -> Result<Option<Bytes>>;

    async fn close(self);
}
