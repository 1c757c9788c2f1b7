//! HTTP/1.1 on the loop: reading request heads, routing them, and the
//! answers that need nothing from the engine (`/healthz`, `/metrics`, the
//! demo page, refusals, CORS preflights).

use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tracing::debug;

use ringcast_core::auth::{Credentials, Denied};
use ringcast_core::wire::command::ErrorCode;
use ringcast_core::wire::reply;
use ringcast_proto::http::{find_head_end, response, HeadParser, Request};

use super::serve::{slot, Phase, Serve};
use super::ws::Endpoint;
use crate::error::HttpError;
use crate::metrics;
use crate::runtime::access::{self, Origin};
use crate::runtime::client_ip::{self, Refused};
use crate::uring::{ConnId, Ops};

/// `Allow` for the endpoints that answer `GET` and `HEAD`.
const GET_HEAD: &str = "GET, HEAD";

impl Serve {
    /// Feeds `buf` to the connection's state machines until it needs more.
    /// Returns what is left (to stash).
    pub(super) fn feed(&mut self, ops: &mut Ops<'_>, id: ConnId, mut buf: BytesMut) -> BytesMut {
        let head_limits = self.config.head_limits();
        loop {
            let Some(c) = slot(&mut self.conns, id) else {
                return BytesMut::new();
            };
            let session = c.session;
            match &mut c.phase {
                Phase::Closing | Phase::Stream => {
                    buf.clear();
                    return buf;
                }
                Phase::Waiting(_) => return buf,
                Phase::Http(parser) => {
                    if buf.is_empty() {
                        return buf;
                    }
                    // One response past the outbox bound at most: a client
                    // that pipelines without reading waits (in the stash,
                    // bounded) until it reads.
                    if !self.engine.outbox(session).is_none_or(|o| o.has_room()) {
                        c.deadline = Some(Instant::now() + self.config.idle_timeout);
                        return buf;
                    }
                    let over_limit = c.over_limit;
                    match parser.parse(&buf, head_limits) {
                        Ok(Some((req, _))) if over_limit => {
                            self.overloaded(ops, id, Some(&req));
                            buf.clear();
                            return buf;
                        }
                        Ok(Some((req, n))) => {
                            buf.advance(n);
                            self.route(ops, id, req, &mut buf);
                        }
                        Ok(None) => return buf,
                        Err(_) if over_limit => {
                            self.overloaded(ops, id, None);
                            buf.clear();
                            return buf;
                        }
                        Err(e) => {
                            self.reject(ops, id, e);
                            buf.clear();
                            return buf;
                        }
                    }
                }
                Phase::Body(_) => {
                    if !self.feed_body(ops, id, &mut buf) {
                        return buf;
                    }
                }
                Phase::WebSocket(_) => return self.feed_ws(ops, id, buf),
            }
        }
    }

