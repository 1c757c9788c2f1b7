//! A connection's outbound queue.
//!
//! Everything a connection sends (HTTP responses, protocol control frames,
//! echoed or published messages) goes through its [`Outbox`]: a queue of
//! `Bytes` bounded in bytes, drained by the connection's single writer. A
//! published frame is encoded once and the same `Bytes` is pushed to every
//! subscriber's outbox: a reference-count increment, not a copy.
//!
//! The queue knows nothing of sockets or tasks. It says when its writer
//! must be woken ([`Outbox::take_wake`]: the queue went from empty to
//! non-empty, or the state changed), and producers learn from the result
//! of a push whether the consumer keeps up; the caller applies its policy.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

/// Control-frame bytes that may be queued while the writer has not caught
/// up. Pongs and closes must not be dropped behind a large message, but a
/// peer that sends pings and never reads must not grow the queue forever.
pub const CONTROL_SLACK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    /// Write what is queued, then send FIN (half-close) and stop.
    Finishing,
    /// Stop now; queued data is dropped (the peer is gone).
    Closed,
}

/// The newest message of a topic that did not fit (conflate policy).
#[derive(Debug)]
struct Held {
    topic: Arc<str>,
    /// The first seq that went here; if `seq` is later, the messages from
    /// `first` to `seq - 1` were skipped.
    first: u64,
    seq: u64,
    frame: Bytes,
    /// Seqs after `seq` that never reached this connection (dropped
    /// between shards), reported after the frame; a newer message that
    /// replaces the frame covers them with its own `skipped` range.
    after: Option<(u64, u64)>,
}

/// What became of a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Held back as its topic's newest message (conflate policy).
    Held,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue is over its byte bound.
    Full,
    /// The connection is closing or closed.
    Closed,
}

/// A FIFO that holds no heap while it has at most one element: the front
/// element lives inline, and the ring behind it is allocated only once a
/// second element waits and released as soon as it drains.
///
/// Why: every connection has an outbox, and most of them are idle most of
/// the time (issue 12's budget is per idle connection). A `VecDeque`
/// keeps the capacity its busiest moment gave it (the upgrade response
/// left 128 bytes behind on every connection), and a subscriber that gets
/// one frame per write, the common fan-out case, should not allocate per
/// write either: with the front inline it does neither.
#[derive(Debug)]
struct Fifo<T> {
    front: Option<T>,
    rest: VecDeque<T>,
}

impl<T> Fifo<T> {
    const fn new() -> Self {
        Fifo {
            front: None,
            rest: VecDeque::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.front.is_none()
    }

    fn push_back(&mut self, v: T) {
        if self.front.is_none() {
            self.front = Some(v);
        } else {
            self.rest.push_back(v);
        }
    }

    /// Lets the ring's allocation go once nothing is behind the front.
    fn release(&mut self) {
        if self.rest.is_empty() && self.rest.capacity() != 0 {
            self.rest = VecDeque::new();
        }
    }

    fn pop_front(&mut self) -> Option<T> {
        let v = self.front.take()?;
        self.front = self.rest.pop_front();
        self.release();
        Some(v)
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.front.iter().chain(&self.rest)
    }

    fn clear(&mut self) {
        self.front = None;
        self.rest = VecDeque::new();
    }

    /// Whether anything is allocated (for tests of the idle footprint).
    #[cfg(test)]
    fn holds_heap(&self) -> bool {
        self.rest.capacity() != 0
    }
}

/// What an outbox accounts only while a reply, a replay or a slow
/// consumer's conflation is under way. It is boxed, and dropped as soon as
/// nothing of it is left (`Outbox::tidy`): every connection has an outbox,
/// and an idle one is then its queue and four counters (112 bytes instead
/// of 184; issue 12's per-connection budget, docs/benchmarks.md).
#[derive(Debug, Default)]
struct Extra {
    /// Control bytes queued and not yet written, and where each run of
    /// them ends in the stream (`(end, len)`, adjacent runs merged).
    /// Counted by position, not since the queue was last empty: a client
    /// that pipelines commands while it reads keeps the queue from ever
    /// emptying, and must not be taken for one that never reads.
    control: usize,
    control_runs: VecDeque<(u64, usize)>,
    /// Replay bytes of the current burst, queued past the bound; they end
    /// at byte position `replay_end` of the stream. Tracked by position,
    /// not by count: live frames queued ahead of a replay are written
    /// first and must not use up its allowance.
    replay: usize,
    replay_end: u64,
    /// Conflated messages waiting for room, one per topic.
    held: Vec<Held>,
}

impl Extra {
    /// Replay bytes queued and not yet written, once `written` bytes are.
    fn replay_unwritten(&self, written: u64) -> usize {
        let left = self.replay_end.saturating_sub(written);
        (self.replay as u64).min(left) as usize
    }

