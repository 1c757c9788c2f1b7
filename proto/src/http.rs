//! HTTP/1.1 request heads, incrementally and with hard limits.
//!
//! Every connection starts here: a WebSocket upgrade, a health check or
//! (later) a publish or poll. `httparse` does the tokenizing; this module
//! adds what a server facing the internet needs around it: a head-size and
//! header-count limit enforced before any allocation grows, and a scan that
//! only re-parses once the blank line has arrived, so a client trickling a
//! byte at a time costs O(n), not O(n^2).
//!
//! What follows a head is decided here too, strictly by RFC 9112 section 6
//! ([`Request::body_framing`]): a request is either read with its body or
//! refused, never left for its body to be parsed as the next request (the
//! request-smuggling gap between a proxy and this server). The bodies
//! themselves are decoded by [`crate::chunked`] when chunked.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::HttpError;

/// Limits on a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Bytes up to and including the blank line.
    pub max_head: usize,
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head: 8 * 1024,
            max_headers: 32,
        }
    }
}

/// A parsed request head. Header names keep their case; look-ups ignore it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target in origin form, query included: an absolute-form
    /// target (`http://host/path?q`, what a client talking to a proxy
    /// sends) is reduced to its path and query (`/path?q`).
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query string, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Every header with this name, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether any header `name` holds `token` in its comma-separated list
    /// (case-insensitive), as `Connection: keep-alive, Upgrade` does.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name).any(|v| list_has_token(v, token))
    }

    /// `Host` exactly once on HTTP/1.1 (RFC 9112 3.2: a server must answer
    /// 400 to a request without it, or with more than one); at most once
    /// on HTTP/1.0.
    pub fn check_host(&self) -> Result<(), HttpError> {
        match self.headers_named("host").count() {
            0 if self.version >= 1 => Err(HttpError::MissingHost),
            0 | 1 => Ok(()),
            _ => Err(HttpError::DuplicateHost),
        }
    }

    /// Whether the client waits for `100 Continue` before sending its
    /// body (`Expect: 100-continue`; HTTP/1.1 only, RFC 9110 10.1.1).
    pub fn expects_continue(&self) -> bool {
        self.version >= 1 && self.has_token("expect", "100-continue")
    }

    /// How this request's body is delimited, by RFC 9112 section 6, read
    /// strictly: anything a proxy in front could read differently is an
    /// error (answer it with 400 and close the connection).
    ///
    /// - `Transfer-Encoding` must be exactly `chunked` (no other coding,
    ///   no list), on HTTP/1.1 only, and never with `Content-Length`.
    /// - `Content-Length` is decimal digits only (no sign, no spaces
    ///   inside); several headers or a list (`5, 5`) are accepted only if
    ///   every value is the same.
    /// - neither: no body.
    pub fn body_framing(&self) -> Result<BodyFraming, HttpError> {
        let mut length: Option<u64> = None;
        for value in self.headers_named("content-length") {
            for item in value.split(|&b| b == b',') {
                let n = parse_length(item.trim_ascii()).ok_or(HttpError::BadContentLength)?;
                match length {
                    Some(l) if l != n => return Err(HttpError::ConflictingLength),
                    _ => length = Some(n),
                }
            }
        }
        let mut codings = self.headers_named("transfer-encoding").peekable();
        if codings.peek().is_none() {
            return Ok(length.map_or(BodyFraming::None, BodyFraming::Length));
        }
        if length.is_some() {
            return Err(HttpError::LengthWithChunked);
        }
        if self.version == 0 {
            // RFC 9112 6.1: HTTP/1.0 has no chunked coding; a TE on it is
            // what a downgrade attack looks like.
            return Err(HttpError::BadTransferEncoding);
        }
        let mut items = codings.flat_map(|v| v.split(|&b| b == b','));
        match (items.next(), items.next()) {
            (Some(only), None) if only.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
                Ok(BodyFraming::Chunked)
            }
            _ => Err(HttpError::BadTransferEncoding),
        }
    }
}

