//! The completion-driven loop: one per shard thread, no task per
//! connection.
//!
//! A turn submits what is queued, sleeps in one `io_uring_enter` until a
//! completion arrives, and dispatches every completion by its `user_data`
//! ([`super::token`]) to the connection it names. Bytes go to the
//! [`Handler`] straight from the shard's buffer ring and the buffer goes
//! back at once; sends queued during the turn leave at the start of the
//! next one, one send per connection.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use bytes::Bytes;
use io_uring::types::{CancelBuilder, Fd, Fixed, Timespec};
use io_uring::{cqueue, opcode, squeue};
use slab::Slab;

use super::bufring::BufRing;
use super::conn::{flag, Conn, ConnId, Outgoing, Prepared};
use super::ring::{self, Ring, RingInfo};
use super::token::{Kind, Token, GEN_MASK, RING_MSG};
use super::wake::Waker;
use super::Error;

/// Sizes of one loop.
#[derive(Clone, Debug)]
pub struct Config {
    /// Submission queue entries.
    pub sq_entries: u32,
    /// Completion queue entries; at least twice the buffers, so that a
    /// burst in which every buffer completes never overflows it.
    pub cq_entries: u32,
    /// Buffers in the shard's buffer ring (a power of two, at most 32768).
    pub buffers: u16,
    /// Bytes per buffer: the most one recv completion carries.
    pub buffer_size: u32,
    /// Connections at once. Reaching it cancels the multishot accepts:
    /// further clients wait in the listen backlog until a slot frees. The
    /// fixed-file table has [`ACCEPT_HEADROOM`] more entries for the
    /// accepts that complete before the cancel lands; the kernel bounds the
    /// table by `RLIMIT_NOFILE`.
    pub max_conns: u32,
    /// Buffers one connection may take in one turn before its recv is
    /// cancelled and re-armed behind the others (a soft cap: the kernel
    /// may fill a few more before the cancel lands).
    pub recv_burst: u16,
    /// The buffer group id of the buffer ring.
    pub buffer_group: u16,
    /// Learn each peer's address ([`Ops::opening_peer`]): accepts are
    /// then [`ADDR_ACCEPTS`] single-shot accepts per listener, each with
    /// its own address slot, instead of one multishot accept (whose one
    /// address slot every connection would overwrite).
    pub peer_addrs: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            sq_entries: 256,
            cq_entries: 4096,
            buffers: 1024,
            buffer_size: 4096,
            max_conns: 4096,
            recv_burst: 16,
            buffer_group: 0,
            peer_addrs: false,
        }
    }
}

/// What the handler wants after seeing bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub enum Action {
    /// Keep reading.
    Continue,
    /// Send what is queued, then close; no more `on_data`.
    Close,
}

/// Why a connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed its side (recv returned 0).
    Peer,
    /// The handler asked ([`Action::Close`], [`Ops::close`]).
    Local,
    /// A recv or send failed with this errno (reset, broken pipe ...).
    Error(i32),
}

/// What the loop drives. Every call runs on the loop's thread, between two
/// waits; none may block.
pub trait Handler {
    /// A connection was accepted.
    fn on_open(&mut self, ops: &mut Ops<'_>, conn: ConnId) {
        let _ = (ops, conn);
    }

    /// Bytes arrived. They live in the shard's buffer ring and go back to
    /// the kernel when this returns: keep a copy of what must outlive the
    /// call (a frame cut across reads).
    fn on_data(&mut self, ops: &mut Ops<'_>, conn: ConnId, bytes: &[u8]) -> Action;

    /// The peer ended its side (it may still read). [`Action::Close`]
    /// (the default) closes once what is queued is sent;
    /// [`Action::Continue`] keeps the connection for an answer still owed,
    /// and the handler closes it ([`Ops::close`]) once that is queued. No
    /// `on_data` follows either way.
    fn on_eof(&mut self, ops: &mut Ops<'_>, conn: ConnId) -> Action {
        let _ = (ops, conn);
        Action::Close
    }

    /// The connection is closing: called once, after which `conn` is
    /// refused everywhere. Its slot is reused (with a new generation) once
    /// the kernel has finished every operation that names it.
    fn on_close(&mut self, conn: ConnId, why: CloseReason) {
        let _ = (conn, why);
    }

    /// Another thread woke the loop ([`Waker::wake`] or [`Loop::post`]).
    fn on_wake(&mut self, ops: &mut Ops<'_>) {
        let _ = ops;
    }

    /// A send of `conn` wrote `bytes` (more than zero) of what was
    /// queued: the place to account for them (the engine's `written`) and
    /// queue more. Not called once the connection is closing.
    fn on_sent(&mut self, ops: &mut Ops<'_>, conn: ConnId, bytes: usize) {
        let _ = (ops, conn, bytes);
    }
}

/// Counters of one loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: u64,
    /// Accepted but closed at once: `max_conns` were open.
    pub refused: u64,
    /// Accept completions with an error (a cancelled accept is none).
    pub accept_errors: u64,
    /// Connections that began closing.
    pub closed: u64,
    /// Slots freed (every operation of the connection finished).
    pub freed: u64,
    /// Recv completions with bytes.
    pub recv_cqes: u64,
    /// Bytes received.
    pub recv_bytes: u64,
    /// Recvs that ended for want of buffers (`ENOBUFS`).
    pub enobufs: u64,
    /// Recvs cancelled because a connection took more than its burst.
    pub throttled: u64,
    /// Recvs armed again after they ended.
    pub rearms: u64,
    /// Send operations submitted (`send` or `sendmsg`).
    pub sends: u64,
    /// Of those, the plain `send`s of a single buffer.
    pub plain_sends: u64,
    /// Sends that wrote less than they offered.
    pub partial_sends: u64,
    /// Bytes sent.
    pub sent_bytes: u64,
    /// Wake-ups (eventfd or another ring's message).
    pub wakes: u64,
    /// Messages to another ring that failed.
    pub post_errors: u64,
}

