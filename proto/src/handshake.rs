//! The WebSocket opening handshake (RFC 6455 section 4), both roles.
//!
//! The server side checks a parsed [`Request`] against every MUST of
//! section 4.2.1 and answers either with the 101 response or with an
//! [`HttpError`] that renders as a complete HTTP response: a client with a
//! bad upgrade always learns why, and never hangs. Subprotocol choice and
//! Origin checks are hooks ([`HandshakePolicy`]) because they are the
//! application's business, not the protocol's.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use sha1::{Digest, Sha1};

use crate::error::HttpError;
use crate::http::Request;

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    B64.encode(sha.finalize())
}

/// Application hooks consulted during the handshake.
pub trait HandshakePolicy {
    /// Browsers send `Origin`; non-browser clients usually do not.
    fn allow_origin(&self, _origin: Option<&[u8]>) -> bool {
        true
    }

    /// Picks one of the client's offered subprotocols, or none.
    fn select_subprotocol(&self, _offered: &[&str]) -> Option<String> {
        None
    }
}

/// Accepts any origin and negotiates no subprotocol.
pub struct AllowAll;

impl HandshakePolicy for AllowAll {}

/// An Origin allowlist and a list of supported subprotocols, in server
/// preference order. An empty allowlist allows every origin.
#[derive(Debug, Clone, Default)]
pub struct StaticPolicy {
    pub origins: Vec<String>,
    pub subprotocols: Vec<String>,
}

impl HandshakePolicy for StaticPolicy {
    fn allow_origin(&self, origin: Option<&[u8]>) -> bool {
        if self.origins.is_empty() {
            return true;
        }
        match origin {
            // A request without Origin is not from a browser page; the
            // allowlist exists to stop cross-site pages, so let it through.
            None => true,
            Some(o) => self
                .origins
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(o)),
        }
    }

    fn select_subprotocol(&self, offered: &[&str]) -> Option<String> {
        self.subprotocols
            .iter()
            .find(|p| offered.contains(&p.as_str()))
            .cloned()
    }
}

/// Whether the request asks for a WebSocket at all (as opposed to plain HTTP).
pub fn is_upgrade(req: &Request) -> bool {
    req.has_token("upgrade", "websocket")
}

/// A validated upgrade, ready to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub accept: String,
    pub protocol: Option<String>,
}

impl Accepted {
    /// The `101 Switching Protocols` response.
    pub fn response(&self) -> Bytes {
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            self.accept
        );
        if let Some(p) = &self.protocol {
            out.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        out.push_str("\r\n");
        Bytes::from(out)
    }
}

/// Validates an upgrade request (RFC 6455 section 4.2.1).
pub fn accept(req: &Request, policy: &dyn HandshakePolicy) -> Result<Accepted, HttpError> {
    if req.method != "GET" {
        return Err(HttpError::MethodNotAllowed("GET"));
    }
    if req.version < 1 {
        return Err(HttpError::VersionTooOld);
    }
    if req.header("host").is_none() {
        return Err(HttpError::MissingHost);
    }
    if !req.has_token("upgrade", "websocket") || !req.has_token("connection", "upgrade") {
        return Err(HttpError::NotAnUpgrade);
    }
    let mut versions = req.headers_named("sec-websocket-version");
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.trim_ascii() == b"13" => {}
        _ => return Err(HttpError::UnsupportedVersion),
    }
    let mut keys = req.headers_named("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k.trim_ascii(),
        _ => return Err(HttpError::BadKey),
    };
    match B64.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HttpError::BadKey),
    }
    if !policy.allow_origin(req.header("origin")) {
        return Err(HttpError::OriginRejected);
    }
    let offered: Vec<&str> = req
        .headers_named("sec-websocket-protocol")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let protocol = if offered.is_empty() {
        None
    } else {
        policy.select_subprotocol(&offered)
    };
    Ok(Accepted {
        accept: accept_key(key),
        protocol,
    })
}

/// Client role: the request we sent and what the server must answer.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    expected_accept: String,
    offered: Vec<String>,
}

