//! What an idle subscribed `/ws` connection holds in the engine's heap
//! (issue 12's per-connection byte budget), counted by a global allocator
//! that keeps the live allocations of this test binary.
//!
//! The connections are driven the way the completion loop's `serve.rs`
//! drives them: a session is opened, the upgrade response goes through its
//! outbox and is written, the client subscribes to one of 100 topics, the
//! reply is written, and then nothing happens. Whatever is still allocated
//! then is what every idle subscriber costs on the heap, apart from the
//! session table itself (one entry per session, reported apart).
//!
//! Run with `--nocapture` to see the figures; the test fails if an idle
//! connection holds more heap than the budget below.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use ringcast_core::wire::client;
use ringcast_core::{
    AllowAll, ConnId, Engine, Limits, Msg, Output, Placement, Route, ShardId, Transport,
};

/// Allocations smaller than this are per-connection records; larger ones
/// are the shard's tables (the session slab, the topic map), which grow by
/// doubling and are reported apart.
const TABLE: usize = 4096;

struct Counting;

static SMALL_ALLOCS: AtomicI64 = AtomicI64::new(0);
static SMALL_BYTES: AtomicI64 = AtomicI64::new(0);
static TABLE_BYTES: AtomicI64 = AtomicI64::new(0);

fn track(size: usize, sign: i64) {
    if size < TABLE {
        SMALL_ALLOCS.fetch_add(sign, Relaxed);
        SMALL_BYTES.fetch_add(sign * size as i64, Relaxed);
    } else {
        TABLE_BYTES.fetch_add(sign * size as i64, Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            track(l.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        track(l.size(), -1);
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            track(l.size(), -1);
            track(new, 1);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Live {
    small_allocs: i64,
    small_bytes: i64,
    table_bytes: i64,
}

fn live() -> Live {
    Live {
        small_allocs: SMALL_ALLOCS.load(Relaxed),
        small_bytes: SMALL_BYTES.load(Relaxed),
        table_bytes: TABLE_BYTES.load(Relaxed),
    }
}

/// One shard: nothing ever leaves it.
struct Alone;

impl Route for Alone {
    fn try_send(&mut self, _: ShardId, msg: Msg) -> Result<(), Msg> {
        Err(msg)
    }

    fn send(&mut self, _: ShardId, _: Msg) {}
}

/// Writes everything the outbox holds, as the loop does: take a batch,
/// send it, account it as written.
fn flush(engine: &mut Engine<Alone>, conn: ConnId, batch: &mut Vec<Bytes>) {
    loop {
        engine.take_batch(conn, batch, 64);
        if batch.is_empty() {
            return;
        }
        let n = batch.iter().map(Bytes::len).sum();
        batch.clear();
        engine.written(conn, n);
    }
}

fn run_outputs(engine: &mut Engine<Alone>, batch: &mut Vec<Bytes>) {
    while let Some(out) = engine.poll_output() {
        if let Output::Wake(c) = out {
            flush(engine, c, batch);
        }
    }
}

/// An upgrade response of the size the broker sends.
fn upgrade_response() -> Bytes {
    Bytes::from(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            .to_vec(),
    )
}

#[derive(Debug, Clone, Copy)]
struct PerConn {
    allocs: f64,
    bytes: f64,
}

fn per_conn(before: Live, after: Live, n: usize) -> PerConn {
    PerConn {
        allocs: (after.small_allocs - before.small_allocs) as f64 / n as f64,
        bytes: (after.small_bytes - before.small_bytes) as f64 / n as f64,
    }
}

#[test]
fn an_idle_subscribed_websocket_holds_little_engine_heap() {
    const CONNS: usize = 10_000;
    const TOPICS: usize = 100;
    let now = Instant::now();
    let mut engine = Engine::new(
        0,
        Placement::new(1, [1, 2, 3, 4]),
        Limits::default(),
        "e",
        Alone,
        Box::new(AllowAll),
    );
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("lg.mem.{i}")).collect();
    let mut batch = Vec::with_capacity(64);
    let mut conns = Vec::with_capacity(CONNS);
    let start = live();

    for _ in 0..CONNS {
        let grant = engine.anonymous_grant();
        conns.push(engine.open(grant));
    }
    let opened = live();

    for &c in &conns {
        engine.set_transport(c, Transport::WebSocket);
        engine
            .outbox(c)
            .unwrap()
            .push_response(upgrade_response())
            .unwrap();
        flush(&mut engine, c, &mut batch);
    }
    let upgraded = live();

    for (i, &c) in conns.iter().enumerate() {
        let cmd = Bytes::from(client::subscribe(&topics[i % TOPICS]));
        engine.command(c, &cmd, now);
        run_outputs(&mut engine, &mut batch);
        flush(&mut engine, c, &mut batch);
    }
    let subscribed = live();
    assert_eq!(engine.stats().subscriptions, CONNS as i64);

    let open = per_conn(start, opened, CONNS);
    let upgrade = per_conn(opened, upgraded, CONNS);
    let subscribe = per_conn(upgraded, subscribed, CONNS);
    let idle = per_conn(start, subscribed, CONNS);
    eprintln!("engine heap per idle subscribed /ws connection ({CONNS} over {TOPICS} topics):");
    eprintln!(
        "  open:      {:5.2} allocations, {:6.1} B",
        open.allocs, open.bytes
    );
    eprintln!(
        "  upgrade:   {:5.2} allocations, {:6.1} B (the upgrade response, written)",
        upgrade.allocs, upgrade.bytes
    );
    eprintln!(
        "  subscribe: {:5.2} allocations, {:6.1} B (the subscription, its reply written)",
        subscribe.allocs, subscribe.bytes
    );
    eprintln!(
        "  total:     {:5.2} allocations, {:6.1} B; tables (session slab, topic map, \
         subscriber slabs) {} B in all, {:.1} B per connection",
        idle.allocs,
        idle.bytes,
        subscribed.table_bytes - start.table_bytes,
        (subscribed.table_bytes - start.table_bytes) as f64 / CONNS as f64,
    );

    // The budget: an idle connection's outbox holds no queue (nothing is
    // queued) and no control runs (its reply was written), and its one
    // subscription is one 32-byte entry in a list of one (the topic name
    // is shared), plus its share of the topic's subscriber slab (16 bytes
    // an entry, grown by doubling: about 20 bytes at 100 a topic).
    assert_eq!(upgrade.allocs, 0.0, "a written outbox keeps no queue");
    assert!(
        idle.allocs <= 1.05,
        "{:.2} allocations per idle connection",
        idle.allocs
    );
    assert!(
        idle.bytes <= 56.0,
        "{:.1} B per idle connection",
        idle.bytes
    );
    // The session table grows by chunks: its size follows the sessions
    // (176 bytes each, one chunk of slack), not the next power of two.
    let tables = (subscribed.table_bytes - start.table_bytes) as f64 / CONNS as f64;
    assert!(tables <= 192.0, "{tables:.1} B of tables per connection");

    for c in conns {
        engine.close(c, now);
    }
    // The shard's own queues keep the capacity they grew to; nothing of
    // the connections stays.
    let kept = live().small_allocs - start.small_allocs;
    assert!(kept < 16, "{kept} allocations left after every close");
}
