//! Waking a loop from another thread.
//!
//! A loop sleeps in `io_uring_enter` until a completion arrives, so a wake
//! must be a completion. Two ways:
//!
//! - [`Waker`]: the loop keeps an 8-byte read armed on an eventfd; any
//!   thread writes to the eventfd (one `write(2)`) and the read completes.
//!   Writes before the loop runs coalesce into one completion (the eventfd
//!   is a counter), which is what a batched mesh wants.
//! - `IORING_OP_MSG_RING` ([`super::Loop::post`]): a thread that has a ring
//!   of its own posts a completion straight into the target ring, as one
//!   more entry of a submission it makes anyway: no extra syscall.
//!
//! `bench/benches/ring_wake.rs` measures the two against each other.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Wakes one loop from any thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Waker> {
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waker { fd: Arc::new(fd) })
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the loop's next (or current) wait return and call
    /// `Handler::on_wake`. Never blocks: a counter already at its maximum
    /// means a wake is pending anyway.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}
