//! `--runtime uring` (EXPERIMENTAL, issue 12 step 2): one shard served on
//! the completion loop of [`crate::uring`] instead of `tokio-uring`.
//!
//! What it serves: `GET /healthz`, `GET /echo` (RFC 6455 echo) and `GET
//! /ws` (pub/sub through the engine) on one shard, with the handshake,
//! idle, ping, message and close timeouts from a periodic sweep over the
//! connection table. What it does not serve yet is refused at start-up
//! ([`unsupported`]) or answered `501` (`/`, `/metrics`, `/poll`, `/sse`,
//! `/publish`); see `docs/configuration.md`.

mod serve;

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use ringcast_core::{Engine, Placement};

use crate::auth::{AuthMode, SharedPolicy};
use crate::config::Config;
use crate::runtime::Shared;
use crate::uring::{self, Loop, Waker};

use serve::{OneShard, Serve};

/// What `--runtime uring` cannot do yet, as the start-up error names it;
/// `None` if the configuration is one it serves.
pub fn unsupported(config: &Config) -> Option<String> {
    let mut what = Vec::new();
    if config.shards != 1 {
        what.push(format!("--shards {} (give --shards 1)", config.shards));
    }
    if config.redis.is_some() {
        what.push("--redis".to_string());
    }
    if config.auth_mode() == AuthMode::Jwt {
        what.push("--auth jwt".to_string());
    }
    if config.api_keys_file.is_some() {
        what.push("--api-keys-file".to_string());
    }
    if config.demo {
        what.push("--demo".to_string());
    }
    if config.max_connections_per_ip != 0 || config.max_connection_rate_per_ip != 0 {
        what.push("--max-connections-per-ip / --max-connection-rate-per-ip".to_string());
    }
    if !config.trusted_proxies.is_empty() {
        what.push("--trusted-proxies".to_string());
    }
    (!what.is_empty()).then(|| {
        format!(
            "--runtime uring is experimental and does not support {} yet",
            what.join(", ")
        )
    })
}

/// Starts the one shard's thread; returns it and the waker that
/// [`crate::runtime::Server::shutdown`] uses, once the shard accepts.
pub fn start(
    listener: std::net::TcpListener,
    config: Arc<Config>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<(JoinHandle<()>, Waker), String> {
    // Accepted sockets inherit the listener's options: a direct descriptor
    // has no fd for setsockopt.
    socket2::SockRef::from(&listener)
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY on the listener: {e}"))?;
    let (tx, rx) = mpsc::channel::<Result<Waker, String>>();
    let thread = std::thread::Builder::new()
        .name("shard-0".into())
        .spawn(move || run(listener, config, shared, shutdown, tx))
        .map_err(|e| format!("cannot start the shard thread: {e}"))?;
    match rx.recv() {
        Ok(Ok(waker)) => Ok((thread, waker)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the shard thread died at start-up".into()),
    }
}

fn run(
    listener: std::net::TcpListener,
    config: Arc<Config>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    started: mpsc::Sender<Result<Waker, String>>,
) {
    if config.pin_cores {
        crate::runtime::pin_to_core(0);
    }
    let engine = Engine::new(
        0,
        Placement::new(1, rand::random()),
        config.limits(),
        shared.epoch(),
        OneShard,
        Box::new(SharedPolicy(shared.policy().clone())),
    );
    let handler = Serve::new(config.clone(), shared.clone(), engine);
    // The table is bounded by RLIMIT_NOFILE; what is past it waits in the
    // listen backlog.
    // (The loop adds 64 entries of accept headroom; a few more are the
    // process's own descriptors.)
    let room = uring::nofile_limit().saturating_sub(256);
    let max_conns = (config.max_connections as u64).min(room).max(1) as u32;
    let loop_config = uring::Config {
        max_conns,
        buffer_size: config.read_buffer as u32,
        ..uring::Config::default()
    };
    let mut lp = match Loop::new(loop_config, handler) {
        Ok(lp) => lp,
        Err(e) => {
            let _ = started.send(Err(format!("shard 0: {e}")));
            return;
        }
    };
    if let Err(e) = lp.listen(listener) {
        let _ = started.send(Err(format!("shard 0: {e}")));
        return;
    }
    info!(ring = %lp.info(), max_conns, "shard 0 on the experimental completion loop");
    let _ = started.send(Ok(lp.waker()));
    shared.shard_ready();
    let period = crate::runtime::shard::sweep_period(&config);
    let mut next_sweep = Instant::now() + period;
    let mut grace_end: Option<Instant> = None;
    let mut aborted = false;
    loop {
        let now = Instant::now();
        let mut wake_at = next_sweep;
        if let Some(t) = lp.handler().engine_deadline() {
            wake_at = wake_at.min(t);
        }
        let timeout = wake_at
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        if let Err(e) = lp.turn(Some(timeout)) {
            warn!(error = %e, "the loop failed; the shard stops");
            break;
        }
        lp.with_handler(|h, ops| h.run_outputs(ops));
        let now = Instant::now();
        if now >= next_sweep || lp.handler().engine_deadline().is_some_and(|t| now >= t) {
            lp.with_handler(|h, ops| h.sweep(ops, now));
            next_sweep = now + period;
        }
        if grace_end.is_none() && *shutdown.borrow() {
            debug!("shutting down");
            grace_end = Some(now + config.shutdown_grace);
            lp.with_handler(|h, ops| h.begin_shutdown(ops));
        }
        if let Some(end) = grace_end {
            if lp.handler().open() == 0 && lp.connections() == 0 {
                break;
            }
            if now >= end && !aborted {
                warn!(
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
