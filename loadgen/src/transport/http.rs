//! HTTP/1.1 client side shared by the baseline transports: request heads,
//! response parsing (httparse), and the `POST /publish/{topic}` publisher.
//!
//! Requests carry only the headers HTTP/1.1 requires (`Host`, plus
//! `Content-Type`/`Content-Length` on a POST). A browser adds several
//! hundred bytes more to every request (User-Agent, Accept, cookies), so
//! the HTTP byte counts this load generator reports are a floor.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::stream::Stream;
use super::{ConnectOpts, Endpoint, PubConn, Result, Wire};

/// Response heads larger than this are refused (the broker's are ~150 B).
const MAX_HEAD: usize = 16 * 1024;
/// Bodies larger than this are refused: a poll answer is at most the
/// broker's retained history.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub content_length: Option<usize>,
    /// `Connection: close`: the broker ends the connection after this
    /// response.
    pub close: bool,
    pub content_type: Option<String>,
}

/// Parses the response head at the front of `buf`; `None` until complete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let mut head = Head {
                status: resp.code.unwrap_or(0),
                len,
                content_length: None,
                close: false,
                content_type: None,
            };
            for h in resp.headers.iter() {
                let value = std::str::from_utf8(h.value).unwrap_or("").trim();
                if h.name.eq_ignore_ascii_case("content-length") {
                    let n = value
                        .parse::<usize>()
                        .map_err(|_| format!("bad Content-Length {value:?} from the broker"))?;
                    if n > MAX_BODY {
                        return Err(format!("response body of {n} bytes is too large"));
                    }
                    head.content_length = Some(n);
                } else if h.name.eq_ignore_ascii_case("connection") {
                    head.close = ringcast_proto::http::list_has_token(h.value, "close");
                } else if h.name.eq_ignore_ascii_case("content-type") {
                    head.content_type = Some(value.to_string());
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err("the broker sent a chunked response; not supported".into());
                }
            }
            Ok(Some(head))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(format!(
            "response head over {MAX_HEAD} bytes from the broker"
        )),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!(
            "unparseable HTTP response from the broker ({e}): {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(80)])
        )),
    }
}

/// A complete response with a `Content-Length` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
    pub close: bool,
}

/// Takes one complete response off the front of `buf`; `None` (and `buf`
/// untouched) until all of it is there.
pub fn take_response(buf: &mut BytesMut) -> Result<Option<Response>> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let Some(n) = head.content_length else {
        return Err(format!(
            "HTTP {} without Content-Length where one was expected",
            head.status
        ));
    };
    if buf.len() < head.len + n {
        return Ok(None);
    }
    buf.advance(head.len);
    Ok(Some(Response {
        status: head.status,
        body: buf.split_to(n).freeze(),
        close: head.close,
    }))
}

/// `GET path` with the headers HTTP/1.1 requires.
pub fn get(out: &mut BytesMut, authority: &str, path: &str, extra: &str) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `POST /publish/{topic}` carrying `data`; with a `token`, also
/// `Authorization: Bearer {token}`.
pub fn post_publish(
    out: &mut BytesMut,
    authority: &str,
    topic: &str,
    data: &[u8],
    token: Option<&str>,
) {
    use std::io::Write;
    let mut w = std::mem::take(out).writer();
    // Writing into memory cannot fail.
    let _ = write!(w, "POST /publish/{topic} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(t) = token {
        let _ = write!(w, "Authorization: Bearer {t}\r\n");
    }
    let _ = write!(
        w,
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    *out = w.into_inner();
    out.extend_from_slice(data);
}

/// A non-200 response as the `error` object the scenarios understand:
/// the broker's own JSON error body when it sent one, else one built from
/// the status and the text.
pub fn error_object(status: u16, body: &[u8]) -> Bytes {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if v.get("op").and_then(|o| o.as_str()) == Some("error") {
            return Bytes::copy_from_slice(body);
        }
    }
    let text = String::from_utf8_lossy(body);
    let obj = serde_json::json!({
        "op": "error",
        "code": format!("http_{status}"),
        "message": format!("HTTP {status}: {}", text.trim()),
    });
    Bytes::from(obj.to_string())
}

/// Connects within `opts.timeout` (the HTTP transports have no handshake
/// of their own beyond the first request).
pub async fn connect(ep: &Endpoint, opts: &ConnectOpts) -> Result<Stream> {
    match tokio::time::timeout(opts.timeout, Stream::connect(ep, opts)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "connect to {} took longer than {:?}",
            ep.authority, opts.timeout
        )),
    }
}

