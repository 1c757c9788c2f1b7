//! A connection's outbound queue.
//!
//! Everything a connection sends (HTTP responses, protocol control frames,
//! echoed or published messages) goes through its [`Outbox`]: a queue of
//! `Bytes` bounded in bytes, drained by the connection's single writer task
//! (`runtime::writer`). A published frame is encoded once and the same
//! `Bytes` is pushed to every subscriber's outbox: a reference-count
//! increment, not a copy.
//!
//! The queue knows nothing of sockets; producers learn from the result of a
//! push whether the consumer keeps up, and the caller applies its policy.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;

/// Control-frame bytes that may be queued while the writer has not caught
/// up. Pongs and closes must not be dropped behind a large message, but a
/// peer that sends pings and never reads must not grow the queue forever.
const CONTROL_SLACK: usize = 64 * 1024;

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

pub struct Outbox {
    queue: RefCell<VecDeque<Bytes>>,
    queued: Cell<usize>,
    limit: usize,
    /// Control bytes queued since the queue was last empty.
    control: Cell<usize>,
    /// Replay bytes of the current burst, queued past the bound; they end
    /// at byte position `replay_end` of the stream. Tracked by position,
    /// not by count: live frames queued ahead of a replay are written
    /// first and must not use up its allowance.
    replay: Cell<usize>,
    replay_end: Cell<u64>,
    /// Stream positions: bytes ever queued (minus discarded), and written.
    enqueued: Cell<u64>,
    written: Cell<u64>,
    /// Conflated messages waiting for room, one per topic.
    held: RefCell<Vec<Held>>,
    /// The connection speaks Server-Sent Events: notices are SSE events.
    sse: Cell<bool>,
    state: Cell<State>,
    work: Notify,
    space: Notify,
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Outbox {
            queue: RefCell::new(VecDeque::new()),
            queued: Cell::new(0),
            limit,
            control: Cell::new(0),
            replay: Cell::new(0),
            replay_end: Cell::new(0),
            enqueued: Cell::new(0),
            written: Cell::new(0),
            held: RefCell::new(Vec::new()),
            sse: Cell::new(false),
            state: Cell::new(State::Open),
            work: Notify::new(),
            space: Notify::new(),
        }
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.queued.get()
    }

    pub fn is_open(&self) -> bool {
        self.state.get() == State::Open
    }

    /// Replay bytes queued and not yet written.
    fn replay_unwritten(&self) -> usize {
        let left = self.replay_end.get().saturating_sub(self.written.get());
        (self.replay.get() as u64).min(left) as usize
    }

    /// Whether `len` more bytes may be queued: an empty queue takes one
    /// buffer of any size; otherwise the bound plus the replay in flight.
    fn fits(&self, len: usize) -> bool {
        let queued = self.queued.get();
        queued == 0 || queued + len <= self.limit + self.replay_unwritten()
    }

    fn enqueue(&self, buf: Bytes) {
        self.queued.set(self.queued.get() + buf.len());
        self.enqueued.set(self.enqueued.get() + buf.len() as u64);
        let mut queue = self.queue.borrow_mut();
        // The writer waits only on an empty queue: only that transition
        // needs a wake-up, not every delivery.
        if queue.is_empty() {
            self.work.notify_one();
        }
        queue.push_back(buf);
    }

    /// Queues without waiting. An empty queue accepts one buffer of any
    /// size, so a single large message is never refused outright.
    pub fn try_push(&self, buf: Bytes) -> Result<(), PushError> {
        if self.state.get() != State::Open {
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

    /// Queues the response to an HTTP request, whatever its size and
    /// whatever is queued: a response is owed, and dropping it would leave
    /// the client waiting forever. The bound is kept by the reader instead:
    /// it takes no next request until [`Outbox::wait_for_room`] returns,
    /// so a client that pipelines requests without reading gets at most
    /// one response past the bound.
    pub fn push_response(&self, buf: Bytes) -> Result<(), PushError> {
        if self.state.get() != State::Open {
            return Err(PushError::Closed);
        }
        if !buf.is_empty() {
            self.enqueue(buf);
        }
        Ok(())
    }

    /// Waits until what is queued is within the bound (or the connection
    /// closed): backpressure between a response and the next request.
    pub async fn wait_for_room(&self) {
        while self.state.get() == State::Open && self.queued.get() > self.limit {
            self.space.notified().await;
        }
    }

    /// Queues a protocol control frame (pong, close) behind whatever is
    /// queued, ignoring the byte bound. Refused once [`CONTROL_SLACK`]
    /// control bytes wait behind a queue that never empties: the peer is not
    /// reading at all and the caller should drop it.
    pub fn push_control(&self, buf: Bytes) -> Result<(), PushError> {
        if self.state.get() != State::Open {
            return Err(PushError::Closed);
        }
        if self.control.get() + buf.len() > CONTROL_SLACK {
            return Err(PushError::Full);
        }
        self.control.set(self.control.get() + buf.len());
        self.enqueue(buf);
        Ok(())
    }

    /// Queues a replayed (retained) message past the bound, up to `allowance`
    /// bytes in flight: a resume is a one-off burst bounded by the topic's
    /// history, and live messages behind it must not count it against the
    /// client. Past the allowance it is an ordinary message.
    pub fn push_replay(&self, frame: Bytes, allowance: usize) -> Result<(), PushError> {
        if self.state.get() != State::Open {
            return Err(PushError::Closed);
        }
        let unwritten = self.replay_unwritten();
        if unwritten + frame.len() > allowance {
            return self.try_push(frame);
        }
        self.replay.set(unwritten + frame.len());
        self.enqueue(frame);
        self.replay_end.set(self.enqueued.get());
        Ok(())
    }

    /// Queues a published message. With `conflate`, a message that does
    /// not fit (or whose topic already has one waiting) replaces the
    /// topic's waiting message instead of being refused; when room returns
    /// the client gets a `skipped` notice for what it missed, then the
    /// newest message. Memory stays bounded by one frame per topic.
    pub fn push_message(
        &self,
        topic: &Arc<str>,
        seq: u64,
        frame: Bytes,
        conflate: bool,
    ) -> Result<Pushed, PushError> {
        if conflate {
            let mut held = self.held.borrow_mut();
            if let Some(h) = held.iter_mut().find(|h| *h.topic == **topic) {
                h.seq = seq;
                h.frame = frame;
                return Ok(Pushed::Held);
            }
            drop(held);
            if self.state.get() != State::Open {
                return Err(PushError::Closed);
            }
            if self.fits(frame.len()) {
                self.enqueue(frame);
                return Ok(Pushed::Queued);
            }
            self.held.borrow_mut().push(Held {
                topic: topic.clone(),
                first: seq,
                seq,
                frame,
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
    pub fn discard_queued(&self) {
        let mut q = self.queue.borrow_mut();
        let dropped: usize = q.iter().map(Bytes::len).sum();
        q.clear();
        self.queued.set(self.queued.get().saturating_sub(dropped));
        // Dropped bytes will never be written: the stream ends before them.
        self.enqueued.set(self.enqueued.get() - dropped as u64);
        self.replay_end
            .set(self.replay_end.get().min(self.enqueued.get()));
        self.held.borrow_mut().clear();
    }

    /// Encode conflation notices as Server-Sent Events.
    pub fn set_sse(&self) {
        self.sse.set(true);
    }

    /// Forgets a topic's conflated message (the client unsubscribed).
    pub fn drop_held(&self, topic: &str) {
        self.held.borrow_mut().retain(|h| *h.topic != *topic);
    }

    /// Topics with a conflated message waiting.
    pub fn held_topics(&self) -> usize {
        self.held.borrow().len()
    }

    /// Moves conflated messages into the queue once it has drained to half
    /// its bound, each after its `skipped` notice.
    fn release_held(&self) {
        if self.held.borrow().is_empty() || self.queued.get() > self.limit / 2 {
            return;
        }
        let held = std::mem::take(&mut *self.held.borrow_mut());
        for h in held {
            if h.seq > h.first {
                self.enqueue(if self.sse.get() {
                    ringcast_core::wire::reply::sse_skipped(&h.topic, h.first, h.seq - 1)
                } else {
                    ringcast_core::wire::reply::skipped(&h.topic, h.first, h.seq - 1)
                });
            }
            self.enqueue(h.frame);
        }
    }

    /// Queues one frame given as a header and an optional separate
    /// payload, waiting for the writer to make room: backpressure for a
    /// producer that may wait (the connection's own reader). Both parts are
    /// queued together, so nothing another task queues (a ping, the close
    /// at shutdown) can land between a header and its payload. Returns
    /// false if the connection closed meanwhile.
    pub async fn push(&self, head: Bytes, payload: Option<Bytes>) -> bool {
        let len = head.len() + payload.as_ref().map_or(0, Bytes::len);
        loop {
            if self.state.get() != State::Open {
                return false;
            }
            if self.fits(len) {
                self.enqueue(head);
                if let Some(p) = payload {
                    self.enqueue(p);
                }
                return true;
            }
            self.space.notified().await;
        }
    }

    /// Write everything queued, then half-close.
    pub fn finish(&self) {
        if self.state.get() == State::Open {
            self.state.set(State::Finishing);
            self.work.notify_one();
        }
    }

    pub fn state(&self) -> State {
        self.state.get()
    }

    /// Moves up to `max` queued buffers into `out` for one write.
    pub fn take_batch(&self, out: &mut Vec<Bytes>, max: usize) {
        let mut q = self.queue.borrow_mut();
        let n = q.len().min(max);
        out.extend(q.drain(..n));
    }

    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Waits until there is something to write or the state changes.
    pub async fn wait_for_work(&self) {
        self.work.notified().await
    }

    /// The writer finished writing `bytes` of what it took.
    pub fn written(&self, bytes: usize) {
        self.queued.set(self.queued.get().saturating_sub(bytes));
        self.written.set(self.written.get() + bytes as u64);
        if self.is_empty() {
            self.control.set(0);
        }
        if self.state.get() == State::Open {
            self.release_held();
        }
        self.space.notify_one();
    }

    /// Stop writing at once.
    pub fn close(&self) {
        self.state.set(State::Closed);
        self.queue.borrow_mut().clear();
        self.held.borrow_mut().clear();
        self.queued.set(0);
        self.work.notify_one();
        self.space.notify_one();
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
        let o = Outbox::new(100);
        assert_eq!(o.try_push(b(1000)), Ok(()));
        assert_eq!(o.try_push(b(1)), Err(PushError::Full));
        let o = Outbox::new(100);
        assert_eq!(o.try_push(b(60)), Ok(()));
        assert_eq!(o.try_push(b(40)), Ok(()));
        assert_eq!(o.try_push(b(1)), Err(PushError::Full));
        assert_eq!(o.queued_bytes(), 100);
    }

    #[test]
    fn control_frames_pass_a_full_queue_up_to_the_slack() {
        let o = Outbox::new(100);
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

    fn drain(o: &Outbox) -> Vec<Bytes> {
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
        let o = Outbox::new(200);
        let frame = |topic: &str, seq| ringcast_core::wire::reply::message(topic, seq, &[b'1'; 40]);
        // Two ~90-byte messages fit in 200 bytes; the rest are conflated.
        for seq in 1..=6 {
            o.push_message(&t, seq, frame("ticker.A", seq), true)
                .unwrap();
        }
        o.push_message(&u, 1, frame("ticker.B", 1), true).unwrap();
        assert_eq!(o.held_topics(), 2);
        assert!(o.queued_bytes() <= 200);
        let text: Vec<String> = drain(&o)
            .iter()
            .map(|f| {
                String::from_utf8_lossy(&ringcast_core::wire::reply::message_json(f)).into_owned()
            })
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
        let o = Outbox::new(100);
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
        drain(&o);
        o.try_push(b(60)).unwrap();
        assert_eq!(o.try_push(b(60)), Err(PushError::Full));
    }

    #[test]
    fn a_replay_burst_does_not_count_against_live_messages() {
        let t: Arc<str> = Arc::from("t");
        let o = Outbox::new(100);
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
        drain(&o);
        assert_eq!(o.queued_bytes(), 0);
        o.push_message(&t, 13, b(50), false).unwrap();
    }

    #[test]
    fn without_conflation_a_full_queue_refuses() {
        let t: Arc<str> = Arc::from("t");
        let o = Outbox::new(10);
        o.push_message(&t, 1, b(10), false).unwrap();
        assert_eq!(o.push_message(&t, 2, b(10), false), Err(PushError::Full));
    }

    /// Runs `f` on a single-threaded runtime where tasks may share `Rc`s,
    /// as on a shard.
    fn run_local<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    /// A frame's header and payload are queued back to back even when the
    /// producer had to wait for room and another task queued a control
    /// frame meanwhile.
    #[test]
    fn a_frame_is_queued_whole() {
        run_local(async {
            let o = std::rc::Rc::new(Outbox::new(100));
            o.try_push(b(90)).unwrap();
            let producer = {
                let o = o.clone();
                tokio::task::spawn_local(async move {
                    o.push(Bytes::from_static(b"HEAD"), Some(b(1000))).await
                })
            };
            tokio::task::yield_now().await; // the producer now waits for room
            o.push_control(Bytes::from_static(b"CLOSE")).unwrap();
            let mut order = Vec::new();
            while order.len() < 4 {
                let mut batch = Vec::new();
                o.take_batch(&mut batch, 64);
                o.written(batch.iter().map(Bytes::len).sum());
                order.extend(batch.into_iter().map(|x| x.len()));
                tokio::task::yield_now().await;
            }
            assert!(producer.await.unwrap());
            assert_eq!(
                order,
                [90, 5, 4, 1000],
                "CLOSE may precede the frame, never split it"
            );
        });
    }

    /// A response is queued past the bound (it is owed), and the reader
    /// waits for room before it takes the next request.
    #[test]
    fn responses_are_never_refused_and_the_reader_waits_for_room() {
        run_local(async {
            let o = std::rc::Rc::new(Outbox::new(100));
            o.push_response(b(80)).unwrap();
            assert_eq!(o.try_push(b(80)), Err(PushError::Full));
            o.push_response(b(80)).unwrap();
            assert_eq!(o.queued_bytes(), 160);
            let reader = {
                let o = o.clone();
                tokio::task::spawn_local(async move { o.wait_for_room().await })
            };
            tokio::task::yield_now().await;
            assert!(!reader.is_finished(), "160 queued is over the bound of 100");
            o.written(80);
            reader.await.unwrap();
            o.close();
            assert_eq!(o.push_response(b(1)), Err(PushError::Closed));
            o.wait_for_room().await; // closed: returns at once
        });
    }

    #[test]
    fn closed_refuses_everything_and_drops_the_queue() {
        let o = Outbox::new(100);
        o.try_push(b(50)).unwrap();
        o.close();
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(o.try_push(b(1)), Err(PushError::Closed));
        assert_eq!(o.push_control(b(1)), Err(PushError::Closed));
        let o = Outbox::new(100);
        o.finish();
        assert!(!o.is_open());
        assert_eq!(o.try_push(b(1)), Err(PushError::Closed));
    }

    #[test]
    fn discard_queued_keeps_the_accounting_right() {
        let o = Outbox::new(100);
        o.try_push(b(60)).unwrap();
        o.try_push(b(40)).unwrap();
        o.discard_queued();
        assert_eq!(o.queued_bytes(), 0);
        assert!(o.is_empty());
        o.push_control(b(5)).unwrap();
        assert_eq!(drain(&o).len(), 1);
    }
}
