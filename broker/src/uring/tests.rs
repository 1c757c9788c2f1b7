//! The loop on loopback sockets: real kernel, real TCP, bounded time.
//!
//! Each test runs one loop on its own thread (created there: the ring is
//! single-issuer) and drives it with blocking std clients from others.
//! Handlers share their observations with the test through a mutex.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use socket2::{Domain, Protocol, Socket, Type};

use super::ring::{self, kernel_release, Mode};
use super::*;

/// Every wait in these tests gives up after this long.
const LIMIT: Duration = Duration::from_secs(30);

fn config() -> Config {
    Config {
        sq_entries: 256,
        cq_entries: 1024,
        buffers: 64,
        buffer_size: 4096,
        max_conns: 512,
        recv_burst: 16,
        buffer_group: 0,
        peer_addrs: false,
    }
}

fn listener(tune: impl FnOnce(&Socket)) -> TcpListener {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.set_reuse_address(true).unwrap();
    tune(&socket);
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(1024).unwrap();
    socket.into()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Byte `i` of the stream numbered `seed`: a position check, not only a
/// count, so that a lost, duplicated or reordered buffer shows.
fn pattern(seed: u64, i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(seed.wrapping_mul(7919)) % 251) as u8
}

/// A loop on its own thread, with a hook run after every turn.
struct Running<R> {
    addr: SocketAddr,
    /// `Loop::connections()` after the last turn.
    slots: Arc<AtomicUsize>,
    waker: Waker,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<(R, Stats)>,
}

impl<R> Running<R> {
    fn stop(self) -> (R, Stats) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
        self.thread.join().expect("loop thread panicked")
    }
}

fn start<H, R>(
    config: Config,
    listener: TcpListener,
    handler: H,
    mut tick: impl FnMut(&mut Loop<H>) + Send + 'static,
    finish: impl FnOnce(&mut Loop<H>) -> R + Send + 'static,
) -> Running<R>
where
    H: Handler + Send + 'static,
    R: Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let stopped = stop.clone();
    let slots = Arc::new(AtomicUsize::new(usize::MAX));
    let slots_in_loop = slots.clone();
    let thread = thread::spawn(move || {
        let mut lp = Loop::new(config, handler).expect("loop set-up");
        lp.listen(listener).unwrap();
        tx.send(lp.waker()).unwrap();
        let deadline = Instant::now() + 2 * LIMIT;
        while !stopped.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "loop ran past its deadline");
            lp.turn(Some(Duration::from_millis(50))).unwrap();
            tick(&mut lp);
            slots_in_loop.store(lp.connections(), Ordering::SeqCst);
        }
        // Between turns every buffer is back in the ring.
        assert_eq!(lp.buffers_out(), 0);
        (finish(&mut lp), lp.stats())
    });
    let waker = rx.recv_timeout(LIMIT).expect("loop started");
    Running {
        addr,
        slots,
        waker,
        stop,
        thread,
    }
}

#[test]
fn the_kernel_probe_passes_here() {
    ring::probe().expect("this machine has what the loop needs");
    let lp = Loop::new(config(), Echo::default()).unwrap();
    let info = lp.info().to_string();
    assert!(info.starts_with("io_uring: "), "{info}");
    let release = kernel_release();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    if (major, minor) >= (6, 1) {
        assert_eq!(lp.info().mode, Mode::DeferTaskrun, "{info}");
    }
}

