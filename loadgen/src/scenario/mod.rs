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

use serde::Serialize;
use tokio::sync::watch;

use crate::procs::Watched;
use crate::stats::SeqCounts;
use crate::sys::{ThreadClock, ThreadUsage};
use crate::transport::{
    ConnectOpts, Endpoint, PubClient, PublishVia, Result, SubClient, Transport,
};

/// Options every scenario shares (the global flags).
#[derive(Debug, Clone)]
pub struct Common {
    /// `--broker`, one or more: subscriber `i` connects to broker
    /// `i mod N` (see [`sub_broker`]).
    pub brokers: Vec<Endpoint>,
    /// `--publish-broker`, zero or more: where publishers go (see
    /// [`pub_broker`]).
    pub publish_brokers: Vec<Endpoint>,
    pub transport: Transport,
    pub publish_via: PublishVia,
    /// Long-polling: how long the broker may hold a request.
    pub poll_hold: Duration,
    /// Short polling: one request per this interval.
    pub poll_interval: Duration,
    /// Local addresses connections are spread over (round robin); empty:
    /// let the kernel choose.
    pub source_ips: Vec<IpAddr>,
    /// `--broker-pid` and `--pid`: whose CPU the report gives.
    pub procs: Vec<Watched>,
    pub connect_timeout: Duration,
    /// Ceiling for connecting and subscribing everyone.
    pub setup_timeout: Duration,
    pub json: bool,
    /// `--token`: presented by every connection (see [`ConnectOpts::token`]).
    pub token: Option<Arc<str>>,
    /// `--threads`: how many runtime threads the connections are spread
    /// over (see [`share`]).
    pub threads: usize,
    /// `--upgrade-header-bytes` (see [`ConnectOpts::upgrade_header_bytes`]).
    pub upgrade_header_bytes: usize,
}

/// Where a publisher goes: an index into `--broker` or into
/// `--publish-broker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubTarget {
    Broker(usize),
    PublishBroker(usize),
}

/// The `--broker` subscriber (or `conns`/`echo` connection) `i` uses, of
/// `brokers`: round robin.
pub fn sub_broker(i: usize, brokers: usize) -> usize {
    i % brokers.max(1)
}

/// Where publisher `p` goes: `--publish-broker` `p mod M` when any is
/// given; else `--broker` `(p + 1) mod N`, the node after the one that
/// subscriber `p` is on, so that with two or more brokers a message has to
/// cross between nodes to reach at least the subscribers of its own index
/// (with one broker, that one).
pub fn pub_broker(p: usize, brokers: usize, publish_brokers: usize) -> PubTarget {
    if publish_brokers > 0 {
        PubTarget::PublishBroker(p % publish_brokers)
    } else {
        PubTarget::Broker((p + 1) % brokers.max(1))
    }
}

/// How many connections went to one broker, for the report: one entry per
/// `--broker` (in order, even when two name the same URL), then one per
/// `--publish-broker` URL that no `--broker` names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerShare {
    pub url: String,
    /// Subscribers (`conns`: connections, `echo`: echo connections).
    pub subscribers: usize,
    pub publishers: usize,
    /// `fanout`: the delivery accounting of this broker's subscribers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<SeqCounts>,
}