/// Fixed-file table entries beyond `max_conns`. A multishot accept that
/// finds the table full has already taken the connection off the backlog,
/// and the kernel closes it (`ENFILE`): the headroom keeps that from
/// happening in the moment between reaching `max_conns` and the accept's
/// cancellation.
pub const ACCEPT_HEADROOM: u32 = 64;

/// Single-shot accepts armed per listener when peers' addresses are
/// wanted ([`Config::peer_addrs`]); an accept's token slot is
/// `listener * ADDR_ACCEPTS + i`.
pub const ADDR_ACCEPTS: u32 = 16;

/// Unused `Outgoing` boxes kept for reuse, at most.
const SPARE_OUTGOING: usize = 256;

/// The connection table and what the handler may do to it.
struct Core {
    conns: Slab<Conn>,
    /// The generation of each slot's current (or last) occupant.
    gens: Vec<u32>,
    /// Connections with sends to submit, or a close to start, this turn.
    dirty: Vec<ConnId>,
    /// Boxes, not values: each moves whole into a connection, where the
    /// kernel reads its msghdr at a fixed address.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Outgoing>>,
    stats: Stats,
    /// The address of the peer being opened (`on_open`), if known.
    opening_peer: Option<std::net::SocketAddr>,
    /// Connections whose recv ended and must be armed again.
    rearm: Vec<ConnId>,
}

impl Core {
    fn get(&self, id: ConnId) -> Option<&Conn> {
        let conn = self.conns.get(id.slot as usize)?;
        (self.gens[id.slot as usize] == id.gen).then_some(conn)
    }

    fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        let conn = self.conns.get_mut(id.slot as usize)?;
        (self.gens[id.slot as usize] == id.gen).then_some(conn)
    }

    fn insert(&mut self, conn: Conn) -> ConnId {
        let slot = self.conns.vacant_key();
        if slot == self.gens.len() {
            self.gens.push(0);
        }
        let gen = (self.gens[slot] + 1) & GEN_MASK;
        self.gens[slot] = gen;
        self.conns.insert(conn);
        ConnId {
            slot: slot as u32,
            gen,
        }
    }

    fn mark_dirty(&mut self, id: ConnId) {
        if let Some(conn) = self.get_mut(id) {
            if !conn.has(flag::DIRTY) {
                conn.flags |= flag::DIRTY;
                self.dirty.push(id);
            }
        }
    }

    fn send(&mut self, id: ConnId, bytes: Bytes) -> bool {
        let spare = &mut self.spare;
        let Some(conn) = self.conns.get_mut(id.slot as usize) else {
            return false;
        };
        if self.gens[id.slot as usize] != id.gen || !conn.is_open() {
            return false;
        }
        if !bytes.is_empty() {
            let out = conn
                .out
                .get_or_insert_with(|| spare.pop().unwrap_or_else(Outgoing::new));
            out.bufs.push(bytes);
            self.mark_dirty(id);
        }
        true
    }

    fn close(&mut self, id: ConnId) -> bool {
        match self.get_mut(id) {
            Some(conn) if conn.is_open() => {
                conn.flags |= flag::FLUSH_CLOSE;
                self.mark_dirty(id);
                true
            }
            _ => false,
        }
    }

    /// Puts `id` in the re-arm list, unless its recv is armed, already
    /// listed, or paused by the handler.
    fn rearm_recv(&mut self, id: ConnId) {
        if let Some(conn) = self.get_mut(id) {
            if !conn.has(flag::CLOSING | flag::RECV | flag::REARM | flag::PAUSED) {
                conn.flags |= flag::REARM;
                self.rearm.push(id);
            }
        }
    }

    fn recycle_outgoing(&mut self, mut out: Box<Outgoing>) {
        if self.spare.len() < SPARE_OUTGOING {
            out.clear();
            out.shrink();
            self.spare.push(out);
        }
    }
}

