//! A shard: one thread, one io_uring, one listener, the pub/sub engine of
//! that shard, and every connection the kernel hands that listener.
//!
//! A shard's state lives in `Rc`/`RefCell` and needs no locks. What it
//! shares with other threads is listed in `docs/architecture.md`: the mesh
//! inboxes (mutexed queues, one lock per batch), the metrics blocks (each
//! written by its shard only), the frames' reference counts (a published
//! frame is shared by every shard that delivers it), and the shutdown and
//! readiness signals. Time-based rules (handshake, idle, message and close
//! timeouts, keep-alive pings, history expiry) are enforced by one sweeper
//! task per shard instead of one timer per connection.

use std::cell::{Cell, RefCell};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;
use tokio::sync::{oneshot, watch, Notify};
use tokio_uring::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use ringcast_core::outbox::{Outbox, PushError};
use ringcast_core::wire::command::ErrorCode;
use ringcast_core::{ConnId, Engine, Grant, Msg, Output, Placement, Transport};

use crate::auth::SharedPolicy;
use ringcast_proto::close::CloseCode;
use ringcast_proto::handshake::StaticPolicy;

use super::conn::{self, Conn, Phase};
use super::mesh::{Inbox, Mesh};
use super::route::MeshRoute;
use super::writer::run_writer;
use super::Shared;
use crate::config::Config;
use crate::metrics::{Kind, ShardMetrics};

/// Where an HTTP publish learns its seq (or why it got none).
pub type SeqReceiver = oneshot::Receiver<Result<u64, ErrorCode>>;

/// Connections past the limit still get an answer (`/healthz`, or `503`
/// to anything else), up to this many extra; beyond that they are closed
/// without a word.
const OVERLOAD_SLACK: usize = 64;

/// How long a connection past the limit has to send its request head
/// (at most; `--handshake-timeout` if shorter).
const OVERLOAD_HEAD_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Shard {
    pub id: usize,
    pub config: Arc<Config>,
    pub policy: StaticPolicy,
    pub shared: Arc<Shared>,
    engine: RefCell<Engine<MeshRoute>>,
    /// Indexed by `ConnId::index()`.
    conns: RefCell<Vec<Option<Rc<Conn>>>>,
    open: Cell<usize>,
    /// HTTP publishes waiting for their seq, by the token the engine
    /// echoes in `Output::Published`.
    publishes: RefCell<Slab<oneshot::Sender<Result<u64, ErrorCode>>>>,
    closing: Cell<bool>,
    emptied: Notify,
}