    /// Nothing left to account: no control byte unwritten, no replay
    /// unwritten (which stays so until the next replay), nothing held.
    fn is_spent(&self, written: u64) -> bool {
        self.control == 0
            && self.control_runs.is_empty()
            && self.held.is_empty()
            && self.replay_unwritten(written) == 0
    }
}

#[derive(Debug)]
pub struct Outbox {
    queue: Fifo<Bytes>,
    queued: usize,
    limit: usize,
    /// Stream positions: bytes ever queued (minus discarded), and written.
    enqueued: u64,
    written: u64,
    /// Control, replay and conflation accounting; `None` while there is
    /// none.
    extra: Option<Box<Extra>>,
    /// The connection speaks Server-Sent Events: notices are SSE events.
    sse: bool,
    state: State,
    /// The writer must be woken: the queue went non-empty or the state
    /// changed since the last [`Outbox::take_wake`].
    wake: bool,
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Outbox {
            queue: Fifo::new(),
            queued: 0,
            limit,
            enqueued: 0,
            written: 0,
            extra: None,
            sse: false,
            state: State::Open,
            wake: false,
        }
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Drops the accounting once it is spent.
    fn tidy(&mut self) {
        if self
            .extra
            .as_ref()
            .is_some_and(|e| e.is_spent(self.written))
        {
            self.extra = None;
        }
    }

    /// Control bytes queued and not yet written.
    fn control(&self) -> usize {
        self.extra.as_ref().map_or(0, |e| e.control)
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// The byte bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the writer must be woken (and forget it: one wake-up per
    /// transition, not per push).
    pub fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake)
    }

    /// Replay bytes queued and not yet written.
    fn replay_unwritten(&self) -> usize {
        self.extra
            .as_ref()
            .map_or(0, |e| e.replay_unwritten(self.written))
    }

    /// Whether `len` more bytes may be queued: an empty queue takes one
    /// buffer of any size; otherwise the bound plus the replay in flight.
    fn fits(&self, len: usize) -> bool {
        self.queued == 0 || self.queued + len <= self.limit + self.replay_unwritten()
    }

    /// Whether what is queued is within the bound: a reader that queued a
    /// response past it takes no next request until this holds.
    pub fn has_room(&self) -> bool {
        self.state != State::Open || self.queued <= self.limit
    }

    /// Whether the reader may hand over another command: the replies
    /// waiting leave room for its reply. A client that sends commands
    /// faster than it reads their replies is paused here, before the reply
    /// slack runs out. Published messages do not count: a slow consumer's
    /// `unsubscribe` must get through the queue it is drowning in.
    pub fn can_take_command(&self) -> bool {
        self.state != State::Open || self.control() <= CONTROL_SLACK / 2
    }

    fn enqueue(&mut self, buf: Bytes) {
        self.queued += buf.len();
        self.enqueued += buf.len() as u64;
        // The writer waits only on an empty queue: only that transition
        // needs a wake-up, not every delivery.
        if self.queue.is_empty() {
            self.wake = true;
        }
        self.queue.push_back(buf);
    }

    /// Queues without waiting. An empty queue accepts one buffer of any
    /// size, so a single large message is never refused outright.
    pub fn try_push(&mut self, buf: Bytes) -> Result<(), PushError> {
        if self.state != State::Open {
            return Err(PushError::Closed);
        }
        if buf.is_empty() {
            return Ok(());
        }
        if !self.fits(buf.len()) {
            return Err(PushError::Full);
        }
        self.enqueue(buf);
        Ok(())
    }