#[test]
fn a_bad_configuration_is_refused_before_touching_the_kernel() {
    for bad in [
        Config {
            buffers: 48,
            ..config()
        },
        Config {
            recv_burst: 0,
            ..config()
        },
        Config {
            max_conns: u32::MAX,
            ..config()
        },
    ] {
        let err = Loop::new(bad, Echo::default()).err().unwrap();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
}

/// Sends back what it gets; closes after `quit`.
#[derive(Default)]
struct Echo {
    closes: Arc<Mutex<Vec<(ConnId, CloseReason)>>>,
}

impl Handler for Echo {
    fn on_data(&mut self, ops: &mut Ops<'_>, conn: ConnId, bytes: &[u8]) -> Action {
        if bytes == b"quit" {
            ops.send(conn, Bytes::from_static(b"bye"));
            return Action::Close;
        }
        assert!(ops.send(conn, Bytes::copy_from_slice(bytes)));
        Action::Continue
    }

    fn on_close(&mut self, conn: ConnId, why: CloseReason) {
        self.closes.lock().unwrap().push((conn, why));
    }
}

#[test]
fn echo_serves_200_connections_with_random_sizes() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 25;
    const ROUNDS: usize = 6;
    let echo = Echo::default();
    let closes = echo.closes.clone();
    let cfg = Config {
        // Small enough that one write takes several buffers, and one
        // connection's burst hits the cap.
        recv_burst: 2,
        ..config()
    };
    let server = start(cfg, listener(|_| {}), echo, |_| {}, |_| ());
    let addr = server.addr;
    let barrier = Arc::new(Barrier::new(THREADS));
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(t as u64);
                let mut conns: Vec<TcpStream> = (0..PER_THREAD).map(|_| connect(addr)).collect();
                // All 200 are open at once before any byte moves.
                barrier.wait();
                let mut bytes = 0;
                for _ in 0..ROUNDS {
                    for c in &mut conns {
                        let len = rng.gen_range(1..=20_000);
                        let sent: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                        c.write_all(&sent).unwrap();
                        let mut got = vec![0; len];
                        c.read_exact(&mut got).unwrap();
                        assert!(got == sent, "echo differs");
                        bytes += len;
                    }
                }
                bytes
            })
        })
        .collect();
    let total: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    wait_until("200 closes", || closes.lock().unwrap().len() == 200);
    wait_until("every slot freed", || {
        server.slots.load(Ordering::SeqCst) == 0
    });
    let ((), stats) = server.stop();
    assert_eq!(stats.accepted, 200);
    assert_eq!(stats.recv_bytes, total as u64);
    assert_eq!(stats.sent_bytes, total as u64);
    assert!(
        stats.throttled > 0,
        "the burst cap never applied: {stats:?}"
    );
    assert_eq!(stats.freed, 200, "{stats:?}");
    let closes = closes.lock().unwrap();
    assert!(closes.iter().all(|&(_, why)| why == CloseReason::Peer));
}

#[test]
fn action_close_flushes_then_closes() {
    let echo = Echo::default();
    let closes = echo.closes.clone();
    let server = start(config(), listener(|_| {}), echo, |_| {}, |_| ());
    let mut c = connect(server.addr);
    c.write_all(b"quit").unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    wait_until("the close", || closes.lock().unwrap().len() == 1);
    assert_eq!(closes.lock().unwrap()[0].1, CloseReason::Local);
    server.stop();
}

/// Checks every stream against `pattern`: the first byte names the stream.
#[derive(Default)]
struct Sink {
    streams: HashMap<ConnId, (u64, u64)>,
    done: Arc<Mutex<Vec<(u64, u64, CloseReason)>>>,
    wrong: Arc<AtomicUsize>,
}

impl Handler for Sink {
    fn on_data(&mut self, _ops: &mut Ops<'_>, conn: ConnId, bytes: &[u8]) -> Action {
        let mut bytes = bytes;
        if let Entry::Vacant(e) = self.streams.entry(conn) {
            e.insert((u64::from(bytes[0]), 0));
            bytes = &bytes[1..];
        }
        let (seed, pos) = self.streams.get_mut(&conn).expect("inserted above");
        for &b in bytes {
            if b != pattern(*seed, *pos) {
                self.wrong.fetch_add(1, Ordering::Relaxed);
            }
            *pos += 1;
        }
        Action::Continue
    }

    fn on_close(&mut self, conn: ConnId, why: CloseReason) {
        let (seed, pos) = self.streams.remove(&conn).unwrap_or((u64::MAX, 0));
        self.done.lock().unwrap().push((seed, pos, why));
    }
}

