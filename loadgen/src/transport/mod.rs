//! How a client reaches the broker. Scenarios are written against the two
//! traits here, [`SubConn`] and [`PubConn`], and never see a socket, a
//! frame or an HTTP head: a transport turns `subscribe`/`publish` into its
//! wire form and hands back the broker's JSON objects (`message`,
//! `subscribed`, …, the shapes of `shared/protocol.md`), which
//! [`crate::proto`] parses.
//!
//! - [`ws`]: RFC 6455 on `GET /ws`, the broker's protocol library in
//!   client role.
//! - [`poll`]: long-polling and short polling, `GET /poll/{topic}?since=N`
//!   in a loop, the array's elements yielded one by one.
//! - [`sse`]: `GET /sse/{topic}`, each event's `data` yielded.
//! - [`http`]: `POST /publish/{topic}` for publishers that do not use
//!   WebSocket, and the response parsing the HTTP transports share.
//! - [`browser`]: the headers a browser adds to an upgrade request
//!   (`--upgrade-header-bytes`).
//!
//! Every transport moves its bytes through one [`stream::Stream`], which
//! counts them: wire bytes in both directions, HTTP heads and frame
//! headers included, are what the `compare` scenario reports per message.

pub mod browser;
pub mod http;
pub mod poll;
pub mod sse;
pub mod stream;
pub mod ws;

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

pub type Result<T> = std::result::Result<T, String>;

/// The transports a subscriber can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// RFC 6455 WebSocket on `GET /ws`.
    Ws,
    /// `GET /poll/{topic}?since=N&timeout_ms=T`, held until a message
    /// arrives, re-issued at once.
    LongPoll,
    /// `GET /poll/{topic}?since=N&timeout_ms=0` every `--poll-interval`.
    ShortPoll,
    /// Server-Sent Events on `GET /sse/{topic}`.
    Sse,
}

impl Transport {
    pub const ALL: [Transport; 4] = [
        Transport::Ws,
        Transport::LongPoll,
        Transport::ShortPoll,
        Transport::Sse,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::LongPoll => "long-poll",
            Transport::ShortPoll => "short-poll",
            Transport::Sse => "sse",
        }
    }
}

/// How publishers reach the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublishVia {
    /// `publish` commands on a WebSocket.
    Ws,
    /// `POST /publish/{topic}`, pipelined on a keep-alive connection.
    Http,
}

impl PublishVia {
    pub fn name(self) -> &'static str {
        match self {
            PublishVia::Ws => "ws",
            PublishVia::Http => "http",
        }
    }
}

/// Bytes a connection moved, and the HTTP requests it made. `up` is client
/// → broker, `down` broker → client; both count everything on the TCP
/// stream (HTTP heads, frame headers, heartbeats, pings and pongs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Wire {
    pub up: u64,
    pub down: u64,
    pub requests: u64,
}

impl Wire {
    pub fn add(&mut self, o: &Wire) {
        self.up += o.up;
        self.down += o.down;
        self.requests += o.requests;
    }

    /// What moved since `earlier` (a snapshot of the same connection).
    pub fn since(&self, earlier: &Wire) -> Wire {
        Wire {
            up: self.up.saturating_sub(earlier.up),
            down: self.down.saturating_sub(earlier.down),
            requests: self.requests.saturating_sub(earlier.requests),
        }
    }
}

/// Where a broker is: one `--broker` (or `--publish-broker`)
/// `http://HOST:PORT`, on this machine or anywhere else.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The URL as given (reports name the broker by it).
    pub url: String,
    /// `HOST:PORT` as given (sent as the `Host` header).
    pub authority: String,
    /// Every address `HOST` resolves to (std's `ToSocketAddrs`, i.e. the
    /// system resolver), in its order; a connection tries them in turn.
    pub addrs: Vec<SocketAddr>,
}

impl Endpoint {
    /// Parses and resolves `url`; `flag` names the option in errors.
    pub fn parse(flag: &str, url: &str) -> Result<Endpoint> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .ok_or_else(|| format!("{flag} must be http://HOST:PORT, got {url:?}"))?;
        let authority = rest.trim_end_matches('/').to_string();
        if authority.contains('/') {
            return Err(format!(
                "{flag} takes no path (the scenarios pick the endpoint), got {url:?}"
            ));
        }
        let addrs: Vec<SocketAddr> = authority
            .to_socket_addrs()
            .map_err(|e| format!("{flag} {url}: cannot resolve {authority}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{flag} {url}: no address for {authority}"));
        }
        Ok(Endpoint {
            url: url.to_string(),
            authority,
            addrs,
        })
    }

    /// The addresses a connection from `source` can use: all of them
    /// without a source; else those of the source's family, and only
    /// loopback ones from a loopback source (a packet from 127.0.0.x never
    /// leaves the machine).
    pub fn reachable_from(&self, source: Option<IpAddr>) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addrs.iter().copied().filter(move |a| match source {
            None => true,
            Some(s) => s.is_ipv4() == a.is_ipv4() && (!s.is_loopback() || a.ip().is_loopback()),
        })
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
    /// Long-polling: how long the broker may hold each request.
    pub poll_hold: Duration,
    /// Short polling: time between the starts of two requests.
    pub poll_interval: Duration,
    /// `--token`: the credential every connection presents (`?token=` on
    /// the upgrade, SSE and poll URLs; `Authorization: Bearer` on HTTP
    /// publishes). `None`: anonymous.
    pub token: Option<Arc<str>>,
    /// `--upgrade-header-bytes`: this many bytes of browser headers on
    /// every WebSocket upgrade request (see [`browser`]); 0: none.
    pub upgrade_header_bytes: usize,
}