/// The split of `subs` subscribers and `publishers` publishers over the
/// brokers, per [`sub_broker`] and [`pub_broker`].
pub fn broker_shares(
    brokers: &[&str],
    publish_brokers: &[&str],
    subs: usize,
    publishers: usize,
) -> Vec<BrokerShare> {
    let share = |url: &str| BrokerShare {
        url: url.to_string(),
        subscribers: 0,
        publishers: 0,
        totals: None,
    };
    let mut out: Vec<BrokerShare> = brokers.iter().map(|u| share(u)).collect();
    // Where each --publish-broker is counted.
    let mut pub_slot = Vec::with_capacity(publish_brokers.len());
    for url in publish_brokers {
        let slot = match out.iter().position(|s| s.url == *url) {
            Some(i) => i,
            None => {
                out.push(share(url));
                out.len() - 1
            }
        };
        pub_slot.push(slot);
    }
    for i in 0..subs {
        out[sub_broker(i, brokers.len())].subscribers += 1;
    }
    for p in 0..publishers {
        let slot = match pub_broker(p, brokers.len(), publish_brokers.len()) {
            PubTarget::Broker(b) => b,
            PubTarget::PublishBroker(b) => pub_slot[b],
        };
        out[slot].publishers += 1;
    }
    out
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
            upgrade_header_bytes: self.upgrade_header_bytes,
        }
    }

    /// The broker subscriber (or connection) `i` uses.
    pub fn sub_endpoint(&self, i: usize) -> &Endpoint {
        &self.brokers[sub_broker(i, self.brokers.len())]
    }

    /// The broker publisher `p` uses.
    pub fn pub_endpoint(&self, p: usize) -> &Endpoint {
        match pub_broker(p, self.brokers.len(), self.publish_brokers.len()) {
            PubTarget::Broker(b) => &self.brokers[b],
            PubTarget::PublishBroker(b) => &self.publish_brokers[b],
        }
    }

    /// The report's split of `subs` subscribers and `publishers`
    /// publishers over the brokers.
    pub fn shares(&self, subs: usize, publishers: usize) -> Vec<BrokerShare> {
        let b: Vec<&str> = self.brokers.iter().map(|e| e.url.as_str()).collect();
        let p: Vec<&str> = self
            .publish_brokers
            .iter()
            .map(|e| e.url.as_str())
            .collect();
        broker_shares(&b, &p, subs, publishers)
    }

    /// `http://a:1` or `2 brokers (http://a:1, http://b:2)`, for progress
    /// lines.
    pub fn brokers_text(&self) -> String {
        match &self.brokers[..] {
            [one] => one.url.clone(),
            all => format!(
                "{} brokers ({})",
                all.len(),
                all.iter()
                    .map(|e| e.url.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Opens subscriber connection number `i` over `--transport`, to
    /// broker `i mod N`. Scenarios use it only through
    /// [`crate::transport::SubConn`].
    pub async fn connect(&self, i: usize, read_chunk: usize) -> Result<SubClient> {
        SubClient::connect(
            self.transport,
            self.sub_endpoint(i),
            &self.connect_opts(i, read_chunk),
        )
        .await
    }

    /// Opens publisher number `p` over `--publish-via`, to its broker
    /// ([`pub_broker`]); `conn` is its connection number overall (which
    /// source address it uses).
    pub async fn connect_pub(&self, p: usize, conn: usize) -> Result<PubClient> {
        PubClient::connect(
            self.publish_via,
            self.pub_endpoint(p),
            &self.connect_opts(conn, 16 * 1024),
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

/// The calling thread's CPU over the measured window, for a task spawned
/// on that thread next to its connections: from when `phase` first
/// satisfies `started` to when it satisfies `ended` (see
/// [`ThreadClock`]). `None` if the run ends (the sender is dropped) first.
pub async fn thread_window<P>(
    mut phase: watch::Receiver<P>,
    started: impl Fn(&P) -> bool,
    ended: impl Fn(&P) -> bool,
) -> Option<ThreadUsage> {
    phase.wait_for(|p| started(p) || ended(p)).await.ok()?;
    let clock = ThreadClock::start();
    phase.wait_for(|p| ended(p)).await.ok()?;
    Some(clock.stop())
}

/// Joins the scenario's threads and gathers what each returned (a thread
/// that panicked or returned `None` is left out).
pub fn join_all<T>(threads: Vec<std::thread::JoinHandle<Option<T>>>) -> Vec<T> {
    threads
        .into_iter()
        .filter_map(|t| t.join().ok().flatten())
        .collect()
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

    #[test]
    fn subscribers_round_robin_and_publishers_on_the_next_node() {
        let subs: Vec<usize> = (0..7).map(|i| sub_broker(i, 3)).collect();
        assert_eq!(subs, [0, 1, 2, 0, 1, 2, 0]);
        // Publisher p never shares a node with subscriber p when N >= 2.
        for n in 2..6 {
            for p in 0..20 {
                let PubTarget::Broker(b) = pub_broker(p, n, 0) else {
                    panic!("no --publish-broker given")
                };
                assert_eq!(b, (p + 1) % n);
                assert_ne!(b, sub_broker(p, n), "n={n} p={p}");
            }
        }
        // One broker: everyone on it, as before.
        assert_eq!(sub_broker(5, 1), 0);
        assert_eq!(pub_broker(5, 1, 0), PubTarget::Broker(0));
        // --publish-broker: round robin over those instead.
        let explicit: Vec<PubTarget> = (0..3).map(|p| pub_broker(p, 4, 2)).collect();
        assert_eq!(
            explicit,
            [
                PubTarget::PublishBroker(0),
                PubTarget::PublishBroker(1),
                PubTarget::PublishBroker(0)
            ]
        );
    }

    #[test]
    fn the_report_counts_connections_per_broker() {
        let counts = |v: Vec<BrokerShare>| {
            v.into_iter()
                .map(|s| (s.url, s.subscribers, s.publishers))
                .collect::<Vec<_>>()
        };
        let one = broker_shares(&["http://a:1"], &[], 10, 2);
        assert_eq!(counts(one), [("http://a:1".into(), 10, 2)]);
        let two = broker_shares(&["http://a:1", "http://b:2"], &[], 5, 3);
        assert_eq!(
            counts(two),
            [("http://a:1".into(), 3, 1), ("http://b:2".into(), 2, 2)]
        );
        // The same URL twice is two places in the round robin.
        let same = broker_shares(&["http://a:1", "http://a:1"], &[], 4, 1);
        assert_eq!(
            counts(same),
            [("http://a:1".into(), 2, 0), ("http://a:1".into(), 2, 1)]
        );
        // A --publish-broker that a --broker names is counted there; a new
        // one gets its own entry.
        let explicit = broker_shares(
            &["http://a:1", "http://b:2"],
            &["http://b:2", "http://c:3"],
            4,
            3,
        );
        assert_eq!(
            counts(explicit),
            [
                ("http://a:1".into(), 2, 0),
                ("http://b:2".into(), 2, 2),
                ("http://c:3".into(), 0, 1)
            ]
        );
    }
}
