//! Server-Sent Events: one `GET /sse/{topic}?since=0` whose response never
//! ends; each event's `data` (the same JSON object `/ws` sends) is handed to
//! the scenario. Comment lines (the broker's heartbeat) are skipped but
//! their bytes are counted: they are part of what SSE costs on the wire.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use super::http::{self, parse_head};
use super::stream::Stream;
use super::{ConnectOpts, Endpoint, Result, SubConn, Wire};

/// One event is refused past this size (a message is at most the broker's
/// `--max-message-size`, 16 MiB by default, plus the envelope).
const MAX_EVENT: usize = 32 * 1024 * 1024;

pub struct SseClient {
    io: Stream,
    authority: String,
    queue: VecDeque<Bytes>,
    /// The `id:` of the last event (the seq a reconnect would resume from).
    pub last_id: Option<u64>,
}

impl SseClient {
    pub async fn connect(ep: &Endpoint, opts: &ConnectOpts) -> Result<SseClient> {
        Ok(SseClient {
            io: http::connect(ep, opts).await?,
            authority: ep.authority.clone(),
            queue: VecDeque::new(),
            last_id: None,
        })
    }

    /// Moves every complete event in the read buffer to the queue.
    fn take_events(&mut self) -> Result<()> {
        while let Some(end) = find_blank_line(&self.io.rbuf) {
            let block = self.io.rbuf.split_to(end.0).freeze();
            self.io.rbuf.advance(end.1);
            let ev = parse_event(&block);
            if let Some(id) = ev.id {
                self.last_id = Some(id);
            }
            if let Some(data) = ev.data {
                self.queue.push_back(data);
            }
        }
        if self.io.rbuf.len() > MAX_EVENT {
            return Err(format!("an SSE event over {MAX_EVENT} bytes"));
        }
        Ok(())
    }
}

/// Where the first event ends: (length of the event's lines, length of the
/// terminator after them). An event ends at an empty line: `\n\n` is what
/// the broker sends, and `\n\r\n` (after a `\r\n` line) is accepted as the
/// SSE grammar allows; a `\r` left at the end of the lines is stripped by
/// [`parse_event`]. One pass over the buffer, newline to newline.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(off) = buf[from..].iter().position(|&b| b == b'\n') {
        let i = from + off;
        match buf.get(i + 1..i + 3) {
            Some([b'\n', _]) => return Some((i, 2)),
            Some([b'\r', b'\n']) => return Some((i, 3)),
            None if buf.get(i + 1) == Some(&b'\n') => return Some((i, 2)),
            _ => from = i + 1,
        }
    }
    None
}

/// One parsed event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: Option<String>,
    /// `data:` lines joined with `\n`; `None` for a comment-only block.
    pub data: Option<Bytes>,
}

/// Parses one event block (its lines, without the blank line).
pub fn parse_event(block: &Bytes) -> SseEvent {
    let mut ev = SseEvent::default();
    let mut data: Option<BytesMut> = None;
    let mut single: Option<Bytes> = None;
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => match (&mut data, &single) {
                (None, None) => single = Some(block.slice_ref(value)),
                (None, Some(first)) => {
                    let mut joined = BytesMut::from(&first[..]);
                    joined.extend_from_slice(b"\n");
                    joined.extend_from_slice(value);
                    data = Some(joined);
                }
                (Some(d), _) => {
                    d.extend_from_slice(b"\n");
                    d.extend_from_slice(value);
                }
            },
            b"id" => ev.id = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()),
            b"event" => ev.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
    }
    ev.data = data.map(BytesMut::freeze).or(single);
    ev
}

impl SubConn for SseClient {
    /// Opens the stream from `since=0`: the broker replays what it retains
    /// and then streams live, so nothing published after this returns is
    /// missed. The confirmation is a `subscribed` object made here once the
    /// `200 text/event-stream` head has arrived.
    async fn subscribe(&mut self, topic: &str) -> Result<()> {
        let path = format!("/sse/{topic}?since=0");
        http::get(
            self.io.wbuf(),
            &self.authority,
            &path,
            "Accept: text/event-stream\r\n",
        );
        self.io.wire.requests += 1;
        self.io.flush().await?;
        let head = loop {
            if let Some(h) = parse_head(&self.io.rbuf)? {
                break h;
            }
            self.io.fill().await?;
        };
        let is_stream = head
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if head.status != 200 || !is_stream {
            let want = head.len + head.content_length.unwrap_or(0);
            while self.io.rbuf.len() < want {
                if self.io.fill().await.is_err() {
                    break;
                }
            }
            let body = &self.io.rbuf[head.len.min(self.io.rbuf.len())..];
            return Err(format!(
                "GET {path}: HTTP {} {}: {}",
                head.status,
                head.content_type.as_deref().unwrap_or(""),
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            ));
        }
        self.io.rbuf.advance(head.len);
        let subscribed = serde_json::json!({"op": "subscribed", "topic": topic}).to_string();
        self.queue.push_back(Bytes::from(subscribed));
        self.take_events()
    }

    async fn recv(&mut self) -> Result<Bytes> {
        loop {
            if let Some(b) = self.queue.pop_front() {
                return Ok(b);
            }
            self.io.fill().await?;
            self.take_events()?;
        }
    }

    fn try_recv(&mut self) -> Result<Option<Bytes>> {
        loop {
            if let Some(b) = self.queue.pop_front() {
                return Ok(Some(b));
            }
            if !self.io.try_fill()? {
                return Ok(None);
            }
            self.take_events()?;
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

    fn events(stream: &[u8]) -> Vec<SseEvent> {
        let mut buf = BytesMut::from(stream);
        let mut out = Vec::new();
        while let Some((n, t)) = find_blank_line(&buf) {
            let block = buf.split_to(n).freeze();
            buf.advance(t);
            out.push(parse_event(&block));
        }
        out
    }

    #[test]
    fn the_brokers_events_heartbeats_and_named_notices() {
        let evs = events(
            b"id: 41\ndata: {\"op\":\"message\",\"seq\":41}\n\n: heartbeat\n\n\
              event: gap\ndata: {\"op\":\"gap\"}\n\nid: 42\ndata: {\"seq\"",
        );
        assert_eq!(evs.len(), 3, "the incomplete last event waits");
        assert_eq!(evs[0].id, Some(41));
        assert_eq!(
            evs[0].data.as_deref(),
            Some(&b"{\"op\":\"message\",\"seq\":41}"[..])
        );
        assert_eq!(evs[1], SseEvent::default(), "a comment carries nothing");
        assert_eq!(evs[2].event.as_deref(), Some("gap"));
        assert_eq!(evs[2].data.as_deref(), Some(&b"{\"op\":\"gap\"}"[..]));
    }

    #[test]
    fn multi_line_data_crlf_and_fields_without_space() {
        let evs = events(b"data:a\r\ndata: b\r\nid:7\r\n\r\ndata\n\n");
        assert_eq!(evs[0].data.as_deref(), Some(&b"a\nb"[..]));
        assert_eq!(evs[0].id, Some(7));
        assert_eq!(evs[1].data.as_deref(), Some(&b""[..]));
    }
}