/// What a handler may do from inside a callback. Sends and closes take
/// effect when the turn's completions are all dispatched, so that one
/// send per connection carries everything queued in the turn.
pub struct Ops<'a> {
    core: &'a mut Core,
}

impl Ops<'_> {
    /// Queues `bytes` for `conn`. The same `Bytes` may be queued for any
    /// number of connections: each holds a reference, never a copy.
    /// `false` if the connection is gone or closing.
    pub fn send(&mut self, conn: ConnId, bytes: Bytes) -> bool {
        self.core.send(conn, bytes)
    }

    /// Closes `conn` once what is queued for it is sent. `false` if it is
    /// gone or already closing.
    pub fn close(&mut self, conn: ConnId) -> bool {
        self.core.close(conn)
    }

    /// Stops reading `conn` (backpressure: the handler holds what it was
    /// sent and wants no more until it has answered). The multishot recv
    /// is cancelled when its next bytes arrive; those and any the kernel
    /// delivers before the cancel lands still reach `on_data`. Unread
    /// bytes wait in the socket, and TCP pushes back on the peer.
    pub fn pause_recv(&mut self, conn: ConnId) {
        if let Some(c) = self.core.get_mut(conn) {
            c.flags |= flag::PAUSED;
        }
    }

    /// Reads `conn` again after [`Ops::pause_recv`].
    pub fn resume_recv(&mut self, conn: ConnId) {
        if let Some(c) = self.core.get_mut(conn) {
            if c.has(flag::PAUSED) {
                c.flags &= !flag::PAUSED;
                self.core.rearm_recv(conn);
            }
        }
    }

    /// Inside `on_open`, with [`Config::peer_addrs`]: the peer's address.
    /// The loop keeps no address per connection; a handler that needs it
    /// later keeps it.
    pub fn opening_peer(&self) -> Option<std::net::SocketAddr> {
        self.core.opening_peer
    }

    /// Whether `conn` is open (not gone, not closing).
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.core.get(conn).is_some_and(Conn::is_open)
    }
}

/// A listening socket and whether its multishot accept is armed.
struct Listener {
    fd: OwnedFd,
    armed: bool,
    /// With [`Config::peer_addrs`]: the single-shot accepts' address slots
    /// (boxed: the kernel writes to them while they are armed).
    addrs: Option<Box<[AcceptAddr]>>,
}

/// Where one single-shot accept writes its peer's address.
struct AcceptAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
    armed: bool,
}

/// One shard's completion loop. Create it on the thread that runs it (the
/// ring is set up for that single issuer); it is not `Send`.
pub struct Loop<H: Handler> {
    // Dropped first: closing the ring releases the buffer group and the
    // fixed files before the memory below goes away (see `Drop`).
    ring: Ring,
    bufs: BufRing,
    core: Core,
    handler: H,
    config: Config,
    listeners: Vec<Listener>,
    /// Accepting stopped at `max_conns` (or a full fixed-file table);
    /// resumes when a slot is freed.
    accept_paused: bool,
    /// [`Loop::stop_accepting`] was called: accepting never resumes.
    stopped: bool,
    waker: Waker,
    /// The eventfd read's target; boxed so that its address is stable.
    wake_buf: Box<u64>,
    /// Completions of the current turn, copied out of the ring.
    cqes: Vec<(u64, i32, u32)>,
    turn: u32,
}

