//! A connection's state record and its send queue.
//!
//! The record is what an idle connection costs in user space: a fixed-file
//! index, a few flags and counters, and an empty `Option<Box<..>>` (no
//! receive buffer: bytes arrive in the shard's buffer ring). The send state
//! is boxed and exists only while something is queued or in flight.

use bytes::{Buf, Bytes};

/// A connection as the handler sees it: its slot and the generation of the
/// slot's current occupant. Stale ids (the connection closed, the slot
/// reused) are refused by every call that takes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) slot: u32,
    pub(crate) gen: u32,
}

impl ConnId {
    /// The slab index; reused after the connection is gone.
    pub fn slot(self) -> u32 {
        self.slot
    }

    /// Bumped each time the slot is reused (24 bits, wrapping).
    pub fn generation(self) -> u32 {
        self.gen
    }
}

/// Bits of [`Conn::flags`].
pub(crate) mod flag {
    /// The multishot recv is armed.
    pub(crate) const RECV: u16 = 1 << 0;
    /// The send is in flight.
    pub(crate) const SENDING: u16 = 1 << 1;
    /// In the loop's list of connections to flush.
    pub(crate) const DIRTY: u16 = 1 << 2;
    /// Closing: shutdown and close submitted or about to be; the handler
    /// has had `on_close` and sees nothing more.
    pub(crate) const CLOSING: u16 = 1 << 3;
    /// The handler asked to close: flush what is queued, then close.
    pub(crate) const FLUSH_CLOSE: u16 = 1 << 4;
    /// The recv ended and waits in the loop's re-arm list.
    pub(crate) const REARM: u16 = 1 << 5;
    /// A cancel was sent because the connection took more than its
    /// burst of buffers in one turn.
    pub(crate) const THROTTLED: u16 = 1 << 6;
    /// The handler paused reading (`Ops::pause_recv`): the recv is not
    /// armed again until it resumes.
    pub(crate) const PAUSED: u16 = 1 << 7;
}

/// One connection's state.
pub(crate) struct Conn {
    /// Index in the ring's fixed-file table.
    pub(crate) file: u32,
    pub(crate) flags: u16,
    /// Operations in flight that name this slot. The slot is freed only
    /// when this is zero, so no completion outlives its connection.
    pub(crate) ops: u8,
    /// Buffers received in turn `burst_turn`.
    pub(crate) burst: u16,
    pub(crate) burst_turn: u32,
    /// What is queued or being sent; `None` when idle.
    pub(crate) out: Option<Box<Outgoing>>,
}

impl Conn {
    pub(crate) fn new(file: u32) -> Conn {
        Conn {
            file,
            flags: 0,
            ops: 0,
            burst: 0,
            burst_turn: 0,
            out: None,
        }
    }

    pub(crate) fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    /// Open for the handler: not closing and not flushing towards a close.
    pub(crate) fn is_open(&self) -> bool {
        !self.has(flag::CLOSING | flag::FLUSH_CLOSE)
    }

    /// Bytes queued or in flight.
    pub(crate) fn pending(&self) -> bool {
        self.out.as_ref().is_some_and(|o| !o.bufs.is_empty())
    }
}

/// The most buffers one send carries; the rest wait for the next.
pub(crate) const MAX_IOV: usize = 64;

/// What [`Outgoing::prepare`] points the kernel at.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// One buffer (the usual fan-out case: one frame queued since the last
    /// send): a plain `send`, which copies no msghdr and imports no iovec
    /// array from user memory.
    One(*const u8, u32),
    /// Several: a `sendmsg` gathering them.
    Many(*const libc::msghdr),
}

/// A connection's send queue and the send over its head.
///
/// `bufs[..in_flight]` are what the send in flight points at; they are
/// neither dropped nor advanced until its completion. Anything queued
/// meanwhile is pushed behind them: moving a `Bytes` (when the Vec grows)
/// does not move the bytes it points at, so the iovecs stay valid.
pub(crate) struct Outgoing {
    pub(crate) bufs: Vec<Bytes>,
    in_flight: usize,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

impl Outgoing {
    pub(crate) fn new() -> Box<Outgoing> {
        Box::new(Outgoing {
            bufs: Vec::new(),
            in_flight: 0,
            iov: Vec::new(),
            // SAFETY: an all-zero msghdr is a valid empty one.
            msg: unsafe { std::mem::zeroed() },
        })
    }