impl Shard {
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// This shard's metrics block (written only by this shard).
    pub fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics()[self.id]
    }

    /// Moves a connection between the per-kind connection gauges.
    pub fn set_kind(&self, conn: &Conn, kind: Kind) {
        self.metrics().connection(conn.kind.replace(kind)).dec();
        self.metrics().connection(kind).inc();
    }

    fn conn(&self, id: ConnId) -> Option<Rc<Conn>> {
        self.conns
            .borrow()
            .get(id.index())
            .and_then(|c| c.clone())
            .filter(|c| c.id == id)
    }

    /// Runs `f` on the engine where it cannot ask for anything (the
    /// writer's take and written): no output to carry out, no counter to
    /// copy. The writer runs once per write; this keeps it at one borrow.
    pub fn engine_io<T>(&self, f: impl FnOnce(&mut Engine<MeshRoute>) -> T) -> T {
        f(&mut self.engine.borrow_mut())
    }

    /// Runs `f` on the engine, then carries out what it asked for.
    pub fn engine<T>(&self, f: impl FnOnce(&mut Engine<MeshRoute>) -> T) -> T {
        let r = f(&mut self.engine.borrow_mut());
        self.run_outputs();
        r
    }

    /// Runs `f` on a connection's outbox and wakes its writer if that
    /// made work for it. `None` once the connection is gone.
    pub fn outbox<T>(&self, conn: &Conn, f: impl FnOnce(&mut Outbox) -> T) -> Option<T> {
        let mut engine = self.engine.borrow_mut();
        let o = engine.outbox(conn.id)?;
        let r = f(o);
        if o.take_wake() {
            conn.work.notify_one();
        }
        Some(r)
    }

    /// Queues a protocol frame (pong, close) like a reply: past the outbox
    /// bound, within its slack. A peer that lets even these pile up is not
    /// reading; it is cut off.
    pub fn send_control(&self, conn: &Conn, frame: Bytes) {
        if self.outbox(conn, |o| o.push_control(frame)) == Some(Err(PushError::Full)) {
            debug!("peer does not read its replies; dropping it");
            self.outbox(conn, Outbox::close);
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
    }

    fn run_outputs(&self) {
        loop {
            let next = self.engine.borrow_mut().poll_output();
            let Some(out) = next else { break };
            match out {
                Output::Wake(id) => {
                    if let Some(c) = self.conn(id) {
                        c.work.notify_one();
                    }
                }
                Output::Resume(id) => {
                    if let Some(c) = self.conn(id) {
                        c.resume.notify_one();
                    }
                }
                Output::Drop(id) => {
                    if let Some(c) = self.conn(id) {
                        debug!(
                            shard = self.id,
                            "peer does not read its replies; dropping it"
                        );
                        c.work.notify_one();
                        let _ = c.stream.shutdown(Shutdown::Both);
                    }
                }
                Output::SlowClose(id) => {
                    if let Some(c) = self.conn(id) {
                        self.slow_close(&c);
                    }
                }
                Output::Close { conn, code, reason } => {
                    if let Some(c) = self.conn(conn) {
                        self.access_close(&c, code, reason);
                    }
                }
                Output::PollReady(id) => {
                    if let Some(c) = self.conn(id) {
                        c.poll_ready.notify_one();
                    }
                }
                Output::Published { token, result } => {
                    if let Some(tx) = self.publishes.borrow_mut().try_remove(token as usize) {
                        let _ = tx.send(result);
                    }
                }
            }
        }
        self.sync_metrics();
    }

    /// The slow-consumer policy dropped `conn` (the engine already
    /// discarded or finished its queue).
    fn slow_close(&self, conn: &Conn) {
        debug!(shard = self.id, "slow consumer disconnected");
        let deadline = Instant::now() + self.config.close_timeout;
        if conn.phase.get() == Phase::WebSocket {
            conn.start_close(self, CloseCode::POLICY, "slow consumer", deadline);
        } else {
            conn.deadline.set(Some(deadline));
        }
    }

    /// Access control ends `conn` (4400, 4401, 4403, 4429 on a WebSocket;
    /// an SSE stream just ends).
    fn access_close(&self, conn: &Conn, code: u16, reason: &str) {
        debug!(shard = self.id, code, reason, "access close");
        let deadline = Instant::now() + self.config.close_timeout;
        match conn.phase.get() {
            Phase::WebSocket => conn.start_close(self, CloseCode(code), reason, deadline),
            Phase::Stream => {
                self.outbox(conn, Outbox::finish);
                conn.deadline.set(Some(deadline));
            }
            _ => {}
        }
    }

    /// Copies the engine's counters into this shard's metrics block.
    fn sync_metrics(&self) {
        let engine = self.engine.borrow();
        let s = engine.stats();
        let m = self.metrics();
        m.published.set(s.published);
        m.delivered.set(s.delivered);
        m.subscriptions.set(s.subscriptions);
        m.topics.set(s.topics);
        m.retained_bytes.set(s.retained_bytes);
        m.slow_disconnects.set(s.slow_disconnects);
        m.slow_conflations.set(s.slow_conflations);
        m.overloaded.set(s.overloaded);
        m.deliveries_dropped.set(s.deliveries_dropped);
        m.history_evicted.set(s.history_evicted);
        m.history_expired.set(s.history_expired);
        m.denied.set(s.denied);
        m.auth_failures.set(s.auth_failures);
        m.rate_limited.set(s.rate_limited);
    }

    /// `POST /publish` and the demo feeder: publishes and, if asked,
    /// returns a receiver for the seq.
    pub fn publish(
        &self,
        topic: &str,
        data: Bytes,
        ack: bool,
    ) -> Result<Option<SeqReceiver>, ErrorCode> {
        self.publish_as(None, topic, data, ack).map_err(|(c, _)| c)
    }

    /// [`Shard::publish`] by a client admitted with `grant` (checked and
    /// rate-limited by the engine); `None` for the broker's own publishes.
    pub fn publish_as(
        &self,
        grant: Option<&Grant>,
        topic: &str,
        data: Bytes,
        ack: bool,
    ) -> Result<Option<SeqReceiver>, (ErrorCode, Option<f64>)> {
        let (token, rx) = if ack {
            let (tx, rx) = oneshot::channel();
            (
                Some(self.publishes.borrow_mut().insert(tx) as u64),
                Some(rx),
            )
        } else {
            (None, None)
        };
        let now = Instant::now();
        let result = self.engine(|e| match grant {
            Some(g) => e.publish_as(g, topic, data, token, now),
            None => e.publish(topic, data, token, now).map_err(|c| (c, None)),
        });
        if result.is_err() {
            if let Some(t) = token {
                self.publishes.borrow_mut().remove(t as usize);
            }
        }
        result.map(|()| rx)
    }

    /// Called by the reader and the writer as each ends; the second one
    /// removes the connection.
    pub fn task_done(&self, conn: &Conn) {
        let left = conn.tasks.get() - 1;
        conn.tasks.set(left);
        if left > 0 {
            return;
        }
        let m = self.metrics();
        m.connection(conn.kind.get()).dec();
        let close = conn.ws.borrow().as_ref().and_then(|ws| ws.close_sent());
        if let Some(code) = close {
            m.close_sent(code);
        }
        debug!(shard = self.id, conn = conn.id.index(), kind = ?conn.kind.get(), close = ?close.map(|c| c.0), "closed");
        let now = Instant::now();
        self.engine(|e| e.close(conn.id, now));
        if let Some(ip) = conn.ip.take() {
            self.shared.ip_limits().end(ip, now);
        }
        self.conns.borrow_mut()[conn.id.index()] = None;
        self.open.set(self.open.get() - 1);
        if self.open.get() == 0 {
            self.emptied.notify_one();
        }
    }

    fn admit(self: &Rc<Self>, stream: TcpStream, peer: std::net::SocketAddr) {
        let count = self.open.get();
        if count >= self.config.max_connections + OVERLOAD_SLACK {
            return; // dropping the stream closes it
        }
        let _ = stream.set_nodelay(true);
        self.metrics().accepted.inc();
        self.metrics().connection(Kind::Http).inc();
        let now = Instant::now();
        let id = self.engine(|e| {
            let grant = e.anonymous_grant();
            e.open(grant)
        });
        let conn = Rc::new(Conn::new(
            id,
            stream,
            peer.ip(),
            now + self.config.handshake_timeout,
        ));
        {
            let mut conns = self.conns.borrow_mut();
            if conns.len() <= id.index() {
                conns.resize(id.index() + 1, None);
            }
            conns[id.index()] = Some(conn.clone());
        }
        self.open.set(count + 1);
        debug!(shard = self.id, conn = id.index(), %peer, "accepted");
        let writer = {
            let shard = self.clone();
            let conn = conn.clone();
            async move {
                run_writer(&shard, &conn).await;
                shard.task_done(&conn);
            }
        };
        tokio_uring::spawn(writer);
        if count >= self.config.max_connections {
            // Over the limit (within the slack): one request is read, in
            // a short time, and answered: `/healthz` normally, anything
            // else `503` (see `conn::overloaded`).
            debug!(shard = self.id, "connection limit reached");
            let wait = self.config.handshake_timeout.min(OVERLOAD_HEAD_TIMEOUT);
            conn.deadline.set(Some(now + wait));
            let shard = self.clone();
            tokio_uring::spawn(async move {
                conn::overloaded(&shard, &conn).await;
                shard.task_done(&conn);
            });
            return;
        }
        tokio_uring::spawn(conn::serve(self.clone(), conn));
    }

    fn each_conn(&self, mut f: impl FnMut(&Rc<Conn>)) {
        // A snapshot: `f` may queue bytes, which borrows the engine, never
        // the table; but it must not hold the table borrowed either.
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().flatten().cloned().collect();
        for c in &conns {
            f(c);
        }
    }

    /// Enforces deadlines, sends keep-alive pings, expires history.
    fn sweep(&self, now: Instant) {
        let cfg = &self.config;
        self.engine(|e| e.handle_timeout(now));
        self.each_conn(|conn| {
            if let Some(deadline) = conn.deadline.get() {
                if now >= deadline {
                    debug!(shard = self.id, phase = ?conn.phase.get(), "deadline passed");
                    let _ = conn.stream.shutdown(Shutdown::Both);
                    conn.deadline.set(None);
                }
                return;
            }
            if conn.phase.get() == Phase::Stream {
                // SSE: a comment now and then keeps proxies from timing out.
                if now.saturating_duration_since(conn.last_rx.get()) >= cfg.ping_interval {
                    self.outbox(conn, |o| {
                        let _ = o.try_push(Bytes::from_static(
                            ringcast_core::wire::reply::SSE_HEARTBEAT,
                        ));
                    });
                    conn.last_rx.set(now);
                }
                return;
            }
            if conn.phase.get() != Phase::WebSocket {
                return;
            }
            if let Some(started) = conn.message_started.get() {
                if now.saturating_duration_since(started) >= cfg.message_timeout {
                    debug!(shard = self.id, "message timeout");
                    conn.message_started.set(None);
                    conn.start_close(
                        self,
                        CloseCode::POLICY,
                        "message timeout",
                        now + cfg.close_timeout,
                    );
                    return;
                }
            }
            let quiet = now.saturating_duration_since(conn.last_rx.get());
            if quiet >= cfg.idle_timeout {
                debug!(shard = self.id, "idle timeout");
                conn.start_close(
                    self,
                    CloseCode::GOING_AWAY,
                    "idle timeout",
                    now + cfg.close_timeout,
                );
            } else if quiet >= cfg.ping_interval && !conn.ping_sent.get() {
                conn.ping(self);
            }
        });
    }

    /// Stops accepting and starts closing every connection. Nothing owed
    /// is lost: a held poll answers (with what it has) and a `POST
    /// /publish` in flight gets its response before its connection ends;
    /// only then does the writer half-close.
    fn begin_shutdown(&self, listener_fd: RawFd) {
        self.closing.set(true);
        // Wakes the pending accept, which then fails and ends the loop.
        // SAFETY: the fd is the live listener owned by the accept task.
        unsafe {
            libc::shutdown(listener_fd, libc::SHUT_RDWR);
        }
        let deadline = Instant::now() + self.config.shutdown_grace;
        self.each_conn(|conn| match conn.phase.get() {
            Phase::WebSocket => conn.start_close(
                self,
                CloseCode::GOING_AWAY,
                "server shutting down",
                deadline,
            ),
            Phase::Http => {
                // A held long-poll answers now (with what it has); a reader
                // waiting for a request sees the end of input and finishes
                // after what is queued. Shutting the write side here would
                // lose an answer not yet queued.
                conn.poll_ready.notify_one();
                let _ = conn.stream.shutdown(Shutdown::Read);
                conn.deadline.set(Some(deadline));
            }
            Phase::Stream => {
                self.outbox(conn, Outbox::finish);
                conn.deadline.set(Some(deadline));
            }
            Phase::Closing => {}
        });
    }

    fn abort_all(&self) {
        self.each_conn(|conn| {
            let _ = conn.stream.shutdown(Shutdown::Both);
            self.outbox(conn, Outbox::close);
        });
    }

    async fn drained(&self) {
        while self.open.get() > 0 {
            self.emptied.notified().await;
        }
    }

    /// A WebSocket subscriber's transport (the engine's view of it).
    pub fn set_transport(&self, conn: &Conn, t: Transport) {
        self.engine(|e| e.set_transport(conn.id, t));
    }
}

