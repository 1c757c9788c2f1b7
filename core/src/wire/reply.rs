//! Broker → client messages on `/ws`, encoded as complete WebSocket text
//! frames (../shared/protocol.md, "Broker → client").
//!
//! Each frame is built in one allocation: the JSON is written after room
//! for the longest server header, then the header is written right before
//! it and the unused front skipped. A `message` frame is built once per
//! publish, on the topic's owner shard, and the same `Bytes` goes to every
//! subscriber. `data` is copied in as the publisher sent it (already
//! validated as JSON); topics need no escaping (their alphabet is safe).

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::command::{ErrorCode, Id};
use ringcast_proto::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};

/// Server headers are unmasked: at most 10 bytes.
const ROOM: usize = MAX_HEADER_LEN - 4;

/// Starts a frame body; finish with [`finish`].
fn begin(capacity: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(ROOM + capacity);
    out.put_bytes(0, ROOM);
    out
}

/// Writes the text-frame header in front of the JSON and returns the frame.
fn finish(mut out: BytesMut) -> Bytes {
    let len = out.len() - ROOM;
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode: OpCode::Text,
        mask: None,
        payload_len: len as u64,
    };
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut h);
    out[ROOM - n..ROOM].copy_from_slice(&h[..n]);
    let _ = out.split_to(ROOM - n);
    out.freeze()
}

fn put_id(out: &mut BytesMut, id: &Option<Id>) {
    if let Some(Id(raw)) = id {
        out.put_slice(b",\"id\":");
        out.put_slice(raw);
    }
}