    /// Routes one request head; the connection's phase says what follows.
    /// `buf` holds what followed the head (a body's first bytes).
    fn route(&mut self, ops: &mut Ops<'_>, id: ConnId, req: Request, buf: &mut BytesMut) {
        let keep = keep_alive(&req) && !self.closing;
        let path = req.path();
        if let Some(c) = self.conn(id) {
            c.head = req.method == "HEAD";
        }
        // RFC 9112: Host exactly once, and a body framed one way only.
        // Either failure is answered 400 and the connection closed:
        // whatever follows is never read as a request.
        if let Err(e) = req.check_host() {
            return self.reject(ops, id, e);
        }
        let framing = match req.body_framing() {
            Ok(f) => f,
            Err(e) => return self.reject(ops, id, e),
        };
        // Only `POST /publish/` takes a body. A GET or HEAD with one is
        // refused before its body could be parsed as the next request; any
        // other method is refused by the table below, and every refusal
        // closes the connection, body unread.
        let takes_body = req.method == "POST" && path.starts_with("/publish/");
        if framing.has_body() && !takes_body && matches!(req.method.as_str(), "GET" | "HEAD") {
            return self.reject(ops, id, HttpError::BodyNotAllowed);
        }
        let head = req.method == "HEAD";
        let method = if head { "GET" } else { req.method.as_str() };
        let streaming = path.starts_with("/poll/") || path.starts_with("/sse/");
        if head && streaming {
            return self.reject(ops, id, HttpError::MethodNotAllowed("GET"));
        }
        // Per-IP limits count a connection once its first request names
        // its client (a proxy's headers may). `/healthz` is exempt: a load
        // balancer must not take a busy broker for a dead one.
        if path != "/healthz" && !self.count_ip(ops, id, &req) {
            return;
        }
        // Browsers: what a page of another origin may call is
        // `--allowed-origins` (empty: any), on every endpoint it can reach.
        let browser_facing =
            streaming || path.starts_with("/publish/") || path == "/ws" || path == "/echo";
        if browser_facing {
            match access::origin(&req, &self.config.allowed_origins) {
                Origin::Refused => return self.reject(ops, id, HttpError::OriginRejected),
                Origin::Allowed(o) if path != "/ws" && path != "/echo" => {
                    if let Some(c) = self.conn(id) {
                        c.cors = Some(o.into_boxed_str());
                    }
                }
                _ => {}
            }
        }
        if method == "OPTIONS" && browser_facing {
            return self.preflight(ops, id, &req, keep);
        }
        match (method, path) {
            (_, "/ws") => self.upgrade(ops, id, &req, Endpoint::PubSub),
            (_, "/echo") => self.upgrade(ops, id, &req, Endpoint::Echo),
            ("GET", "/") => self.respond_with(
                ops,
                id,
                keep,
                200,
                "text/html; charset=utf-8",
                // A new binary's page must not be hidden behind a cached one.
                &[("Cache-Control", "no-cache")],
                crate::demo::PAGE.as_bytes(),
            ),
            ("GET", "/metrics") => {
                let mut body = metrics::render(self.shared.metrics());
                if let Some(c) = self.shared.cluster() {
                    c.render(&mut body);
                }
                self.respond(
                    ops,
                    id,
                    keep,
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body.as_bytes(),
                )
            }
            ("GET", "/healthz") => self.healthz(ops, id, keep),
            (_, "/" | "/metrics" | "/healthz") => {
                self.reject(ops, id, HttpError::MethodNotAllowed(GET_HEAD))
            }
            ("GET", p) if p.starts_with("/poll/") => {
                let topic = p["/poll/".len()..].to_owned();
                self.poll(ops, id, &req, &topic, keep)
            }
            ("GET", p) if p.starts_with("/sse/") => {
                let topic = p["/sse/".len()..].to_owned();
                self.sse(ops, id, &req, &topic)
            }
            (_, _) if streaming => self.reject(ops, id, HttpError::MethodNotAllowed("GET")),
            ("POST", p) if p.starts_with("/publish/") => {
                let topic = p["/publish/".len()..].to_owned();
                self.begin_publish(ops, id, &req, framing, topic, keep, buf)
            }
            (_, p) if p.starts_with("/publish/") => {
                self.reject(ops, id, HttpError::MethodNotAllowed("POST"))
            }
            _ => self.reject(ops, id, HttpError::NotFound),
        }
    }

    /// Counts the connection under its client's IP (once); false if a
    /// per-IP limit refused it (answered `503`).
    fn count_ip(&mut self, ops: &mut Ops<'_>, id: ConnId, req: &Request) -> bool {
        let limits = self.shared.ip_limits();
        if !limits.is_active() {
            return true;
        }
        let Some(c) = self.conn(id) else { return false };
        if c.ip.is_some() {
            return true;
        }
        let Some(peer) = c.peer else { return true };
        let ip = client_ip::client_ip(peer, req, self.shared.trusted_proxies());
        match self.shared.ip_limits().begin(ip, Instant::now()) {
            Ok(()) => {
                if let Some(c) = self.conn(id) {
                    c.ip = Some(ip);
                }
                true
            }
            Err(why) => {
                self.metrics().ip_refused.inc();
                debug!(shard = self.id, %ip, ?why, "per-IP limit");
                let body = match why {
                    Refused::TooManyConnections => "too many connections from this address\n",
                    Refused::TooManyNewConnections => {
                        "too many new connections from this address\n"
                    }
                };
                self.respond_with(
                    ops,
                    id,
                    false,
                    503,
                    "text/plain; charset=utf-8",
                    &[("Retry-After", "1")],
                    body.as_bytes(),
                );
                false
            }
        }
    }

