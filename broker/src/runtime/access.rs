//! Access at the HTTP edge: the credentials a request carries, the
//! origins a browser may call from (CORS), and the answers a refusal gets.
//!
//! The engine decides what a grant allows; this file only finds the
//! credentials in a request and speaks HTTP about the outcome.

use ringcast_proto::http::Request;

/// The bearer credential of a request: `Authorization: Bearer X`, else a
/// `token=X` query parameter (what a browser's `EventSource` and
/// `WebSocket`, which cannot set headers, can send).
pub fn bearer(req: &Request) -> Option<String> {
    if let Some(v) = req.header("authorization") {
        let v = String::from_utf8_lossy(v);
        let (scheme, token) = v.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
            .filter(|t| !t.is_empty());
    }
    req.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(percent_decode)
        .filter(|t| !t.is_empty())
}

/// `%XX` decoding (tokens are URL-safe already; API keys may not be). A
/// `+` stays a `+`: this is a URL's query, not a form, and base64 keys use it.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What `--allowed-origins` says of a request's `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// No `Origin` header: not a browser's cross-origin call (curl, a
    /// backend); nothing to answer.
    Absent,
    /// Allowed: echo it in `Access-Control-Allow-Origin`.
    Allowed(String),
    /// Not on the list: refused (403), with no CORS headers, so the
    /// browser also hides whatever it could have read.
    Refused,
}

pub fn origin(req: &Request, allowed: &[String]) -> Origin {
    let Some(o) = req.header("origin") else {
        return Origin::Absent;
    };
    let o = String::from_utf8_lossy(o).trim().to_string();
    if allowed.is_empty() || allowed.iter().any(|a| a.eq_ignore_ascii_case(&o)) {
        Origin::Allowed(o)
    } else {
        Origin::Refused
    }
}

/// The headers of a CORS preflight answer for an allowed origin.
pub fn preflight_headers(origin: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Access-Control-Allow-Origin", origin.to_string()),
        ("Access-Control-Allow-Methods", "GET, POST, HEAD".into()),
        (
            "Access-Control-Allow-Headers",
            "Authorization, Content-Type, Last-Event-ID".into(),
        ),
        ("Access-Control-Max-Age", "600".into()),
        ("Vary", "Origin".into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_proto::http::{HeadLimits, HeadParser};

    fn req(target: &str, headers: &str) -> Request {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        HeadParser::new()
            .parse(raw.as_bytes(), HeadLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn credentials_from_the_header_or_the_query() {
        assert_eq!(
            bearer(&req("/sse/t", "Authorization: Bearer abc.def\r\n")).as_deref(),
            Some("abc.def")
        );
        assert_eq!(
            bearer(&req("/sse/t", "Authorization: bearer  x \r\n")).as_deref(),
            Some("x")
        );
        assert_eq!(bearer(&req("/sse/t", "Authorization: Basic x\r\n")), None);
        assert_eq!(
            bearer(&req("/ws?a=1&token=t%2Bk", "")).as_deref(),
            Some("t+k")
        );
        assert_eq!(bearer(&req("/ws?token=", "")), None);
        assert_eq!(bearer(&req("/ws", "")), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("a+b"), "a+b", "a key's + is not a space");
    }

    #[test]
    fn origins_against_the_list() {
        let list = vec!["https://app.example".to_string()];
        assert_eq!(origin(&req("/", ""), &list), Origin::Absent);
        assert_eq!(
            origin(&req("/", "Origin: https://app.example\r\n"), &list),
            Origin::Allowed("https://app.example".into())
        );
        assert_eq!(
            origin(&req("/", "Origin: https://evil.example\r\n"), &list),
            Origin::Refused
        );
        assert!(matches!(
            origin(&req("/", "Origin: https://any.example\r\n"), &[]),
            Origin::Allowed(_)
        ));
    }
}
