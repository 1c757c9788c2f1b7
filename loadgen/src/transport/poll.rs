//! Long-polling and short polling: `GET /poll/{topic}?since=N&timeout_ms=T`
//! in a loop on one keep-alive connection, `since` = the highest seq seen,
//! the answer's array handed to the scenario one element at a time.
//!
//! - Long-polling (`T` = the hold time): the broker answers as soon as
//!   there is something newer than `since`, and the next request goes out
//!   at once. Every answer costs a request and a response head; a burst
//!   that arrives while the next request is on its way is batched into one
//!   answer.
//! - Short polling (`T` = 0) asks every `interval`, whatever happened:
//!   latency is about half the interval, and most answers are an empty
//!   `[]` at low rates.
//!
//! Both rely on the broker's retained history: a poller that falls further
//! behind than the history gets a `gap` object and loses messages, which
//! the scenario counts.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::http::{self, take_response, Response};
use super::stream::Stream;
use super::{ConnectOpts, Endpoint, Result, SubConn, Wire};
use crate::proto::{self, Incoming};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Held by the broker up to this long.
    Long(Duration),
    /// One request per interval, answered at once.
    Short(Duration),
}

pub struct PollClient {
    io: Stream,
    authority: String,
    token: Option<std::sync::Arc<str>>,
    mode: Mode,
    topic: String,
    since: u64,
    /// Elements of answers not yet handed out.
    queue: VecDeque<Bytes>,
    /// A request is out and its answer not yet read.
    in_flight: bool,
    /// Short polling: when the next request may go out.
    next_at: Option<tokio::time::Instant>,
}

impl PollClient {
    pub async fn connect(ep: &Endpoint, opts: &ConnectOpts, mode: Mode) -> Result<PollClient> {
        Ok(PollClient {
            io: http::connect(ep, opts).await?,
            authority: ep.authority.clone(),
            token: opts.token.clone(),
            mode,
            topic: String::new(),
            since: 0,
            queue: VecDeque::new(),
            in_flight: false,
            next_at: None,
        })
    }

    fn start_request(&mut self, hold: Duration) {
        let path = format!(
            "/poll/{}?since={}&timeout_ms={}",
            self.topic,
            self.since,
            hold.as_millis()
        );
        let path = super::with_token(&path, self.token.as_deref());
        http::get(self.io.wbuf(), &self.authority, &path, "");
        self.io.wire.requests += 1;
        self.in_flight = true;
        if let Mode::Short(every) = self.mode {
            self.next_at = Some(tokio::time::Instant::now() + every);
        }
    }

    /// Waits for the answer to the request in flight and queues its
    /// elements. Cancel-safe (all state is in `self`).
    async fn finish_request(&mut self) -> Result<()> {
        self.io.flush().await?;
        loop {
            if let Some(r) = take_response(&mut self.io.rbuf)? {
                return self.on_response(r);
            }
            self.io.fill().await?;
        }
    }

    fn on_response(&mut self, r: Response) -> Result<()> {
        self.in_flight = false;
        if r.status != 200 {
            return Err(format!(
                "GET /poll/{}: HTTP {}: {}",
                self.topic,
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            ));
        }
        let (elements, since) = split_answer(&r.body, self.since)?;
        self.since = since;
        self.queue.extend(elements);
        if r.close {
            return Err(format!(
                "GET /poll/{}: the broker closed the connection",
                self.topic
            ));
        }
        Ok(())
    }
}

/// The elements of a poll answer (zero-copy slices of `body`), and the
/// `since` to ask with next: the highest message seq in it, or past a
/// `gap` notice's hole.
pub fn split_answer(body: &Bytes, since: u64) -> Result<(Vec<Bytes>, u64)> {
    let raw: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
        format!(
            "poll answer is not a JSON array ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })?;
    let mut next = since;
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let el = body.slice_ref(r.get().as_bytes());
        match proto::parse(&el)? {
            Incoming::Message { seq, .. } => next = next.max(seq),
            Incoming::Gap { first_seq, .. } => next = next.max(first_seq.saturating_sub(1)),
            _ => {}
        }
        out.push(el);
    }
    Ok((out, next))
}

impl SubConn for PollClient {
    /// One immediate poll (`timeout_ms=0`) from `since=0`: proves the
    /// topic is accepted, and from then on every message is retained for
    /// the next poll, so the subscription is "live". The confirmation is a
    /// `subscribed` object made here, as `/ws` would send.
    async fn subscribe(&mut self, topic: &str) -> Result<()> {
        self.topic = topic.to_string();
        self.since = 0;
        self.start_request(Duration::ZERO);
        self.finish_request().await?;
        let subscribed = serde_json::json!({"op": "subscribed", "topic": topic}).to_string();
        self.queue.push_front(Bytes::from(subscribed));
        Ok(())
    }

    async fn recv(&mut self) -> Result<Bytes> {
        loop {
            if let Some(b) = self.queue.pop_front() {
                return Ok(b);
            }
            if !self.in_flight {
                let hold = match self.mode {
                    Mode::Long(hold) => hold,
                    Mode::Short(_) => {
                        if let Some(at) = self.next_at {
                            tokio::time::sleep_until(at).await;
                        }
                        Duration::ZERO
                    }
                };
                self.start_request(hold);
            }
            self.finish_request().await?;
        }
    }

    fn try_recv(&mut self) -> Result<Option<Bytes>> {
        loop {
            if let Some(b) = self.queue.pop_front() {
                return Ok(Some(b));
            }
            if !self.in_flight {
                return Ok(None);
            }
            if let Some(r) = take_response(&mut self.io.rbuf)? {
                self.on_response(r)?;
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
    fn answers_split_into_zero_copy_elements_and_advance_since() {
        let body = Bytes::from_static(
            br#"[{"op":"message","topic":"t","seq":4,"data":{"a":[1,2]}},{"op":"message","topic":"t","seq":5,"data":"x"}]"#,
        );
        let (els, since) = split_answer(&body, 3).unwrap();
        assert_eq!(since, 5);
        assert_eq!(els.len(), 2);
        assert_eq!(
            &els[0][..],
            br#"{"op":"message","topic":"t","seq":4,"data":{"a":[1,2]}}"#
        );
        assert_eq!(
            els[1].as_ptr(),
            body[body.len() - 1 - els[1].len()..].as_ptr()
        );
    }

    #[test]
    fn an_empty_answer_keeps_since_and_a_gap_moves_it_past_the_hole() {
        let (els, since) = split_answer(&Bytes::from_static(b"[]"), 7).unwrap();
        assert!(els.is_empty());
        assert_eq!(since, 7);
        let body = Bytes::from_static(br#"[{"op":"gap","topic":"t","since":2,"first_seq":90}]"#);
        assert_eq!(split_answer(&body, 2).unwrap().1, 89);
    }

    #[test]
    fn a_non_array_answer_is_an_error_quoting_it() {
        let e = split_answer(&Bytes::from_static(b"{\"seq\":1}"), 0).unwrap_err();
        assert!(e.contains("not a JSON array") && e.contains("seq"), "{e}");
    }
}