    /// `GET /healthz`: 200 once every shard is serving; in a cluster whose
    /// Redis does not answer, still 200 (subscribers stay served) but the
    /// body says "degraded" and why.
    pub(super) fn healthz(&mut self, ops: &mut Ops<'_>, id: ConnId, keep: bool) {
        let text = "text/plain; charset=utf-8";
        let degraded = self.shared.cluster().filter(|c| !c.is_up());
        if !self.shared.all_ready() {
            self.respond(ops, id, keep, 503, text, b"starting\n")
        } else if let Some(c) = degraded {
            let body = format!("degraded: redis: {}\n", c.why_down());
            self.respond(ops, id, keep, 200, text, body.as_bytes())
        } else {
            self.respond(ops, id, keep, 200, text, b"ok\n")
        }
    }

    /// Admits a request's bearer credential (header or `token=`), if it
    /// has one; a refusal is answered 401 (false). Without one the
    /// connection keeps the anonymous grant it was opened with.
    pub(super) fn admit(
        &mut self,
        ops: &mut Ops<'_>,
        id: ConnId,
        req: &Request,
        keep: bool,
    ) -> bool {
        let Some(session) = self.conn(id).map(|c| c.session) else {
            return false;
        };
        let Some(token) = access::bearer(req) else {
            // Credentials are per request: a token an earlier request on
            // this kept-alive connection carried (a proxy reuses
            // connections for many clients) admits nothing now.
            self.engine.reset_grant(session);
            return true;
        };
        let creds = Credentials::token(token);
        match self.engine.admit(session, &creds, Instant::now()) {
            Ok(()) => true,
            Err(d) => {
                let msg = match d {
                    Denied::Unauthorized(m) | Denied::Forbidden(m) => m,
                    _ => "refused".into(),
                };
                self.json_error(ops, id, keep, ErrorCode::Unauthorized, &msg);
                false
            }
        }
    }

    /// A CORS preflight (`OPTIONS` with `Origin`) from an allowed origin:
    /// what may follow. From any other origin the route refused it already.
    fn preflight(&mut self, ops: &mut Ops<'_>, id: ConnId, req: &Request, keep: bool) {
        let origin = self.conn(id).and_then(|c| c.cors.take());
        let Some(origin) = origin.filter(|_| req.header("access-control-request-method").is_some())
        else {
            return self.reject(ops, id, HttpError::MethodNotAllowed(GET_HEAD));
        };
        let headers = access::preflight_headers(&origin);
        let connection = if keep { "keep-alive" } else { "close" };
        let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.push(("Connection", connection));
        let resp = response(204, &h, b"");
        self.queue_response(ops, id, resp, keep);
    }

    /// Queues a successful response and decides what follows it.
    pub(super) fn respond(
        &mut self,
        ops: &mut Ops<'_>,
        id: ConnId,
        keep: bool,
        status: u16,
        content_type: &str,
        body: &[u8],
    ) {
        self.respond_with(ops, id, keep, status, content_type, &[], body)
    }

