//! `conns`: open N idle connections over `--transport` (a WebSocket, an SSE
//! stream, or a poller whose request the broker holds), each subscribed to one topic
//! (connection `i` to topic `i % T`), and measure what they cost: how fast
//! the broker completes handshakes and subscriptions, and (with
//! `--broker-pid`) how much resident memory each connection adds. Beside
//! RSS, the kernel's memory for the broker's end of the connections
//! ([`crate::sockmem`]: the socket buffers, per socket, when the broker
//! runs on this host) and the machine's slab growth per connection.
//!
//! Connections are spread over the `--broker`s round robin (connection `i`
//! on broker `i % N`), and over `--source-ips` round robin, so N can
//! exceed one source address's ephemeral port range.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ringcast_core::units::parse_duration;
use tokio::sync::{watch, Semaphore};

use super::{random_prefix, recv_until, share, spawn_runtime_thread, Common};
use crate::procs::{self, Per, Usage};
use crate::proto::{self, Incoming};
use crate::report::{limit, ConnsReport, LoadgenUsage};
use crate::sockmem::{self, SocketMemory};
use crate::stats::Latency;
use crate::sys::{self, mono_ns, HostSample, HostUsage, ThreadClock, ThreadUsage};
use crate::transport::{Result, SubConn};

#[derive(Debug, Clone, clap::Args)]
pub struct ConnsArgs {
    /// Idle connections to open.
    #[arg(long, visible_alias = "subs", default_value_t = 1000)]
    pub conns: usize,
    /// Topics the connections are spread over.
    #[arg(long, default_value_t = 100)]
    pub topics: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// After the last `subscribed`, wait this long before sampling the
    /// broker's memory (lets allocator and kernel settle).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub settle: Duration,
    /// Then hold the connections open this long before closing them.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub hold: Duration,
    /// Topics are PREFIX.0 … PREFIX.N-1 (default `lg.<random>`).
    #[arg(long)]
    pub topic_prefix: Option<String>,
}