fn put_u64(out: &mut BytesMut, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// `{"op":"message","topic":T,"seq":N,"data":D}`, framed.
pub fn message(topic: &str, seq: u64, data: &[u8]) -> Bytes {
    // 42 bytes of fixed JSON and up to 20 digits of seq: the frame is
    // built in one allocation whatever the seq (it is retained as built).
    let mut out = begin(62 + topic.len() + data.len());
    out.put_slice(b"{\"op\":\"message\",\"topic\":\"");
    out.put_slice(topic.as_bytes());
    out.put_slice(b"\",\"seq\":");
    put_u64(&mut out, seq);
    out.put_slice(b",\"data\":");
    out.put_slice(data);
    out.put_u8(b'}');
    finish(out)
}

/// The JSON of a message object without framing (for HTTP polling and SSE).
pub fn message_json(frame: &Bytes) -> Bytes {
    let (_, n) = FrameHeader::decode(frame)
        .ok()
        .flatten()
        .expect("reply frames have a valid header");
    frame.slice(n..)
}

fn op_topic(op: &str, topic: &str, id: &Option<Id>) -> Bytes {
    let mut out = begin(40 + topic.len());
    out.put_slice(b"{\"op\":\"");
    out.put_slice(op.as_bytes());
    out.put_slice(b"\",\"topic\":\"");
    out.put_slice(topic.as_bytes());
    out.put_u8(b'"');
    put_id(&mut out, id);
    out.put_u8(b'}');
    finish(out)
}

/// `{"op":"subscribed","topic":T,"epoch":E,"id":...}`. `epoch` (an
/// addition to the v1 contract) names this broker instance: seqs restart
/// at 1 when the process restarts (history is in memory only), so a client
/// that resumes with `since` compares epochs to tell a continuation from a
/// new stream. It comes before any replay, so the client can decide first.
pub fn subscribed(topic: &str, epoch: &str, id: &Option<Id>) -> Bytes {
    let mut out = op_topic_epoch("subscribed", topic, epoch);
    put_id(&mut out, id);
    out.put_u8(b'}');
    finish(out)
}

/// `{"op":OP,"topic":T,"epoch":E`: the start the objects that name a
/// topic's epoch share; the caller adds its fields and the `}`.
fn op_topic_epoch(op: &str, topic: &str, epoch: &str) -> BytesMut {
    let mut out = begin(64 + topic.len() + epoch.len());
    out.put_slice(b"{\"op\":\"");
    out.put_slice(op.as_bytes());
    out.put_slice(b"\",\"topic\":\"");
    out.put_slice(topic.as_bytes());
    out.put_slice(b"\",\"epoch\":\"");
    out.put_slice(epoch.as_bytes());
    out.put_u8(b'"');
    out
}

/// `{"op":"unsubscribed","topic":T,"id":...}`
pub fn unsubscribed(topic: &str, id: &Option<Id>) -> Bytes {
    op_topic("unsubscribed", topic, id)
}

/// `{"op":"connected","sub":S,"expires_in":N,"id":...}`: the answer to a
/// `connect` (or `refreshed` to a `refresh`); `expires_in` (seconds) is
/// absent for credentials that do not expire. `sub` went through a JWT
/// signature check, but it is still the issuer's text: it is escaped.
pub fn connected(op: &str, sub: Option<&str>, expires_in: Option<u64>, id: &Option<Id>) -> Bytes {
    let sub = sub.map(|s| serde_json::to_string(s).unwrap_or_default());
    let mut out = begin(64 + sub.as_ref().map_or(0, String::len));
    out.put_slice(b"{\"op\":\"");
    out.put_slice(op.as_bytes());
    out.put_u8(b'"');
    if let Some(sub) = sub {
        out.put_slice(b",\"sub\":");
        out.put_slice(sub.as_bytes());
    }
    if let Some(n) = expires_in {
        out.put_slice(b",\"expires_in\":");
        put_u64(&mut out, n);
    }
    put_id(&mut out, id);
    out.put_u8(b'}');
    finish(out)
}

/// `{"op":"expiring","expires_in":N}`: the connection's token expires in
/// N seconds; `refresh` it or be closed with 4401.
pub fn expiring(expires_in: u64) -> Bytes {
    let mut out = begin(48);
    out.put_slice(b"{\"op\":\"expiring\",\"expires_in\":");
    put_u64(&mut out, expires_in);
    out.put_u8(b'}');
    finish(out)
}

/// `{"op":"published","topic":T,"seq":N,"id":...}`: the answer to a
/// `publish` that carried an `id` (an addition to the v1 contract).
pub fn published(topic: &str, seq: u64, id: &Option<Id>) -> Bytes {
    let mut out = begin(56 + topic.len());
    out.put_slice(b"{\"op\":\"published\",\"topic\":\"");
    out.put_slice(topic.as_bytes());
    out.put_slice(b"\",\"seq\":");
    put_u64(&mut out, seq);
    put_id(&mut out, id);
    out.put_u8(b'}');
    finish(out)
}

/// `{"op":"gap","topic":T,"since":S,"first_seq":F,"id":...}`: sent after
/// `subscribed` and before any replay when the requested `since` is older
/// than the retained history (or ahead of the topic, after a reset): the
/// client will not see seqs `S+1 .. F-1`.
pub fn gap(topic: &str, since: u64, first_seq: u64, id: &Option<Id>) -> Bytes {
    let mut out = begin(72 + topic.len());
    out.put_slice(b"{\"op\":\"gap\",\"topic\":\"");
    out.put_slice(topic.as_bytes());
    out.put_slice(b"\",\"since\":");
    put_u64(&mut out, since);
    out.put_slice(b",\"first_seq\":");
    put_u64(&mut out, first_seq);
    put_id(&mut out, id);
    out.put_u8(b'}');
    finish(out)
}

/// `{"op":"skipped","topic":T,"from":A,"to":B,"count":N}`: a slow consumer
/// under the `conflate` policy did not receive seqs `A..=B` (N messages);
/// the next message on the topic is the newest.
pub fn skipped(topic: &str, from: u64, to: u64) -> Bytes {
    let mut out = begin(80 + topic.len());
    out.put_slice(b"{\"op\":\"skipped\",\"topic\":\"");
    out.put_slice(topic.as_bytes());
    out.put_slice(b"\",\"from\":");
    put_u64(&mut out, from);
    out.put_slice(b",\"to\":");
    put_u64(&mut out, to);
    out.put_slice(b",\"count\":");
    put_u64(&mut out, to + 1 - from);
    out.put_u8(b'}');
    finish(out)
}

/// `{"op":"reset","topic":T,"epoch":E,"last_seq":N}`: a cluster topic's
/// stream started again under epoch `E` (its backend lost its state): the
/// seqs that follow continue from `N`, and what the client had resumed
/// from means nothing any more.
pub fn reset(topic: &str, epoch: &str, last_seq: u64) -> Bytes {
    let mut out = op_topic_epoch("reset", topic, epoch);
    out.put_slice(b",\"last_seq\":");
    put_u64(&mut out, last_seq);
    out.put_u8(b'}');
    finish(out)
}

/// `{"op":"error","code":C,"message":M,"id":...}`
pub fn error(code: ErrorCode, message: &str, id: &Option<Id>) -> Bytes {
    let mut out = begin(48 + message.len());
    out.put_slice(b"{\"op\":\"error\",\"code\":\"");
    out.put_slice(code.as_str().as_bytes());
    out.put_slice(b"\",\"message\":");
    let mut w = (&mut out).writer();
    serde_json::to_writer(&mut w, message).expect("writing to memory");
    put_id(&mut out, id);
    out.put_u8(b'}');
    finish(out)
}

/// One Server-Sent Event carrying the JSON of a WebSocket frame built by
/// this module: `<first line>\ndata: <json>\n\n`.
fn sse(first_line: &[u8], frame: &Bytes) -> Bytes {
    let json = message_json(frame);
    let mut out = BytesMut::with_capacity(first_line.len() + json.len() + 9);
    out.put_slice(first_line);
    out.put_slice(b"\ndata: ");
    out.put_slice(&json);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// The SSE event for a message frame (`id: N`). Built once per delivery per
/// shard from the frame's JSON, whatever the number of SSE subscribers.
pub fn sse_event(seq: u64, frame: &Bytes) -> Bytes {
    let mut id = BytesMut::with_capacity(24);
    id.put_slice(b"id: ");
    put_u64(&mut id, seq);
    sse(&id, frame)
}

/// The SSE form of [`gap`].
pub fn sse_gap(topic: &str, since: u64, first_seq: u64) -> Bytes {
    sse(b"event: gap", &gap(topic, since, first_seq, &None))
}

/// The SSE form of [`subscribed`] (`event: subscribed`): carries the
/// epoch before the replay, as on `/ws`. `EventSource.onmessage` does not
/// see named events, so clients that ignore it are unaffected.
pub fn sse_subscribed(topic: &str, epoch: &str) -> Bytes {
    sse(b"event: subscribed", &subscribed(topic, epoch, &None))
}

/// The SSE form of [`skipped`].
pub fn sse_skipped(topic: &str, from: u64, to: u64) -> Bytes {
    sse(b"event: skipped", &skipped(topic, from, to))
}

/// The SSE form of [`reset`].
pub fn sse_reset(topic: &str, epoch: &str, last_seq: u64) -> Bytes {
    sse(b"event: reset", &reset(topic, epoch, last_seq))
}

/// An SSE comment line: keeps proxies and the browser from timing out.
pub const SSE_HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// A long-poll response body: a JSON array of message objects (and a `gap`
/// object first when some were no longer retained), with as many of
/// `frames` as fit in `max_bytes` (at least one). A poller that fell far
/// behind would otherwise get the whole history in one answer, built in
/// memory per request; capped, it asks again with the last seq it got and
/// the rest comes in the next answers.
pub fn poll_body(gap_notice: Option<Bytes>, frames: &[Bytes], max_bytes: usize) -> Bytes {
    let mut size = 0;
    let fit = frames.iter().map(message_json).take_while(|m| {
        size += m.len() + 1;
        size <= max_bytes || size == m.len() + 1
    });
    let parts: Vec<Bytes> = gap_notice
        .as_ref()
        .map(message_json)
        .into_iter()
        .chain(fit)
        .collect();
    let mut out = BytesMut::with_capacity(2 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    out.put_u8(b'[');
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(p);
    }
    out.put_u8(b']');
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Decodes a server frame and parses its JSON.
    fn json(frame: &Bytes) -> Value {
        let (h, n) = FrameHeader::decode(frame).unwrap().unwrap();
        assert_eq!(h.opcode, OpCode::Text);
        assert!(h.fin && h.mask.is_none());
        assert_eq!(h.payload_len as usize, frame.len() - n);
        serde_json::from_slice(&frame[n..]).unwrap()
    }

    /// An answer takes messages in seq order while they fit, and always
    /// at least one, however large.
    #[test]
    fn poll_answers_are_capped_but_never_empty() {
        let frames: Vec<Bytes> = (1..=10).map(|s| message("t", s, b"\"abcdefgh\"")).collect();
        let one = message_json(&frames[0]).len() + 1;
        let seqs = |body: Bytes| -> Vec<u64> {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            v.as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(seqs(poll_body(None, &frames, 3 * one)), [1, 2, 3]);
        assert_eq!(seqs(poll_body(None, &frames, 3 * one - 1)), [1, 2]);
        assert_eq!(seqs(poll_body(None, &frames, 1)), [1]);
        assert_eq!(seqs(poll_body(None, &frames, usize::MAX)).len(), 10);
    }

    #[test]
    fn message_keeps_data_bytes_exactly() {
        let data = br#"{"price": 187.310,  "v":[1, 2]}"#;
        let f = message("ticker.AAPL", 42, data);
        let v = json(&f);
        assert_eq!(v["op"], "message");
        assert_eq!(v["topic"], "ticker.AAPL");
        assert_eq!(v["seq"], 42);
        let text = std::str::from_utf8(&message_json(&f)).unwrap().to_string();
        assert!(text.ends_with(&format!(
            "\"data\":{}}}",
            std::str::from_utf8(data).unwrap()
        )));
    }

    #[test]
    fn header_sizes_at_the_boundaries() {
        for len in [0usize, 60, 100, 200, 70_000] {
            let data = format!("\"{}\"", "x".repeat(len));
            let f = message("t", 1, data.as_bytes());
            assert_eq!(json(&f)["data"].as_str().unwrap().len(), len);
        }
    }

    #[test]
    fn replies_echo_ids_raw() {
        let id = Some(Id(Bytes::from_static(b"\"abc\"")));
        assert_eq!(json(&subscribed("a.b", "e1", &id))["id"], "abc");
        assert_eq!(json(&subscribed("a.b", "e1", &id))["epoch"], "e1");
        let n = Some(Id(Bytes::from_static(b"7")));
        assert_eq!(json(&unsubscribed("a.b", &n))["id"], 7);
        assert!(json(&subscribed("a.b", "e1", &None)).get("id").is_none());
        let p = json(&published("t", 9, &n));
        assert_eq!(
            (p["op"].as_str(), p["seq"].as_u64()),
            (Some("published"), Some(9))
        );
        let g = json(&gap("t", 3, 10, &None));
        assert_eq!(
            (g["since"].as_u64(), g["first_seq"].as_u64()),
            (Some(3), Some(10))
        );
        let s = json(&skipped("t", 4, 9));
        assert_eq!(s["count"], 6);
    }

    #[test]
    fn error_messages_are_escaped() {
        let e = json(&error(ErrorCode::BadTopic, "bad \"topic\"\n\u{1}", &None));
        assert_eq!(e["code"], "bad_topic");
        assert_eq!(e["message"], "bad \"topic\"\n\u{1}");
    }

    #[test]
    fn sse_and_poll_forms() {
        let f = message("t.x", 7, br#"{"a":1}"#);
        assert_eq!(
            &sse_event(7, &f)[..],
            &b"id: 7\ndata: {\"op\":\"message\",\"topic\":\"t.x\",\"seq\":7,\"data\":{\"a\":1}}\n\n"[..]
        );
        let g = sse_gap("t.x", 1, 5);
        assert!(g.starts_with(b"event: gap\ndata: {\"op\":\"gap\""));
        assert!(sse_skipped("t.x", 2, 3).starts_with(b"event: skipped\n"));
        assert_eq!(
            &sse_subscribed("t.x", "00ff")[..],
            &b"event: subscribed\ndata: {\"op\":\"subscribed\",\"topic\":\"t.x\",\"epoch\":\"00ff\"}\n\n"[..]
        );
        assert_eq!(
            &sse_reset("t.x", "00ff", 3)[..],
            &b"event: reset\ndata: {\"op\":\"reset\",\"topic\":\"t.x\",\"epoch\":\"00ff\",\"last_seq\":3}\n\n"[..]
        );
        let body = poll_body(None, &[f.clone(), message("t.x", 8, b"2")], 1 << 20);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0]["seq"], 7);
        assert_eq!(v[1]["data"], 2);
        assert_eq!(&poll_body(None, &[], 1 << 20)[..], b"[]");
        let with_gap = poll_body(Some(gap("t.x", 0, 7, &None)), &[f], 1 << 20);
        let v: serde_json::Value = serde_json::from_slice(&with_gap).unwrap();
        assert_eq!(
            (v[0]["op"].as_str(), v[1]["op"].as_str()),
            (Some("gap"), Some("message"))
        );
    }
}