/// How a request's body is delimited ([`Request::body_framing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: what follows the head is the next request.
    None,
    /// `Content-Length: N` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked` ([`crate::chunked::ChunkedDecoder`]).
    Chunked,
}

impl BodyFraming {
    /// Whether the request carries a body at all (`Content-Length: 0` does
    /// not).
    pub fn has_body(self) -> bool {
        !matches!(self, BodyFraming::None | BodyFraming::Length(0))
    }
}

/// A `Content-Length` value: `1*DIGIT`, nothing else, no overflow.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Reduces an absolute-form request target (RFC 9112 3.2.2) to origin
/// form: `http://host:80/a/b?q` becomes `/a/b?q`, `http://host?q` becomes
/// `/?q`. Origin-form (and anything else) is kept as sent.
fn origin_form(target: &str) -> String {
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| &target[scheme.len()..])
    });
    let Some(rest) = rest else {
        return target.to_string();
    };
    let path = &rest[rest.find(['/', '?']).unwrap_or(rest.len())..];
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// Whether a comma-separated header value (`keep-alive, Upgrade`) holds
/// `token`, case-insensitively. Shared by requests, responses and clients.
pub fn list_has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Finds the end of a head: the index just past the blank line. Accepts
/// bare LF line endings as httparse does. `from` is where to resume. The
/// same blank line ends a Server-Sent Event (clients use it for that).
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match &buf[nl + 1..] {
            [b'\n', ..] => return Some(nl + 2),
            [b'\r', b'\n', ..] => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// Incomplete heads up to this length are checked for plausibility.
const EARLY_CHECK_LEN: usize = 1024;

/// Whether an incomplete head could still turn into a valid request.
fn could_be_request(partial: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    match httparse::Request::new(&mut headers).parse(partial) {
        Ok(_) | Err(httparse::Error::TooManyHeaders) => true,
        Err(_) => false,
    }
}

/// Incremental request-head parser; keep one per connection until the head
/// is complete.
#[derive(Debug, Default)]
pub struct HeadParser {
    scanned: usize,
}

impl HeadParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tries to parse a request head from the front of `buf`.
    ///
    /// `Ok(None)`: incomplete, read more. `Ok(Some((req, n)))`: the head was
    /// `buf[..n]`; what follows is body or WebSocket frames.
    pub fn parse(
        &mut self,
        buf: &[u8],
        limits: HeadLimits,
    ) -> Result<Option<(Request, usize)>, HttpError> {
        // Resume a little before where we stopped: the terminator may
        // straddle two reads.
        let from = self.scanned.saturating_sub(3).min(buf.len());
        let Some(end) = find_head_end(buf, from) else {
            if buf.len() > limits.max_head {
                return Err(HttpError::HeadTooLarge);
            }
            // Refuse what can never become a request (a TLS ClientHello, a
            // binary probe) now rather than at the handshake timeout. Only
            // while the head is short, so trickled input stays cheap.
            if buf.len() <= EARLY_CHECK_LEN && !could_be_request(buf) {
                return Err(HttpError::Malformed);
            }
            self.scanned = buf.len();
            return Ok(None);
        };
        if end > limits.max_head {
            return Err(HttpError::HeadTooLarge);
        }
        let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(n)) => {
                let request = Request {
                    method: req.method.unwrap_or_default().to_string(),
                    target: origin_form(req.path.unwrap_or_default()),
                    version: req.version.unwrap_or(0),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), h.value.to_vec()))
                        .collect(),
                };
                self.scanned = 0;
                Ok(Some((request, n)))
            }
            Ok(httparse::Status::Partial) => Err(HttpError::Malformed),
            Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooManyHeaders),
            Err(_) => Err(HttpError::Malformed),
        }
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A complete HTTP/1.1 response with a `Content-Length` body.
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(128 + body.len());
    out.put_slice(format!("HTTP/1.1 {status} {}\r\n", status_text(status)).as_bytes());
    for (name, value) in headers {
        out.put_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.put_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.put_slice(body);
    out.freeze()
}

