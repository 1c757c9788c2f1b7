//! Server-Sent Events: one `GET /sse/{topic}?since=0` whose response never
//! ends; each event's `data` (the same JSON object `/ws` sends, `subscribed`
//! first) is handed to the scenario. Comment lines (the broker's heartbeat)
//! are skipped but their bytes are counted: they are part of what SSE costs
//! on the wire.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use ringcast_proto::http::find_head_end;

use super::http::{self, parse_head};
use super::stream::Stream;
use super::{ConnectOpts, Endpoint, Result, SubConn, Wire};

/// One event is refused past this size (a message is at most the broker's
/// `--max-message-size`, 16 MiB by default, plus the envelope).
const MAX_EVENT: usize = 32 * 1024 * 1024;

pub struct SseClient {
    io: Stream,
    authority: String,
    token: Option<std::sync::Arc<str>>,
    queue: VecDeque<Bytes>,
    /// How far the read buffer has been searched for an event's end, so a
    /// large event arriving in many reads is not rescanned from its start.
    scanned: usize,
}

impl SseClient {
    pub async fn connect(ep: &Endpoint, opts: &ConnectOpts) -> Result<SseClient> {
        Ok(SseClient {
            io: http::connect(ep, opts).await?,
            authority: ep.authority.clone(),
            token: opts.token.clone(),
            queue: VecDeque::new(),
            scanned: 0,
        })
    }

    /// Moves every complete event in the read buffer to the queue.
    fn take_events(&mut self) -> Result<()> {
        while let Some(end) = find_head_end(&self.io.rbuf, self.scanned) {
            let block = self.io.rbuf.split_to(end).freeze();
            self.scanned = 0;
            if let Some(data) = event_data(&block) {
                self.queue.push_back(data);
            }
        }
        // A blank line may start in the last two bytes.
        self.scanned = self.io.rbuf.len().saturating_sub(2);
        if self.io.rbuf.len() > MAX_EVENT {
            return Err(format!("an SSE event over {MAX_EVENT} bytes"));
        }
        Ok(())
    }
}

/// The `data` of one event (its lines up to and including the blank
/// line): `data:` lines joined with `\n`, `None` for a comment-only block.
/// `id:` and `event:` are not needed: the data is the broker's JSON object,
/// which carries its seq and its `op`.
pub fn event_data(block: &Bytes) -> Option<Bytes> {
    let mut joined: Option<BytesMut> = None;
    let mut single: Option<Bytes> = None;
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let value = match line.strip_prefix(b"data") {
            Some([]) => &[][..],
            Some([b':', v @ ..]) => v.strip_prefix(b" ").unwrap_or(v),
            _ => continue,
        };
        match (&mut joined, &single) {
            (None, None) => single = Some(block.slice_ref(value)),
            (None, Some(first)) => {
                let mut d = BytesMut::from(&first[..]);
                d.extend_from_slice(b"\n");
                d.extend_from_slice(value);
                joined = Some(d);
            }
            (Some(d), _) => {
                d.extend_from_slice(b"\n");
                d.extend_from_slice(value);
            }
        }
    }
    joined.map(BytesMut::freeze).or(single)
}

impl SubConn for SseClient {
    /// Opens the stream from `since=0`: the broker replays what it retains
    /// and then streams live, so nothing published after this returns is
    /// missed. The confirmation is the broker's own `subscribed` event.
    async fn subscribe(&mut self, topic: &str) -> Result<()> {
        let path = format!("/sse/{topic}?since=0");
        http::get(
            self.io.wbuf(),
            &self.authority,
            &super::with_token(&path, self.token.as_deref()),
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

    fn events(stream: &[u8]) -> Vec<Option<Bytes>> {
        let mut buf = BytesMut::from(stream);
        let mut out = Vec::new();
        while let Some(end) = find_head_end(&buf, 0) {
            out.push(event_data(&buf.split_to(end).freeze()));
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
        assert_eq!(
            evs[0].as_deref(),
            Some(&b"{\"op\":\"message\",\"seq\":41}"[..])
        );
        assert_eq!(evs[1], None, "a comment carries nothing");
        assert_eq!(evs[2].as_deref(), Some(&b"{\"op\":\"gap\"}"[..]));
    }

    #[test]
    fn multi_line_data_crlf_and_fields_without_space() {
        let evs = events(b"data:a\r\ndata: b\r\nid:7\r\n\r\ndata\n\ndatum: x\n\n");
        assert_eq!(evs[0].as_deref(), Some(&b"a\nb"[..]));
        assert_eq!(evs[1].as_deref(), Some(&b""[..]));
        assert_eq!(evs[2], None, "`datum` is not `data`");
    }

    /// An event that arrives in pieces is found once complete, and the
    /// search resumes where it stopped.
    #[test]
    fn events_split_across_reads() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n";
        for cut in 1..stream.len() {
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut scanned = 0;
            let mut got = Vec::new();
            for piece in [&stream[cut..], &b""[..]] {
                while let Some(end) = find_head_end(&buf, scanned) {
                    got.push(event_data(&buf.split_to(end).freeze()).unwrap());
                    scanned = 0;
                }
                scanned = buf.len().saturating_sub(2);
                buf.extend_from_slice(piece);
            }
            assert_eq!(got, [&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]], "cut at {cut}");
        }
    }
}
