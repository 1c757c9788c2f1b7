//! A shard: one thread running the completion loop of [`crate::uring`].
//!
//! One thread per shard, each with its own ring, listener (SO_REUSEPORT),
//! engine and connection table ([`serve::Serve`], the loop's handler).
//! Between turns a shard takes the mesh's messages for it, carries out
//! what its engine asked for, and sends its own batches to other shards
//! (and the Redis thread): one batch per destination per turn, and a
//! wake-up (the destination's eventfd) only when the destination's inbox
//! was empty. Timed work (timeouts, pings, held polls, the demo feeder,
//! history expiry) is a periodic sweep plus the nearest deadline the shard
//! knows of: no timer per connection.

use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use ringcast_core::{Engine, Msg, Placement};

use crate::auth::SharedPolicy;
use crate::config::Config;
use crate::runtime::mesh::{Inbox, Mesh};
use crate::runtime::route::MeshRoute;
use crate::runtime::Shared;
use crate::uring::{self, Loop, Waker};

use super::serve::{Serve, OVERLOAD_SLACK};

/// Starts one thread per listener (shard); returns them and the wakers
/// that [`crate::runtime::Server::shutdown`] uses, once every shard
/// accepts.
pub fn start(
    listeners: Vec<std::net::TcpListener>,
    config: Arc<Config>,
    shared: Arc<Shared>,
    inboxes: Arc<[Inbox<Msg>]>,
    shutdown: watch::Receiver<bool>,
) -> Result<(Vec<JoinHandle<()>>, Vec<Waker>), String> {
    let (tx, rx) = mpsc::channel::<Result<Waker, String>>();
    let mut threads = Vec::with_capacity(listeners.len());
    for (id, listener) in listeners.into_iter().enumerate() {
        // Accepted sockets inherit the listener's options: a direct
        // descriptor has no fd for setsockopt.
        socket2::SockRef::from(&listener)
            .set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY on the listener: {e}"))?;
        let (config, shared, inboxes) = (config.clone(), shared.clone(), inboxes.clone());
        let (shutdown, tx) = (shutdown.clone(), tx.clone());
        let thread = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || run(id, listener, config, shared, inboxes, shutdown, tx))
            .map_err(|e| format!("cannot start a shard thread: {e}"))?;
        threads.push(thread);
    }
    drop(tx);
    let mut wakers = Vec::with_capacity(threads.len());
    for _ in 0..threads.len() {
        match rx.recv() {
            Ok(Ok(waker)) => wakers.push(waker),
            Ok(Err(e)) => {
                for w in &wakers {
                    w.wake();
                }
                return Err(e);
            }
            Err(_) => return Err("a shard thread died at start-up".into()),
        }
    }
    Ok((threads, wakers))
}

fn run(
    id: usize,
    listener: std::net::TcpListener,
    config: Arc<Config>,
    shared: Arc<Shared>,
    inboxes: Arc<[Inbox<Msg>]>,
    shutdown: watch::Receiver<bool>,
    started: mpsc::Sender<Result<Waker, String>>,
) {
    if config.pin_cores {
        crate::runtime::pin_to_core(id);
    }
    let mesh = Rc::new(Mesh::new(id, inboxes.clone(), config.mesh_queue));
    let engine = Engine::new(
        id,
        Placement::new(config.shards, shared.placement_seed()),
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
    let handler = Serve::new(id, config.clone(), shared.clone(), engine, mesh);
    // The table is bounded by RLIMIT_NOFILE; what is past it waits in the
    // listen backlog. Past --max-connections, a slack of connections is
    // still taken to be answered `503` (or `/healthz`).
    // (The loop adds 64 entries of accept headroom; a few more are the
    // process's own descriptors.)
    let room = uring::nofile_limit().saturating_sub(256);
    let wanted = (config.max_connections + OVERLOAD_SLACK) as u64;
    let max_conns = wanted.min(room).max(1) as u32;
    let loop_config = uring::Config {
        max_conns,
        buffer_size: config.read_buffer as u32,
        buffers: config.recv_buffers,
        peer_addrs: shared.ip_limits().is_active(),
        ..uring::Config::default()
    };
    let mut lp = match Loop::new(loop_config, handler) {
        Ok(lp) => lp,
        Err(e) => {
            let _ = started.send(Err(format!("shard {id}: {e}")));
            return;
        }
    };
    if let Err(e) = lp.listen(listener) {
        let _ = started.send(Err(format!("shard {id}: {e}")));
        return;
    }
    inboxes[id].set_waker(lp.waker());
    debug!(shard = id, ring = %lp.info(), max_conns, "shard on the completion loop");
    if id == 0 {
        info!(ring = %lp.info(), "shards on the completion loop");
    }
    // Ready before `start` hears of it: once it returns (and the broker
    // says it listens), `/healthz` must not answer "starting".
    shared.shard_ready();
    let _ = started.send(Ok(lp.waker()));
    let period = sweep_period(&config);
    let mut next_sweep = Instant::now() + period;
    let mut grace_end: Option<Instant> = None;
    let mut aborted = false;
    loop {
        let now = Instant::now();
        let mut wake_at = next_sweep;
        if let Some(t) = lp.handler().deadline() {
            wake_at = wake_at.min(t);
        }
        let timeout = wake_at
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        if let Err(e) = lp.turn(Some(timeout)) {
            warn!(shard = id, error = %e, "the loop failed; the shard stops");
            break;
        }
        let now = Instant::now();
        let sweep = now >= next_sweep;
        if sweep {
            next_sweep = now + period;
        }
        let timed = sweep || lp.handler().deadline().is_some_and(|t| now >= t);
        shared.metrics()[id].loop_stats(&lp.stats());
        lp.with_handler(|h, ops| {
            if timed {
                h.timers(ops, now, sweep);
            }
            h.after_turn(ops);
        });
        if grace_end.is_none() && *shutdown.borrow() {
            debug!(shard = id, "shutting down");
            grace_end = Some(now + config.shutdown_grace);
            lp.stop_accepting();
            lp.with_handler(|h, ops| {
                h.begin_shutdown(ops);
                h.after_turn(ops);
            });
        }
        if let Some(end) = grace_end {
            if lp.handler().open() == 0 && lp.connections() == 0 {
                break;
            }
            if now >= end && !aborted {
                warn!(
                    shard = id,
                    left = lp.handler().open(),
                    "grace period over, dropping connections"
                );
                aborted = true;
                lp.with_handler(|h, ops| h.abort_all(ops));
            }
            if now >= end + Duration::from_secs(1) {
                break;
            }
        }
    }
}

/// The sweep's period: fine enough for the shortest configured timeout.
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