#[test]
fn a_dry_buffer_ring_loses_nothing_and_closes_nobody() {
    const SENDERS: u64 = 50;
    const LEN: u64 = 128 * 1024;
    let sink = Sink::default();
    let (done, wrong) = (sink.done.clone(), sink.wrong.clone());
    let cfg = Config {
        buffers: 4,
        buffer_size: 1024,
        recv_burst: 2,
        ..config()
    };
    let server = start(cfg, listener(|_| {}), sink, |_| {}, |_| ());
    let addr = server.addr;
    let senders: Vec<_> = (0..SENDERS)
        .map(|id| {
            thread::spawn(move || {
                let mut c = connect(addr);
                let stream: Vec<u8> = std::iter::once(id as u8)
                    .chain((0..LEN).map(|i| pattern(id, i)))
                    .collect();
                for chunk in stream.chunks(8 * 1024) {
                    c.write_all(chunk).unwrap();
                }
                // The server closes only after our FIN: read until it does.
                c.shutdown(Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                c.read_to_end(&mut rest).unwrap();
                assert!(rest.is_empty());
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    wait_until("every close", || {
        done.lock().unwrap().len() == SENDERS as usize
    });
    let ((), stats) = server.stop();
    assert!(stats.enobufs > 0, "the ring never ran dry: {stats:?}");
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
    let mut done = done.lock().unwrap().clone();
    done.sort_by_key(|d| d.0);
    for (id, (seed, pos, why)) in done.into_iter().enumerate() {
        assert_eq!((seed, pos, why), (id as u64, LEN, CloseReason::Peer));
    }
    assert_eq!(stats.recv_bytes, SENDERS * (LEN + 1));
}

/// Queues `chunks` on every new connection.
struct Pusher {
    chunks: Vec<Bytes>,
}

impl Handler for Pusher {
    fn on_open(&mut self, ops: &mut Ops<'_>, conn: ConnId) {
        for c in &self.chunks {
            assert!(ops.send(conn, c.clone()));
        }
    }

    fn on_data(&mut self, _ops: &mut Ops<'_>, _conn: ConnId, _bytes: &[u8]) -> Action {
        Action::Continue
    }
}

#[test]
fn a_slow_reader_gets_partial_sends_resubmitted_in_order() {
    const LEN: u64 = 2 * 1024 * 1024;
    let mut rng = StdRng::seed_from_u64(9);
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < LEN {
        let len = rng.gen_range(1..=8192).min(LEN - at);
        chunks.push(Bytes::from(
            (at..at + len).map(|i| pattern(3, i)).collect::<Vec<u8>>(),
        ));
        at += len;
    }
    // Accepted sockets inherit the listener's small send buffer.
    let l = listener(|s| s.set_send_buffer_size(4096).unwrap());
    let server = start(config(), l, Pusher { chunks }, |_| {}, |_| ());
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut c: TcpStream = socket.into();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    // Read late, then slowly.
    thread::sleep(Duration::from_millis(300));
    let mut buf = [0u8; 1000];
    let mut pos = 0;
    while pos < LEN {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {pos} bytes");
        for &b in &buf[..n] {
            assert_eq!(b, pattern(3, pos), "byte {pos}");
            pos += 1;
        }
        if pos % (256 * 1024) < n as u64 {
            thread::sleep(Duration::from_millis(20));
        }
    }
    drop(c);
    let ((), stats) = server.stop();
    assert_eq!(stats.sent_bytes, LEN);
    assert!(stats.partial_sends > 0, "{stats:?}");
    // Hundreds of chunks queued at once leave in gathering sendmsgs.
    assert!(stats.plain_sends < stats.sends, "{stats:?}");
}

/// Sends one frame to every connection when woken.
struct Fanout {
    frame: Bytes,
    conns: Vec<ConnId>,
    opened: Arc<AtomicUsize>,
    go: Arc<AtomicBool>,
    sent: bool,
}

impl Handler for Fanout {
    fn on_open(&mut self, _ops: &mut Ops<'_>, conn: ConnId) {
        self.conns.push(conn);
        self.opened.fetch_add(1, Ordering::SeqCst);
    }

    fn on_data(&mut self, _ops: &mut Ops<'_>, _conn: ConnId, _bytes: &[u8]) -> Action {
        Action::Continue
    }

    fn on_wake(&mut self, ops: &mut Ops<'_>) {
        if self.go.load(Ordering::SeqCst) && !self.sent {
            self.sent = true;
            for &c in &self.conns {
                assert!(ops.send(c, self.frame.clone()));
            }
        }
    }
}

#[test]
fn one_frame_fans_out_to_100_connections_without_a_copy() {
    const CONNS: usize = 100;
    let frame: Vec<u8> = (0..64 * 1024).map(|i| pattern(5, i)).collect();
    let opened = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(AtomicBool::new(false));
    let shared_ok = Arc::new(AtomicUsize::new(0));
    let handler = Fanout {
        frame: Bytes::from(frame.clone()),
        conns: Vec::new(),
        opened: opened.clone(),
        go: go.clone(),
        sent: false,
    };
    let ok = shared_ok.clone();
    let mut checked = false;
    // Right after the turn that queued the fan-out (before the next one
    // submits it), every connection's queue holds the very same bytes.
    let tick = move |lp: &mut Loop<Fanout>| {
        if lp.handler().sent && !checked {
            checked = true;
            let ptr = lp.handler().frame.as_ptr();
            let same = lp
                .handler()
                .conns
                .iter()
                .filter(|&&c| lp.queued_ptrs(c) == [ptr])
                .count();
            ok.store(same, Ordering::SeqCst);
        }
    };
    let server = start(config(), listener(|_| {}), handler, tick, |_| ());
    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| connect(server.addr)).collect();
    wait_until("100 opens", || opened.load(Ordering::SeqCst) == CONNS);
    go.store(true, Ordering::SeqCst);
    server.waker.wake();
    for c in &mut conns {
        let mut got = vec![0; frame.len()];
        c.read_exact(&mut got).unwrap();
        assert!(got == frame);
    }
    let ((), stats) = server.stop();
    assert_eq!(shared_ok.load(Ordering::SeqCst), CONNS);
    assert_eq!(stats.sent_bytes, (CONNS * frame.len()) as u64);
    // One buffer queued per connection (and its rest after a partial
    // send): every send is a plain `send`, none a `sendmsg`.
    assert!(stats.sends >= CONNS as u64, "{stats:?}");
    assert_eq!(stats.plain_sends, stats.sends, "{stats:?}");
}

/// What `Events` saw: "open" or "close", the connection, why it closed.
type Event = (&'static str, ConnId, Option<CloseReason>);

/// Records opens and closes in order.
#[derive(Default)]
struct Events {
    log: Arc<Mutex<Vec<Event>>>,
}

impl Handler for Events {
    fn on_open(&mut self, _ops: &mut Ops<'_>, conn: ConnId) {
        self.log.lock().unwrap().push(("open", conn, None));
    }

    fn on_data(&mut self, _ops: &mut Ops<'_>, _conn: ConnId, _bytes: &[u8]) -> Action {
        Action::Continue
    }

    fn on_close(&mut self, conn: ConnId, why: CloseReason) {
        self.log.lock().unwrap().push(("close", conn, Some(why)));
    }
}

#[test]
fn a_closed_peer_closes_once_and_its_slot_comes_back_with_a_new_generation() {
    let events = Events::default();
    let log = events.log.clone();
    let stale_refused = Arc::new(AtomicBool::new(false));
    let r = stale_refused.clone();
    let log_in_loop = log.clone();
    let tick = move |lp: &mut Loop<Events>| {
        let first = log_in_loop.lock().unwrap().first().map(|e| e.1);
        if let Some(first) = first {
            let closed = log_in_loop.lock().unwrap().iter().any(|e| e.0 == "close");
            if closed && !lp.send(first, Bytes::from_static(b"late")) {
                r.store(true, Ordering::SeqCst);
            }
        }
    };
    let server = start(config(), listener(|_| {}), events, tick, |_| ());
    let mut a = connect(server.addr);
    a.write_all(b"hello").unwrap();
    wait_until("the open", || log.lock().unwrap().len() == 1);
    drop(a);
    wait_until("the slot to be freed", || {
        log.lock().unwrap().len() == 2 && server.slots.load(Ordering::SeqCst) == 0
    });
    let _b = connect(server.addr);
    wait_until("the second open", || log.lock().unwrap().len() == 3);
    let ((), stats) = server.stop();
    let log = log.lock().unwrap();
    let (first, second) = (log[0].1, log[2].1);
    assert_eq!(log[0].0, "open");
    assert_eq!(log[1], ("close", first, Some(CloseReason::Peer)));
    assert_eq!(log[2].0, "open");
    assert_eq!(second.slot(), first.slot());
    assert_eq!(second.generation(), first.generation() + 1);
    assert!(stale_refused.load(Ordering::SeqCst));
    assert_eq!((stats.closed, stats.freed), (1, 1));
}

/// Counts wake-ups.
#[derive(Default)]
struct Wakes(usize);

impl Handler for Wakes {
    fn on_data(&mut self, _ops: &mut Ops<'_>, _conn: ConnId, _bytes: &[u8]) -> Action {
        Action::Continue
    }

    fn on_wake(&mut self, _ops: &mut Ops<'_>) {
        self.0 += 1;
    }
}

#[test]
fn another_thread_wakes_a_sleeping_loop_by_eventfd_and_by_msg_ring() {
    let (tx, rx) = mpsc::channel();
    let sleeper = thread::spawn(move || {
        let mut lp = Loop::new(config(), Wakes::default()).unwrap();
        tx.send((lp.waker(), lp.ring_fd())).unwrap();
        let deadline = Instant::now() + LIMIT;
        // Woken twice: once by the eventfd, once by the other ring.
        while lp.handler().0 < 2 && Instant::now() < deadline {
            lp.turn(Some(LIMIT)).unwrap();
        }
        lp.stats()
    });
    let (waker, ring_fd) = rx.recv_timeout(LIMIT).unwrap();
    thread::sleep(Duration::from_millis(50));
    waker.wake();
    thread::sleep(Duration::from_millis(50));
    let mut poster = Loop::new(config(), Wakes::default()).unwrap();
    poster.post(ring_fd).unwrap();
    poster.turn(Some(Duration::ZERO)).unwrap();
    let stats = sleeper.join().unwrap();
    assert_eq!(stats.wakes, 2, "{stats:?}");
    assert_eq!(poster.stats().post_errors, 0);
}

#[test]
fn max_conns_pauses_accepting_until_a_slot_frees() {
    let events = Events::default();
    let log = events.log.clone();
    let cfg = Config {
        max_conns: 2,
        ..config()
    };
    let server = start(cfg, listener(|_| {}), events, |_| {}, |_| ());
    let opens = || log.lock().unwrap().iter().filter(|e| e.0 == "open").count();
    let a = connect(server.addr);
    let _b = connect(server.addr);
    wait_until("two opens", || opens() == 2);
    // At the limit: the third completes its TCP handshake in the backlog
    // but is not accepted (the kernel would close it if the fixed-file
    // table were full) until a slot frees.
    let mut c = connect(server.addr);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(opens(), 2);
    drop(a);
    wait_until("the third open", || opens() == 3);
    // The third is served, not dropped.
    c.write_all(b"x").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 1];
    let err = c.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    let ((), stats) = server.stop();
    assert_eq!(
        (stats.accepted, stats.refused, stats.accept_errors),
        (3, 0, 0)
    );
}

/// This process's resident set, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// A measurement, not a check: the loop's user-space memory per idle
/// connection (the slab record, its generation, no buffer), without the
/// engine's session or the kernel's socket. Run alone:
/// `cargo test -p ringcast --lib uring::tests::idle_connection_rss -- --ignored --nocapture`
#[test]
#[ignore]
fn idle_connection_rss() {
    const CONNS: usize = 10_000;
    let events = Events::default();
    let log = events.log.clone();
    let cfg = Config {
        max_conns: CONNS as u32 + 100,
        buffers: 1024,
        ..config()
    };
    let server = start(cfg, listener(|_| {}), events, |_| {}, |_| ());
    let opens = || log.lock().unwrap().len();
    let mut conns: Vec<TcpStream> = (0..100).map(|_| connect(server.addr)).collect();
    wait_until("100 opens", || opens() == 100);
    thread::sleep(Duration::from_millis(200));
    let before = rss();
    conns.extend((100..CONNS).map(|_| TcpStream::connect(server.addr).unwrap()));
    wait_until("every open", || opens() == CONNS);
    thread::sleep(Duration::from_millis(200));
    let after = rss();
    // The test's own log of opens is 40 bytes an entry.
    let log_bytes = (CONNS - 100) * std::mem::size_of::<Event>();
    let per_conn = (after - before) as f64 / (CONNS - 100) as f64;
    eprintln!(
        "{} idle connections: RSS +{} KiB, {per_conn:.0} B per connection \
         ({} B of it the test's event log)",
        CONNS - 100,
        (after - before) / 1024,
        log_bytes / (CONNS - 100)
    );
    drop(conns);
    server.stop();
}

/// Records each peer's address as `on_open` sees it.
struct Peers {
    seen: Arc<Mutex<Vec<Option<SocketAddr>>>>,
}

impl Handler for Peers {
    fn on_open(&mut self, ops: &mut Ops<'_>, _conn: ConnId) {
        self.seen.lock().unwrap().push(ops.opening_peer());
    }

    fn on_data(&mut self, _ops: &mut Ops<'_>, _conn: ConnId, _bytes: &[u8]) -> Action {
        Action::Continue
    }
}

#[test]
fn single_shot_accepts_give_each_peer_its_own_address() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let cfg = Config {
        peer_addrs: true,
        ..config()
    };
    let handler = Peers { seen: seen.clone() };
    let server = start(cfg, listener(|_| {}), handler, |_| {}, |_| ());
    // More at once than there are accepts armed (ADDR_ACCEPTS).
    let clients: Vec<TcpStream> = (0..3 * ADDR_ACCEPTS)
        .map(|_| connect(server.addr))
        .collect();
    wait_until("every accept", || {
        seen.lock().unwrap().len() == clients.len()
    });
    let mut got: Vec<SocketAddr> = seen.lock().unwrap().iter().map(|a| a.unwrap()).collect();
    let mut want: Vec<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    drop(clients);
    server.stop();

    // Without the option there is no address (one multishot accept).
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = Peers { seen: seen.clone() };
    let server = start(config(), listener(|_| {}), handler, |_| {}, |_| ());
    let c = connect(server.addr);
    wait_until("the accept", || seen.lock().unwrap().len() == 1);
    assert_eq!(seen.lock().unwrap()[0], None);
    drop(c);
    server.stop();
}

/// Pauses reading after each `PAUSE_AFTER` bytes until woken; counts bytes.
struct Pauser {
    got: Arc<AtomicUsize>,
    conn: Option<ConnId>,
    since_pause: usize,
}

const PAUSE_AFTER: usize = 64 * 1024;

impl Handler for Pauser {
    fn on_open(&mut self, _ops: &mut Ops<'_>, conn: ConnId) {
        self.conn = Some(conn);
    }

    fn on_data(&mut self, ops: &mut Ops<'_>, conn: ConnId, bytes: &[u8]) -> Action {
        self.got.fetch_add(bytes.len(), Ordering::SeqCst);
        self.since_pause += bytes.len();
        if self.since_pause >= PAUSE_AFTER {
            ops.pause_recv(conn);
        }
        Action::Continue
    }

    fn on_wake(&mut self, ops: &mut Ops<'_>) {
        if let Some(conn) = self.conn {
            self.since_pause = 0;
            ops.resume_recv(conn);
        }
    }
}

#[test]
fn a_paused_connection_is_not_read_until_resumed() {
    let got = Arc::new(AtomicUsize::new(0));
    let handler = Pauser {
        got: got.clone(),
        conn: None,
        since_pause: 0,
    };
    // A small receive buffer, so that the peer's writes stall while paused.
    let l = listener(|s| s.set_recv_buffer_size(4096).unwrap());
    let server = start(config(), l, handler, |_| {}, |_| ());
    const LEN: usize = 4 * 1024 * 1024;
    let addr = server.addr;
    let writer = thread::spawn(move || {
        let mut c = connect(addr);
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0;
        while sent < LEN {
            c.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
        c
    });
    // Paused: what was read stops near the pause point (the reads already
    // under way and the socket buffers are all that may still come).
    wait_until("the first pause", || {
        got.load(Ordering::SeqCst) >= PAUSE_AFTER
    });
    thread::sleep(Duration::from_millis(200));
    let paused_at = got.load(Ordering::SeqCst);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(got.load(Ordering::SeqCst), paused_at, "read while paused");
    assert!(paused_at < LEN / 2, "{paused_at}");
    // Resumed over and over, everything arrives.
    let mut rounds = 0;
    while got.load(Ordering::SeqCst) < LEN {
        server.waker.wake();
        thread::sleep(Duration::from_millis(5));
        rounds += 1;
        assert!(rounds < 20_000, "stalled at {}", got.load(Ordering::SeqCst));
    }
    assert_eq!(got.load(Ordering::SeqCst), LEN);
    drop(writer.join().unwrap());
    let ((), stats) = server.stop();
    assert!(stats.throttled > 0, "{stats:?}");
}
