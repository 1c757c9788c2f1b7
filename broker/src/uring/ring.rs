//! One ring per thread, set up for a single issuer, and the kernel probe.
//!
//! A shard's ring is created, submitted to and waited on by its own thread
//! only. Telling the kernel so (`IORING_SETUP_SINGLE_ISSUER`) lets it skip
//! the locking it would otherwise need, and `IORING_SETUP_DEFER_TASKRUN`
//! keeps completion work from interrupting the thread: it runs when the
//! thread enters the ring to wait, in one batch. Older kernels get the next
//! best set-up; which one was chosen is in [`RingInfo`] for the start-up
//! log line.

use std::fmt;
use std::io;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

use super::bufring::BufRing;
use super::Error;

/// The oldest Linux release the loop runs on: multishot recv with provided
/// buffers arrived in 6.0 (buffer rings and multishot accept in 5.19).
pub const MIN_KERNEL: &str = "6.0";

/// How the ring was set up, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// `SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1): completion work runs
    /// only when this thread waits on the ring.
    DeferTaskrun,
    /// `SINGLE_ISSUER | COOP_TASKRUN` (6.0): no interrupting IPI to run
    /// completion work, but it may run on any kernel entry.
    SingleIssuerCoop,
    /// `COOP_TASKRUN` (5.19).
    CoopTaskrun,
    /// No hints at all.
    Plain,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::DeferTaskrun,
        Mode::SingleIssuerCoop,
        Mode::CoopTaskrun,
        Mode::Plain,
    ];

    fn describe(self) -> &'static str {
        match self {
            Mode::DeferTaskrun => "single issuer, deferred task run",
            Mode::SingleIssuerCoop => "single issuer, cooperative task run",
            Mode::CoopTaskrun => "cooperative task run",
            Mode::Plain => "no set-up hints",
        }
    }
}

/// What the ring set-up chose, for the start-up log line (`Display`).
#[derive(Clone, Debug)]
pub struct RingInfo {
    /// The set-up flags the kernel accepted.
    pub mode: Mode,
    /// Submission queue entries.
    pub sq_entries: u32,
    /// Completion queue entries.
    pub cq_entries: u32,
    /// `uname -r`.
    pub kernel: String,
}

impl fmt::Display for RingInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "io_uring: {}; sq {} cq {} entries; kernel {}",
            self.mode.describe(),
            self.sq_entries,
            self.cq_entries,
            self.kernel
        )
    }
}

/// This machine's kernel release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    // SAFETY: uname fills the struct it is given; a zeroed utsname is valid.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A thread's ring and what its set-up chose.
pub(crate) struct Ring {
    pub(crate) uring: IoUring,
    pub(crate) info: RingInfo,
}

