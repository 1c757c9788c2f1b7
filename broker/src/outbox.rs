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

    fn enqueue(&self, buf: Bytes) {
        self.queued.set(self.queued.get() + buf.len());
        self.queue.borrow_mut().push_back(buf);
        self.work.notify_one();
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
        if self.queued.get() > 0 && self.queued.get() + buf.len() > self.limit {
            return Err(PushError::Full);
        }
        self.enqueue(buf);
        Ok(())
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

    /// Queues, waiting for the writer to make room: backpressure for a
    /// producer that may wait (the connection's own reader). Returns false
    /// if the connection closed meanwhile.
    pub async fn push(&self, buf: Bytes) -> bool {
        loop {
            match self.try_push(buf.clone()) {
                Ok(()) => return true,
                Err(PushError::Closed) => return false,
                Err(PushError::Full) => self.space.notified().await,
            }
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
        if self.is_empty() {
            self.control.set(0);
        }
        self.space.notify_one();
    }

    /// Stop writing at once.
    pub fn close(&self) {
        self.state.set(State::Closed);
        self.queue.borrow_mut().clear();
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
}
