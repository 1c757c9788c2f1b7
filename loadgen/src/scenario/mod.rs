//! Scenarios: what load to put on the broker and what to measure.
//!
//! Every scenario runs its connections on one or more threads, each a
//! single-threaded tokio runtime (a load generator pinned to one core gains
//! nothing from work stealing), and talks to the main thread through a
//! plain channel of [`Note`]s for readiness, results and fatal errors; the
//! main thread owns the timeline and the measurements around it.

pub mod compare;
pub mod conns;
pub mod echo;
pub mod fanout;

use std::future::Future;
use std::net::IpAddr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::transport::{
    ConnectOpts, Endpoint, PubClient, PublishVia, Result, SubClient, Transport,
};

/// Options every scenario shares (the global flags).
#[derive(Debug, Clone)]
pub struct Common {
    pub endpoint: Endpoint,
    pub broker_url: String,
    pub transport: Transport,
    pub publish_via: PublishVia,
    /// Long-polling: how long the broker may hold a request.
    pub poll_hold: Duration,
    /// Short polling: one request per this interval.
    pub poll_interval: Duration,
    /// Local addresses connections are spread over (round robin); empty:
    /// let the kernel choose.
    pub source_ips: Vec<IpAddr>,
    pub broker_pid: Option<u32>,
    pub connect_timeout: Duration,
    /// Ceiling for connecting and subscribing everyone.
    pub setup_timeout: Duration,
    pub json: bool,
    /// `--token`: presented by every connection (see [`ConnectOpts::token`]).
    pub token: Option<Arc<str>>,
}

impl Common {
    pub fn connect_opts(&self, i: usize, read_chunk: usize) -> ConnectOpts {
        ConnectOpts {
            source: if self.source_ips.is_empty() {
                None
            } else {
                Some(self.source_ips[i % self.source_ips.len()])
            },
            timeout: self.connect_timeout,
            read_chunk,
            poll_hold: self.poll_hold,
            poll_interval: self.poll_interval,
            token: self.token.clone(),
        }
    }

    /// Opens subscriber connection number `i` over `--transport`.
    /// Scenarios use it only through [`crate::transport::SubConn`].
    pub async fn connect(&self, i: usize, read_chunk: usize) -> Result<SubClient> {
        SubClient::connect(
            self.transport,
            &self.endpoint,
            &self.connect_opts(i, read_chunk),
        )
        .await
    }

    /// Opens publisher connection number `i` over `--publish-via`.
    pub async fn connect_pub(&self, i: usize) -> Result<PubClient> {
        PubClient::connect(
            self.publish_via,
            &self.endpoint,
            &self.connect_opts(i, 16 * 1024),
        )
        .await
    }

    /// Progress line on stderr (stdout is for the report).
    pub fn progress(&self, msg: impl AsRef<str>) {
        eprintln!("ringcast-loadgen: {}", msg.as_ref());
    }
}

/// Runs `f` on a new thread with its own single-threaded runtime and a
/// `LocalSet` (so tasks may share `Rc` state).
pub fn spawn_runtime_thread<F, Fut, T>(name: String, f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, f())
        })
        .expect("spawn thread")
}

/// Waits for the next note until `deadline`; `what` names the wait in the
/// timeout error.
pub fn recv_until<N>(rx: &mpsc::Receiver<N>, deadline: Instant, what: &str) -> Result<N> {
    let left = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(left) {
        Ok(n) => Ok(n),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("timed out {what}")),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(format!("a worker thread exited unexpectedly while {what}"))
        }
    }
}

/// Splits `0..n` over `threads` round robin: thread `t` gets `t, t+threads, …`.
pub fn share(n: usize, threads: usize, t: usize) -> Vec<usize> {
    (t..n).step_by(threads.max(1)).collect()
}

/// A random topic prefix, so each run's topics start at seq 1.
pub fn random_prefix() -> String {
    format!("lg.{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_covers_everything_once() {
        let mut all: Vec<usize> = (0..3).flat_map(|t| share(10, 3, t)).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(share(2, 4, 3), Vec::<usize>::new());
    }
}