impl Ring {
    /// Creates a ring with the best set-up the kernel accepts. An `EINVAL`
    /// means "flag unknown", so the next mode is tried; any other error is
    /// final. Must be called on the thread that will use the ring: with
    /// `SINGLE_ISSUER` the creator is the only task allowed to submit.
    pub(crate) fn new(sq_entries: u32, cq_entries: u32) -> Result<Ring, Error> {
        let kernel = kernel_release();
        for mode in Mode::ALL {
            let mut builder = IoUring::builder();
            // SUBMIT_ALL (5.18): an entry whose preparation the kernel
            // refuses fails alone (its completion says why) instead of
            // ending the submission there and leaving the entries behind it
            // in the queue, which `push_chain` would take for a full queue
            // and stop the loop.
            builder
                .setup_cqsize(cq_entries.max(sq_entries))
                .setup_submit_all();
            match mode {
                Mode::DeferTaskrun => {
                    builder.setup_single_issuer().setup_defer_taskrun();
                }
                Mode::SingleIssuerCoop => {
                    builder.setup_single_issuer().setup_coop_taskrun();
                }
                Mode::CoopTaskrun => {
                    builder.setup_coop_taskrun();
                }
                Mode::Plain => {}
            }
            match builder.build(sq_entries) {
                Ok(uring) => {
                    let info = RingInfo {
                        mode,
                        sq_entries: uring.params().sq_entries(),
                        cq_entries: uring.params().cq_entries(),
                        kernel,
                    };
                    return Ok(Ring { uring, info });
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && mode != Mode::Plain => continue,
                Err(e) => return Err(Error::Setup(e)),
            }
        }
        unreachable!("Mode::Plain either builds or returns an error")
    }

    /// Queues one entry, submitting what is queued first if the submission
    /// queue is full.
    pub(crate) fn push(&mut self, entry: &squeue::Entry) -> Result<(), Error> {
        self.push_chain(std::slice::from_ref(entry))
    }

    /// Queues entries back to back (a linked chain must not be cut by a
    /// submission between its members), submitting what is queued first if
    /// they do not all fit. Fails if the kernel takes nothing (it refuses
    /// new work while completions it could not post are pending: the
    /// completion queue is sized so that this does not happen).
    pub(crate) fn push_chain(&mut self, entries: &[squeue::Entry]) -> Result<(), Error> {
        let room = |u: &mut IoUring| {
            let sq = u.submission();
            sq.capacity() - sq.len()
        };
        if room(&mut self.uring) < entries.len() {
            match self.uring.submit() {
                Ok(_) => {}
                Err(e) if transient(&e) => {}
                Err(e) => return Err(Error::Io("io_uring_enter (submit)", e)),
            }
            if room(&mut self.uring) < entries.len() {
                return Err(Error::Io(
                    "io_uring_enter (submit)",
                    io::Error::new(io::ErrorKind::WouldBlock, "submission queue stays full"),
                ));
            }
        }
        let mut sq = self.uring.submission();
        for entry in entries {
            // SAFETY: every entry the loop builds points at memory that
            // outlives the operation (see the callers); room was checked.
            unsafe { sq.push(entry) }.expect("room was checked");
        }
        Ok(())
    }

    /// Submits what is queued and waits for at least one completion, or
    /// until `timeout` (a zero timeout only reaps). A timeout, a signal or
    /// a full completion queue are not errors: the caller reaps what there
    /// is and comes back.
    pub(crate) fn submit_and_wait(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let result = match timeout {
            None => self.uring.submit_and_wait(1),
            Some(d) => {
                let ts = Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) => Ok(()),
            Err(e) => Err(Error::Io("io_uring_enter (wait)", e)),
        }
    }
}

/// Errors of `io_uring_enter` that mean "come back": the wait timed out,
/// a signal arrived, or the completion queue must be reaped first.
pub(crate) fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
    )
}