/// Publishes with `POST /publish/{topic}`, pipelined on one keep-alive
/// connection: requests go out in batches without waiting for answers
/// (open loop), and the answers are read as they come. A `200` is counted
/// and dropped; anything else becomes an `error` object.
pub struct HttpPublisher {
    io: Stream,
    authority: String,
    token: Option<std::sync::Arc<str>>,
    /// Requests sent whose response has not arrived.
    pub in_flight: u64,
}

impl HttpPublisher {
    pub async fn connect(ep: &Endpoint, opts: &ConnectOpts) -> Result<HttpPublisher> {
        Ok(HttpPublisher {
            io: connect(ep, opts).await?,
            authority: ep.authority.clone(),
            token: opts.token.clone(),
            in_flight: 0,
        })
    }
}

impl PubConn for HttpPublisher {
    fn queue_publish(&mut self, topic: &str, data: &[u8]) {
        post_publish(
            self.io.wbuf(),
            &self.authority,
            topic,
            data,
            self.token.as_deref(),
        );
        self.io.wire.requests += 1;
        self.in_flight += 1;
    }

    async fn flush(&mut self) -> Result<()> {
        self.io.flush().await
    }

    fn try_recv(&mut self) -> Result<Option<Bytes>> {
        loop {
            if let Some(r) = take_response(&mut self.io.rbuf)? {
                self.in_flight = self.in_flight.saturating_sub(1);
                if r.status != 200 {
                    return Ok(Some(error_object(r.status, &r.body)));
                }
                if r.close {
                    return Err("the broker closed the publish connection".into());
                }
                continue;
            }
            if !self.io.try_fill()? {
                return Ok(None);
            }
        }
    }

    fn wire(&self) -> Wire {
        self.io.wire
    }

    async fn close(mut self) {
        self.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_come_off_a_pipelined_buffer_one_by_one() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"seq\":1}HTTP/1.1 400 Bad Request\r\n\
               Content-Length: 2\r\nConnection: close\r\n\r\n{}HTTP/1.1 2"[..],
        );
        let r = take_response(&mut buf).unwrap().unwrap();
        assert_eq!(
            (r.status, &r.body[..], r.close),
            (200, &b"{\"seq\":1}"[..], false)
        );
        let r = take_response(&mut buf).unwrap().unwrap();
        assert_eq!((r.status, &r.body[..], r.close), (400, &b"{}"[..], true));
        assert_eq!(take_response(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"HTTP/1.1 2", "an incomplete response stays put");
    }

    #[test]
    fn incomplete_body_waits() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n[1,"[..]);
        assert_eq!(take_response(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"2]");
        assert_eq!(
            &take_response(&mut buf).unwrap().unwrap().body[..],
            b"[1,2]"
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_responses_are_errors_naming_the_problem() {
        let e = take_response(&mut BytesMut::from(&b"SSH-2.0-OpenSSH\r\n\r\n"[..])).unwrap_err();
        assert!(e.contains("unparseable"), "{e}");
        let e = take_response(&mut BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        ))
        .unwrap_err();
        assert!(e.contains("chunked"), "{e}");
        let e = take_response(&mut BytesMut::from(&b"HTTP/1.1 200 OK\r\n\r\n"[..])).unwrap_err();
        assert!(e.contains("without Content-Length"), "{e}");
        let huge = vec![b'a'; MAX_HEAD + 1];
        assert!(parse_head(&huge).is_err());
    }

    #[test]
    fn requests_are_minimal_http11() {
        let mut out = BytesMut::new();
        get(&mut out, "127.0.0.1:8080", "/poll/t?since=3", "");
        assert_eq!(
            &out[..],
            b"GET /poll/t?since=3 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
        );
        out.clear();
        post_publish(&mut out, "h:1", "a.b", b"{\"x\":1}", None);
        assert_eq!(
            &out[..],
            &b"POST /publish/a.b HTTP/1.1\r\nHost: h:1\r\nContent-Type: application/json\r\n\
               Content-Length: 7\r\n\r\n{\"x\":1}"[..]
        );
        out.clear();
        post_publish(&mut out, "h:1", "a.b", b"{}", Some("h.p.s"));
        assert_eq!(
            &out[..],
            &b"POST /publish/a.b HTTP/1.1\r\nHost: h:1\r\nAuthorization: Bearer h.p.s\r\n\
               Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"[..]
        );
    }

    #[test]
    fn errors_keep_the_brokers_json_or_say_the_status() {
        let body = br#"{"op":"error","code":"bad_topic","message":"no"}"#;
        assert_eq!(&error_object(400, body)[..], &body[..]);
        let v: serde_json::Value =
            serde_json::from_slice(&error_object(503, b"too many held polls\n")).unwrap();
        assert_eq!(v["op"], "error");
        assert_eq!(v["code"], "http_503");
        assert_eq!(v["message"], "HTTP 503: too many held polls");
    }
}
