//! The runtime: the only code that touches sockets, threads, rings and
//! clocks.
//!
//! [`start`] binds one SO_REUSEPORT listener per shard ([`listener`]),
//! starts one OS thread per shard running its own completion loop
//! ([`shard`], on [`crate::uring`]) and, with `--redis`, the Redis thread,
//! and returns once every shard accepts. [`Server::shutdown`] stops
//! accepting, sends close 1001 to every WebSocket, lets owed answers go
//! out and waits a bounded time.
//!
//! A shard's connections are records in its loop's table, driven by
//! completions through [`serve`] (the loop's handler), which reads HTTP
//! ([`http`]), the HTTP pub/sub endpoints ([`endpoints`]) and WebSockets
//! ([`ws`]) and feeds the shard's engine. The rules the loop keeps are in
//! `docs/architecture.md`, section "The completion loop".

pub mod access;
pub mod client_ip;
mod endpoints;
mod http;
pub mod listener;
pub mod mesh;
pub mod route;
mod serve;
pub mod shard;
mod table;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::config::Config;
use crate::error::Error;
use crate::metrics::ShardMetrics;

/// The little that shards share: readiness, metrics, the instance's epoch
/// and the topic placement seed (the shutdown signal is a separate
/// `watch`, the mesh inboxes are passed to each shard).
#[derive(Debug)]
pub struct Shared {
    shards: usize,
    /// Seeds the topic-to-owner hash: random per process, so that topic
    /// names cannot be chosen to land on one shard, and the same on every
    /// shard, so that they agree on owners.
    placement_seed: [u64; 4],
    /// Who may connect, subscribe and publish (`--auth`, API keys).
    policy: Arc<crate::auth::Policy>,
    /// Connections per client IP, across shards, and the proxies whose
    /// forwarding headers name the client.
    ip_limits: client_ip::IpLimits,
    trusted_proxies: Vec<client_ip::Cidr>,
    /// Names this broker instance (16 hex digits, random at start). History
    /// lives in memory, so seqs restart at 1 with the process; clients
    /// compare epochs to tell a resumed stream from a new one.
    epoch: String,
    ready: AtomicUsize,
    /// One block per shard, written only by that shard.
    metrics: Box<[ShardMetrics]>,
    /// `--redis`: the Redis thread's health and counters.
    cluster: Option<Arc<crate::cluster::ClusterStats>>,
}

impl Shared {
    pub(crate) fn shard_ready(&self) {
        self.ready.fetch_add(1, Ordering::Release);
    }

    pub fn metrics(&self) -> &[ShardMetrics] {
        &self.metrics
    }

    /// In a cluster, the Redis thread's health and counters.
    pub fn cluster(&self) -> Option<&crate::cluster::ClusterStats> {
        self.cluster.as_deref()
    }

    /// The seed every shard's [`ringcast_core::Placement`] is built with.
    pub fn placement_seed(&self) -> [u64; 4] {
        self.placement_seed
    }

    /// This instance's epoch, sent in `subscribed`.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn policy(&self) -> &Arc<crate::auth::Policy> {
        &self.policy
    }

    pub fn ip_limits(&self) -> &client_ip::IpLimits {
        &self.ip_limits
    }

    pub fn trusted_proxies(&self) -> &[client_ip::Cidr] {
        &self.trusted_proxies
    }

    /// Every shard is accepting (what `/healthz` reports).
    pub fn all_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) >= self.shards
    }
}

/// A running broker.
pub struct Server {
    addr: SocketAddr,
    policy: Arc<crate::auth::Policy>,
    epoch: String,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// Wakes each shard's loop to see the shutdown at once.
    wakers: Vec<crate::uring::Waker>,
}

impl Server {
    /// The address every shard listens on (the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This instance's epoch (see [`Shared::epoch`]).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Reads `--api-keys-file` again (SIGHUP); the keys in use stay if the
    /// file is bad. Returns how many keys are in use now.
    pub fn reload_keys(&self) -> Result<usize, String> {
        self.policy.reload_keys()
    }

    /// Stops accepting and closes every connection (1001), then lets the
    /// shards exit; [`Server::join`] waits for them.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        for w in &self.wakers {
            w.wake();
        }
    }

    /// Waits for every shard thread to exit.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

pub(crate) fn pin_to_core(shard: usize) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0, ..) affects
    // only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(shard % cores, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Starts the broker; returns once every shard is accepting.
pub fn start(config: Config) -> Result<Server, Error> {
    config.validate().map_err(Error::Config)?;
    let policy = Arc::new(config.policy().map_err(Error::Config)?);
    let listeners = listener::bind_all(config.listen, config.shards, 4096)?;
    let addr = listeners[0].local_addr()?;
    let config = Arc::new(config);
    let shared = Arc::new(Shared {
        shards: config.shards,
        placement_seed: rand::random(),
        policy: policy.clone(),
        ip_limits: client_ip::IpLimits::new(
            config.max_connections_per_ip,
            config.max_connection_rate_per_ip,
        ),
        trusted_proxies: client_ip::parse_proxies(&config.trusted_proxies)
            .map_err(Error::Config)?,
        epoch: format!("{:016x}", rand::random::<u64>()),
        ready: AtomicUsize::new(0),
        metrics: (0..config.shards)
            .map(|_| ShardMetrics::default())
            .collect(),
        cluster: config
            .redis
            .as_ref()
            .map(|_| Arc::new(crate::cluster::ClusterStats::default())),
    });
    let (tx, rx) = watch::channel(false);
    // In a cluster the Redis thread is one more endpoint of the mesh, at
    // index `shards`.
    let endpoints = config.shards + usize::from(config.redis.is_some());
    let inboxes = mesh::Mesh::<ringcast_core::Msg>::inboxes(endpoints);
    let mut threads = Vec::with_capacity(endpoints);
    if let (Some(url), Some(stats)) = (&config.redis, &shared.cluster) {
        let placement = ringcast_core::Placement::new(config.shards, shared.placement_seed);
        let thread = crate::cluster::start(
            &config,
            url,
            placement,
            inboxes.clone(),
            stats.clone(),
            rx.clone(),
        )
        .map_err(Error::Config)?;
        threads.push(thread);
    }
    let (shards, wakers) = match shard::start(listeners, config, shared.clone(), inboxes, rx) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(true);
            return Err(Error::Io(std::io::Error::other(e)));
        }
    };
    threads.extend(shards);
    Ok(Server {
        addr,
        policy,
        epoch: shared.epoch.clone(),
        shutdown: tx,
        threads,
        wakers,
    })
}