    /// Queues one frame given as a header and an optional separate
    /// payload, both or neither: nothing queued later (a ping, the close at
    /// shutdown) can land between a header and its payload. A producer
    /// that may wait (the connection's own reader) retries on
    /// [`PushError::Full`] once the writer made room.
    pub fn try_push_frame(&mut self, head: Bytes, payload: Option<Bytes>) -> Result<(), PushError> {
        if self.state != State::Open {
            return Err(PushError::Closed);
        }
        let len = head.len() + payload.as_ref().map_or(0, Bytes::len);
        if !self.fits(len) {
            return Err(PushError::Full);
        }
        self.enqueue(head);
        if let Some(p) = payload {
            self.enqueue(p);
        }
        Ok(())
    }

    /// Queues the response to an HTTP request, whatever its size and
    /// whatever is queued: a response is owed, and dropping it would leave
    /// the client waiting forever. The bound is kept by the reader instead:
    /// it takes no next request until [`Outbox::has_room`], so a client
    /// that pipelines requests without reading gets at most one response
    /// past the bound.
    pub fn push_response(&mut self, buf: Bytes) -> Result<(), PushError> {
        if self.state != State::Open {
            return Err(PushError::Closed);
        }
        if !buf.is_empty() {
            self.enqueue(buf);
        }
        Ok(())
    }

    /// Queues a protocol control frame (pong, close) or a reply to the
    /// client's own command behind whatever is queued, ignoring the byte
    /// bound. Refused once [`CONTROL_SLACK`] control bytes are queued and
    /// unwritten: the peer is not reading at all and the caller should
    /// drop it.
    pub fn push_control(&mut self, buf: Bytes) -> Result<(), PushError> {
        if self.state != State::Open {
            return Err(PushError::Closed);
        }
        if self.control() + buf.len() > CONTROL_SLACK {
            return Err(PushError::Full);
        }
        let (start, len) = (self.enqueued, buf.len());
        self.enqueue(buf);
        let e = self.extra();
        e.control += len;
        match e.control_runs.back_mut() {
            Some(run) if run.0 == start => *run = (start + len as u64, run.1 + len),
            _ => e.control_runs.push_back((start + len as u64, len)),
        }
        Ok(())
    }

    /// Forgets the control runs written up to `written`, or dropped past
    /// `enqueued`.
    fn settle_control(&mut self) {
        let (written, enqueued) = (self.written, self.enqueued);
        let Some(e) = self.extra.as_deref_mut() else {
            return;
        };
        while let Some(run) = e.control_runs.front_mut() {
            let (end, len) = *run;
            if end > written {
                // Partly written: what is left of the run is what counts.
                let left = ((end - written) as usize).min(len);
                e.control -= len - left;
                run.1 = left;
                break;
            }
            e.control_runs.pop_front();
            e.control -= len;
        }
        while let Some(&(end, len)) = e.control_runs.back() {
            if end <= enqueued {
                break;
            }
            e.control_runs.pop_back();
            e.control -= len;
        }
        // Replies are occasional: nothing is kept between them.
        self.tidy();
    }

    /// Queues a replayed (retained) message past the bound, up to `allowance`
    /// bytes in flight: a resume is a one-off burst bounded by the topic's
    /// history, and live messages behind it must not count it against the
    /// client. Past the allowance it is an ordinary message.
    pub fn push_replay(&mut self, frame: Bytes, allowance: usize) -> Result<(), PushError> {
        if self.state != State::Open {
            return Err(PushError::Closed);
        }
        let unwritten = self.replay_unwritten();
        if unwritten + frame.len() > allowance {
            return self.try_push(frame);
        }
        let replay = unwritten + frame.len();
        self.enqueue(frame);
        let end = self.enqueued;
        let e = self.extra();
        e.replay = replay;
        e.replay_end = end;
        Ok(())
    }

