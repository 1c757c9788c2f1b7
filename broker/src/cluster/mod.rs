//! The cluster backend: one thread per process that joins its shards to
//! Redis (`--redis`).
//!
//! The thread is one more endpoint on the shards' mesh (index `shards`),
//! so shards talk to Redis exactly as they talk to each other: batched,
//! bounded, never blocking. It runs its own tokio runtime (Redis sockets
//! are ordinary epoll sockets; none of them touches a shard's io_uring)
//! with two connections: a multiplexed one for the scripts (pipelined)
//! and one for the subscription. A shard never waits on Redis: a publish
//! is answered when its script returns, or with `unavailable` within
//! `--redis-timeout`.
//!
//! Why one thread and not a connection per shard: Redis sends a copy of
//! every message per subscribed connection, and one subscription per node
//! keeps each topic's messages in one ordered stream.

mod backend;
pub mod health;
pub mod script;

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::watch;

use ringcast_core::{Msg, Placement};

pub use health::ClusterStats;

use crate::config::Config;
use crate::runtime::mesh::Inbox;

/// Starts the Redis thread. The URL is checked here: a bad one stops the
/// broker at start-up; an unreachable Redis does not (the node starts
/// degraded and keeps trying).
pub fn start(
    config: &Config,
    url: &str,
    placement: Placement,
    inboxes: Arc<[Inbox<Msg>]>,
    stats: Arc<ClusterStats>,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, String> {
    let client = redis::Client::open(url)
        .map_err(|e| format!("--redis {}: {e}", crate::config::redact_url(url)))?;
    let settings = backend::Settings::new(config);
    stats.set_down("connecting");
    std::thread::Builder::new()
        .name("redis".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("redis thread: no runtime: {e}");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(
                &rt,
                backend::run(client, settings, placement, inboxes, stats, shutdown),
            );
        })
        .map_err(|e| format!("cannot start the redis thread: {e}"))
}