impl HttpError {
    /// The full response reporting this error; the connection is closed
    /// after it.
    pub fn to_response(self) -> Bytes {
        let body = format!("{}\n", self.reason());
        let mut headers = vec![
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Connection", "close"),
        ];
        match self {
            HttpError::UnsupportedVersion => {
                headers.push(("Sec-WebSocket-Version", "13"));
                headers.push(("Upgrade", "websocket"));
            }
            HttpError::MethodNotAllowed(allow) => headers.push(("Allow", allow)),
            _ => {}
        }
        response(self.status(), &headers, body.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] = b"GET /echo?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\nFRAME";

    #[test]
    fn parses_at_every_split() {
        for cut in 0..REQ.len() {
            let mut p = HeadParser::new();
            let first = p.parse(&REQ[..cut], HeadLimits::default()).unwrap();
            let head_len = REQ.len() - 5;
            if cut < head_len {
                assert!(first.is_none(), "cut {cut}");
                let (req, n) = p.parse(REQ, HeadLimits::default()).unwrap().unwrap();
                assert_eq!(n, head_len);
                assert_eq!(req.path(), "/echo");
                assert_eq!(req.query(), Some("x=1"));
                assert!(req.has_token("connection", "upgrade"));
                assert!(req.has_token("UPGRADE", "WebSocket"));
                assert!(!req.has_token("connection", "close"));
            }
        }
    }

    #[test]
    fn bare_lf_heads_are_accepted() {
        let mut p = HeadParser::new();
        let (req, n) = p
            .parse(b"GET / HTTP/1.1\nHost: x\n\n", HeadLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(n, 24);
        assert_eq!(req.header("host"), Some(&b"x"[..]));
    }

    #[test]
    fn limits() {
        let limits = HeadLimits {
            max_head: 64,
            max_headers: 2,
        };
        let mut p = HeadParser::new();
        let long = [b'a'; 100];
        assert_eq!(p.parse(&long, limits), Err(HttpError::HeadTooLarge));
        let many = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(
            HeadParser::new().parse(many, limits),
            Err(HttpError::TooManyHeaders)
        );
        let big_complete = format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(60));
        assert_eq!(
            HeadParser::new().parse(big_complete.as_bytes(), limits),
            Err(HttpError::HeadTooLarge)
        );
    }

    #[test]
    fn garbage_is_refused_before_the_blank_line() {
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01"[..],
            b"\x00\x00",
            b"GET / HTTP/1.1\r\nBad Header\r\n",
        ] {
            assert_eq!(
                HeadParser::new().parse(bad, HeadLimits::default()),
                Err(HttpError::Malformed),
                "{bad:?}"
            );
        }
        // A plausible prefix keeps waiting.
        for ok in [&b"GE"[..], b"GET /ws HTTP/1.", b"GET / HTTP/1.1\r\nHost: a"] {
            assert_eq!(
                HeadParser::new().parse(ok, HeadLimits::default()),
                Ok(None),
                "{ok:?}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            &b"\x16\x03\x01 TLS hello\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
        ] {
            assert_eq!(
                HeadParser::new().parse(bad, HeadLimits::default()),
                Err(HttpError::Malformed),
                "{bad:?}"
            );
        }
    }

    fn req(raw: &str) -> Request {
        HeadParser::new()
            .parse(raw.as_bytes(), HeadLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    fn framing(headers: &str) -> Result<BodyFraming, HttpError> {
        req(&format!(
            "POST /publish/t HTTP/1.1\r\nHost: x\r\n{headers}\r\n"
        ))
        .body_framing()
    }

    #[test]
    fn body_framing_follows_rfc_9112_strictly() {
        use BodyFraming::*;
        assert_eq!(framing(""), Ok(None));
        assert_eq!(framing("Content-Length: 0\r\n"), Ok(Length(0)));
        assert_eq!(framing("Content-Length: 42\r\n"), Ok(Length(42)));
        assert_eq!(framing("Content-Length: 007\r\n"), Ok(Length(7)));
        assert_eq!(
            framing("Content-Length: 5\r\nContent-Length: 5\r\n"),
            Ok(Length(5))
        );
        assert_eq!(framing("Content-Length: 5, 5\r\n"), Ok(Length(5)));
        assert_eq!(framing("Transfer-Encoding: chunked\r\n"), Ok(Chunked));
        assert_eq!(framing("transfer-encoding:  Chunked \r\n"), Ok(Chunked));
        for bad in [
            "Content-Length: +5\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: 5 5\r\n",
            "Content-Length: 0x10\r\n",
            "Content-Length: \r\n",
            "Content-Length: 5,\r\n",
            "Content-Length: 1e3\r\n",
            "Content-Length: 99999999999999999999\r\n",
        ] {
            assert_eq!(framing(bad), Err(HttpError::BadContentLength), "{bad}");
        }
        for conflict in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: 5, 6\r\n",
            "Content-Length: 0\r\nContent-Length: 20\r\n",
        ] {
            assert_eq!(
                framing(conflict),
                Err(HttpError::ConflictingLength),
                "{conflict}"
            );
        }
        for both in [
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
            "Transfer-Encoding: gzip\r\nContent-Length: 3\r\n",
        ] {
            assert_eq!(framing(both), Err(HttpError::LengthWithChunked), "{both}");
        }
        for te in [
            "Transfer-Encoding: gzip\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked;q=1\r\n",
            "Transfer-Encoding: identity\r\n",
            "Transfer-Encoding: \r\n",
            "Transfer-Encoding: xchunked\r\n",
        ] {
            assert_eq!(framing(te), Err(HttpError::BadTransferEncoding), "{te}");
        }
        let http10 = req("POST /publish/t HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(http10.body_framing(), Err(HttpError::BadTransferEncoding));
        assert!(Length(1).has_body() && Chunked.has_body());
        assert!(!Length(0).has_body() && !None.has_body());
    }

    #[test]
    fn host_exactly_once() {
        assert_eq!(
            req("GET / HTTP/1.1\r\nHost: a\r\n\r\n").check_host(),
            Ok(())
        );
        assert_eq!(
            req("GET / HTTP/1.1\r\n\r\n").check_host(),
            Err(HttpError::MissingHost)
        );
        assert_eq!(
            req("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n").check_host(),
            Err(HttpError::DuplicateHost)
        );
        assert_eq!(req("GET / HTTP/1.0\r\n\r\n").check_host(), Ok(()));
        assert_eq!(
            req("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n").check_host(),
            Err(HttpError::DuplicateHost)
        );
    }

    #[test]
    fn expect_continue() {
        assert!(
            req("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n").expects_continue()
        );
        assert!(!req("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expects_continue());
        assert!(!req("POST / HTTP/1.1\r\nHost: a\r\n\r\n").expects_continue());
    }

    #[test]
    fn absolute_form_targets_become_origin_form() {
        for (target, want) in [
            ("http://example.com/publish/t?x=1", "/publish/t?x=1"),
            ("HTTP://example.com:8080/healthz", "/healthz"),
            ("https://h/", "/"),
            ("http://h", "/"),
            ("http://h?since=3", "/?since=3"),
            ("/plain?x", "/plain?x"),
            ("*", "*"),
        ] {
            let r = req(&format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n"));
            assert_eq!(r.target, want, "{target}");
        }
        let r = req("GET http://h/poll/a.b?since=2 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((r.path(), r.query()), ("/poll/a.b", Some("since=2")));
    }

    #[test]
    fn error_responses_are_complete() {
        let r = HttpError::UnsupportedVersion.to_response();
        let text = std::str::from_utf8(&r).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