impl<H: Handler> Loop<H> {
    /// Probes the kernel, sets up the ring, the fixed-file table, the
    /// buffer ring and the wake-up eventfd.
    pub fn new(config: Config, handler: H) -> Result<Loop<H>, Error> {
        if !config.buffers.is_power_of_two() || config.buffers > 32768 {
            return Err(Error::Config(format!(
                "buffers must be a power of two up to 32768, not {}",
                config.buffers
            )));
        }
        if config.buffer_size == 0 || config.max_conns == 0 || config.recv_burst == 0 {
            return Err(Error::Config(
                "buffer_size, max_conns and recv_burst must be at least 1".into(),
            ));
        }
        let nofile = nofile_limit();
        let table = u64::from(config.max_conns) + u64::from(ACCEPT_HEADROOM);
        if table > nofile {
            return Err(Error::Config(format!(
                "max_conns {} + {ACCEPT_HEADROOM} exceeds RLIMIT_NOFILE ({nofile}), \
                 which bounds the fixed-file table",
                config.max_conns
            )));
        }
        ring::probe()?;
        let cq = config.cq_entries.max(2 * u32::from(config.buffers));
        let ring = Ring::new(config.sq_entries, cq)?;
        ring.uring
            .submitter()
            .register_files_sparse(table as u32)
            .map_err(|e| Error::Io("register_files_sparse", e))?;
        let waker = Waker::new().map_err(|e| Error::Io("eventfd", e))?;
        // SAFETY: the loop's Drop cancels every operation and unregisters
        // the group, and `ring` is dropped before `bufs`.
        let bufs = unsafe {
            BufRing::register(
                &ring.uring.submitter(),
                config.buffer_group,
                config.buffers,
                config.buffer_size,
            )
        }
        .map_err(|e| Error::Io("register_buf_ring", e))?;
        let mut lp = Loop {
            ring,
            bufs,
            core: Core {
                // Sized once for every slot the table can hold (32 bytes
                // and 4 a slot): growing them by doubling while clients
                // arrive copies the whole table and faults in fresh pages
                // (with the allocator's huge pages, milliseconds) in the
                // middle of an accept burst. Untouched capacity costs no
                // memory.
                conns: Slab::with_capacity(table as usize),
                gens: Vec::with_capacity(table as usize),
                dirty: Vec::new(),
                spare: Vec::new(),
                stats: Stats::default(),
                opening_peer: None,
                rearm: Vec::new(),
            },
            handler,
            config,
            listeners: Vec::new(),
            accept_paused: false,
            stopped: false,
            waker,
            wake_buf: Box::new(0),
            cqes: Vec::new(),
            turn: 0,
        };
        lp.arm_wake()?;
        Ok(lp)
    }

    /// How the ring was set up, for the start-up log line.
    pub fn info(&self) -> &RingInfo {
        &self.ring.info
    }

    /// Accepts connections from `listener` (multishot, straight into the
    /// fixed-file table). Accepted sockets inherit the listener's options
    /// (`TCP_NODELAY`, buffer sizes): a direct descriptor has no fd for
    /// `setsockopt`.
    pub fn listen(&mut self, listener: TcpListener) -> Result<(), Error> {
        let addrs = self.config.peer_addrs.then(|| {
            (0..ADDR_ACCEPTS)
                .map(|_| AcceptAddr {
                    // SAFETY: sockaddr_storage is plain data; zero is valid.
                    storage: unsafe { std::mem::zeroed() },
                    len: 0,
                    armed: false,
                })
                .collect()
        });
        self.listeners.push(Listener {
            fd: listener.into(),
            armed: false,
            addrs,
        });
        if self.accept_paused {
            return Ok(());
        }
        self.arm_accept(self.listeners.len() - 1)
    }