    /// Queues a published message. With `conflate`, a message that does
    /// not fit (or whose topic already has one waiting) replaces the
    /// topic's waiting message instead of being refused; when room returns
    /// the client gets a `skipped` notice for what it missed, then the
    /// newest message. Memory stays bounded by one frame per topic.
    pub fn push_message(
        &mut self,
        topic: &Arc<str>,
        seq: u64,
        frame: Bytes,
        conflate: bool,
    ) -> Result<Pushed, PushError> {
        if conflate {
            let held = self
                .extra
                .as_deref_mut()
                .map_or(&mut [][..], |e| &mut e.held);
            if let Some(h) = held.iter_mut().find(|h| *h.topic == **topic) {
                h.seq = seq;
                h.frame = frame;
                h.after = None;
                return Ok(Pushed::Held);
            }
            if self.state != State::Open {
                return Err(PushError::Closed);
            }
            if self.fits(frame.len()) {
                self.enqueue(frame);
                return Ok(Pushed::Queued);
            }
            self.extra().held.push(Held {
                topic: topic.clone(),
                first: seq,
                seq,
                frame,
                after: None,
            });
            return Ok(Pushed::Held);
        }
        self.try_push(frame).map(|()| Pushed::Queued)
    }

    /// Drops everything queued and not yet taken by the writer (whole
    /// frames only: the writer's batch in flight is untouched). For a slow
    /// consumer about to be closed: its close frame goes out now instead of
    /// behind a queue it cannot read in time, and it resumes from the last
    /// seq it did see.
    pub fn discard_queued(&mut self) {
        let dropped: usize = self.queue.iter().map(Bytes::len).sum();
        self.queue.clear();
        self.queued = self.queued.saturating_sub(dropped);
        // Dropped bytes will never be written: the stream ends before them.
        self.enqueued -= dropped as u64;
        if let Some(e) = self.extra.as_deref_mut() {
            e.replay_end = e.replay_end.min(self.enqueued);
            e.held = Vec::new();
        }
        self.settle_control();
    }

    /// Encode conflation notices as Server-Sent Events.
    pub fn set_sse(&mut self) {
        self.sse = true;
    }

    /// Forgets a topic's conflated message (the client unsubscribed).
    pub fn drop_held(&mut self, topic: &str) {
        if let Some(e) = self.extra.as_deref_mut() {
            e.held.retain(|h| *h.topic != *topic);
        }
        // Conflation is a slow consumer's state: over, it keeps nothing.
        self.tidy();
    }

    /// Topics with a conflated message waiting.
    pub fn held_topics(&self) -> usize {
        self.extra.as_ref().map_or(0, |e| e.held.len())
    }

    /// Seqs `from..=to` of `topic` will never arrive (dropped between
    /// shards). If the topic has a conflated message waiting, the notice
    /// must not overtake it: it is recorded behind that message (and
    /// returns true). Otherwise (false) the caller queues the notice now.
    pub fn hold_skip(&mut self, topic: &str, from: u64, to: u64) -> bool {
        let held = self
            .extra
            .as_deref_mut()
            .map_or(&mut [][..], |e| &mut e.held);
        let Some(h) = held.iter_mut().find(|h| *h.topic == *topic) else {
            return false;
        };
        h.after = Some(match h.after {
            Some((first, _)) => (first, to),
            None => (from, to),
        });
        true
    }

    /// Moves conflated messages into the queue once it has drained to half
    /// its bound, each after its `skipped` notice.
    fn release_held(&mut self) {
        if self.held_topics() == 0 || self.queued > self.limit / 2 {
            return;
        }
        for h in std::mem::take(&mut self.extra().held) {
            if h.seq > h.first {
                let notice = self.skipped(&h.topic, h.first, h.seq - 1);
                self.enqueue(notice);
            }
            self.enqueue(h.frame);
            if let Some((from, to)) = h.after {
                let notice = self.skipped(&h.topic, from, to);
                self.enqueue(notice);
            }
        }
        self.tidy();
    }

    fn skipped(&self, topic: &str, from: u64, to: u64) -> Bytes {
        if self.sse {
            crate::wire::reply::sse_skipped(topic, from, to)
        } else {
            crate::wire::reply::skipped(topic, from, to)
        }
    }

