//! A connection's outbound queue and the one task that writes it.
//!
//! Everything a connection sends (HTTP responses, protocol control frames,
//! echoed or published messages) goes through its [`Outbox`]: a bounded
//! queue of `Bytes` drained by a single writer task with `writev`. Because
//! `Bytes` is an owned io_uring buffer (tokio-uring's `bytes` feature), a
//! frame encoded once can sit in many outboxes and be written to many
//! sockets without a copy.
//!
//! The writer is the only task that writes to the socket and it is never
//! cancelled: an in-flight `writev` always runs to completion (tokio-uring
//! does not cancel kernel operations when a future is dropped).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::Shutdown;
use std::rc::Rc;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_uring::net::TcpStream;

/// Buffers handed to one `writev`; well under IOV_MAX.
const MAX_IOVECS: usize = 64;

/// Control-frame bytes that may be queued while the writer has not caught
/// up. Pongs and closes must not be dropped behind a large message, but a
/// peer that sends pings and never reads must not grow the queue forever.
const CONTROL_SLACK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
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

    /// Stop writing at once.
    pub fn close(&self) {
        self.state.set(State::Closed);
        self.queue.borrow_mut().clear();
        self.queued.set(0);
        self.work.notify_one();
        self.space.notify_one();
    }
}

/// The writer task: drains `outbox` into `stream` until finished or closed.
pub async fn run_writer(stream: Rc<TcpStream>, outbox: Rc<Outbox>) {
    let mut iov: Vec<Bytes> = Vec::new();
    loop {
        loop {
            let empty = outbox.queue.borrow().is_empty();
            match outbox.state.get() {
                State::Closed => return,
                State::Finishing if empty => {
                    let _ = stream.shutdown(Shutdown::Write);
                    return;
                }
                _ if !empty => break,
                State::Open => outbox.work.notified().await,
                State::Finishing => unreachable!("handled above"),
            }
        }
        {
            let mut q = outbox.queue.borrow_mut();
            let n = q.len().min(MAX_IOVECS);
            iov.extend(q.drain(..n));
        }
        let batch: usize = iov.iter().map(Bytes::len).sum();
        if !write_all_vectored(&stream, &mut iov).await {
            outbox.close();
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        outbox.queued.set(outbox.queued.get().saturating_sub(batch));
        if outbox.queue.borrow().is_empty() {
            outbox.control.set(0);
        }
        outbox.space.notify_one();
    }
}

/// Writes every buffer in `iov`, resubmitting after partial writes; leaves
/// `iov` empty (its allocation is kept for the next batch). False on error.
async fn write_all_vectored(stream: &TcpStream, iov: &mut Vec<Bytes>) -> bool {
    let mut bufs = std::mem::take(iov);
    while !bufs.is_empty() {
        let (res, mut returned) = stream.writev(bufs).await;
        let mut written = match res {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        // Drop the fully written buffers, trim the partially written one.
        let full = returned
            .iter()
            .take_while(|b| {
                if written >= b.len() {
                    written -= b.len();
                    true
                } else {
                    false
                }
            })
            .count();
        returned.drain(..full);
        if written > 0 {
            let first = &mut returned[0];
            *first = first.slice(written..);
        }
        bufs = returned;
    }
    *iov = bufs;
    true
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