    /// Stops accepting for good (shutdown): the accepts are cancelled and
    /// the listeners shut down, so that clients still in the backlog are
    /// refused instead of left waiting.
    pub fn stop_accepting(&mut self) {
        self.stopped = true;
        let _ = self.pause_accepting();
        for l in &self.listeners {
            // SAFETY: the listener's descriptor is open (owned by `l`).
            unsafe {
                libc::shutdown(l.fd.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
    }

    /// A handle any thread can use to wake this loop.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// This ring's descriptor, for another loop's [`post`](Self::post).
    pub fn ring_fd(&self) -> RawFd {
        self.ring.uring.as_raw_fd()
    }

    /// Wakes the loop whose [`ring_fd`](Self::ring_fd) is `target` with
    /// `IORING_OP_MSG_RING`: an entry in this ring's next submission, no
    /// syscall of its own. Success posts nothing here.
    pub fn post(&mut self, target: RawFd) -> Result<(), Error> {
        let entry = opcode::MsgRingData::new(Fd(target), 0, RING_MSG, None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(Token::new(Kind::RingMsgSent, 0, 0).encode());
        self.ring.push(&entry)
    }

    /// Queues `bytes` for `conn` (see [`Ops::send`]).
    pub fn send(&mut self, conn: ConnId, bytes: Bytes) -> bool {
        self.core.send(conn, bytes)
    }

    /// Closes `conn` once its queue is sent (see [`Ops::close`]).
    pub fn close(&mut self, conn: ConnId) -> bool {
        self.core.close(conn)
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, mutably.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// Runs `f` on the handler with the [`Ops`] a callback gets, between
    /// turns (a periodic sweep, a shutdown): what it queues leaves with
    /// the next turn.
    pub fn with_handler<T>(&mut self, f: impl FnOnce(&mut H, &mut Ops<'_>) -> T) -> T {
        f(
            &mut self.handler,
            &mut Ops {
                core: &mut self.core,
            },
        )
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.core.stats
    }

    /// Slots in use, closing ones included.
    pub fn connections(&self) -> usize {
        self.core.conns.len()
    }

    /// Buffers of the buffer ring that are ours right now (zero between
    /// turns: every buffer goes back as soon as its bytes are handled).
    pub fn buffers_out(&self) -> u32 {
        self.bufs.out()
    }

    /// One turn: submit what is queued (sends, re-arms, closes), wait for a
    /// completion or `timeout`, dispatch every completion there is.
    /// Returns how many were dispatched.
    pub fn turn(&mut self, timeout: Option<Duration>) -> Result<usize, Error> {
        self.prepare()?;
        self.ring.submit_and_wait(timeout)?;
        self.turn = self.turn.wrapping_add(1);
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .uring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let mut result = Ok(cqes.len());
        for &(user_data, res, flags) in &cqes {
            if let Err(e) = self.dispatch(user_data, res, flags) {
                result = Err(e);
                break;
            }
        }
        self.cqes = cqes;
        result
    }

    fn dispatch(&mut self, user_data: u64, res: i32, flags: u32) -> Result<(), Error> {
        let Some(token) = Token::decode(user_data) else {
            debug_assert!(false, "completion with foreign user_data {user_data:#x}");
            return Ok(());
        };
        let id = ConnId {
            slot: token.slot,
            gen: token.gen,
        };
        match token.kind {
            Kind::Accept => self.on_accept(token.slot, res, flags),
            Kind::Recv => self.on_recv(id, res, flags),
            Kind::Send => self.on_send(id, res),
            Kind::Cancel | Kind::Shutdown | Kind::Close => {
                self.op_done(id);
                Ok(())
            }
            Kind::CloseOrphan | Kind::AcceptCancel => Ok(()),
            Kind::Wake => {
                self.arm_wake()?;
                self.woken();
                Ok(())
            }
            Kind::RingMsg => {
                self.woken();
                Ok(())
            }
            Kind::RingMsgSent => {
                self.core.stats.post_errors += 1;
                Ok(())
            }
        }
    }

    fn woken(&mut self) {
        self.core.stats.wakes += 1;
        self.handler.on_wake(&mut Ops {
            core: &mut self.core,
        });
    }

    fn on_accept(&mut self, code: u32, res: i32, flags: u32) -> Result<(), Error> {
        let (listener, i) = (code / ADDR_ACCEPTS, (code % ADDR_ACCEPTS) as usize);
        let l = &mut self.listeners[listener as usize];
        let mut peer = None;
        match &mut l.addrs {
            Some(addrs) => {
                addrs[i].armed = false;
                if res >= 0 {
                    peer = sockaddr_to_std(&addrs[i].storage, addrs[i].len);
                }
            }
            None if !cqueue::more(flags) => l.armed = false,
            None => {}
        }
        if res >= 0 {
            let file = res as u32;
            let table = (self.config.max_conns + ACCEPT_HEADROOM) as usize;
            if self.core.conns.len() >= table {
                // Cannot happen (the table would be full first); closing
                // the file keeps the accounting right if it does.
                self.core.stats.refused += 1;
                let close = opcode::Close::new(Fixed(file))
                    .build()
                    .user_data(Token::new(Kind::CloseOrphan, 0, 0).encode());
                self.ring.push(&close)?;
            } else {
                self.core.stats.accepted += 1;
                let id = self.core.insert(Conn::new(file));
                self.arm_recv(id)?;
                if self.core.conns.len() >= self.config.max_conns as usize {
                    self.pause_accepting()?;
                }
                self.core.opening_peer = peer;
                self.handler.on_open(
                    &mut Ops {
                        core: &mut self.core,
                    },
                    id,
                );
                self.core.opening_peer = None;
            }
        } else if res != -libc::ECANCELED {
            self.core.stats.accept_errors += 1;
            // The fixed-file table is full: wait for a slot to free up
            // rather than spin on the same error.
            if matches!(-res, libc::ENFILE | libc::EMFILE) {
                self.accept_paused = true;
            }
        }
        // An accept that ended (an error, or cancelled while paused) is
        // armed again by `prepare` unless accepting is paused.
        Ok(())
    }

    /// Cancels every armed accept, at once (one extra `io_uring_enter`, at
    /// the limit only), so that clients past `max_conns` stay in the
    /// backlog instead of being taken off it.
    fn pause_accepting(&mut self) -> Result<(), Error> {
        self.accept_paused = true;
        for index in 0..self.listeners.len() {
            let l = &self.listeners[index];
            let armed = l.armed || l.addrs.iter().flat_map(|a| a.iter()).any(|a| a.armed);
            if armed {
                // Every accept on the listener, multishot or single-shot.
                let fd = Fd(l.fd.as_raw_fd());
                let cancel = opcode::AsyncCancel2::new(CancelBuilder::fd(fd).all())
                    .build()
                    .user_data(Token::new(Kind::AcceptCancel, index as u32, 0).encode());
                self.ring.push(&cancel)?;
            }
        }
        match self.ring.uring.submit() {
            Ok(_) => Ok(()),
            Err(e) if ring::transient(&e) => Ok(()),
            Err(e) => Err(Error::Io("io_uring_enter (submit)", e)),
        }
    }

    fn on_recv(&mut self, id: ConnId, res: i32, flags: u32) -> Result<(), Error> {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let turn = self.turn;
        let burst_cap = self.config.recv_burst;
        let Some(conn) = self.core.get_mut(id) else {
            // Cannot happen (a slot outlives its operations), but a buffer
            // must go back whatever completion names it.
            debug_assert!(false, "recv completion for a freed slot");
            if let Some(bid) = bid {
                self.bufs.take(bid, 0);
                self.bufs.recycle(bid);
            }
            return Ok(());
        };
        if !more {
            conn.flags &= !flag::RECV;
            conn.ops -= 1;
        }
        let open = conn.is_open();
        if res > 0 {
            let bid = bid.expect("a recv with bytes names its buffer");
            if conn.burst_turn != turn {
                conn.burst_turn = turn;
                conn.burst = 0;
            }
            conn.burst = conn.burst.saturating_add(1);
            // Past its burst, or paused by the handler: the recv is
            // cancelled (what the kernel delivers before the cancel lands
            // still goes to the handler).
            let throttle = more
                && open
                && (conn.burst >= burst_cap || conn.has(flag::PAUSED))
                && !conn.has(flag::THROTTLED);
            self.core.stats.recv_cqes += 1;
            self.core.stats.recv_bytes += res as u64;
            let action = if open {
                let bytes = self.bufs.take(bid, res as usize);
                let mut ops = Ops {
                    core: &mut self.core,
                };
                self.handler.on_data(&mut ops, id, bytes)
            } else {
                // Closing: what still arrives is read and dropped.
                self.bufs.take(bid, 0);
                Action::Continue
            };
            self.bufs.recycle(bid);
            if action == Action::Close {
                self.core.close(id);
            }
            if throttle {
                self.throttle(id)?;
            }
            if !more {
                self.rearm_recv(id);
            }
        } else {
            if let Some(bid) = bid {
                self.bufs.take(bid, 0);
                self.bufs.recycle(bid);
            }
            match -res {
                0 => {
                    // The peer ended its side; a half-closed peer still
                    // reads, so what is queued for it goes out first, and
                    // the handler may still owe it an answer.
                    let open = self.core.get(id).is_some_and(Conn::is_open);
                    let kept = open
                        && self.handler.on_eof(
                            &mut Ops {
                                core: &mut self.core,
                            },
                            id,
                        ) == Action::Continue;
                    let flush = self.core.get(id).is_some_and(Conn::pending);
                    if kept {
                        // The handler closes it once it has answered.
                    } else if flush {
                        // Closes once the queue is out (no-op if asked).
                        self.core.close(id);
                    } else {
                        self.begin_close(id, CloseReason::Peer)?;
                    }
                }
                libc::ENOBUFS => {
                    // The ring ran dry. Not the connection's fault: arm the
                    // recv again once buffers are back (`prepare`).
                    self.core.stats.enobufs += 1;
                    self.rearm_recv(id);
                }
                libc::ECANCELED => self.rearm_recv(id),
                errno => self.begin_close(id, CloseReason::Error(errno))?,
            }
        }
        self.maybe_free(id);
        Ok(())
    }

    fn on_send(&mut self, id: ConnId, res: i32) -> Result<(), Error> {
        let Some(conn) = self.core.get_mut(id) else {
            debug_assert!(false, "send completion for a freed slot");
            return Ok(());
        };
        conn.flags &= !flag::SENDING;
        conn.ops -= 1;
        let out = conn.out.as_mut().expect("a send in flight has its queue");
        let offered = out.in_flight_len();
        let written = usize::try_from(res).unwrap_or(0);
        out.complete(written);
        let closing = conn.has(flag::CLOSING);
        if closing {
            let out = conn.out.take().expect("checked above");
            self.core.recycle_outgoing(out);
        }
        self.core.stats.sent_bytes += written as u64;
        if res < 0 {
            if !closing {
                self.begin_close(id, CloseReason::Error(-res))?;
            }
        } else if res == 0 && offered > 0 {
            // A stream socket that takes nothing is broken; retrying would spin.
            self.begin_close(id, CloseReason::Error(libc::EPIPE))?;
        } else {
            if written < offered {
                self.core.stats.partial_sends += 1;
            }
            // The rest, and whatever was queued meanwhile, leaves in one
            // send at the start of the next turn.
            self.core.mark_dirty(id);
            if written > 0 && !closing {
                self.handler.on_sent(
                    &mut Ops {
                        core: &mut self.core,
                    },
                    id,
                    written,
                );
            }
        }
        self.maybe_free(id);
        Ok(())
    }

    /// A shutdown, close or cancel of `id` finished.
    fn op_done(&mut self, id: ConnId) {
        match self.core.get_mut(id) {
            Some(conn) => conn.ops -= 1,
            None => debug_assert!(false, "completion for a freed slot"),
        }
        self.maybe_free(id);
    }

    /// Starts closing: the handler hears `on_close` now; shutdown wakes any
    /// recv or send still armed (they complete, with 0 or EPIPE), and the
    /// fixed file is closed after it whatever shutdown returned (a hard
    /// link). The slot is freed when every operation has completed.
    fn begin_close(&mut self, id: ConnId, why: CloseReason) -> Result<(), Error> {
        let Some(conn) = self.core.get_mut(id) else {
            return Ok(());
        };
        if conn.has(flag::CLOSING) {
            return Ok(());
        }
        conn.flags = (conn.flags | flag::CLOSING) & !flag::FLUSH_CLOSE;
        let file = conn.file;
        conn.ops += 2;
        let idle_out = if conn.has(flag::SENDING) {
            None
        } else {
            conn.out.take()
        };
        if let Some(out) = idle_out {
            self.core.recycle_outgoing(out);
        }
        self.core.stats.closed += 1;
        let shutdown = opcode::Shutdown::new(Fixed(file), libc::SHUT_RDWR)
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(Token::new(Kind::Shutdown, id.slot, id.gen).encode());
        let close = opcode::Close::new(Fixed(file))
            .build()
            .user_data(Token::new(Kind::Close, id.slot, id.gen).encode());
        self.ring.push_chain(&[shutdown, close])?;
        self.handler.on_close(id, why);
        Ok(())
    }

    /// Frees the slot of a closing connection once nothing names it.
    fn maybe_free(&mut self, id: ConnId) {
        let done = self
            .core
            .get(id)
            .is_some_and(|c| c.has(flag::CLOSING) && c.ops == 0);
        if !done {
            return;
        }
        let conn = self.core.conns.remove(id.slot as usize);
        if let Some(out) = conn.out {
            self.core.recycle_outgoing(out);
        }
        self.core.stats.freed += 1;
        if self.accept_paused
            && !self.stopped
            && self.core.conns.len() < self.config.max_conns as usize
        {
            // `prepare` arms the accepts again.
            self.accept_paused = false;
        }
    }

    fn rearm_recv(&mut self, id: ConnId) {
        self.core.rearm_recv(id);
    }

    /// Cancels the multishot recv of a connection that took its burst; its
    /// last completion (`ECANCELED`) puts it in the re-arm list, behind
    /// the connections already served this turn.
    fn throttle(&mut self, id: ConnId) -> Result<(), Error> {
        let conn = self.core.get_mut(id).expect("throttled connection exists");
        conn.flags |= flag::THROTTLED;
        conn.ops += 1;
        self.core.stats.throttled += 1;
        let recv = Token::new(Kind::Recv, id.slot, id.gen).encode();
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::user_data(recv))
            .build()
            .user_data(Token::new(Kind::Cancel, id.slot, id.gen).encode());
        self.ring.push(&cancel)
    }

    fn arm_recv(&mut self, id: ConnId) -> Result<(), Error> {
        let conn = self.core.get_mut(id).expect("armed connection exists");
        conn.flags = (conn.flags | flag::RECV) & !(flag::REARM | flag::THROTTLED);
        conn.ops += 1;
        let recv = opcode::RecvMulti::new(Fixed(conn.file), self.bufs.bgid())
            .build()
            .user_data(Token::new(Kind::Recv, id.slot, id.gen).encode());
        self.ring.push(&recv)
    }

    /// Arms what is not armed of `index`'s accepts: its multishot accept,
    /// or each idle single-shot one of [`Config::peer_addrs`].
    fn arm_accept(&mut self, index: usize) -> Result<(), Error> {
        let listener = &mut self.listeners[index];
        if let Some(addrs) = &mut listener.addrs {
            let fd = Fd(listener.fd.as_raw_fd());
            for (i, a) in addrs.iter_mut().enumerate() {
                if a.armed {
                    continue;
                }
                a.armed = true;
                a.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                let code = index as u32 * ADDR_ACCEPTS + i as u32;
                let accept = opcode::Accept::new(
                    fd,
                    (&mut a.storage as *mut libc::sockaddr_storage).cast(),
                    &mut a.len,
                )
                .file_index(Some(io_uring::types::DestinationSlot::auto_target()))
                .build()
                .user_data(Token::new(Kind::Accept, code, 0).encode());
                self.ring.push(&accept)?;
            }
            return Ok(());
        }
        listener.armed = true;
        let accept = opcode::AcceptMulti::new(Fd(listener.fd.as_raw_fd()))
            .allocate_file_index(true)
            .build()
            .user_data(Token::new(Kind::Accept, index as u32 * ADDR_ACCEPTS, 0).encode());
        self.ring.push(&accept)
    }

    fn arm_wake(&mut self) -> Result<(), Error> {
        let read = opcode::Read::new(
            Fd(self.waker.raw_fd()),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(Token::new(Kind::Wake, 0, 0).encode());
        self.ring.push(&read)
    }

    /// Before each wait: arm again the accepts (unless paused) and recvs
    /// that ended, submit
    /// one send per connection with something queued and none in
    /// flight, and start the closes asked for.
    fn prepare(&mut self) -> Result<(), Error> {
        if !self.accept_paused {
            for index in 0..self.listeners.len() {
                let l = &self.listeners[index];
                let idle = match &l.addrs {
                    Some(addrs) => addrs.iter().any(|a| !a.armed),
                    None => !l.armed,
                };
                if idle {
                    self.arm_accept(index)?;
                }
            }
        }
        // Buffers come back within the turn that used them, so after a
        // turn the ring is full again; the check keeps a recv from being
        // armed on an empty ring, which fails at once with ENOBUFS.
        if self.bufs.available() > 0 {
            for id in std::mem::take(&mut self.core.rearm) {
                let Some(c) = self.core.get_mut(id) else {
                    continue;
                };
                if c.has(flag::PAUSED) {
                    // Listed before the pause: `resume_recv` lists it again.
                    c.flags &= !flag::REARM;
                    continue;
                }
                if c.has(flag::REARM) && !c.has(flag::CLOSING | flag::RECV) {
                    self.core.stats.rearms += 1;
                    self.arm_recv(id)?;
                }
            }
        }
        let mut dirty = std::mem::take(&mut self.core.dirty);
        for &id in &dirty {
            self.flush(id)?;
        }
        dirty.clear();
        if self.core.dirty.is_empty() {
            self.core.dirty = dirty;
        }
        Ok(())
    }

    fn flush(&mut self, id: ConnId) -> Result<(), Error> {
        let Some(conn) = self.core.get_mut(id) else {
            return Ok(());
        };
        conn.flags &= !flag::DIRTY;
        if conn.has(flag::CLOSING | flag::SENDING) {
            // Closing drops the queue; a send in flight marks the
            // connection dirty again when it completes.
            return Ok(());
        }
        if conn.pending() {
            let file = conn.file;
            conn.flags |= flag::SENDING;
            conn.ops += 1;
            let out = conn.out.as_mut().expect("pending implies a queue");
            let send = match out.prepare() {
                Prepared::One(buf, len) => {
                    self.core.stats.plain_sends += 1;
                    opcode::Send::new(Fixed(file), buf, len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                }
                Prepared::Many(msg) => opcode::SendMsg::new(Fixed(file), msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build(),
            };
            self.core.stats.sends += 1;
            let send = send.user_data(Token::new(Kind::Send, id.slot, id.gen).encode());
            return self.ring.push(&send);
        }
        let flush_close = conn.has(flag::FLUSH_CLOSE);
        if let Some(out) = conn.out.take() {
            // Idle: the connection holds no send memory.
            self.core.recycle_outgoing(out);
        }
        if flush_close {
            self.begin_close(id, CloseReason::Local)?;
            self.maybe_free(id);
        }
        Ok(())
    }
}

impl<H: Handler> Drop for Loop<H> {
    fn drop(&mut self) {
        // Every operation still armed (recvs that may pick a buffer, sends
        // reading queued bytes, the eventfd read) is cancelled and waited
        // for before the memory it uses is freed.
        let submitter = self.ring.uring.submitter();
        let _ = submitter.register_sync_cancel(Some(Timespec::new().sec(1)), CancelBuilder::any());
        let _ = submitter.unregister_buf_ring(self.bufs.bgid());
    }
}

/// The soft `RLIMIT_NOFILE`: the kernel refuses a larger fixed-file table.
pub(crate) fn nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}

#[cfg(test)]
impl<H: Handler> Loop<H> {
    /// The data pointers of what is queued or in flight for `conn`.
    pub(crate) fn queued_ptrs(&self, conn: ConnId) -> Vec<*const u8> {
        self.core
            .get(conn)
            .and_then(|c| c.out.as_ref())
            .map(|o| o.bufs.iter().map(|b| b.as_ptr()).collect())
            .unwrap_or_default()
    }
}

/// A peer address the kernel wrote, as the standard type.
fn sockaddr_to_std(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    match i32::from(storage.ss_family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