impl ClientHandshake {
    /// Builds the upgrade request with a fresh random key.
    pub fn new(host: &str, path: &str, protocols: &[&str]) -> (ClientHandshake, Bytes) {
        let key = B64.encode(rand::random::<[u8; 16]>());
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if !protocols.is_empty() {
            req.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                protocols.join(", ")
            ));
        }
        req.push_str("\r\n");
        let hs = ClientHandshake {
            expected_accept: accept_key(key.as_bytes()),
            offered: protocols.iter().map(|p| p.to_string()).collect(),
        };
        (hs, Bytes::from(req))
    }

    /// Checks the server's response head. `Ok(None)`: read more.
    /// `Ok(Some((n, protocol)))`: the head was `buf[..n]`; frames follow.
    pub fn parse_response(
        &self,
        buf: &[u8],
        max_head: usize,
    ) -> Result<Option<(usize, Option<String>)>, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) if n > max_head => {
                return Err(HttpError::HeadTooLarge)
            }
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > max_head => {
                return Err(HttpError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(HttpError::Malformed),
        };
        let status = resp.code.unwrap_or(0);
        if status != 101 {
            return Err(HttpError::UpgradeRefused(status));
        }
        let get = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.trim_ascii())
        };
        let token =
            |name: &str, t: &str| get(name).is_some_and(|v| crate::http::list_has_token(v, t));
        if !token("upgrade", "websocket") || !token("connection", "upgrade") {
            return Err(HttpError::NotAnUpgrade);
        }
        if get("sec-websocket-accept") != Some(self.expected_accept.as_bytes()) {
            return Err(HttpError::BadAccept);
        }
        let protocol = match get("sec-websocket-protocol") {
            None => None,
            Some(p) => {
                let p = std::str::from_utf8(p).map_err(|_| HttpError::Malformed)?;
                if !self.offered.iter().any(|o| o == p) {
                    return Err(HttpError::Malformed);
                }
                Some(p.to_string())
            }
        };
        Ok(Some((n, protocol)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HeadLimits, HeadParser};

    fn parse(raw: &str) -> Request {
        HeadParser::new()
            .parse(raw.as_bytes(), HeadLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    const GOOD: &str = "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let ok = accept(&parse(GOOD), &AllowAll).unwrap();
        assert_eq!(ok.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let resp = String::from_utf8(ok.response().to_vec()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(resp.ends_with("\r\n\r\n"));
    }

    #[test]
    fn each_requirement_has_its_error() {
        let cases = [
            (
                GOOD.replace("GET", "POST"),
                HttpError::MethodNotAllowed("GET"),
            ),
            (
                GOOD.replace("HTTP/1.1", "HTTP/1.0"),
                HttpError::VersionTooOld,
            ),
            (GOOD.replace("Host: x\r\n", ""), HttpError::MissingHost),
            (
                GOOD.replace("Upgrade: WebSocket\r\n", ""),
                HttpError::NotAnUpgrade,
            ),
            (
                GOOD.replace("keep-alive, upgrade", "keep-alive"),
                HttpError::NotAnUpgrade,
            ),
            (
                GOOD.replace("Version: 13", "Version: 8"),
                HttpError::UnsupportedVersion,
            ),
            (
                GOOD.replace("Sec-WebSocket-Version: 13\r\n", ""),
                HttpError::UnsupportedVersion,
            ),
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
                HttpError::BadKey,
            ),
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!!"),
                HttpError::BadKey,
            ),
            (
                GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                HttpError::BadKey,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(accept(&parse(&raw), &AllowAll), Err(want), "{raw}");
        }
    }

    #[test]
    fn origin_and_subprotocol_hooks() {
        let policy = StaticPolicy {
            origins: vec!["https://good.example".into()],
            subprotocols: vec!["ringcast.v1".into(), "other".into()],
        };
        let with = |extra: &str| parse(&GOOD.replace("\r\n\r\n", &format!("\r\n{extra}\r\n\r\n")));
        assert_eq!(
            accept(&with("Origin: https://evil.example"), &policy),
            Err(HttpError::OriginRejected)
        );
        let ok = accept(
            &with("Origin: https://good.example\r\nSec-WebSocket-Protocol: x, other, ringcast.v1"),
            &policy,
        )
        .unwrap();
        assert_eq!(ok.protocol.as_deref(), Some("ringcast.v1"));
        assert!(String::from_utf8_lossy(&ok.response())
            .contains("Sec-WebSocket-Protocol: ringcast.v1\r\n"));
        let none = accept(&with("Sec-WebSocket-Protocol: nope"), &policy).unwrap();
        assert_eq!(none.protocol, None);
    }

    #[test]
    fn client_and_server_agree() {
        let (client, request) = ClientHandshake::new("127.0.0.1:1", "/echo", &["ringcast.v1"]);
        let req = HeadParser::new()
            .parse(&request, HeadLimits::default())
            .unwrap()
            .unwrap()
            .0;
        let policy = StaticPolicy {
            origins: vec![],
            subprotocols: vec!["ringcast.v1".into()],
        };
        let accepted = accept(&req, &policy).unwrap();
        let mut resp = accepted.response().to_vec();
        resp.extend_from_slice(b"\x81\x00");
        let (n, proto) = client.parse_response(&resp, 4096).unwrap().unwrap();
        assert_eq!(n, resp.len() - 2);
        assert_eq!(proto.as_deref(), Some("ringcast.v1"));
        // The head limit holds however the response arrives.
        assert_eq!(
            client.parse_response(&resp, 64),
            Err(HttpError::HeadTooLarge)
        );
        // Partial response: need more.
        assert_eq!(client.parse_response(&resp[..10], 4096), Ok(None));
        // A tampered accept is refused.
        let bad = String::from_utf8(accepted.response().to_vec())
            .unwrap()
            .replace(&accepted.accept, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert_eq!(
            client.parse_response(bad.as_bytes(), 4096),
            Err(HttpError::BadAccept)
        );
        let refused = HttpError::NotFound.to_response();
        assert_eq!(
            client.parse_response(&refused, 4096),
            Err(HttpError::UpgradeRefused(404))
        );
    }
}
