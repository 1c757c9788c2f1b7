//! Waking a ring that sleeps on another thread, the two ways the
//! completion loop (issue 12, `broker/src/uring/wake.rs`) can: an eventfd
//! that the sleeping ring has a read armed on, written with `write(2)`, or
//! `IORING_OP_MSG_RING` posted from the waker's own ring.
//!
//! Each case is a ping-pong between two threads, each with its own ring set
//! up as the loop's (single issuer, deferred task run): the time is one
//! round trip, i.e. two wake-ups, each followed by the woken thread's
//! return from `io_uring_enter`. With an eventfd a wake costs the writer a
//! `write(2)` and then an `io_uring_enter` to wait; with MSG_RING the wake
//! is one more entry in the `io_uring_enter` that waits anyway.
//!
//! Uses the `io-uring` crate directly, not the broker (the benches never
//! link the broker crate).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use io_uring::types::Fd;
use io_uring::{cqueue, opcode, squeue, IoUring};

/// A ring set up like the loop's; plain on a kernel without the flags.
fn new_ring() -> IoUring {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(64)
        .or_else(|_| IoUring::new(64))
        .expect("io_uring")
}

fn eventfd() -> RawFd {
    // SAFETY: no memory involved; checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd");
    fd
}

/// Adds `n` to the eventfd's counter (one write, so the reader sees it whole).
fn signal(fd: RawFd, n: u64) {
    // SAFETY: writes 8 bytes from a live u64.
    let written = unsafe { libc::write(fd, (&n as *const u64).cast(), 8) };
    assert_eq!(written, 8, "eventfd write");
}

fn push(ring: &mut IoUring, entry: &squeue::Entry) {
    // SAFETY: the entries point at nothing, or at a u64 that outlives them.
    unsafe { ring.submission().push(entry) }.expect("room in the ring");
}

/// Arms an 8-byte read of the eventfd `fd` into `buf`.
fn arm_read(ring: &mut IoUring, fd: RawFd, buf: &mut u64) {
    let read = opcode::Read::new(Fd(fd), (buf as *mut u64).cast(), 8)
        .build()
        .user_data(1);
    push(ring, &read);
}

/// A message to `target`'s ring; only a failure posts a completion here.
fn post(ring: &mut IoUring, target: RawFd, result: i32) {
    let msg = opcode::MsgRingData::new(Fd(target), result, 2, None)
        .build()
        .flags(squeue::Flags::SKIP_SUCCESS)
        .user_data(3);
    push(ring, &msg);
}

/// Submits what is queued and returns the next completion, sleeping in
/// the kernel until there is one.
fn wait_one(ring: &mut IoUring) -> cqueue::Entry {
    loop {
        if let Some(cqe) = ring.completion().next() {
            return cqe;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => panic!("io_uring_enter: {e}"),
        }
    }
}

fn eventfd_round_trip(c: &mut Criterion) {
    let (ping, pong) = (eventfd(), eventfd());
    let peer = thread::spawn(move || {
        let mut ring = new_ring();
        let mut buf = 0u64;
        loop {
            arm_read(&mut ring, ping, &mut buf);
            assert_eq!(wait_one(&mut ring).result(), 8);
            // A wake adds 1; the end adds 2.
            if buf > 1 {
                break;
            }
            signal(pong, 1);
        }
    });
    let mut ring = new_ring();
    let mut buf = 0u64;
    c.bench_function("ring_wake/eventfd_round_trip", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                arm_read(&mut ring, pong, &mut buf);
                signal(ping, 1);
                assert_eq!(wait_one(&mut ring).result(), 8);
            }
            start.elapsed()
        })
    });
    signal(ping, 2);
    peer.join().unwrap();
    // SAFETY: both threads are done with the descriptors.
    unsafe {
        libc::close(ping);
        libc::close(pong);
    }
}

fn msg_ring_round_trip(c: &mut Criterion) {
    let mut ring = new_ring();
    let me = ring.as_raw_fd();
    let (tx, rx) = mpsc::channel();
    let peer = thread::spawn(move || {
        let mut ring = new_ring();
        tx.send(ring.as_raw_fd()).unwrap();
        loop {
            let cqe = wait_one(&mut ring);
            assert_eq!(cqe.user_data(), 2, "a message (not a failed post)");
            if cqe.result() == 1 {
                break;
            }
            // Sent by the next wait's io_uring_enter.
            post(&mut ring, me, 0);
        }
    });
    let target = rx.recv().unwrap();
    c.bench_function("ring_wake/msg_ring_round_trip", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                post(&mut ring, target, 0);
                let cqe = wait_one(&mut ring);
                assert_eq!(cqe.user_data(), 2, "a message (not a failed post)");
            }
            start.elapsed()
        })
    });
    post(&mut ring, target, 1);
    ring.submit().unwrap();
    peer.join().unwrap();
}

criterion_group! {
    name = benches;
    config = ringcast_bench::config();
    targets = eventfd_round_trip, msg_ring_round_trip
}
criterion_main!(benches);