/// The opcodes the loop submits, each with the first release that has it.
const OPCODES: [(u8, &str, &str); 9] = [
    (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT", "5.5"),
    (opcode::RecvMulti::CODE, "IORING_OP_RECV", "5.6"),
    (opcode::Send::CODE, "IORING_OP_SEND", "5.6"),
    (opcode::SendMsg::CODE, "IORING_OP_SENDMSG", "5.3"),
    (opcode::Shutdown::CODE, "IORING_OP_SHUTDOWN", "5.11"),
    (opcode::Close::CODE, "IORING_OP_CLOSE", "5.6"),
    (opcode::Read::CODE, "IORING_OP_READ", "5.6"),
    (opcode::AsyncCancel2::CODE, "IORING_OP_ASYNC_CANCEL", "5.5"),
    (opcode::MsgRingData::CODE, "IORING_OP_MSG_RING", "5.18"),
];

/// Checks that this kernel has everything the loop uses, on a throwaway
/// ring: the opcodes (`IORING_REGISTER_PROBE`), and by trying them, the
/// flag-selected behaviours a probe cannot show: a sparse fixed-file table,
/// a provided-buffer ring, multishot accept straight into the fixed-file
/// table, multishot recv from the buffer ring (6.0, the newest of them) and
/// a message from one ring to another. The sockets are a Unix-domain pair
/// under an abstract name, so the probe needs no network. Takes about a
/// millisecond.
pub fn probe() -> Result<(), Error> {
    let kernel = kernel_release();
    let unsupported = |what: &'static str, min_kernel: &'static str, source| Error::Unsupported {
        what,
        min_kernel,
        kernel: kernel.clone(),
        source,
    };
    let mut ring = IoUring::new(8).map_err(Error::Setup)?;
    let mut ops = Probe::new();
    ring.submitter()
        .register_probe(&mut ops)
        .map_err(|e| unsupported("IORING_REGISTER_PROBE", "5.6", Some(e)))?;
    for (code, name, min) in OPCODES {
        if !ops.is_supported(code) {
            return Err(unsupported(name, min, None));
        }
    }
    ring.submitter()
        .register_files_sparse(2)
        .map_err(|e| unsupported("a sparse fixed-file table", "5.19", Some(e)))?;
    // SAFETY: the ring is dropped (closing it, which releases the group)
    // before `bufs` at the end of this function; see `teardown`.
    let bufs = unsafe { BufRing::register(&ring.submitter(), 0, 2, 64) }
        .map_err(|e| unsupported("provided-buffer rings", "5.19", Some(e)))?;
    let result = probe_ops(&mut ring, bufs.bgid(), &unsupported);
    // Cancel whatever is still armed before the buffers go away.
    let _ = ring
        .submitter()
        .register_sync_cancel(Some(Timespec::new().sec(1)), CancelBuilder::any());
    let _ = ring.submitter().unregister_buf_ring(bufs.bgid());
    drop(ring);
    drop(bufs);
    result
}

fn probe_ops(
    ring: &mut IoUring,
    bgid: u16,
    unsupported: &dyn Fn(&'static str, &'static str, Option<io::Error>) -> Error,
) -> Result<(), Error> {
    let io = |what| move |e| Error::Io(what, e);
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "ringcast-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(io("probe socket"))?;
    let listener = UnixListener::bind_addr(&addr).map_err(io("probe socket"))?;

    let accept = opcode::AcceptMulti::new(Fd(listener.as_raw_fd()))
        .allocate_file_index(true)
        .build()
        .user_data(1);
    push(ring, &accept);
    ring.submit().map_err(io("io_uring_enter"))?;
    let mut client = UnixStream::connect_addr(&addr).map_err(io("probe connect"))?;
    let cqe = wait_for(ring, 1).map_err(io("probe accept"))?;
    if cqe.result() < 0 || !cqueue::more(cqe.flags()) {
        return Err(unsupported(
            "multishot accept into the fixed-file table",
            "5.19",
            errno(cqe.result()),
        ));
    }
    let file = cqe.result() as u32;

    client.write_all(b"p").map_err(io("probe write"))?;
    let recv = opcode::RecvMulti::new(Fixed(file), bgid)
        .build()
        .user_data(2);
    push(ring, &recv);
    let cqe = wait_for(ring, 2).map_err(io("probe recv"))?;
    if cqe.result() != 1
        || cqueue::buffer_select(cqe.flags()).is_none()
        || !cqueue::more(cqe.flags())
    {
        return Err(unsupported(
            "multishot recv from a provided-buffer ring",
            "6.0",
            errno(cqe.result()),
        ));
    }

    let msg = opcode::MsgRingData::new(Fd(ring.as_raw_fd()), 42, 3, None)
        .build()
        .user_data(4);
    push(ring, &msg);
    let cqe = wait_for(ring, 3).map_err(io("probe msg_ring"))?;
    if cqe.result() != 42 {
        return Err(unsupported(
            "IORING_OP_MSG_RING",
            "5.18",
            errno(cqe.result()),
        ));
    }
    Ok(())
}

fn errno(result: i32) -> Option<io::Error> {
    (result < 0).then(|| io::Error::from_raw_os_error(-result))
}

fn push(ring: &mut IoUring, entry: &squeue::Entry) {
    // SAFETY: the probe's entries point at nothing (fds and ids only). The
    // queue has 8 entries and the probe never queues more than one.
    unsafe { ring.submission().push(entry) }.expect("probe ring has room");
}

/// Waits (at most two seconds) for the completion tagged `user_data`,
/// passing over others.
fn wait_for(ring: &mut IoUring, user_data: u64) -> io::Result<cqueue::Entry> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(cqe) = ring.completion().find(|c| c.user_data() == user_data) {
            return Ok(cqe);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no completion within 2 s",
            ));
        }
        let ts = Timespec::new()
            .nsec(left.subsec_nanos())
            .sec(left.as_secs());
        match ring
            .submitter()
            .submit_with_args(1, &SubmitArgs::new().timespec(&ts))
        {
            Ok(_) => {}
            Err(e) if transient(&e) => {}
            Err(e) => return Err(e),
        }
    }
}
