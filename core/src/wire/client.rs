//! The client role of the wire contract (`docs/protocol.md`): the commands
//! a client sends and the broker objects it reads. The load generator and
//! the tests use it; it sits beside the server role ([`super::command`],
//! [`super::reply`]) so that the contract is written once.
//!
//! Every transport (WebSocket, long-polling, short polling, SSE) carries
//! the same broker → client JSON objects, so the parsing lives here and not
//! in a transport. The `message` object is
//! parsed on a fast path that matches the broker's fixed encoding
//! (`{"op":"message","topic":T,"seq":N,"data":D}`), falling back to
//! `serde_json` for anything else, so another broker's key order or
//! whitespace still parses, just slower.

use serde::Deserialize;
use serde_json::value::RawValue;

/// A broker → client object, borrowed from the frame it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<'a> {
    Message {
        topic: &'a str,
        seq: u64,
        /// The publisher's `data`, verbatim.
        data: &'a [u8],
    },
    Subscribed {
        topic: String,
    },
    Unsubscribed {
        topic: String,
    },
    /// The slow-consumer policy skipped seqs `from..=to` of `topic`.
    Skipped {
        topic: String,
        from: u64,
        to: u64,
    },
    /// A resume could not replay seqs `since+1 .. first_seq-1`.
    Gap {
        topic: String,
        since: u64,
        first_seq: u64,
    },
    Published {
        topic: String,
        seq: u64,
    },
    Error {
        code: String,
        message: String,
    },
    /// Valid JSON with an `op` this version does not know (additive
    /// changes to the contract must not break the load generator).
    Other {
        op: String,
    },
}

#[derive(Deserialize)]
struct Generic<'a> {
    op: String,
    #[serde(borrow, default)]
    topic: Option<&'a str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    from: Option<u64>,
    #[serde(default)]
    to: Option<u64>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    first_seq: Option<u64>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Parses one broker → client JSON object.
pub fn parse(json: &[u8]) -> Result<Incoming<'_>, String> {
    if let Some(m) = parse_message_fast(json) {
        return Ok(m);
    }
    let g: Generic<'_> = serde_json::from_slice(json).map_err(|e| {
        format!(
            "unparseable broker reply ({e}): {}",
            String::from_utf8_lossy(&json[..json.len().min(200)])
        )
    })?;
    let topic = || g.topic.map(str::to_string).unwrap_or_default();
    let need =
        |v: Option<u64>, field: &str| v.ok_or_else(|| format!("`{}` without `{field}`", g.op));
    Ok(match g.op.as_str() {
        "message" => Incoming::Message {
            topic: g.topic.ok_or("`message` without `topic`")?,
            seq: need(g.seq, "seq")?,
            data: g.data.ok_or("`message` without `data`")?.get().as_bytes(),
        },
        "subscribed" => Incoming::Subscribed { topic: topic() },
        "unsubscribed" => Incoming::Unsubscribed { topic: topic() },
        "skipped" => Incoming::Skipped {
            topic: topic(),
            from: need(g.from, "from")?,
            to: need(g.to, "to")?,
        },
        "gap" => Incoming::Gap {
            topic: topic(),
            since: need(g.since, "since")?,
            first_seq: need(g.first_seq, "first_seq")?,
        },
        "published" => Incoming::Published {
            topic: topic(),
            seq: need(g.seq, "seq")?,
        },
        "error" => Incoming::Error {
            code: g.code.unwrap_or_default(),
            message: g.message.unwrap_or_default(),
        },
        _ => Incoming::Other { op: g.op },
    })
}

/// The broker's own encoding of `message`, without a JSON parser.
fn parse_message_fast(json: &[u8]) -> Option<Incoming<'_>> {
    let rest = json.strip_prefix(br#"{"op":"message","topic":""#)?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    if rest[end] != b'"' {
        return None;
    }
    let topic = std::str::from_utf8(&rest[..end]).ok()?;
    let rest = rest[end..].strip_prefix(br#"","seq":"#)?;
    let (seq, n) = leading_u64(rest)?;
    let data = rest[n..].strip_prefix(br#","data":"#)?;
    let data = data.strip_suffix(b"}")?;
    if data.is_empty() {
        return None;
    }
    Some(Incoming::Message { topic, seq, data })
}

/// A decimal number at the front of `s`: (value, digits used).
pub fn leading_u64(s: &[u8]) -> Option<(u64, usize)> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let mut v = 0u64;
    for &b in &s[..n] {
        v = v * 10 + u64::from(b - b'0');
    }
    Some((v, n))
}

/// `{"op":"subscribe","topic":T}`.
pub fn subscribe(topic: &str) -> Vec<u8> {
    format!(r#"{{"op":"subscribe","topic":"{topic}"}}"#).into_bytes()
}

/// Appends `{"op":"publish","topic":T,"data":D}`.
pub fn publish(out: &mut Vec<u8>, topic: &str, data: &[u8]) {
    out.extend_from_slice(br#"{"op":"publish","topic":""#);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(br#"","data":"#);
    out.extend_from_slice(data);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_and_fallback_agree() {
        let fast = br#"{"op":"message","topic":"a.b","seq":42,"data":{"t":7,"p":"xx"}}"#;
        let slow = br#"{ "seq": 42, "data": {"t":7,"p":"xx"}, "topic": "a.b", "op": "message" }"#;
        let want = Incoming::Message {
            topic: "a.b",
            seq: 42,
            data: br#"{"t":7,"p":"xx"}"#,
        };
        assert!(parse_message_fast(fast).is_some());
        assert!(parse_message_fast(slow).is_none());
        assert_eq!(parse(fast).unwrap(), want);
        assert_eq!(parse(slow).unwrap(), want);
    }

    #[test]
    fn control_objects() {
        assert_eq!(
            parse(br#"{"op":"subscribed","topic":"x","id":3}"#).unwrap(),
            Incoming::Subscribed { topic: "x".into() }
        );
        assert_eq!(
            parse(br#"{"op":"skipped","topic":"x","from":4,"to":9,"count":6}"#).unwrap(),
            Incoming::Skipped {
                topic: "x".into(),
                from: 4,
                to: 9
            }
        );
        assert!(matches!(
            parse(br#"{"op":"error","code":"bad_topic","message":"no"}"#).unwrap(),
            Incoming::Error { code, .. } if code == "bad_topic"
        ));
        assert!(matches!(
            parse(br#"{"op":"future_thing"}"#).unwrap(),
            Incoming::Other { .. }
        ));
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"op":"message","topic":"x"}"#).is_err());
    }

    #[test]
    fn commands_are_what_the_broker_parses() {
        use crate::wire::command::{parse as parse_command, Command};
        let frame = bytes::Bytes::from(subscribe("a.b"));
        assert!(matches!(
            parse_command(&frame),
            Ok(Command::Subscribe { topic, since: None, id: None }) if topic == "a.b"
        ));
        let mut out = Vec::new();
        publish(&mut out, "a.b", br#"{"x":1}"#);
        let frame = bytes::Bytes::from(out);
        assert!(matches!(
            parse_command(&frame),
            Ok(Command::Publish { topic, data, id: None })
                if topic == "a.b" && &data[..] == br#"{"x":1}"#
        ));
    }
}