    /// [`Serve::respond`] with more headers (and the CORS ones, if the
    /// request came from an allowed origin).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn respond_with(
        &mut self,
        ops: &mut Ops<'_>,
        id: ConnId,
        keep: bool,
        status: u16,
        content_type: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) {
        let connection = if keep { "keep-alive" } else { "close" };
        let mut headers = vec![("Content-Type", content_type), ("Connection", connection)];
        headers.extend_from_slice(extra);
        let cors = self.conn(id).and_then(|c| c.cors.take());
        if let Some(origin) = &cors {
            headers.push(("Access-Control-Allow-Origin", origin));
            headers.push(("Vary", "Origin"));
        }
        let resp = response(status, &headers, body);
        self.queue_response(ops, id, resp, keep);
    }

    /// Queues a response (the head alone for `HEAD`) and what follows it:
    /// the next request, or the close.
    pub(super) fn queue_response(
        &mut self,
        ops: &mut Ops<'_>,
        id: ConnId,
        resp: Bytes,
        keep: bool,
    ) {
        let handshake_timeout = self.config.handshake_timeout;
        let Some(c) = slot(&mut self.conns, id) else {
            return;
        };
        let resp = if c.head {
            // Its `Content-Length` still says how long the body would be.
            let end = find_head_end(&resp, 0).unwrap_or(resp.len());
            resp.slice(..end)
        } else {
            resp
        };
        let session = c.session;
        c.cors = None;
        if let Some(o) = self.engine.outbox(session) {
            let _ = o.push_response(resp);
        }
        if keep {
            c.phase = Phase::Http(HeadParser::new());
            c.deadline = Some(Instant::now() + handshake_timeout);
            self.flush(ops, id);
        } else {
            self.finish(ops, id);
        }
    }

    /// A bad request: answered with its status and the connection closed.
    pub(super) fn reject(&mut self, ops: &mut Ops<'_>, id: ConnId, e: HttpError) {
        // A client's mistake, not the broker's: any web page can cause
        // these, so they must not flood the log at the default level.
        // Counted in /metrics (http_errors) instead.
        debug!(shard = self.id, error = %e, "request rejected");
        self.metrics().http_error(e);
        self.queue_response(ops, id, e.to_response(), false);
    }

    /// A refused publish, poll or SSE request: `400` (or `503` for a
    /// limit, `401`, `403`, `429`) with a JSON body shaped like the
    /// WebSocket `error` reply.
    pub(super) fn json_error(
        &mut self,
        ops: &mut Ops<'_>,
        id: ConnId,
        keep: bool,
        code: ErrorCode,
        message: &str,
    ) {
        self.json_error_after(ops, id, keep, code, message, None)
    }

    /// [`Serve::json_error`] with the seconds a client should wait before
    /// retrying (`Retry-After`, for a rate limit).
    pub(super) fn json_error_after(
        &mut self,
        ops: &mut Ops<'_>,
        id: ConnId,
        keep: bool,
        code: ErrorCode,
        message: &str,
        retry: Option<f64>,
    ) {
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
        self.respond_with(
            ops,
            id,
            keep,
            status,
            "application/json",
            &extra,
            &reply::message_json(&frame),
        )
    }

    /// A connection past `--max-connections`: its one request is answered
    /// `/healthz` as usual (a load balancer must not take a busy broker
    /// for a dead one) and `503` otherwise (also when its head was bad:
    /// `None`), then it closes.
    fn overloaded(&mut self, ops: &mut Ops<'_>, id: ConnId, req: Option<&Request>) {
        let health = req.is_some_and(|req| {
            matches!(req.method.as_str(), "GET" | "HEAD")
                && req.path() == "/healthz"
                && req.check_host().is_ok()
                && req.body_framing() == Ok(ringcast_proto::http::BodyFraming::None)
        });
        if let Some(c) = self.conn(id) {
            c.head = req.is_some_and(|req| req.method == "HEAD");
        }
        if health {
            self.healthz(ops, id, false)
        } else {
            // No log line per refused connection: an overload is when
            // logs can least afford one.
            self.metrics().http_error(HttpError::Overloaded);
            self.queue_response(ops, id, HttpError::Overloaded.to_response(), false);
        }
    }
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