    /// Points the kernel at the first (up to) [`MAX_IOV`] queued buffers:
    /// the one buffer itself for a `send`, or the msghdr for a `sendmsg`.
    /// The Box must not be dropped, nor those buffers touched, until
    /// [`Outgoing::complete`].
    pub(crate) fn prepare(&mut self) -> Prepared {
        debug_assert_eq!(self.in_flight, 0);
        self.in_flight = self.bufs.len().min(MAX_IOV);
        self.iov.clear();
        if self.in_flight == 1 {
            // A send's length is 32 bits; a longer buffer goes out in
            // parts, as after any partial send.
            let b = &self.bufs[0];
            let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
            self.iov.push(libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: len as usize,
            });
            return Prepared::One(b.as_ptr(), len);
        }
        self.iov
            .extend(self.bufs[..self.in_flight].iter().map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            }));
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len() as _;
        Prepared::Many(&self.msg)
    }

    /// Bytes the send in flight offers.
    pub(crate) fn in_flight_len(&self) -> usize {
        self.iov.iter().map(|v| v.iov_len).sum()
    }

    /// The send wrote `n` bytes: drop what went out, keep the rest of a
    /// partly written buffer (a cheap `Bytes` advance, no copy).
    pub(crate) fn complete(&mut self, mut n: usize) {
        let mut done = 0;
        while n > 0 && done < self.in_flight {
            let len = self.bufs[done].len();
            if n >= len {
                n -= len;
                done += 1;
            } else {
                self.bufs[done].advance(n);
                n = 0;
            }
        }
        self.bufs.drain(..done);
        self.in_flight = 0;
        self.iov.clear();
    }

    /// Empties the queue (closing). Only when nothing is in flight.
    pub(crate) fn clear(&mut self) {
        debug_assert_eq!(self.in_flight, 0);
        self.bufs.clear();
        self.iov.clear();
    }

    /// Trims the capacities a burst left behind before the Box is pooled.
    pub(crate) fn shrink(&mut self) {
        if self.bufs.capacity() > 4 * MAX_IOV {
            self.bufs = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_is_a_few_words() {
        // The user-space cost of an idle connection, before the slab's tag
        // and the engine's session.
        assert!(std::mem::size_of::<Conn>() <= 24);
    }

    #[test]
    fn partial_sends_keep_the_rest_in_order() {
        let mut out = Outgoing::new();
        out.bufs.push(Bytes::from_static(b"hello "));
        out.bufs.push(Bytes::from_static(b"big "));
        out.bufs.push(Bytes::from_static(b"world"));
        assert!(matches!(out.prepare(), Prepared::Many(_)));
        assert_eq!(out.in_flight_len(), 15);
        // Queued behind the send in flight.
        out.bufs.push(Bytes::from_static(b"!"));
        out.complete(8);
        let rest: Vec<&[u8]> = out.bufs.iter().map(|b| &b[..]).collect();
        assert_eq!(rest, [&b"g "[..], b"world", b"!"]);
        out.prepare();
        assert_eq!(out.in_flight_len(), 8);
        out.complete(8);
        assert!(out.bufs.is_empty());
    }

    #[test]
    fn one_sendmsg_carries_at_most_max_iov_buffers() {
        let mut out = Outgoing::new();
        let frame = Bytes::from_static(b"x");
        for _ in 0..MAX_IOV + 10 {
            out.bufs.push(frame.clone());
        }
        let Prepared::Many(msg) = out.prepare() else {
            panic!("several buffers go out in a sendmsg");
        };
        assert_eq!(unsafe { (*msg).msg_iovlen }, MAX_IOV);
        // The iovecs point at the shared bytes themselves: no copy.
        assert!(out
            .iov
            .iter()
            .all(|v| v.iov_base as *const u8 == frame.as_ptr()));
        out.complete(MAX_IOV);
        assert_eq!(out.bufs.len(), 10);
    }

    #[test]
    fn one_buffer_goes_out_in_a_plain_send_of_its_own_bytes() {
        let mut out = Outgoing::new();
        let frame = Bytes::from_static(b"one frame");
        out.bufs.push(frame.clone());
        let Prepared::One(ptr, len) = out.prepare() else {
            panic!("one buffer goes out in a send");
        };
        assert_eq!((ptr, len as usize), (frame.as_ptr(), frame.len()));
        assert_eq!(out.in_flight_len(), frame.len());
        // Queued behind the send in flight; a partial send keeps the rest.
        out.bufs.push(Bytes::from_static(b"!"));
        out.complete(4);
        let rest: Vec<&[u8]> = out.bufs.iter().map(|b| &b[..]).collect();
        assert_eq!(rest, [&b"frame"[..], b"!"]);
        assert!(matches!(out.prepare(), Prepared::Many(_)));
        assert_eq!(out.in_flight_len(), 6);
    }
}