/// `path` with `token=T` added to its query string, the token
/// percent-encoded (everything but RFC 3986's unreserved characters, so a
/// `+` is not read back as a space); `path` unchanged without a token.
/// JWTs are base64url and dots, so they pass through as they are.
pub fn with_token<'a>(path: &'a str, token: Option<&str>) -> Cow<'a, str> {
    let Some(token) = token else {
        return Cow::Borrowed(path);
    };
    let mut out = String::with_capacity(path.len() + token.len() + 7);
    out.push_str(path);
    out.push(if path.contains('?') { '&' } else { '?' });
    out.push_str("token=");
    for &b in token.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
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

    /// What this connection has moved so far.
    fn wire(&self) -> Wire;

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

    fn wire(&self) -> Wire;

    async fn close(self);
}

/// A subscriber over any transport: the scenarios hold this and use it
/// through [`SubConn`].
pub enum SubClient {
    Ws(ws::WsClient),
    Poll(poll::PollClient),
    Sse(sse::SseClient),
}

impl SubClient {
    pub async fn connect(t: Transport, ep: &Endpoint, opts: &ConnectOpts) -> Result<SubClient> {
        Ok(match t {
            Transport::Ws => SubClient::Ws(ws::WsClient::connect(ep, ws::PATH, opts).await?),
            Transport::LongPoll => SubClient::Poll(
                poll::PollClient::connect(ep, opts, poll::Mode::Long(opts.poll_hold)).await?,
            ),
            Transport::ShortPoll => SubClient::Poll(
                poll::PollClient::connect(ep, opts, poll::Mode::Short(opts.poll_interval)).await?,
            ),
            Transport::Sse => SubClient::Sse(sse::SseClient::connect(ep, opts).await?),
        })
    }
}

/// Forwards a method call to whichever transport `$self` holds.
macro_rules! delegate {
    ($self:ident, $c:ident => $call:expr) => {
        match $self {
            SubClient::Ws($c) => $call,
            SubClient::Poll($c) => $call,
            SubClient::Sse($c) => $call,
        }
    };
}

impl SubConn for SubClient {
    async fn subscribe(&mut self, topic: &str) -> Result<()> {
        delegate!(self, c => c.subscribe(topic).await)
    }

    async fn recv(&mut self) -> Result<Bytes> {
        delegate!(self, c => c.recv().await)
    }

    fn try_recv(&mut self) -> Result<Option<Bytes>> {
        delegate!(self, c => SubConn::try_recv(c))
    }

    fn wire(&self) -> Wire {
        delegate!(self, c => SubConn::wire(c))
    }

    async fn close(self) {
        delegate!(self, c => SubConn::close(c).await)
    }
}

/// A publisher over either publish path.
pub enum PubClient {
    Ws(ws::WsClient),
    Http(http::HttpPublisher),
}

impl PubClient {
    pub async fn connect(via: PublishVia, ep: &Endpoint, opts: &ConnectOpts) -> Result<PubClient> {
        Ok(match via {
            PublishVia::Ws => PubClient::Ws(ws::WsClient::connect(ep, ws::PATH, opts).await?),
            PublishVia::Http => PubClient::Http(http::HttpPublisher::connect(ep, opts).await?),
        })
    }
}

macro_rules! delegate_pub {
    ($self:ident, $c:ident => $call:expr) => {
        match $self {
            PubClient::Ws($c) => $call,
            PubClient::Http($c) => $call,
        }
    };
}

impl PubConn for PubClient {
    fn queue_publish(&mut self, topic: &str, data: &[u8]) {
        delegate_pub!(self, c => c.queue_publish(topic, data))
    }

    async fn flush(&mut self) -> Result<()> {
        delegate_pub!(self, c => PubConn::flush(c).await)
    }

    fn try_recv(&mut self) -> Result<Option<Bytes>> {
        delegate_pub!(self, c => PubConn::try_recv(c))
    }

    fn wire(&self) -> Wire {
        delegate_pub!(self, c => PubConn::wire(c))
    }

    async fn close(self) {
        delegate_pub!(self, c => PubConn::close(c).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_joins_the_query_percent_encoded() {
        assert_eq!(with_token("/ws", None), "/ws");
        assert_eq!(
            with_token("/ws", Some("aB3.x-y_z~")),
            "/ws?token=aB3.x-y_z~"
        );
        assert_eq!(
            with_token("/poll/lg.1?since=0&timeout_ms=0", Some("a.b.c")),
            "/poll/lg.1?since=0&timeout_ms=0&token=a.b.c"
        );
        assert_eq!(
            with_token("/ws", Some("k+/= &")),
            "/ws?token=k%2B%2F%3D%20%26"
        );
    }

    #[test]
    fn the_upgrade_request_carries_the_token_on_its_url() {
        let path = with_token(ws::PATH, Some("h.p.s"));
        let (_, request) =
            ringcast_proto::handshake::ClientHandshake::new("127.0.0.1:1", &path, &[]);
        let head = String::from_utf8_lossy(&request);
        assert!(
            head.starts_with("GET /ws?token=h.p.s HTTP/1.1\r\n"),
            "{head}"
        );
    }
}