/// The sweeper's period: fine enough for the shortest configured timeout.
pub(crate) fn sweep_period(cfg: &Config) -> Duration {
    [
        cfg.handshake_timeout,
        cfg.ping_interval,
        cfg.close_timeout,
        cfg.idle_timeout,
        cfg.message_timeout,
    ]
    .into_iter()
    .min()
    .unwrap_or(Duration::from_secs(1))
    .div_f32(4.0)
    .clamp(Duration::from_millis(10), Duration::from_secs(1))
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let res = listener.accept().await;
        if shard.closing.get() {
            break;
        }
        match res {
            Ok((stream, peer)) => shard.admit(stream, peer),
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                warn!(shard = shard.id, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    debug!(shard = shard.id, "accept loop stopped");
}

/// Runs one shard until shutdown; returns once its connections are gone
/// (or the grace period is over).
pub async fn run(
    id: usize,
    listener: std::net::TcpListener,
    config: Arc<Config>,
    shared: Arc<Shared>,
    inboxes: Arc<[Inbox<Msg>]>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = TcpListener::from_std(listener);
    let listener_fd = listener.as_raw_fd();
    let mesh = Rc::new(Mesh::new(id, inboxes, config.mesh_queue));
    let engine = Engine::new(
        id,
        Placement::new(config.shards, shared.placement_seed),
        config.limits(),
        shared.epoch(),
        MeshRoute(mesh.clone()),
        Box::new(SharedPolicy(shared.policy().clone())),
    );
    let engine = if shared.cluster().is_some() {
        engine.with_backend()
    } else {
        engine
    };
    let shard = Rc::new(Shard {
        id,
        policy: StaticPolicy {
            origins: config.allowed_origins.clone(),
            subprotocols: config.subprotocols.clone(),
        },
        config,
        shared: shared.clone(),
        engine: RefCell::new(engine),
        conns: RefCell::new(Vec::new()),
        open: Cell::new(0),
        publishes: RefCell::new(Slab::new()),
        closing: Cell::new(false),
        emptied: Notify::new(),
    });
    let flusher = {
        let mesh = mesh.clone();
        tokio_uring::spawn(async move { mesh.run_flusher().await })
    };
    let receiver = {
        let (shard, mesh) = (shard.clone(), mesh.clone());
        tokio_uring::spawn(async move {
            let mut batch = Vec::new();
            loop {
                mesh.recv(&mut batch).await;
                let now = Instant::now();
                shard.engine(|e| {
                    for msg in batch.drain(..) {
                        e.handle(msg, now);
                    }
                });
            }
        })
    };
    let acceptor = tokio_uring::spawn(accept_loop(shard.clone(), listener));
    let sweeper = {
        let shard = shard.clone();
        tokio_uring::spawn(async move {
            let mut tick = tokio::time::interval(sweep_period(&shard.config));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                shard.sweep(Instant::now());
            }
        })
    };
    // `--demo`: one feeder for the whole broker, on shard 0.
    let feeder = (id == 0 && shard.config.demo)
        .then(|| tokio_uring::spawn(super::demo::run_feeder(shard.clone())));
    shared.shard_ready();
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    debug!(shard = id, "shutting down");
    shard.begin_shutdown(listener_fd);
    let grace = shard.config.shutdown_grace;
    if tokio::time::timeout(grace, shard.drained()).await.is_err() {
        warn!(
            shard = id,
            left = shard.open.get(),
            "grace period over, dropping connections"
        );
        shard.abort_all();
        let _ = tokio::time::timeout(Duration::from_secs(1), shard.drained()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), acceptor).await;
    sweeper.abort();
    if let Some(feeder) = feeder {
        feeder.abort();
    }
    flusher.abort();
    receiver.abort();
}