impl ConnsArgs {
    pub fn validate(&self) -> Result<()> {
        let bounded = [
            ("--conns", self.conns, 1, 500_000),
            ("--topics", self.topics, 1, 100_000),
            ("--connect-concurrency", self.connect_concurrency, 1, 10_000),
        ];
        for (flag, v, lo, hi) in bounded {
            if v < lo || v > hi {
                return Err(format!("{flag} must be in {lo}..={hi}, got {v}"));
            }
        }
        if self.hold > Duration::from_secs(3600) || self.settle > Duration::from_secs(600) {
            return Err("--hold must be at most 1h and --settle at most 10m".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Open,
    Stop,
}

enum Note {
    Ready(Box<Opened>),
    Closed,
    Fatal(String),
}

/// One thread's account of its connections.
struct Opened {
    handshake: Latency,
    subscribe: Latency,
    last_handshake_ns: u64,
    last_subscribed_ns: u64,
    /// The thread's CPU from its start to its last `subscribed`.
    cpu: ThreadUsage,
}

pub fn run(common: &Common, args: &ConnsArgs) -> Result<ConnsReport> {
    args.validate()?;
    let nofile = sys::raise_nofile();
    if (nofile as usize) < args.conns + 64 {
        common.progress(format!(
            "warning: the file-descriptor limit is {nofile}, below --conns {} (+ a few); \
             raise the hard limit (ulimit -Hn) first",
            args.conns
        ));
    }
    let prefix = args.topic_prefix.clone().unwrap_or_else(random_prefix);
    let topics: Arc<Vec<String>> =
        Arc::new((0..args.topics).map(|i| format!("{prefix}.{i}")).collect());
    let (note_tx, notes) = mpsc::channel();
    let (phase_tx, phase_rx) = watch::channel(Phase::Open);

    let procs_before = procs::sample(&common.procs)?;
    let cpu_before = sys::self_cpu();
    let host_before = HostSample::read();
    let slab_before = sys::slab_kib();
    common.progress(format!(
        "conns: opening {} connections to {} from {}, each subscribed to one of {} topics",
        args.conns,
        common.brokers_text(),
        if common.source_ips.is_empty() {
            "the default source address".to_string()
        } else {
            format!("{} source address(es)", common.source_ips.len())
        },
        args.topics
    ));
    let started = Instant::now();
    let t0 = mono_ns();
    let mut threads = Vec::new();
    for t in 0..common.threads {
        let mine = share(args.conns, common.threads, t);
        let (common, args, topics) = (common.clone(), args.clone(), topics.clone());
        let (notes, phase) = (note_tx.clone(), phase_rx.clone());
        threads.push(spawn_runtime_thread(format!("conns-{t}"), move || {
            conns_thread(common, args, topics, mine, notes, phase)
        }));
    }

    let mut handshake = Latency::new();
    let mut subscribe = Latency::new();
    let (mut last_hs, mut last_sub) = (t0, t0);
    let mut thread_usage = Vec::with_capacity(common.threads);
    let deadline = started + common.setup_timeout;
    for _ in 0..common.threads {
        match recv_until(&notes, deadline, "opening connections (--setup-timeout)")? {
            Note::Ready(o) => {
                handshake.merge(&o.handshake);
                subscribe.merge(&o.subscribe);
                last_hs = last_hs.max(o.last_handshake_ns);
                last_sub = last_sub.max(o.last_subscribed_ns);
                thread_usage.push(o.cpu);
            }
            Note::Fatal(e) => return Err(e),
            Note::Closed => {}
        }
    }
    let opened = started.elapsed();
    let cpu_open = sys::self_cpu().saturating_sub(cpu_before);
    let procs_open = procs::sample(&common.procs)?;
    let host_open = HostSample::read();
    common.progress(format!(
        "conns: {} connections subscribed in {:.2} s; settling {:?}",
        args.conns,
        opened.as_secs_f64(),
        args.settle
    ));
    std::thread::sleep(args.settle);
    let procs_after = procs::sample(&common.procs)?;
    let slab_after = sys::slab_kib();
    let broker_sockets = broker_sockets(common);
    let loadgen_rss = sys::self_max_rss_kib();
    if !args.hold.is_zero() {
        common.progress(format!("conns: holding for {:?}", args.hold));
        let hold_end = Instant::now() + args.hold;
        // A connection the broker drops while held is a failure too.
        while let Ok(n) = recv_until(&notes, hold_end, "") {
            if let Note::Fatal(e) = n {
                return Err(e);
            }
        }
    }
    phase_tx.send_replace(Phase::Stop);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut closed = 0;
    while closed < common.threads {
        match recv_until(&notes, deadline, "closing connections") {
            Ok(Note::Closed) => closed += 1,
            Ok(_) => {}
            Err(e) => {
                common.progress(format!("warning: {e}"));
                break;
            }
        }
    }
    for t in threads {
        let _ = t.join();
    }

    let secs = |ns: u64| (ns.saturating_sub(t0)) as f64 / 1e9;
    let usage = Usage::between(
        &common.procs,
        &procs_before,
        &procs_open,
        opened,
        Per::Conn(args.conns as u64),
    )
    .with_rss_after(&procs_after);
    let broker = usage.broker.clone();
    let loadgen_util = cpu_open.as_secs_f64() / opened.as_secs_f64().max(1e-9);
    // Threads in order of their names.
    thread_usage.sort_by_key(|t| {
        t.name
            .rsplit('-')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
    });
    let mut loadgen = LoadgenUsage::new(cpu_open.as_secs_f64(), opened.as_secs_f64(), thread_usage);
    loadgen.max_rss_kib = loadgen_rss;
    let limits = limit::judge(
        &mut loadgen,
        &usage.processes,
        limit::Setup {
            threads: common.threads,
            publishers: 0,
        },
    );
    let host = host_before
        .zip(host_open)
        .map(|(a, b)| HostUsage::between(&a, &b, loadgen_util + usage.cores()));
    Ok(ConnsReport {
        transport: common.transport,
        brokers: common.shares(args.conns, 0),
        token: common.token.is_some(),
        conns: args.conns,
        topics: args.topics,
        upgrade_header_bytes: common.upgrade_header_bytes,
        source_ips: common.source_ips.iter().map(|ip| ip.to_string()).collect(),
        nofile_limit: nofile,
        open_s: opened.as_secs_f64(),
        handshakes_per_s: args.conns as f64 / secs(last_hs).max(1e-9),
        subscribed_per_s: args.conns as f64 / secs(last_sub).max(1e-9),
        handshake: handshake.summary(),
        subscribe: subscribe.summary(),
        broker_rss_delta_per_conn_kib: broker
            .as_ref()
            .map(|b| (b.rss_after_kib as f64 - b.rss_before_kib as f64) / args.conns as f64),
        broker_cpu_us_per_conn: broker.map(|b| b.cpu_seconds * 1e6 / args.conns as f64),
        broker_sockets,
        host_slab_delta_per_conn_kib: slab_before
            .zip(slab_after)
            .map(|(a, b)| (b as f64 - a as f64) / args.conns as f64),
        usage,
        loadgen,
        host,
        limits,
    })
}

/// The kernel's memory for the brokers' end of the connections, if they
/// run on this host (a warning and `None` otherwise).
fn broker_sockets(common: &Common) -> Option<SocketMemory> {
    let mut ports: Vec<u16> = common.brokers.iter().map(|b| b.addrs[0].port()).collect();
    ports.sort_unstable();
    ports.dedup();
    match sockmem::server_sockets(&ports) {
        Ok(m) if m.sockets > 0 => Some(m),
        Ok(_) => {
            common.progress(format!(
                "conns: no established socket on this host has local port {ports:?}: the \
                 broker runs elsewhere, so its kernel socket memory is not reported"
            ));
            None
        }
        Err(e) => {
            common.progress(format!("warning: kernel socket memory not reported: {e}"));
            None
        }
    }
}

async fn conns_thread(
    common: Common,
    args: ConnsArgs,
    topics: Arc<Vec<String>>,
    mine: Vec<usize>,
    notes: mpsc::Sender<Note>,
    phase: watch::Receiver<Phase>,
) {
    let clock = ThreadClock::start();
    let n = mine.len();
    let gate = Rc::new(Semaphore::new(
        args.connect_concurrency.div_ceil(common.threads).max(1),
    ));
    let acc = Rc::new(RefCell::new((
        Opened {
            handshake: Latency::new(),
            subscribe: Latency::new(),
            last_handshake_ns: 0,
            last_subscribed_ns: 0,
            cpu: ThreadUsage::new("", 0.0, 0.0),
        },
        0usize,
    )));
    let ready = Rc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::with_capacity(n);
    for &i in &mine {
        let (common, topics, gate, acc, ready) = (
            common.clone(),
            topics.clone(),
            gate.clone(),
            acc.clone(),
            ready.clone(),
        );
        let (notes, mut phase) = (notes.clone(), phase.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let topic = &topics[i % topics.len()];
            let who = format!("connection {i}");
            let permit = gate.acquire().await.expect("semaphore open");
            let t_start = mono_ns();
            let mut conn = match common.connect(i, 1024).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = notes.send(Note::Fatal(format!("{who}: {e}")));
                    return;
                }
            };
            let t_hs = mono_ns();
            let subscribed = async {
                conn.subscribe(topic).await?;
                loop {
                    let m = conn.recv().await?;
                    match proto::parse(&m)? {
                        Incoming::Subscribed { topic: t } if &t == topic => return Ok(()),
                        Incoming::Error { code, message } => {
                            return Err(format!("subscribe refused: {code}: {message}"))
                        }
                        _ => {}
                    }
                }
            };
            if let Err(e) = subscribed.await {
                let _ = notes.send(Note::Fatal(format!("{who}: {e}")));
                return;
            }
            let t_sub = mono_ns();
            drop(permit);
            {
                let mut a = acc.borrow_mut();
                a.0.handshake.record_ns(t_hs - t_start);
                a.0.subscribe.record_ns(t_sub - t_hs);
                a.0.last_handshake_ns = a.0.last_handshake_ns.max(t_hs);
                a.0.last_subscribed_ns = a.0.last_subscribed_ns.max(t_sub);
                a.1 += 1;
            }
            ready.notify_one();
            // Idle: answer pings, notice a broker that drops us.
            loop {
                tokio::select! {
                    r = conn.recv() => {
                        if let Err(e) = r {
                            if *phase.borrow() != Phase::Stop {
                                let _ = notes.send(Note::Fatal(format!(
                                    "{who}: dropped while idle: {e}"
                                )));
                            }
                            return;
                        }
                    }
                    r = phase.changed() => {
                        if r.is_err() || *phase.borrow() == Phase::Stop {
                            break;
                        }
                    }
                }
            }
            SubConn::close(conn).await;
        }));
    }
    while acc.borrow().1 < n {
        ready.notified().await;
    }
    let opened = {
        let a = acc.borrow();
        Opened {
            handshake: a.0.handshake.clone(),
            subscribe: a.0.subscribe.clone(),
            last_handshake_ns: a.0.last_handshake_ns,
            last_subscribed_ns: a.0.last_subscribed_ns,
            cpu: clock.stop(),
        }
    };
    let _ = notes.send(Note::Ready(Box::new(opened)));
    for t in tasks {
        let _ = t.await;
    }
    let _ = notes.send(Note::Closed);
}