    /// Write everything queued, then half-close.
    pub fn finish(&mut self) {
        if self.state == State::Open {
            self.state = State::Finishing;
            self.wake = true;
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Moves up to `max` queued buffers into `out` for one write.
    pub fn take_batch(&mut self, out: &mut Vec<Bytes>, max: usize) {
        for _ in 0..max {
            match self.queue.pop_front() {
                Some(b) => out.push(b),
                None => return,
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The writer finished writing `bytes` of what it took.
    pub fn written(&mut self, bytes: usize) {
        self.queued = self.queued.saturating_sub(bytes);
        self.written += bytes as u64;
        self.settle_control();
        if self.state == State::Open {
            self.release_held();
        }
    }

    /// Stop writing at once.
    pub fn close(&mut self) {
        self.state = State::Closed;
        self.queue.clear();
        self.queued = 0;
        self.extra = None;
        self.wake = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn data_is_bounded_but_one_oversized_buffer_fits_an_empty_queue() {
        let mut o = Outbox::new(100);
        assert_eq!(o.try_push(b(1000)), Ok(()));
        assert_eq!(o.try_push(b(1)), Err(PushError::Full));
        let mut o = Outbox::new(100);
        assert_eq!(o.try_push(b(60)), Ok(()));
        assert_eq!(o.try_push(b(40)), Ok(()));
        assert_eq!(o.try_push(b(1)), Err(PushError::Full));
        assert_eq!(o.queued_bytes(), 100);
    }

    #[test]
    fn control_frames_pass_a_full_queue_up_to_the_slack() {
        let mut o = Outbox::new(100);
        o.try_push(b(10_000)).unwrap();
        assert_eq!(o.try_push(b(10)), Err(PushError::Full));
        assert_eq!(
            o.push_control(b(125)),
            Ok(()),
            "a pong behind a large message"
        );
        let mut pushed = 125;
        while o.push_control(b(125)).is_ok() {
            pushed += 125;
        }
        assert!(pushed <= CONTROL_SLACK && pushed > CONTROL_SLACK - 125);
    }

    fn drain(o: &mut Outbox) -> Vec<Bytes> {
        let mut out = Vec::new();
        loop {
            let mut batch = Vec::new();
            o.take_batch(&mut batch, 64);
            if batch.is_empty() {
                return out;
            }
            o.written(batch.iter().map(Bytes::len).sum());
            out.extend(batch);
        }
    }

    #[test]
    fn conflation_keeps_the_newest_per_topic_and_reports_the_skip() {
        let t: Arc<str> = Arc::from("ticker.A");
        let u: Arc<str> = Arc::from("ticker.B");
        let mut o = Outbox::new(200);
        let frame = |topic: &str, seq| crate::wire::reply::message(topic, seq, &[b'1'; 40]);
        // Two ~90-byte messages fit in 200 bytes; the rest are conflated.
        for seq in 1..=6 {
            o.push_message(&t, seq, frame("ticker.A", seq), true)
                .unwrap();
        }
        o.push_message(&u, 1, frame("ticker.B", 1), true).unwrap();
        assert_eq!(o.held_topics(), 2);
        assert!(o.queued_bytes() <= 200);
        let text: Vec<String> = drain(&mut o)
            .iter()
            .map(|f| String::from_utf8_lossy(&crate::wire::reply::message_json(f)).into_owned())
            .collect();
        let ops: Vec<String> = text
            .iter()
            .map(|j| {
                let v: serde_json::Value = serde_json::from_str(j).unwrap();
                format!(
                    "{}:{}:{}",
                    v["op"].as_str().unwrap(),
                    v["topic"].as_str().unwrap(),
                    v["seq"].as_u64().or(v["from"].as_u64()).unwrap()
                )
            })
            .collect();
        // seqs 1, 2 delivered; 3..=5 skipped (notice from 3); 6 is the newest.
        assert_eq!(
            ops,
            [
                "message:ticker.A:1",
                "message:ticker.A:2",
                "skipped:ticker.A:3",
                "message:ticker.A:6",
                "message:ticker.B:1"
            ]
        );
        assert_eq!(o.held_topics(), 0);
    }

    /// A live frame queued ahead of a replay is written first; that must
    /// not use up the replay's allowance while the replay is still queued.
    #[test]
    fn writing_what_was_ahead_of_a_replay_keeps_its_allowance() {
        let mut o = Outbox::new(100);
        o.try_push(b(80)).unwrap();
        for _ in 0..4 {
            o.push_replay(b(50), 500).unwrap();
        }
        let mut first = Vec::new();
        o.take_batch(&mut first, 1);
        o.written(first[0].len());
        // 200 replay bytes still queued: a live 90 fits in 100 + 200.
        assert_eq!(o.try_push(b(90)), Ok(()));
        assert_eq!(o.try_push(b(20)), Err(PushError::Full));
        // Once the replay is written the plain bound is back.
        drain(&mut o);
        o.try_push(b(60)).unwrap();
        assert_eq!(o.try_push(b(60)), Err(PushError::Full));
    }

    #[test]
    fn a_replay_burst_does_not_count_against_live_messages() {
        let t: Arc<str> = Arc::from("t");
        let mut o = Outbox::new(100);
        for _ in 0..10 {
            o.push_replay(b(50), 500).unwrap();
        }
        assert_eq!(o.queued_bytes(), 500);
        // Live messages still have the normal bound beyond the replay.
        o.push_message(&t, 11, b(50), false).unwrap();
        o.push_message(&t, 12, b(50), false).unwrap();
        assert_eq!(o.push_message(&t, 13, b(50), false), Err(PushError::Full));
        // Past the allowance a replay is an ordinary (refused) message.
        assert_eq!(o.push_replay(b(50), 500), Err(PushError::Full));
        drain(&mut o);
        assert_eq!(o.queued_bytes(), 0);
        o.push_message(&t, 13, b(50), false).unwrap();
    }

    #[test]
    fn without_conflation_a_full_queue_refuses() {
        let t: Arc<str> = Arc::from("t");
        let mut o = Outbox::new(10);
        o.push_message(&t, 1, b(10), false).unwrap();
        assert_eq!(o.push_message(&t, 2, b(10), false), Err(PushError::Full));
    }

    /// A frame's header and payload are queued both or neither, so a
    /// control frame queued while the producer waits for room can precede
    /// the frame but never split it.
    #[test]
    fn a_frame_is_queued_whole() {
        let mut o = Outbox::new(100);
        o.try_push(b(90)).unwrap();
        let head = Bytes::from_static(b"HEAD");
        assert_eq!(
            o.try_push_frame(head.clone(), Some(b(1000))),
            Err(PushError::Full)
        );
        o.push_control(Bytes::from_static(b"CLOSE")).unwrap();
        let first = drain(&mut o);
        o.try_push_frame(head, Some(b(1000))).unwrap();
        let order: Vec<usize> = first.iter().chain(&drain(&mut o)).map(Bytes::len).collect();
        assert_eq!(order, [90, 5, 4, 1000]);
    }

    /// A response is queued past the bound (it is owed); the reader takes
    /// the next request only once there is room again.
    #[test]
    fn responses_are_never_refused_and_room_returns_as_they_are_written() {
        let mut o = Outbox::new(100);
        o.push_response(b(80)).unwrap();
        assert_eq!(o.try_push(b(80)), Err(PushError::Full));
        o.push_response(b(80)).unwrap();
        assert_eq!(o.queued_bytes(), 160);
        assert!(!o.has_room(), "160 queued is over the bound of 100");
        o.written(80);
        assert!(o.has_room());
        o.close();
        assert_eq!(o.push_response(b(1)), Err(PushError::Closed));
        assert!(o.has_room(), "closed: nothing to wait for");
    }

    #[test]
    fn the_writer_is_woken_once_per_empty_to_non_empty() {
        let mut o = Outbox::new(100);
        assert!(!o.take_wake());
        o.try_push(b(1)).unwrap();
        o.try_push(b(1)).unwrap();
        assert!(o.take_wake());
        assert!(!o.take_wake(), "the second push found the queue non-empty");
        drain(&mut o);
        o.try_push(b(1)).unwrap();
        assert!(o.take_wake());
        o.finish();
        assert!(o.take_wake(), "a state change wakes too");
    }

    #[test]
    fn closed_refuses_everything_and_drops_the_queue() {
        let mut o = Outbox::new(100);
        o.try_push(b(50)).unwrap();
        o.close();
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(o.try_push(b(1)), Err(PushError::Closed));
        assert_eq!(o.push_control(b(1)), Err(PushError::Closed));
        let mut o = Outbox::new(100);
        o.finish();
        assert!(!o.is_open());
        assert_eq!(o.try_push(b(1)), Err(PushError::Closed));
    }

    #[test]
    fn a_client_that_reads_while_it_pipelines_is_never_taken_for_one_that_does_not() {
        let mut o = Outbox::new(100);
        // The queue never empties: each round queues a reply and the
        // writer writes the one before it. The old count (reset only on an
        // empty queue) cut this client off after 64 KiB of replies.
        o.push_control(b(100)).unwrap();
        for _ in 0..10_000 {
            o.push_control(b(100)).unwrap();
            let mut batch = Vec::new();
            o.take_batch(&mut batch, 1);
            o.written(batch.iter().map(Bytes::len).sum());
            assert!(!o.is_empty());
        }
        // One that stops reading is cut off at the slack.
        let mut pushed = 0;
        while o.push_control(b(100)).is_ok() {
            pushed += 100;
        }
        assert!(pushed <= CONTROL_SLACK);
    }

    /// An outbox that has written what it was given keeps no heap: not the
    /// ring a burst of buffers needed, nor the control runs of a reply, nor
    /// a conflated topic's slot. Idle connections are most connections.
    #[test]
    fn a_drained_outbox_holds_no_heap() {
        let idle = |o: &Outbox| !o.queue.holds_heap() && o.extra.is_none();
        #[cfg(target_pointer_width = "64")]
        assert!(std::mem::size_of::<Outbox>() <= 112);
        let mut o = Outbox::new(100);
        assert!(idle(&o), "a new outbox allocates nothing");
        o.push_response(b(129)).unwrap();
        assert!(idle(&o), "one buffer waits inline");
        drain(&mut o);
        o.push_control(b(40)).unwrap();
        o.push_control(b(40)).unwrap();
        o.try_push(b(10)).unwrap();
        o.push_control(b(40)).unwrap();
        assert!(!idle(&o), "a burst needs the ring");
        assert_eq!(drain(&mut o).len(), 4);
        assert!(idle(&o), "written, the burst's ring and runs are gone");
        let t: Arc<str> = Arc::from("t");
        o.try_push(b(100)).unwrap();
        o.push_message(&t, 1, b(50), true).unwrap();
        assert_eq!(o.held_topics(), 1);
        o.drop_held("t");
        drain(&mut o);
        assert!(idle(&o), "an unsubscribed conflated topic leaves nothing");
        o.try_push(b(60)).unwrap();
        o.try_push(b(40)).unwrap();
        o.discard_queued();
        assert!(idle(&o));
        for _ in 0..3 {
            o.push_replay(b(50), 500).unwrap();
        }
        assert!(!idle(&o), "a replay in flight is accounted");
        drain(&mut o);
        assert!(idle(&o), "written, the replay leaves nothing");
        o.push_message(&t, 2, b(200), true).unwrap();
        o.push_message(&t, 3, b(50), true).unwrap();
        o.push_message(&t, 4, b(50), true).unwrap();
        assert_eq!(o.held_topics(), 1);
        assert_eq!(
            drain(&mut o).len(),
            3,
            "a frame, the skip notice, the newest"
        );
        assert!(idle(&o), "conflation over, nothing is kept");
        o.push_control(b(10)).unwrap();
        o.close();
        assert!(idle(&o));
    }

    /// The inline front keeps queue order: it is always the oldest buffer.
    #[test]
    fn the_queue_is_first_in_first_out_across_its_inline_front() {
        let mut o = Outbox::new(1000);
        for n in 1..=5 {
            o.try_push(b(n)).unwrap();
        }
        let mut batch = Vec::new();
        o.take_batch(&mut batch, 2);
        o.try_push(b(6)).unwrap();
        o.take_batch(&mut batch, 64);
        let lens: Vec<usize> = batch.iter().map(Bytes::len).collect();
        assert_eq!(lens, [1, 2, 3, 4, 5, 6]);
        assert!(o.is_empty());
    }

    #[test]
    fn discard_queued_keeps_the_accounting_right() {
        let mut o = Outbox::new(100);
        o.try_push(b(60)).unwrap();
        o.try_push(b(40)).unwrap();
        o.discard_queued();
        assert_eq!(o.queued_bytes(), 0);
        assert!(o.is_empty());
        o.push_control(b(5)).unwrap();
        assert_eq!(drain(&mut o).len(), 1);
    }
}
