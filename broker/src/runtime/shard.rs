//! A shard: one thread, one io_uring, one listener, and every connection
//! the kernel hands that listener.
//!
//! Nothing in a shard is shared with other threads except the shutdown
//! signal and the readiness counter, so its state lives in `Rc`/`RefCell`
//! and needs no locks. Time-based rules (handshake, idle and close
//! timeouts, keep-alive pings) are enforced by one sweeper task per shard
//! scanning the connection table, instead of one timer per connection.

use std::cell::{Cell, RefCell};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::sync::{watch, Notify};
use tokio_uring::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::conn::{self, Conn, Phase};
use super::mesh::{Inbox, Mesh};
use super::pubsub::{Msg, PubSub};
use super::writer::run_writer;
use super::Shared;
use crate::config::Config;
use crate::error::HttpError;
use crate::metrics::{Kind, ShardMetrics};
use ringcast_proto::close::CloseCode;
use ringcast_proto::handshake::StaticPolicy;

/// Connections past the limit still get a `503` response, up to this many
/// extra; beyond that they are closed without a word.
const OVERLOAD_SLACK: usize = 64;

pub struct Shard {
    pub id: usize,
    pub config: Arc<Config>,
    pub policy: StaticPolicy,
    pub shared: Arc<Shared>,
    pub pubsub: PubSub,
    conns: RefCell<Slab<Rc<Conn>>>,
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

    /// Called by the reader and the writer as each ends; the second one
    /// removes the connection from the table.
    pub fn task_done(&self, key: usize, conn: &Conn) {
        let left = conn.tasks.get() - 1;
        conn.tasks.set(left);
        if left == 0 {
            let m = self.metrics();
            m.connection(conn.kind.get()).dec();
            let close = conn.ws.borrow().as_ref().and_then(|ws| ws.close_sent());
            if let Some(code) = close {
                m.close_sent(code);
            }
            debug!(shard = self.id, conn = key, kind = ?conn.kind.get(), close = ?close.map(|c| c.0), "closed");
            let mut conns = self.conns.borrow_mut();
            conns.remove(key);
            if conns.is_empty() {
                self.emptied.notify_one();
            }
        }
    }

    fn admit(self: &Rc<Self>, stream: TcpStream, peer: std::net::SocketAddr) {
        let count = self.conns.borrow().len();
        if count >= self.config.max_connections + OVERLOAD_SLACK {
            return; // dropping the stream closes it
        }
        let _ = stream.set_nodelay(true);
        self.metrics().accepted.inc();
        self.metrics().connection(Kind::Http).inc();
        let now = Instant::now();
        let conn = Rc::new(Conn::new(
            stream,
            self.config.outbox_size,
            now + self.config.handshake_timeout,
        ));
        let key = self.conns.borrow_mut().insert(conn.clone());
        debug!(shard = self.id, conn = key, %peer, "accepted");
        let writer = {
            let shard = self.clone();
            let conn = conn.clone();
            async move {
                run_writer(&conn.stream, &conn.outbox, shard.metrics()).await;
                shard.task_done(key, &conn);
            }
        };
        tokio_uring::spawn(writer);
        if count >= self.config.max_connections {
            debug!(shard = self.id, "connection limit reached");
            let _ = conn.outbox.try_push(HttpError::Overloaded.to_response());
            conn.outbox.finish();
            conn.phase.set(Phase::Closing);
            conn.deadline.set(Some(now + self.config.close_timeout));
            let shard = self.clone();
            tokio_uring::spawn(async move {
                conn::drain_only(&shard, &conn).await;
                shard.task_done(key, &conn);
            });
            return;
        }
        tokio_uring::spawn(conn::serve(self.clone(), conn, key));
    }

    /// Enforces deadlines and sends keep-alive pings.
    fn sweep(&self, now: Instant) {
        let cfg = &self.config;
        for (_, conn) in self.conns.borrow().iter() {
            if let Some(deadline) = conn.deadline.get() {
                if now >= deadline {
                    debug!(shard = self.id, phase = ?conn.phase.get(), "deadline passed");
                    let _ = conn.stream.shutdown(Shutdown::Both);
                    conn.deadline.set(None);
                }
                continue;
            }
            if conn.phase.get() == Phase::Stream {
                // SSE: a comment now and then keeps proxies from timing out.
                if now.saturating_duration_since(conn.last_rx.get()) >= cfg.ping_interval {
                    let _ = conn.outbox.try_push(bytes::Bytes::from_static(
                        ringcast_core::wire::reply::SSE_HEARTBEAT,
                    ));
                    conn.last_rx.set(now);
                }
                continue;
            }
            if conn.phase.get() != Phase::WebSocket {
                continue;
            }
            let quiet = now.saturating_duration_since(conn.last_rx.get());
            if quiet >= cfg.idle_timeout {
                debug!(shard = self.id, "idle timeout");
                conn.start_close(
                    CloseCode::GOING_AWAY,
                    "idle timeout",
                    now + cfg.close_timeout,
                );
            } else if quiet >= cfg.ping_interval && !conn.ping_sent.get() {
                conn.ping();
            }
        }
    }

    /// Stops accepting and starts closing every connection.
    fn begin_shutdown(&self, listener_fd: RawFd) {
        self.closing.set(true);
        // Wakes the pending accept, which then fails and ends the loop.
        // SAFETY: the fd is the live listener owned by the accept task.
        unsafe {
            libc::shutdown(listener_fd, libc::SHUT_RDWR);
        }
        let deadline = Instant::now() + self.config.shutdown_grace;
        for (_, conn) in self.conns.borrow().iter() {
            match conn.phase.get() {
                Phase::WebSocket => {
                    conn.start_close(CloseCode::GOING_AWAY, "server shutting down", deadline)
                }
                Phase::Http => {
                    // A held long-poll answers now (with what it has).
                    conn.poll_ready.notify_one();
                    let _ = conn.stream.shutdown(Shutdown::Both);
                }
                Phase::Stream => {
                    conn.outbox.finish();
                    conn.deadline.set(Some(deadline));
                }
                Phase::Closing => {}
            }
        }
    }

    fn abort_all(&self) {
        for (_, conn) in self.conns.borrow().iter() {
            let _ = conn.stream.shutdown(Shutdown::Both);
            conn.outbox.close();
        }
    }

    async fn drained(&self) {
        while !self.conns.borrow().is_empty() {
            self.emptied.notified().await;
        }
    }
}

/// The sweeper's period: fine enough for the shortest configured timeout.
fn sweep_period(cfg: &Config) -> Duration {
    [
        cfg.handshake_timeout,
        cfg.ping_interval,
        cfg.close_timeout,
        cfg.idle_timeout,
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
    let mesh = Rc::new(Mesh::new(id, inboxes));
    let shard = Rc::new(Shard {
        pubsub: PubSub::new(id, mesh.clone(), config.clone(), shared.clone()),
        id,
        policy: StaticPolicy {
            origins: config.allowed_origins.clone(),
            subprotocols: config.subprotocols.clone(),
        },
        config,
        shared: shared.clone(),
        conns: RefCell::new(Slab::new()),
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
                for msg in batch.drain(..) {
                    shard.pubsub.handle(msg);
                }
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
            left = shard.conns.borrow().len(),
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
